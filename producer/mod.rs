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
//!    every `snapshot_every` cycles, the snapshot, each with a create-only
//!    put. If a name is already taken (an orphan of a producer that died
//!    before announcing), the version is bumped and the blobs rewritten.
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
//! - `state`: the last announced state of each type and the per-cycle diff
//!   (identify).
//! - `cycle`: [`Producer::run_cycle`], the steps above as one function each.
//! - `write`: the bytes of the delta, reverse delta (one function, two
//!   directions) and snapshot.
//! - `restore`: [`Producer::restore`].
//! - `validate`: [`Validator`]s.
//! - `blocking`: how the blocking steps (populate, identify, blob writing,
//!   restore's decoding) stay off the tokio worker threads.

mod blocking;
mod builder;
mod cycle;
mod populate;
mod restore;
mod state;
pub mod validate;
mod write;

pub use builder::ProducerBuilder;
pub use populate::Populate;
pub use validate::{FnValidator, RecordCountChangeLimit, TypeChange, Validator};

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

    pub fn producer_id(&self) -> &str {
        &self.config.producer_id
    }
}
