//! The key index of a snapshot type: the one place that knows its layout.
//!
//! A snapshot type with key fields carries an open-addressing hash table
//! from key hash to ordinal, built by the producer ([`KeyIndexBuilder`],
//! called by the snapshot writer), probed by every lookup
//! ([`KeyIndex::probe`], called by `TypeView::find`), walked slot by slot
//! ([`KeyIndex::occupied`]) and checked against the type's records
//! ([`KeyIndex::check`], called by `verify` and `burrow inspect`).
//!
//! # Layout (format v2)
//!
//! `slots` little-endian `u64` words, any number of them (zero for a type
//! without key fields or without records). A slot is `0` when free;
//! otherwise the high 32 bits of the record's key hash (the tag) in its
//! high 32 bits and the record's ordinal plus one in its low 32 bits.
//!
//! A key hashing to `h` is looked for from its home slot
//! `((h & 0xffff_ffff) * slots) >> 32` onwards, one slot at a time
//! (wrapping), up to the first free slot. The home comes from the hash's
//! low half and the tag from its high half, so the two are independent,
//! and multiplying instead of masking lets the table have any size: the
//! load factor is [`LOAD_PERCENT`] exactly rather than wherever the next
//! power of two falls.
//!
//! A lookup reads one slot (rarely two: linear probing at this load stays
//! within a cache line or the next), then the record, whose own key
//! confirms the candidate: two dependent memory reads.
//!
//! # Invariants
//!
//! - The builder sizes the table to [`slots_for`] its record count, so it
//!   always has a free slot; it refuses an insert that would leave none.
//! - A probe never reads outside the words it is given and stops after
//!   `slots` steps, so a hostile index (no free slot) can make a lookup
//!   miss, never hang or panic.
//! - An entry's tag only proposes a candidate: the reader confirms every
//!   candidate by the record's own key, so a stale or hostile entry cannot
//!   answer a lookup with the wrong record.

/// The index's load factor in percent: entries / slots. Chosen by
/// measurement (`BENCHMARKS.md`, "key index load factor"): at 1M records
/// lookups at 70% cost within noise of 50%, for 29% fewer index bytes
/// (6.8% of the workload's snapshot).
pub const LOAD_PERCENT: usize = 70;

/// The number of slots of the key index for `count` records (zero for no
/// records): `count / LOAD_PERCENT%`, and at least one more than `count`.
pub fn slots_for(count: u32) -> usize {
    if count == 0 {
        0
    } else {
        (count as usize * 100)
            .div_ceil(LOAD_PERCENT)
            .max(count as usize + 1)
    }
}

#[inline]
fn entry(hash: u64, ordinal: u32) -> u64 {
    (hash >> 32) << 32 | (u64::from(ordinal) + 1)
}

#[inline]
fn home(hash: u64, slots: usize) -> usize {
    (((hash & 0xffff_ffff) * slots as u64) >> 32) as usize
}

/// Builds a key index for a known number of records.
#[derive(Debug)]
pub struct KeyIndexBuilder {
    words: Vec<u64>,
    used: usize,
}

impl KeyIndexBuilder {
    /// An empty index sized for `count` records ([`slots_for`]).
    pub fn new(count: u32) -> Self {
        KeyIndexBuilder {
            words: vec![0; slots_for(count)],
            used: 0,
        }
    }

    /// Adds the record at `ordinal`, whose key hashes to `hash`. Returns
    /// `false`, adding nothing, if the index would be left without a free
    /// slot (more records than it was sized for).
    pub fn insert(&mut self, hash: u64, ordinal: u32) -> bool {
        let slots = self.words.len();
        if self.used + 1 >= slots {
            return false;
        }
        let mut slot = home(hash, slots);
        while self.words[slot] != 0 {
            slot += 1;
            if slot == slots {
                slot = 0;
            }
        }
        self.words[slot] = entry(hash, ordinal);
        self.used += 1;
        true
    }

    /// The index's words, as they are written into the snapshot.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

/// One occupied slot of a key index, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The slot's position in the table.
    pub slot: usize,
    /// The high 32 bits of the record's key hash.
    pub tag: u32,
    /// The record's ordinal.
    pub ordinal: u32,
}

impl Slot {
    #[inline]
    fn decode(slot: usize, entry: u64) -> Slot {
        Slot {
            slot,
            tag: (entry >> 32) as u32,
            ordinal: (entry as u32).wrapping_sub(1),
        }
    }
}

/// A key index as read from a snapshot: a view of its words.
#[derive(Clone, Copy, Debug)]
pub struct KeyIndex<'a> {
    words: &'a [u64],
}

impl<'a> KeyIndex<'a> {
    /// Views `words` as a key index.
    #[inline]
    pub fn new(words: &'a [u64]) -> Self {
        KeyIndex { words }
    }

    /// The number of slots.
    #[inline]
    pub fn slots(&self) -> usize {
        self.words.len()
    }

