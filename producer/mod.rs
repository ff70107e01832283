//! The producer: cycles that turn the whole current dataset into a new
//! published version.
//!
//! A cycle, run under a mutex so cycles are strictly one at a time:
//!
//! 1. **Mint** a version greater than the last announced one. The log's
//!    newest entry is read first: if another producer announced since this
//!    one's last cycle, the cycle stops with `NotPrimary` before writing
//!    anything. Pins and unpins (an operator's entries) are not another
//!    producer: the cycle goes on.
//! 2. **Populate**: the caller adds every current record through the
//!    generated builders ([`Populate::add`]) or from existing readers
//!    ([`Populate::add_reader`]). Each record is canonicalized once.
//! 3. **Identify** each record's ordinal by primary key (see
//!    `state`); a duplicate key is an error naming the key.
//! 4. If nothing changed in any type, no version is made and the current
//!    version is returned.
//! 5. **Validate**: validators see the changes; a failure stops the cycle.
//! 6. **Publish** the delta, the reverse delta and, on the first cycle and
//!    every `snapshot_every` cycles, the snapshot: each is streamed into a
//!    spool file of the work directory, compressed into another, and put
//!    from it create-only (one put up to the store's part size, a
//!    multipart upload above it; module `spool`), so that no blob is ever
//!    whole in memory. If a name is already taken (an orphan of a producer
//!    that died before announcing), the version is bumped and the blobs
//!    rewritten.
//! 7. **Announce** with a create-only put of the next log entry (if an
//!    operator's pin or unpin took that entry during the cycle, the
//!    announcement goes after it and carries its pin: a pin holds consumers
//!    until an unpin, across cycles); only then
//!    does the new state become the producer's "last announced" state. Any
//!    failure before that leaves the producer where it was and returns an
//!    error naming the step; blobs written by a failed cycle are orphans
//!    that no announcement names, so no consumer follows them.
//!
//! [`Producer::restore`] rebuilds the last announced state from the store,
//! so a restarted producer's next cycle is a delta on the chain.
//!
//! **Incremental cycles** ([`Producer::run_incremental_cycle`], module
//! `incremental`) replace steps 2 and 3: the caller upserts and deletes
//! records by primary key ([`Incremental`]), the changes are diffed against
//! the last announced state without touching it, the delta and reverse
//! delta (never a snapshot) are validated, published and announced as in a
//! full cycle, and only then are the changes applied to the state in place
//! (appended to the type's arena, its tables updated; the arena is
//! compacted in place once garbage passes a quarter of the live words).
//! Time and memory follow the changes, not the dataset. Full and
//! incremental cycles alternate on one chain; snapshots come from full
//! cycles (an incremental cycle counts towards `snapshot_every`).
//!
//! **Validators** ([`Validator`], [`RecordValidator`]) run on both kinds
//! of cycle, the record validators seeing the changed records and the new
//! state ([`CycleDiff`]).
//!
//! **Header tags** are the producer's ([`ProducerBuilder::header_tag`])
//! with the cycle's over them ([`Populate::tag`], [`Incremental::tag`]).
//! Every blob's header carries the start time and tags of the cycle that
//! made the state at its `toVersion`: a reverse delta carries the previous
//! cycle's, so a consumer's state tells its data's age on any path.
//!
//! **The producer's state off the heap**: the records of the last
//! announced state, of a full cycle's new batch and of a restored state
//! are kept in record arenas mapped from unlinked scratch files of the
//! work directory ([`ProducerBuilder::work_dir`], `arena`), so that the
//! two datasets a full cycle holds are page cache the kernel can write
//! back and drop, not anonymous memory; the key tables stay on the heap.
//! Records stay canonical words, compared byte for byte and handed to the
//! blob writer as they are (no rebuild from a published blob each cycle),
//! and nothing is left on disk after a crash: a restart restores from the
//! blobs. A scratch file that cannot be created or grown (the directory
//! removed, a full disk) fails the cycle or restore with
//! [`ProducerError::WorkDir`], naming the directory; the producer stays at
//! its last announced state.
//!
//! The producer's in-memory key tables hash keys with a per-process random
//! seed (`state::seeded_hash`), so that keys chosen to collide cannot make
//! a cycle quadratic; the blob's key index keeps the format's xxh3.
//!
//! The dataset's identity ([`crate::schema::dataset_id`]) is minted by the
//! first cycle of a new dataset (no state, empty log), written into every
//! blob header and announcement from then on, taken back from the log by
//! restore, and checked at mint: a log whose newest entry is of another
//! dataset (the store was recreated and another producer started a new
//! dataset in it) stops the cycle before it writes anything.

