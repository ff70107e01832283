//! How much a consumer's cache keeps beyond what its current state maps,
//! and the trim that enforces it ([`BlobCache::trim`]).
//!
//! A cache directory holds the blobs the current state maps (its snapshot
//! and every delta stacked on it since) plus, within a [`CacheRetention`]
//! bound, blobs of earlier versions: those let a consumer move back by
//! reverse deltas or to a pin without fetching, and cost nothing else. The
//! trim keeps every file it is told is live, whatever the bound; of the
//! others it evicts the oldest first, by version (the newest version a blob
//! reaches: `snapshot/v` reaches `v`, `delta/a-b` reaches `b`, `reverse/a-b`
//! starts at `a`, the newer end), until what is left is within both the
//! byte and the file bound. Versions, not modification times: they are the
//! order the announcement log gives, a consumer moves forward far more
//! often than back, and they do not change when a file is copied or
//! refetched.
//!
//! A cache holds one directory per dataset; once the consumer follows
//! another dataset (the store was deleted and published again), the
//! others' blobs can never serve it again, so
//! [`BlobCache::evict_other_datasets`] removes them whatever the bound.
//!
//! Files that are not a blob (the lock file, temp files of a fetch in
//! progress or interrupted, anything else) are neither counted nor
//! touched: a fetch in progress is never evicted under its writer, and
//! leftover temp files are removed when the cache is opened.
//!
//! Removing a file that an older state still maps is safe: on Unix the
//! mapping keeps the file's pages until it is unmapped (the name goes, the
//! inode stays), so a reader holding an older `Arc<ReadState>` after a swap
//! keeps reading the same bytes. The disk space comes back when the last
//! mapping drops.

use super::cache::BlobCache;
use super::BlobName;
use crate::schema::DatasetId;
use std::collections::HashSet;
use std::path::Path;

/// How much a cache keeps beyond the blobs its current state maps. Both
/// bounds hold at once; the current state's blobs are kept even when they
/// alone exceed them (they are not counted against them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRetention {
    /// Bytes of blobs kept beyond the current state's.
    pub max_bytes: u64,
    /// Blob files kept beyond the current state's.
    pub max_files: u64,
}

impl CacheRetention {
    /// The default byte bound: 2 GiB beyond the current state, about
    /// fifteen snapshots of a million records (129 MiB each) or thousands
    /// of their deltas: enough to go back a few versions or to a recent pin
    /// without a fetch, and small next to a read service's disk. The disk
    /// a consumer needs is then its state plus 2 GiB, whether it runs a day
    /// or a month.
    pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
    /// The default file bound: 1024 blob files beyond the current state,
    /// so a dataset of tiny deltas does not grow a directory without end
    /// while staying far under its byte bound.
    pub const DEFAULT_MAX_FILES: u64 = 1024;

    /// Keeps only the current state's blobs.
    pub const CURRENT_ONLY: CacheRetention = CacheRetention {
        max_bytes: 0,
        max_files: 0,
    };

    /// Never evicts anything.
    pub const UNBOUNDED: CacheRetention = CacheRetention {
        max_bytes: u64::MAX,
        max_files: u64::MAX,
    };
}

impl Default for CacheRetention {
    /// [`CacheRetention::DEFAULT_MAX_BYTES`] and
    /// [`CacheRetention::DEFAULT_MAX_FILES`].
    fn default() -> Self {
        CacheRetention {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }
}

/// What one trim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Blob files removed.
    pub evicted_files: u64,
    /// Their bytes.
    pub evicted_bytes: u64,
    /// Files the trim meant to remove or to size and could not (each
    /// logged): permissions, a file gone under it. They do not fail the
    /// trim; the next trim tries again.
    pub failures: u64,
    /// Blob files left in the directory (live ones included).
    pub kept_files: u64,
    /// Their bytes.
    pub kept_bytes: u64,
}

