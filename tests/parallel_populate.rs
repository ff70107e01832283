//! Invariant: records added from several threads (`Populate::parallel`)
//! make the same version as the same records added from one, byte for
//! byte when the parts keep the order; a part's error fails the cycle and
//! leaves the producer at its last announced state; a key added by two
//! parts is the usual duplicate-key error.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::Dataset;

fn build(store: &BlobStore) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("parallel")
        .retention(None)
        .compression(burrow::blobstore::Compression::None)
        .dataset_id(burrow::schema::DatasetId::from_u128(7).unwrap())
        // The same wall time in both stores: the blobs are the same bytes.
        .clock(std::sync::Arc::new(burrow::testing::ManualClock::new()))
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

/// The raw bytes of the blobs `version` made, by name.
async fn blobs(store: &BlobStore, version: u64, prev: Option<u64>) -> Vec<(BlobName, Vec<u8>)> {
    let mut names = vec![BlobName::Snapshot(version)];
    if let Some(prev) = prev {
        names.push(BlobName::Delta(prev, version));
        names.push(BlobName::Reverse(version, prev));
    }
    let mut out = Vec::new();
    for name in names {
        let bytes = store.get(&name).await.unwrap().to_vec();
        out.push((name, bytes));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_in_order_make_the_same_blobs_as_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let one = BlobStore::local(dir.path().join("one")).unwrap();
    let many = BlobStore::local(dir.path().join("many")).unwrap();
    let (p1, p3) = (build(&one), build(&many));
    let mut data = Dataset::new(5_000, 9);
    let mut prev = None;
    for cycle in 1..=3u64 {
        if cycle > 1 {
            data.advance(cycle, 0.05, 0.01);
        }
        let a = p1.run_cycle(|p| data.populate(p)).await.unwrap();
        let b = p3
            .run_cycle(|p| data.populate_parallel(p, 3))
            .await
            .unwrap();
        assert_eq!(a.version, b.version);
        let (x, y) = (
            blobs(&one, a.version, prev).await,
            blobs(&many, b.version, prev).await,
        );
        assert_eq!(x.len(), y.len());
        for ((name, a), (_, b)) in x.iter().zip(&y) {
            assert!(a == b, "{name}: the blobs differ");
        }
        prev = Some(a.version);
    }
    let c = consumer(&many, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c).len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_part_fails_the_cycle_and_a_key_in_two_parts_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "parallel");
    let model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    let first = publish(&producer, &model).await.unwrap();

    let err = producer
        .run_cycle(|p| {
            p.parallel(2, |k, part| {
                if k == 1 {
                    return Err(burrow::Error::Config {
                        what: "input".into(),
                        reason: "part 1 could not read its file".into(),
                    });
                }
                add_model(part, &model)
            })
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("part 1 could not read its file"), "{err}");

    let err = producer
        .run_cycle(|p| p.parallel(2, |_, part| add_model(part, &model)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate") || err.contains("twice"), "{err}");

    // The producer is where it was: the next cycle chains on the first.
    let mut next = model.clone();
    next.insert(3, movie_value(3, 1));
    let split: Vec<Model> = vec![
        next.range(..50).map(|(k, v)| (*k, v.clone())).collect(),
        next.range(50..).map(|(k, v)| (*k, v.clone())).collect(),
    ];
    let report = producer
        .run_cycle(|p| {
            p.tag("source", "parts");
            p.parallel(2, |k, part| {
                part.tag(format!("part{k}"), "yes");
                add_model(part, &split[k])
            })
        })
        .await
        .unwrap();
    assert_eq!(report.version, first.version + 1);
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c), next);
    let state = c.state().unwrap();
    assert_eq!(state.tag("source"), Some("parts"));
    assert_eq!(state.tag("part0"), Some("yes"));
    assert_eq!(state.tag("part1"), Some("yes"));
}
