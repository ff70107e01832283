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
//! # Identifying on every core
//!
//! A full cycle identifies the whole dataset: a hash, a probe of the last
//! state and a probe and insert of the new key table per record, which on
//! one thread is most of a cycle that changed little. A large batch
//! ([`PARALLEL_FROM`] records on) is identified in three phases:
//!
//! 1. over contiguous chunks of the batch, one thread each, reading only:
//!    each record's seeded hash, its record in the last state (the state
//!    is only read) and whether its words differ from that one's;
//! 2. over runs of key-table shards, one thread each: the key table is
//!    [`SHARDS`] hash tables, a key's chosen by bits of its seeded hash
//!    ([`shard_of`]), so equal keys always meet in the same shard and each
//!    thread inserts, and finds the duplicates of, its shards' records
//!    alone, with no lock and no shared table;
//! 3. on one thread, in record order, linear and cheap: seen ordinals,
//!    added and changed lists, removals, free ordinals taken and freed,
//!    the ordinal tables and the checksum, exactly as a single thread
//!    would.
//!
//! Why the result does not depend on the thread count: phase 1 computes a
//! function of each record alone; phase 2 inserts each shard's records
//! in record order whichever thread owns it, so each table holds the
//! first record of each key, merges the same identical records (a type
//! without a key), and finds, per shard, the lowest record repeating an
//! earlier key; the lowest of those over all shards is the duplicate a
//! single thread meets first, so the error names the same key. Ordinals
//! are only given in phase 3, in record order. Shards, not one table
//! under a lock or threads taking keys from a shared queue, because they
//! need no synchronisation beyond the threads' join and give the same
//! tables every time. Small batches stay on one thread: starting threads
//! costs more than it saves. Types are identified one after the other,
//! each on every core.
//!
//! The batch's arenas (record words, record descriptors, key bytes) and a
//! state's ordinal tables (`rec_at`, `ordinal_of`) are [`Arena`]s in the
//! producer's work directory: past a few pages each one lives in an
//! unlinked scratch file, mapped shared (`producer/arena.rs`). The last
//! announced state and a full cycle's new batch, each as large as the
//! dataset, are then page cache the kernel can write back and drop, not
//! anonymous memory; only the key tables (`HashTable<u32>` shards, 4
//! bytes and a control byte a slot), the free ordinals, the per-cycle
//! change lists and, while a cycle identifies, its probe results (16
//! bytes a record) stay on the heap. Records stay what they were on the heap: canonical
//! words compared byte for byte with the next cycle's and handed to the
//! blob writer as they are. Keeping the state as the published snapshot
//! mapped back would save the scratch files but cost a rebuild of each
//! record from the blob's layout every cycle; a restart does that once
//! (restore, into arenas).
//!
//! Every arena operation that can grow returns an error rather than
//! panicking: a full cycle's populate and identify, and restore, fail
//! with [`super::ProducerError::WorkDir`] naming the directory, leaving
//! the last announced state untouched; an incremental cycle makes room in
//! the state's arenas ([`TypeState::reserve_patch`]) before it publishes,
//! so that applying its changes after the announcement cannot fail.
//!
//! Types come and go with the producer's registrations. A registered type
//! the last announced state did not hold (`present` false) is *created* by
//! the next cycle, even with no records, so that a delta follower holds it
//! as a snapshot consumer does; a type the state held that this producer
//! does not register (an [`UnregisteredType`], found by restore) is
//! *dropped* by the next cycle. Either is a change: it makes a version.

use super::arena::{Arena, ArenaError, Pod};
use super::workdir::WorkDir;
use crate::schema::checksum;
use crate::schema::record::KeySpec;
use hashbrown::HashTable;
use std::collections::BTreeSet;
use std::sync::Arc;

/// No ordinal / no record.
pub(crate) const NONE: u32 = u32::MAX;

/// Where one record of a [`Batch`] is: its words, its key bytes, its key
/// hash. 32 bytes, no padding.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Rec {
    start: u64,
    key_start: u64,
    /// The key hash of the format (unseeded xxh3): what blobs carry.
    pub hash: u64,
    len: u32,
    key_len: u32,
}

// SAFETY: integers only (no padding under `repr(C)`: three u64 then two
// u32); every byte pattern, all zeros included, is a valid `Rec`.
unsafe impl Pod for Rec {}

/// The hash builder of the producer's in-memory tables: seeded at random
/// once per process (foldhash, through hashbrown's default hasher), so
/// that keys chosen to collide under the format's fixed xxh3 cannot make
/// a cycle's probes quadratic. The blob's key index keeps xxh3: it is part
/// of the format and every consumer must compute it.
fn seeds() -> &'static hashbrown::DefaultHashBuilder {
    static SEEDS: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    SEEDS.get_or_init(Default::default)
}

/// The seeded hash of key bytes (see [`seeds`]).
pub(crate) fn seeded_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    seeds().hash_one(key)
}

