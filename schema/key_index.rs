//! The key index of a snapshot type: the one place that knows its layout.
//!
//! A snapshot type with key fields carries an open-addressing hash table
//! from key hash to record, built by the producer ([`KeyIndexBuilder`],
//! called by the snapshot writer), probed by every lookup
//! ([`KeyIndex::probe`], called by `TypeView::find`), walked slot by slot
//! ([`KeyIndex::occupied`]) and checked against the type's offsets
//! ([`KeyIndex::check`], called by `verify` and `burrow inspect`).
//!
//! # Layout
//!
//! `2 * slots` little-endian `u64` words, `slots` a power of two (zero
//! words for a type without key fields or without records). Slot `s` is
//! the two words `2s` and `2s + 1`:
//!
//! - the **entry**: `0` for a free slot; otherwise the high 32 bits of the
//!   record's key hash (the tag) in its high 32 bits, and the record's
//!   ordinal plus one in its low 32 bits;
//! - the **place**: where the record lies in the type's `words` list, its
//!   first word in the low 32 bits and its length in words in the high 32.
//!
//! A key hashing to `h` is looked for from slot `h & (slots - 1)` onwards,
//! one slot at a time (wrapping), up to the first free slot.
//!
//! # Invariants
//!
//! - The builder sizes the table to [`slots_for`] its record count (a power
//!   of two at least twice the count), so it is at most half full and has
//!   a free slot; it refuses an insert that would leave none.
//! - A probe never reads outside the words it is given and stops after
//!   `slots` steps, so a hostile index (no free slot, a length that is not
//!   two words per power-of-two slots) can make a lookup miss, never hang
//!   or panic.
//! - An entry's tag only proposes a candidate: the reader confirms every
//!   candidate by the record's own key, so a stale or hostile entry cannot
//!   answer a lookup with the wrong record.

/// The number of slots of the key index for `count` records: a power of
/// two at least twice `count` (zero for no records).
pub fn slots_for(count: u32) -> usize {
    if count == 0 {
        0
    } else {
        (count as usize * 2).next_power_of_two()
    }
}

/// Checks that `words` index words are two per slot for a power-of-two
/// number of slots (or none); the reason if not.
pub fn check_shape(words: usize) -> Result<(), String> {
    if words != 0 && (!words.is_multiple_of(2) || !(words / 2).is_power_of_two()) {
        return Err(format!(
            "key index has {words} words, not two per slot for a power-of-two number of slots"
        ));
    }
    Ok(())
}

#[inline]
fn entry(hash: u64, ordinal: u32) -> u64 {
    (hash >> 32) << 32 | (u64::from(ordinal) + 1)
}

#[inline]
fn place(start: u32, len: u32) -> u64 {
    u64::from(start) | u64::from(len) << 32
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
            words: vec![0; 2 * slots_for(count)],
            used: 0,
        }
    }

    /// Adds the record at `ordinal`, whose key hashes to `hash` and which
    /// lies at `words[start..start + len]`. Returns `false`, adding
    /// nothing, if the index would be left without a free slot (more
    /// records than it was sized for).
    pub fn insert(&mut self, hash: u64, ordinal: u32, start: u32, len: u32) -> bool {
        let slots = self.words.len() / 2;
        if self.used + 1 >= slots {
            return false;
        }
        let mask = slots - 1;
        let mut slot = hash as usize & mask;
        while self.words[2 * slot] != 0 {
            slot = (slot + 1) & mask;
        }
        self.words[2 * slot] = entry(hash, ordinal);
        self.words[2 * slot + 1] = place(start, len);
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
    /// The record's first word in the type's `words` list.
    pub start: u32,
    /// The record's length in words.
    pub len: u32,
}

impl Slot {
    #[inline]
    fn decode(slot: usize, entry: u64, place: u64) -> Slot {
        Slot {
            slot,
            tag: (entry >> 32) as u32,
            ordinal: (entry as u32).wrapping_sub(1),
            start: place as u32,
            len: (place >> 32) as u32,
        }
    }

    /// The record's words, `start..start + len`.
    #[inline]
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// A key index as read from a snapshot: a view of its words.
#[derive(Clone, Copy, Debug)]
pub struct KeyIndex<'a> {
    words: &'a [u64],
}

impl<'a> KeyIndex<'a> {
    /// Views `words` as a key index (their shape is checked by
    /// [`check_shape`] when a snapshot is opened; a probe of a misshapen
    /// index misses, it does not fail).
    #[inline]
    pub fn new(words: &'a [u64]) -> Self {
        KeyIndex { words }
    }

    /// The number of slots.
    #[inline]
    pub fn slots(&self) -> usize {
        self.words.len() / 2
    }