//!
//! Where each part lives:
//!
//! - `builder`: [`ProducerBuilder`] and the immutable configuration it
//!   checks once and shares with every cycle.
//! - `populate`: [`Populate`], which canonicalizes each added record and
//!   its key into the type's batch.
//! - `dynamic`: types given by their schema nodes at run time, not generated
//!   code ([`ProducerBuilder::node_type`], [`Populate::add_canonical`]; what
//!   `burrow publish` registers).
//! - `state`: the last announced state of each type and the per-cycle diff
//!   (identify).
//! - `arena`: the growable arrays, mapped from scratch files, that hold
//!   the records of batches and states.
//! - `workdir`: the work directory and its unlinked scratch files.
//! - `cycle`: [`Producer::run_cycle`], the steps above as one function each.
//! - `incremental`: [`Producer::run_incremental_cycle`] and [`Incremental`].
//! - `write`: the bytes of the delta, reverse delta (one function, two
//!   directions) and snapshot, streamed into spool files.
//! - `spool`: the unlinked scratch files each blob is spooled to,
//!   compressed into and uploaded from, so that no blob is whole in memory.
//! - `restore`: [`Producer::restore`].
//! - `retention`: the background retention run after each announcement
//!   (see [`crate::gc`]).
//! - `validate`: [`Validator`]s.
//! - `blocking`: how the blocking steps (populate, identify, blob writing,
//!   restore's decoding) stay off the tokio worker threads.

mod arena;
mod blocking;
mod builder;
mod cycle;
mod dynamic;
mod incremental;
mod populate;
mod restore;
mod retention;
mod spool;
mod state;
pub mod validate;
mod workdir;
mod write;

pub use builder::ProducerBuilder;
pub use incremental::Incremental;
pub use populate::Populate;
pub use retention::GcOutcome;
pub use validate::{
    CycleDiff, FnRecordValidator, FnValidator, Record, RecordChanges, RecordCountChangeLimit,
    RecordValidator, TypeChange, Validator,
};

