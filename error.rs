//! The crate's error type. Each module has its own enum; they converge here.
//! Variants mean the same thing on every backend; backend detail rides in
//! `#[source]`.

use crate::announcer::AnnounceError;
use crate::blobstore::StoreError;
use crate::consumer::ConsumerError;
use crate::producer::ProducerError;

/// Errors about the bytes of a blob or announcement: they never succeed on
/// retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes are not what the format says they must be.
    #[error("{blob}: corrupt: {reason}")]
    Corrupt {
        /// The blob or announcement entry, as named in the store
        /// (`snapshot/7`, `delta/6-7`, a log entry's key).
        blob: String,
        /// What was wrong and where in the bytes it was found.
        reason: String,
    },
    /// The blob was written by a format version this build cannot read.
    #[error(
        "{blob}: format version {found} is not supported (this build reads versions {oldest} to {supported})",
        oldest = crate::schema::envelope::OLDEST_READABLE_VERSION
    )]
    Incompatible {
        /// The blob, as named in the store.
        blob: String,
        /// The format version written in the blob's header.
        found: u16,
        /// The newest format version this build reads and writes.
        supported: u16,
    },
    /// A configured limit refused the input.
    #[error("{blob}: {what} is {value}, over the limit of {limit}")]
    TooLarge {
        /// The blob, as named in the store (`(being written)` when the
        /// writer refused it).
        blob: String,
        /// The quantity that was over its limit (`blob size`, `number of
        /// types`, ...).
        what: &'static str,
        /// The quantity's value, in the unit of `what` (bytes for sizes,
        /// a count otherwise).
        value: u64,
        /// The largest value allowed, in the same unit.
        limit: u64,
    },
    /// A stored blob's zstd frame is bad: it expands past its bound, ends
    /// early, is corrupt, or does not hold the blob its envelope declares
    /// (see [`crate::blobstore::compress`]).
    #[error("{blob}: {fault}")]
    Compression {
        /// The blob, as named in the store.
        blob: String,
        /// What was wrong with the compressed stream.
        fault: crate::blobstore::compress::CompressionFault,
    },
    /// The blob (or entry) belongs to another dataset than the one it
    /// meets: a state, an announcement, the log before it. Two datasets'
    /// blobs never mix (see [`crate::schema::dataset_id`]).
    #[error("{blob}: belongs to dataset {found}, expected dataset {expected}")]
    DatasetMismatch {
        /// The blob or announcement entry that carries the other identity.
        blob: String,
        /// The dataset it was meant to belong to (the state's, the
        /// announcement's, the log's).
        expected: crate::schema::DatasetId,
        /// The dataset the blob or entry says it belongs to.
        found: crate::schema::DatasetId,
    },
}

impl FormatError {
    /// A `Corrupt` error for `blob`, with the Cap'n Proto error as the reason.
    pub(crate) fn capnp(blob: &str, context: &str, err: capnp::Error) -> Self {
        FormatError::Corrupt {
            blob: blob.to_string(),
            reason: format!("{context}: {err}"),
        }
    }
}

/// Errors about primary keys: a key that cannot be built from a schema, or
/// a lookup value that does not fit the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A primary key declared for a type cannot be built: no field was
    /// named, a field is named twice or does not exist, or its type cannot
    /// be a key.
    #[error("{type_name}: primary key field {field:?} {reason}")]
    Spec {
        /// The type the key was declared for.
        type_name: String,
        /// The key field, as given (empty when the key names no field).
        field: String,
        /// Why the field cannot be a key.
        reason: String,
    },
    /// A value given to a lookup does not fit the type's key (wrong
    /// number of fields, or a field of the wrong kind).
    #[error("{type_name}: bad key value: {reason}")]
    Query {
        /// The type being looked up.
        type_name: String,
        /// How the value differs from the key.
        reason: String,
    },
    /// A lookup by key on a type that was published without a primary key.
    #[error("{type_name} has no primary key, so it cannot be looked up by key")]
    NoKey {
        /// The type being looked up.
        type_name: String,
    },
    /// A lookup through a secondary index the type does not carry.
    #[error("{type_name} has no index named {index:?} (it has {known:?})")]
    NoIndex {
        /// The type being looked up.
        type_name: String,
        /// The index asked for.
        index: String,
        /// The indexes the type has.
        known: Vec<String>,
    },
    /// A secondary index cannot be built over the fields it names (no such
    /// field, a field of a kind that cannot be indexed, two list fields),
    /// or a unique index's records share a value.
    #[error("{type_name}: index {index:?}: {reason}")]
    Index {
        /// The type indexed.
        type_name: String,
        /// The index.
        index: String,
        /// What is wrong.
        reason: String,
    },
}

/// Any error from burrow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes of a blob or announcement are bad; never retryable.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A primary key cannot be built, or a lookup value does not fit it.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The blob store or the local cache failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The announcement log refused or failed an operation.
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// A producer's cycle or restore failed.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// A consumer could not reach or serve a version.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Garbage collection refused its policy, the log, or failed in the store.
    #[error(transparent)]
    Gc(#[from] crate::gc::GcError),
    /// A blob's record types cannot be printed as a Cap'n Proto schema.
    #[error(transparent)]
    CapnpText(#[from] crate::schema::capnp_text::CapnpTextError),
    /// A record, key or path could not be read through the schema nodes
    /// (see [`crate::schema::dynamic`]).
    #[error(transparent)]
    Dynamic(#[from] crate::schema::dynamic::DynamicError),
    /// An explorer was asked for a version, type or record the dataset
    /// does not have (see [`crate::explore`]).
    #[error(transparent)]
    Explore(#[from] crate::explore::ExploreError),
    /// A type's schema in a blob cannot be read or continued by this
    /// build's generated code (see [`crate::schema::evolve`]).
    #[error(transparent)]
    Schema(#[from] crate::schema::evolve::SchemaError),
    /// A setting given to a builder or the CLI is invalid.
    #[error("invalid configuration: {what}: {reason}")]
    Config {
        /// The setting (`cache_dir`, `--store`, ...).
        what: String,
        /// Why its value is refused.
        reason: String,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again (a timeout, a
    /// connection reset, a 5xx). A checksum mismatch, a missing blob or a
    /// lost announcement race is not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Announce(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
