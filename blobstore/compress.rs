//! Transport compression: how a blob is stored, as opposed to how it is
//! mapped.
//!
//! # Contract
//!
//! - A stored blob object (`snapshot/*`, `delta/*`, `reverse/*`) is either
//!   the raw blob (it starts with the envelope magic `BURROW\r\n`, see
//!   [`crate::schema::envelope`]) or exactly one zstd frame whose
//!   decompressed content is exactly the raw blob. Readers tell them apart
//!   by the first four bytes ([`ZSTD_MAGIC`], `28 B5 2F FD`): a consumer
//!   needs no configuration, and a store written without compression (or
//!   a chain that switched compression between cycles) stays readable.
//! - Announcements (`announce/*`) are never compressed.
//! - The frame declares its content size (zstd's content-size flag), so a
//!   reader bounds the output before it decompresses a byte: a frame
//!   without it is refused ([`CompressionFault::NoContentSize`]), a
//!   declared size over the reader's limit is [`FormatError::TooLarge`],
//!   and the first 64 decompressed bytes (the envelope) must declare the
//!   same size ([`CompressionFault::EnvelopeMismatch`]). Output past the
//!   declared size is cut off at once ([`CompressionFault::ExpandsPast`]);
//!   a stream that stops short is [`CompressionFault::EndsEarly`]; bytes
//!   after the frame are [`CompressionFault::TrailingBytes`]; anything
//!   zstd refuses is [`CompressionFault::CorruptFrame`]. Each of these is a
//!   [`FormatError::Compression`] naming the blob.
//! - Decoding keeps bounded memory: the decoder's window is limited to
//!   2^[`MAX_WINDOW_LOG`] bytes (8 MiB; levels 1 to 19 never need more)
//!   and output goes out in chunks of [`OUT_CHUNK`] bytes.
//! - The envelope checksum covers the decompressed (mapped) bytes; the
//!   frame carries no checksum of its own.
//!
//! The producer compresses each blob of a cycle before its put, streaming
//! its spool file into a second one ([`Compression::compress_stream`], on
//! the producer's blocking path, in bounded memory; see
//! `producer/spool.rs`); the announcement's byte counts are the stored
//! sizes, which is what a
//! consumer's plan fetches. The consumer's cache decompresses while it
//! streams into its temp file ([`FrameDecoder`], used by
//! [`super::cache`]); whole-blob readers (restore, `verify`, `inspect`)
//! use [`decode_stored`].
//!
//! # Choice of level
//!
//! Default: zstd level 1, since format v2. On the v2 blobs of the anchor
//! workload at 1M records (`burrow demo --records 1000000 --compression
//! none`, snapshot 71,431,992 bytes raw, delta at 1% change 763,056 bytes
//! raw; the `zstd` crate, one thread, the machine shared, 2026-12-03):
//!
//! | level | snapshot stored | compress | delta stored |
//! | --- | --- | --- | --- |
//! | 1 | 14,933,047 (14.9 B/record) | 160 ms | 160,723 |
//! | 2 | 14,819,528 | 141–164 ms | 161,673 |
//! | 3 | 16,394,625 (16.4 B/record) | 262–288 ms | 169,436 |
//!
//! Format v2 interns repeated text and lays records out as fixed-stride
//! list elements, which level 1's hash chain matches as well as level 3
//! (better: level 3's lazier parser finds longer but rarer matches), so
//! level 1 stores 9% less and compresses a snapshot 1.7x faster: about
//! 110 ms off every 1M snapshot cycle. Level 2 is within 1% of it.
//!
//! Before (format v1), level 3 was the default. Measured on the format-v1 blobs of the anchor
//! workload (`burrow demo --records 1000000 --cycles 2`; snapshot 135,554,440
//! bytes raw, delta at 1% change 1,266,968 bytes raw), with `zstd -b` (libzstd
//! 1.5, one core of this machine, shared):
//!
//! | level | snapshot stored | bytes/record | ratio | compress | decompress | delta stored |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | 1 | 21,543,045 | 21.5 | 6.29 | 641 MB/s | 1,700 MB/s | 304,689 |
//! | 3 | 20,679,468 | 20.7 | 6.56 | 612 MB/s | 2,127 MB/s | 302,141 |
//! | 6 | 20,667,778 | 20.7 | 6.56 | 107 MB/s | 2,046 MB/s | 280,765 |
//! | 9 | 20,575,685 | 20.6 | 6.59 | 68 MB/s | 1,863 MB/s | 274,477 |
//!
//! Level 3 is 4% smaller than level 1 at the same speed both ways; levels 6
//! and 9 save under 1% on snapshots (7–9% on deltas) for a producer 6–9
//! times slower. Decompression runs at 1.7–2.1 GB/s at every level.
//! Through the consumer's cache (stream, decompress, hash, write, fsync),
//! the level-3 snapshot above took 136 ms to fetch from a local store in
//! `burrow demo` (one run; 194 ms for the raw blob in an earlier run).

