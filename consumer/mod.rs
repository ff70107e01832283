//! The consumer: follows the announcement log, fetches blobs into a local
//! cache, maps them, and serves typed zero-copy views of the records.
//!
//! [`Consumer::refresh`] moves to the announced (or pinned) version: it
//! plans the cheapest path (deltas forward, reverse deltas back, or the
//! nearest snapshot and deltas from there; see [`plan`]), fetches each blob
//! into the cache (verified as it arrives), maps it, builds the next
//! [`ReadState`] beside the current one and swaps it in atomically. A
//! refresh that fails at any step leaves the current state serving and
//! returns the error; a blob that failed verification (or is missing) is
//! evicted from the cache and avoided by planning for a back-off that grows
//! with its failures in a row (1 s doubling to 5 min, on the consumer's
//! clock), then tried again.
//!
//! Cache files this process did not fetch itself are re-verified in the
//! background the first time they are mapped (see `consumer/recheck.rs`):
//! the state serves at once, [`Consumer::state_verified`] says whether all its blobs
//! are verified yet, [`Consumer::wait_verified`] waits for it, and a file
//! that fails is evicted, refetched and the state rebuilt and swapped in;
//! the failure is a [`CacheFault`] (the cache's fault, not the store's).
//! Blocking work (state building, delta apply, cache writes, cache trims)
//! runs on tokio's blocking pool.
//!
//! Before the swap, the blobs the refresh mapped are warmed ([`WarmUp`],
//! [`ConsumerBuilder::warm_up`]) so that readers of the new state do not
//! each take page faults. [`Consumer::ready`] waits for the first state
//! (and [`Consumer::readiness`] says at once whether there is one, or what
//! the consumer waits for): what a read service checks before it takes
//! traffic.
//!
//! Types the consumer reads are declared with
//! [`ConsumerBuilder::record_type`]: every blob a refresh applies is
//! checked against their generated code by the schema evolution rules
//! ([`crate::schema::evolve`]), and an incompatible one fails the refresh
//! while the current state keeps serving. After each swap, refresh
//! listeners ([`ConsumerBuilder::refresh_listener`], see `changes.rs`)
//! are told which keys of each type were added, removed and changed.
//!
//! After each refresh that swaps in a state, the dataset's cache directory
//! is trimmed to what the new state maps plus the builder's
//! [`CacheRetention`] bound, oldest version first; the report's
//! [`RefreshReport::cache`] and the `burrow_consumer_cache_*` metrics say
//! what went.

mod changes;
mod index;
pub mod plan;
mod ready;
mod recheck;
mod state;
mod subscribe;
mod warm;
mod watch;

pub use crate::blobstore::{CacheRetention, Trimmed};
pub use changes::{ChangeSource, RefreshEvent, RefreshListener, TypeChanges, TypedChanges};
pub use index::{IndexBuild, IndexState, IndexView, Matches};
pub use plan::{Plan, Step};
pub use ready::{Readiness, Waiting};
pub use recheck::CacheFault;
pub use state::{Iter, ReadState, TypeData, TypeView};
pub use subscribe::{ChannelState, NotifyConfig, NotifyHealth};
pub use warm::WarmUp;
pub use watch::{Health, WatchConfig, WatchEvent, WatchHandle};

