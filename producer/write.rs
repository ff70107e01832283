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
use crate::error::FormatError;
use crate::schema::blob::OpenBlob;
use crate::schema::blob::{
    write_delta, write_snapshot, DeltaTypeSource, HeaderInfo, SnapshotTypeSource,
};
use crate::schema::checksum::{self, PriorRecords, TypeChecksum};
use crate::schema::envelope::BlobKind;
use crate::schema::DatasetId;
use bytes::Bytes;
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
    bytes: &[u8],
    name: &BlobName,
    next_sums: &[TypeChecksum],
) -> Result<(), Error> {
    let label = name.to_string();
    let blob = Arc::new(OpenBlob::from_bytes(bytes, &label)?);
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
    // The checksums of the state each blob makes: the new state (every
    // registered type holds it after the cycle) or, going back, the
    // previous one.
    let next_sums: Vec<TypeChecksum> = config
        .types
        .iter()
        .zip(req.diffs)
        .map(|(t, d)| TypeChecksum {
            type_id: t.info.type_id,
            checksum: d.next.checksum,
        })
        .collect();
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
    let head = |from, to, type_checksums| HeaderInfo {
        dataset_id: req.dataset_id,
        from_version: from,
        to_version: to,
        producer_id: &config.producer_id,
        cycle_start_micros: req.cycle_start_micros,
        schema: &config.schema,
        tags: &config.tags,
        type_checksums,
        max_list_shift: config.max_list_shift,
    };
    let mut out = Vec::new();
    if let Some(prev) = req.prev_version {
        let forward = delta_blob(
            config,
            Direction::Forward,
            &head(prev, version, &next_sums),
            req,
        )?;
        let name = BlobName::Delta(prev, version);
        check_forward(config, req, &forward, &name, &next_sums)?;
        out.push((name, Bytes::from(forward)));
        let reverse = delta_blob(
            config,
            Direction::Reverse,
            &head(version, prev, &prev_sums),
            req,
        )?;
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
        let snapshot = write_snapshot(&head(0, version, &next_sums), &sources)?;
        out.push((BlobName::Snapshot(version), Bytes::from(snapshot)));
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
            let start = b.words.len();
            crate::schema::record::append_canonical(
                message.get_root_as_reader().unwrap(),
                None,
                &mut Vec::new(),
                &mut b.words,
            )
            .unwrap();
            b.push(start, &id.to_be_bytes());
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
        let write = |diffs: &[TypeDiff]| {
            write_blobs(
                config,
                &WriteRequest {
                    dataset_id: DatasetId::mint(),
                    version: 2,
                    prev_version: Some(1),
                    diffs,
                    prev_types: &prev,
                    unregistered: &[],
                    with_snapshot: true,
                    cycle_start_micros: 0,
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
        let blobs = write(&[next()]).unwrap();
        assert_eq!(blobs.len(), 3, "delta, reverse delta and snapshot");

        let mut wrong = next();
        wrong.next.checksum = wrong.next.checksum.wrapping_add(1);
        let err = write(&[wrong]).unwrap_err().to_string();
        assert!(
            err.contains("delta/")
                && err.contains("Movie")
                && err.contains("state checksum mismatch"),
            "{err}"
        );
    }
}
