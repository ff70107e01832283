//! Incremental cycles: [`Producer::run_incremental_cycle`] takes upserts
//! and deletes by primary key, and costs time and memory in proportion to
//! them, not to the dataset.
//!
//! The caller's closure gets an [`Incremental`]: records are upserted
//! through the same builders and readers as a full cycle's populate
//! ([`Incremental::upsert`], [`Incremental::upsert_reader`]), and deleted
//! by key ([`Incremental::delete`], the key given as a consumer's `find`
//! takes it). The rules:
//!
//! - Operations on one key within one cycle: the **last one wins** (an
//!   upsert then a delete deletes; a delete then an upsert upserts).
//! - An upsert whose record equals the announced one is no change;
//!   deleting a key the state does not hold is a no-op. A cycle that
//!   changes nothing makes no version, as a full cycle does.
//! - Types without a primary key cannot be upserted or deleted
//!   ([`ProducerError::NotKeyed`]): a record of such a type has no identity
//!   other than its content.
//! - The producer needs an announced state (a full cycle's or a restore's);
//!   without one the cycle fails with [`ProducerError::NoState`].
//!
//! The cycle is the full cycle's (mint, validate, publish, announce, each
//! step's failure leaving the producer at its last announced state), with
//! populate and identify replaced: the changes are diffed against the
//! announced state without touching it ([`PatchDiff`]), the delta and
//! reverse delta are written, published and announced, and only then is
//! the diff applied in place to the state ([`TypeState::apply_patch`]).
//!
//! An incremental cycle never writes a snapshot: a snapshot costs the
//! whole dataset. It counts as a cycle towards the producer's
//! `snapshot_every`, so the next full cycle that is due writes one;
//! consumers that start between snapshots follow the deltas from the
//! last one.

use super::arena::ArenaError;
use super::blocking::blocking;
use super::builder::Config;
use super::cycle::{
    announce, cycle_err, mint, published_report, unchanged_report, validate, write_and_publish,
    StepTimer,
};
use super::populate::Populate;
use super::state::Changed;
use super::state::{seeded_hash, Batch, PatchDiff, TypeState};
use super::write::WriteRequest;
use super::{
    Announced, CycleEvent, CycleReport, CycleStamp, CycleStep, Producer, ProducerError, TypeChange,
};
use crate::error::Error;
use crate::schema::checksum::TypeChecksum;
use crate::schema::key::Key;
use crate::schema::record::{KeyBuf, RecordType};
use hashbrown::HashTable;
use std::time::Instant;
use tracing::Instrument;

/// One operation of an incremental cycle on one type.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Record `r` of the type's upserts batch.
    Upsert(u32),
    /// Key `k` of the type's deleted keys.
    Delete(u32),
}

/// The keys deleted from one type, in one arena.
#[derive(Default)]
struct Deletes {
    bytes: Vec<u8>,
    /// (start, length) in `bytes` of each key.
    at: Vec<(usize, usize)>,
}

impl Deletes {
    fn key(&self, k: u32) -> &[u8] {
        let (start, len) = self.at[k as usize];
        &self.bytes[start..start + len]
    }
}

/// The changes of one incremental cycle: upserts and deletes by primary
/// key. See the module doc for the rules.
pub struct Incremental<'a> {
    config: &'a Config,
    upserts: Populate<'a>,
    ops: Vec<Vec<Op>>,
    deletes: Vec<Deletes>,
    key: KeyBuf,
}

impl<'a> Incremental<'a> {
    fn new(config: &'a Config) -> Self {
        Incremental {
            config,
            upserts: Populate::new(config),
            ops: config.types.iter().map(|_| Vec::new()).collect(),
            deletes: config.types.iter().map(|_| Deletes::default()).collect(),
            key: KeyBuf::new(),
        }
    }

