//! The blob format: the envelope, the generated Cap'n Proto code for
//! `schema/burrow.capnp`, and the example datasets' generated code (the anchor
//! workload's generator is `crate::testing::workload`).
//!
//! One module per layout: [`envelope`] (the frame around every blob),
//! [`blob`] (bodies: [`blob::write`] and [`blob::read`]), [`record`] (a
//! record's canonical message), [`key`] (key encoding and hashing) and
//! [`key_index`] (the snapshot's key index), [`node_key`] (keys of a type known only
//! by the schema node a blob carries), [`capnp_text`] (a blob's record
//! types as a Cap'n Proto schema file), [`dynamic`] (any record read and
//! rendered as JSON through those nodes, with no generated code), [`evolve`]
//! (whether a blob's schema of a type can be read or continued by generated
//! code of another version). The format layer does no I/O:
//! it sees bytes, not files ([`blob::OpenBlob::from_mmap`] takes a map the
//! cache made).

pub mod blob;
pub mod capnp_text;
pub mod checksum;
pub mod dataset_id;
pub mod dynamic;
pub mod envelope;
pub mod evolve;
pub mod index;
pub mod key;
pub mod key_index;
pub mod node_key;
pub mod record;
pub mod wire;

pub use dataset_id::DatasetId;

#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod burrow_capnp {
    include!(concat!(env!("OUT_DIR"), "/burrow_capnp.rs"));
}

/// The `Movie` type of the anchor workload (`../shared/WORKLOAD.md`).
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod movies_capnp {
    include!(concat!(env!("OUT_DIR"), "/examples/movies_capnp.rs"));
}

/// A record type with every kind of key field, for burrow's own tests.
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod probe_capnp {
    include!(concat!(env!("OUT_DIR"), "/examples/probe_capnp.rs"));
}

/// A record type with nested structs, enums, groups, unions, lists and
/// defaults, for the tests of `burrow schema --capnp`.
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod library_capnp {
    include!(concat!(env!("OUT_DIR"), "/examples/library_capnp.rs"));
}

/// A record type with every kind of field, for the tests of
/// [`dynamic`].
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod every_capnp {
    include!(concat!(env!("OUT_DIR"), "/examples/every_capnp.rs"));
}

/// The schema evolution tests' dataset, version 1
/// (`schema/examples/evolve/v1/evolve.capnp`).
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod evolve_v1 {
    #[allow(clippy::all, missing_docs, unused, unused_qualifications)]
    pub mod evolve_capnp {
        include!(concat!(env!("OUT_DIR"), "/evolve_v1/evolve_capnp.rs"));
    }
}

/// Version 2 of the evolution tests' dataset, a compatible evolution of
/// version 1 (a field renamed, fields, an enumerant and types added).
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod evolve_v2 {
    #[allow(clippy::all, missing_docs, unused, unused_qualifications)]
    pub mod evolve_capnp {
        include!(concat!(env!("OUT_DIR"), "/evolve_v2/evolve_capnp.rs"));
    }
}

/// An incompatible change of version 1: a field's type changed.
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod evolve_bad_type {
    #[allow(clippy::all, missing_docs, unused, unused_qualifications)]
    pub mod evolve_capnp {
        include!(concat!(env!("OUT_DIR"), "/evolve_bad_type/evolve_capnp.rs"));
    }
}

/// An incompatible change of version 1: the primary key field renamed.
#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod evolve_bad_key {
    #[allow(clippy::all, missing_docs, unused, unused_qualifications)]
    pub mod evolve_capnp {
        include!(concat!(env!("OUT_DIR"), "/evolve_bad_key/evolve_capnp.rs"));
    }
}

/// Example datasets (generated code lives at `schema::*_capnp`, where
/// capnpc's paths point; these are the names to use).
pub mod examples {
    pub use super::every_capnp;
    pub use super::library_capnp;
    pub use super::movies_capnp;
    pub use super::probe_capnp;
}
