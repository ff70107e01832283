//! The consumer: follows the announcement log, fetches blobs into a local
//! cache, maps them, and serves typed zero-copy views of the records.
//!
//! [`Consumer::refresh`] moves to the announced (or pinned) version: it
//! plans the cheapest path (deltas forward, reverse deltas back, or the
//! nearest snapshot and deltas from there; see [`plan`]), fetches each blob
//! into the cache (verified as it arrives), maps it, builds the next
//! [`ReadState`] beside the current one and swaps it in atomically. A
//! refresh that fails at any step leaves the current state serving and
//! returns the error; a blob that failed verification is evicted from the
//! cache and remembered, so the next plan avoids it.

pub mod plan;
mod state;

pub use plan::{chain_to, Plan, Step};
pub use state::{ReadState, Record, TypeData, TypeView, DEFAULT_RECORD_TRAVERSAL_WORDS};

use crate::announcer::{AnnounceKind, Announcement, AnnouncementLog, Watcher};
use crate::blobstore::{BlobCache, BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::blob::OpenBlob;
use arc_swap::ArcSwapOption;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of a consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The consumer has not loaded any version yet.
    #[error("the consumer has no state yet: no version has been loaded")]
    NoState,
    /// Nothing has been announced.
    #[error("nothing has been announced in the store yet")]
    NothingAnnounced,
    /// The state has no records of this type.
    #[error("version {version} has no type {type_name}")]
    UnknownType { type_name: String, version: u64 },
    /// No combination of available, unfailed blobs reaches the target.
    #[error("no usable path of blobs reaches version {target}")]
    NoPath { target: u64 },
    /// The target version was never announced.
    #[error("version {version} was never announced")]
    NotAnnounced { version: u64 },
    /// A refresh failed at one blob; the current state keeps serving.
    #[error("refresh to version {target} failed at {blob}: {source}")]
    Refresh {
        target: u64,
        blob: String,
        #[source]
        source: Box<Error>,
    },
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    store: BlobStore,
    cache_dir: Option<PathBuf>,
    verify_on_open: bool,
    max_blob_bytes: u64,
    record_traversal_words: u64,
    max_delta_depth: usize,
}

impl ConsumerBuilder {
    pub fn new(store: BlobStore) -> Self {
        ConsumerBuilder {
            store,
            cache_dir: None,
            verify_on_open: false,
            max_blob_bytes: u64::MAX,
            record_traversal_words: DEFAULT_RECORD_TRAVERSAL_WORDS,
            max_delta_depth: 256,
        }
    }

    /// Where fetched blobs are kept (required).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Re-checks each cached blob's body checksum when it is mapped
    /// (default off: blobs are verified when they enter the cache).
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// Refuses blobs larger than `bytes`.
    pub fn max_blob_bytes(mut self, bytes: u64) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    /// Bounds the words one record read may traverse (default 8 Mi words).
    pub fn record_traversal_words(mut self, words: u64) -> Self {
        self.record_traversal_words = words;
        self
    }

    /// Loads a fresh snapshot instead of stacking more than this many
    /// deltas on one (default 256).
    pub fn max_delta_depth(mut self, depth: usize) -> Self {
        self.max_delta_depth = depth;
        self
    }

    pub fn build(self) -> Result<Consumer, Error> {
        let dir = self.cache_dir.ok_or_else(|| Error::Config {
            what: "cache_dir".into(),
            reason: "a consumer needs a cache directory".into(),
        })?;
        let cache = BlobCache::open(dir)?.with_max_blob_bytes(self.max_blob_bytes);
        let log = AnnouncementLog::new(self.store.clone());
        Ok(Consumer {
            store: self.store,
            cache,
            current: ArcSwapOption::empty(),
            inner: tokio::sync::Mutex::new(Inner {
                watcher: Watcher::new(log.clone()),
                failed: HashSet::new(),
            }),
            log,
            verify_on_open: self.verify_on_open,
            record_traversal_words: self.record_traversal_words,
            max_delta_depth: self.max_delta_depth,
        })
    }
}

struct Inner {
    watcher: Watcher,
    failed: HashSet<BlobName>,
}

/// Follows a dataset. `Send + Sync`; refreshes run one at a time, reads
/// never wait for them.
pub struct Consumer {
    store: BlobStore,
    log: AnnouncementLog,
    cache: BlobCache,
    current: ArcSwapOption<ReadState>,
    inner: tokio::sync::Mutex<Inner>,
    verify_on_open: bool,
    record_traversal_words: u64,
    max_delta_depth: usize,
}

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    pub from: Option<u64>,
    pub to: u64,
    pub steps: Vec<Step>,
    /// Bytes fetched from the store (0 when every blob was cached).
    pub fetched_bytes: u64,
    pub duration: Duration,
}