    /// The index of `T`, which must have a primary key.
    fn keyed_type<T: RecordType>(&self) -> Result<usize, Error> {
        let t = self.upserts.type_index::<T>()?;
        if self.config.types[t].key.is_none() {
            return Err(ProducerError::NotKeyed {
                type_name: self.config.types[t].info.name.clone(),
            }
            .into());
        }
        Ok(t)
    }

    /// Adds or replaces the record of its key, built with `T`'s generated
    /// builder.
    pub fn upsert<T: RecordType>(
        &mut self,
        fill: impl FnOnce(<T as capnp::traits::Owned>::Builder<'_>) -> capnp::Result<()>,
    ) -> Result<(), Error> {
        let t = self.keyed_type::<T>()?;
        self.upserts.add::<T>(fill)?;
        self.ops[t].push(Op::Upsert(self.upserts.records_in(t) - 1));
        Ok(())
    }

    /// Adds or replaces the record of its key with a copy of `record`.
    pub fn upsert_reader<T: RecordType>(
        &mut self,
        record: <T as capnp::traits::Owned>::Reader<'_>,
    ) -> Result<(), Error> {
        let t = self.keyed_type::<T>()?;
        self.upserts.add_reader::<T>(record)?;
        self.ops[t].push(Op::Upsert(self.upserts.records_in(t) - 1));
        Ok(())
    }

    /// Sets a header tag for this cycle's blobs only, as
    /// [`Populate::tag`] does for a full cycle.
    pub fn tag(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.upserts.tag(key, value);
    }

    /// Deletes the record of `key` (its key fields' values, as
    /// `TypeView::find` takes them: `&42u64`, `&("a", 7)`). A key the
    /// state does not hold is a no-op; a value that does not fit the key
    /// is an error.
    pub fn delete<T: RecordType, K: Key + ?Sized>(&mut self, key: &K) -> Result<(), Error> {
        let t = self.keyed_type::<T>()?;
        let registered = &self.config.types[t];
        let spec = registered.key.as_ref().expect("keyed_type checked");
        self.key.clear();
        spec.encode_query(&registered.info.name, key, &mut self.key)?;
        let deletes = &mut self.deletes[t];
        let start = deletes.bytes.len();
        deletes.bytes.extend_from_slice(self.key.as_bytes());
        deletes.at.push((start, self.key.as_bytes().len()));
        self.ops[t].push(Op::Delete((deletes.at.len() - 1) as u32));
        Ok(())
    }
}

impl Incremental<'_> {
    /// The index of the registered type of node id `type_id`, which must
    /// have a primary key.
    fn keyed_position(&self, type_id: u64) -> Result<usize, Error> {
        let t = self
            .upserts
            .type_position(type_id)
            .ok_or_else(|| ProducerError::UnknownType {
                type_name: format!("{type_id:#018x}"),
            })?;
        if self.config.types[t].key.is_none() {
            return Err(ProducerError::NotKeyed {
                type_name: self.config.types[t].info.name.clone(),
            }
            .into());
        }
        Ok(t)
    }

    /// Adds or replaces the record of its key, for a type given by node
    /// id (any registered type: [`ProducerBuilder::node_type`] or
    /// generated), from the words of a single-segment message whose root
    /// is the record, as [`Populate::add_canonical`] takes them.
    ///
    /// [`ProducerBuilder::node_type`]: crate::producer::ProducerBuilder::node_type
    pub fn upsert_canonical(&mut self, type_id: u64, words: &[u64]) -> Result<(), Error> {
        let t = self.keyed_position(type_id)?;
        self.upserts.add_canonical(type_id, words)?;
        self.ops[t].push(Op::Upsert(self.upserts.records_in(t) - 1));
        Ok(())
    }

