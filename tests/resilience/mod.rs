//! The resilience decorators (retry, circuit breaker) against
//! `FaultyStore`, on a manual clock: no test waits for real time. The
//! consumer rig here (`consumer_rig`, `watch_config`, `next_refresh`) also
//! serves `consumer_outage.rs`.

mod announce;
mod breaker;
mod consumer;
mod retry;

use burrow::blobstore::resilience::{
    resilience_error, BreakerConfig, CircuitBreakerStore, Resilience, ResilienceError,
    ResilientStack, RetryPolicy, SeededRng,
};
use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder, WatchConfig, WatchEvent};
use burrow::testing::faults::FaultyStore;
use burrow::testing::ManualClock;
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

/// A faulty in-memory store, a manual clock, and the full stack over them.
struct Rig {
    faulty: Arc<FaultyStore>,
    clock: ManualClock,
    stack: ResilientStack,
}

fn rig(retry: RetryPolicy, breaker: BreakerConfig) -> Rig {
    rig_over(
        Arc::new(object_store::memory::InMemory::new()),
        retry,
        breaker,
    )
}

fn rig_over(inner: Arc<dyn ObjectStore>, retry: RetryPolicy, breaker: BreakerConfig) -> Rig {
    let faulty = Arc::new(FaultyStore::new(inner));
    let clock = ManualClock::new();
    let resilience = Resilience::new(Arc::new(clock.clone()), Arc::new(SeededRng::new(42)))
        .with_retry(retry)
        .with_breaker(breaker);
    let stack = resilience.wrap(Arc::clone(&faulty) as Arc<dyn ObjectStore>);
    Rig {
        faulty,
        clock,
        stack,
    }
}

/// A breaker that never opens in the tests that look at retries alone.
fn lenient_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 1000,
        ..BreakerConfig::default()
    }
}

/// The sleeps the retry layer asked for that were backoffs, not timeouts.
fn backoffs(clock: &ManualClock, policy: &RetryPolicy) -> Vec<Duration> {
    clock
        .requested_sleeps()
        .into_iter()
        .filter(|d| *d != policy.call_timeout)
        .collect()
}

fn kind(err: &object_store::Error) -> &ResilienceError {
    resilience_error(err).unwrap_or_else(|| panic!("not a resilience error: {err}"))
}

/// A consumer whose store is a faulty in-memory store behind the full
/// stack (retries, breaker), on a manual clock; `clean` is the same memory
/// without faults, for the producer.
pub(crate) struct ConsumerRig {
    _dir: tempfile::TempDir,
    pub(crate) clean: BlobStore,
    pub(crate) faulty: Arc<FaultyStore>,
    pub(crate) clock: ManualClock,
    pub(crate) consumer: Arc<Consumer>,
    pub(crate) breaker: Arc<CircuitBreakerStore>,
}

pub(crate) fn consumer_rig(retry: RetryPolicy, breaker: BreakerConfig) -> ConsumerRig {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let clock = ManualClock::new();
    let resilience = Resilience::new(Arc::new(clock.clone()), Arc::new(SeededRng::new(7)))
        .with_retry(retry)
        .with_breaker(breaker);
    let stack = resilience.wrap(faulty.clone());
    let consumer = ConsumerBuilder::new(BlobStore::new(stack.store.clone(), ""))
        .cache_dir(dir.path().join("cache"))
        .clock(Arc::new(clock.clone()))
        .breaker(stack.breaker.clone())
        .build()
        .unwrap();
    ConsumerRig {
        _dir: dir,
        clean: BlobStore::new(memory, ""),
        faulty,
        clock,
        consumer: Arc::new(consumer),
        breaker: stack.breaker,
    }
}

/// The poll interval of [`watch_config`].
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A watcher polling every [`WATCH_INTERVAL`] (jitter 0.2) on `clock`,
/// backing off up to `max_backoff` while failing.
pub(crate) fn watch_config(clock: &ManualClock, max_backoff: Duration) -> WatchConfig {
    WatchConfig {
        interval: WATCH_INTERVAL,
        jitter: 0.2,
        max_backoff,
        clock: Arc::new(clock.clone()),
        rng: Arc::new(SeededRng::new(1)),
        notify: None,
    }
}

/// Drives `clock` until the watcher reports a refresh; the version reached.
pub(crate) async fn next_refresh(
    clock: &ManualClock,
    rx: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
) -> u64 {
    loop {
        if let WatchEvent::Refreshed(r) = clock.drive(rx.recv()).await.unwrap() {
            return r.to;
        }
    }
}