use crate::error::{Error, FormatError};
use crate::schema::envelope::{Envelope, ENVELOPE_LEN};
use bytes::Bytes;
use std::io::Write;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// The first four bytes of a zstd frame (0xFD2FB528, little-endian).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The largest window (log2 bytes) a reader accepts: what levels 1 to 19
/// use at most, so memory stays bounded whatever a frame asks for.
pub const MAX_WINDOW_LOG: u32 = 23;

/// The size of the chunks a [`FrameDecoder`] hands out.
pub const OUT_CHUNK: usize = 256 << 10;

/// The levels a producer may configure.
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// How a producer stores its blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The raw blob, as mapped.
    None,
    /// One zstd frame at `level` (1 to 19).
    Zstd {
        /// zstd's compression level, 1 (fastest) to 19 (smallest).
        level: i32,
    },
}

impl Default for Compression {
    /// zstd level 1 (see the module doc for the measurement).
    fn default() -> Self {
        Compression::Zstd { level: 1 }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// `none`, `zstd` (the default level, 1) or `zstd:LEVEL` (1 to 19).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Compression::None);
        }
        let Some(rest) = s.strip_prefix("zstd") else {
            return Err(format!(
                "{s:?} is not a compression: expected none, zstd or zstd:LEVEL"
            ));
        };
        let level = match rest.strip_prefix(':') {
            None if rest.is_empty() => return Ok(Compression::default()),
            None => {
                return Err(format!(
                    "{s:?} is not a compression: expected none, zstd or zstd:LEVEL"
                ))
            }
            Some(level) => level
                .parse::<i32>()
                .map_err(|_| format!("zstd level {level:?} is not a number"))?,
        };
        let c = Compression::Zstd { level };
        c.check()?;
        Ok(c)
    }
}

impl Compression {
    /// Checks the level; the error says what is allowed.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Compression::Zstd { level } if !LEVELS.contains(level) => Err(format!(
                "zstd level {level} is out of range: levels {} to {} are supported",
                LEVELS.start(),
                LEVELS.end()
            )),
            _ => Ok(()),
        }
    }

    /// The object to store for the raw blob `blob`: itself, or one zstd
    /// frame declaring its content size. CPU work: call it off the async
    /// workers.
    pub fn compress(&self, blob: Bytes) -> Result<Bytes, Error> {
        let Compression::Zstd { level } = *self else {
            return Ok(blob);
        };
        // The output grows as it is written, so no second blob-sized
        // buffer is reserved up front.
        let out = Vec::with_capacity(blob.len() / 4 + 64);
        let out = self
            .compress_stream(&blob[..], blob.len() as u64, out)
            .map_err(|e| Error::Config {
                what: "compression".into(),
                reason: format!("zstd level {level} failed: {e}"),
            })?;
        Ok(Bytes::from(out))
    }

    /// Streams the raw blob read from `src` (exactly `len` bytes) into
    /// `dst` as the object to store: the same bytes without compression,
    /// else one zstd frame declaring its content size (the only encoder
    /// settings a producer uses: [`Compression::compress`] runs through
    /// here too). Memory is zstd's own state and window, whatever `len`;
    /// the producer streams a spool file into another this way
    /// (`producer/spool.rs`). Returns `dst`, flushed. An error is the
    /// reader's, the writer's or zstd's; `src` ending before `len` bytes
    /// is one. CPU work: call it off the async workers.
    pub fn compress_stream<R: std::io::Read, W: Write>(
        &self,
        src: R,
        len: u64,
        mut dst: W,
    ) -> std::io::Result<W> {
        let mut src = src.take(len);
        let copied = match *self {
            Compression::None => {
                let n = std::io::copy(&mut src, &mut dst)?;
                dst.flush()?;
                n
            }
            Compression::Zstd { level } => {
                let mut encoder = zstd::stream::write::Encoder::new(dst, level)?;
                encoder.include_contentsize(true)?;
                encoder.include_checksum(false)?;
                encoder.set_pledged_src_size(Some(len))?;
                let n = std::io::copy(&mut src, &mut encoder)?;
                if n != len {
                    return Err(short(n, len));
                }
                dst = encoder.finish()?;
                dst.flush()?;
                n
            }
        };
        if copied != len {
            return Err(short(copied, len));
        }
        Ok(dst)
    }
}

