//! Reading `burrow publish`'s input: a file, decompressed when it starts
//! with gzip's or zstd's magic bytes, read as JSON Lines or CSV into one
//! JSON object per record, each with the line it starts on.
//!
//! - JSON Lines: one JSON value per line; blank lines are skipped.
//! - CSV (RFC 4180): the first row names the fields; cells are separated
//!   by commas, a cell in double quotes may hold commas, newlines and
//!   doubled quotes (`""`). Every row must have as many cells as the
//!   header. An empty cell leaves its field out (its default). Cells are
//!   strings; the record builder reads scalars from them.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::config::InputFormat;

/// One record read from the file, with the line it starts on (from 1).
pub struct Line {
    pub number: u64,
    pub value: Value,
}

/// The file at `path`, decompressed by its magic bytes.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(reader),
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .with_context(|| format!("cannot start reading {} as zstd", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, decoder))
    } else {
        Box::new(reader)
    })
}

/// Reads every record of `reader` (the file `name`) in `format`, calling
/// `each` with each; stops at the first error, which names the file and
/// line.
pub fn read(
    name: &str,
    reader: &mut dyn BufRead,
    format: InputFormat,
    each: &mut dyn FnMut(Line) -> Result<()>,
) -> Result<()> {
    match format {
        InputFormat::Jsonl => read_jsonl(name, reader, each),
        InputFormat::Csv => read_csv(name, reader, each),
    }
}

/// Reads one line (with its `\n`) into `buf`; false at the end. A read
/// error (a corrupt compressed stream) names the file and line.
fn next_line(name: &str, number: u64, reader: &mut dyn BufRead, buf: &mut Vec<u8>) -> Result<bool> {
    buf.clear();
    let n = reader
        .read_until(b'\n', buf)
        .with_context(|| format!("{name}:{number}: cannot read the file"))?;
    Ok(n > 0)
}

fn read_jsonl(
    name: &str,
    reader: &mut dyn BufRead,
    each: &mut dyn FnMut(Line) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut number = 0;
    while next_line(name, number + 1, reader, &mut buf)? {
        number += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            anyhow::anyhow!("{name}:{number}: column {}: broken JSON: {}", e.column(), {
                // serde_json appends " at line L column C"; the line is ours.
                let text = e.to_string();
                match text.rfind(" at line ") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                }
            })
        })?;
        each(Line { number, value })?;
    }
    Ok(())
}

fn read_csv(
    name: &str,
    reader: &mut dyn BufRead,
    each: &mut dyn FnMut(Line) -> Result<()>,
) -> Result<()> {
    let mut rows = CsvRows {
        name,
        reader,
        buf: Vec::new(),
        line: 0,
    };
    let Some((_, header)) = rows.next_row()? else {
        bail!("{name}: empty CSV file: the first row must name the fields");
    };
    let mut header: Vec<String> = header;
    if let Some(first) = header.first_mut() {
        // A byte order mark some spreadsheets write.
        if let Some(rest) = first.strip_prefix('\u{feff}') {
            *first = rest.to_string();
        }
    }
    for (i, h) in header.iter().enumerate() {
        if h.trim().is_empty() {
            bail!("{name}:1: column {} of the header has no field name", i + 1);
        }
        if header[..i].contains(h) {
            bail!("{name}:1: the header names field {h} twice");
        }
    }
    while let Some((number, cells)) = rows.next_row()? {
        if cells.len() != header.len() {
            bail!(
                "{name}:{number}: {} cells, but the header names {} fields",
                cells.len(),
                header.len()
            );
        }
        let mut object = Map::new();
        for (field, cell) in header.iter().zip(cells) {
            if !cell.is_empty() {
                object.insert(field.trim().to_string(), Value::String(cell));
            }
        }
        each(Line {
            number,
            value: Value::Object(object),
        })?;
    }
    Ok(())
}

/// Rows of a CSV file, each with the line it starts on.
struct CsvRows<'a> {
    name: &'a str,
    reader: &'a mut dyn BufRead,
    buf: Vec<u8>,
    line: u64,
}

