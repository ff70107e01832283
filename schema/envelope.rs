//! The fixed 64-byte envelope in front of every blob and announcement entry.
//!
//! The envelope is read and checked before any other byte of a blob: magic,
//! format version, kind, a checksum of the envelope itself, and the body
//! length, which is bounded before it is used. The body's own checksum
//! (xxh3-128) is checked by [`Envelope::verify_body`] or, while streaming a
//! download, by [`BodyHasher`]. `schema/FORMAT.md` gives the byte layout.

use crate::error::FormatError;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

/// Size of the envelope in bytes; the body starts here, 8-byte aligned.
pub const ENVELOPE_LEN: usize = 64;
/// The first eight bytes of every blob.
pub const MAGIC: [u8; 8] = *b"BURROW\r\n";
/// The newest format version this build reads and writes (format v2:
/// records as struct list elements; see `schema/FORMAT.md`).
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this build reads. Format v1 (one message per
/// record) was never released and is not read; from v2 on, every build
/// reads every earlier version (the golden files in `tests/data/` hold it
/// to that).
pub const OLDEST_READABLE_VERSION: u16 = 2;
/// The format versions a producer of this build can be configured to
/// write (`ProducerBuilder::format_version`), for rolling upgrades: a
/// fleet's producers keep writing the version its oldest consumers read
/// until every consumer reads the newer one.
pub const WRITABLE_VERSIONS: &[u16] = &[2];
/// Upper bound on a body length read from an envelope (1 TiB). Stores and
/// consumers apply their own, smaller, configured limits on top.
pub const MAX_BODY_LEN: u64 = 1 << 40;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// The full state at `to_version`.
    Snapshot,
    /// Moves a state from `from_version` to `to_version`.
    Delta,
    /// Moves a state from `from_version` back to `to_version` (`from > to`).
    Reverse,
    /// One entry of the announcement log.
    Announcement,
}

impl BlobKind {
    fn code(self) -> u16 {
        match self {
            BlobKind::Snapshot => 1,
            BlobKind::Delta => 2,
            BlobKind::Reverse => 3,
            BlobKind::Announcement => 4,
        }
    }

    fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => BlobKind::Snapshot,
            2 => BlobKind::Delta,
            3 => BlobKind::Reverse,
            4 => BlobKind::Announcement,
            _ => return None,
        })
    }

    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Snapshot => "snapshot",
            BlobKind::Delta => "delta",
            BlobKind::Reverse => "reverse",
            BlobKind::Announcement => "announcement",
        }
    }
}

/// The decoded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// What the blob holds.
    pub kind: BlobKind,
    /// For a snapshot, 0; for a delta, its start; for a reverse delta, the
    /// newer version it undoes; for an announcement, 0.
    pub from_version: u64,
    /// The version the blob produces; for an announcement, its sequence number.
    pub to_version: u64,
    /// Length of the body that follows the envelope, in bytes.
    pub body_len: u64,
    /// xxh3-128 of the body.
    pub checksum: u128,
}

impl Envelope {
    /// The envelope for `body`, with its checksum computed.
    pub fn seal(kind: BlobKind, from_version: u64, to_version: u64, body: &[u8]) -> Self {
        Envelope {
            kind,
            from_version,
            to_version,
            body_len: body.len() as u64,
            checksum: xxh3_128(body),
        }
    }

