//! Garbage collection: what a store holds that no reader will ever need.
//!
//! This module owns deleting things from a dataset's store: the blobs of
//! versions a [`RetentionPolicy`] no longer keeps, the blobs of cycles that
//! never announced, and the *leftovers of interrupted writes*.
//!
//! # Retention
//!
//! [`collect_garbage`] applies a [`RetentionPolicy`]: the newest
//! [`DEFAULT_KEEP_VERSIONS`] announced versions stay reachable from their
//! snapshots and by deltas and reverse deltas between them, a pin keeps
//! what its version needs, and a blob goes only
//! [`DEFAULT_RETENTION_GRACE`] after the last entry that needed it stopped
//! being the newest (a blob no announcement names: once its object is that
//! old). Announcement entries are never deleted. It runs as the
//! producer's background step after each announcement
//! (`ProducerBuilder::retention`, on by default) and as `burrow gc`. A
//! consumer that finds a blob gone plans again around it, and `verify`
//! lists the versions retention retired without calling them problems.
//!
//! What is kept, for one log entry `e` (the newest, say):
//!
//! - for each of the newest `keep` announced versions up to `e`
//!   (following each announcement's `from_version` link), the path the
//!   planner offers from a snapshot: the nearest snapshot at or below it
//!   and the deltas from there;
//! - between those versions, the deltas and reverse deltas, so a consumer
//!   at one of them moves to another by deltas;
//! - if `e` carries a pin, the pinned version's snapshot path and the
//!   deltas and reverse deltas between it and `e`'s version;
//! - with a `snapshot_spacing` of `n`, also the oldest snapshot of each
//!   span of `n` versions below those (an archive to pin or roll back to;
//!   off by default).
//!
//! When a blob may go: a grace period after the last entry that needed it
//! stopped being the newest. That time comes from the log itself, no extra
//! state: gc keeps the union of what every entry written within the grace
//! period needs, plus what the entry that was newest when the grace period
//! began needs; a blob outside that union stopped being needed before
//! `now - grace`. Entries' times are their `timestamp_micros` (the
//! writer's clock), so the clocks of producers and gc must agree to within
//! a small part of the grace period. A blob no entry read names is deleted
//! only once its object is older than the grace period (the store's
//! last-modified time). gc reads the log back from its newest entry only
//! as far as the grace window, the retained versions and their snapshots
//! reach, never the whole log.
//!
//! Who may do what: gc LISTs `snapshot/`, `delta/`, `reverse/` and
//! `upload/`, GETs announcement entries, and DELETEs blobs; it never
//! writes.
//!
//! # Leftovers
//!
//! A write that dies half-way leaves an object no name of burrow's points
//! at:
//!
//! - **Partial writes** on a local store. object_store's local backend
//!   writes a put to a staging file beside its target, `<name>#<digits>`,
//!   and renames it into place when it is whole. A producer killed during a
//!   snapshot write leaves the staging file (tens of MB at a million
//!   records). object_store's own listing hides such names, so they are
//!   found by reading the directory. Other backends write atomically and
//!   leave none.
//! - **Temporary uploads** under `upload/` (see [`crate::blobstore::upload`]):
//!   a large blob goes up under a temporary name and is moved into place;
//!   a writer that dies between the two leaves the temporary object, on any
//!   backend. (An S3 multipart upload that was never completed is invisible
//!   to object_store; a bucket lifecycle rule that aborts incomplete
//!   multipart uploads removes those.)
//!
//! # Invariants
//!
//! - The sweep deletes only leftovers: a name that parses as one of
//!   burrow's blob or announcement names is never touched by it.
//! - A leftover is deleted only once it is older than a grace period (by its
//!   modification time), so a sweep never races a write in progress: a
//!   staging file or temporary upload that is still being written is young.
//!   The producer sweeps with [`DEFAULT_LEFTOVER_GRACE`] when it restores;
//!   `burrow verify` lists leftovers without deleting them.
//! - Only the dataset's own directories are read (`snapshot/`, `delta/`,
//!   `reverse/`, `announce/`, `upload/`), so datasets under sibling prefixes
//!   of one store are never swept by each other.

