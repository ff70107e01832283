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

use crate::schema::burrow_capnp::{delta, header, snapshot, type_delta, type_snapshot};
use crate::schema::envelope::BlobKind;
use capnp::struct_list;

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

/// The shape every snapshot and delta message shares: a root holding a
/// header and a list of per-type entries. The two kinds differ only in
/// their root and entry structs, so the writer (`write_body`) and the
/// reader (`OpenBlob::sections`, `OpenBlob::with_header`) handle the
/// header and the type list once, for both kinds, through this trait.
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

    /// Makes the root's header, has `write_header` fill it, then makes
    /// the root's list of `count` types (this order fixes the bytes).
    fn init<'a>(
        root: Self::Builder<'a>,
        write_header: impl FnOnce(header::Builder<'_>) -> capnp::Result<()>,
        count: u32,
    ) -> capnp::Result<struct_list::Builder<'a, Self::Entry>>;
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
            fn init<'a>(
                mut root: Self::Builder<'a>,
                write_header: impl FnOnce(header::Builder<'_>) -> capnp::Result<()>,
                count: u32,
            ) -> capnp::Result<struct_list::Builder<'a, Self::Entry>> {
                write_header(root.reborrow().init_header())?;
                Ok(root.init_types(count))
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
