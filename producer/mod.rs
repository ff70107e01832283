//! The producer: cycles that turn the whole current dataset into a new
//! published version.
//!
//! A cycle, run under a mutex so cycles are strictly one at a time:
//!
//! 1. **Mint** a version greater than the last announced one. The log's
//!    newest entry is read first: if another producer announced since this
//!    one's last cycle, the cycle stops with `NotPrimary` before writing
//!    anything.
//! 2. **Populate**: the caller adds every current record through the
//!    generated builders ([`Populate::add`]) or from existing readers
//!    ([`Populate::add_reader`]). Each record is canonicalized once.
//! 3. **Identify** each record's ordinal by primary key (see
//!    `state`); a duplicate key is an error naming the key.
//! 4. If nothing changed in any type, no version is made and the current
//!    version is returned.
//! 5. **Validate**: validators see the changes; a failure stops the cycle.
//! 6. **Publish** the delta, the reverse delta and, on the first cycle and
//!    every `snapshot_every` cycles, the snapshot, each with a create-only
//!    put. If a name is already taken (an orphan of a producer that died
//!    before announcing), the version is bumped and the blobs rewritten.
//! 7. **Announce** with a create-only put of the next log entry; only then
//!    does the new state become the producer's "last announced" state. Any
//!    failure before that leaves the producer where it was and returns an
//!    error naming the step; blobs written by a failed cycle are orphans
//!    that no announcement names, so no consumer follows them.
//!
//! [`Producer::restore`] rebuilds the last announced state from the store,
//! so a restarted producer's next cycle is a delta on the chain.

mod state;
pub mod validate;

pub use validate::{FnValidator, RecordCountChangeLimit, TypeChange, Validator};

use crate::announcer::{AnnounceError, AnnounceKind, Announcement, AnnouncementLog};
use crate::blobstore::{BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::blob::{
    write_delta, write_snapshot, DatasetSchema, DeltaTypeSource, HeaderInfo, OpenBlob,
    SnapshotTypeSource,
};
use crate::schema::envelope::BlobKind;
use crate::schema::record::{append_canonical, KeyBuf, KeySpec, RecordType, ResolvedKey, TypeInfo};
use bytes::Bytes;
use state::{Batch, TypeDiff, TypeState};
use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The steps of a cycle, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleStep {
    Mint,
    Populate,
    Identify,
    Validate,
    WriteBlobs,
    Publish,
    Announce,
}

impl fmt::Display for CycleStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CycleStep::Mint => "mint",
            CycleStep::Populate => "populate",
            CycleStep::Identify => "identify",
            CycleStep::Validate => "validate",
            CycleStep::WriteBlobs => "write blobs",
            CycleStep::Publish => "publish",
            CycleStep::Announce => "announce",
        })
    }
}

/// What a cycle reports to its listeners, as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum CycleEvent<'a> {
    /// A cycle began; it will publish `version` if anything changed.
    Started { version: u64 },
    /// A step finished successfully.
    StepDone { step: CycleStep, duration: Duration },
    /// Nothing changed: no version was made.
    NoChange { version: u64 },
    /// The cycle announced a new version.
    Announced { report: &'a CycleReport },
    /// The cycle failed at `step`; nothing it wrote is announced.
    Failed { step: CycleStep, error: &'a Error },
}

/// Observes cycles: their steps, durations and outcomes.
///
/// # Contract
///
/// Called synchronously from the cycle, in order, for every event of every
/// cycle; a listener must be quick and must not call back into the
/// producer. Every cycle ends with exactly one of `NoChange`, `Announced`
/// or `Failed`.
pub trait CycleListener: Send + Sync {
    fn on_event(&self, event: &CycleEvent<'_>);
}

/// A shared listener (so the caller can keep a handle on it).
impl<L: CycleListener + ?Sized> CycleListener for Arc<L> {
    fn on_event(&self, event: &CycleEvent<'_>) {
        (**self).on_event(event)
    }
}

/// Errors of a producer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// A cycle failed; nothing it wrote is announced, and the producer is
    /// still at its last announced version.
    #[error("cycle for version {version} failed at step {step}: {source}")]
    Cycle {
        step: CycleStep,
        version: u64,
        #[source]
        source: Box<Error>,
    },
    #[error("{type_name}: duplicate primary key {key} in one cycle")]
    DuplicateKey { type_name: String, key: String },
    #[error("record type {type_name} was not registered with the producer builder")]
    UnknownType { type_name: String },
    #[error("validator {validator:?} refused version {version}: {reason}")]
    Validation {
        validator: String,
        version: u64,
        reason: String,
    },
    #[error("{type_name}: record of {bytes} bytes is over the limit of {limit} bytes")]
    RecordTooLarge {
        type_name: String,
        bytes: u64,
        limit: u64,
    },
    #[error("{type_name}: the populate closure built an invalid record: {source}")]
    BadRecord {
        type_name: String,
        #[source]
        source: capnp::Error,
    },
    /// The store already has announcements and this producer has no state:
    /// it must restore first so that its next cycle chains on.
    #[error(
        "the store already has announcements (newest version {version}); call restore() before \
         running a cycle"
    )]
    NeedsRestore { version: u64 },
    #[error("cannot restore: {reason}")]
    Restore { reason: String },
}

