//! Blob writing: turning a cycle's diffs into the bytes of its delta,
//! reverse delta and snapshot (no I/O; publishing them is the cycle's
//! publish step).
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
use super::state::{Changed, TypeDiff, TypeState, UnregisteredType};
use super::CycleStamp;
use crate::blobstore::BlobName;
use crate::error::Error;
use crate::schema::blob::{
    write_delta, write_snapshot, DeltaTypeSource, HeaderInfo, SnapshotTypeSource,
};
use crate::schema::envelope::BlobKind;
use crate::schema::DatasetId;
use bytes::Bytes;

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

/// The delta blob between `prev_version` and `version` in `direction`.
fn delta_blob(
    config: &Config,
    direction: Direction,
    head: &HeaderInfo<'_>,
    req: &WriteRequest<'_>,
) -> Result<Vec<u8>, Error> {
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
    Ok(write_delta(kind, head, &sources)?)
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
) -> HeaderInfo<'a> {
    HeaderInfo {
        dataset_id,
        from_version: from,
        to_version: to,
        producer_id: &config.producer_id,
        cycle_start_micros: cycle.start_micros,
        schema: &config.schema,
        tags: &cycle.tags,
        max_list_shift: config.max_list_shift,
    }
}

/// Builds the blobs of one cycle: the delta and reverse delta (unless this
/// is the first cycle), then the snapshot if one is due.
pub(super) fn write_blobs(
    config: &Config,
    req: &WriteRequest<'_>,
) -> Result<Vec<(BlobName, Bytes)>, Error> {
    let version = req.version;
    let head = |from, to, cycle| header(config, req.dataset_id, from, to, cycle);
    let mut out = Vec::new();
    if let Some(prev) = req.prev_version {
        let forward = delta_blob(
            config,
            Direction::Forward,
            &head(prev, version, req.cycle),
            req,
        )?;
        out.push((BlobName::Delta(prev, version), Bytes::from(forward)));
        let back_to = req.prev_cycle.unwrap_or(req.cycle);
        let reverse = delta_blob(
            config,
            Direction::Reverse,
            &head(version, prev, back_to),
            req,
        )?;
        out.push((BlobName::Reverse(version, prev), Bytes::from(reverse)));
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
                total_words: next.total_words,
                records: next,
                indexes: &t.indexes,
            })
            .collect();
        let snapshot = write_snapshot(&head(0, version, req.cycle), &sources)?;
        out.push((BlobName::Snapshot(version), Bytes::from(snapshot)));
    }
    Ok(out)
}