/// The newest version a blob reaches: the trim's age order.
fn reaches(name: &BlobName) -> u64 {
    match *name {
        BlobName::Snapshot(v) | BlobName::Delta(_, v) | BlobName::Reverse(v, _) => v,
        BlobName::Announce(s) => s,
        BlobName::Latest => u64::MAX,
    }
}

impl BlobCache {
    /// Evicts blobs not in `live`, oldest version first, until the others
    /// left are within `retention` (see the module docs). Blocking file
    /// work: call it off the async workers. Never fails: a file it cannot
    /// size or remove is logged, counted in [`Trimmed::failures`] and left
    /// for the next trim.
    pub fn trim(&self, live: &HashSet<BlobName>, retention: CacheRetention) -> Trimmed {
        let mut done = Trimmed::default();
        let dir = self.dir();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list the cache directory to trim it");
                done.failures += 1;
                return done;
            }
        };
        let mut others: Vec<(BlobName, u64)> = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the cache directory to trim it");
                    done.failures += 1;
                    continue;
                }
            };
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(BlobName::from_cache_file_name)
            else {
                continue; // the lock, a temp file, anything not a blob
            };
            let len = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta.len(),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot size a cache file to trim it");
                    done.failures += 1;
                    continue;
                }
            };
            if live.contains(&name) {
                done.kept_files += 1;
                done.kept_bytes += len;
            } else {
                others.push((name, len));
            }
        }
        // Newest first; keep while both bounds hold, then evict the rest.
        others.sort_by_key(|(name, _)| std::cmp::Reverse((reaches(name), *name)));
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut within = true;
        for (name, len) in others {
            within = within
                && files < retention.max_files
                && bytes.saturating_add(len) <= retention.max_bytes;
            if within {
                files += 1;
                bytes += len;
                continue;
            }
            match self.evict(&name) {
                Ok(true) => {
                    done.evicted_files += 1;
                    done.evicted_bytes += len;
                    tracing::debug!(blob = %name, bytes = len, "evicted from the cache");
                }
                Ok(false) => {
                    tracing::warn!(blob = %name, "a cache file to evict was already gone");
                    done.failures += 1;
                }
                Err(e) => {
                    tracing::warn!(blob = %name, error = %e, "cannot evict a cache file; keeping it until the next trim");
                    done.failures += 1;
                    files += 1;
                    bytes += len;
                }
            }
        }
        done.kept_files += files;
        done.kept_bytes += bytes;
        done
    }

    /// Called on a cache's top directory: evicts every blob of every
    /// dataset directory but `current`'s, and removes such a directory once
    /// it is empty. Temp files and anything not named like a dataset or a
    /// blob are left alone. Blocking; never fails (see [`BlobCache::trim`]).
    pub fn evict_other_datasets(&self, current: DatasetId) -> Trimmed {
        let mut done = Trimmed::default();
        let root = self.dir();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "cannot list the cache directory to trim it");
                done.failures += 1;
                return done;
            }
        };
        for entry in entries.flatten() {
            let is_other = entry
                .file_name()
                .to_str()
                .and_then(DatasetId::parse)
                .is_some_and(|id| id != current);
            if is_other && entry.file_type().is_ok_and(|t| t.is_dir()) {
                evict_dir(&entry.path(), &mut done);
            }
        }
        done
    }
}

/// Removes every blob file of one directory, then the directory if that
/// left it empty.
fn evict_dir(dir: &Path, done: &mut Trimmed) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list another dataset's cache directory");
            done.failures += 1;
            return;
        }
    };
    for entry in entries.flatten() {
        let is_blob = entry
            .file_name()
            .to_str()
            .and_then(BlobName::from_cache_file_name)
            .is_some();
        if !is_blob {
            continue;
        }
        let path = entry.path();
        let len = entry.metadata().map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                done.evicted_files += 1;
                done.evicted_bytes += len;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot evict another dataset's cache file");
                done.failures += 1;
            }
        }
    }
    // Not empty (a temp file, something else): it stays, quietly.
    if std::fs::remove_dir(dir).is_ok() {
        tracing::info!(dir = %dir.display(), "removed the cache directory of a dataset the store no longer holds");
    }
}