fn cycle_err(step: CycleStep, version: u64) -> impl FnOnce(Error) -> Error {
    move |source| {
        ProducerError::Cycle {
            step,
            version,
            source: Box::new(source),
        }
        .into()
    }
}

/// A registered record type.
struct RegisteredType {
    info: TypeInfo,
    rust_type: TypeId,
    key: Option<KeySpec>,
    key_fields: Vec<String>,
    /// Encodes the key of a canonical record of this type.
    key_of: fn(&KeySpec, &[u64], &mut KeyBuf) -> capnp::Result<()>,
}

fn key_of<T: RecordType>(spec: &KeySpec, words: &[u64], out: &mut KeyBuf) -> capnp::Result<()> {
    if spec.encode_words(words, out) {
        return Ok(());
    }
    let message = crate::schema::record::record_message(words, u64::MAX >> 8);
    let record: T::Reader<'_> = message.get_root()?;
    spec.resolved()?.encode_record(T::dynamic(record), out)
}

/// Builds a [`Producer`].
pub struct ProducerBuilder {
    store: BlobStore,
    producer_id: String,
    snapshot_every: u32,
    max_record_bytes: u64,
    types: Vec<Result<RegisteredType, Error>>,
    validators: Vec<Arc<dyn Validator>>,
    listeners: Vec<Arc<dyn CycleListener>>,
    tags: Vec<(String, String)>,
}

