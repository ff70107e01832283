//! End to end on a local directory: publish cycles, follow them.

use crate::common::*;
use burrow::blobstore::BlobStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_follow_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "p1");
    let consumer = consumer(&store, &dir.path().join("cache"));
    let mut model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap();
    assert!(v1.published);
    consumer.refresh().await.unwrap();
    assert_eq!(snapshot_of(&consumer), model);

    model.insert(5, movie_value(5, 2));
    model.remove(&7);
    model.insert(1000, movie_value(1000, 0));
    let v2 = publish(&producer, &model).await.unwrap();
    assert!(v2.version > v1.version);
    let report = consumer.refresh().await.unwrap().expect("moved");
    assert_eq!(report.to, v2.version);
    assert_eq!(snapshot_of(&consumer), model);

    // No change: no new version.
    let same = publish(&producer, &model).await.unwrap();
    assert!(!same.published);
    assert_eq!(same.version, v2.version);
}

/// Invariant: producers, consumers and read states are shared across
/// threads, and their futures can be spawned on a multi-threaded runtime.
#[test]
fn producer_and_consumer_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<burrow::producer::Producer>();
    send_sync::<burrow::consumer::Consumer>();
    send_sync::<burrow::consumer::ReadState>();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "p");
    let cycle = producer.run_cycle(|_| Ok(()));
    send(&cycle);
    let consumer = consumer(&store, &dir.path().join("cache"));
    let refresh = consumer.refresh();
    send(&refresh);
}

/// Invariant: announcement entries are immutable, so a log reads each one
/// from the store once; planning that walks the chain back on every
/// refresh repeats no GETs.
#[tokio::test]
async fn entries_are_read_from_the_store_once() {
    use burrow::testing::faults::{FaultyStore, Op};
    let faulty = std::sync::Arc::new(FaultyStore::memory());
    let store = BlobStore::new(faulty.clone(), "");
    let producer = producer(&store, "p");
    let model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    faulty.reset_counts();
    let first = log.read(1).await.unwrap().expect("entry 1");
    assert_eq!(faulty.calls(Op::Get), 1);
    let again = log.clone().read(1).await.unwrap().expect("entry 1");
    assert_eq!(first, again);
    assert_eq!(
        faulty.calls(Op::Get),
        1,
        "a second read of an entry went to the store"
    );
    // A missing entry is not cached: it may be written later.
    assert!(log.read(2).await.unwrap().is_none());
    assert!(log.read(2).await.unwrap().is_none());
    assert_eq!(faulty.calls(Op::Get), 3);
}