/// The error of a source that ended before the length it was given.
fn short(read: u64, len: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the blob ended after {read} of its {len} bytes"),
    )
}

/// What is wrong with a compressed blob. Always inside a
/// [`FormatError::Compression`] that names the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionFault {
    /// The frame produced more bytes than the bound (its declared content
    /// size, itself within the reader's limit and the envelope's size).
    #[error("compressed stream expands past {limit} bytes")]
    ExpandsPast {
        /// The bound it went past.
        limit: u64,
    },
    /// The stored object ended before the frame did, or the frame ended
    /// before its declared content size.
    #[error("compressed stream ends early: {decoded} of {declared} bytes decompressed")]
    EndsEarly {
        /// Bytes decompressed when the stream ended.
        decoded: u64,
        /// The frame's declared content size.
        declared: u64,
    },
    /// zstd refused the frame.
    #[error("corrupt zstd frame: {reason}")]
    CorruptFrame {
        /// zstd's own message, or what was wrong with the header.
        reason: String,
    },
    /// The frame does not declare its content size, so its output cannot
    /// be bounded before it is read.
    #[error(
        "the zstd frame does not declare its content size (burrow's producers always write it)"
    )]
    NoContentSize,
    /// Bytes follow the end of the frame.
    #[error("bytes follow the end of the zstd frame (a stored blob is exactly one frame)")]
    TrailingBytes,
    /// The frame's declared content size differs from the size the
    /// decompressed envelope declares.
    #[error("the zstd frame declares {declared} bytes, but the blob's envelope says {envelope}")]
    EnvelopeMismatch {
        /// The frame's declared content size.
        declared: u64,
        /// 64 + the envelope's body length.
        envelope: u64,
    },
}

fn fault(blob: &str, fault: CompressionFault) -> FormatError {
    FormatError::Compression {
        blob: blob.to_string(),
        fault,
    }
}

/// Whether a stored object is a zstd frame (by its first four bytes).
pub fn is_compressed(stored: &[u8]) -> bool {
    stored.starts_with(&ZSTD_MAGIC)
}

/// The length of the frame header at the start of `head` (RFC 8878,
/// 3.1.1.1), or `None` if `head` is too short to tell.
fn header_len(head: &[u8], blob: &str) -> Result<Option<usize>, FormatError> {
    let Some(&fhd) = head.get(4) else {
        return Ok(None);
    };
    if fhd & 0x08 != 0 {
        return Err(fault(
            blob,
            CompressionFault::CorruptFrame {
                reason: "reserved bit set in the frame header descriptor".into(),
            },
        ));
    }
    let single_segment = fhd & 0x20 != 0;
    let dict_id = [0, 1, 2, 4][usize::from(fhd & 0x03)];
    let content_size = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let len = 5 + usize::from(!single_segment) + dict_id + content_size;
    Ok((head.len() >= len).then_some(len))
}