impl ProducerBuilder {
    pub fn new(store: BlobStore) -> Self {
        ProducerBuilder {
            store,
            producer_id: format!("producer-{}", std::process::id()),
            snapshot_every: 1,
            max_record_bytes: 64 << 20,
            types: Vec::new(),
            validators: Vec::new(),
            listeners: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Adds a listener that sees every cycle's steps and outcome.
    pub fn listener(mut self, listener: impl CycleListener + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Names this producer in blob headers and announcements.
    pub fn producer_id(mut self, id: impl Into<String>) -> Self {
        self.producer_id = id.into();
        self
    }

    /// Writes a snapshot on the first cycle and then every `n` cycles
    /// (default 1: every cycle). Deltas and reverse deltas are written every
    /// cycle.
    pub fn snapshot_every(mut self, n: u32) -> Self {
        self.snapshot_every = n;
        self
    }

    /// Refuses records larger than `bytes` (default 64 MiB).
    pub fn max_record_bytes(mut self, bytes: u64) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Registers record type `T` with a primary key of the named fields.
    pub fn primary_key<T: RecordType>(mut self, fields: &[&str]) -> Self {
        let info = TypeInfo::of::<T>();
        let registered = KeySpec::resolve(&info, fields)
            .map(|spec| RegisteredType {
                rust_type: TypeId::of::<T>(),
                key_fields: spec.names().map(str::to_string).collect(),
                key: Some(spec),
                info,
                key_of: key_of::<T>,
            })
            .map_err(Error::from);
        self.types.push(registered);
        self
    }

    /// Registers record type `T` without a primary key: records are
    /// identified by their content, and identical records are one record.
    pub fn record_type<T: RecordType>(mut self) -> Self {
        self.types.push(Ok(RegisteredType {
            info: TypeInfo::of::<T>(),
            rust_type: TypeId::of::<T>(),
            key: None,
            key_fields: Vec::new(),
            key_of: key_of::<T>,
        }));
        self
    }

    /// Adds a header tag written into every blob.
    pub fn header_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Adds a validator; validators run in the order added.
    pub fn validator(mut self, validator: impl Validator + 'static) -> Self {
        self.validators.push(Arc::new(validator));
        self
    }

    pub fn build(self) -> Result<Producer, Error> {
        let config = |what: &str, reason: String| Error::Config {
            what: what.to_string(),
            reason,
        };
        if self.snapshot_every == 0 {
            return Err(config("snapshot_every", "must be at least 1".into()));
        }
        if self.producer_id.is_empty() {
            return Err(config("producer_id", "must not be empty".into()));
        }
        let mut types = Vec::new();
        for t in self.types {
            let t = t?;
            if types
                .iter()
                .any(|x: &RegisteredType| x.info.type_id == t.info.type_id)
            {
                return Err(config(
                    "record types",
                    format!("{} is registered twice", t.info.name),
                ));
            }
            types.push(t);
        }
        if types.is_empty() {
            return Err(config(
                "record types",
                "register at least one with primary_key::<T>() or record_type::<T>()".into(),
            ));
        }
        let infos: Vec<TypeInfo> = types.iter().map(|t| t.info.clone()).collect();
        let schema = DatasetSchema::of(&infos)
            .map_err(|e| config("record types", format!("cannot read their schema: {e}")))?;
        Ok(Producer {
            config: Arc::new(Config {
                log: AnnouncementLog::new(self.store.clone()),
                store: self.store,
                producer_id: self.producer_id,
                snapshot_every: self.snapshot_every,
                max_record_bytes: self.max_record_bytes,
                types,
                validators: self.validators,
                listeners: self.listeners,
                tags: self.tags,
                schema,
            }),
            announced: tokio::sync::Mutex::new(None),
        })
    }
}

struct Config {
    store: BlobStore,
    log: AnnouncementLog,
    producer_id: String,
    snapshot_every: u32,
    max_record_bytes: u64,
    types: Vec<RegisteredType>,
    validators: Vec<Arc<dyn Validator>>,
    listeners: Vec<Arc<dyn CycleListener>>,
    tags: Vec<(String, String)>,
    schema: DatasetSchema,
}

impl Config {
    fn emit(&self, event: CycleEvent<'_>) {
        for l in &self.listeners {
            l.on_event(&event);
        }
    }
}

/// The producer's last announced state.
struct Announced {
    entry: Announcement,
    cycles_since_snapshot: u32,
    types: Vec<TypeState>,
}

/// Publishes a dataset. `Send + Sync`; cycles run one at a time.
pub struct Producer {
    config: Arc<Config>,
    announced: tokio::sync::Mutex<Option<Announced>>,
}

/// What a cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// The version now announced (the previous one if nothing changed).
    pub version: u64,
    /// Whether the cycle published a new version.
    pub published: bool,
    pub changes: Vec<TypeChange>,
    /// Blobs written, with their sizes in bytes.
    pub blobs: Vec<(BlobName, u64)>,
    pub populate_time: Duration,
    pub total_time: Duration,
}

/// Buffers reused for every record of a populate.
#[derive(Default)]
struct RecordWork {
    /// Where records are canonicalized.
    canon: Vec<capnp::Word>,
    key: KeyBuf,
}

/// Largest scratch buffer a populate reuses for building records (64 KiB).
const MAX_SCRATCH_WORDS: usize = 8192;

/// Adds the records of one cycle. Every record of the dataset must be
/// added every cycle; a record not added is removed.
pub struct Populate<'a> {
    config: &'a Config,
    batches: Vec<Batch>,
    build_scratch: Vec<capnp::Word>,
    /// Size the build scratch should have: about twice the largest record.
    scratch_words: usize,
    work: RecordWork,
    /// Key fields resolved once per cycle, for keys read by reflection.
    resolved: Vec<Option<ResolvedKey>>,
}

impl Populate<'_> {
    fn type_index<T: RecordType>(&self) -> Result<usize, Error> {
        let id = TypeId::of::<T>();
        self.config
            .types
            .iter()
            .position(|t| t.rust_type == id)
            .ok_or_else(|| {
                ProducerError::UnknownType {
                    type_name: TypeInfo::of::<T>().name,
                }
                .into()
            })
    }

