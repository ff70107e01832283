//! Resilience for store calls: retries with backoff and timeouts
//! ([`RetryStore`]) and circuit breaking ([`CircuitBreakerStore`]), as
//! `object_store::ObjectStore` decorators over any `Arc<dyn ObjectStore>`,
//! with time and randomness injected ([`Clock`], [`Rng`]). Both are a
//! [`Decorator`] over [`Decorated`], which writes the forwarding of every
//! `ObjectStore` method once for all decorators.
//!
//! # Stacking
//!
//! [`Resilience::wrap`] stacks `Retry(CircuitBreaker(store))`: the retry
//! layer is outside, so every attempt is one call the breaker sees. When the
//! store goes down the breaker opens within one logical call's attempts, and
//! the retry layer stops at once on the breaker's "open" error instead of
//! spending its whole budget on a store known to be down. (The other order
//! would need `failure_threshold` whole retried calls, each up to
//! `max_elapsed`, before opening.) The per-call timeout is the retry layer's;
//! a call it abandons counts as a failure for the breaker.
//!
//! # Errors
//!
//! The decorators speak `object_store::Error`, so their own errors ride in
//! `object_store::Error::Generic` with a [`ResilienceError`] as the source
//! ([`resilience_error`] finds it). Through [`crate::blobstore::BlobStore`]
//! they become `StoreError::Backend`, and `StoreError::is_retryable` says
//! `true` for all three: a timeout, an exhausted retry budget and an open
//! breaker all describe a store that may work again later. Within one
//! call, though, the retry layer only retries timeouts and the store's own
//! transient errors ([`is_transient`]); it never retries an open breaker.
//! Use `StoreError::is_circuit_open` to tell "the store is known to be
//! down, fail fast" from the rest.
//!
//! Backends with their own retry loop (object_store's HTTP client retries
//! by default, for up to three minutes) should have it turned down when
//! stacked under a [`RetryStore`], or retries multiply.

mod breaker;
mod clock;
pub mod decorated;
mod retry;

pub use breaker::{
    Breaker, BreakerConfig, BreakerPermit, BreakerState, CallBreaker, CircuitBreakerStore,
};
pub use clock::{random_duration, with_timeout, Clock, Rng, SeededRng, SystemClock};
pub use decorated::{Decorated, Decorator, Op};
pub use retry::{Retry, RetryPolicy, RetryStore};

use crate::blobstore::{BlobStore, StoreError};
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the resilience decorators. They reach callers inside
/// `object_store::Error::Generic` (see the module docs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResilienceError {
    /// One call took longer than the per-call timeout and was abandoned.
    #[error("{op} of {path:?} timed out after {after:?}")]
    Timeout {
        /// The object store call.
        op: &'static str,
        /// The object it was applied to.
        path: String,
        /// The per-call timeout that ran out.
        after: Duration,
    },
    /// Every attempt the retry policy allows failed with a transient error;
    /// `last` is the last attempt's error.
    #[error(
        "{op} of {path:?} failed after {attempts} attempt(s) over {elapsed:?}; last error: {last}"
    )]
    RetriesExhausted {
        /// The object store call.
        op: &'static str,
        /// The object it was applied to.
        path: String,
        /// How many attempts were made.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        last: object_store::Error,
    },
    /// The circuit breaker is open: the store failed too many consecutive
    /// calls, and calls fail fast without reaching it until a trial call
    /// succeeds.
    #[error(
        "circuit breaker is open for {store}: the store is failing, so calls fail fast without \
         reaching it ({detail})"
    )]
    CircuitOpen {
        /// The store behind the breaker.
        store: String,
        /// The breaker's state and when it will let a trial call through.
        detail: String,
    },
}

impl ResilienceError {
    pub(crate) fn into_object_error(self) -> object_store::Error {
        let store = match self {
            ResilienceError::CircuitOpen { .. } => "CircuitBreaker",
            _ => "Retry",
        };
        object_store::Error::Generic {
            store,
            source: Box::new(self),
        }
    }
}