/// Decompresses one zstd frame as it streams in, handing its output out
/// in chunks with the bounds of the module doc applied before any chunk
/// is handed out.
pub struct FrameDecoder {
    blob: String,
    max: u64,
    /// Frame bytes held until the header is whole.
    head: Vec<u8>,
    declared: Option<u64>,
    decoder: Decoder<'static>,
    out: Vec<u8>,
    decoded: u64,
    /// The first decompressed bytes, until the envelope is checked.
    envelope: Vec<u8>,
    envelope_checked: bool,
    done: bool,
}

impl FrameDecoder {
    /// A decoder for the stored object of `blob` (a name for errors) whose
    /// decompressed size may not exceed `max` bytes.
    pub fn new(blob: &str, max: u64) -> Result<Self, FormatError> {
        let corrupt = |e: std::io::Error| {
            fault(
                blob,
                CompressionFault::CorruptFrame {
                    reason: e.to_string(),
                },
            )
        };
        let mut decoder = Decoder::new().map_err(corrupt)?;
        decoder
            .set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(corrupt)?;
        Ok(FrameDecoder {
            blob: blob.to_string(),
            max,
            head: Vec::new(),
            declared: None,
            decoder,
            out: vec![0; OUT_CHUNK],
            decoded: 0,
            envelope: Vec::with_capacity(ENVELOPE_LEN),
            envelope_checked: false,
            done: false,
        })
    }

    /// The frame's declared content size, once its header has arrived.
    pub fn declared(&self) -> Option<u64> {
        self.declared
    }