    /// Adds a record built with `T`'s generated builder.
    pub fn add<T: RecordType>(
        &mut self,
        fill: impl FnOnce(T::Builder<'_>) -> capnp::Result<()>,
    ) -> Result<(), Error> {
        let t = self.type_index::<T>()?;
        // The builder's first segment is a reused scratch buffer, sized to
        // the records seen so far (capnp zeroes it for each record, so it
        // should not be much larger than a record).
        if self.build_scratch.len() < self.scratch_words {
            self.build_scratch = capnp::Word::allocate_zeroed_vec(self.scratch_words);
        }
        let mut message =
            capnp::message::Builder::new(capnp::message::ScratchSpaceHeapAllocator::new(
                capnp::Word::words_to_bytes_mut(&mut self.build_scratch),
            ));
        let type_name = || self.config.types[t].info.name.clone();
        fill(message.init_root::<T::Builder<'_>>()).map_err(|source| ProducerError::BadRecord {
            type_name: type_name(),
            source,
        })?;
        let root = message
            .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
            .map_err(|source| ProducerError::BadRecord {
                type_name: type_name(),
                source,
            })?;
        let used: usize = message
            .get_segments_for_output()
            .iter()
            .map(|s| s.len() / 8)
            .sum();
        if used * 2 > self.scratch_words && self.scratch_words < MAX_SCRATCH_WORDS {
            self.scratch_words = (used * 2).next_power_of_two().min(MAX_SCRATCH_WORDS);
        }
        push_record::<T>(
            self.config,
            t,
            root,
            Some(used),
            &mut self.batches[t],
            &mut self.work,
            &mut self.resolved[t],
        )
    }

    /// Adds a copy of an existing record (from a consumer's view, say).
    pub fn add_reader<T: RecordType>(&mut self, record: T::Reader<'_>) -> Result<(), Error> {
        let t = self.type_index::<T>()?;
        let mut message = capnp::message::Builder::new_default();
        message
            .set_root::<T>(record)
            .map_err(|source| ProducerError::BadRecord {
                type_name: self.config.types[t].info.name.clone(),
                source,
            })?;
        let root = message
            .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
            .map_err(|source| ProducerError::BadRecord {
                type_name: self.config.types[t].info.name.clone(),
                source,
            })?;
        push_record::<T>(
            self.config,
            t,
            root,
            None,
            &mut self.batches[t],
            &mut self.work,
            &mut self.resolved[t],
        )
    }
}

fn push_record<T: RecordType>(
    config: &Config,
    t: usize,
    root: capnp::any_pointer::Reader<'_>,
    size_bound_words: Option<usize>,
    batch: &mut Batch,
    work: &mut RecordWork,
    resolved: &mut Option<ResolvedKey>,
) -> Result<(), Error> {
    let RecordWork {
        canon: scratch,
        key,
    } = work;
    let registered = &config.types[t];
    let bad = |source| ProducerError::BadRecord {
        type_name: registered.info.name.clone(),
        source,
    };
    let start = batch.words.len();
    let added = append_canonical(root, size_bound_words, scratch, &mut batch.words).map_err(bad)?;
    let bytes = added as u64 * 8;
    if bytes > config.max_record_bytes {
        batch.words.truncate(start);
        return Err(ProducerError::RecordTooLarge {
            type_name: registered.info.name.clone(),
            bytes,
            limit: config.max_record_bytes,
        }
        .into());
    }
    key.clear();
    if let Some(spec) = &registered.key {
        if !spec.encode_words(&batch.words[start..], key) {
            let record: T::Reader<'_> = root.get_as().map_err(bad)?;
            if resolved.is_none() {
                *resolved = Some(spec.resolved().map_err(bad)?);
            }
            let resolved = resolved.as_ref().expect("just set");
            resolved
                .encode_record(T::dynamic(record), key)
                .map_err(bad)?;
        }
    }
    batch.push(start, key.as_bytes());
    Ok(())
}

impl Producer {
    /// The last announced version, if any.
    pub async fn version(&self) -> Option<u64> {
        self.announced
            .lock()
            .await
            .as_ref()
            .map(|a| a.entry.version)
    }

