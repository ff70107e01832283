//! The blob format: the envelope, the generated Cap'n Proto code for
//! `schema/burrow.capnp`, and the example dataset of the anchor workload.

pub mod blob;
pub mod envelope;
pub mod record;

#[allow(clippy::all, missing_docs, unused, unused_qualifications)]
pub mod burrow_capnp {
    include!(concat!(env!("OUT_DIR"), "/burrow_capnp.rs"));
}

/// Example datasets.
pub mod examples {
    /// The `Movie` type of the anchor workload (`../shared/WORKLOAD.md`).
    #[allow(clippy::all, missing_docs, unused, unused_qualifications)]
    pub mod movies_capnp {
        include!(concat!(env!("OUT_DIR"), "/examples/movies_capnp.rs"));
    }
}
