//! Writing results: aligned tables for people, one JSON object per line for
//! programs, and progress on a terminal's stderr.
//!
//! Every write returns its `io::Error`, so a closed pipe (`burrow versions |
//! head`) travels up to `main` as an error, which treats it as a quiet
//! exit rather than a failure.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

/// Where results go: stdout, locked and line-buffered.
pub struct Out {
    inner: io::StdoutLock<'static>,
    pub json: bool,
}

impl Out {
    pub fn stdout(json: bool) -> Self {
        Out {
            inner: io::stdout().lock(),
            json,
        }
    }

    pub fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.inner, "{text}")
    }

    pub fn json(&mut self, value: &serde_json::Value) -> io::Result<()> {
        writeln!(self.inner, "{value}")
    }
}

/// How a column lines up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table whose column widths fit every row.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut Out) -> io::Result<()> {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        out.line(&self.render(&header, &widths))?;
        for row in &self.rows {
            out.line(&self.render(row, &widths))?;
        }
        Ok(())
    }

    fn render(&self, cells: &[String], widths: &[usize]) -> String {
        let mut line = String::new();
        for (i, ((cell, width), (_, align))) in
            cells.iter().zip(widths).zip(&self.columns).enumerate()
        {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            match align {
                Align::Left if i + 1 == cells.len() => line.push_str(cell),
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        line
    }
}

/// Bytes for people: `812 B`, `14.2 KiB`, `3.07 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.2} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration for people: `0.84 ms`, `231.5 ms`, `2.41 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Milliseconds, for JSON.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Unix microseconds as UTC, `2025-01-31T17:04:05Z`.
pub use burrow::announcer::utc;

/// A one-line status on stderr, shown only when stderr is a terminal.
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            enabled: io::stderr().is_terminal(),
        }
    }

    /// Replaces the status line. Progress is decoration: a failed write to
    /// stderr is not worth failing the command for.
    pub fn set(&self, message: &str) {
        if self.enabled {
            let _ = write!(io::stderr(), "\r\x1b[2K{message}");
        }
    }

    pub fn clear(&self) {
        if self.enabled {
            let _ = write!(io::stderr(), "\r\x1b[2K");
        }
    }
}

/// A note for the person running the command (stderr, never stdout, so JSON
/// output stays clean).
pub fn note(message: &str) {
    let _ = writeln!(io::stderr(), "note: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_735_689_599_000_000), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(2048), "2.00 KiB");
        assert_eq!(bytes(15 << 20), "15.0 MiB");
    }
}