    pub fn producer_id(&self) -> &str {
        &self.config.producer_id
    }

    /// Runs one cycle. `populate` must add every record of the dataset.
    pub async fn run_cycle<F>(&self, populate: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Populate<'_>) -> Result<(), Error>,
    {
        let span = tracing::info_span!("cycle", producer = %self.config.producer_id);
        let started = Instant::now();
        let result = self.cycle(populate).instrument(span).await;
        let config = &*self.config;
        metrics::histogram!("burrow_producer_cycle_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(report) if report.published => {
                metrics::counter!("burrow_producer_cycles_total").increment(1);
                metrics::gauge!("burrow_producer_version").set(report.version as f64);
                config.emit(CycleEvent::Announced { report });
            }
            Ok(report) => config.emit(CycleEvent::NoChange {
                version: report.version,
            }),
            Err(error) => {
                metrics::counter!("burrow_producer_cycle_failures_total").increment(1);
                let step = match error {
                    Error::Producer(ProducerError::Cycle { step, .. }) => *step,
                    _ => CycleStep::Mint,
                };
                tracing::warn!(%error, %step, "cycle failed");
                config.emit(CycleEvent::Failed { step, error });
            }
        }
        result
    }

    async fn cycle<F>(&self, populate: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Populate<'_>) -> Result<(), Error>,
    {
        let started = Instant::now();
        let mut step_started = started;
        let step_done = |step: CycleStep, since: &mut Instant| {
            let duration = since.elapsed();
            *since = Instant::now();
            tracing::debug!(%step, ?duration, "cycle step done");
            self.config.emit(CycleEvent::StepDone { step, duration });
        };
        let cycle_start_micros = crate::announcer::now_micros();
        let mut guard = self.announced.lock().await;
        let config = &*self.config;
        let last_version = guard.as_ref().map_or(0, |a| a.entry.version);

        // 1. Mint, after checking nobody else announced.
        let newest = config
            .log
            .latest()
            .await
            .map_err(|e| cycle_err(CycleStep::Mint, last_version + 1)(e.into()))?;
        match (&*guard, &newest) {
            (None, Some(n)) => {
                return Err(cycle_err(CycleStep::Mint, n.version + 1)(
                    ProducerError::NeedsRestore { version: n.version }.into(),
                ))
            }
            // Entries after ours that keep our version are pins and unpins
            // (every entry carries the newest version, and versions only
            // grow): we are still the primary producer.
            (Some(a), Some(n)) if n.seq != a.entry.seq && n.version != a.entry.version => {
                return Err(cycle_err(CycleStep::Mint, last_version + 1)(
                    AnnounceError::NotPrimary { seq: n.seq }.into(),
                ))
            }
            (Some(_), None) => {
                return Err(cycle_err(CycleStep::Mint, last_version + 1)(
                    ProducerError::Restore {
                        reason: "this producer announced before, but the store's log is empty"
                            .into(),
                    }
                    .into(),
                ))
            }
            _ => {}
        }
        let mut version = last_version + 1;
        config.emit(CycleEvent::Started { version });
        step_done(CycleStep::Mint, &mut step_started);

        // 2. Populate. (In a block: the populate state is not `Send` and
        // must be gone before the next await.) Arenas start at the size of
        // the last cycle's, so they rarely grow.
        let batches = {
            let mut pop = Populate {
                config,
                batches: config
                    .types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let prev = guard.as_ref().map(|a| &a.types[i]);
                        Batch::with_capacity(
                            t.key.is_some(),
                            prev.map_or(0, |p| p.total_words + p.total_words / 8),
                            prev.map_or(0, |p| p.count as usize),
                        )
                    })
                    .collect(),
                build_scratch: Vec::new(),
                scratch_words: 64,
                work: RecordWork::default(),
                resolved: config.types.iter().map(|_| None).collect(),
            };
            populate(&mut pop).map_err(cycle_err(CycleStep::Populate, version))?;
            pop.batches
        };
        let populate_time = started.elapsed();
        step_done(CycleStep::Populate, &mut step_started);

