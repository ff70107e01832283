//! State checksums: what a blob's header says the whole state it makes
//! holds, so that a delta that does not lead where its producer meant is
//! caught before anyone serves it.
//!
//! A type's checksum is the wrapping sum, over its records, of
//! [`entry`]`(type id, ordinal, record hash)`, where the record hash is
//! xxh3-64 of the record's canonical message ([`record_hash`]: the words
//! the producer canonicalized, and the words
//! [`crate::schema::wire::canonical_record`] rebuilds from a blob). A sum
//! does not depend on the order records are visited in and is updated by
//! a delta in time proportional to the delta: subtract the entries of the
//! ordinals it removes or overwrites, add those of the records it sets.
//!
//! Every header carries the checksum of each type of the state the blob
//! makes (a reverse delta: the older state), so a consumer that reads only
//! some types checks those. The producer computes the new checksums from
//! its cycle's diff, then, before announcing, reads its own forward delta
//! back and applies it to the previous checksums ([`apply_delta`]): the two
//! must agree. A consumer applies each delta the same way and compares
//! with the delta's header; a snapshot's claim is checked by summing every
//! record. This guards against bugs and mismatched blobs, not against
//! tampering: the sum is not a cryptographic digest.

use crate::error::FormatError;
use crate::schema::blob::DeltaSection;
use crate::schema::wire::canonical_record;
use xxhash_rust::xxh3::xxh3_64;

/// The hash of one record's canonical message.
#[inline]
pub fn record_hash(words: &[u64]) -> u64 {
    xxh3_64(crate::schema::record::words_as_bytes(words))
}

/// One record's term in its type's checksum.
#[inline]
pub fn entry(type_id: u64, ordinal: u32, record_hash: u64) -> u64 {
    fmix64(record_hash ^ fmix64(type_id ^ u64::from(ordinal).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// MurmurHash3's 64-bit finalizer: every input bit reaches every output
/// bit.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// One type's checksum in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeChecksum {
    /// The type's node id.
    pub type_id: u64,
    /// The sum of its records' entries.
    pub checksum: u64,
}

/// The records of the state a delta applies to, as [`apply_delta`] needs
/// them.
pub trait PriorRecords {
    /// The record hash at `ordinal` of type `type_id`, `None` where the
    /// type has no record there (or the state does not hold the type).
    fn record_hash(&mut self, type_id: u64, ordinal: u32) -> Result<Option<u64>, FormatError>;
}

/// The checksum of each type a delta touches, after it: `before(type_id)`
/// is the type's checksum in the state it applies to (0 for a type that
/// state does not hold), `prior` reads that state's records. A dropped
/// type is left out (it has no checksum after). Sections for which `wanted`
/// is false are skipped (a consumer's type filter).
pub fn apply_delta(
    sections: &[DeltaSection],
    wanted: impl Fn(u64) -> bool,
    before: impl Fn(u64) -> u64,
    prior: &mut impl PriorRecords,
) -> Result<Vec<TypeChecksum>, FormatError> {
    let mut out = Vec::with_capacity(sections.len());
    let mut words = Vec::new();
    for s in sections {
        if s.dropped || !wanted(s.type_id) {
            continue;
        }
        let t = s.type_id;
        let mut sum = before(t);
        for &o in s.removed.get() {
            if let Some(h) = prior.record_hash(t, o)? {
                sum = sum.wrapping_sub(entry(t, o, h));
            }
        }
        let body = s.blob.segment();
        for (i, &o) in s.ordinals.get().iter().enumerate() {
            if let Some(h) = prior.record_hash(t, o)? {
                sum = sum.wrapping_sub(entry(t, o, h));
            }
            words.clear();
            canonical_record(
                body,
                s.lists.element(i as u32),
                s.lists.data,
                s.lists.ptrs,
                &mut words,
            )
            .map_err(|e| FormatError::Corrupt {
                blob: s.blob.name().to_string(),
                reason: format!("{}: record of ordinal {o}: {e}", s.name),
            })?;
            sum = sum.wrapping_add(entry(t, o, record_hash(&words)));
        }
        out.push(TypeChecksum {
            type_id: t,
            checksum: sum,
        });
    }
    Ok(out)
}

/// The error for a type whose records do not sum to what a header claims.
pub fn mismatch(
    blob: &str,
    type_name: &str,
    claimed: u64,
    computed: u64,
    how: &str,
) -> FormatError {
    FormatError::Corrupt {
        blob: blob.to_string(),
        reason: format!(
            "{type_name}: state checksum mismatch: the header says {claimed:016x}, {how} gives \
             {computed:016x}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_differ_by_type_ordinal_and_record() {
        let base = entry(1, 2, 3);
        assert_ne!(base, entry(2, 2, 3));
        assert_ne!(base, entry(1, 3, 3));
        assert_ne!(base, entry(1, 2, 4));
        // Swapping two records' ordinals changes the sum.
        let a = entry(1, 0, 10).wrapping_add(entry(1, 1, 20));
        let b = entry(1, 0, 20).wrapping_add(entry(1, 1, 10));
        assert_ne!(a, b);
    }

    #[test]
    fn record_hash_is_xxh3_of_the_words() {
        let words = [1u64, 2, 3];
        assert_eq!(
            record_hash(&words),
            xxh3_64(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0])
        );
    }
}
