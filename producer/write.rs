//! Blob writing: turning a cycle's diffs into its delta, reverse delta and
//! snapshot, each streamed into a spool file of the work directory
//! (`spool.rs`; the format's streaming writer, `schema/blob/write.rs`), so
//! that no blob is ever whole in memory. Compressing and publishing them
//! is the cycle's (`cycle.rs`).
//!
//! The forward delta is read back before anything is published, through
//! a read-only map of its spool: the last announced state plus it must
//! sum to the new state's checksums.
//!
//! The forward delta (previous → new) and the reverse delta (new →
//! previous) are mirror images: what one removes the other sets, and a
//! changed record is set to its new bytes going forward and to its old
//! bytes going back. Both are built from one [`Changed`] (the records a
//! full or an incremental cycle changed), one [`Direction`] each, so the
//! two cannot disagree on what a cycle changed.
//!
//! The same mirror holds for whole types: a type the cycle creates (newly
//! registered) is set from nothing going forward and dropped going back; a
//! type the cycle drops (no longer registered) leaves through a `dropped`
//! entry going forward and is re-created going back, every record set on
//! an empty type, with its name and key fields.

use super::builder::Config;
use super::spool::Spool;
use super::state::{Changed, TypeDiff, TypeState, UnregisteredType};
use super::CycleStamp;
use crate::blobstore::BlobName;
use crate::error::Error;
use crate::error::FormatError;
use crate::schema::blob::OpenBlob;
use crate::schema::blob::{
    stream_delta, stream_snapshot, DeltaTypeSource, HeaderInfo, SnapshotTypeSource,
};
use crate::schema::checksum::{self, PriorRecords, TypeChecksum};
use crate::schema::envelope::BlobKind;
use crate::schema::DatasetId;
use std::sync::Arc;

/// Which way a delta goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the previous version to the new one (`delta/<prev>-<new>`).
    Forward,
    /// From the new version back to the previous one (`reverse/<new>-<prev>`).
    Reverse,
}

/// One type's part of a delta in one direction: the ordinals it removes
/// (with the key hash of the record that leaves) and the ordinals it sets
/// (with their record and key hash), each sorted by ordinal.
pub(super) struct TypeDelta<'a> {
    removed: Vec<(u32, u64)>,
    set: Vec<(u32, &'a [u64], u64)>,
    /// The type's record count and ordinal limit once applied.
    count_after: u32,
    limit_after: u32,
}

/// What a cycle changes in one type, in both directions.
pub(super) struct TypeDeltas<'a> {
    /// The type was not in the last announced state: the forward delta
    /// creates it, the reverse delta drops it.
    created: bool,
    forward: TypeDelta<'a>,
    reverse: TypeDelta<'a>,
}

impl<'a> Changed<'a> {
    /// The forward and reverse parts; `None` if nothing changed.
    pub(super) fn deltas(&self) -> Option<TypeDeltas<'a>> {
        if !self.created
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
        {
            return None;
        }
        Some(TypeDeltas {
            created: self.created,
            forward: self.part(Direction::Forward),
            // A type the cycle creates is dropped going back: no part.
            reverse: if self.created {
                TypeDelta {
                    removed: Vec::new(),
                    set: Vec::new(),
                    count_after: 0,
                    limit_after: 0,
                }
            } else {
                self.part(Direction::Reverse)
            },
        })
    }

    fn part(&self, direction: Direction) -> TypeDelta<'a> {
        let old = &self.prev.batch;
        // `from` holds the records that leave, `to` those that arrive.
        let (from, to, leaving, arriving, after) = match direction {
            Direction::Forward => (old, self.new, self.removed, self.added, self.after),
            Direction::Reverse => (self.new, old, self.added, self.removed, self.before),
        };
        let removed = leaving.iter().map(|&(o, r)| (o, from.hash(r))).collect();
        let mut set: Vec<(u32, &[u64], u64)> = arriving
            .iter()
            .map(|&(o, r)| (o, to.record(r), to.hash(r)))
            .chain(self.changed.iter().map(|&(o, in_new, in_old)| {
                let r = match direction {
                    Direction::Forward => in_new,
                    Direction::Reverse => in_old,
                };
                // A changed record keeps its key: no hash (see
                // `TypeDelta.keyHashes`).
                (o, to.record(r), 0)
            }))
            .collect();
        set.sort_unstable_by_key(|x| x.0);
        TypeDelta {
            removed,
            set,
            count_after: after.0,
            limit_after: after.1,
        }
    }
}