    /// The slots whose tag matches `hash`, in probe order: the candidates
    /// for a key hashing to `hash`, each still to be confirmed by its
    /// record's key.
    #[inline]
    pub fn probe(&self, hash: u64) -> Probe<'a> {
        let slots = self.slots();
        Probe {
            words: self.words,
            slot: home(hash, slots),
            left: slots,
            tag: hash >> 32,
        }
    }

    /// Every occupied slot, in slot order.
    pub fn occupied(&self) -> impl Iterator<Item = Slot> + 'a {
        self.words
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != 0)
            .map(|(slot, &e)| Slot::decode(slot, e))
    }

    /// Checks the index against the type it indexes: `present(o)` says
    /// whether ordinal `o` holds a record, and the type says it holds
    /// `record_count` records. Every occupied slot must name a distinct
    /// ordinal holding a record; there must be one entry per record and at
    /// least one free slot. Returns the number of entries, or the reason
    /// the index is wrong (naming the slot).
    pub fn check(
        &self,
        ordinal_limit: u32,
        present: impl Fn(u32) -> bool,
        record_count: u32,
    ) -> Result<usize, String> {
        let slots = self.slots();
        // (ordinal, slot) of every entry: memory in proportion to the
        // index, whatever ordinal limit a hostile blob claims.
        let mut named = Vec::new();
        for s in self.occupied() {
            if s.ordinal >= ordinal_limit || !present(s.ordinal) {
                return Err(format!(
                    "key index slot {} names ordinal {}, which holds no record",
                    s.slot, s.ordinal
                ));
            }
            named.push((s.ordinal, s.slot));
        }
        named.sort_unstable();
        if let Some(w) = named.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!(
                "key index slot {} names ordinal {}, which an earlier slot names too",
                w[1].1, w[1].0
            ));
        }
        let used = named.len();
        if used != record_count as usize || (used > 0 && used >= slots) {
            return Err(format!(
                "key index has {used} entries in {slots} slots for {record_count} records"
            ));
        }
        Ok(used)
    }

    /// Checks that a lookup finds every entry: for each occupied slot,
    /// `key_hash(ordinal)` (the hash of the key of the record it names,
    /// which [`Self::check`] has proven to exist) has the slot's tag, and
    /// probing from that hash's home slot reaches the slot. An entry that
    /// fails either would leave its record unfound by key. Returns the
    /// reason naming the slot, or `key_hash`'s own error.
    pub fn check_keys(
        &self,
        mut key_hash: impl FnMut(u32) -> Result<u64, String>,
    ) -> Result<(), String> {
        for s in self.occupied() {
            let hash = key_hash(s.ordinal)?;
            if (hash >> 32) as u32 != s.tag {
                return Err(format!(
                    "key index slot {} names ordinal {}, whose key does not hash to the slot's tag",
                    s.slot, s.ordinal
                ));
            }
            if !self.probe(hash).any(|found| found.slot == s.slot) {
                return Err(format!(
                    "key index slot {} (ordinal {}) lies past a free slot from its key's home \
                     slot {}: a lookup never reaches it",
                    s.slot,
                    s.ordinal,
                    home(hash, self.slots())
                ));
            }
        }
        Ok(())
    }
}

/// The candidate slots for one hash ([`KeyIndex::probe`]).
#[derive(Clone, Debug)]
pub struct Probe<'a> {
    words: &'a [u64],
    slot: usize,
    left: usize,
    tag: u64,
}

