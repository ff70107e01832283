//! Restoring a producer when the newest snapshot cannot be read.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use std::path::Path;

/// Publishes three versions (a snapshot each cycle), so that version 3 is
/// also reachable as snapshot 2 plus delta 2-3.
async fn three_versions(store: &BlobStore) -> Model {
    let p = producer(store, "p");
    let mut model: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    for generation in 1..=3u64 {
        model.insert(generation, movie_value(generation, generation));
        model.insert(100 + generation, movie_value(100 + generation, 0));
        let report = publish(&p, &model).await.unwrap();
        assert_eq!(report.version, generation);
    }
    model
}

/// Restores a new producer, runs one more cycle and checks that it chains
/// on version 3 and that a fresh consumer reads the model.
async fn restore_and_continue(store: &BlobStore, mut model: Model, cache: &Path) {
    let p = producer(store, "p");
    assert_eq!(p.restore().await.unwrap(), Some(3));
    model.insert(7, movie_value(7, 40));
    model.remove(&8);
    let report = publish(&p, &model).await.unwrap();
    assert_eq!(report.version, 4);
    assert!(
        report
            .blobs
            .iter()
            .any(|(name, _)| *name == BlobName::Delta(3, 4)),
        "the next cycle is a delta on the chain: {:?}",
        report.blobs
    );
    assert_eq!(report.changes[0].changed, 1, "{:?}", report.changes);
    assert_eq!(report.changes[0].removed, 1, "{:?}", report.changes);
    let reader = consumer(store, cache);
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(4));
    assert_eq!(snapshot_of(&reader), model);
}

#[tokio::test]
async fn restore_survives_corrupt_newest_snapshot() {
    // Invariant: a producer restores from an older snapshot plus deltas
    // when the snapshot the head entry names is corrupt.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let model = three_versions(&store).await;
    let path = dir
        .path()
        .join("store")
        .join(BlobName::Snapshot(3).to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    restore_and_continue(&store, model, &dir.path().join("cache")).await;
}

#[tokio::test]
async fn restore_survives_missing_newest_snapshot() {
    // Invariant: a producer restores from an older snapshot plus deltas
    // when the snapshot the head entry names is missing.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let model = three_versions(&store).await;
    std::fs::remove_file(
        dir.path()
            .join("store")
            .join(BlobName::Snapshot(3).to_string()),
    )
    .unwrap();
    restore_and_continue(&store, model, &dir.path().join("cache")).await;
}
