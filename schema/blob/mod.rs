//! Writing and reading blob bodies: snapshots and deltas.
//!
//! [`write`](mod@write) builds bodies ([`write_snapshot`],
//! [`write_delta`]); [`read`](mod@read) holds a blob's bytes
//! ([`OpenBlob`]) and exposes its lists in place. Both sides' names are
//! re-exported here (`schema::blob::OpenBlob`, ...).
//!
//! Writing builds one single-segment Cap'n Proto message sized up front, so
//! record words are copied once into it, then framed by the envelope.
//! Reading never copies: a blob is held as an [`OpenBlob`] (a read-only map
//! of a cache file, handed over already mapped by
//! [`OpenBlob::from_mmap`], or aligned owned memory), and each type's lists are
//! exposed as plain slices of it (`&[u32]`, `&[u64]`) through sections that
//! hold the blob alive. All reads of records go through bounds checks. The
//! blob's own message is read once, at open, for its list positions, with a
//! traversal limit of twice the body's size (a well-formed body is
//! traversed about once; the limit stops shared pointers and lists of
//! zero-sized structs from making that read unbounded), and each record is
//! read with its own bounded reader.
//!
//! Every header carries the dataset's id ([`crate::schema::dataset_id`]);
//! reading a header refuses one without (zero), and [`check_dataset`] is
//! the check a reader makes of a blob against the dataset it expects.

pub mod read;
pub mod write;

pub use read::{
    check_dataset, record_at, BlobHeader, DeltaSection, OpenBlob, Region, SnapshotSection,
};
pub use write::{
    index_slots, write_delta, write_snapshot, DatasetSchema, DeltaTypeSource, HeaderInfo,
    SnapshotRecords, SnapshotTypeSource,
};

/// Cap'n Proto's bound on list elements (exclusive).
pub const MAX_LIST_ELEMENTS: usize = (1 << 29) - 1;
/// The most record types one blob may hold.
pub const MAX_TYPES: u32 = 1 << 12;