mod retention;

pub(crate) use retention::collect_garbage_in;
pub use retention::{
    collect_garbage, needed_blobs, DeleteReason, Deletion, GcReport, RetentionPolicy,
    DEFAULT_KEEP_VERSIONS, DEFAULT_RETENTION_GRACE,
};

use crate::announcer::AnnounceError;
use crate::blobstore::{BlobStore, StoreError};
use futures::TryStreamExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors of garbage collection. gc deletes nothing it has not proven
/// unneeded: any of these stops a run before its deletions (or part way
/// through them, for a store error while deleting).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// The retention policy is invalid.
    #[error("invalid retention policy: {what}: {reason}")]
    Policy {
        /// The setting.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The log does not hold an announced version an entry refers to.
    #[error(
        "the announcement log is broken: version {version}, which announce/{seq} relies on, \
         is not announced before it; gc deletes nothing on a log it cannot follow"
    )]
    BrokenLog {
        /// The entry whose walk failed.
        seq: u64,
        /// The version it looked for.
        version: u64,
    },
    /// Reading the log failed.
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// Listing or deleting failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How old a leftover must be before the producer's sweep deletes it: far
/// longer than any single blob write takes.
pub const DEFAULT_LEFTOVER_GRACE: Duration = Duration::from_secs(60 * 60);

/// The dataset directories a local store's partial writes can be in.
const BLOB_DIRS: [&str; 4] = ["snapshot", "delta", "reverse", "announce"];

/// What kind of leftover an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftoverKind {
    /// A local store's staging file `<name>#<digits>` of a put that never
    /// finished.
    PartialWrite,
    /// A temporary object under `upload/` of a large blob's upload that was
    /// never moved into place.
    TemporaryUpload,
}

impl std::fmt::Display for LeftoverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeftoverKind::PartialWrite => "partial write",
            LeftoverKind::TemporaryUpload => "temporary upload",
        })
    }
}

/// One leftover of an interrupted write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Where it is, relative to the dataset (e.g.
    /// `snapshot/00000000000000000007#3` or `upload/<id>`).
    pub name: String,
    /// Which kind of interrupted write left it.
    pub kind: LeftoverKind,
    /// Its size in bytes.
    pub size: u64,
    /// Time since it was last written (zero if its clock is ahead of ours).
    pub age: Duration,
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} bytes, last written {} s ago",
            self.name,
            self.kind,
            self.size,
            self.age.as_secs()
        )
    }
}

/// Every leftover of interrupted writes in `store`, oldest name first.
/// Reads only; see the [module docs](self) for what counts.
pub async fn find_leftovers(store: &BlobStore) -> Result<Vec<Leftover>, StoreError> {
    find_leftovers_at(store, SystemTime::now()).await
}

