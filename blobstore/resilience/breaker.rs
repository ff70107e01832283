//! [`CircuitBreakerStore`]: stops calling a store that keeps failing.
//!
//! - Closed: calls go through. `failure_threshold` consecutive failures
//!   that say the store is unhealthy ([`indicates_unhealthy`]: errors,
//!   timeouts, abandoned calls, not `NotFound` or `AlreadyExists`) open it.
//! - Open: calls fail at once with [`ResilienceError::CircuitOpen`] and
//!   never reach the store.
//! - Half-open: the first call after `cool_down` moves the breaker here;
//!   up to `half_open_trials` calls go through as trials, the rest fail
//!   fast. A trial that succeeds closes the breaker; one that fails opens
//!   it again for another `cool_down`.
//!
//! A call dropped before it completes (the retry layer's timeout, most
//! often) counts as a failure: a hung store is the failure a breaker most
//! needs to see. The state moves only when a call is made or completes, so
//! [`CircuitBreakerStore::state`] reads `Open` until the first call after
//! the cool-down. Each transition is logged (warn when it opens, info
//! otherwise) and counted ([`CircuitBreakerStore::transitions`]).
//!
//! For streams (`list`, `delete_stream`) the first item decides the
//! outcome; for `get` the response head does (errors while reading the
//! body are not counted); each multipart call is a call of its own.

use super::decorated::{Call, Decorated, Decorator, Fut, MakeOnce, Op, Stream, Upload};
use super::{indicates_unhealthy, Clock, ResilienceError};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload, PutResult, Result, UploadPart};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// When a [`CircuitBreakerStore`] opens and how it recovers.
///
/// Defaults: open after 5 consecutive failures, 30 s cool-down, 1 trial
/// call in half-open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive unhealthy failures that open the breaker (0 is taken
    /// as 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets trial calls through.
    pub cool_down: Duration,
    /// Calls let through while half-open (0 is taken as 1).
    pub half_open_trials: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
            half_open_trials: 1,
        }
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// A limited number of trial calls go through.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name, as shown in health reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// An `ObjectStore` decorator with a circuit breaker (see the module docs):
/// the [`Breaker`] over [`Decorated`]'s forwarding.
pub type CircuitBreakerStore = Decorated<Breaker>;

/// The circuit breaker, as the [`Decorator`] of a [`CircuitBreakerStore`]:
/// every call and stream is admitted or refused by the breaker's state,
/// and its outcome recorded.
#[derive(Debug)]
pub struct Breaker {
    core: Arc<Core>,
}

#[derive(Debug)]
struct Core {
    name: String,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    machine: Mutex<Machine>,
    transitions: AtomicU64,
}

#[derive(Debug)]
struct Machine {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    trials_started: u32,
}

/// Leave to make one call; records its outcome exactly once (a dropped
/// permit records a failure).
struct Permit {
    core: Arc<Core>,
    recorded: bool,
}

impl Permit {
    fn record<T>(self, result: &Result<T>) {
        let healthy = match result {
            Ok(_) => true,
            Err(err) => !indicates_unhealthy(err),
        };
        self.finish(healthy);
    }

    fn finish(mut self, healthy: bool) {
        self.recorded = true;
        self.core.finish(healthy);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.core.finish(false);
        }
    }
}