/// How many shards a key table has ([`KeyTable`]): a power of two, enough
/// for every core of any machine the producer runs on to take its share.
const SHARDS: usize = 64;

/// The shard of a [`seeded_hash`]: bits 40..46. hashbrown indexes its
/// buckets with the low bits and tags its control bytes with the top
/// seven, so the shard takes bits neither uses (a table of 2^40 buckets
/// aside): sharding by the top bits would leave every key of a shard the
/// same tag, and each probe would compare keys it could have skipped.
#[inline]
fn shard_of(seeded: u64) -> usize {
    (seeded >> 40) as usize & (SHARDS - 1)
}

/// Record indices by key: [`SHARDS`] hash tables, a key's in the shard of
/// its [`seeded_hash`] ([`shard_of`]). Equal keys have equal hashes, so
/// each shard can be built, and checked for duplicates, on its own thread
/// ([`identify`]); a probe goes to one shard and costs what it would in a
/// single table.
struct KeyTable {
    shards: Vec<HashTable<u32>>,
}

impl KeyTable {
    fn new() -> Self {
        KeyTable {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
        }
    }

    /// The record whose key `eq` accepts, given its seeded hash.
    #[inline]
    fn find(&self, seeded: u64, eq: impl FnMut(&u32) -> bool) -> Option<u32> {
        self.shards[shard_of(seeded)].find(seeded, eq).copied()
    }

    /// Inserts record `r` of `batch` (whose key is not in the table).
    fn insert(&mut self, batch: &Batch, r: u32) {
        let seeded = batch.seeded(r);
        self.shards[shard_of(seeded)].insert_unique(seeded, r, |&q| batch.seeded(q));
    }

    /// Takes record `r` (with seeded hash `seeded`) out of the table.
    fn remove(&mut self, seeded: u64, r: u32) {
        if let Ok(entry) = self.shards[shard_of(seeded)].find_entry(seeded, |&q| q == r) {
            entry.remove();
        }
    }

    fn clear(&mut self) {
        self.shards.iter_mut().for_each(HashTable::clear);
    }
}

/// One cycle's records of one type, in arenas (see the module doc).
#[derive(Default)]
pub(crate) struct Batch {
    pub words: Arena<u64>,
    pub recs: Arena<Rec>,
    /// Key bytes of keyed types (unkeyed types use the record bytes).
    keys: Arena<u8>,
    keyed: bool,
}

impl Batch {
    /// An empty batch on the heap (unit tests).
    pub fn new(keyed: bool) -> Self {
        Batch {
            keyed,
            ..Default::default()
        }
    }

    /// An empty batch whose arenas move to scratch files of `work` once
    /// past a few pages ([`Arena::in_dir`]).
    pub fn in_dir(keyed: bool, work: &Arc<WorkDir>) -> Self {
        Batch {
            words: Arena::in_dir(work, "record words"),
            recs: Arena::in_dir(work, "records"),
            keys: Arena::in_dir(work, "key bytes"),
            keyed,
        }
    }

    /// Makes room for `words` more record words and `records` more
    /// records (and their keys, at 8 bytes a key).
    pub fn reserve(&mut self, words: usize, records: usize) -> Result<(), ArenaError> {
        self.words.reserve_exact(words)?;
        self.recs.reserve_exact(records)?;
        if self.keyed {
            self.keys.reserve_exact(records * 8)?;
        }
        Ok(())
    }

    /// An empty arena placed as this batch's are: for the ordinal tables
    /// of the state the batch becomes.
    pub fn arena<T: Pod>(&self, what: &'static str) -> Arena<T> {
        self.recs.sibling(what)
    }

    /// Records the last `len` words of `words` as a record with `key`. On
    /// failure the batch holds the records it held (the words from
    /// `start` on are the caller's to truncate).
    pub fn push(&mut self, start: usize, key: &[u8]) -> Result<(), ArenaError> {
        let len = self.words.len() - start;
        let key_at = self.keys.len();
        let (key_start, key_len, hash) = if self.keyed {
            self.keys.extend_from_slice(key)?;
            (
                key_at as u64,
                key.len() as u32,
                crate::schema::record::key_hash(key),
            )
        } else {
            let bytes = crate::schema::record::words_as_bytes(&self.words[start..]);
            (0, 0, crate::schema::record::key_hash(bytes))
        };
        let pushed = self.recs.push(Rec {
            start: start as u64,
            len: len as u32,
            key_start,
            key_len,
            hash,
        });
        if pushed.is_err() {
            self.keys.truncate(key_at);
        }
        pushed
    }

    /// Appends a record of `words` with `key` (unit tests: a heap batch).
    #[cfg(test)]
    pub fn push_for_test(&mut self, words: &[u64], key: &[u8]) {
        let start = self.words.len();
        self.words.extend_from_slice(words).unwrap();
        self.push(start, key).unwrap();
    }