impl CsvRows<'_> {
    /// The next row that is not blank, or `None` at the end.
    fn next_row(&mut self) -> Result<Option<(u64, Vec<String>)>> {
        loop {
            if !next_line(self.name, self.line + 1, self.reader, &mut self.buf)? {
                return Ok(None);
            }
            self.line += 1;
            let start = self.line;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut cells = Vec::new();
            let mut cell = Vec::new();
            let mut quoted = false;
            // Whether the cell began with a quote (so text after its
            // closing quote is an error).
            let mut was_quoted = false;
            let mut i = 0;
            loop {
                if i == self.buf.len() {
                    if !quoted {
                        break;
                    }
                    // A quoted cell goes on over the next line.
                    let mut more = Vec::new();
                    if !next_line(self.name, self.line + 1, self.reader, &mut more)? {
                        bail!(
                            "{}:{start}: broken CSV: a quoted cell is never closed",
                            self.name
                        );
                    }
                    self.line += 1;
                    self.buf.extend_from_slice(&more);
                    continue;
                }
                let c = self.buf[i];
                i += 1;
                if quoted {
                    if c == b'"' {
                        if self.buf.get(i) == Some(&b'"') {
                            cell.push(b'"');
                            i += 1;
                        } else {
                            quoted = false;
                        }
                    } else {
                        cell.push(c);
                    }
                    continue;
                }
                match c {
                    b'"' if cell.is_empty() && !was_quoted => {
                        quoted = true;
                        was_quoted = true;
                    }
                    b',' => {
                        cells.push(self.cell(start, std::mem::take(&mut cell), cells.len())?);
                        was_quoted = false;
                    }
                    b'\n' => {}
                    b'\r' if self.buf.get(i) == Some(&b'\n') => {}
                    _ if was_quoted => bail!(
                        "{}:{}: broken CSV: column {}: text after a quoted cell's closing quote",
                        self.name,
                        self.line,
                        cells.len() + 1
                    ),
                    b'"' => bail!(
                        "{}:{}: broken CSV: column {}: a quote inside an unquoted cell",
                        self.name,
                        self.line,
                        cells.len() + 1
                    ),
                    _ => cell.push(c),
                }
            }
            cells.push(self.cell(start, cell, cells.len())?);
            return Ok(Some((start, cells)));
        }
    }

    fn cell(&self, line: u64, bytes: Vec<u8>, index: usize) -> Result<String> {
        String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!(
                "{}:{line}: broken CSV: column {} is not UTF-8",
                self.name,
                index + 1
            )
        })
    }
}

/// Reads a whole small file (a compiled schema).
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, format: InputFormat) -> Result<Vec<(u64, Value)>> {
        let mut out = Vec::new();
        read("in", &mut text.as_bytes(), format, &mut |l| {
            out.push((l.number, l.value));
            Ok(())
        })?;
        Ok(out)
    }

    /// Invariant: CSV cells are split as RFC 4180 says (quotes, doubled
    /// quotes, commas and newlines inside quotes, CRLF), empty cells are
    /// left out, and each row keeps the line it starts on.
    #[test]
    fn csv_rows_split_as_rfc_4180_says() {
        let text = "id,title,note\r\n1,\"a, \"\"b\"\"\",\r\n\n2,\"two\nlines\",x\n3,,\n";
        let got = rows(text, InputFormat::Csv).unwrap();
        assert_eq!(
            got,
            vec![
                (2, serde_json::json!({"id": "1", "title": "a, \"b\""})),
                (
                    4,
                    serde_json::json!({"id": "2", "title": "two\nlines", "note": "x"})
                ),
                (6, serde_json::json!({"id": "3"})),
            ]
        );
    }

    /// Invariant: broken CSV is refused with the file, line and column.
    #[test]
    fn broken_csv_is_named() {
        let cases = [
            (
                "id,title\n1,\"open\n",
                "in:2: broken CSV: a quoted cell is never closed",
            ),
            (
                "id,title\n1,\"a\"b\n",
                "in:2: broken CSV: column 2: text after",
            ),
            (
                "id,title\n1,a\"b\n",
                "in:2: broken CSV: column 2: a quote inside",
            ),
            (
                "id,title\n1,a,b\n",
                "in:2: 3 cells, but the header names 2 fields",
            ),
            ("id,id\n", "in:1: the header names field id twice"),
            ("", "in: empty CSV file"),
        ];
        for (text, expected) in cases {
            let err = rows(text, InputFormat::Csv).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// Invariant: broken JSON names the line and column.
    #[test]
    fn broken_json_is_named() {
        let err = rows("{\"id\": 1}\n\n{\"id\": 2,}\n", InputFormat::Jsonl)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("in:3: column 10: broken JSON: "), "{err}");
    }
}