impl Core {
    fn machine(&self) -> MutexGuard<'_, Machine> {
        // Every update leaves the machine consistent, so a poisoned lock is
        // still usable.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn transition(&self, machine: &mut Machine, to: BreakerState) {
        if machine.state == to {
            return;
        }
        let from = machine.state;
        machine.state = to;
        self.transitions.fetch_add(1, Ordering::Relaxed);
        match to {
            BreakerState::Open => tracing::warn!(
                store = %self.name,
                from = from.as_str(),
                consecutive_failures = machine.consecutive_failures,
                cool_down = ?self.config.cool_down,
                "circuit breaker opened: calls fail fast until the cool-down is over"
            ),
            BreakerState::HalfOpen => tracing::info!(
                store = %self.name,
                trials = self.config.half_open_trials.max(1),
                "circuit breaker half-open: letting trial calls through"
            ),
            BreakerState::Closed => tracing::info!(
                store = %self.name,
                from = from.as_str(),
                "circuit breaker closed: the store answers again"
            ),
        }
    }

    fn open(&self, machine: &mut Machine) {
        machine.opened_at = self.clock.now();
        self.transition(machine, BreakerState::Open);
    }

    fn admit(self: &Arc<Self>) -> Result<Permit> {
        self.admit_or(|store, detail| {
            ResilienceError::CircuitOpen { store, detail }.into_object_error()
        })
    }

    /// Admits a call, or makes the rejection with `reject(name, detail)`.
    fn admit_or<E>(
        self: &Arc<Self>,
        reject: impl FnOnce(String, String) -> E,
    ) -> std::result::Result<Permit, E> {
        let mut machine = self.machine();
        if machine.state == BreakerState::Open {
            let open_for = self
                .clock
                .now()
                .saturating_duration_since(machine.opened_at);
            if open_for < self.config.cool_down {
                return Err(reject(
                    self.name.clone(),
                    format!(
                        "{} consecutive failures; next trial in {:?}",
                        machine.consecutive_failures,
                        self.config.cool_down - open_for
                    ),
                ));
            }
            machine.trials_started = 0;
            self.transition(&mut machine, BreakerState::HalfOpen);
        }
        if machine.state == BreakerState::HalfOpen {
            if machine.trials_started >= self.config.half_open_trials.max(1) {
                return Err(reject(
                    self.name.clone(),
                    format!(
                        "half-open, waiting on {} trial call(s)",
                        machine.trials_started
                    ),
                ));
            }
            machine.trials_started += 1;
        }
        Ok(Permit {
            core: Arc::clone(self),
            recorded: false,
        })
    }

    fn finish(&self, healthy: bool) {
        let mut machine = self.machine();
        if healthy {
            machine.consecutive_failures = 0;
            if machine.state == BreakerState::HalfOpen {
                self.transition(&mut machine, BreakerState::Closed);
            }
            return;
        }
        machine.consecutive_failures = machine.consecutive_failures.saturating_add(1);
        match machine.state {
            BreakerState::Closed
                if machine.consecutive_failures >= self.config.failure_threshold.max(1) =>
            {
                self.open(&mut machine)
            }
            BreakerState::HalfOpen => self.open(&mut machine),
            _ => {}
        }
    }

    /// Runs `fut` if the breaker admits it, and records the outcome.
    async fn call<T>(self: &Arc<Self>, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let permit = self.admit()?;
        let out = fut.await;
        permit.record(&out);
        out
    }

    /// A stream made only if the breaker admits it (when first polled);
    /// its first item decides the outcome.
    fn stream<T: Send + 'static>(
        self: &Arc<Self>,
        make: impl FnOnce() -> BoxStream<'static, Result<T>> + Send + 'static,
    ) -> BoxStream<'static, Result<T>> {
        let core = Arc::clone(self);
        futures::stream::once(async move {
            match core.admit() {
                Err(err) => futures::stream::once(async move { Err(err) }).boxed(),
                Ok(permit) => futures::stream::unfold(
                    (make(), Some(permit)),
                    |(mut stream, permit)| async move {
                        let item = stream.next().await;
                        if let Some(permit) = permit {
                            permit.finish(
                                !matches!(&item, Some(Err(err)) if indicates_unhealthy(err)),
                            );
                        }
                        item.map(|item| (item, (stream, None)))
                    },
                )
                .boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

impl CircuitBreakerStore {
    /// A breaker in front of `inner`, closed, timing its cool-down on `clock`.
    pub fn new(inner: Arc<dyn ObjectStore>, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let core = Arc::new(Core {
            name: inner.to_string(),
            config,
            clock,
            machine: Mutex::new(Machine {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: now,
                trials_started: 0,
            }),
            transitions: AtomicU64::new(0),
        });
        Decorated::decorate(inner, Breaker { core })
    }

    /// The state after the last call (see the module docs).
    pub fn state(&self) -> BreakerState {
        self.decorator().core.machine().state
    }

    /// Unhealthy failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.decorator().core.machine().consecutive_failures
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.decorator().core.transitions.load(Ordering::Relaxed)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.decorator().core.config
    }
}

/// The same breaker for calls that are not object store calls (the
/// notification channel's publishes, [`crate::notify`]): one state machine,
/// one configuration type, one set of transitions and logs for both.
///
/// [`CallBreaker::admit`] asks leave to make a call; the returned
/// [`BreakerPermit`] records its outcome (dropped unrecorded, it counts as
/// a failure, as an abandoned store call does).
#[derive(Debug, Clone)]
pub struct CallBreaker {
    core: Arc<Core>,
}

/// Leave from a [`CallBreaker`] to make one call.
#[derive(Debug)]
pub struct BreakerPermit {
    permit: Permit,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl BreakerPermit {
    /// Records the call's outcome: `healthy` when the far side answered.
    pub fn finish(self, healthy: bool) {
        self.permit.finish(healthy)
    }
}

impl CallBreaker {
    /// A closed breaker named `name` (in logs and errors), timing its
    /// cool-down on `clock`.
    pub fn new(name: impl Into<String>, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        CallBreaker {
            core: Arc::new(Core {
                name: name.into(),
                config,
                clock,
                machine: Mutex::new(Machine {
                    state: BreakerState::Closed,
                    consecutive_failures: 0,
                    opened_at: now,
                    trials_started: 0,
                }),
                transitions: AtomicU64::new(0),
            }),
        }
    }

    /// Leave to make one call, or [`ResilienceError::CircuitOpen`] when the
    /// breaker is open (or half-open with its trials taken).
    pub fn admit(&self) -> std::result::Result<BreakerPermit, Box<ResilienceError>> {
        self.core
            .admit_or(|store, detail| Box::new(ResilienceError::CircuitOpen { store, detail }))
            .map(|permit| BreakerPermit { permit })
    }

    /// The state after the last call.
    pub fn state(&self) -> BreakerState {
        self.core.machine().state
    }

    /// Unhealthy failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.core.machine().consecutive_failures
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.core.transitions.load(Ordering::Relaxed)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.core.config
    }
}

impl Decorator for Breaker {
    const NAME: &'static str = "CircuitBreaker";

    fn call<'a, T: Send + 'a>(&'a self, _: Op, _: &'a str, mut call: Call<'a, T>) -> Fut<'a, T> {
        Box::pin(self.core.call(call()))
    }

    fn stream_once<T: Send + 'static>(&self, _: Op, _: String, make: MakeOnce<T>) -> Stream<T> {
        self.core.stream(make)
    }

    fn upload(&self, _path: &Path, upload: Upload) -> Upload {
        let core = Arc::clone(&self.core);
        Box::new(GuardedUpload { upload, core })
    }
}

/// A multipart upload whose every call goes through the breaker.
#[derive(Debug)]
struct GuardedUpload {
    upload: Box<dyn MultipartUpload>,
    core: Arc<Core>,
}

#[async_trait]
impl MultipartUpload for GuardedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        // Admit before asking for the part, so an open breaker sends nothing.
        match self.core.admit() {
            Err(err) => Box::pin(async move { Err(err) }),
            Ok(permit) => {
                let part = self.upload.put_part(data);
                Box::pin(async move {
                    let out = part.await;
                    permit.record(&out);
                    out
                })
            }
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let core = Arc::clone(&self.core);
        core.call(self.upload.complete()).await
    }

    async fn abort(&mut self) -> Result<()> {
        let core = Arc::clone(&self.core);
        core.call(self.upload.abort()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FaultyStore, ManualClock, Op};
    use futures::TryStreamExt;

    #[tokio::test]
    async fn resilience_streams_are_admitted_when_polled_and_judged_by_their_first_item() {
        let faulty = Arc::new(FaultyStore::memory());
        let config = BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        };
        let store = CircuitBreakerStore::new(
            Arc::clone(&faulty) as Arc<dyn ObjectStore>,
            config,
            Arc::new(ManualClock::new()),
        );
        faulty.set_down(true);
        // Made but never polled: no call, no failure.
        drop(store.list(None));
        assert_eq!(faulty.calls(Op::List), 0);
        assert_eq!(store.consecutive_failures(), 0);

        for _ in 0..2 {
            let listed: Result<Vec<_>> = store.list(None).try_collect().await;
            assert!(listed.is_err());
        }
        assert_eq!(store.state(), BreakerState::Open);
        let listed: Result<Vec<_>> = store.list(None).try_collect().await;
        let err = listed.unwrap_err();
        assert!(err.to_string().contains("circuit breaker is open"), "{err}");
        assert_eq!(faulty.calls(Op::List), 2);
    }
}
