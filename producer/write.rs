//! Blob writing: turning a cycle's diffs into the bytes of its delta,
//! reverse delta and snapshot (no I/O; publishing them is the cycle's
//! publish step).
//!
//! The forward delta (previous → new) and the reverse delta (new →
//! previous) are mirror images: what one removes the other sets, and a
//! changed record is set to its new bytes going forward and to its old
//! bytes going back. Both are built by [`delta_blob`], called once per
//! [`Direction`], so the two cannot disagree on what a cycle changed.
//!
//! The same mirror holds for whole types: a type the cycle creates (newly
//! registered) is set from nothing going forward and dropped going back; a
//! type the cycle drops (no longer registered) leaves through a `dropped`
//! entry going forward and is re-created going back, every record set on
//! an empty type, with its name and key fields.

use super::builder::Config;
use super::state::{TypeDiff, TypeState, UnregisteredType};
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
struct TypeDelta<'a> {
    removed: Vec<(u32, u64)>,
    set: Vec<(u32, &'a [u64], u64)>,
    /// The state the delta leads to.
    after: &'a TypeState,
}

/// One type's delta in `direction`, given its diff against `prev`.
fn type_delta<'a>(diff: &'a TypeDiff, prev: &'a TypeState, direction: Direction) -> TypeDelta<'a> {
    let next = &diff.next;
    // `from` is the state the delta is applied to, `to` the one it makes;
    // `leaving` are ordinals in `from` only, `arriving` ordinals in `to` only.
    let (from, to, leaving, arriving) = match direction {
        Direction::Forward => (prev, next, &diff.removed, &diff.added),
        Direction::Reverse => (next, prev, &diff.added, &diff.removed),
    };
    let removed = leaving
        .iter()
        .map(|&(o, r)| (o, from.batch.hash(r)))
        .collect();
    let mut set: Vec<(u32, &[u64], u64)> = arriving
        .iter()
        .map(|&(o, r)| (o, to.batch.record(r), to.batch.hash(r)))
        .chain(diff.changed.iter().map(|&(o, in_next, in_prev)| {
            let r = match direction {
                Direction::Forward => in_next,
                Direction::Reverse => in_prev,
            };
            // A changed record keeps its key: no hash (see
            // `TypeDelta.keyHashes`).
            (o, to.batch.record(r), 0)
        }))
        .collect();
    set.sort_unstable_by_key(|x| x.0);
    TypeDelta {
        removed,
        set,
        after: to,
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
    part: Option<TypeDelta<'a>>,
}

/// The entry that re-creates `state` on a state without the type: every
/// record set, nothing removed.
fn recreate(state: &TypeState) -> TypeDelta<'_> {
    TypeDelta {
        removed: Vec::new(),
        set: (0..state.ordinal_limit())
            .filter_map(|o| state.get(o).map(|(words, hash)| (o, words, hash)))
            .collect(),
        after: state,
    }
}

/// The delta blob between `prev_version` and `version` in `direction`.
fn delta_blob(
    config: &Config,
    direction: Direction,
    head: &HeaderInfo<'_>,
    req: &WriteRequest<'_>,
) -> Result<Vec<u8>, Error> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for (slot, ((t, d), prev)) in config
        .types
        .iter()
        .zip(req.diffs)
        .zip(req.prev_types)
        .enumerate()
    {
        if d.is_empty() {
            continue;
        }
        // A type this cycle creates is dropped going back.
        let part = match (d.created, direction) {
            (true, Direction::Reverse) => None,
            _ => Some(type_delta(d, prev, direction)),
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
            part: match direction {
                Direction::Forward => None,
                Direction::Reverse => Some(recreate(&u.state)),
            },
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
                record_count_after: part.after.count,
                ordinal_limit_after: part.after.ordinal_limit(),
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
    pub diffs: &'a [TypeDiff],
    pub prev_types: &'a [TypeState],
    /// Types the last announced state holds that this producer does not
    /// register: this cycle drops them.
    pub unregistered: &'a [UnregisteredType],
    pub with_snapshot: bool,
    pub cycle_start_micros: i64,
}

/// Builds the blobs of one cycle: the delta and reverse delta (unless this
/// is the first cycle), then the snapshot if one is due.
pub(super) fn write_blobs(
    config: &Config,
    req: &WriteRequest<'_>,
) -> Result<Vec<(BlobName, Bytes)>, Error> {
    let version = req.version;
    let head = |from, to| HeaderInfo {
        dataset_id: req.dataset_id,
        from_version: from,
        to_version: to,
        producer_id: &config.producer_id,
        cycle_start_micros: req.cycle_start_micros,
        schema: &config.schema,
        tags: &config.tags,
        max_list_shift: config.max_list_shift,
    };
    let mut out = Vec::new();
    if let Some(prev) = req.prev_version {
        let forward = delta_blob(config, Direction::Forward, &head(prev, version), req)?;
        out.push((BlobName::Delta(prev, version), Bytes::from(forward)));
        let reverse = delta_blob(config, Direction::Reverse, &head(version, prev), req)?;
        out.push((BlobName::Reverse(version, prev), Bytes::from(reverse)));
    }
    if req.with_snapshot {
        let sources: Vec<SnapshotTypeSource<'_>> = config
            .types
            .iter()
            .zip(req.diffs)
            .enumerate()
            .map(|(slot, (t, d))| SnapshotTypeSource {
                slot: slot as u16,
                info: &t.info,
                key_fields: &t.key_fields,
                ordinal_limit: d.next.ordinal_limit(),
                record_count: d.next.count,
                total_words: d.next.total_words,
                records: &d.next,
                indexes: &t.indexes,
            })
            .collect();
        let snapshot = write_snapshot(&head(0, version), &sources)?;
        out.push((BlobName::Snapshot(version), Bytes::from(snapshot)));
    }
    Ok(out)
}