/// The [`ResilienceError`] inside `err`, if a decorator made it.
pub fn resilience_error(err: &object_store::Error) -> Option<&ResilienceError> {
    match err {
        object_store::Error::Generic { source, .. } => source.downcast_ref::<ResilienceError>(),
        _ => None,
    }
}

/// Whether the same call may succeed if tried again right away: a store's
/// `Generic` error (5xx, connection reset, I/O) or a timeout. Never
/// `NotFound`, `AlreadyExists`, `Precondition`, `NotModified`,
/// `NotSupported`, `NotImplemented`, `InvalidPath`, permission or
/// authentication errors, an open circuit breaker or an exhausted retry
/// budget (retrying those in a loop cannot help).
pub fn is_transient(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::Generic { .. } => matches!(
            resilience_error(err),
            None | Some(ResilienceError::Timeout { .. })
        ),
        _ => false,
    }
}

/// Whether `err` says the store is unhealthy (the circuit breaker counts
/// these): every `Generic` error, this module's own included. An error
/// that is the store's correct answer (`NotFound`, `AlreadyExists`, a
/// failed precondition) or a refusal (permissions, unsupported) means the
/// store works.
pub fn indicates_unhealthy(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::Generic { .. })
}

impl StoreError {
    /// Whether the call failed fast because a circuit breaker is open (the
    /// store is known to be failing; try again after the cool-down).
    pub fn is_circuit_open(&self) -> bool {
        match self {
            StoreError::Backend { source, .. } => matches!(
                resilience_error(source),
                Some(ResilienceError::CircuitOpen { .. })
            ),
            _ => false,
        }
    }
}

/// Configuration of the resilience stack: a retry policy, a breaker, and
/// the clock and randomness both use.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// When the breaker opens and how long it stays open.
    pub breaker: BreakerConfig,
    /// The clock both use (injected, so tests run on a manual one).
    pub clock: Arc<dyn Clock>,
    /// The randomness behind the retries' jitter.
    pub rng: Arc<dyn Rng>,
}

impl Resilience {
    /// Default policies with the given clock and randomness.
    pub fn new(clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        Resilience {
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            clock,
            rng,
        }
    }

    /// Default policies on the real clock, with entropy-seeded jitter.
    pub fn system() -> Self {
        Resilience::new(Arc::new(SystemClock), Arc::new(SeededRng::from_entropy()))
    }

    /// The same stack with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same stack with another breaker configuration.
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// `Retry(CircuitBreaker(inner))`, with a handle on the breaker.
    pub fn wrap(&self, inner: Arc<dyn ObjectStore>) -> ResilientStack {
        let breaker = Arc::new(CircuitBreakerStore::new(
            inner,
            self.breaker.clone(),
            Arc::clone(&self.clock),
        ));
        let store = RetryStore::new(
            Arc::clone(&breaker) as Arc<dyn ObjectStore>,
            self.retry.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&self.rng),
        );
        ResilientStack {
            store: Arc::new(store),
            breaker,
        }
    }
}

/// The stacked store and its breaker (to read its state).
#[derive(Debug, Clone)]
pub struct ResilientStack {
    /// `Retry(CircuitBreaker(inner))`: what callers use.
    pub store: Arc<dyn ObjectStore>,
    /// The breaker inside it, to read its state.
    pub breaker: Arc<CircuitBreakerStore>,
}

impl BlobStore {
    /// The same blob store (prefix and description) with its calls going
    /// through `Retry(CircuitBreaker(..))`. Use [`Resilience::wrap`] and
    /// [`BlobStore::new`] instead to keep a handle on the breaker.
    pub fn resilient(self, resilience: &Resilience) -> BlobStore {
        self.resilient_with_breaker(resilience).0
    }

    /// Like [`BlobStore::resilient`], also returning the breaker, so that
    /// its state can be watched (see `ConsumerBuilder::breaker`).
    pub fn resilient_with_breaker(
        self,
        resilience: &Resilience,
    ) -> (BlobStore, Arc<CircuitBreakerStore>) {
        let stack = resilience.wrap(self.inner.clone());
        (
            BlobStore {
                inner: stack.store,
                ..self
            },
            stack.breaker,
        )
    }
}
