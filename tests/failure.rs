//! Invariant: a cycle that fails at any step publishes nothing a consumer
//! follows, leaves the producer at its last announced state, and the next
//! cycle succeeds and chains on.

use crate::common::*;
use burrow::blobstore::faults::FaultyStore;
use burrow::blobstore::BlobStore;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_at_each_step_of_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix({
            std::fs::create_dir_all(dir.path().join("store")).unwrap();
            dir.path().join("store")
        })
        .unwrap(),
    );
    let faulty = Arc::new(FaultyStore::new(local.clone()));
    let producer_store = BlobStore::new(faulty.clone(), "");
    let clean_store = BlobStore::new(local, "");
    let producer = producer(&producer_store, "p");
    let reader = consumer(&clean_store, &dir.path().join("cache"));

    let mut model: Model = (0..40).map(|i| (i, movie_value(i, 0))).collect();
    let mut version = publish(&producer, &model).await.unwrap().version;
    reader.refresh().await.unwrap();
    let mut failures_seen = 0;
    for k in 0..64u64 {
        let before = model.clone();
        model.insert(k % 40, movie_value(k % 40, k + 1));
        model.insert(1000 + k, movie_value(1000 + k, 0));
        faulty.fail_after(k);
        let result = publish(&producer, &model).await;
        faulty.heal();
        match result {
            Err(e) => {
                failures_seen += 1;
                let text = e.to_string();
                assert!(text.contains("failed at step"), "k={k}: {text}");
                assert_eq!(
                    producer.version().await,
                    Some(version),
                    "k={k}: producer moved"
                );
                // No consumer sees a partial version.
                let _ = reader.refresh().await;
                assert_eq!(reader.version(), Some(version), "k={k}");
                assert_eq!(snapshot_of(&reader), before, "k={k}");
                let fresh = consumer(&clean_store, &dir.path().join(format!("fresh-{k}")));
                fresh.refresh().await.unwrap();
                assert_eq!(snapshot_of(&fresh), before, "k={k}: fresh consumer");
                // The retry succeeds and chains on.
                let report = publish(&producer, &model).await.unwrap();
                assert!(report.version > version);
                version = report.version;
                reader.refresh().await.unwrap();
                assert_eq!(snapshot_of(&reader), model, "k={k}: after recovery");
            }
            Ok(report) => {
                // Enough calls went through for the whole cycle.
                assert!(report.version > version);
                reader.refresh().await.unwrap();
                assert_eq!(snapshot_of(&reader), model);
                break;
            }
        }
    }
    assert!(
        failures_seen >= 5,
        "every store call of a cycle was failed once ({failures_seen})"
    );
}