    /// The 64 bytes on disk: all integers little-endian.
    ///
    /// | offset | size | field |
    /// | --- | --- | --- |
    /// | 0 | 8 | magic `BURROW\r\n` |
    /// | 8 | 2 | format version |
    /// | 10 | 2 | kind |
    /// | 12 | 4 | reserved, zero |
    /// | 16 | 8 | from version |
    /// | 24 | 8 | to version |
    /// | 32 | 8 | body length |
    /// | 40 | 16 | xxh3-128 of the body |
    /// | 56 | 8 | xxh3-64 of bytes 0..56 |
    pub fn encode(&self) -> [u8; ENVELOPE_LEN] {
        let mut out = [0u8; ENVELOPE_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&self.kind.code().to_le_bytes());
        out[16..24].copy_from_slice(&self.from_version.to_le_bytes());
        out[24..32].copy_from_slice(&self.to_version.to_le_bytes());
        out[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        out[40..56].copy_from_slice(&self.checksum.to_le_bytes());
        let own = xxh3_64(&out[0..56]);
        out[56..64].copy_from_slice(&own.to_le_bytes());
        out
    }

    /// Decodes and checks the envelope at the start of `bytes`. `blob` names
    /// the blob in errors. Does not look at the body.
    pub fn decode(bytes: &[u8], blob: &str) -> Result<Self, FormatError> {
        let corrupt = |reason: String| FormatError::Corrupt {
            blob: blob.to_string(),
            reason,
        };
        if bytes.len() < ENVELOPE_LEN {
            return Err(corrupt(format!(
                "truncated envelope: {} bytes, need {ENVELOPE_LEN}",
                bytes.len()
            )));
        }
        let head = &bytes[..ENVELOPE_LEN];
        if head[0..8] != MAGIC {
            return Err(corrupt(format!(
                "bad magic {:02x?}, expected {:02x?} (not a burrow blob)",
                &head[0..8],
                MAGIC
            )));
        }
        let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let version = u16_at(8);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::Incompatible {
                blob: blob.to_string(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let own = xxh3_64(&head[0..56]);
        if own != u64_at(56) {
            return Err(corrupt("envelope checksum mismatch".to_string()));
        }
        let kind = BlobKind::from_code(u16_at(10))
            .ok_or_else(|| corrupt(format!("unknown blob kind {}", u16_at(10))))?;
        let body_len = u64_at(32);
        if body_len > MAX_BODY_LEN {
            return Err(corrupt(format!(
                "body length {body_len} exceeds the format's limit {MAX_BODY_LEN}"
            )));
        }
        if body_len % 8 != 0 {
            return Err(corrupt(format!(
                "body length {body_len} is not a whole number of 8-byte words"
            )));
        }
        Ok(Envelope {
            kind,
            from_version: u64_at(16),
            to_version: u64_at(24),
            body_len,
            checksum: u128::from_le_bytes(head[40..56].try_into().expect("16 bytes")),
        })
    }

    /// Decodes the envelope of a whole blob held in memory, checks that the
    /// body is exactly `body_len` bytes and that its checksum matches, and
    /// returns the envelope and the body.
    pub fn open<'a>(bytes: &'a [u8], blob: &str) -> Result<(Self, &'a [u8]), FormatError> {
        let envelope = Self::decode(bytes, blob)?;
        let body = &bytes[ENVELOPE_LEN..];
        envelope.check_len(body.len() as u64, blob)?;
        envelope.verify_body(body, blob)?;
        Ok((envelope, body))
    }

    /// Checks that a body of `actual` bytes is the length the envelope says.
    pub fn check_len(&self, actual: u64, blob: &str) -> Result<(), FormatError> {
        if actual != self.body_len {
            return Err(FormatError::Corrupt {
                blob: blob.to_string(),
                reason: format!(
                    "body is {actual} bytes but the envelope says {}",
                    self.body_len
                ),
            });
        }
        Ok(())
    }

    /// Checks the body's checksum.
    pub fn verify_body(&self, body: &[u8], blob: &str) -> Result<(), FormatError> {
        self.check_checksum(xxh3_128(body), blob)
    }

    /// Compares a checksum computed elsewhere (see [`BodyHasher`]).
    pub fn check_checksum(&self, actual: u128, blob: &str) -> Result<(), FormatError> {
        if actual != self.checksum {
            return Err(FormatError::Corrupt {
                blob: blob.to_string(),
                reason: format!(
                    "body checksum mismatch: computed {actual:032x}, envelope says {:032x}",
                    self.checksum
                ),
            });
        }
        Ok(())
    }
}

/// Streaming xxh3-128 of a body, for checking a blob while it downloads.
#[derive(Clone, Default)]
pub struct BodyHasher(Xxh3);

impl BodyHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        BodyHasher(Xxh3::new())
    }
    /// Hashes the next bytes of the body.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
    /// The xxh3-128 of everything seen, as the envelope stores it.
    pub fn finish(&self) -> u128 {
        self.0.digest128()
    }
}

/// Frames `body` with a sealed envelope: the bytes of a whole blob.
pub fn frame(kind: BlobKind, from_version: u64, to_version: u64, body: &[u8]) -> Vec<u8> {
    let envelope = Envelope::seal(kind, from_version, to_version, body);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&envelope.encode());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let body = [7u8; 24];
        let blob = frame(BlobKind::Delta, 3, 4, &body);
        let (env, got) = Envelope::open(&blob, "t").unwrap();
        assert_eq!(env.kind, BlobKind::Delta);
        assert_eq!((env.from_version, env.to_version), (3, 4));
        assert_eq!(got, &body);
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let body = [0x5au8; 16];
        let blob = frame(BlobKind::Snapshot, 0, 9, &body);
        for bit in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Envelope::open(&bad, "t").is_err(),
                "flip of bit {bit} passed"
            );
        }
    }

    #[test]
    fn truncation_wrong_magic_and_version_are_named() {
        let blob = frame(BlobKind::Snapshot, 0, 1, &[0u8; 8]);
        let err = Envelope::open(&blob[..30], "snapshot/1").unwrap_err();
        assert!(err.to_string().contains("truncated envelope"), "{err}");
        let err = Envelope::open(&blob[..70], "snapshot/1").unwrap_err();
        assert!(err.to_string().contains("body is 6 bytes"), "{err}");
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert!(Envelope::open(&bad, "b")
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let mut bad = blob;
        bad[8] = 9;
        let own = xxh3_64(&bad[0..56]).to_le_bytes();
        bad[56..64].copy_from_slice(&own);
        assert!(matches!(
            Envelope::open(&bad, "b").unwrap_err(),
            FormatError::Incompatible { found: 9, .. }
        ));
    }
}
