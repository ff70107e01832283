//! The announcement log through `Retry(CircuitBreaker(..))`, on the
//! in-memory store and on a local directory.

use super::{lenient_breaker, rig, rig_over};
use burrow::announcer::{AnnounceError, AnnounceKind, Announcement, AnnouncementLog};
use burrow::blobstore::resilience::RetryPolicy;
use burrow::blobstore::BlobStore;
use burrow::testing::faults::Op;
use object_store::ObjectStore;
use std::sync::Arc;

fn entry(seq: u64, version: u64, producer: &str) -> Announcement {
    Announcement {
        dataset_id: burrow::schema::DatasetId::from_u128(0x7e5_1000_0000_0000_0000_0000_0000_0001)
            .unwrap(),
        seq,
        kind: AnnounceKind::Announce,
        version,
        from_version: version.saturating_sub(1),
        snapshot_version: 1,
        has_snapshot: version == 1,
        pinned_version: None,
        producer_id: producer.to_string(),
        timestamp_micros: 1_700_000_000_000_000 + seq as i64,
        snapshot_bytes: 10,
        delta_bytes: 5,
        reverse_bytes: 5,
    }
}

/// The log's behaviour through the stack: append, read, latest, and a race
/// of 8 appenders on one seq that exactly one wins.
async fn log_works_through_the_stack(inner: Arc<dyn ObjectStore>) {
    let r = rig_over(inner, RetryPolicy::default(), Default::default());
    let log = AnnouncementLog::new(BlobStore::new(Arc::clone(&r.stack.store), "dataset"));
    assert_eq!(log.latest().await.unwrap(), None);

    let first = entry(1, 1, "p1");
    log.append(&first).await.unwrap();
    assert_eq!(log.read(1).await.unwrap(), Some(first.clone()));
    assert_eq!(log.read(2).await.unwrap(), None);
    assert_eq!(log.latest().await.unwrap(), Some(first));

    let racers: Vec<_> = (0..8).map(|i| entry(2, 2, &format!("racer-{i}"))).collect();
    let results = futures::future::join_all(racers.iter().map(|e| log.append(e))).await;
    let winners: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for result in &results {
        if let Err(err) = result {
            assert!(matches!(err, AnnounceError::NotPrimary { seq: 2 }), "{err}");
        }
    }
    let latest = log.latest().await.unwrap().unwrap();
    assert_eq!(latest, racers[winners[0]]);
    assert_eq!(
        r.stack.breaker.transitions(),
        0,
        "lost races do not trip the breaker"
    );
}

#[tokio::test]
async fn resilience_announcement_log_through_the_stack_in_memory() {
    log_works_through_the_stack(Arc::new(object_store::memory::InMemory::new())).await;
}

#[tokio::test]
async fn resilience_announcement_log_through_the_stack_in_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    log_works_through_the_stack(Arc::new(fs)).await;
}

/// Regression: an append whose write landed but whose answer was lost, and
/// appends that meet transient failures, still succeed; the producer is not
/// told it lost a race it won.
#[tokio::test]
async fn resilience_announcement_append_survives_transient_faults() {
    let r = rig(RetryPolicy::default(), lenient_breaker());
    let log = AnnouncementLog::new(BlobStore::new(Arc::clone(&r.stack.store), ""));
    r.faulty.fail_next(2);
    r.clock.drive(log.append(&entry(1, 1, "p1"))).await.unwrap();

    r.faulty.lose_next_responses(1);
    r.clock.drive(log.append(&entry(2, 2, "p1"))).await.unwrap();
    let latest = r.clock.drive(log.latest()).await.unwrap().unwrap();
    assert_eq!(latest.seq, 2);

    // A failing announce step fails the append with a retryable error and
    // writes nothing.
    r.faulty.fail_prefix("announce/");
    let err = r
        .clock
        .drive(log.append(&entry(3, 3, "p1")))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    r.faulty.heal();
    assert_eq!(r.clock.drive(log.read(3)).await.unwrap(), None);
    assert!(r.faulty.calls(Op::Put) > 0);
}

/// A store failure while reading announcements stays a store error
/// (retryable, naming the store's fault): it is never relabelled as a
/// corrupt announcement, neither by the log's reads nor by the chain query.
#[tokio::test]
async fn announcement_read_store_failure_is_not_corrupt() {
    let faulty = Arc::new(burrow::testing::faults::FaultyStore::memory());
    let writer = AnnouncementLog::new(BlobStore::new(faulty.clone(), "dataset"));
    for seq in 1..=3 {
        writer.append(&entry(seq, seq, "p1")).await.unwrap();
    }
    let head = writer.read(3).await.unwrap().unwrap();
    faulty.fail_matching(|op, path| op == Op::Get && path.contains("announce/"));
    // A fresh log: nothing cached, every read reaches the store.
    let log = AnnouncementLog::new(BlobStore::new(faulty.clone(), "dataset"));
    let errors = [
        log.read(2).await.unwrap_err(),
        log.latest().await.unwrap_err(),
        burrow::announcer::chain_to(&log, &head, 1)
            .await
            .unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, AnnounceError::Store(_)), "{err:?}");
        assert!(err.is_retryable(), "{err}");
        let err = burrow::Error::from(err);
        assert!(!matches!(err, burrow::Error::Format(_)), "{err:?}");
        assert!(!err.to_string().contains("corrupt"), "{err}");
    }
}
