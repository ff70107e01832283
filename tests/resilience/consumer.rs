//! The consumer under a failing store: it keeps serving its last good
//! state, reports its staleness, recovers on its own, and shares one
//! refresh among concurrent triggers. Time is a manual clock throughout.

use super::{consumer_rig, next_refresh, watch_config, ConsumerRig};
use crate::common::*;
use burrow::blobstore::resilience::{BreakerConfig, BreakerState, RetryPolicy};
use burrow::blobstore::BlobStore;
use burrow::consumer::{ConsumerBuilder, WatchEvent};
use burrow::testing::faults::{FaultyStore, Op};
use std::sync::Arc;
use std::time::Duration;

/// The watcher's longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Longer than the watcher's longest back-off (8 s plus jitter), so the
/// poll after the breaker opens finds it still open.
const COOL_DOWN: Duration = Duration::from_secs(10);

fn setup() -> ConsumerRig {
    consumer_rig(
        RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            max_elapsed: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
        },
        BreakerConfig {
            failure_threshold: 3,
            cool_down: COOL_DOWN,
            half_open_trials: 1,
        },
    )
}

/// Invariant: while the store is down the consumer serves its old state;
/// the breaker opens after the configured failures; once the store is back
/// the consumer reaches the newest version within the watcher's longest
/// back-off (plus the breaker's cool-down). Single-threaded, so the manual clock moves
/// only while the watcher task waits on it.
#[tokio::test]
async fn store_down_then_back() {
    let s = setup();
    let producer = producer(&s.clean, "p");
    let mut model: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let first = model.clone();
    let mut handle = s.consumer.watch(watch_config(&s.clock, MAX_BACKOFF));
    let mut rx = handle.subscribe();
    assert_eq!(next_refresh(&s.clock, &mut rx).await, v1);
    assert!(s.consumer.health().is_current());

    s.faulty.set_down(true);
    model.insert(1, movie_value(1, 1));
    let v2 = publish(&producer, &model).await.unwrap().version;
    // Failures until the breaker opens; the old state serves throughout.
    let mut failures = 0;
    while s.breaker.state() != BreakerState::Open {
        match s.clock.drive(rx.recv()).await.unwrap() {
            WatchEvent::Failed { .. } => failures += 1,
            other => panic!("unexpected event while down: {other:?}"),
        }
        assert_eq!(s.consumer.version(), Some(v1));
        assert_eq!(snapshot_of(&s.consumer), first);
        assert!(failures < 20, "the breaker never opened");
    }
    let health = s.consumer.health();
    assert_eq!(health.version, Some(v1));
    assert!(health.consecutive_failures >= 1);
    assert_eq!(health.breaker, Some(BreakerState::Open));
    assert!(health.last_error.is_some());
    // While open, calls fail fast: the store sees none.
    let calls = s.faulty.total_calls();
    match s.clock.drive(rx.recv()).await.unwrap() {
        WatchEvent::Failed { error, .. } => {
            assert!(error.contains("circuit breaker is open"), "{error}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        s.faulty.total_calls(),
        calls,
        "an open breaker let a call through"
    );

    s.faulty.set_down(false);
    let back = s.clock.elapsed();
    assert_eq!(next_refresh(&s.clock, &mut rx).await, v2);
    let took = s.clock.elapsed() - back;
    assert!(
        took <= MAX_BACKOFF.mul_f64(1.2) + COOL_DOWN,
        "took {took:?} after recovery"
    );
    assert_eq!(snapshot_of(&s.consumer), model);
    let health = s.consumer.health();
    assert!(health.is_current());
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.breaker, Some(BreakerState::Closed));
    handle.shutdown().await;
}

/// Invariant: a consumer started while the store is down reports that it
/// has no state (an error, not a panic) and becomes ready when the store is.
#[tokio::test]
async fn started_while_the_store_is_down() {
    let s = setup();
    let producer = producer(&s.clean, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    s.faulty.set_down(true);
    let err = s.clock.drive(s.consumer.refresh()).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    let no_state = s.consumer.state().unwrap_err().to_string();
    assert!(no_state.contains("no state yet"), "{no_state}");
    assert_eq!(s.consumer.health().version, None);
    s.faulty.set_down(false);
    s.clock.advance(COOL_DOWN);
    s.clock.drive(s.consumer.refresh()).await.unwrap();
    assert_eq!(s.consumer.version(), Some(v1));
    assert_eq!(snapshot_of(&s.consumer), model);
}

/// Invariant: concurrent refresh triggers share one refresh: the store
/// sees the requests of one refresh, not eight.
#[tokio::test]
async fn concurrent_triggers_share_one_refresh() {
    let s = setup();
    let producer = producer(&s.clean, "p");
    let mut model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    s.clock.drive(s.consumer.refresh()).await.unwrap();
    // A control consumer, at the same point, measures what one refresh costs.
    let control_dir = tempfile::tempdir().unwrap();
    let control_faulty = Arc::new(FaultyStore::new(s.clean.object_store().clone()));
    let control = ConsumerBuilder::new(BlobStore::new(control_faulty.clone(), ""))
        .cache_dir(control_dir.path())
        .build()
        .unwrap();
    control.refresh().await.unwrap();
    model.insert(3, movie_value(3, 3));
    let v2 = publish(&producer, &model).await.unwrap().version;
    control_faulty.reset_counts();
    control.refresh().await.unwrap();
    let one_refresh = control_faulty.calls(Op::Get);

    // Hold the first refresh at its delta fetch until every trigger waits.
    s.faulty
        .hang_matching(|op, path| op == Op::Get && path.contains("delta/"));
    s.faulty.reset_counts();
    let faulty = s.faulty.clone();
    let releaser = tokio::spawn(async move {
        while faulty.hanging() == 0 {
            tokio::task::yield_now().await;
        }
        faulty.release();
    });
    let triggers = (0..8).map(|_| s.consumer.refresh());
    let results = futures::future::join_all(triggers).await;
    releaser.await.unwrap();
    for r in results {
        assert_eq!(r.unwrap().map(|r| r.to), Some(v2));
    }
    assert_eq!(
        s.faulty.calls(Op::Get),
        one_refresh,
        "eight triggers, one refresh's requests"
    );
    assert_eq!(snapshot_of(&s.consumer), model);
}
