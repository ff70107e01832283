//! The anchor workload's `Movie` records (`../shared/WORKLOAD.md`) for the
//! criterion benches: publishing them through the real producer, and the
//! owned-struct baseline.
#![allow(dead_code)]

use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use std::collections::HashMap;
use std::path::Path;

/// Records in the bench dataset: moderate, so `cargo bench` stays short.
pub const N: u64 = 100_000;

#[allow(unused_imports)] // each bench uses a part
pub use burrow::testing::workload::{Dataset, Movie, Rng};

/// The workload's dataset at `cycle`: cycle 1 all at generation 0, then
/// each cycle 1% set to the cycle (no churn).
pub fn dataset(cycle: u64) -> Dataset {
    let mut data = Dataset::new(N, 7);
    for c in 2..=cycle {
        data.advance(c, 0.01, 0.0);
    }
    data
}

pub fn producer(store: &BlobStore, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("bench")
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .expect("producer builds")
}

pub fn consumer(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .build()
        .expect("consumer builds")
}

/// A published dataset: cycle 1 (snapshot) and cycle 2 (a 1% delta), and a
/// consumer at cycle 1 whose cache holds both blobs.
pub struct Published {
    pub dir: tempfile::TempDir,
    pub store: BlobStore,
    pub consumer: Consumer,
    pub v1: u64,
    pub v2: u64,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn publish(rt: &tokio::runtime::Runtime) -> Published {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = BlobStore::local(dir.path().join("store")).expect("store");
    let producer = producer(&store, u32::MAX);
    let consumer = consumer(&store, &dir.path().join("cache"));
    rt.block_on(async {
        let g1 = dataset(1);
        let v1 = producer
            .run_cycle(|p| g1.populate(p))
            .await
            .expect("cycle 1")
            .version;
        let g2 = dataset(2);
        let v2 = producer
            .run_cycle(|p| g2.populate(p))
            .await
            .expect("cycle 2")
            .version;
        consumer.refresh_to(v2).await.expect("refresh to v2");
        consumer.refresh_to(v1).await.expect("back to v1");
        Published {
            dir,
            store,
            consumer,
            v1,
            v2,
        }
    })
}

/// The baseline map, decoded from a consumer's state.
pub fn hashmap_of(consumer: &Consumer) -> HashMap<u64, Movie> {
    let state = consumer.state().expect("state");
    let view = state.view::<movie::Owned>().expect("view");
    view.iter()
        .map(|(_, r)| {
            let m = Movie::decode(r).expect("decode");
            (m.id, m)
        })
        .collect()
}
