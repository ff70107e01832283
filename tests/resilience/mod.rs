//! The resilience decorators (retry, circuit breaker) against
//! `FaultyStore`, on a manual clock: no test waits for real time.

mod announce;
mod breaker;
mod consumer;
mod retry;

use burrow::blobstore::resilience::{
    resilience_error, BreakerConfig, Resilience, ResilienceError, ResilientStack, RetryPolicy,
    SeededRng,
};
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
