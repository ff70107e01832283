//! The producer's in-memory state of one type, and the per-cycle diff.
//!
//! A cycle's records arrive in a [`Batch`]: canonical record words in one
//! arena, with each record's key bytes and key hash. Identifying a batch
//! against the last announced [`TypeState`] is one hash probe and one byte
//! compare per record: an existing key keeps its ordinal (changed if its
//! bytes differ), a new key takes the lowest free ordinal (freed in an
//! earlier cycle) or the next one, and keys not seen are removed, their
//! ordinals freed for the next cycle. The batch then becomes the next
//! state as is: no record is copied.
//!
//! Types come and go with the producer's registrations. A registered type
//! the last announced state did not hold (`present` false) is *created* by
//! the next cycle, even with no records, so that a delta follower holds it
//! as a snapshot consumer does; a type the state held that this producer
//! does not register (an [`UnregisteredType`], found by restore) is
//! *dropped* by the next cycle. Either is a change: it makes a version.

use crate::schema::checksum;
use crate::schema::record::KeySpec;
use hashbrown::HashTable;
use std::collections::BTreeSet;

/// No ordinal / no record.
pub(crate) const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    start: u64,
    len: u32,
    key_start: u64,
    key_len: u32,
    pub hash: u64,
}

/// One cycle's records of one type.
#[derive(Default)]
pub(crate) struct Batch {
    pub words: Vec<u64>,
    pub recs: Vec<Rec>,
    /// Key bytes of keyed types (unkeyed types use the record bytes).
    keys: Vec<u8>,
    keyed: bool,
}

impl Batch {
    pub fn new(keyed: bool) -> Self {
        Batch {
            keyed,
            ..Default::default()
        }
    }

    /// An empty batch with room for `words` record words and `records`
    /// records.
    pub fn with_capacity(keyed: bool, words: usize, records: usize) -> Self {
        Batch {
            words: Vec::with_capacity(words),
            recs: Vec::with_capacity(records),
            keys: Vec::with_capacity(if keyed { records * 8 } else { 0 }),
            keyed,
        }
    }

    /// Records the last `len` words of `words` as a record with `key`.
    pub fn push(&mut self, start: usize, key: &[u8]) {
        let len = self.words.len() - start;
        let (key_start, key_len, hash) = if self.keyed {
            let at = self.keys.len();
            self.keys.extend_from_slice(key);
            (
                at as u64,
                key.len() as u32,
                crate::schema::record::key_hash(key),
            )
        } else {
            let bytes = crate::schema::record::words_as_bytes(&self.words[start..]);
            (0, 0, crate::schema::record::key_hash(bytes))
        };
        self.recs.push(Rec {
            start: start as u64,
            len: len as u32,
            key_start,
            key_len,
            hash,
        });
    }

    #[inline]
    pub fn record(&self, r: u32) -> &[u64] {
        let rec = &self.recs[r as usize];
        &self.words[rec.start as usize..rec.start as usize + rec.len as usize]
    }

    #[inline]
    pub fn key(&self, r: u32) -> &[u8] {
        if self.keyed {
            let rec = &self.recs[r as usize];
            &self.keys[rec.key_start as usize..rec.key_start as usize + rec.key_len as usize]
        } else {
            crate::schema::record::words_as_bytes(self.record(r))
        }
    }

    #[inline]
    pub fn hash(&self, r: u32) -> u64 {
        self.recs[r as usize].hash
    }
}

/// The last announced state of one type.
pub(crate) struct TypeState {
    pub batch: Batch,
    /// Record index in `batch` of each ordinal; `NONE` for a hole.
    pub rec_at: Vec<u32>,
    /// Ordinal of each record in `batch`; `NONE` for a merged duplicate.
    ordinal_of: Vec<u32>,
    /// Record indices by key.
    table: HashTable<u32>,
    /// Free ordinals below `rec_at.len()`.
    free: BTreeSet<u32>,
    pub count: u32,
    pub total_words: usize,
    /// Whether the announced state holds the type (a type registered but
    /// never announced, or absent from the restored state, does not).
    pub present: bool,
    /// The type's state checksum ([`crate::schema::checksum`]), kept
    /// current by each cycle's diff.
    pub checksum: u64,
}

impl TypeState {
    /// A type the announced state does not hold.
    pub fn empty(keyed: bool) -> Self {
        TypeState {
            batch: Batch::new(keyed),
            rec_at: Vec::new(),
            ordinal_of: Vec::new(),
            table: HashTable::new(),
            free: BTreeSet::new(),
            count: 0,
            total_words: 0,
            present: false,
            checksum: 0,
        }
    }

    pub fn ordinal_limit(&self) -> u32 {
        self.rec_at.len() as u32
    }

    /// The record at `ordinal` and its key hash.
    pub fn get(&self, ordinal: u32) -> Option<(&[u64], u64)> {
        match self.rec_at.get(ordinal as usize) {
            Some(&r) if r != NONE => Some((self.batch.record(r), self.batch.hash(r))),
            _ => None,
        }
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&q| self.batch.key(q) == key)
            .copied()
    }

    /// Rebuilds a state of type `type_id` from restored records, given by
    /// ordinal.
    pub fn from_ordinals(
        type_id: u64,
        batch: Batch,
        ordinal_of: Vec<u32>,
        ordinal_limit: u32,
    ) -> Self {
        let mut rec_at = vec![NONE; ordinal_limit as usize];
        let mut table = HashTable::with_capacity(batch.recs.len());
        let mut total_words = 0;
        let mut sum = 0u64;
        for (r, &o) in ordinal_of.iter().enumerate() {
            rec_at[o as usize] = r as u32;
            table.insert_unique(batch.hash(r as u32), r as u32, |&q| batch.hash(q));
            let record = batch.record(r as u32);
            total_words += record.len();
            sum = sum.wrapping_add(checksum::entry(type_id, o, checksum::record_hash(record)));
        }
        let free = (0..ordinal_limit)
            .filter(|&o| rec_at[o as usize] == NONE)
            .collect();
        TypeState {
            count: ordinal_of.len() as u32,
            batch,
            rec_at,
            ordinal_of,
            table,
            free,
            total_words,
            present: true,
            checksum: sum,
        }
    }
}