    /// Deletes the record whose key the key fields of `words` hold (a
    /// message of the type, as [`Incremental::upsert_canonical`] takes
    /// one; its other fields are ignored), for a type given by node id.
    /// A key the state does not hold is a no-op.
    pub fn delete_canonical(&mut self, type_id: u64, words: &[u64]) -> Result<(), Error> {
        let t = self.keyed_position(type_id)?;
        let registered = &self.config.types[t];
        let bad = |source: capnp::Error| ProducerError::BadRecord {
            type_name: registered.info.name.clone(),
            source,
        };
        let message = crate::schema::record::record_message(words, 4 * words.len() as u64 + 64);
        let root = message
            .get_root::<capnp::any_pointer::Reader<'_>>()
            .map_err(bad)?;
        let mut canonical = Vec::new();
        crate::schema::record::append_canonical(root, None, &mut Vec::new(), &mut canonical)
            .map_err(bad)?;
        let spec = registered.key.as_ref().expect("keyed_position checked");
        self.key.clear();
        (registered.key_of)(spec, &canonical, &mut self.key).map_err(bad)?;
        let deletes = &mut self.deletes[t];
        let start = deletes.bytes.len();
        deletes.bytes.extend_from_slice(self.key.as_bytes());
        deletes.at.push((start, self.key.as_bytes().len()));
        self.ops[t].push(Op::Delete((deletes.at.len() - 1) as u32));
        Ok(())
    }
}

/// One type's changes as the closure left them.
struct TypeOps {
    upserts: Batch,
    deletes: Deletes,
    ops: Vec<Op>,
}

impl TypeOps {
    fn key_bytes(&self, op: Op) -> &[u8] {
        match op {
            Op::Upsert(r) => self.upserts.key(r),
            Op::Delete(k) => self.deletes.key(k),
        }
    }

    fn key(&self, op: Op) -> (&[u8], u64) {
        let key = self.key_bytes(op);
        (key, seeded_hash(key))
    }

    /// The last operation on each key, in the order the operations came.
    fn last_ops(&self) -> Vec<Op> {
        let mut table: HashTable<u32> = HashTable::with_capacity(self.ops.len());
        let mut last = vec![false; self.ops.len()];
        for (i, &op) in self.ops.iter().enumerate() {
            let (key, hash) = self.key(op);
            let i = i as u32;
            match table.find_mut(hash, |&q| self.key_bytes(self.ops[q as usize]) == key) {
                Some(q) => {
                    last[*q as usize] = false;
                    *q = i;
                }
                None => {
                    table.insert_unique(hash, i, |&q| self.key(self.ops[q as usize]).1);
                }
            }
            last[i as usize] = true;
        }
        self.ops
            .iter()
            .zip(last)
            .filter_map(|(&op, last)| last.then_some(op))
            .collect()
    }

    /// The changes against `prev`: one probe of the state's key table and
    /// one record compare per key. New keys take the lowest free ordinals,
    /// then the next ones; ordinals this cycle frees are reused from the
    /// next cycle on (as a full cycle does).
    fn diff(&self, prev: &TypeState) -> PatchDiff {
        let mut diff = PatchDiff {
            created: !prev.present,
            ..PatchDiff::default()
        };
        let mut free = prev.free_ordinals();
        let mut limit = prev.ordinal_limit();
        for op in self.last_ops() {
            let (key, hash) = self.key(op);
            match (prev.find(hash, key), op) {
                (Some(old), Op::Upsert(r)) => {
                    if prev.batch.record(old) != self.upserts.record(r) {
                        diff.changed.push((prev.ordinal_of(old), r, old));
                    }
                }
                (Some(old), Op::Delete(_)) => diff.removed.push((prev.ordinal_of(old), old)),
                (None, Op::Upsert(r)) => {
                    let o = free.next().unwrap_or_else(|| {
                        limit += 1;
                        limit - 1
                    });
                    diff.added.push((o, r));
                }
                (None, Op::Delete(_)) => {}
            }
        }
        diff.added.sort_unstable();
        diff.changed.sort_unstable();
        diff.removed.sort_unstable();
        diff.count_after = prev.count + diff.added.len() as u32 - diff.removed.len() as u32;
        diff.limit_after = limit;
        diff
    }
}