        // 3. Identify.
        let empty: Vec<TypeState>;
        let prev_types: &[TypeState] = match &*guard {
            Some(a) => &a.types,
            None => {
                empty = config
                    .types
                    .iter()
                    .map(|t| TypeState::empty(t.key.is_some()))
                    .collect();
                &empty
            }
        };
        let mut diffs = Vec::with_capacity(config.types.len());
        for ((t, batch), prev) in config.types.iter().zip(batches).zip(prev_types) {
            let diff = state::identify(prev, batch, t.key.is_some()).map_err(|dup| {
                cycle_err(CycleStep::Identify, version)(
                    ProducerError::DuplicateKey {
                        type_name: t.info.name.clone(),
                        key: state::render_key(t.key.as_ref(), &dup.key),
                    }
                    .into(),
                )
            })?;
            diffs.push(diff);
        }
        let changes: Vec<TypeChange> = config
            .types
            .iter()
            .zip(&diffs)
            .zip(prev_types)
            .map(|((t, d), prev)| TypeChange {
                type_name: t.info.name.clone(),
                records_before: prev.count,
                records_after: d.next.count,
                added: d.added.len() as u32,
                changed: d.changed.len() as u32,
                removed: d.removed.len() as u32,
            })
            .collect();

        step_done(CycleStep::Identify, &mut step_started);

        // 4. No change: no version.
        if guard.is_some() && diffs.iter().all(TypeDiff::is_empty) {
            return Ok(CycleReport {
                version: last_version,
                published: false,
                changes,
                blobs: Vec::new(),
                populate_time,
                total_time: started.elapsed(),
            });
        }

        // 5. Validate.
        for v in &config.validators {
            v.validate(version, &changes).map_err(|reason| {
                cycle_err(CycleStep::Validate, version)(
                    ProducerError::Validation {
                        validator: v.name().to_string(),
                        version,
                        reason,
                    }
                    .into(),
                )
            })?;
        }

        step_done(CycleStep::Validate, &mut step_started);

        // 6. Write and publish; bump past names taken by orphans.
        let prev_entry = guard.as_ref().map(|a| &a.entry);
        let cycles_since = guard.as_ref().map_or(0, |a| a.cycles_since_snapshot + 1);
        let with_snapshot = prev_entry.is_none() || cycles_since >= config.snapshot_every;
        let mut attempts = 0;
        let blobs = loop {
            attempts += 1;
            let written = self
                .write_blobs(
                    version,
                    prev_entry,
                    &diffs,
                    prev_types,
                    with_snapshot,
                    cycle_start_micros,
                )
                .map_err(cycle_err(CycleStep::WriteBlobs, version))?;
            match self.publish(&written).await {
                Ok(()) => break written,
                Err(Error::Store(StoreError::AlreadyExists { name })) if attempts < 16 => {
                    tracing::warn!(
                        version,
                        blob = %name,
                        "blob name already taken (an orphan of an unannounced cycle); bumping the version"
                    );
                    version += 1;
                }
                Err(e) => return Err(cycle_err(CycleStep::Publish, version)(e)),
            }
        };

        step_done(CycleStep::Publish, &mut step_started);