/// A type the last announced state holds but this producer does not
/// register: its next cycle drops it (and that cycle's reverse delta
/// re-creates it from `state`).
pub(crate) struct UnregisteredType {
    pub type_id: u64,
    pub name: String,
    pub key_fields: Vec<String>,
    pub state: TypeState,
}

impl crate::schema::blob::SnapshotRecords for TypeState {
    fn record(&self, ordinal: u32) -> Option<(&[u64], u64)> {
        self.get(ordinal)
    }
}

/// What one cycle changed in one type, and the state it leads to.
pub(crate) struct TypeDiff {
    /// (ordinal, record in the new batch), sorted by ordinal.
    pub added: Vec<(u32, u32)>,
    /// (ordinal, record in the new batch, record in the old batch), sorted.
    pub changed: Vec<(u32, u32, u32)>,
    /// (ordinal, record in the old batch), sorted.
    pub removed: Vec<(u32, u32)>,
    /// The type was not in the last announced state: this cycle creates it.
    pub created: bool,
    pub next: TypeState,
}

impl TypeDiff {
    /// No record changed and the type was already there.
    pub fn is_empty(&self) -> bool {
        !self.created && self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// A key seen twice in one cycle.
pub(crate) struct Duplicate {
    pub key: Vec<u8>,
}

/// Identifies `batch` of type `type_id` against `prev`. Keyed types
/// refuse duplicate keys; types without a key merge identical records
/// (they are one record).
pub(crate) fn identify(
    type_id: u64,
    prev: &TypeState,
    batch: Batch,
    keyed: bool,
) -> Result<TypeDiff, Duplicate> {
    let n = batch.recs.len();
    let mut table: HashTable<u32> = HashTable::with_capacity(n);
    let mut ordinal_of = vec![NONE; n];
    let mut seen = vec![false; prev.rec_at.len()];
    let mut added_recs = Vec::new();
    let mut changed = Vec::new();
    for r in 0..n as u32 {
        let hash = batch.hash(r);
        let key = batch.key(r);
        if table.find(hash, |&q| batch.key(q) == key).is_some() {
            if keyed {
                return Err(Duplicate { key: key.to_vec() });
            }
            continue; // identical record of a type without a key: one record
        }
        table.insert_unique(hash, r, |&q| batch.hash(q));
        match prev.find(hash, key) {
            Some(pr) => {
                let o = prev.ordinal_of[pr as usize];
                seen[o as usize] = true;
                ordinal_of[r as usize] = o;
                if prev.batch.record(pr) != batch.record(r) {
                    changed.push((o, r, pr));
                }
            }
            None => added_recs.push(r),
        }
    }
    let removed: Vec<(u32, u32)> = prev
        .rec_at
        .iter()
        .enumerate()
        .filter(|&(o, &r)| r != NONE && !seen[o])
        .map(|(o, &r)| (o as u32, r))
        .collect();
    let mut free = prev.free.clone();
    let mut limit = prev.ordinal_limit();
    let mut added = Vec::with_capacity(added_recs.len());
    for r in added_recs {
        let o = match free.pop_first() {
            Some(o) => o,
            None => {
                limit += 1;
                limit - 1
            }
        };
        ordinal_of[r as usize] = o;
        added.push((o, r));
    }
    added.sort_unstable();
    changed.sort_unstable();
    free.extend(removed.iter().map(|&(o, _)| o));
    let mut rec_at = vec![NONE; limit as usize];
    let mut count = 0;
    let mut total_words = 0;
    for (r, &o) in ordinal_of.iter().enumerate() {
        if o != NONE {
            rec_at[o as usize] = r as u32;
            count += 1;
            total_words += batch.record(r as u32).len();
        }
    }
    // The checksum moves by the records that left, changed and arrived.
    let term = |words: &[u64], o: u32| checksum::entry(type_id, o, checksum::record_hash(words));
    let mut sum = prev.checksum;
    for &(o, pr) in &removed {
        sum = sum.wrapping_sub(term(prev.batch.record(pr), o));
    }
    for &(o, r, pr) in &changed {
        sum = sum
            .wrapping_sub(term(prev.batch.record(pr), o))
            .wrapping_add(term(batch.record(r), o));
    }
    for &(o, r) in &added {
        sum = sum.wrapping_add(term(batch.record(r), o));
    }
    Ok(TypeDiff {
        added,
        changed,
        removed,
        created: !prev.present,
        next: TypeState {
            batch,
            rec_at,
            ordinal_of,
            table,
            free,
            count,
            total_words,
            present: true,
            checksum: sum,
        },
    })
}

/// Renders key bytes for an error message.
pub(crate) fn render_key(spec: Option<&KeySpec>, key: &[u8]) -> String {
    match spec {
        Some(spec) => spec.render(key),
        None => format!("{} bytes of record", key.len()),
    }
}
