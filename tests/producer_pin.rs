//! An operator's pins and unpins written while a producer runs.

use crate::common::*;
use burrow::announcer::{AnnounceKind, AnnouncementLog};
use burrow::blobstore::BlobStore;
use burrow::producer::Producer;
use std::future::Future;
use std::path::Path;

/// Runs `work` as another process would (here another thread with its own
/// runtime), while the caller is blocked.
fn run_elsewhere(work: impl Future<Output = ()> + Send) {
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(work);
        })
        .join()
        .unwrap();
    });
}

/// Writes a pin as an operator would: from another process, while the
/// caller is blocked.
fn pin_elsewhere(log: &AnnouncementLog, version: u64) {
    run_elsewhere(async {
        log.pin(version, "operator").await.unwrap();
    });
}

/// A local store under `dir` where producer `id` has published `records`
/// records as version 1: the store, the producer and its model.
async fn store_at_v1(dir: &Path, id: &str, records: u64) -> (BlobStore, Producer, Model) {
    let store = BlobStore::local(dir.join("store")).unwrap();
    let p = producer(&store, id);
    let v1: Model = (0..records).map(|i| (i, movie_value(i, 0))).collect();
    publish(&p, &v1).await.unwrap();
    (store, p, v1)
}

#[tokio::test]
async fn operator_pin_during_cycle_is_not_not_primary() {
    // Invariant: only another producer's announcement makes a producer
    // "not the primary producer"; an operator's pin written during a cycle
    // does not stop it, and the pin holds consumers until an unpin.
    let dir = tempfile::tempdir().unwrap();
    let (store, p, v1) = store_at_v1(dir.path(), "p", 20).await;
    let mut v2 = v1.clone();
    v2.insert(3, movie_value(3, 2));
    publish(&p, &v2).await.unwrap();
    let reader = consumer(&store, &dir.path().join("cache"));
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(2));

    // A pin to version 1 lands while the producer populates version 3.
    let log = AnnouncementLog::new(store.clone());
    let mut v3 = v2.clone();
    v3.insert(4, movie_value(4, 3));
    let report = p
        .run_cycle(|pop| {
            pin_elsewhere(&log, 1);
            add_model(pop, &v3)
        })
        .await
        .expect("a pin is not another producer");
    assert!(report.published);
    assert_eq!(report.version, 3);

    // The announcement went after the pin and carries it.
    let newest = log.latest().await.unwrap().unwrap();
    assert_eq!(newest.kind, AnnounceKind::Announce);
    assert_eq!(newest.version, 3);
    assert_eq!(newest.seq, 4, "announce 1, announce 2, pin, announce 3");
    assert_eq!(newest.pinned_version, Some(1));
    assert_eq!(log.read(3).await.unwrap().unwrap().kind, AnnounceKind::Pin);

    // Consumers stay pinned at version 1, across further cycles.
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(1));
    assert_eq!(snapshot_of(&reader), v1);
    let mut v4 = v3.clone();
    v4.remove(&5);
    assert_eq!(publish(&p, &v4).await.unwrap().version, 4);
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(1), "the pin holds until an unpin");

    // An unpin written between cycles releases them; the producer goes on.
    log.unpin("operator").await.unwrap();
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(4));
    assert_eq!(snapshot_of(&reader), v4);
    let mut v5 = v4.clone();
    v5.insert(6, movie_value(6, 5));
    assert_eq!(publish(&p, &v5).await.unwrap().version, 5);
    reader.refresh().await.unwrap();
    assert_eq!(snapshot_of(&reader), v5);
}

#[tokio::test]
async fn another_producers_announcement_during_cycle_is_not_primary() {
    // Invariant: an announcement by another producer during a cycle stops
    // the cycle with NotPrimary and publishes nothing that is announced.
    let dir = tempfile::tempdir().unwrap();
    let (store, a, v1) = store_at_v1(dir.path(), "a", 10).await;
    let mut v2 = v1.clone();
    v2.insert(1, movie_value(1, 2));
    let b_store = store.clone();
    let v2_for_b = v2.clone();
    let err = a
        .run_cycle(|pop| {
            run_elsewhere(async {
                let b = producer(&b_store, "b");
                b.restore().await.unwrap();
                publish(&b, &v2_for_b).await.unwrap();
            });
            add_model(pop, &v2)
        })
        .await
        .expect_err("b announced first");
    assert!(
        err.to_string().contains("not the primary producer"),
        "{err}"
    );
    assert_eq!(a.version().await, Some(1));
}