impl Producer {
    /// Runs an incremental cycle: `changes` upserts and deletes records by
    /// primary key, and the cycle publishes a delta and a reverse delta
    /// with just those changes (see the module doc of
    /// [`crate::producer`]). Returns the same report as a full cycle; the
    /// report's `populate_time` is the closure's.
    pub async fn run_incremental_cycle<F>(&self, changes: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Incremental<'_>) -> Result<(), Error>,
    {
        let span = tracing::info_span!("incremental cycle", producer = %self.config.producer_id);
        self.observed(self.incremental(changes).instrument(span))
            .await
    }

    async fn incremental<F>(&self, changes: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Incremental<'_>) -> Result<(), Error>,
    {
        let config = &*self.config;
        let started = Instant::now();
        let mut timer = StepTimer::new(config);
        let cycle_start_micros = config.clock.unix_micros();
        let mut guard = self.announced.lock().await;

        // 1. Mint (a producer with no state and an empty log has nothing
        // to change: its first cycle must be a full one).
        let newest = mint(config, guard.as_ref()).await?;
        let Some(last) = guard.as_mut() else {
            return Err(cycle_err(CycleStep::Mint, 1)(ProducerError::NoState.into()));
        };
        let version = last.entry.version + 1;
        config.emit(CycleEvent::Started { version });
        timer.done(CycleStep::Mint);

        // 2. The caller's changes.
        let (ops, tags) = blocking(|| {
            let mut inc = Incremental::new(config);
            changes(&mut inc).map_err(cycle_err(CycleStep::Populate, version))?;
            let Incremental {
                mut upserts,
                ops,
                deletes,
                ..
            } = inc;
            let tags = upserts.take_tags();
            let ops = upserts
                .into_batches()
                .map_err(cycle_err(CycleStep::Populate, version))?
                .into_iter()
                .zip(deletes)
                .zip(ops)
                .map(|((upserts, deletes), ops)| TypeOps {
                    upserts,
                    deletes,
                    ops,
                })
                .collect::<Vec<_>>();
            Ok::<_, Error>((ops, tags))
        })?;
        let stamp = CycleStamp::new(cycle_start_micros, &config.tags, tags);
        let populate_time = started.elapsed();
        timer.done(CycleStep::Populate);

        // 3. Identify, against the announced state (read only).
        let diffs: Vec<PatchDiff> = blocking(|| {
            ops.iter()
                .zip(&last.types)
                .map(|(ops, prev)| ops.diff(prev))
                .collect()
        });
        let changes: Vec<TypeChange> = config
            .types
            .iter()
            .zip(&diffs)
            .zip(&last.types)
            .map(|((t, d), prev)| TypeChange {
                type_name: t.info.name.clone(),
                records_before: prev.count,
                records_after: d.count_after,
                added: d.added.len() as u32,
                changed: d.changed.len() as u32,
                removed: d.removed.len() as u32,
            })
            .chain(last.unregistered.iter().map(|u| TypeChange {
                type_name: u.name.clone(),
                records_before: u.state.count,
                records_after: 0,
                added: 0,
                changed: 0,
                removed: u.state.count,
            }))
            .collect();
        timer.done(CycleStep::Identify);

        // 4. No change: no version.
        if diffs.iter().all(PatchDiff::is_empty) && last.unregistered.is_empty() {
            return Ok(unchanged_report(
                last.entry.version,
                changes,
                populate_time,
                started,
            ));
        }

        // Room in the state's arenas for the changes, made now so that a
        // scratch file that cannot grow fails the cycle before anything is
        // published, and applying the changes after the announcement
        // cannot fail. (Capacities only: the state's records are as
        // announced.)
        blocking(|| {
            for ((state, ops), diff) in last.types.iter_mut().zip(&ops).zip(&diffs) {
                if !diff.is_empty() {
                    state.reserve_patch(&ops.upserts, diff)?;
                }
            }
            Ok(())
        })
        .map_err(|e: ArenaError| cycle_err(CycleStep::Identify, version)(e.into()))?;
        let last: &Announced = last;

        // 5. Validate.
        let changed: Vec<Changed<'_>> = diffs
            .iter()
            .zip(&ops)
            .zip(&last.types)
            .map(|((d, ops), prev)| Changed {
                added: &d.added,
                changed: &d.changed,
                removed: &d.removed,
                created: d.created,
                prev,
                next: None,
                new: &ops.upserts,
                before: (prev.count, prev.ordinal_limit()),
                after: (d.count_after, d.limit_after),
            })
            .collect();
        validate(config, version, &changes, &changed)?;
        timer.done(CycleStep::Validate);

        // 6. Write the delta and reverse delta, and publish them.
        let deltas: Vec<_> = changed.iter().map(Changed::deltas).collect();
        // The checksum of each registered type after the cycle (`None`:
        // the type is in neither state), in proportion to the change.
        let sums: Vec<Option<u64>> = config
            .types
            .iter()
            .zip(&changed)
            .map(|(t, c)| (c.created || c.prev.present).then(|| c.checksum_after(t.info.type_id)))
            .collect();
        let next_sums: Vec<TypeChecksum> = config
            .types
            .iter()
            .zip(&sums)
            .filter_map(|(t, sum)| {
                sum.map(|checksum| TypeChecksum {
                    type_id: t.info.type_id,
                    checksum,
                })
            })
            .collect();
        let (version, blobs) = write_and_publish(
            config,
            WriteRequest {
                dataset_id: last.entry.dataset_id,
                version,
                prev_version: Some(last.entry.version),
                types: &deltas,
                unregistered: &last.unregistered,
                snapshot: None,
                cycle: &stamp,
                prev_cycle: Some(&last.cycle),
                prev_types: &last.types,
                next_sums: &next_sums,
            },
        )
        .await?;
        drop((deltas, changed));
        timer.done(CycleStep::Publish);

        // 7. Announce; only then does the state change, in place.
        let entry = announce(
            config,
            last.entry.dataset_id,
            newest.as_ref(),
            Some(&last.entry),
            version,
            false,
            &blobs,
        )
        .await?;
        timer.done(CycleStep::Announce);
        let last: &mut Announced = guard.as_mut().expect("checked above");
        blocking(|| {
            for (((state, ops), diff), sum) in
                last.types.iter_mut().zip(&ops).zip(&diffs).zip(&sums)
            {
                if !diff.is_empty() {
                    // Room was reserved before publishing.
                    state.apply_patch(&ops.upserts, diff);
                    state.checksum = sum.unwrap_or(0);
                }
            }
        });
        last.entry = entry.clone();
        last.cycles_since_snapshot += 1;
        last.cycle = stamp;
        // Dropped by this cycle.
        last.unregistered.clear();
        Ok(published_report(
            entry,
            changes,
            &blobs,
            populate_time,
            started,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(&[u8], u64)]) -> Batch {
        let mut b = Batch::new(true);
        for &(key, word) in records {
            b.push_for_test(&[word], key);
        }
        b
    }

    fn ops_of(upserts: &[(&[u8], u64)], deletes: &[&[u8]], order: &[Op]) -> TypeOps {
        let mut d = Deletes::default();
        for key in deletes {
            d.at.push((d.bytes.len(), key.len()));
            d.bytes.extend_from_slice(key);
        }
        TypeOps {
            upserts: batch(upserts),
            deletes: d,
            ops: order.to_vec(),
        }
    }

    /// A state holding `records` at ordinals 0.., as a full cycle leaves it.
    fn state(records: &[(&[u8], u64)]) -> TypeState {
        let b = batch(records);
        let n = b.len();
        let mut ordinals = b.arena("test ordinals");
        for o in 0..n {
            ordinals.push(o).unwrap();
        }
        TypeState::from_ordinals(1, b, ordinals, n).unwrap()
    }

    #[test]
    fn last_operation_on_a_key_wins() {
        // upsert a=1, delete a, upsert b=2, upsert a=3, delete b.
        let ops = ops_of(
            &[(b"a", 1), (b"b", 2), (b"a", 3)],
            &[b"a", b"b"],
            &[
                Op::Upsert(0),
                Op::Delete(0),
                Op::Upsert(1),
                Op::Upsert(2),
                Op::Delete(1),
            ],
        );
        let last = ops.last_ops();
        assert!(matches!(last.as_slice(), [Op::Upsert(2), Op::Delete(1)]));
    }

    #[test]
    fn diff_names_added_changed_removed_and_skips_no_ops() {
        let mut prev = state(&[(b"a", 1), (b"b", 2), (b"c", 3)]);
        let ops = ops_of(
            // a unchanged, b changed, d new; c deleted; z deleted (absent).
            &[(b"a", 1), (b"b", 20), (b"d", 4)],
            &[b"c", b"z"],
            &[
                Op::Upsert(0),
                Op::Upsert(1),
                Op::Upsert(2),
                Op::Delete(0),
                Op::Delete(1),
            ],
        );
        let diff = ops.diff(&prev);
        assert_eq!(diff.changed, vec![(1, 1, 1)]);
        assert_eq!(diff.removed, vec![(2, 2)]);
        // No free ordinal yet: d takes the next one (c's is freed only
        // from the next cycle on).
        assert_eq!(diff.added, vec![(3, 2)]);
        assert_eq!((diff.count_after, diff.limit_after), (3, 4));
        prev.reserve_patch(&ops.upserts, &diff).unwrap();
        prev.apply_patch(&ops.upserts, &diff);
        assert_eq!(prev.count, 3);
        let at = |o: u32| prev.get(o).map(|(w, _)| w[0]);
        assert_eq!(
            [at(0), at(1), at(2), at(3)],
            [Some(1), Some(20), None, Some(4)]
        );
        // The next cycle's new key takes c's ordinal.
        let next = ops_of(&[(b"e", 5)], &[], &[Op::Upsert(0)]);
        let diff = next.diff(&prev);
        assert_eq!(diff.added, vec![(2, 0)]);
    }

    #[test]
    fn applying_many_patches_compacts_and_keeps_every_key_findable() {
        // Invariant: after any number of in-place patches (and the
        // compactions they trigger), every live key is found at its
        // ordinal with its newest record, and no dead one is.
        let keys: Vec<Vec<u8>> = (0..64u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let records: Vec<(&[u8], u64)> = keys.iter().map(|k| (k.as_slice(), 0)).collect();
        let mut s = state(&records);
        let mut model: Vec<Option<u64>> = vec![Some(0); 64];
        for round in 1..40u64 {
            let i = (round * 7 % 64) as usize;
            let j = (round * 13 % 64) as usize;
            let ups: Vec<(&[u8], u64)> = (0..8)
                .map(|n| (keys[(i + n) % 64].as_slice(), round))
                .collect();
            let ops = ops_of(
                &ups,
                &[keys[j].as_slice()],
                &(0..8)
                    .map(Op::Upsert)
                    .chain([Op::Delete(0)])
                    .collect::<Vec<_>>(),
            );
            let diff = ops.diff(&s);
            s.reserve_patch(&ops.upserts, &diff).unwrap();
            s.apply_patch(&ops.upserts, &diff);
            for n in 0..8 {
                model[(i + n) % 64] = Some(round);
            }
            model[j] = None;
            assert!(s.garbage_words_for_test() * 4 <= s.total_words);
            for (k, want) in keys.iter().zip(&model) {
                let found = s.find(seeded_hash(k), k).map(|r| s.batch.record(r)[0]);
                assert_eq!(found, *want, "round {round}");
                if let Some(r) = s.find(seeded_hash(k), k) {
                    let o = s.ordinal_of(r);
                    assert_eq!(s.get(o).map(|(w, _)| w[0]), *want);
                }
            }
            assert_eq!(s.count as usize, model.iter().flatten().count());
        }
    }
}
