//! burrow publishes a read-mostly dataset from one producer job to many read
//! services, the way Netflix Hollow does, on Cap'n Proto and memory-mapped
//! files.
pub mod announcer;
pub mod blobstore;
pub mod consumer;
pub mod error;
pub mod failpoint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod producer;
pub mod schema;
pub mod verify;

pub use error::{Error, FormatError, Result};

/// A published state's number: strictly increasing, one per state.
pub type Version = u64;