/// A full cycle's [`Changed`]: its diff against `prev`.
pub(super) fn full_changes<'a>(diff: &'a TypeDiff, prev: &'a TypeState) -> Changed<'a> {
    Changed {
        added: &diff.added,
        changed: &diff.changed,
        removed: &diff.removed,
        created: diff.created,
        prev,
        next: Some(&diff.next),
        new: &diff.next.batch,
        before: (prev.count, prev.ordinal_limit()),
        after: (diff.next.count, diff.next.ordinal_limit()),
    }
}

/// One type's entry in a delta: what it removes and sets, or that it
/// drops the type.
struct Entry<'a> {
    slot: u16,
    type_id: u64,
    name: &'a str,
    key_fields: &'a [String],
    /// `None`: the entry drops the type.
    part: Option<&'a TypeDelta<'a>>,
}

/// The entry that re-creates `state` on a state without the type: every
/// record set, nothing removed.
fn recreate(state: &TypeState) -> TypeDelta<'_> {
    TypeDelta {
        removed: Vec::new(),
        set: (0..state.ordinal_limit())
            .filter_map(|o| state.get(o).map(|(words, hash)| (o, words, hash)))
            .collect(),
        count_after: state.count,
        limit_after: state.ordinal_limit(),
    }
}

/// The delta blob `name` between `prev_version` and `version` in
/// `direction`, spooled.
fn delta_blob(
    config: &Config,
    direction: Direction,
    name: &BlobName,
    head: &HeaderInfo<'_>,
    req: &WriteRequest<'_>,
) -> Result<Spool, Error> {
    let recreated: Vec<TypeDelta<'_>> = match direction {
        Direction::Forward => Vec::new(),
        Direction::Reverse => req
            .unregistered
            .iter()
            .map(|u| recreate(&u.state))
            .collect(),
    };
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for (slot, (t, d)) in config.types.iter().zip(req.types).enumerate() {
        let Some(d) = d else { continue };
        // A type this cycle creates is dropped going back.
        let part = match (d.created, direction) {
            (true, Direction::Reverse) => None,
            (_, Direction::Reverse) => Some(&d.reverse),
            (_, Direction::Forward) => Some(&d.forward),
        };
        entries.push(Entry {
            slot: slot as u16,
            type_id: t.info.type_id,
            name: &t.info.name,
            key_fields: &t.key_fields,
            part,
        });
    }
    // A type this cycle drops is re-created going back.
    for (j, u) in req.unregistered.iter().enumerate() {
        entries.push(Entry {
            slot: (config.types.len() + j) as u16,
            type_id: u.type_id,
            name: &u.name,
            key_fields: &u.key_fields,
            part: recreated.get(j),
        });
    }
    let sources: Vec<DeltaTypeSource<'_>> = entries
        .iter()
        .map(|e| match &e.part {
            Some(part) => DeltaTypeSource {
                type_id: e.type_id,
                name: e.name,
                key_fields: e.key_fields,
                removed: &part.removed,
                set: &part.set,
                record_count_after: part.count_after,
                ordinal_limit_after: part.limit_after,
                dropped: false,
                slot: e.slot,
            },
            None => DeltaTypeSource {
                type_id: e.type_id,
                name: e.name,
                key_fields: e.key_fields,
                removed: &[],
                set: &[],
                record_count_after: 0,
                ordinal_limit_after: 0,
                dropped: true,
                slot: e.slot,
            },
        })
        .collect();
    let kind = match direction {
        Direction::Forward => BlobKind::Delta,
        Direction::Reverse => BlobKind::Reverse,
    };
    let mut spool = Spool::new(&config.work_dir, name)?;
    stream_delta(kind, head, &sources, &mut spool)?;
    Ok(spool)
}

/// The records of the last announced state, by type id, as the checksum
/// of a delta applied to it reads them.
struct PrevRecords<'a> {
    config: &'a Config,
    req: &'a WriteRequest<'a>,
}

impl PrevRecords<'_> {
    fn state(&self, type_id: u64) -> Option<&TypeState> {
        match self
            .config
            .types
            .iter()
            .position(|t| t.info.type_id == type_id)
        {
            Some(i) => self.req.prev_types.get(i),
            None => self
                .req
                .unregistered
                .iter()
                .find(|u| u.type_id == type_id)
                .map(|u| &u.state),
        }
    }
}

impl PriorRecords for PrevRecords<'_> {
    fn record_hash(&mut self, type_id: u64, ordinal: u32) -> Result<Option<u64>, FormatError> {
        Ok(self
            .state(type_id)
            .and_then(|s| s.get(ordinal))
            .map(|(words, _)| checksum::record_hash(words)))
    }
}