    /// Appends a copy of every record of `other` (a batch of the same
    /// type), in its order.
    pub fn append(&mut self, other: &Batch) -> Result<(), ArenaError> {
        let (words, keys) = (self.words.len() as u64, self.keys.len() as u64);
        self.words.extend_from_slice(&other.words)?;
        self.keys.extend_from_slice(&other.keys)?;
        self.recs.reserve_exact(other.recs.len())?;
        for rec in other.recs.iter() {
            self.recs.push(Rec {
                start: rec.start + words,
                key_start: rec.key_start + keys,
                ..*rec
            })?;
        }
        Ok(())
    }

    /// Appends a copy of record `r` of `other` (a batch of the same
    /// type); returns its index here.
    fn push_from(&mut self, other: &Batch, r: u32) -> Result<u32, ArenaError> {
        let rec = other.recs[r as usize];
        let start = self.words.len();
        self.words.extend_from_slice(other.record(r))?;
        let key_start = self.keys.len();
        if self.keyed {
            self.keys.extend_from_slice(other.key(r))?;
        }
        self.recs.push(Rec {
            start: start as u64,
            key_start: key_start as u64,
            ..rec
        })?;
        Ok((self.recs.len() - 1) as u32)
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

    /// Record `r`'s key hash for in-memory tables ([`seeded_hash`]),
    /// computed from its key bytes: not stored, so that a record costs no
    /// more memory than before seeding (the tables call it once per
    /// insert and probe, and again only when they grow).
    #[inline]
    pub fn seeded(&self, r: u32) -> u64 {
        seeded_hash(self.key(r))
    }

    /// How many records the batch holds.
    pub fn len(&self) -> u32 {
        self.recs.len() as u32
    }
}

/// The last announced state of one type.
pub(crate) struct TypeState {
    pub batch: Batch,
    /// Record index in `batch` of each ordinal; `NONE` for a hole.
    pub rec_at: Arena<u32>,
    /// Ordinal of each record in `batch`; `NONE` for a merged duplicate.
    ordinal_of: Arena<u32>,
    /// Record indices by key.
    table: KeyTable,
    /// Free ordinals below `rec_at.len()`.
    free: BTreeSet<u32>,
    pub count: u32,
    pub total_words: usize,
    /// Words of `batch` no live record uses (records an incremental cycle
    /// replaced or removed): see [`TypeState::apply_patch`].
    garbage_words: usize,
    /// Whether the announced state holds the type (a type registered but
    /// never announced, or absent from the restored state, does not).
    pub present: bool,
    /// The type's state checksum ([`crate::schema::checksum`]), kept
    /// current by each cycle's diff.
    pub checksum: u64,
}

impl TypeState {
    /// A type the announced state does not hold, on the heap: one that
    /// no cycle patches (a first cycle's previous state, unit tests).
    pub fn empty(keyed: bool) -> Self {
        Self::empty_of(Batch::new(keyed))
    }

    /// A type the announced state does not hold, whose arenas (should an
    /// incremental cycle create the type) move to scratch files of `work`.
    pub fn empty_in(keyed: bool, work: &Arc<WorkDir>) -> Self {
        Self::empty_of(Batch::in_dir(keyed, work))
    }