use crate::announcer::{AnnounceError, AnnounceKind, Announcement, AnnouncementLog, Watcher};
use crate::blobstore::resilience::{CircuitBreakerStore, Clock, SystemClock};
use crate::blobstore::{BlobCache, BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::blob::{check_dataset, OpenBlob};
use crate::schema::record::TypeInfo;
use crate::schema::DatasetId;
use arc_swap::ArcSwapOption;
use recheck::BlobKey;
use std::collections::{HashMap, HashSet};
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
    /// The consumer was built with a type filter that leaves this type
    /// out ([`ConsumerBuilder::types`]): it holds no records of it.
    #[error("{type_name} is filtered out: this consumer was built to read only other types (ConsumerBuilder::types)")]
    FilteredOut {
        /// The type asked for.
        type_name: String,
    },
    /// The state has no records of this type.
    #[error("version {version} has no type {type_name}")]
    UnknownType {
        /// The type asked for.
        type_name: String,
        /// The version of the state asked.
        version: u64,
    },
    /// No combination of available, unfailed blobs reaches the target.
    #[error("no usable path of blobs reaches version {target}")]
    NoPath {
        /// The version no path reaches.
        target: u64,
    },
    /// The target version was never announced.
    #[error("version {version} was never announced")]
    NotAnnounced {
        /// The version asked for.
        version: u64,
    },
    /// A background poll of the announcement log did not answer within its
    /// bound (one poll interval): the store is slow or unreachable.
    #[error("the announcement log did not answer within {after:?} (one poll interval); the store may be unreachable")]
    PollTimedOut {
        /// The bound that ran out.
        after: Duration,
    },
    /// This caller joined a refresh already in flight, which failed.
    #[error("the refresh this call joined failed: {message}")]
    JoinedRefreshFailed {
        /// The joined refresh's error, as text (it belongs to that call).
        message: String,
    },
    /// [`Consumer::ready`] ran out of time before the first state.
    #[error("the consumer has no state after {waited:?}: {waiting}")]
    NotReady {
        /// How long the call waited.
        waited: Duration,
        /// What the consumer was waiting for when the time ran out.
        waiting: Waiting,
    },
    /// The changes of a refresh could not be found (a record's key does
    /// not read); the refresh itself succeeded.
    #[error("the refresh's changes are unavailable: {reason}")]
    ChangesUnavailable {
        /// Why.
        reason: String,
    },
    /// A refresh failed at one blob; the current state keeps serving.
    #[error("refresh to version {target} failed at {blob}: {source}")]
    Refresh {
        /// The version the refresh was moving to.
        target: u64,
        /// The blob it failed at.
        blob: String,
        /// Why.
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
    max_delta_depth: usize,
    clock: Arc<dyn Clock>,
    breaker: Option<Arc<CircuitBreakerStore>>,
    retention: CacheRetention,
    warm_up: WarmUp,
    check_snapshots: Option<bool>,
    record_types: Vec<TypeInfo>,
    filter: Option<Vec<u64>>,
    listeners: Vec<Arc<dyn RefreshListener>>,
}

impl ConsumerBuilder {
    /// A builder for a consumer of `store`; [`ConsumerBuilder::cache_dir`] is required.
    pub fn new(store: BlobStore) -> Self {
        ConsumerBuilder {
            store,
            cache_dir: None,
            verify_on_open: false,
            max_blob_bytes: u64::MAX,
            max_delta_depth: 256,
            clock: Arc::new(SystemClock),
            breaker: None,
            retention: CacheRetention::default(),
            warm_up: WarmUp::default(),
            check_snapshots: None,
            record_types: Vec::new(),
            filter: None,
            listeners: Vec::new(),
        }
    }

    /// Adds a listener told, after each refresh that swaps a state in,
    /// which keys of each type were added, removed and changed, with the
    /// old and new records ([`RefreshEvent`]; found from the deltas
    /// applied, in time proportional to the change, or by comparing the
    /// states after a snapshot load). Listeners run in the order added.
    pub fn refresh_listener(mut self, listener: impl RefreshListener + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Reads only these record types (`TypeInfo::of::<T>()` each): the
    /// consumer builds no read state for any other type (no location
    /// table, key overlay or index is made for it, by snapshot or delta),
    /// and [`ReadState::view`] of one is [`ConsumerError::FilteredOut`].
    /// Blobs are still fetched whole: the format keeps a version's types
    /// in one blob (`BENCHMARKS.md`, "type filtering").
    pub fn types(mut self, types: &[TypeInfo]) -> Self {
        self.filter = Some(types.iter().map(|t| t.type_id).collect());
        self
    }

    /// Declares that this consumer reads record type `T` (its generated
    /// code): every blob a refresh applies is checked against it
    /// ([`crate::schema::evolve`], either side may be the newer), and a
    /// blob whose schema of `T` is incompatible fails the refresh with
    /// [`crate::Error::Schema`] naming the type, the field and the change,
    /// while the current state keeps serving. A type not declared is
    /// checked when it is first viewed ([`ReadState::view`]) instead.
    pub fn record_type<T: crate::schema::record::RecordType>(mut self) -> Self {
        self.record_types.push(TypeInfo::of::<T>());
        self
    }

    /// How a refresh warms the blobs it maps before it swaps the new state
    /// in (default [`WarmUp::default`]; see [`WarmUp`] for the measured
    /// effect of each).
    pub fn warm_up(mut self, warm_up: WarmUp) -> Self {
        self.warm_up = warm_up;
        self
    }

    /// Whether each snapshot a refresh loads has its records summed against
    /// the state checksums its header claims before the state is swapped in
    /// ([`crate::schema::checksum`]; a mismatch refuses the refresh, as a
    /// bad blob). Deltas are always checked, in time proportional to the
    /// delta. Default: where the warm-up reads the snapshot's pages before
    /// the swap anyway ([`WarmUp::Populate`], and under the default
    /// [`WarmUp::PopulateSwaps`] every snapshot that replaces a serving
    /// state), so that the first open stays instant and memory what reads
    /// touch; `true` checks every snapshot, `false` none.
    pub fn check_snapshots(mut self, check: bool) -> Self {
        self.check_snapshots = Some(check);
        self
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

    /// How much the cache keeps beyond the blobs the current state maps
    /// (default [`CacheRetention::default`]: 2 GiB and 1024 files). After
    /// each refresh that swaps in a state, the dataset's cache directory is
    /// trimmed to it, oldest version first; the current state's blobs are
    /// never evicted, even when they alone exceed the bound (see
    /// [`BlobCache::trim`]). [`CacheRetention::UNBOUNDED`] keeps every
    /// blob ever fetched.
    pub fn cache_retention(mut self, retention: CacheRetention) -> Self {
        self.retention = retention;
        self
    }

    /// Re-checks each cached blob's body checksum when it is mapped, before
    /// the refresh uses it (default off: such blobs are re-verified in the
    /// background instead, so the open stays instant).
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// Refuses blobs larger than `bytes`.
    pub fn max_blob_bytes(mut self, bytes: u64) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    /// Loads a fresh snapshot instead of stacking more than this many
    /// deltas on one (default 256).
    pub fn max_delta_depth(mut self, depth: usize) -> Self {
        self.max_delta_depth = depth;
        self
    }

    /// Checks the settings, opens (and locks) the cache directory, and makes the consumer; it has no state until its first refresh.
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
                failed: HashMap::new(),
                dataset_cache: None,
                last_outcome: None,
            }),
            completed: AtomicU64::new(0),
            health: Mutex::new(HealthState::default()),
            rechecks: recheck::Rechecks::new(),
            current_blobs: Mutex::new(Vec::new()),
            notify: Mutex::new(None),
            clock: self.clock,
            breaker: self.breaker,
            log,
            verify_on_open: self.verify_on_open,
            max_delta_depth: self.max_delta_depth,
            retention: self.retention,
            warm_up: self.warm_up,
            check_snapshots: self.check_snapshots,
            record_types: Arc::from(self.record_types),
            built_indexes: Mutex::new(Vec::new()),
            filter: self.filter.map(Arc::from),
            listeners: Arc::from(self.listeners),
            swapped: tokio::sync::watch::Sender::new(None),
            first_state: std::sync::Condvar::new(),
        })
    }
}

