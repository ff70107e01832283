//! burrow publishes a read-mostly dataset from one producer job to many read
//! services, the way Netflix Hollow does, on Cap'n Proto and memory-mapped
//! files.
//!
//! A [`producer::Producer`] runs cycles: each is given the whole dataset,
//! keeps every record's ordinal stable by primary key, writes a snapshot,
//! a delta and a reverse delta to a [`blobstore::BlobStore`], and announces
//! the version in the [`announcer`] log. A [`consumer::Consumer`] follows
//! the log, fetches and verifies blobs into a local cache, maps them, and
//! serves typed zero-copy views; it moves between versions by deltas
//! without stopping readers. `schema/FORMAT.md` gives the format.
//! [`explore`] reads any version's records with no generated code, through
//! the schema nodes every blob carries ([`schema::dynamic`]): records as
//! JSON, the diff of two versions, a key's history; with the `serve`
//! feature, `explore::web` serves them as a web explorer.
//!
//! Publish, announce, consume:
//!
//! ```
//! use burrow::blobstore::BlobStore;
//! use burrow::consumer::ConsumerBuilder;
//! use burrow::producer::ProducerBuilder;
//! use burrow::schema::examples::movies_capnp::movie;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let store = BlobStore::local(dir.path().join("store"))?;
//! let producer = ProducerBuilder::new(store.clone())
//!     .primary_key::<movie::Owned>(&["id"])
//!     .build()?;
//! producer.restore().await?; // continue an existing chain, if any
//! let report = producer
//!     .run_cycle(|p| {
//!         for id in 0..100u64 {
//!             p.add::<movie::Owned>(|mut m| {
//!                 m.set_id(id);
//!                 m.set_title(format!("Title number {id}").as_str());
//!                 m.set_year(1950 + (id % 70) as u32);
//!                 Ok(())
//!             })?;
//!         }
//!         Ok(())
//!     })
//!     .await?;
//!
//! let consumer = ConsumerBuilder::new(store).cache_dir(dir.path().join("cache")).build()?;
//! consumer.refresh().await?;
//! let state = consumer.state()?;
//! assert_eq!(state.version(), report.version);
//! let movies = state.view::<movie::Owned>()?;
//! let (_ordinal, record) = movies.find(&42u64)?.expect("id 42 was published");
//! assert_eq!(record.get_year(), 1950 + 42);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
#![warn(missing_docs)]

pub mod announcer;
pub mod blobstore;
pub mod consumer;
pub mod error;
pub mod explore;
pub mod gc;
#[cfg(feature = "prometheus")]
pub mod metrics_http;
pub mod notify;
pub mod producer;
pub mod schema;
#[cfg(any(
    feature = "testing",
    feature = "workload",
    feature = "fuzzing",
    feature = "failpoints"
))]
pub mod testing;
// Without a test-tool feature only the failpoint hook is left (and, in unit
// tests, the faulty store and manual clock), so the module stays private.
#[cfg(not(any(
    feature = "testing",
    feature = "workload",
    feature = "fuzzing",
    feature = "failpoints"
)))]
#[cfg_attr(not(test), allow(dead_code))]
mod testing;
pub mod verify;

pub use error::{Error, FormatError, Result};
// The failpoint hook library code calls (`crate::failpoint::hit`): it lives
// with the test tools in `testing/` and is empty unless the `failpoints`
// feature is on.
pub(crate) use testing::failpoint;

/// The Cap'n Proto runtime burrow is built on, re-exported so that a crate
/// with its own schema needs no `capnp` dependency (and cannot pick a
/// different version): generate its code with capnpc's
/// `CodeGenerationCommand::capnp_root("::burrow::capnp")`.
pub use capnp;

/// A published state's number: strictly increasing, one per state.
pub type Version = u64;