        // 7. Announce.
        let size_of = |kind: fn(&BlobName) -> bool| {
            blobs
                .iter()
                .find(|(n, _)| kind(n))
                .map_or(0, |(_, b)| b.len() as u64)
        };
        let entry = Announcement {
            seq: newest.as_ref().map_or(1, |n| n.seq + 1),
            kind: AnnounceKind::Announce,
            version,
            from_version: prev_entry.map_or(0, |e| e.version),
            snapshot_version: if with_snapshot {
                version
            } else {
                prev_entry.map_or(0, |e| e.snapshot_version)
            },
            has_snapshot: with_snapshot,
            pinned_version: newest.as_ref().and_then(|n| n.pinned_version),
            producer_id: config.producer_id.clone(),
            timestamp_micros: crate::announcer::now_micros(),
            snapshot_bytes: size_of(|n| matches!(n, BlobName::Snapshot(_))),
            delta_bytes: size_of(|n| matches!(n, BlobName::Delta(..))),
            reverse_bytes: size_of(|n| matches!(n, BlobName::Reverse(..))),
        };
        crate::failpoint::hit("before-announce");
        config
            .log
            .append(&entry)
            .await
            .map_err(|e| cycle_err(CycleStep::Announce, version)(e.into()))?;
        tracing::info!(version, seq = entry.seq, "announced");
        step_done(CycleStep::Announce, &mut step_started);
        *guard = Some(Announced {
            entry,
            cycles_since_snapshot: if with_snapshot { 0 } else { cycles_since },
            types: diffs.into_iter().map(|d| d.next).collect(),
        });
        Ok(CycleReport {
            version,
            published: true,
            changes,
            blobs: blobs.iter().map(|(n, b)| (*n, b.len() as u64)).collect(),
            populate_time,
            total_time: started.elapsed(),
        })
    }

    fn write_blobs(
        &self,
        version: u64,
        prev: Option<&Announcement>,
        diffs: &[TypeDiff],
        prev_types: &[TypeState],
        with_snapshot: bool,
        cycle_start_micros: i64,
    ) -> Result<Vec<(BlobName, Bytes)>, Error> {
        let config = &*self.config;
        let mut out = Vec::new();
        let prev_version = prev.map_or(0, |e| e.version);
        let head = |from, to| HeaderInfo {
            from_version: from,
            to_version: to,
            producer_id: &config.producer_id,
            cycle_start_micros,
            schema: &config.schema,
            tags: &config.tags,
        };
        if prev.is_some() {
            // Forward: removed, then added and changed with new records.
            let mut forward = Vec::new();
            let mut reverse = Vec::new();
            let mut removed_f = Vec::new();
            let mut set_f = Vec::new();
            let mut removed_r = Vec::new();
            let mut set_r = Vec::new();
            for (d, old) in diffs.iter().zip(prev_types) {
                let new = &d.next;
                removed_f.push(
                    d.removed
                        .iter()
                        .map(|&(o, r)| (o, old.batch.hash(r)))
                        .collect::<Vec<_>>(),
                );
                let mut set: Vec<(u32, &[u64], u64)> = d
                    .added
                    .iter()
                    .map(|&(o, r)| (o, new.batch.record(r), new.batch.hash(r)))
                    .chain(
                        d.changed
                            .iter()
                            .map(|&(o, r, _)| (o, new.batch.record(r), new.batch.hash(r))),
                    )
                    .collect();
                set.sort_unstable_by_key(|x| x.0);
                set_f.push(set);
                removed_r.push(
                    d.added
                        .iter()
                        .map(|&(o, r)| (o, new.batch.hash(r)))
                        .collect::<Vec<_>>(),
                );
                let mut set: Vec<(u32, &[u64], u64)> = d
                    .removed
                    .iter()
                    .map(|&(o, r)| (o, old.batch.record(r), old.batch.hash(r)))
                    .chain(
                        d.changed
                            .iter()
                            .map(|&(o, _, pr)| (o, old.batch.record(pr), old.batch.hash(pr))),
                    )
                    .collect();
                set.sort_unstable_by_key(|x| x.0);
                set_r.push(set);
            }
            for (i, ((t, d), old)) in config.types.iter().zip(diffs).zip(prev_types).enumerate() {
                if d.is_empty() {
                    continue;
                }
                forward.push(DeltaTypeSource {
                    info: &t.info,
                    key_fields: &t.key_fields,
                    removed: &removed_f[i],
                    set: &set_f[i],
                    record_count_after: d.next.count,
                    ordinal_limit_after: d.next.ordinal_limit(),
                });
                reverse.push(DeltaTypeSource {
                    info: &t.info,
                    key_fields: &t.key_fields,
                    removed: &removed_r[i],
                    set: &set_r[i],
                    record_count_after: old.count,
                    ordinal_limit_after: old.ordinal_limit(),
                });
            }
            let delta = write_delta(BlobKind::Delta, &head(prev_version, version), &forward)?;
            out.push((BlobName::Delta(prev_version, version), Bytes::from(delta)));
            let rev = write_delta(BlobKind::Reverse, &head(version, prev_version), &reverse)?;
            out.push((BlobName::Reverse(version, prev_version), Bytes::from(rev)));
        }
        if with_snapshot {
            let sources: Vec<SnapshotTypeSource<'_>> = config
                .types
                .iter()
                .zip(diffs)
                .map(|(t, d)| SnapshotTypeSource {
                    info: &t.info,
                    key_fields: &t.key_fields,
                    ordinal_limit: d.next.ordinal_limit(),
                    record_count: d.next.count,
                    total_words: d.next.total_words,
                    records: &d.next,
                })
                .collect();
            let snapshot = write_snapshot(&head(0, version), &sources)?;
            out.push((BlobName::Snapshot(version), Bytes::from(snapshot)));
        }
        Ok(out)
    }

    async fn publish(&self, blobs: &[(BlobName, Bytes)]) -> Result<(), Error> {
        crate::failpoint::hit("before-publish");
        for (name, bytes) in blobs {
            self.config.store.create(name, vec![bytes.clone()]).await?;
            crate::failpoint::hit(match name {
                BlobName::Delta(..) => "after-delta-put",
                BlobName::Reverse(..) => "after-reverse-put",
                _ => "after-snapshot-put",
            });
        }
        Ok(())
    }

    /// Rebuilds the last announced state from the store so that the next
    /// cycle is a delta on the chain. Returns the restored version, or
    /// `None` if nothing was announced yet (the next cycle then starts a
    /// chain with a snapshot).
    pub async fn restore(&self) -> Result<Option<u64>, Error> {
        let mut guard = self.announced.lock().await;
        let config = &*self.config;
        let Some(newest) = config.log.latest().await? else {
            *guard = None;
            return Ok(None);
        };
        // The newest *announce* entry holds the producer's state; pins only
        // move consumers.
        let head = config
            .log
            .find_version(&newest, newest.version)
            .await?
            .ok_or_else(|| ProducerError::Restore {
                reason: format!("no announce entry for version {}", newest.version),
            })?;
        let chain = crate::consumer::chain_to(&config.log, &head, head.snapshot_version).await?;
        let fetch = |name: BlobName| async move {
            let bytes = config.store.get(&name).await?;
            Ok::<_, Error>(Arc::new(OpenBlob::from_bytes(&bytes, &name.to_string())?))
        };
        let snapshot = fetch(BlobName::Snapshot(head.snapshot_version)).await?;
        let mut read = crate::consumer::ReadState::from_snapshot(snapshot, head.snapshot_version)?;
        let mut deltas = 0;
        for link in chain.iter().skip(1) {
            let blob = fetch(BlobName::Delta(link.from_version, link.version)).await?;
            read = read.apply(blob, link.from_version, link.version)?;
            deltas += 1;
        }
        let mut types = Vec::with_capacity(config.types.len());
        for t in &config.types {
            types.push(restore_type(t, &read)?);
        }
        let version = head.version;
        *guard = Some(Announced {
            entry: Announcement {
                seq: newest.seq,
                pinned_version: newest.pinned_version,
                ..head
            },
            cycles_since_snapshot: deltas,
            types,
        });
        tracing::info!(version, "restored");
        Ok(Some(version))
    }
}