impl Consumer {
    /// The current state, if one is loaded. Cheap; never waits.
    pub fn current(&self) -> Option<Arc<ReadState>> {
        self.current.load_full()
    }

    /// The current state, or [`ConsumerError::NoState`].
    pub fn state(&self) -> Result<Arc<ReadState>, Error> {
        self.current().ok_or_else(|| ConsumerError::NoState.into())
    }

    /// The current version, if any.
    pub fn version(&self) -> Option<u64> {
        self.current.load().as_ref().map(|s| s.version())
    }

    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    /// Moves to the version the log says consumers should be at (the pin,
    /// if there is one). Returns `None` if already there.
    pub async fn refresh(&self) -> Result<Option<RefreshReport>, Error> {
        let mut inner = self.inner.lock().await;
        inner.watcher.poll().await?;
        let newest = inner
            .watcher
            .newest()
            .cloned()
            .ok_or(ConsumerError::NothingAnnounced)?;
        self.refresh_locked(&mut inner, &newest, newest.target())
            .await
    }

    /// Moves to a specific announced version.
    pub async fn refresh_to(&self, version: u64) -> Result<Option<RefreshReport>, Error> {
        let mut inner = self.inner.lock().await;
        inner.watcher.poll().await?;
        let newest = inner
            .watcher
            .newest()
            .cloned()
            .ok_or(ConsumerError::NothingAnnounced)?;
        self.refresh_locked(&mut inner, &newest, version).await
    }

    async fn refresh_locked(
        &self,
        inner: &mut Inner,
        newest: &Announcement,
        target_version: u64,
    ) -> Result<Option<RefreshReport>, Error> {
        let started = Instant::now();
        let current = self.current();
        let from = current.as_ref().map(|s| s.version());
        if from == Some(target_version) {
            return Ok(None);
        }
        let target = self
            .log
            .find_version(newest, target_version)
            .await?
            .filter(|e| e.kind == AnnounceKind::Announce)
            .ok_or(ConsumerError::NotAnnounced {
                version: target_version,
            })?;
        let deep = current
            .as_ref()
            .is_some_and(|s| s.delta_depth() >= self.max_delta_depth);
        let plan = plan::plan(&self.log, newest, &target, from, &inner.failed, deep)
            .await?
            .ok_or(ConsumerError::NoPath {
                target: target_version,
            })?;
        let mut state: Option<ReadState> = None;
        let mut fetched_bytes = 0;
        for step in &plan.steps {
            let name = step.blob();
            let fail = |source: Error| -> Error {
                ConsumerError::Refresh {
                    target: target_version,
                    blob: name.to_string(),
                    source: Box::new(source),
                }
                .into()
            };
            let was_cached = self.cache.contains(&name);
            let result = async {
                let path = self.cache.fetch(&self.store, &name).await?;
                let blob = Arc::new(OpenBlob::map(
                    &path,
                    &name.to_string(),
                    self.verify_on_open,
                )?);
                let len = blob.len();
                let next = match *step {
                    Step::Snapshot(v) => ReadState::from_snapshot(blob, v)?
                        .with_record_traversal_words(self.record_traversal_words),
                    Step::Delta(a, b) | Step::Reverse(a, b) => {
                        let base = match &state {
                            Some(s) => s,
                            None => current.as_deref().ok_or(ConsumerError::NoState)?,
                        };
                        base.apply(blob, a, b)?
                    }
                };
                Ok::<_, Error>((next, len))
            }
            .await;
            match result {
                Ok((next, len)) => {
                    if !was_cached {
                        fetched_bytes += len;
                    }
                    state = Some(next);
                }
                Err(e) => {
                    if is_bad_blob(&e) {
                        tracing::warn!(blob = %name, error = %e, "blob is bad; evicting it and planning around it");
                        inner.failed.insert(name);
                        let _ = self.cache.evict(&name);
                    }
                    return Err(fail(e));
                }
            }
        }
        let Some(state) = state else {
            return Ok(None);
        };
        let to = state.version();
        self.current.store(Some(Arc::new(state)));
        tracing::info!(?from, to, steps = plan.steps.len(), "refreshed");
        Ok(Some(RefreshReport {
            from,
            to,
            steps: plan.steps,
            fetched_bytes,
            duration: started.elapsed(),
        }))
    }
}

/// Whether an error means the blob itself is bad (so plans should avoid
/// it), as opposed to the store being unreachable.
fn is_bad_blob(e: &Error) -> bool {
    matches!(
        e,
        Error::Format(FormatError::Corrupt { .. } | FormatError::Incompatible { .. })
            | Error::Store(StoreError::NotFound { .. })
    )
}