    /// The slots whose tag matches `hash`, in probe order: the candidates
    /// for a key hashing to `hash`, each still to be confirmed by its
    /// record's key.
    #[inline]
    pub fn probe(&self, hash: u64) -> Probe<'a> {
        let slots = self.slots();
        Probe {
            words: self.words,
            mask: slots.wrapping_sub(1),
            slot: hash as usize & slots.wrapping_sub(1),
            left: slots,
            tag: hash >> 32,
        }
    }

    /// Every occupied slot, in slot order.
    pub fn occupied(&self) -> impl Iterator<Item = Slot> + 'a {
        self.words
            .chunks_exact(2)
            .enumerate()
            .filter(|(_, pair)| pair[0] != 0)
            .map(|(slot, pair)| Slot::decode(slot, pair[0], pair[1]))
    }

    /// Checks the index against the type it indexes, whose records lie at
    /// `offsets` (one offset per ordinal and one past the last; an empty
    /// range is a hole) and which says it holds `record_count` records.
    /// Every occupied slot must name a distinct ordinal holding a record
    /// and place it where `offsets` does; there must be one entry per
    /// record and at least one free slot. Returns the number of entries,
    /// or the reason the index is wrong (naming the slot).
    pub fn check(&self, offsets: &[u32], record_count: u32) -> Result<usize, String> {
        check_shape(self.words.len())?;
        let slots = self.slots();
        let mut seen = vec![false; offsets.len()];
        let mut used = 0usize;
        for s in self.occupied() {
            used += 1;
            let o = s.ordinal as usize;
            let (Some(&a), Some(&b)) = (offsets.get(o), offsets.get(o + 1)) else {
                return Err(format!(
                    "key index slot {} names ordinal {}, which holds no record",
                    s.slot, s.ordinal
                ));
            };
            if a >= b {
                return Err(format!(
                    "key index slot {} names ordinal {}, which holds no record",
                    s.slot, s.ordinal
                ));
            }
            if s.start != a || u64::from(s.len) != u64::from(b) - u64::from(a) {
                return Err(format!(
                    "key index slot {} places ordinal {} at words {}+{}, but it is at {a}..{b}",
                    s.slot, s.ordinal, s.start, s.len
                ));
            }
            if std::mem::replace(&mut seen[o], true) {
                return Err(format!(
                    "key index slot {} names ordinal {}, which an earlier slot names too",
                    s.slot, s.ordinal
                ));
            }
        }
        if used != record_count as usize || (used > 0 && used >= slots) {
            return Err(format!(
                "key index has {used} entries in {slots} slots for {record_count} records"
            ));
        }
        Ok(used)
    }
}

/// The candidate slots for one hash ([`KeyIndex::probe`]).
#[derive(Clone, Debug)]
pub struct Probe<'a> {
    words: &'a [u64],
    mask: usize,
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
            let (Some(&entry), Some(&place)) =
                (self.words.get(2 * slot), self.words.get(2 * slot + 1))
            else {
                break;
            };
            if entry == 0 {
                break;
            }
            self.slot = (slot + 1) & self.mask;
            if entry >> 32 == self.tag {
                return Some(Slot::decode(slot, entry, place));
            }
        }
        self.left = 0;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(records: &[(u64, u32, u32)]) -> KeyIndexBuilder {
        let mut b = KeyIndexBuilder::new(records.len() as u32);
        for &(hash, o, len) in records {
            assert!(b.insert(hash, o, o * 6, len));
        }
        b
    }

    #[test]
    fn probe_finds_what_the_builder_put_even_on_collisions() {
        // Three hashes with the same home slot and two with the same tag.
        let records = [
            (0x1_0000_0005, 0, 6),
            (0x2_0000_0005, 1, 6),
            (0x1_0000_0015, 2, 6),
        ];
        let b = built(&records);
        let index = KeyIndex::new(b.words());
        assert_eq!(index.slots(), 8);
        for &(hash, o, _) in &records {
            let hits: Vec<u32> = index.probe(hash).map(|s| s.ordinal).collect();
            assert!(hits.contains(&o), "{hash:#x}: {hits:?}");
            assert!(hits
                .iter()
                .all(|&h| records[h as usize].0 >> 32 == hash >> 32));
        }
        assert_eq!(index.probe(0x9_0000_0005).count(), 0);
        let offsets = [0, 6, 12, 18];
        assert_eq!(index.check(&offsets, 3), Ok(3));
        assert_eq!(index.occupied().count(), 3);
    }

    #[test]
    fn a_full_builder_refuses_rather_than_looping() {
        let mut b = KeyIndexBuilder::new(1);
        assert!(b.insert(7, 0, 0, 1));
        assert!(!b.insert(7, 1, 1, 1), "two slots, one must stay free");
        assert!(!KeyIndexBuilder::new(0).insert(7, 0, 0, 1));
    }

    #[test]
    fn a_hostile_index_misses_without_hanging_or_panicking() {
        // Full, misshapen (three slots), and tags all matching.
        let words = [5u64 << 32 | 1, 0, 5 << 32 | 1, 0, 5 << 32 | 1, 0];
        let index = KeyIndex::new(&words);
        assert!(index.probe(5 << 32).count() <= 3);
        assert!(index.check(&[0, 1], 1).is_err());
        let odd = [5u64 << 32 | 1];
        assert_eq!(KeyIndex::new(&odd).probe(5 << 32).count(), 0);
    }

    #[test]
    fn check_names_the_slot_that_is_wrong() {
        let b = built(&[(3, 0, 6), (4, 1, 6)]);
        let index = KeyIndex::new(b.words());
        // Ordinal 1 is a hole here.
        let err = index.check(&[0, 6, 6], 2).unwrap_err();
        assert!(
            err.contains("slot 0 names ordinal 1, which holds no record"),
            "{err}"
        );
        // Ordinal 1 is elsewhere.
        let err = index.check(&[0, 6, 13], 2).unwrap_err();
        assert!(
            err.contains("places ordinal 1 at words 6+6, but it is at 6..13"),
            "{err}"
        );
        let err = index.check(&[0, 6, 12], 3).unwrap_err();
        assert!(err.contains("2 entries in 4 slots for 3 records"), "{err}");
    }
}
