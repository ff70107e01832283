//! Writing and reading blob bodies: snapshots and deltas.
//!
//! [`write`](mod@write) builds bodies, streamed into a [`BlobSink`] (a
//! producer's spool file: [`stream_snapshot`], [`stream_delta`]) or in
//! memory ([`write_snapshot`], [`write_delta`]: the same writer into a
//! vector); [`read`](mod@read) holds a blob's bytes
//! ([`OpenBlob`]) and exposes its lists in place. Both sides' names are
//! re-exported here (`schema::blob::OpenBlob`, ...).
//!
//! Writing builds one single-segment Cap'n Proto message (format v2, see
//! `schema/FORMAT.md`): a skeleton of metadata, then each type's records as
//! the elements of struct lists. Reading never copies: a blob is held as
//! an [`OpenBlob`] (a read-only map of a cache file, handed over already
//! mapped by [`OpenBlob::from_mmap`], or aligned owned memory); each
//! type's metadata lists are exposed as plain slices of it (`&[u32]`,
//! `&[u64]`) and its record lists as positions ([`RecordLists`]), through
//! sections that hold the blob alive. The skeleton is read once, at open,
//! with a traversal limit of twice the body's size; the record lists are
//! located at open by their pointers alone (no record is touched) and read
//! through the generated code with the blob itself as the Cap'n Proto
//! arena ([`OpenBlob::typed_lists`]): every pointer bounds-checked, no
//! traversal limit, nothing shared between reader threads but the map.
//! What opening does not look at is proven once per blob by
//! `check` ([`OpenBlob::check_contents`], and
//! [`OpenBlob::verify`] with the checksum), when a blob enters a cache and
//! before a whole-blob reader walks it: the records' layout (pre-order,
//! only leaves shared, walks bounded) and a snapshot's key indexes.
//!
//! Every header carries the dataset's id ([`crate::schema::dataset_id`]);
//! reading a header refuses one without (zero), and [`check_dataset`] is
//! the check a reader makes of a blob against the dataset it expects.

mod check;
pub mod read;
pub mod write;

use crate::schema::burrow_capnp::{delta, header, snapshot, type_delta, type_snapshot};
use crate::schema::envelope::BlobKind;
use capnp::struct_list;

pub use read::{
    check_dataset, BlobHeader, DeltaSection, OpenBlob, RecordLists, Region, ShippedIndex,
    SnapshotSection, MAX_INDEXES,
};
pub use write::{
    index_slots, stream_delta, stream_snapshot, write_delta, write_snapshot, BlobSink,
    DatasetSchema, DeltaTypeSource, HeaderInfo, SnapshotRecords, SnapshotTypeSource,
    MAX_LIST_SHIFT,
};

/// Cap'n Proto's bound on list elements (exclusive).
pub const MAX_LIST_ELEMENTS: usize = (1 << 29) - 1;
/// The most record types one blob may hold.
pub const MAX_TYPES: u32 = 1 << 12;

/// The shape every snapshot and delta message shares: a root holding a
/// header, a list of per-type entries and the records area. The two kinds
/// differ only in their root and entry structs, so the reader
/// (`OpenBlob::sections`, `OpenBlob::with_header`) handles the header and
/// the type list once, for both kinds, through this trait.
trait Layout: capnp::traits::Owned + 'static {
    /// One type's entry (`TypeSnapshot` or `TypeDelta`).
    type Entry: capnp::traits::OwnedStruct;
    /// How errors name the root (`snapshot root`, `delta root`).
    const ROOT: &'static str;
    /// How errors name the kind a blob was expected to be (`a snapshot`).
    const EXPECTED: &'static str;

    /// Whether a blob of envelope kind `kind` holds this root.
    fn holds(kind: BlobKind) -> bool;

    /// The root's header.
    fn header<'a>(root: &Self::Reader<'a>) -> capnp::Result<header::Reader<'a>>;

    /// The root's list of types.
    fn types<'a>(root: &Self::Reader<'a>) -> capnp::Result<struct_list::Reader<'a, Self::Entry>>;
}

/// [`Layout`] for a root struct `$root` with entries `$entry`: both have
/// fields `header` and `types`.
macro_rules! layout {
    ($root:ident, $entry:ident, $what:literal, $expected:literal, $holds:pat) => {
        impl Layout for $root::Owned {
            type Entry = $entry::Owned;
            const ROOT: &'static str = $what;
            const EXPECTED: &'static str = $expected;

            fn holds(kind: BlobKind) -> bool {
                matches!(kind, $holds)
            }
            fn header<'a>(root: &Self::Reader<'a>) -> capnp::Result<header::Reader<'a>> {
                root.get_header()
            }
            fn types<'a>(
                root: &Self::Reader<'a>,
            ) -> capnp::Result<struct_list::Reader<'a, Self::Entry>> {
                root.get_types()
            }
        }
    };
}

layout!(
    snapshot,
    type_snapshot,
    "snapshot root",
    "a snapshot",
    BlobKind::Snapshot
);
layout!(
    delta,
    type_delta,
    "delta root",
    "a delta",
    BlobKind::Delta | BlobKind::Reverse
);