/// Checks the declared record types against `blob`'s schema nodes, each
/// with its key as `state` (built from the blob) names it.
/// An index the consumer builds over every state loaded from a snapshot:
/// its declaration and [`ReadState::with_index`] for its type.
type BuiltIndexRequest = (
    crate::schema::index::IndexDef,
    fn(&ReadState, crate::schema::index::IndexDef) -> Result<(ReadState, IndexBuild), Error>,
);

/// `state` with every requested consumer-side index built. A type the
/// state does not hold keeps no index (the lookup says so by name).
fn rebuild_indexes(state: ReadState, requests: &[BuiltIndexRequest]) -> Result<ReadState, Error> {
    let mut state = state;
    for (def, build) in requests {
        match build(&state, def.clone()) {
            Ok((next, report)) => {
                tracing::info!(index = %report.name, records = report.records, elapsed = ?report.elapsed, "rebuilt a consumer-side index");
                state = next;
            }
            Err(Error::Consumer(ConsumerError::UnknownType { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(state)
}

fn check_record_types(
    blob: &OpenBlob,
    state: &ReadState,
    record_types: &[TypeInfo],
) -> Result<(), Error> {
    if record_types.is_empty() {
        return Ok(());
    }
    let ours = crate::schema::evolve::generated_nodes(record_types);
    let types: Vec<(u64, Vec<String>)> = record_types
        .iter()
        .filter_map(|t| {
            let data = state.raw_type(t.type_id)?;
            Some((t.type_id, data.key_fields().to_vec()))
        })
        .collect();
    crate::schema::evolve::check_blob(blob, &ours, &types, crate::schema::evolve::Rule::Read)
}

/// The first back-off of a blob that failed; it doubles with each failure
/// in a row, up to [`FAILED_BLOB_MAX_BACKOFF`].
pub const FAILED_BLOB_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a failed blob is avoided before it is tried again.
pub const FAILED_BLOB_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How many times one refresh plans again around blobs found gone.
const MAX_REPLANS: usize = 8;

/// An applied plan: the plan, the blobs the new state is built from, the
/// state (`None` for an empty plan), the bytes fetched, and the blobs it
/// mapped (what warm-up brings in before the swap).
type Applied = (
    Plan,
    Vec<BlobKey>,
    Option<Arc<ReadState>>,
    u64,
    Vec<Arc<OpenBlob>>,
);

/// Why applying a plan failed.
enum ApplyError {
    /// A step's blob is missing from the store: plan again around it.
    Gone { blob: BlobName, error: Error },
    /// Anything else: the refresh fails with it.
    Other(Error),
}

/// A blob that failed: avoided by planning until `retry_at`.
#[derive(Debug, Clone, Copy)]
struct FailedBlob {
    failures: u32,
    retry_at: Instant,
}

impl FailedBlob {
    fn backoff(failures: u32) -> Duration {
        FAILED_BLOB_FIRST_BACKOFF
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(FAILED_BLOB_MAX_BACKOFF)
    }
}

struct Inner {
    watcher: Watcher,
    /// Blobs that failed (corrupt, incompatible, missing), each avoided
    /// for a back-off that grows with its failures in a row; a blob that
    /// later succeeds leaves the map.
    failed: HashMap<BlobName, FailedBlob>,
    /// The part of the cache of the dataset last refreshed to (its
    /// directory is made once per dataset, not at every refresh).
    dataset_cache: Option<(DatasetId, BlobCache)>,
    /// The outcome of the last refresh, shared with callers that waited
    /// for it (single flight).
    last_outcome: Option<Result<Option<RefreshReport>, String>>,
}

#[derive(Default)]
struct HealthState {
    newest_target: Option<u64>,
    /// The newest log entry seen, and its dataset.
    newest_seq: Option<u64>,
    dataset: Option<DatasetId>,
    last_success: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// The last failure was that nothing is announced.
    nothing_announced: bool,
    /// What a refresh in flight does, for [`Consumer::readiness`].
    in_flight: ready::InFlight,
}

/// Marks a refresh in flight (for [`Consumer::readiness`]) until it ends,
/// however it ends: a refresh future dropped half-way included.
struct InFlightGuard<'a>(&'a Mutex<HealthState>);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut health) = self.0.lock() {
            health.in_flight = ready::InFlight::Idle;
        }
    }
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
    max_delta_depth: usize,
    retention: CacheRetention,
    warm_up: WarmUp,
    check_snapshots: Option<bool>,
    /// The record types declared with [`ConsumerBuilder::record_type`].
    record_types: Arc<[TypeInfo]>,
    /// The types read ([`ConsumerBuilder::types`]); `None` for all.
    filter: Option<Arc<[u64]>>,
    /// Indexes the consumer was asked to build ([`Consumer::build_index`]):
    /// built again over every state loaded from a snapshot.
    built_indexes: Mutex<Vec<BuiltIndexRequest>>,
    /// Told of each refresh's changes ([`ConsumerBuilder::refresh_listener`]).
    listeners: Arc<[Arc<dyn RefreshListener>]>,
    /// The version of each state swapped in, for [`Consumer::ready`].
    swapped: tokio::sync::watch::Sender<Option<u64>>,
    /// Signalled (with `health`'s lock) at each swap, for
    /// [`Consumer::ready_blocking`].
    first_state: std::sync::Condvar,
    /// Refreshes completed, for single flight.
    completed: AtomicU64,
    health: Mutex<HealthState>,
    clock: Arc<dyn Clock>,
    breaker: Option<Arc<CircuitBreakerStore>>,
    rechecks: recheck::Rechecks,
    /// The blobs the current state was built from (its snapshot and every
    /// delta applied since).
    current_blobs: Mutex<Vec<BlobKey>>,
    /// What the notification channel brought, when the watcher listens to
    /// one.
    notify: subscribe::NotifyHealthCell,
}

impl Inner {
    /// Polls the log. A log that changed datasets under the watcher (the
    /// store was deleted and published again: an entry of another dataset
    /// after the known one, or the known one replaced) is followed from its
    /// newest entry by a fresh watcher, with the old dataset's entries
    /// forgotten, instead of being refused at every poll.
    async fn poll(&mut self) -> Result<(), AnnounceError> {
        match self.watcher.poll().await {
            Err(
                e @ (AnnounceError::Format(FormatError::DatasetMismatch { .. })
                | AnnounceError::Replaced { .. }),
            ) => {
                tracing::warn!(error = %e, "the store was recreated under this consumer; following its log from the newest entry");
                let log = self.watcher.log().clone();
                log.forget_read_entries();
                self.watcher = Watcher::new(log);
                self.watcher.poll().await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    /// The version before (`None` for a first load).
    pub from: Option<u64>,
    /// The version now served.
    pub to: u64,
    /// The blobs applied, in order.
    pub steps: Vec<Step>,
    /// Plans abandoned because one of their blobs was gone from the store
    /// (retention deleted it), before the plan in `steps` worked.
    pub replans: usize,
    /// Bytes fetched from the store (0 when every blob was cached).
    pub fetched_bytes: u64,
    /// Wall time of the refresh, planning to swap.
    pub duration: Duration,
    /// The part of it spent warming the new blobs (see [`WarmUp`]).
    pub warm_up: Duration,
    /// What the cache trim after the swap evicted and kept (see
    /// [`ConsumerBuilder::cache_retention`]).
    pub cache: Trimmed,
}

/// How long a consumer took from being built to its first lookup, and to
/// a verified state (see [`Consumer::open_timed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTimings {
    /// Build, first refresh (map the cached blobs, build the state) and the
    /// first lookup.
    pub to_first_lookup: Duration,
    /// Until every blob of the state was re-verified (or the state rebuilt
    /// from refetched blobs).
    pub to_verified: Duration,
}

impl Consumer {
    /// Builds a consumer, refreshes it, runs `lookup` on its first state,
    /// and waits for the state to be verified, timing both: the figures
    /// `burrow bench` reports as "open to first lookup" and "open to
    /// verified".
    pub async fn open_timed(
        builder: ConsumerBuilder,
        lookup: impl FnOnce(&ReadState) -> Result<(), Error>,
    ) -> Result<(Consumer, OpenTimings), Error> {
        let started = Instant::now();
        let consumer = builder.build()?;
        consumer.refresh().await?;
        let state = consumer.state()?;
        lookup(&state)?;
        let to_first_lookup = started.elapsed();
        consumer.wait_verified().await?;
        let to_verified = started.elapsed();
        Ok((
            consumer,
            OpenTimings {
                to_first_lookup,
                to_verified,
            },
        ))
    }

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

    /// The consumer's blob cache.
    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    /// Whether every blob of the current state has been verified by this
    /// process (fetched by it, or re-verified since it was mapped). `false`
    /// with no state.
    pub fn state_verified(&self) -> bool {
        self.current().is_some() && self.rechecks.all_verified(&self.blobs_in_use())
    }

    /// Waits until the current state is verified: the background checks of
    /// its blobs have ended and, if one found a corrupt cache file, the
    /// state has been rebuilt from refetched blobs and swapped in. Returns
    /// whether the state is verified (`false` with no state). Fails if a
    /// rebuild fails (the store cannot be reached).
    pub async fn wait_verified(&self) -> Result<bool, Error> {
        loop {
            self.rechecks.settled(&self.blobs_in_use()).await;
            if self.rechecks.rebuild_pending() {
                if let Some(v) = self.version() {
                    self.single_flight(Some(v), None).await?;
                    continue;
                }
            }
            return Ok(self.state_verified());
        }
    }

    /// The cache files found corrupt so far (each evicted and refetched).
    pub fn cache_faults(&self) -> Vec<CacheFault> {
        self.rechecks.faults()
    }

    fn blobs_in_use(&self) -> Vec<BlobKey> {
        self.current_blobs.lock().expect("blobs lock").clone()
    }

    /// Moves to the version the log says consumers should be at (the pin,
    /// if there is one). Returns `None` if already there.
    ///
    /// Builds secondary index `name` over `T`'s `fields` on the consumer's
    /// side (an index the producer did not ship: Hollow's consumer-side
    /// hash index) over the current state, swaps the indexed state in, and
    /// reports what building cost. Every later delta keeps it current in
    /// time proportional to the delta, and every later snapshot load
    /// builds it again. Waits for a refresh in progress; needs a state.
    pub async fn build_index<T: crate::schema::record::RecordType>(
        &self,
        name: &str,
        fields: &[&str],
        unique: bool,
    ) -> Result<IndexBuild, Error> {
        let def = crate::schema::index::IndexDef::new(name, fields, unique);
        let _inner = self.inner.lock().await;
        let current = self.current.load_full().ok_or(ConsumerError::NoState)?;
        let build = ReadState::with_index::<T>;
        let (next, report) = {
            let def = def.clone();
            tokio::task::spawn_blocking(move || build(&current, def))
                .await
                .map_err(|e| {
                    Error::from(StoreError::Io {
                        op: "build an index",
                        path: PathBuf::new(),
                        source: std::io::Error::other(e),
                    })
                })??
        };
        self.current.store(Some(Arc::new(next)));
        let mut built = self.built_indexes.lock().unwrap_or_else(|e| e.into_inner());
        built.retain(|(d, _)| d.name != def.name);
        built.push((def, build));
        Ok(report)
    }

    /// Single flight: a call made while another refresh runs waits for it
    /// and shares its outcome instead of starting a second one.
    pub async fn refresh(&self) -> Result<Option<RefreshReport>, Error> {
        self.single_flight(None, None).await
    }

    /// [`Consumer::refresh`] with the poll of the log bounded by `limit`
    /// on `clock` (the background watcher's bound: one poll interval).
    pub(crate) async fn refresh_polling_within(
        &self,
        limit: Duration,
        clock: &dyn Clock,
    ) -> Result<Option<RefreshReport>, Error> {
        self.single_flight(None, Some((limit, clock))).await
    }

    /// Moves to a specific announced version.
    pub async fn refresh_to(&self, version: u64) -> Result<Option<RefreshReport>, Error> {
        self.single_flight(Some(version), None).await
    }

    async fn single_flight(
        &self,
        version: Option<u64>,
        poll_limit: Option<(Duration, &dyn Clock)>,
    ) -> Result<Option<RefreshReport>, Error> {
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
        self.health.lock().expect("health lock").in_flight = ready::InFlight::Polling;
        let _in_flight = InFlightGuard(&self.health);
        let outcome = async {
            match poll_limit {
                // Cancelling a poll is safe: the watcher records what it
                // found only when the poll completes.
                Some((limit, clock)) => tokio::select! {
                    polled = inner.poll() => { polled?; }
                    _ = clock.sleep(limit) => {
                        return Err(ConsumerError::PollTimedOut { after: limit }.into());
                    }
                },
                None => {
                    inner.poll().await?;
                }
            }
            let newest = inner
                .watcher
                .newest()
                .cloned()
                .ok_or(ConsumerError::NothingAnnounced)?;
            let target = version.unwrap_or(newest.target());
            {
                let mut health = self.health.lock().expect("health lock");
                health.newest_target = Some(newest.target());
                health.newest_seq = Some(newest.seq);
                health.dataset = Some(newest.dataset_id);
                health.in_flight = ready::InFlight::Fetching(target);
            }
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
        health.in_flight = ready::InFlight::Idle;
        match outcome {
            Ok(report) => {
                health.last_success = Some(self.clock.now());
                health.consecutive_failures = 0;
                health.last_error = None;
                health.nothing_announced = false;
                if let Some(report) = report {
                    metrics::counter!("burrow_consumer_refreshes_total").increment(1);
                    metrics::gauge!("burrow_consumer_version").set(report.to as f64);
                    metrics::histogram!("burrow_consumer_refresh_seconds")
                        .record(report.duration.as_secs_f64());
                    metrics::histogram!("burrow_consumer_warm_up_seconds")
                        .record(report.warm_up.as_secs_f64());
                }
            }
            Err(e) => {
                health.consecutive_failures += 1;
                health.last_error = Some(e.to_string());
                health.nothing_announced =
                    matches!(e, Error::Consumer(ConsumerError::NothingAnnounced));
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
        let faults = self.rechecks.faults();
        Health {
            verified: self.state_verified(),
            cache_faults: faults.len() as u64,
            last_cache_fault: faults.last().map(|f| f.to_string()),
            version: self.version(),
            newest_target: h.newest_target,
            since_last_success: since,
            consecutive_failures: h.consecutive_failures,
            last_error: h.last_error.clone(),
            breaker: self.breaker.as_ref().map(|b| b.state()),
            notify: *self.notify.lock().expect("notify health lock"),
        }
    }

    /// Updates what the notification channel brought.
    pub(crate) fn set_notify_health(&self, update: impl FnOnce(&mut NotifyHealth)) {
        let mut cell = self.notify.lock().expect("notify health lock");
        update(cell.get_or_insert_with(NotifyHealth::new));
    }

    /// The dataset of the log and the newest entry the consumer has seen.
    pub(crate) fn log_position(&self) -> (Option<DatasetId>, Option<u64>) {
        let h = self.health.lock().expect("health lock");
        (h.dataset, h.newest_seq)
    }

    async fn refresh_locked(
        &self,
        inner: &mut Inner,
        newest: &Announcement,
        target_version: u64,
    ) -> Result<Option<RefreshReport>, Error> {
        let started = Instant::now();
        let rebuild = self.rechecks.take_rebuild();
        let outcome = self
            .refresh_steps(inner, newest, target_version, started, rebuild)
            .await;
        if rebuild && outcome.is_err() {
            self.rechecks.set_rebuild();
        }
        outcome
    }

    async fn refresh_steps(
        &self,
        inner: &mut Inner,
        newest: &Announcement,
        target_version: u64,
        started: Instant,
        rebuild: bool,
    ) -> Result<Option<RefreshReport>, Error> {
        let from = self.version();
        let dataset = newest.dataset_id;
        // A state of another dataset (the store was deleted and published
        // again) is no base for this one's deltas: plan from nothing, and
        // forget the old dataset's failed blobs.
        let switched = self.current().is_some_and(|s| s.dataset_id() != dataset);
        if switched {
            tracing::warn!(%dataset, "the store holds another dataset now; loading it from a snapshot");
            inner.failed.clear();
        }
        // A rebuild (a blob of the current state was found corrupt in the
        // cache) plans as if nothing were loaded.
        let current = if rebuild || switched {
            None
        } else {
            self.current()
        };
        if current.is_some() && from == Some(target_version) {
            return Ok(None);
        }
        let cache = self.dataset_cache(inner, dataset).await?;
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
        let now = self.clock.now();
        let mut avoid: HashSet<BlobName> = inner
            .failed
            .iter()
            .filter(|(_, f)| now < f.retry_at)
            .map(|(name, _)| *name)
            .collect();
        // A blob found gone (retention deleted it after the plan was made,
        // or a path the log still links was retired) is avoided and the
        // refresh plans again: another path, or a newer snapshot. Bounded,
        // since each round avoids one more blob.
        let mut replans = 0;
        let mut gone: Option<Error> = None;
        let (plan, blobs, state, fetched_bytes, mapped) = loop {
            match self
                .apply_plan(
                    inner,
                    &cache,
                    newest,
                    &target,
                    current.as_ref(),
                    deep,
                    &avoid,
                )
                .await
            {
                Err(ApplyError::Gone { blob, error }) if replans < MAX_REPLANS => {
                    replans += 1;
                    tracing::info!(%blob, %error, replans, "a blob of the plan is gone; planning again around it");
                    metrics::counter!("burrow_consumer_replans_total").increment(1);
                    avoid.insert(blob);
                    gone = Some(error);
                }
                // No other path: the blob found gone is the cause.
                Err(ApplyError::Other(Error::Consumer(ConsumerError::NoPath { .. })))
                    if gone.is_some() =>
                {
                    return Err(gone.expect("a blob was found gone"));
                }
                Err(ApplyError::Gone { error, .. } | ApplyError::Other(error)) => {
                    return Err(error)
                }
                Ok(applied) => break applied,
            }
        };
        let Some(state) = state else {
            return Ok(None);
        };
        let to = state.version();
        let live: HashSet<BlobName> = blobs
            .iter()
            .filter(|(id, _)| *id == dataset)
            .map(|(_, name)| *name)
            .collect();
        let (warm_up, replaces) = (self.warm_up, self.current().is_some());
        let warm_up = tokio::task::spawn_blocking(move || warm_up.warm(&mapped, replaces))
            .await
            .map_err(|e| {
                Error::from(StoreError::Io {
                    op: "warm up the next state",
                    path: cache.dir().to_path_buf(),
                    source: std::io::Error::other(e),
                })
            })?;
        *self.current_blobs.lock().expect("blobs lock") = blobs;
        let previous = self.current.swap(Some(Arc::clone(&state)));
        self.swapped.send_replace(Some(to));
        // Taken after the store: a blocked `ready_blocking` either saw the
        // state or waits already, and wakes.
        drop(self.health.lock().expect("health lock"));
        self.first_state.notify_all();
        self.notify_listeners(previous, state).await;
        let duration = started.elapsed();
        let trimmed = self.trim_cache(&cache, dataset, live).await;
        tracing::info!(
            ?from,
            to,
            steps = plan.steps.len(),
            replans,
            evicted_files = trimmed.evicted_files,
            evicted_bytes = trimmed.evicted_bytes,
            "refreshed"
        );
        Ok(Some(RefreshReport {
            from,
            to,
            steps: plan.steps,
            replans,
            fetched_bytes,
            duration,
            warm_up,
            cache: trimmed,
        }))
    }

    /// Plans from `current` to `target` around `avoid` and applies the
    /// plan's steps: the plan, the blobs the new state is built from, the
    /// state (`None` for an empty plan) and the bytes fetched. A step's
    /// blob found missing in the store is [`ApplyError::Gone`].
    #[allow(clippy::too_many_arguments)]
    async fn apply_plan(
        &self,
        inner: &mut Inner,
        cache: &BlobCache,
        newest: &Announcement,
        target: &Announcement,
        current: Option<&Arc<ReadState>>,
        deep: bool,
        avoid: &HashSet<BlobName>,
    ) -> Result<Applied, ApplyError> {
        let target_version = target.version;
        let dataset = newest.dataset_id;
        let current = current.cloned();
        let plan = plan::plan(
            &self.log,
            newest,
            target,
            current.as_ref().map(|s| s.version()),
            avoid,
            deep,
        )
        .await
        .map_err(|e| ApplyError::Other(e.into()))?
        .ok_or_else(|| {
            ApplyError::Other(
                ConsumerError::NoPath {
                    target: target_version,
                }
                .into(),
            )
        })?;
        let mut blobs = match plan.steps.first() {
            Some(Step::Delta(..) | Step::Reverse(..)) => self.blobs_in_use(),
            _ => Vec::new(),
        };
        let mut state: Option<Arc<ReadState>> = None;
        let mut fetched_bytes = 0;
        // The blobs this refresh maps: what warm-up brings in before the swap.
        let mut mapped = Vec::with_capacity(plan.steps.len());
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
            let step_span = tracing::info_span!("refresh_step", blob = %name);
            let step_started = Instant::now();
            let result = async {
                let (blob, fetched) = self.open_blob(cache, dataset, &name).await?;
                let len = blob.len();
                let opened = Arc::clone(&blob);
                let base = match *step {
                    Step::Snapshot(_) => None,
                    Step::Delta(..) | Step::Reverse(..) => Some(match &state {
                        Some(s) => Arc::clone(s),
                        None => current.clone().ok_or(ConsumerError::NoState)?,
                    }),
                };
                let step = *step;
                // A snapshot's state checksums are summed where its pages
                // are read before the swap anyway (see `check_snapshots`).
                let check_snapshot = self.check_snapshots.unwrap_or(match self.warm_up {
                    WarmUp::Populate => true,
                    WarmUp::PopulateSwaps => current.is_some(),
                    WarmUp::Off | WarmUp::WillNeed => false,
                });
                let record_types = Arc::clone(&self.record_types);
                let filter = self.filter.clone();
                let built_indexes = self
                    .built_indexes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let next = tokio::task::spawn_blocking(move || {
                    let next = match (step, base) {
                        (Step::Snapshot(v), _) => {
                            ReadState::from_snapshot_filtered(Arc::clone(&blob), v, filter)
                                .and_then(|s| {
                                    if check_snapshot {
                                        s.check_checksums()?;
                                    }
                                    Ok(s)
                                })
                                .and_then(|s| rebuild_indexes(s, &built_indexes))
                        }
                        (Step::Delta(a, b) | Step::Reverse(a, b), Some(base)) => {
                            base.apply(Arc::clone(&blob), a, b)
                        }
                        (_, None) => Err(ConsumerError::NoState.into()),
                    }?;
                    check_record_types(&blob, &next, &record_types)?;
                    Ok::<_, Error>(next)
                })
                .await
                .map_err(|e| {
                    Error::from(StoreError::Io {
                        op: "build the next state",
                        path: cache.path(&name),
                        source: std::io::Error::other(e),
                    })
                })??;
                Ok::<_, Error>((next, len, fetched, opened))
            }
            .instrument(step_span)
            .await;
            tracing::debug!(blob = %name, elapsed = ?step_started.elapsed(), ok = result.is_ok(), "refresh step");
            match result {
                Ok((next, len, fetched, opened)) => {
                    mapped.push(opened);
                    if fetched {
                        fetched_bytes += len;
                        metrics::counter!("burrow_consumer_fetched_bytes_total").increment(len);
                    }
                    inner.failed.remove(&name);
                    blobs.push((dataset, name));
                    state = Some(Arc::new(next));
                }
                Err(e) => {
                    if plan::is_bad_blob(&e) {
                        let failures = inner.failed.get(&name).map_or(0, |f| f.failures) + 1;
                        let backoff = FailedBlob::backoff(failures);
                        tracing::warn!(blob = %name, error = %e, failures, ?backoff, "blob is bad; evicting it and planning around it for a while");
                        inner.failed.insert(
                            name,
                            FailedBlob {
                                failures,
                                retry_at: self.clock.now() + backoff,
                            },
                        );
                        let _ = cache.evict(&name);
                    }
                    let gone = matches!(e, Error::Store(StoreError::NotFound { .. }));
                    let error = fail(e);
                    return Err(if gone {
                        ApplyError::Gone { blob: name, error }
                    } else {
                        ApplyError::Other(error)
                    });
                }
            }
        }
        Ok((plan, blobs, state, fetched_bytes, mapped))
    }

    /// Tells the listeners what changed from `previous` to `state` (just
    /// swapped in). A rebuild of the same version of the same dataset
    /// changes nothing and tells nothing.
    async fn notify_listeners(&self, previous: Option<Arc<ReadState>>, state: Arc<ReadState>) {
        if self.listeners.is_empty() {
            return;
        }
        if previous
            .as_ref()
            .is_some_and(|p| p.version() == state.version() && p.dataset_id() == state.dataset_id())
        {
            return;
        }
        let listeners = Arc::clone(&self.listeners);
        let outcome = tokio::task::spawn_blocking(move || {
            let event = RefreshEvent::compute(previous, state);
            if let Err(e) = event.changes() {
                tracing::warn!(error = %e, "the refresh's changes could not be found; listeners are told so");
                metrics::counter!("burrow_consumer_change_failures_total").increment(1);
            }
            for l in listeners.iter() {
                l.refreshed(&event);
            }
        })
        .await;
        if let Err(e) = outcome {
            // A listener panicked: the state is swapped in regardless.
            tracing::error!(error = %e, "a refresh listener panicked");
            metrics::counter!("burrow_consumer_listener_panics_total").increment(1);
        }
    }

    /// Trims the dataset's part of the cache to the retention bound after a
    /// swap, keeping `live` (the new current state's blobs). Runs under the
    /// refresh lock, so no fetch of this consumer is writing into the
    /// directory meanwhile (and temp files are never touched); the
    /// directory's lock keeps other processes out. Blobs an older state
    /// still maps may go: a reader holding that state keeps its mappings
    /// (see `blobstore/retention.rs`). Never fails the refresh: what it
    /// could not do is logged and counted in
    /// `burrow_consumer_cache_evict_failures_total`.
    /// Blobs of datasets other than the current one (a store deleted and
    /// published again) go too, whatever the bound: they cannot serve this
    /// consumer again.
    async fn trim_cache(
        &self,
        cache: &BlobCache,
        dataset: DatasetId,
        live: HashSet<BlobName>,
    ) -> Trimmed {
        let (root, cache, retention) = (self.cache.clone(), cache.clone(), self.retention);
        let trimmed = tokio::task::spawn_blocking(move || {
            let others = root.evict_other_datasets(dataset);
            let mut trimmed = cache.trim(&live, retention);
            trimmed.evicted_files += others.evicted_files;
            trimmed.evicted_bytes += others.evicted_bytes;
            trimmed.failures += others.failures;
            trimmed
        })
        .await;
        let trimmed = match trimmed {
            Ok(trimmed) => {
                metrics::gauge!("burrow_consumer_cache_bytes").set(trimmed.kept_bytes as f64);
                metrics::gauge!("burrow_consumer_cache_files").set(trimmed.kept_files as f64);
                trimmed
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cache trim did not run to its end");
                Trimmed {
                    failures: 1,
                    ..Trimmed::default()
                }
            }
        };
        metrics::counter!("burrow_consumer_cache_evicted_files_total")
            .increment(trimmed.evicted_files);
        metrics::counter!("burrow_consumer_cache_evicted_bytes_total")
            .increment(trimmed.evicted_bytes);
        metrics::counter!("burrow_consumer_cache_evict_failures_total").increment(trimmed.failures);
        trimmed
    }

    /// The part of the cache that holds `dataset`'s blobs, made (its
    /// directory created, off the async workers) the first time a refresh
    /// needs it.
    async fn dataset_cache(
        &self,
        inner: &mut Inner,
        dataset: DatasetId,
    ) -> Result<BlobCache, Error> {
        if let Some((id, cache)) = &inner.dataset_cache {
            if *id == dataset {
                return Ok(cache.clone());
            }
        }
        let root = self.cache.clone();
        let cache = tokio::task::spawn_blocking(move || root.for_dataset(dataset))
            .await
            .map_err(|e| {
                Error::from(StoreError::Io {
                    op: "create cache directory",
                    path: self.cache.dir().join(dataset.to_string()),
                    source: std::io::Error::other(e),
                })
            })??;
        inner.dataset_cache = Some((dataset, cache.clone()));
        Ok(cache)
    }

    /// Fetches (if needed) and maps one blob of `dataset` from its part of
    /// the cache. Returns it and whether it was fetched from the store now.
    /// A cached file that fails its checks here (envelope, length, another
    /// dataset's header) is the cache's fault: it is evicted, reported, and
    /// fetched again. A cached file that passes is re-verified in the
    /// background (or here, with `verify_on_open`), once per process. A
    /// fresh download of another dataset is the store's bad blob.
    async fn open_blob(
        &self,
        cache: &BlobCache,
        dataset: DatasetId,
        name: &BlobName,
    ) -> Result<(Arc<OpenBlob>, bool), Error> {
        let (_, fetched) = cache.fetch_reporting(&self.store, name).await?;
        let opened = self
            .map_blob(cache, dataset, name, !fetched && self.verify_on_open)
            .await;
        let (blob, fetched) = match opened {
            Ok(blob) => (blob, fetched),
            Err(Error::Format(e)) if !fetched => {
                let _ = cache.evict(name);
                self.rechecks.record_fault(CacheFault {
                    blob: name.to_string(),
                    path: cache.path(name),
                    reason: e.to_string(),
                });
                let (_, fetched) = cache.fetch_reporting(&self.store, name).await?;
                (self.map_blob(cache, dataset, name, false).await?, fetched)
            }
            Err(e) => return Err(e),
        };
        if fetched || self.verify_on_open {
            self.rechecks.mark_verified((dataset, *name));
        } else {
            self.rechecks
                .start((dataset, *name), Arc::clone(&blob), cache.path(name));
        }
        Ok((blob, fetched))
    }

    /// Maps a cached blob and checks that it belongs to `dataset`.
    async fn map_blob(
        &self,
        cache: &BlobCache,
        dataset: DatasetId,
        name: &BlobName,
        verify: bool,
    ) -> Result<Arc<OpenBlob>, Error> {
        let path = cache.path(name);
        let label = name.to_string();
        tokio::task::spawn_blocking(move || {
            let blob = crate::blobstore::cache::map_file(&path, &label, verify)?;
            check_dataset(&blob, dataset)?;
            Ok::<_, Error>(Arc::new(blob))
        })
        .await
        .map_err(|e| {
            Error::from(StoreError::Io {
                op: "map cached blob",
                path: cache.path(name),
                source: std::io::Error::other(e),
            })
        })?
    }
}