/// [`find_leftovers`] with ages taken against `now`.
async fn find_leftovers_at(
    store: &BlobStore,
    now: SystemTime,
) -> Result<Vec<Leftover>, StoreError> {
    let mut found = temporary_uploads(store, now).await?;
    if let Some(dir) = store.local_dir() {
        let partial = blocking("list partial writes", move || partial_writes(&dir, now)).await?;
        found.extend(partial);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Deletes the leftovers of `store` that are at least `grace` old and
/// returns them. Younger ones may belong to a write in progress and stay.
/// A leftover that is already gone when it is deleted (another sweep) is
/// not an error.
pub async fn sweep_leftovers(
    store: &BlobStore,
    grace: Duration,
) -> Result<Vec<Leftover>, StoreError> {
    let mut deleted = Vec::new();
    for leftover in find_leftovers(store).await? {
        if leftover.age < grace {
            continue;
        }
        delete_leftover(store, &leftover).await?;
        tracing::info!(leftover = %leftover, "deleted a leftover of an interrupted write");
        deleted.push(leftover);
    }
    if !deleted.is_empty() {
        metrics::counter!("burrow_gc_leftovers_deleted_total").increment(deleted.len() as u64);
    }
    Ok(deleted)
}

async fn delete_leftover(store: &BlobStore, leftover: &Leftover) -> Result<(), StoreError> {
    match leftover.kind {
        LeftoverKind::TemporaryUpload => store.delete_raw(&leftover.name).await,
        LeftoverKind::PartialWrite => {
            let Some(dir) = store.local_dir() else {
                return Ok(());
            };
            let path = dir.join(&leftover.name);
            blocking("delete partial write", move || remove_file(&path)).await
        }
    }
}

/// The leftovers at least `grace` old as of `now`, as deletions; deleted
/// unless `dry_run`. Retention's part of a gc run.
async fn leftovers_to_delete(
    store: &BlobStore,
    grace: Duration,
    now: SystemTime,
    dry_run: bool,
) -> Result<Vec<Deletion>, StoreError> {
    let mut out = Vec::new();
    for leftover in find_leftovers_at(store, now).await? {
        if leftover.age < grace {
            continue;
        }
        if !dry_run {
            delete_leftover(store, &leftover).await?;
            tracing::info!(leftover = %leftover, "gc deleted a leftover of an interrupted write");
        }
        out.push(Deletion {
            name: leftover.name,
            size: leftover.size,
            age: leftover.age,
            reason: DeleteReason::Leftover(leftover.kind),
        });
    }
    Ok(out)
}

async fn temporary_uploads(
    store: &BlobStore,
    now: SystemTime,
) -> Result<Vec<Leftover>, StoreError> {
    let dir = crate::blobstore::upload::UPLOAD_DIR;
    let metas: Vec<_> = store
        .object_store()
        .list(Some(&store.path_of(dir)))
        .try_collect()
        .await
        .map_err(|e| StoreError::from_backend("list", dir, e))?;
    Ok(metas
        .into_iter()
        .filter_map(|meta| {
            let name = store.relative_name(&meta.location)?;
            let written = SystemTime::UNIX_EPOCH
                + Duration::from_millis(meta.last_modified.timestamp_millis().max(0) as u64);
            Some(Leftover {
                name,
                kind: LeftoverKind::TemporaryUpload,
                size: meta.size,
                age: now.duration_since(written).unwrap_or_default(),
            })
        })
        .collect())
}

/// Runs file system work off the async workers.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            op,
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

/// Whether `file_name` is an object_store local staging file:
/// `<target>#<digits>` (the names its own listing hides).
fn is_staging_file(file_name: &str) -> bool {
    match file_name.rsplit_once('#') {
        Some((target, suffix)) => {
            !target.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn partial_writes(dataset: &Path, now: SystemTime) -> Result<Vec<Leftover>, StoreError> {
    let mut found = Vec::new();
    for sub in BLOB_DIRS {
        let dir = dataset.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read store directory",
                    path: dir,
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                op: "read store directory",
                path: dir.clone(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if !is_staging_file(file_name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => continue,
                // Renamed into place or swept since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "stat partial write",
                        path: entry.path(),
                        source,
                    })
                }
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            found.push(Leftover {
                name: format!("{sub}/{file_name}"),
                kind: LeftoverKind::PartialWrite,
                size: meta.len(),
                age,
            });
        }
    }
    Ok(found)
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            op: "delete partial write",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_recognised_like_object_store_does() {
        assert!(is_staging_file("00000000000000000007#1"));
        assert!(is_staging_file(
            "00000000000000000001-00000000000000000002#42"
        ));
        assert!(!is_staging_file("00000000000000000007"));
        assert!(!is_staging_file("00000000000000000007#"));
        assert!(!is_staging_file("00000000000000000007#a1"));
        assert!(!is_staging_file("#1"));
    }
}
