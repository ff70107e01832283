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
    Corrupt { blob: String, reason: String },
    /// The blob was written by a format version this build cannot read.
    #[error("{blob}: format version {found} is not supported (this build reads {supported})")]
    Incompatible {
        blob: String,
        found: u16,
        supported: u16,
    },
    /// A configured limit refused the input.
    #[error("{blob}: {what} is {value}, over the limit of {limit}")]
    TooLarge {
        blob: String,
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// The blob (or entry) belongs to another dataset than the one it
    /// meets: a state, an announcement, the log before it. Two datasets'
    /// blobs never mix (see [`crate::schema::dataset_id`]).
    #[error("{blob}: belongs to dataset {found}, expected dataset {expected}")]
    DatasetMismatch {
        blob: String,
        expected: crate::schema::DatasetId,
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
    #[error("{type_name}: primary key field {field:?} {reason}")]
    Spec {
        type_name: String,
        field: String,
        reason: String,
    },
    #[error("{type_name}: bad key value: {reason}")]
    Query { type_name: String, reason: String },
    #[error("{type_name} has no primary key, so it cannot be looked up by key")]
    NoKey { type_name: String },
}

/// Any error from burrow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// A setting given to a builder or the CLI is invalid.
    #[error("invalid configuration: {what}: {reason}")]
    Config { what: String, reason: String },
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