use crate::announcer::Announcement;
use crate::blobstore::BlobName;
use crate::error::Error;
use builder::Config;
use state::TypeState;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The steps of a cycle, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleStep {
    /// Reading the log's newest entry, checking that this producer is
    /// still the primary one of its dataset, and choosing the version.
    Mint,
    /// The caller's populate closure adding the dataset's records.
    Populate,
    /// Giving each record its ordinal by primary key, against the last
    /// announced state.
    Identify,
    /// Running the validators on the cycle's changes.
    Validate,
    /// Encoding the delta, reverse delta and snapshot into spool files of
    /// the work directory, and compressing them.
    WriteBlobs,
    /// Putting the blobs in the store (create-only).
    Publish,
    /// Creating the log entry that announces the version.
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
    Started {
        /// The version the cycle would publish.
        version: u64,
    },
    /// A step finished successfully.
    StepDone {
        /// The step that finished.
        step: CycleStep,
        /// How long the step took (wall-clock time).
        duration: Duration,
    },
    /// Nothing changed: no version was made.
    NoChange {
        /// The last announced version, which stays current.
        version: u64,
    },
    /// The cycle announced a new version.
    Announced {
        /// What the cycle did, as [`Producer::run_cycle`] returns it.
        report: &'a CycleReport,
    },
    /// The cycle failed at `step`; nothing it wrote is announced.
    Failed {
        /// The step that failed.
        step: CycleStep,
        /// The error the cycle returns.
        error: &'a Error,
    },
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
    /// Sees one event of a cycle, as it happens.
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
        /// The step that failed.
        step: CycleStep,
        /// The version the cycle was making.
        version: u64,
        /// What went wrong in that step.
        #[source]
        source: Box<Error>,
    },
    /// Two records of one type added in one cycle have the same primary
    /// key.
    #[error("{type_name}: duplicate primary key {key} in one cycle")]
    DuplicateKey {
        /// The type's display name.
        type_name: String,
        /// The key's value, rendered field by field.
        key: String,
    },
    /// The populate closure added a record of a type the builder did not
    /// register.
    #[error("record type {type_name} was not registered with the producer builder")]
    UnknownType {
        /// The unregistered type's display name.
        type_name: String,
    },
    /// A validator refused the cycle's changes.
    #[error("validator {validator:?} refused version {version}: {reason}")]
    Validation {
        /// The validator's name.
        validator: String,
        /// The version the cycle was making.
        version: u64,
        /// The validator's reason.
        reason: String,
    },
    /// A record's canonical form is larger than the producer's
    /// `max_record_bytes`.
    #[error("{type_name}: record of {bytes} bytes is over the limit of {limit} bytes")]
    RecordTooLarge {
        /// The record's type.
        type_name: String,
        /// The record's canonical size in bytes.
        bytes: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A record the populate closure built or handed over cannot be read
    /// or canonicalized by Cap'n Proto (an unset pointer where one is
    /// needed, a message too deep or too large).
    #[error("{type_name}: the populate closure built an invalid record: {source}")]
    BadRecord {
        /// The record's type.
        type_name: String,
        /// Cap'n Proto's error.
        #[source]
        source: capnp::Error,
    },
    /// The store already has announcements and this producer has no state:
    /// it must restore first so that its next cycle chains on.
    #[error(
        "the store already has announcements (newest version {version}); call restore() before \
         running a cycle"
    )]
    NeedsRestore {
        /// The newest version the log announces.
        version: u64,
    },
    /// An incremental cycle upserted or deleted a record of a type without
    /// a primary key: such a record has no identity but its content.
    #[error(
        "{type_name} has no primary key: incremental cycles cannot upsert or delete its records"
    )]
    NotKeyed {
        /// The type's display name.
        type_name: String,
    },
    /// An incremental cycle ran on a producer with no announced state (a
    /// new dataset): its first cycle must be a full one.
    #[error(
        "an incremental cycle needs an announced state: run a full cycle first (or restore one)"
    )]
    NoState,
    /// The producer cannot rebuild (or no longer matches) the log's state:
    /// no version is reachable, or the log it announced to is gone.
    #[error("cannot restore: {reason}")]
    Restore {
        /// What is missing or inconsistent.
        reason: String,
    },
    /// A scratch file in the producer's work directory
    /// ([`ProducerBuilder::work_dir`]) could not be created, grown or
    /// mapped, or a blob's spool file could not be created, written, read
    /// or mapped: the directory was removed, the disk is full, a file size
    /// limit was hit. The cycle or restore that needed it fails (a spool
    /// at step "write blobs", `action` naming the blob; nothing is put);
    /// the producer keeps its last announced state.
    #[error("the producer's work directory {}: {action}: {source}", dir.display())]
    WorkDir {
        /// The work directory.
        dir: std::path::PathBuf,
        /// What the producer was doing with its scratch file.
        action: String,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<arena::ArenaError> for Error {
    fn from(e: arena::ArenaError) -> Self {
        ProducerError::WorkDir {
            dir: e.dir,
            action: e.action,
            source: e.source,
        }
        .into()
    }
}

/// The producer's last announced state.
struct Announced {
    /// The announce entry of the version, with the seq and pin of the
    /// newest log entry this producer has seen.
    entry: Announcement,
    cycles_since_snapshot: u32,
    types: Vec<TypeState>,
    /// Types the announced state holds that this producer does not
    /// register (found by restore): the next cycle drops them.
    unregistered: Vec<state::UnregisteredType>,
    /// The cycle that made the state: the next cycle's reverse delta,
    /// which leads back to it, carries its start time and tags.
    cycle: CycleStamp,
}

/// Header tags, as (key, value) pairs in written order.
type Tags = Vec<(String, String)>;

/// When a cycle began and the header tags it wrote.
#[derive(Debug, Clone, Default)]
struct CycleStamp {
    start_micros: i64,
    tags: Tags,
}

impl CycleStamp {
    /// The tags of a cycle: the producer's own ([`ProducerBuilder::header_tag`])
    /// with the cycle's over them (a cycle's tag replaces a producer's tag
    /// of the same key; of a key set twice in a cycle, the last value).
    fn new(start_micros: i64, defaults: &[(String, String)], cycle: Tags) -> Self {
        let mut tags: Tags = defaults
            .iter()
            .filter(|(k, _)| !cycle.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        for (k, v) in cycle {
            match tags.iter_mut().find(|(t, _)| *t == k) {
                Some(slot) => slot.1 = v,
                None => tags.push((k, v)),
            }
        }
        CycleStamp { start_micros, tags }
    }
}

/// Publishes a dataset. `Send + Sync`; cycles run one at a time.
pub struct Producer {
    config: Arc<Config>,
    announced: tokio::sync::Mutex<Option<Announced>>,
    retention: retention::RetentionStep,
}

/// What a cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// The version now announced (the previous one if nothing changed).
    pub version: u64,
    /// Whether the cycle published a new version.
    pub published: bool,
    /// Each type's changes against the last announced version (a dropped
    /// type with all its records removed).
    pub changes: Vec<TypeChange>,
    /// Blobs written, with their sizes in bytes as mapped (decompressed).
    pub blobs: Vec<(BlobName, u64)>,
    /// The same blobs with their sizes as stored (compressed, if the
    /// producer compresses): what the announcement records.
    pub stored_blobs: Vec<(BlobName, u64)>,
    /// Time from the start of the cycle to the end of populate (the log
    /// read of mint included).
    pub populate_time: Duration,
    /// Time of the whole cycle, announce included.
    pub total_time: Duration,
    /// The log entry the cycle appended (`None` when nothing changed), for
    /// listeners that pass it on (`burrow::notify::Publisher`).
    pub announcement: Option<Announcement>,
    /// The outcome of the last background retention run that had finished
    /// when the cycle ended, before it started its own (usually the run the
    /// previous announcement started); `None` before the first, or with
    /// retention off.
    pub last_gc: Option<GcOutcome>,
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

    /// The dataset's identity, once this producer has one: restored from
    /// the log, or minted by the first cycle of a new dataset and
    /// announced. `None` before either.
    pub async fn dataset_id(&self) -> Option<crate::schema::DatasetId> {
        self.announced
            .lock()
            .await
            .as_ref()
            .map(|a| a.entry.dataset_id)
    }

    /// The outcome of the last background retention run that finished.
    pub fn last_gc(&self) -> Option<GcOutcome> {
        self.retention.last()
    }

    /// Waits for the background retention run in progress, if any, and
    /// returns the outcome of the last one (for tools and tests that need
    /// it done, e.g. before exiting).
    pub async fn wait_for_gc(&self) -> Option<GcOutcome> {
        self.retention.wait().await
    }

    /// The id this producer writes into its blobs and announcements.
    pub fn producer_id(&self) -> &str {
        &self.config.producer_id
    }
}