    fn empty_of(batch: Batch) -> Self {
        TypeState {
            rec_at: batch.arena("ordinal index"),
            ordinal_of: batch.arena("record ordinals"),
            batch,
            table: KeyTable::new(),
            free: BTreeSet::new(),
            count: 0,
            total_words: 0,
            garbage_words: 0,
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

    /// The record index of `key`, given its [`seeded_hash`].
    pub fn find(&self, seeded: u64, key: &[u8]) -> Option<u32> {
        self.table.find(seeded, |&q| self.batch.key(q) == key)
    }

    /// The ordinal of live record `r` of the batch.
    pub fn ordinal_of(&self, r: u32) -> u32 {
        self.ordinal_of[r as usize]
    }

    /// The free ordinals below the ordinal limit, lowest first: where new
    /// keys go.
    pub fn free_ordinals(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied()
    }

    /// Rebuilds a state of type `type_id` from restored records, given by
    /// ordinal (`ordinal_of`: the ordinal of each record of `batch`).
    pub fn from_ordinals(
        type_id: u64,
        batch: Batch,
        ordinal_of: Arena<u32>,
        ordinal_limit: u32,
    ) -> Result<Self, ArenaError> {
        let mut rec_at = batch.arena("ordinal index");
        rec_at.resize(ordinal_limit as usize, NONE)?;
        let mut table = KeyTable::new();
        let mut total_words = 0;
        let mut sum = 0u64;
        for (r, &o) in ordinal_of.iter().enumerate() {
            rec_at[o as usize] = r as u32;
            table.insert(&batch, r as u32);
            let record = batch.record(r as u32);
            total_words += record.len();
            sum = sum.wrapping_add(checksum::entry(type_id, o, checksum::record_hash(record)));
        }
        let free = (0..ordinal_limit)
            .filter(|&o| rec_at[o as usize] == NONE)
            .collect();
        Ok(TypeState {
            count: ordinal_of.len() as u32,
            batch,
            rec_at,
            ordinal_of,
            table,
            free,
            total_words,
            garbage_words: 0,
            present: true,
            checksum: sum,
        })
    }
}

/// What an incremental cycle changes in one type: the records of its
/// upserts batch (`new`) against the last announced state (`old`).
/// Computed without touching the state ([`crate::producer`]'s incremental
/// cycle), applied to it only once the version is announced
/// ([`TypeState::apply_patch`]).
#[derive(Default)]
pub(crate) struct PatchDiff {
    /// (ordinal, record in the upserts), sorted by ordinal.
    pub added: Vec<(u32, u32)>,
    /// (ordinal, record in the upserts, record in the state), sorted.
    pub changed: Vec<(u32, u32, u32)>,
    /// (ordinal, record in the state), sorted.
    pub removed: Vec<(u32, u32)>,
    /// The type was not in the last announced state: this cycle creates it.
    pub created: bool,
    pub count_after: u32,
    pub limit_after: u32,
}

impl PatchDiff {
    /// No record changed and the type was already there.
    pub fn is_empty(&self) -> bool {
        !self.created && self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Garbage (words of replaced or removed records) past this fraction of
/// the live words makes [`TypeState::apply_patch`] compact the arena.
const COMPACT_AT: (usize, usize) = (1, 4);

impl TypeState {
    /// Makes room in the arenas for `diff` (records of `upserts`), so
    /// that [`Self::apply_patch`] does not grow them: the incremental
    /// cycle calls it before it publishes, while a scratch file that
    /// cannot grow can still fail the cycle. Changes no record (only
    /// capacities).
    pub fn reserve_patch(&mut self, upserts: &Batch, diff: &PatchDiff) -> Result<(), ArenaError> {
        let new = || {
            diff.added
                .iter()
                .map(|&(_, r)| r)
                .chain(diff.changed.iter().map(|&(_, r, _)| r))
        };
        let new_words: usize = new().map(|r| upserts.record(r).len()).sum();
        let new_keys: usize = if self.batch.keyed {
            new().map(|r| upserts.key(r).len()).sum()
        } else {
            0
        };
        let new_recs = diff.added.len() + diff.changed.len();
        // Room for this diff, and an eighth of the type more where it is
        // short ([`Arena::reserve`]): doubling would reserve as much again
        // as the type holds.
        self.batch.words.reserve(new_words)?;
        self.batch.keys.reserve(new_keys)?;
        self.batch.recs.reserve(new_recs)?;
        self.ordinal_of.reserve(new_recs)?;
        let limit = diff.limit_after as usize;
        self.rec_at
            .reserve(limit.saturating_sub(self.rec_at.len()))?;
        Ok(())
    }

    /// Applies an announced incremental cycle's `diff` in place: the new
    /// records are copied from `upserts` to the end of the arena, the old
    /// ones become garbage, and `rec_at`, `ordinal_of`, the key table and
    /// the free ordinals follow. Work in proportion to the diff, except
    /// when garbage passes a quarter of the live words: the arena is then
    /// compacted in place (see [`Self::compact`]), in proportion to the
    /// type once every so many cycles.
    ///
    /// [`Self::reserve_patch`] must have made room for this `diff` (it is
    /// the step that can fail): then no arena grows here, and nothing
    /// fails after the version is announced.
    pub fn apply_patch(&mut self, upserts: &Batch, diff: &PatchDiff) {
        const RESERVED: &str = "room reserved by reserve_patch";
        let limit = diff.limit_after as usize;
        if self.rec_at.len() < limit {
            self.rec_at.resize(limit, NONE).expect(RESERVED);
        }
        for &(o, r) in &diff.added {
            let nr = self.batch.push_from(upserts, r).expect(RESERVED);
            self.ordinal_of.push(o).expect(RESERVED);
            self.rec_at[o as usize] = nr;
            self.free.remove(&o);
            self.table.insert(&self.batch, nr);
            self.count += 1;
            self.total_words += upserts.record(r).len();
        }
        for &(o, r, old) in &diff.changed {
            let nr = self.batch.push_from(upserts, r).expect(RESERVED);
            self.ordinal_of.push(o).expect(RESERVED);
            self.rec_at[o as usize] = nr;
            self.forget(old);
            self.table.insert(&self.batch, nr);
            self.total_words += upserts.record(r).len();
        }
        for &(o, old) in &diff.removed {
            self.rec_at[o as usize] = NONE;
            self.forget(old);
            self.free.insert(o);
            self.count -= 1;
        }
        self.present = true;
        if self.garbage_words * COMPACT_AT.1 > self.total_words * COMPACT_AT.0 {
            self.compact();
        }
    }

    #[cfg(test)]
    pub fn garbage_words_for_test(&self) -> usize {
        self.garbage_words
    }

    /// Takes record `r` out of the key table and the live words.
    fn forget(&mut self, r: u32) {
        self.table.remove(self.batch.seeded(r), r);
        self.ordinal_of[r as usize] = NONE;
        let len = self.batch.record(r).len();
        self.total_words -= len;
        self.garbage_words += len;
    }

    /// Moves the live records to the front of the arena, in arena order,
    /// and renumbers them: no second arena is allocated, so compaction
    /// needs no memory beyond what the type already holds.
    fn compact(&mut self) {
        let batch = &mut self.batch;
        let (mut words, mut keys, mut n) = (0usize, 0usize, 0usize);
        for r in 0..batch.recs.len() {
            let o = self.ordinal_of[r];
            if o == NONE {
                continue;
            }
            let rec = batch.recs[r];
            let (start, len) = (rec.start as usize, rec.len as usize);
            batch.words.copy_within(start..start + len, words);
            let (key_start, key_len) = (rec.key_start as usize, rec.key_len as usize);
            batch.keys.copy_within(key_start..key_start + key_len, keys);
            batch.recs[n] = Rec {
                start: words as u64,
                key_start: keys as u64,
                ..rec
            };
            self.ordinal_of[n] = o;
            self.rec_at[o as usize] = n as u32;
            words += len;
            keys += key_len;
            n += 1;
        }
        batch.words.truncate(words);
        batch.keys.truncate(keys);
        batch.recs.truncate(n);
        self.ordinal_of.truncate(n);
        self.table.clear();
        for r in 0..n as u32 {
            self.table.insert(batch, r);
        }
        self.garbage_words = 0;
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

/// The records a cycle changed in one type, as ordinals and record
/// indices: `added` (ordinal, record in `new`), `changed` (ordinal, record
/// in `new`, record in `prev`), `removed` (ordinal, record in `prev`). A
/// full cycle's `new` is its whole next state; an incremental cycle's is
/// its upserts. What the blob writer writes and validators read.
pub(crate) struct Changed<'a> {
    pub added: &'a [(u32, u32)],
    pub changed: &'a [(u32, u32, u32)],
    pub removed: &'a [(u32, u32)],
    pub created: bool,
    /// The last announced state.
    pub prev: &'a TypeState,
    /// The new state, when the cycle built it whole (a full cycle); an
    /// incremental cycle's new state is `prev` with the changes over it.
    pub next: Option<&'a TypeState>,
    pub new: &'a Batch,
    /// (record count, ordinal limit) before and after.
    pub before: (u32, u32),
    pub after: (u32, u32),
}

impl Changed<'_> {
    /// The type's state checksum after the cycle
    /// ([`crate::schema::checksum`]): the new state's, or the last
    /// announced one's moved by the records that left, changed and
    /// arrived (in proportion to the change).
    pub fn checksum_after(&self, type_id: u64) -> u64 {
        if let Some(next) = self.next {
            return next.checksum;
        }
        let term =
            |words: &[u64], o: u32| checksum::entry(type_id, o, checksum::record_hash(words));
        let old = &self.prev.batch;
        let mut sum = if self.prev.present {
            self.prev.checksum
        } else {
            0
        };
        for &(o, r) in self.removed {
            sum = sum.wrapping_sub(term(old.record(r), o));
        }
        for &(o, r, before) in self.changed {
            sum = sum
                .wrapping_sub(term(old.record(before), o))
                .wrapping_add(term(self.new.record(r), o));
        }
        for &(o, r) in self.added {
            sum = sum.wrapping_add(term(self.new.record(r), o));
        }
        sum
    }

    /// The record at `ordinal` in the new state.
    pub fn record_after(&self, ordinal: u32) -> Option<&[u64]> {
        if let Some(next) = self.next {
            return next.get(ordinal).map(|(words, _)| words);
        }
        if let Ok(i) = self.added.binary_search_by_key(&ordinal, |x| x.0) {
            return Some(self.new.record(self.added[i].1));
        }
        if let Ok(i) = self.changed.binary_search_by_key(&ordinal, |x| x.0) {
            return Some(self.new.record(self.changed[i].1));
        }
        if self.removed.binary_search_by_key(&ordinal, |x| x.0).is_ok() {
            return None;
        }
        self.prev.get(ordinal).map(|(words, _)| words)
    }
}

/// Why a batch cannot become the next state.
pub(crate) enum IdentifyError {
    /// A key seen twice in one cycle (its bytes).
    Duplicate(Vec<u8>),
    /// The new state's ordinal tables could not be made.
    Scratch(ArenaError),
}

impl From<ArenaError> for IdentifyError {
    fn from(e: ArenaError) -> Self {
        IdentifyError::Scratch(e)
    }
}

/// Batches below this many records are identified on one thread:
/// starting threads would cost more than they save.
const PARALLEL_FROM: usize = 1 << 16;

/// Identifies `batch` of type `type_id` against `prev`. Keyed types
/// refuse duplicate keys; types without a key merge identical records
/// (they are one record). Uses every core for a large batch (see the
/// module doc); the result does not depend on how many.
pub(crate) fn identify(
    type_id: u64,
    prev: &TypeState,
    batch: Batch,
    keyed: bool,
) -> Result<TypeDiff, IdentifyError> {
    let threads = if (batch.len() as usize) < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    };
    identify_on(type_id, prev, batch, keyed, threads)
}

/// What phase 1 of [`identify_on`] learns of one record of the batch.
#[derive(Clone, Copy)]
struct Probe {
    /// The key's [`seeded_hash`].
    seeded: u64,
    /// The record of the same key in the last announced state, or `NONE`.
    prev: u32,
    /// Whether its words differ from that record's.
    differs: bool,
}

/// Runs `work` on each of `parts` (at least one) on a thread of its own,
/// the first on this one; the results in the order of `parts`.
fn on_threads<P: Send, R: Send>(parts: Vec<P>, work: impl Fn(P) -> R + Sync) -> Vec<R> {
    let mut parts = parts.into_iter();
    let first = parts.next();
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts.map(|p| scope.spawn(|| work(p))).collect();
        let mut out = Vec::with_capacity(handles.len() + 1);
        out.extend(first.map(&work));
        for handle in handles {
            match handle.join() {
                Ok(r) => out.push(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// [`identify`] on `threads` threads (at least one; unit tests choose).
fn identify_on(
    type_id: u64,
    prev: &TypeState,
    batch: Batch,
    keyed: bool,
    threads: usize,
) -> Result<TypeDiff, IdentifyError> {
    let n = batch.recs.len();
    let threads = threads.clamp(1, SHARDS);
    // Phase 1, over contiguous chunks of the batch, reading only: each
    // record's hash, its match in `prev`, whether it changed; and how
    // many records each shard will hold.
    let mut probes = vec![
        Probe {
            seeded: 0,
            prev: NONE,
            differs: false,
        };
        n
    ];
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<_> = probes.chunks_mut(chunk).enumerate().collect();
    let counts = on_threads(parts, |(i, part)| {
        let mut counts = [0usize; SHARDS];
        for (j, probe) in part.iter_mut().enumerate() {
            let r = (i * chunk + j) as u32;
            let key = batch.key(r);
            probe.seeded = seeded_hash(key);
            counts[shard_of(probe.seeded)] += 1;
            if let Some(pr) = prev.find(probe.seeded, key) {
                probe.prev = pr;
                probe.differs = prev.batch.record(pr) != batch.record(r);
            }
        }
        counts
    });
    // Phase 2, over runs of shards: each thread inserts the records of
    // its shards, in record order, into their tables. A key seen twice
    // is found by the thread of its shard; the lowest such record of all
    // threads is the one a single thread would have met first. Each
    // thread reads every probe in order and skips other shards' records:
    // a sequential read of 16 bytes a record, cheaper than grouping the
    // records by shard first.
    let mut table = KeyTable::new();
    let per_thread = SHARDS.div_ceil(threads);
    let parts: Vec<_> = table.shards.chunks_mut(per_thread).enumerate().collect();
    let found = on_threads(parts, |(i, shards)| {
        let first = i * per_thread;
        for (s, shard) in shards.iter_mut().enumerate() {
            let size = counts.iter().map(|c| c[first + s]).sum();
            shard.reserve(size, |&q| probes[q as usize].seeded);
        }
        // Records of a type without a key merged into an identical earlier
        // one; for a keyed type, the first duplicate ends the work.
        let mut repeats = Vec::new();
        for (r, probe) in probes.iter().enumerate() {
            let Some(shard) = shard_of(probe.seeded)
                .checked_sub(first)
                .and_then(|s| shards.get_mut(s))
            else {
                continue;
            };
            let key = batch.key(r as u32);
            if shard.find(probe.seeded, |&q| batch.key(q) == key).is_some() {
                repeats.push(r as u32);
                if keyed {
                    break;
                }
                continue;
            }
            shard.insert_unique(probe.seeded, r as u32, |&q| probes[q as usize].seeded);
        }
        repeats
    });
    if keyed {
        if let Some(r) = found.iter().filter_map(|f| f.first()).min() {
            return Err(IdentifyError::Duplicate(batch.key(*r).to_vec()));
        }
    }
    let mut merged = vec![0u64; n.div_ceil(64)];
    for &r in found.iter().flatten() {
        merged[r as usize / 64] |= 1 << (r % 64);
    }
    // Phase 3, in record order: ordinals, changes, removals, the checksum.
    let mut ordinal_of: Arena<u32> = batch.arena("record ordinals");
    ordinal_of.resize(n, NONE)?;
    // One bit per ordinal of the last state: seen again this cycle.
    let mut seen = vec![0u64; prev.rec_at.len().div_ceil(64)];
    let mut added_recs = Vec::new();
    let mut changed = Vec::new();
    for (r, probe) in probes.iter().enumerate() {
        if merged[r / 64] & (1 << (r % 64)) != 0 {
            continue;
        }
        if probe.prev == NONE {
            added_recs.push(r as u32);
            continue;
        }
        let o = prev.ordinal_of[probe.prev as usize];
        seen[o as usize / 64] |= 1 << (o % 64);
        ordinal_of[r] = o;
        if probe.differs {
            changed.push((o, r as u32, probe.prev));
        }
    }
    drop(probes);
    let removed: Vec<(u32, u32)> = prev
        .rec_at
        .iter()
        .enumerate()
        .filter(|&(o, &r)| r != NONE && seen[o / 64] & (1 << (o % 64)) == 0)
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
    let mut rec_at: Arena<u32> = batch.arena("ordinal index");
    rec_at.resize(limit as usize, NONE)?;
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
            garbage_words: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// splitmix64: reproducible random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A batch of records `[id, value]`; a keyed type's key is the id.
    fn batch_of(keyed: bool, records: &[(u64, u64)]) -> Batch {
        let mut batch = Batch::new(keyed);
        for &(id, value) in records {
            batch.push_for_test(&[id, value], &id.to_le_bytes());
        }
        batch
    }

    /// What identifying a batch must give, computed the plain way: maps
    /// of owned keys, one record at a time.
    struct Expected {
        added: Vec<(u32, u32)>,
        changed: Vec<(u32, u32, u32)>,
        removed: Vec<(u32, u32)>,
        ordinal_of: Vec<u32>,
        free: Vec<u32>,
        limit: u32,
        checksum: u64,
    }

    fn reference(
        type_id: u64,
        prev: &TypeState,
        batch: &Batch,
        keyed: bool,
    ) -> Result<Expected, Vec<u8>> {
        let mut before: HashMap<Vec<u8>, (u32, u32)> = HashMap::new();
        for o in 0..prev.ordinal_limit() {
            let pr = prev.rec_at[o as usize];
            if pr != NONE {
                before.insert(prev.batch.key(pr).to_vec(), (o, pr));
            }
        }
        let mut keys = HashSet::new();
        let mut kept = HashSet::new();
        let mut ordinal_of = vec![NONE; batch.len() as usize];
        let (mut added_recs, mut changed) = (Vec::new(), Vec::new());
        for r in 0..batch.len() {
            let key = batch.key(r);
            if !keys.insert(key.to_vec()) {
                if keyed {
                    return Err(key.to_vec());
                }
                continue;
            }
            match before.get(key) {
                Some(&(o, pr)) => {
                    kept.insert(o);
                    ordinal_of[r as usize] = o;
                    if prev.batch.record(pr) != batch.record(r) {
                        changed.push((o, r, pr));
                    }
                }
                None => added_recs.push(r),
            }
        }
        let mut removed: Vec<_> = before
            .values()
            .filter(|(o, _)| !kept.contains(o))
            .copied()
            .collect();
        removed.sort_unstable();
        let mut free: BTreeSet<u32> = prev.free_ordinals().collect();
        let mut limit = prev.ordinal_limit();
        let mut added = Vec::new();
        for r in added_recs {
            let o = free.pop_first().unwrap_or_else(|| {
                limit += 1;
                limit - 1
            });
            ordinal_of[r as usize] = o;
            added.push((o, r));
        }
        added.sort_unstable();
        changed.sort_unstable();
        free.extend(removed.iter().map(|&(o, _)| o));
        let checksum = (0..batch.len())
            .filter(|&r| ordinal_of[r as usize] != NONE)
            .map(|r| {
                let o = ordinal_of[r as usize];
                checksum::entry(type_id, o, checksum::record_hash(batch.record(r)))
            })
            .fold(0u64, u64::wrapping_add);
        Ok(Expected {
            added,
            changed,
            removed,
            ordinal_of,
            free: free.into_iter().collect(),
            limit,
            checksum,
        })
    }

    /// Checks a diff against the reference's, and the next state's key
    /// table, ordinal tables and counts against its records.
    fn check(diff: &TypeDiff, expected: &Expected, threads: usize) {
        assert_eq!(diff.added, expected.added, "added, {threads} threads");
        assert_eq!(diff.changed, expected.changed, "changed, {threads} threads");
        assert_eq!(diff.removed, expected.removed, "removed, {threads} threads");
        let next = &diff.next;
        assert_eq!(
            next.checksum, expected.checksum,
            "checksum, {threads} threads"
        );
        assert_eq!(next.ordinal_limit(), expected.limit);
        assert_eq!(next.free_ordinals().collect::<Vec<_>>(), expected.free);
        let mut live = 0;
        for r in 0..next.batch.len() {
            let o = next.ordinal_of(r);
            assert_eq!(o, expected.ordinal_of[r as usize], "ordinal of record {r}");
            let key = next.batch.key(r);
            let found = next
                .find(seeded_hash(key), key)
                .expect("a live key is found");
            if o != NONE {
                live += 1;
                assert_eq!(found, r, "the table holds record {r}");
                assert_eq!(next.rec_at[o as usize], r);
            } else {
                // A merged duplicate: its key is the record it merged into.
                assert_ne!(next.ordinal_of(found), NONE);
            }
        }
        assert_eq!(next.count, live);
    }

    /// Random cycles of one type, identified on `threads` threads and
    /// checked against the reference: ids from a small space, so keys
    /// leave and come back (taking freed ordinals); values from a smaller
    /// one, so some records stay the same and others change.
    fn random_cycles(keyed: bool, threads: usize, seed: u64) {
        let mut rng = Rng(seed);
        let mut prev = TypeState::empty(keyed);
        for cycle in 0..6 {
            let size = 1500 + rng.below(2500) as usize;
            let records: Vec<(u64, u64)> = if keyed {
                let mut ids: Vec<u64> = (0..6000)
                    .filter(|_| rng.below(6000) < size as u64)
                    .collect();
                // Shuffled, so that ordinals are not in record order.
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i as u64 + 1) as usize);
                }
                ids.into_iter().map(|id| (id, rng.below(4))).collect()
            } else {
                // Few distinct records: many identical ones to merge.
                (0..size).map(|_| (rng.below(900), rng.below(3))).collect()
            };
            let expected = reference(7, &prev, &batch_of(keyed, &records), keyed)
                .unwrap_or_else(|_| panic!("cycle {cycle} has no duplicate key"));
            let diff = identify_on(7, &prev, batch_of(keyed, &records), keyed, threads)
                .unwrap_or_else(|_| panic!("cycle {cycle} has no duplicate key"));
            check(&diff, &expected, threads);
            if cycle > 0 {
                assert!(!diff.added.is_empty() && !diff.removed.is_empty());
                if keyed {
                    assert!(!diff.changed.is_empty());
                }
            }
            prev = diff.next;
        }
    }

    #[test]
    fn parallel_identify_equals_the_reference_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            for seed in [1, 2, 3] {
                random_cycles(true, threads, seed);
                random_cycles(false, threads, seed);
            }
        }
    }

    #[test]
    fn a_duplicate_key_is_named_the_same_on_any_thread_count() {
        let mut records: Vec<(u64, u64)> = (0..4000).map(|id| (id, 0)).collect();
        // Two keys repeated far apart, in different chunks and shards that
        // two threads split: the one repeated first is the one to name.
        let later = 100u64;
        let first = (200..4000)
            .find(|&id| {
                let shard = |id: u64| shard_of(seeded_hash(&id.to_le_bytes()));
                shard(id) / (SHARDS / 2) != shard(later) / (SHARDS / 2)
            })
            .expect("a key in the other half of the shards");
        records[3900] = (later, 1);
        records[2500] = (first, 1);
        let expected = reference(7, &TypeState::empty(true), &batch_of(true, &records), true);
        assert_eq!(expected.err(), Some(first.to_le_bytes().to_vec()));
        for threads in [1, 2, 3, 8] {
            let prev = TypeState::empty(true);
            match identify_on(7, &prev, batch_of(true, &records), true, threads) {
                Err(IdentifyError::Duplicate(key)) => {
                    assert_eq!(key, first.to_le_bytes(), "{threads} threads");
                }
                _ => panic!("{threads} threads: the duplicate key is not reported"),
            }
        }
    }

    #[test]
    fn the_seeded_hash_spreads_keys_that_collide_under_xxh3() {
        // Ids whose format hash (xxh3-64 of the id's little-endian bytes)
        // shares its low 14 bits, as tests/colliding_keys.rs searches.
        let xxh3 = |id: u64| xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes());
        let target = xxh3(0) & 0x3fff;
        let ids: Vec<u64> = (0..)
            .filter(|&id| xxh3(id) & 0x3fff == target)
            .take(2000)
            .collect();
        let seeded: Vec<u64> = ids
            .iter()
            .map(|id| seeded_hash(&id.to_le_bytes()))
            .collect();
        let buckets: HashSet<u64> = seeded.iter().map(|h| h & 0xfff).collect();
        assert!(
            buckets.len() > 1000,
            "{} distinct low 12 bits",
            buckets.len()
        );
        let shards: HashSet<usize> = seeded.iter().map(|&h| shard_of(h)).collect();
        assert_eq!(shards.len(), SHARDS, "every shard holds some of 2000 keys");
        // And the tags hashbrown keeps (top 7 bits) vary within a shard.
        let tags: HashSet<u64> = seeded
            .iter()
            .filter(|&&h| shard_of(h) == shard_of(seeded[0]))
            .map(|h| h >> 57)
            .collect();
        assert!(tags.len() > 5, "{} distinct tags in one shard", tags.len());
    }
}