impl Iterator for Probe<'_> {
    type Item = Slot;

    #[inline]
    fn next(&mut self) -> Option<Slot> {
        while self.left != 0 {
            self.left -= 1;
            let slot = self.slot;
            let Some(&entry) = self.words.get(slot) else {
                break;
            };
            if entry == 0 {
                break;
            }
            self.slot = if slot + 1 == self.words.len() {
                0
            } else {
                slot + 1
            };
            if entry >> 32 == self.tag {
                return Some(Slot::decode(slot, entry));
            }
        }
        self.left = 0;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(records: &[(u64, u32)]) -> KeyIndexBuilder {
        let mut b = KeyIndexBuilder::new(records.len() as u32);
        for &(hash, o) in records {
            assert!(b.insert(hash, o));
        }
        b
    }

    #[test]
    fn probe_finds_what_the_builder_put_even_on_collisions() {
        // Three hashes with the same home slot and two with the same tag.
        let records = [(0x1_0000_0005, 0), (0x2_0000_0005, 1), (0x1_0000_0006, 2)];
        let b = built(&records);
        let index = KeyIndex::new(b.words());
        assert_eq!(index.slots(), slots_for(3));
        for &(hash, o) in &records {
            let hits: Vec<u32> = index.probe(hash).map(|s| s.ordinal).collect();
            assert!(hits.contains(&o), "{hash:#x}: {hits:?}");
            assert!(hits
                .iter()
                .all(|&h| records[h as usize].0 >> 32 == hash >> 32));
        }
        assert_eq!(index.probe(0x9_0000_0005).count(), 0);
        assert_eq!(index.check(3, |_| true, 3), Ok(3));
        assert_eq!(index.occupied().count(), 3);
    }

    #[test]
    fn slots_follow_the_load_factor() {
        assert_eq!(slots_for(0), 0);
        assert_eq!(slots_for(1), 2);
        assert_eq!(slots_for(700), 1000);
        assert!(slots_for(1_000_000) * 8 <= 12 * 1_000_000);
    }

    #[test]
    fn a_full_builder_refuses_rather_than_looping() {
        let mut b = KeyIndexBuilder::new(1);
        assert!(b.insert(7, 0));
        assert!(!b.insert(7, 1), "two slots, one must stay free");
        assert!(!KeyIndexBuilder::new(0).insert(7, 0));
    }

    #[test]
    fn a_hostile_index_misses_without_hanging_or_panicking() {
        // Full, and tags all matching.
        let words = [5u64 << 32 | 1; 3];
        let index = KeyIndex::new(&words);
        assert!(index.probe(5 << 32).count() <= 3);
        assert!(index.check(1, |_| true, 1).is_err());
        assert_eq!(KeyIndex::new(&[]).probe(5 << 32).count(), 0);
    }

    #[test]
    fn check_names_the_slot_that_is_wrong() {
        let b = built(&[(3, 0), (4, 1)]);
        let index = KeyIndex::new(b.words());
        let slot = index.occupied().find(|s| s.ordinal == 1).unwrap().slot;
        // Ordinal 1 is a hole here.
        let err = index.check(2, |o| o == 0, 2).unwrap_err();
        assert!(
            err.contains(&format!(
                "slot {slot} names ordinal 1, which holds no record"
            )),
            "{err}"
        );
        let err = index.check(2, |_| true, 3).unwrap_err();
        assert!(err.contains("2 entries in 3 slots for 3 records"), "{err}");
        // Both entries naming ordinal 0: the later slot is named.
        let mut words = b.words().to_vec();
        let later = (0..words.len()).rev().find(|&s| words[s] != 0).unwrap();
        words[later] = words[later] & !0xffff_ffff | 1;
        let err = KeyIndex::new(&words).check(2, |_| true, 2).unwrap_err();
        assert!(
            err.contains(&format!(
                "slot {later} names ordinal 0, which an earlier slot names too"
            )),
            "{err}"
        );
        // An ordinal limit far past the index costs nothing.
        let err = index.check(u32::MAX, |o| o == 0, 2).unwrap_err();
        assert!(
            err.contains("names ordinal 1, which holds no record"),
            "{err}"
        );
    }

    /// Invariant: an index passes `check_keys` only if a lookup of every
    /// record's key reaches the slot naming it.
    #[test]
    fn check_keys_names_an_entry_a_lookup_would_miss() {
        // Hashes with distinct tags and homes 0, 0 and 2 of 5 slots.
        let hashes = [0x1_0000_0000u64, 0x2_0000_0001, 0x3_9999_9999];
        let b = built(&[(hashes[0], 0), (hashes[1], 1), (hashes[2], 2)]);
        let key_hash = |o: u32| Ok(hashes[o as usize]);
        assert_eq!(KeyIndex::new(b.words()).check_keys(key_hash), Ok(()));

        // Ordinals of two entries swapped: tags no longer match.
        let mut words = b.words().to_vec();
        let used: Vec<usize> = (0..words.len()).filter(|&s| words[s] != 0).collect();
        let (a, c) = (words[used[0]], words[used[1]]);
        words[used[0]] = a & !0xffff_ffff | c & 0xffff_ffff;
        words[used[1]] = c & !0xffff_ffff | a & 0xffff_ffff;
        let err = KeyIndex::new(&words).check_keys(key_hash).unwrap_err();
        assert!(
            err.contains(&format!("slot {} names ordinal", used[0]))
                && err.contains("does not hash to the slot's tag"),
            "{err}"
        );

        // An entry moved past a free slot from its home: its tag is right,
        // but probing stops at the free slot first.
        let mut words = b.words().to_vec();
        let at = (0..words.len()).find(|&s| words[s] >> 32 == 3).unwrap();
        let free = (0..words.len()).rev().find(|&s| words[s] == 0).unwrap();
        assert!(free > at + 1, "{words:x?}");
        words.swap(at, free);
        let err = KeyIndex::new(&words).check_keys(key_hash).unwrap_err();
        assert!(err.contains("a lookup never reaches it"), "{err}");

        let err = KeyIndex::new(b.words())
            .check_keys(|o| Err(format!("record {o} unreadable")))
            .unwrap_err();
        assert!(err.contains("unreadable"), "{err}");
    }
}
