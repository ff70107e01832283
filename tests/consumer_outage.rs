//! The background watcher during an outage, on a manual clock: a failing
//! poll is reported within one poll interval, the watcher backs off while
//! failing, and health never calls a state current while the store cannot
//! be reached.

use crate::common::*;
use crate::resilience::{
    consumer_rig, next_refresh, watch_config, ConsumerRig, WATCH_INTERVAL as INTERVAL,
};
use burrow::blobstore::resilience::{BreakerConfig, BreakerState, RetryPolicy};
use burrow::consumer::{WatchEvent, WatchHandle};
use std::time::Duration;

const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// A consumer behind retries shaped like the S3 figures of the issue (three
/// attempts of 10 s each) and a breaker opening after `threshold` failures,
/// with ten records published (not yet read).
async fn setup(threshold: u32) -> ConsumerRig {
    let s = consumer_rig(
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        },
        BreakerConfig {
            failure_threshold: threshold,
            cool_down: Duration::from_secs(30),
            half_open_trials: 1,
        },
    );
    let producer = producer(&s.clean, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    s
}

/// Starts the watcher and waits for its first version.
async fn watching(s: &ConsumerRig) -> (WatchHandle, tokio::sync::broadcast::Receiver<WatchEvent>) {
    let mut handle = s.consumer.watch(watch_config(&s.clock, MAX_BACKOFF));
    let mut rx = handle.subscribe();
    next_refresh(&s.clock, &mut rx).await;
    (handle, rx)
}

/// Invariant: when the store stops answering, the watcher reports a failed
/// poll (and health turns not current) within one poll interval of the
/// poll starting, not after the retry layer's attempts.
#[tokio::test]
async fn outage_is_reported_within_one_poll_interval() {
    let s = setup(1000).await;
    let (handle, mut rx) = watching(&s).await;
    assert!(s.consumer.health().is_current());
    s.faulty.hang_all();
    let frozen = s.clock.elapsed();
    match s.clock.drive(rx.recv()).await.unwrap() {
        WatchEvent::Failed { error, .. } => {
            assert!(error.contains("did not answer"), "{error}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let took = s.clock.elapsed() - frozen;
    // The sleep before the poll (an interval plus jitter), then at most one
    // interval for the poll itself.
    assert!(
        took <= INTERVAL.mul_f64(1.2) + INTERVAL,
        "the outage was reported after {took:?}"
    );
    assert!(!s.consumer.health().is_current());
    s.faulty.release();
    handle.shutdown().await;
}

/// Invariant: while polls keep failing (the breaker open included), the
/// delay before the next one grows, up to the configured bound.
#[tokio::test]
async fn watch_backs_off_while_failing() {
    let s = setup(2).await;
    let (handle, mut rx) = watching(&s).await;
    s.faulty.set_down(true);
    let mut delays = Vec::new();
    while delays.len() < 8 {
        if let WatchEvent::Failed { retry_in, .. } = s.clock.drive(rx.recv()).await.unwrap() {
            delays.push(retry_in);
        }
    }
    assert_eq!(s.breaker.state(), BreakerState::Open, "the breaker opened");
    for pair in delays.windows(2) {
        assert!(
            pair[1] >= pair[0] || pair[0] >= MAX_BACKOFF,
            "the delay shrank while failing: {delays:?}"
        );
    }
    let last = *delays.last().unwrap();
    assert!(
        last >= MAX_BACKOFF && last <= MAX_BACKOFF.mul_f64(1.2),
        "backs off to the bound: {delays:?}"
    );
    handle.shutdown().await;
}

/// Invariant: a consumer whose store cannot be reached (breaker open) is
/// not current, even though it serves the newest version it last saw.
#[tokio::test]
async fn health_is_not_current_while_breaker_open() {
    let s = setup(2).await;
    s.clock.drive(s.consumer.refresh()).await.unwrap();
    assert!(s.consumer.health().is_current());
    s.faulty.set_down(true);
    while s.breaker.state() != BreakerState::Open {
        s.clock.drive(s.consumer.refresh()).await.unwrap_err();
    }
    let health = s.consumer.health();
    assert_eq!(health.version, health.newest_target);
    assert!(
        !health.is_current(),
        "current while the breaker is open: {health:?}"
    );
    // Back: the next poll succeeds and the consumer is current again.
    s.faulty.set_down(false);
    s.clock.advance(Duration::from_secs(30));
    s.clock.drive(s.consumer.refresh()).await.unwrap();
    assert!(s.consumer.health().is_current());
}