/// Reads the forward delta back as a consumer would and checks that the
/// last announced state plus it sums to the new state's checksums, before
/// anything is published: a delta that does not lead to the state the
/// cycle made is never announced.
fn check_forward(
    config: &Config,
    req: &WriteRequest<'_>,
    spool: &Spool,
    name: &BlobName,
    next_sums: &[TypeChecksum],
) -> Result<(), Error> {
    let label = name.to_string();
    let blob = Arc::new(OpenBlob::from_mmap(spool.map()?, &label)?);
    // What was spooled is what the writer checksummed.
    blob.verify()?;
    let (_, sections) = blob.delta()?;
    let mut prior = PrevRecords { config, req };
    let before = |type_id: u64| prior_sum(config, req, type_id);
    let after = checksum::apply_delta(&sections, |_| true, before, &mut prior)?;
    for c in after {
        let claimed = next_sums.iter().find(|n| n.type_id == c.type_id);
        if claimed.map(|n| n.checksum) != Some(c.checksum) {
            let name = sections
                .iter()
                .find(|s| s.type_id == c.type_id)
                .map_or("?", |s| s.name.as_str());
            return Err(checksum::mismatch(
                &label,
                name,
                claimed.map_or(0, |n| n.checksum),
                c.checksum,
                "the last announced state plus this delta",
            )
            .into());
        }
    }
    Ok(())
}

/// A type's checksum in the last announced state (0 where it holds none).
fn prior_sum(config: &Config, req: &WriteRequest<'_>, type_id: u64) -> u64 {
    PrevRecords { config, req }
        .state(type_id)
        .filter(|s| s.present)
        .map_or(0, |s| s.checksum)
}

/// What [`write_blobs`] needs to know about the cycle.
pub(super) struct WriteRequest<'a> {
    /// The dataset every blob's header names.
    pub dataset_id: DatasetId,
    pub version: u64,
    /// The last announced version; `None` on the first cycle (no deltas).
    pub prev_version: Option<u64>,
    /// Each registered type's change, `None` where nothing changed.
    pub types: &'a [Option<TypeDeltas<'a>>],
    /// Types the last announced state holds that this producer does not
    /// register: this cycle drops them.
    pub unregistered: &'a [UnregisteredType],
    /// The new state of each registered type, when the cycle writes a
    /// snapshot (full cycles only: an incremental cycle never does).
    pub snapshot: Option<&'a [&'a TypeState]>,
    /// This cycle's start and tags, in the header of its snapshot and
    /// delta.
    pub cycle: &'a CycleStamp,
    /// The start and tags of the cycle that made the last announced state,
    /// in the header of the reverse delta, which leads back to it.
    pub prev_cycle: Option<&'a CycleStamp>,
    /// The last announced state of each registered type: what the forward
    /// delta is read back against, and the checksums the reverse delta
    /// claims.
    pub prev_types: &'a [TypeState],
    /// The state checksum of every type the new state holds
    /// ([`crate::schema::checksum`]), claimed by the forward delta and the
    /// snapshot.
    pub next_sums: &'a [TypeChecksum],
}

/// The header of a blob from `from` to `to`, stamped with `cycle`: the
/// cycle that made the state at `to` (for a reverse delta, the previous
/// cycle), so that a consumer's state tells its data's age on any path.
fn header<'a>(
    config: &'a Config,
    dataset_id: DatasetId,
    from: u64,
    to: u64,
    cycle: &'a CycleStamp,
    type_checksums: &'a [TypeChecksum],
) -> HeaderInfo<'a> {
    HeaderInfo {
        dataset_id,
        from_version: from,
        to_version: to,
        producer_id: &config.producer_id,
        cycle_start_micros: cycle.start_micros,
        schema: &config.schema,
        tags: &cycle.tags,
        type_checksums,
        max_list_shift: config.max_list_shift,
    }
}

