//! The background watcher during an outage, on a manual clock: a failing
//! poll is reported within one poll interval, the watcher backs off while
//! failing, and health never calls a state current while the store cannot
//! be reached.

use crate::common::*;
use burrow::blobstore::resilience::{
    BreakerConfig, BreakerState, CircuitBreakerStore, Resilience, RetryPolicy, SeededRng,
};
use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder, WatchConfig, WatchEvent};
use burrow::testing::{FaultyStore, ManualClock};
use std::sync::Arc;
use std::time::Duration;

const INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(16);

struct Setup {
    _dir: tempfile::TempDir,
    clean: BlobStore,
    faulty: Arc<FaultyStore>,
    clock: ManualClock,
    consumer: Arc<Consumer>,
    breaker: Arc<CircuitBreakerStore>,
}

/// A consumer behind retries shaped like the S3 figures of the issue (three
/// attempts of 10 s each) and a breaker opening after `threshold` failures.
fn setup(threshold: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let clock = ManualClock::new();
    let resilience = Resilience::new(Arc::new(clock.clone()), Arc::new(SeededRng::new(7)))
        .with_retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        })
        .with_breaker(BreakerConfig {
            failure_threshold: threshold,
            cool_down: Duration::from_secs(30),
            half_open_trials: 1,
        });
    let stack = resilience.wrap(faulty.clone());
    let consumer = ConsumerBuilder::new(BlobStore::new(stack.store.clone(), ""))
        .cache_dir(dir.path().join("cache"))
        .clock(Arc::new(clock.clone()))
        .breaker(stack.breaker.clone())
        .build()
        .unwrap();
    Setup {
        _dir: dir,
        clean: BlobStore::new(memory, ""),
        faulty,
        clock,
        consumer: Arc::new(consumer),
        breaker: stack.breaker,
    }
}

fn watch_config(clock: &ManualClock) -> WatchConfig {
    WatchConfig {
        interval: INTERVAL,
        jitter: 0.2,
        max_backoff: MAX_BACKOFF,
        clock: Arc::new(clock.clone()),
        rng: Arc::new(SeededRng::new(1)),
    }
}

async fn first_version(s: &Setup, rx: &mut tokio::sync::broadcast::Receiver<WatchEvent>) {
    loop {
        if let WatchEvent::Refreshed(_) = s.clock.drive(rx.recv()).await.unwrap() {
            return;
        }
    }
}

/// Invariant: when the store stops answering, the watcher reports a failed
/// poll (and health turns not current) within one poll interval of the
/// poll starting, not after the retry layer's attempts.
#[tokio::test]
async fn outage_is_reported_within_one_poll_interval() {
    let s = setup(1000);
    let producer = producer(&s.clean, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let mut handle = s.consumer.watch(watch_config(&s.clock));
    let mut rx = handle.subscribe();
    first_version(&s, &mut rx).await;
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
    let s = setup(2);
    let producer = producer(&s.clean, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let mut handle = s.consumer.watch(watch_config(&s.clock));
    let mut rx = handle.subscribe();
    first_version(&s, &mut rx).await;
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
    let s = setup(2);
    let producer = producer(&s.clean, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
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
