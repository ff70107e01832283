//! A dataset's identity: 128 random bits minted by the producer at the
//! first cycle of a new dataset, and carried in every blob header and
//! every announcement entry from then on.
//!
//! Names alone do not tell two datasets apart: a store deleted and
//! recreated at the same place starts again at `snapshot/1`, `announce/1`,
//! and a consumer's cache, keyed by name, would take the old dataset's
//! files for the new one's. The identity is what says whether two blobs,
//! or a blob and an announcement, belong together; it is checked wherever
//! two sources meet (a delta applied to a state, a blob against the
//! announcement a consumer planned by, one log entry after another,
//! restore, verify).
//!
//! Invariants:
//!
//! - An id is never zero: zero is what Cap'n Proto reads for a field a
//!   writer never set (a blob written before dataset ids existed), so it
//!   means "no identity", and a reader refuses it rather than letting it
//!   match another zero.
//! - On the wire it is two `UInt64` fields, `datasetIdHi` and
//!   `datasetIdLo` (the high and low 64 bits); to people it is 32
//!   lowercase hex digits, high bits first.
//! - It is unique, not secret: minting mixes std's randomly keyed hashers
//!   with the time, the process id, a per-process counter and an address
//!   through xxh3-128 (no dependency on a random number crate). Anyone who
//!   can read the store reads the id; it proves nothing about who wrote a
//!   blob.

use crate::error::FormatError;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A dataset's identity (never zero). `Display` gives 32 lowercase hex
/// digits; [`DatasetId::parse`] reads them back.
///
/// Held as two `u64`s (high first, so the derived order is the number's),
/// not a `u128`: that keeps its alignment, and so the size of the errors
/// that carry two of them, at 8 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetId {
    hi: u64,
    lo: u64,
}

impl DatasetId {
    /// A fresh id, different (with overwhelming probability) from every
    /// other id ever minted, in this process or any other.
    pub fn mint() -> DatasetId {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let mut seed = Vec::with_capacity(64);
            // Two hashers, each keyed by std with fresh random keys (from
            // the OS on first use in a thread, then incremented).
            for _ in 0..2 {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
                seed.extend_from_slice(&h.finish().to_le_bytes());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed.extend_from_slice(&now.to_le_bytes());
            seed.extend_from_slice(&std::process::id().to_le_bytes());
            seed.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            let local = 0u8;
            seed.extend_from_slice(&(&local as *const u8 as usize).to_le_bytes());
            if let Some(id) = DatasetId::from_u128(xxhash_rust::xxh3::xxh3_128(&seed)) {
                return id;
            }
        }
    }

    /// The id with this value; `None` for zero (no identity).
    pub const fn from_u128(value: u128) -> Option<DatasetId> {
        DatasetId::from_parts((value >> 64) as u64, value as u64)
    }

    /// The id from its two wire fields; `None` if both are zero.
    pub const fn from_parts(hi: u64, lo: u64) -> Option<DatasetId> {
        if hi == 0 && lo == 0 {
            return None;
        }
        Some(DatasetId { hi, lo })
    }

    /// The id as read from a blob or entry named `blob`: zero is an error
    /// saying the blob has no dataset identity.
    pub fn read(hi: u64, lo: u64, blob: &str) -> Result<DatasetId, FormatError> {
        DatasetId::from_parts(hi, lo).ok_or_else(|| FormatError::Corrupt {
            blob: blob.to_string(),
            reason: "has no dataset identity (written before dataset ids, or not by burrow)".into(),
        })
    }

    /// The id as one number.
    pub fn get(self) -> u128 {
        u128::from(self.hi) << 64 | u128::from(self.lo)
    }

    /// The high 64 bits (`datasetIdHi`).
    pub fn hi(self) -> u64 {
        self.hi
    }

    /// The low 64 bits (`datasetIdLo`).
    pub fn lo(self) -> u64 {
        self.lo
    }

    /// Reads 32 hex digits (either case); `None` for anything else or zero.
    pub fn parse(text: &str) -> Option<DatasetId> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(text, 16)
            .ok()
            .and_then(DatasetId::from_u128)
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.get())
    }
}

impl fmt::Debug for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatasetId({self})")
    }
}

/// Checks that `found` (the id in `blob`) is `expected`; a
/// [`FormatError::DatasetMismatch`] naming both otherwise.
pub fn check_same(blob: &str, expected: DatasetId, found: DatasetId) -> Result<(), FormatError> {
    if expected == found {
        return Ok(());
    }
    Err(FormatError::DatasetMismatch {
        blob: blob.to_string(),
        expected,
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_differ_and_round_trip_through_hex_and_parts() {
        let ids: std::collections::HashSet<DatasetId> =
            (0..1000).map(|_| DatasetId::mint()).collect();
        assert_eq!(ids.len(), 1000);
        let id = DatasetId::mint();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(DatasetId::parse(&text), Some(id));
        assert_eq!(DatasetId::from_parts(id.hi(), id.lo()), Some(id));
        assert_eq!(DatasetId::from_parts(0, 0), None);
        assert_eq!(
            DatasetId::from_parts(0, 1).unwrap().to_string(),
            format!("{:032x}", 1)
        );
        assert!(DatasetId::from_parts(1, 0) > DatasetId::from_parts(0, u64::MAX));
        assert_eq!(DatasetId::parse(&"0".repeat(32)), None);
        assert_eq!(DatasetId::parse("12"), None);
        assert_eq!(DatasetId::parse(&"+1".repeat(16)), None);
        let err = DatasetId::read(0, 0, "snapshot/1").unwrap_err().to_string();
        assert!(
            err.contains("snapshot/1") && err.contains("no dataset identity"),
            "{err}"
        );
    }
}