/// Builds the blobs of one cycle, each spooled (raw, as mapped): the
/// delta and reverse delta (unless this is the first cycle), then the
/// snapshot if one is due.
pub(super) fn write_blobs(
    config: &Config,
    req: &WriteRequest<'_>,
) -> Result<Vec<(BlobName, Spool)>, Error> {
    let version = req.version;
    // Going back, the reverse delta claims the previous state's checksums.
    let prev_sums: Vec<TypeChecksum> = config
        .types
        .iter()
        .zip(req.prev_types)
        .filter(|(_, s)| s.present)
        .map(|(t, s)| (t.info.type_id, s))
        .chain(req.unregistered.iter().map(|u| (u.type_id, &u.state)))
        .map(|(type_id, s)| TypeChecksum {
            type_id,
            checksum: s.checksum,
        })
        .collect();
    let head = |from, to, cycle, sums| header(config, req.dataset_id, from, to, cycle, sums);
    let mut out = Vec::new();
    if let Some(prev) = req.prev_version {
        let name = BlobName::Delta(prev, version);
        let forward = delta_blob(
            config,
            Direction::Forward,
            &name,
            &head(prev, version, req.cycle, req.next_sums),
            req,
        )?;
        check_forward(config, req, &forward, &name, req.next_sums)?;
        out.push((name, forward));
        let back_to = req.prev_cycle.unwrap_or(req.cycle);
        let name = BlobName::Reverse(version, prev);
        let reverse = delta_blob(
            config,
            Direction::Reverse,
            &name,
            &head(version, prev, back_to, &prev_sums),
            req,
        )?;
        out.push((name, reverse));
    }
    if let Some(states) = req.snapshot {
        let sources: Vec<SnapshotTypeSource<'_>> = config
            .types
            .iter()
            .zip(states)
            .enumerate()
            .map(|(slot, (t, &next))| SnapshotTypeSource {
                slot: slot as u16,
                info: &t.info,
                key_fields: &t.key_fields,
                ordinal_limit: next.ordinal_limit(),
                record_count: next.count,
                records: next,
                indexes: &t.indexes,
            })
            .collect();
        let name = BlobName::Snapshot(version);
        let mut snapshot = Spool::new(&config.work_dir, &name)?;
        stream_snapshot(
            &head(0, version, req.cycle, req.next_sums),
            &sources,
            &mut snapshot,
        )?;
        out.push((name, snapshot));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::BlobStore;
    use crate::producer::state::{identify, Batch};
    use crate::producer::ProducerBuilder;
    use crate::schema::examples::movies_capnp::movie;

    /// A batch of movies `(id, title)`, keyed by the id's bytes.
    fn batch(movies: &[(u64, &str)]) -> Batch {
        let mut b = Batch::new(true);
        for &(id, title) in movies {
            let mut message = capnp::message::Builder::new_default();
            let mut m = message.init_root::<movie::Builder>();
            m.set_id(id);
            m.set_title(title);
            let mut words = Vec::new();
            crate::schema::record::append_canonical(
                message.get_root_as_reader().unwrap(),
                None,
                &mut Vec::new(),
                &mut words,
            )
            .unwrap();
            b.push_for_test(&words, &id.to_be_bytes());
        }
        b
    }

    /// Invariant: the producer reads its forward delta back before
    /// anything is published, and a delta that does not lead to the state
    /// the cycle made (here: a new state whose checksum is off by one, as
    /// a writer or identify bug would leave it) fails the cycle, naming the
    /// delta and the type.
    #[test]
    fn a_delta_that_does_not_lead_to_the_new_state_is_refused() {
        let producer = ProducerBuilder::new(BlobStore::memory())
            .primary_key::<movie::Owned>(&["id"])
            .build()
            .unwrap();
        let config = &producer.config;
        let type_id = config.types[0].info.type_id;
        let empty = TypeState::empty(true);
        let first = identify(
            type_id,
            &empty,
            batch(&[(1, "a"), (2, "b"), (3, "c")]),
            true,
        )
        .ok()
        .unwrap();
        let prev = vec![first.next];
        let stamp = CycleStamp::new(0, &[], Vec::new());
        // The cycle's blobs, with the new state's checksum claimed `skew`
        // away from what the cycle computed.
        let write = |diff: &TypeDiff, skew: u64| {
            let changed = full_changes(diff, &prev[0]);
            let deltas = vec![changed.deltas()];
            let next = [&diff.next];
            let sums = [TypeChecksum {
                type_id,
                checksum: diff.next.checksum.wrapping_add(skew),
            }];
            write_blobs(
                config,
                &WriteRequest {
                    dataset_id: DatasetId::mint(),
                    version: 2,
                    prev_version: Some(1),
                    types: &deltas,
                    unregistered: &[],
                    snapshot: Some(&next),
                    cycle: &stamp,
                    prev_cycle: None,
                    prev_types: &prev,
                    next_sums: &sums,
                },
            )
        };
        let next = || {
            identify(
                type_id,
                &prev[0],
                batch(&[(1, "a"), (2, "B"), (4, "d")]),
                true,
            )
            .ok()
            .unwrap()
        };
        let blobs = write(&next(), 0).unwrap();
        assert_eq!(blobs.len(), 3, "delta, reverse delta and snapshot");
        let err = write(&next(), 1).unwrap_err().to_string();
        assert!(
            err.contains("delta/")
                && err.contains("Movie")
                && err.contains("state checksum mismatch"),
            "{err}"
        );
    }
}