fn restore_type(t: &RegisteredType, read: &crate::consumer::ReadState) -> Result<TypeState, Error> {
    let keyed = t.key.is_some();
    let Some(section) = read.raw_type(t.info.type_id) else {
        return Ok(TypeState::empty(keyed));
    };
    if section.key_fields() != t.key_fields.as_slice() {
        return Err(ProducerError::Restore {
            reason: format!(
                "{}: the store's key is {:?}, this producer's is {:?}",
                t.info.name,
                section.key_fields(),
                t.key_fields
            ),
        }
        .into());
    }
    let mut batch = Batch::new(keyed);
    let mut ordinal_of = Vec::with_capacity(section.record_count() as usize);
    let mut key = KeyBuf::new();
    for o in 0..section.ordinal_limit() {
        let Some(words) = section.record_words(o)? else {
            continue;
        };
        let start = batch.words.len();
        batch.words.extend_from_slice(words);
        key.clear();
        if let Some(spec) = &t.key {
            (t.key_of)(spec, words, &mut key).map_err(|e| {
                FormatError::capnp(&t.info.name, &format!("record at ordinal {o}"), e)
            })?;
        }
        batch.push(start, key.as_bytes());
        ordinal_of.push(o);
    }
    Ok(TypeState::from_ordinals(
        batch,
        ordinal_of,
        section.ordinal_limit(),
    ))
}