    /// Feeds the next bytes of the stored object; each chunk of output
    /// goes to `sink`, in order.
    pub fn push(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.declared.is_some() {
            return self.feed(input, sink);
        }
        self.head.extend_from_slice(input);
        let Some(len) = header_len(&self.head, &self.blob)? else {
            return Ok(());
        };
        let declared = match zstd::zstd_safe::get_frame_content_size(&self.head[..len]) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(fault(&self.blob, CompressionFault::NoContentSize).into()),
            Err(_) => {
                return Err(fault(
                    &self.blob,
                    CompressionFault::CorruptFrame {
                        reason: "unreadable frame header".into(),
                    },
                )
                .into())
            }
        };
        if declared > self.max {
            return Err(FormatError::TooLarge {
                blob: self.blob.clone(),
                what: "decompressed blob size (its zstd frame's content size)",
                value: declared,
                limit: self.max,
            }
            .into());
        }
        self.declared = Some(declared);
        let head = std::mem::take(&mut self.head);
        self.feed(&head, sink)
    }

    fn feed(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if input.is_empty() {
            return Ok(());
        }
        if self.done {
            return Err(fault(&self.blob, CompressionFault::TrailingBytes).into());
        }
        let declared = self.declared.expect("fed after the header");
        let mut inb = InBuffer::around(input);
        loop {
            let mut outb = OutBuffer::around(&mut self.out[..]);
            let hint = self.decoder.run(&mut inb, &mut outb).map_err(|e| {
                fault(
                    &self.blob,
                    CompressionFault::CorruptFrame {
                        reason: e.to_string(),
                    },
                )
            })?;
            let n = outb.pos();
            if n > 0 {
                self.decoded += n as u64;
                if self.decoded > declared {
                    return Err(fault(
                        &self.blob,
                        CompressionFault::ExpandsPast { limit: declared },
                    )
                    .into());
                }
                let chunk = &self.out[..n];
                if !self.envelope_checked {
                    let take = (ENVELOPE_LEN - self.envelope.len()).min(n);
                    self.envelope.extend_from_slice(&chunk[..take]);
                    if self.envelope.len() == ENVELOPE_LEN {
                        check_envelope(&self.envelope, declared, &self.blob)?;
                        self.envelope_checked = true;
                    }
                }
                sink(chunk)?;
            }
            if hint == 0 {
                self.done = true;
                if inb.pos() < input.len() {
                    return Err(fault(&self.blob, CompressionFault::TrailingBytes).into());
                }
                return Ok(());
            }
            if inb.pos() == input.len() && n < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Ends the stream: the frame must be complete and have produced
    /// exactly its declared size. Returns that size.
    pub fn finish(self) -> Result<u64, FormatError> {
        let declared = match self.declared {
            Some(n) => n,
            None => {
                return Err(fault(
                    &self.blob,
                    CompressionFault::CorruptFrame {
                        reason: format!(
                            "the object ends inside the frame header ({} bytes)",
                            self.head.len()
                        ),
                    },
                ))
            }
        };
        if !self.done || self.decoded != declared {
            return Err(fault(
                &self.blob,
                CompressionFault::EndsEarly {
                    decoded: self.decoded,
                    declared,
                },
            ));
        }
        if !self.envelope_checked {
            // Shorter than an envelope: say so as the envelope reader does.
            Envelope::decode(&self.envelope, &self.blob)?;
        }
        Ok(declared)
    }
}

/// The envelope at the start of the decompressed bytes must be burrow's
/// and declare the frame's content size.
fn check_envelope(head: &[u8], declared: u64, blob: &str) -> Result<(), FormatError> {
    let env = Envelope::decode(head, blob)?;
    let envelope = (ENVELOPE_LEN as u64).saturating_add(env.body_len);
    if envelope != declared {
        return Err(fault(
            blob,
            CompressionFault::EnvelopeMismatch { declared, envelope },
        ));
    }
    Ok(())
}

/// The raw blob of a whole stored object held in memory: the object
/// itself if it is not compressed, else its frame decompressed (at most
/// `max` bytes, with every check of [`FrameDecoder`]). CPU work for a
/// compressed object: call it off the async workers.
pub fn decode_stored(stored: Bytes, blob: &str, max: u64) -> Result<Bytes, Error> {
    if !is_compressed(&stored) {
        return Ok(stored);
    }
    let mut decoder = FrameDecoder::new(blob, max)?;
    // Grown as the output arrives (not reserved from the declared size,
    // which only the envelope check vouches for).
    let mut out: Vec<u8> = Vec::new();
    decoder.push(&stored, &mut |chunk: &[u8]| {
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    decoder.finish()?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::envelope::BlobKind;

    fn raw_blob() -> Vec<u8> {
        let body: Vec<u8> = (0..40_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut raw = Envelope::seal(BlobKind::Snapshot, 0, 1, &body)
            .encode()
            .to_vec();
        raw.extend_from_slice(&body);
        raw
    }

    /// A frame that arrives one byte at a time (a store's stream may cut
    /// the header anywhere) decodes to the same blob as one that arrives
    /// whole.
    #[test]
    fn frame_split_into_single_bytes_decodes() {
        let raw = raw_blob();
        let stored = Compression::default()
            .compress(Bytes::from(raw.clone()))
            .unwrap();
        assert!(is_compressed(&stored));
        let mut decoder = FrameDecoder::new("snapshot/1", u64::MAX).unwrap();
        let mut out = Vec::new();
        for byte in stored.iter() {
            decoder
                .push(std::slice::from_ref(byte), &mut |chunk| {
                    out.extend_from_slice(chunk);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(decoder.finish().unwrap(), raw.len() as u64);
        assert_eq!(out, raw);
        let whole = decode_stored(stored, "snapshot/1", u64::MAX).unwrap();
        assert_eq!(&whole[..], &raw[..]);
        // Raw objects pass through untouched.
        let same = decode_stored(Bytes::from(raw.clone()), "snapshot/1", 0).unwrap();
        assert_eq!(&same[..], &raw[..]);
    }

    /// An object that ends inside the frame header is a named error.
    #[test]
    fn object_ending_in_the_header() {
        let stored = Compression::default()
            .compress(Bytes::from(raw_blob()))
            .unwrap();
        let err = decode_stored(stored.slice(..5), "delta/1-2", u64::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Format(FormatError::Compression {
                    fault: CompressionFault::CorruptFrame { .. },
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
