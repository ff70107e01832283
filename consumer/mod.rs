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
mod watch;

pub use plan::{chain_to, Plan, Step};
pub use state::{Iter, ReadState, Record, TypeData, TypeView, DEFAULT_RECORD_TRAVERSAL_WORDS};
pub use watch::{Health, WatchConfig, WatchEvent, WatchHandle};

use crate::announcer::{AnnounceKind, Announcement, AnnouncementLog, Watcher};
use crate::blobstore::resilience::{CircuitBreakerStore, Clock, SystemClock};
use crate::blobstore::{BlobCache, BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::blob::OpenBlob;
use arc_swap::ArcSwapOption;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

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
    /// This caller joined a refresh already in flight, which failed.
    #[error("the refresh this call joined failed: {message}")]
    JoinedRefreshFailed { message: String },
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
    clock: Arc<dyn Clock>,
    breaker: Option<Arc<CircuitBreakerStore>>,
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
            clock: Arc::new(SystemClock),
            breaker: None,
        }
    }

    /// The clock used for staleness (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The circuit breaker in front of the store, so that
    /// [`Consumer::health`] reports its state.
    pub fn breaker(mut self, breaker: Arc<CircuitBreakerStore>) -> Self {
        self.breaker = Some(breaker);
        self
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
                last_outcome: None,
            }),
            completed: AtomicU64::new(0),
            health: Mutex::new(HealthState::default()),
            clock: self.clock,
            breaker: self.breaker,
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
    /// The outcome of the last refresh, shared with callers that waited
    /// for it (single flight).
    last_outcome: Option<Result<Option<RefreshReport>, String>>,
}

#[derive(Default)]
struct HealthState {
    newest_target: Option<u64>,
    last_success: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<String>,
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
    /// Refreshes completed, for single flight.
    completed: AtomicU64,
    health: Mutex<HealthState>,
    clock: Arc<dyn Clock>,
    breaker: Option<Arc<CircuitBreakerStore>>,
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
    ///
    /// Single flight: a call made while another refresh runs waits for it
    /// and shares its outcome instead of starting a second one.
    pub async fn refresh(&self) -> Result<Option<RefreshReport>, Error> {
        self.single_flight(None).await
    }

    /// Moves to a specific announced version.
    pub async fn refresh_to(&self, version: u64) -> Result<Option<RefreshReport>, Error> {
        self.single_flight(Some(version)).await
    }

    async fn single_flight(&self, version: Option<u64>) -> Result<Option<RefreshReport>, Error> {
        let ticket = self.completed.load(Ordering::SeqCst);
        let mut inner = self.inner.lock().await;
        if version.is_none() && self.completed.load(Ordering::SeqCst) != ticket {
            if let Some(outcome) = &inner.last_outcome {
                return outcome
                    .clone()
                    .map_err(|message| ConsumerError::JoinedRefreshFailed { message }.into());
            }
        }
        let span =
            tracing::info_span!("refresh", from = ?self.version(), to = tracing::field::Empty);
        let outcome = async {
            inner.watcher.poll().await?;
            let newest = inner
                .watcher
                .newest()
                .cloned()
                .ok_or(ConsumerError::NothingAnnounced)?;
            let target = version.unwrap_or(newest.target());
            self.health.lock().expect("health lock").newest_target = Some(newest.target());
            metrics::gauge!("burrow_consumer_newest_announced_version").set(newest.target() as f64);
            self.refresh_locked(&mut inner, &newest, target).await
        }
        .instrument(span)
        .await;
        self.record_outcome(&outcome);
        inner.last_outcome = Some(match &outcome {
            Ok(report) => Ok(report.clone()),
            Err(e) => Err(e.to_string()),
        });
        self.completed.fetch_add(1, Ordering::SeqCst);
        outcome
    }

    fn record_outcome(&self, outcome: &Result<Option<RefreshReport>, Error>) {
        let mut health = self.health.lock().expect("health lock");
        match outcome {
            Ok(report) => {
                health.last_success = Some(self.clock.now());
                health.consecutive_failures = 0;
                health.last_error = None;
                if let Some(report) = report {
                    metrics::counter!("burrow_consumer_refreshes_total").increment(1);
                    metrics::gauge!("burrow_consumer_version").set(report.to as f64);
                }
            }
            Err(e) => {
                health.consecutive_failures += 1;
                health.last_error = Some(e.to_string());
                metrics::counter!("burrow_consumer_refresh_failures_total").increment(1);
            }
        }
        if let Some(b) = &self.breaker {
            let open = !matches!(
                b.state(),
                crate::blobstore::resilience::BreakerState::Closed
            );
            metrics::gauge!("burrow_consumer_breaker_open").set(if open { 1.0 } else { 0.0 });
        }
    }

    /// The consumer's freshness: its version, the newest the log asks for,
    /// time since its last success, failures, and the breaker's state.
    pub fn health(&self) -> Health {
        let h = self.health.lock().expect("health lock");
        let since = h
            .last_success
            .map(|t| self.clock.now().saturating_duration_since(t));
        if let Some(since) = since {
            metrics::gauge!("burrow_consumer_seconds_since_refresh").set(since.as_secs_f64());
        }
        Health {
            version: self.version(),
            newest_target: h.newest_target,
            since_last_success: since,
            consecutive_failures: h.consecutive_failures,
            last_error: h.last_error.clone(),
            breaker: self.breaker.as_ref().map(|b| b.state()),
        }
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
            let step_span = tracing::info_span!("refresh_step", blob = %name, cached = was_cached);
            let step_started = Instant::now();
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
            .instrument(step_span)
            .await;
            tracing::debug!(blob = %name, elapsed = ?step_started.elapsed(), ok = result.is_ok(), "refresh step");
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
