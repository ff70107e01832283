//! Re-verification of cache files, once per process, in the background.
//!
//! A cache file was verified when it entered the cache, but the disk can
//! change it afterwards. So the first time this process maps a file it did
//! not fetch itself, the body's checksum is checked again on tokio's
//! blocking pool while the state built from it already serves (the open
//! stays instant). Each blob is in one of three states here: pending,
//! verified (fetched by this process, or re-verified), or corrupt. A
//! corrupt file is evicted at once, recorded as a [`CacheFault`] (the
//! cache's fault, not the store's: the blob is not avoided by planning),
//! and flags the consumer for a rebuild, which refetches it from the store
//! and swaps a fresh state in.

use crate::blobstore::BlobName;
use crate::schema::blob::OpenBlob;
use crate::schema::DatasetId;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A cache file that no longer matched its checksum when this process
/// re-verified it. It was evicted and is refetched from the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cache file {} of {blob} no longer matches its checksum ({reason}); \
     it was evicted and is refetched from the store",
    path.display()
)]
pub struct CacheFault {
    /// The blob whose cached copy was bad.
    pub blob: String,
    /// The cache file.
    pub path: PathBuf,
    /// What the check found.
    pub reason: String,
}

/// A cached blob: its dataset and its name (the cache keeps each dataset's
/// blobs apart, so two datasets' `snapshot/1` are two files).
pub(crate) type BlobKey = (DatasetId, BlobName);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Verified,
    Corrupt,
}

struct Shared {
    status: Mutex<HashMap<BlobKey, Status>>,
    faults: Mutex<Vec<CacheFault>>,
    rebuild: AtomicBool,
    /// Bumped each time a check ends.
    changed: tokio::sync::watch::Sender<u64>,
}

/// The re-verification status of the blobs this process has mapped.
#[derive(Clone)]
pub(crate) struct Rechecks {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rechecks {
    pub(crate) fn new() -> Self {
        Rechecks {
            shared: Arc::new(Shared {
                status: Mutex::new(HashMap::new()),
                faults: Mutex::new(Vec::new()),
                rebuild: AtomicBool::new(false),
                changed: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// `name` was fetched (and verified) by this process just now.
    pub(crate) fn mark_verified(&self, name: BlobKey) {
        lock(&self.shared.status).insert(name, Status::Verified);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Records a cache file found bad while mapping it (before any state
    /// used it): evicted by the caller and refetched at once.
    pub(crate) fn record_fault(&self, fault: CacheFault) {
        tracing::warn!(%fault, "cache file is corrupt");
        metrics::counter!("burrow_consumer_cache_faults_total").increment(1);
        lock(&self.shared.faults).push(fault);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Starts re-verifying a mapped cache file in the background, unless
    /// this process already verified (or is verifying) it. Must be called
    /// inside a tokio runtime. The task holds the file's path, not the
    /// cache, so it never keeps the cache directory's lock alive.
    pub(crate) fn start(&self, name: BlobKey, blob: Arc<OpenBlob>, path: PathBuf) {
        {
            let mut status = lock(&self.shared.status);
            match status.get(&name) {
                Some(Status::Verified | Status::Pending) => return,
                Some(Status::Corrupt) | None => {
                    status.insert(name, Status::Pending);
                }
            }
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            match blob.verify() {
                Ok(()) => {
                    lock(&shared.status).insert(name, Status::Verified);
                }
                Err(e) => {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => {
                            tracing::warn!(%err, path = %path.display(), "cannot evict a corrupt cache file")
                        }
                    }
                    let fault = CacheFault {
                        blob: name.1.to_string(),
                        path,
                        reason: e.to_string(),
                    };
                    tracing::warn!(%fault, "cache file is corrupt; the state will be rebuilt");
                    metrics::counter!("burrow_consumer_cache_faults_total").increment(1);
                    lock(&shared.faults).push(fault);
                    // The rebuild is flagged before the status says
                    // corrupt: whoever sees the blob corrupt (a waiter on
                    // `settled`) also sees the rebuild pending.
                    shared.rebuild.store(true, Ordering::SeqCst);
                    lock(&shared.status).insert(name, Status::Corrupt);
                }
            }
            shared.changed.send_modify(|n| *n += 1);
        });
    }

    /// Whether every one of `blobs` has been verified by this process.
    pub(crate) fn all_verified(&self, blobs: &[BlobKey]) -> bool {
        let status = lock(&self.shared.status);
        blobs
            .iter()
            .all(|b| status.get(b) == Some(&Status::Verified))
    }

    /// Waits until none of `blobs` is still being checked.
    pub(crate) async fn settled(&self, blobs: &[BlobKey]) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let pending = {
                let status = lock(&self.shared.status);
                blobs
                    .iter()
                    .any(|b| status.get(b) == Some(&Status::Pending))
            };
            if !pending {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that sees each check end (and each fault).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Takes the rebuild flag: a state in use has a corrupt blob.
    pub(crate) fn take_rebuild(&self) -> bool {
        self.shared.rebuild.swap(false, Ordering::SeqCst)
    }

    /// Sets the rebuild flag again (a rebuild failed).
    pub(crate) fn set_rebuild(&self) {
        self.shared.rebuild.store(true, Ordering::SeqCst);
    }

    pub(crate) fn rebuild_pending(&self) -> bool {
        self.shared.rebuild.load(Ordering::SeqCst)
    }

    /// Every cache fault found so far, oldest first.
    pub(crate) fn faults(&self) -> Vec<CacheFault> {
        lock(&self.shared.faults).clone()
    }

    pub(crate) fn fault_count(&self) -> usize {
        lock(&self.shared.faults).len()
    }
}
