//! Injected time and randomness: the [`Clock`] and [`Rng`] traits, the
//! production implementations ([`SystemClock`], [`SeededRng::from_entropy`])
//! and a deterministic generator ([`SeededRng::new`]).
//!
//! Every wait of the resilience decorators (backoff, per-call timeouts,
//! circuit-breaker cool-downs) goes through a [`Clock`], so a test with the
//! manual clock of `burrow::testing` (feature `testing`) never waits for
//! real time: time moves only when the test advances it, and every sleep
//! that was asked for is recorded.

use futures::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of time.
///
/// # Contract
///
/// - `now` is monotonic: it never goes backwards.
/// - `sleep(d)` returns a future that completes once `now()` has moved at
///   least `d` past the time `sleep` was called, and not before. Dropping
///   the future cancels the sleep. `sleep(Duration::ZERO)` completes at once.
/// - Both are cheap and never fail; `sleep` does not block a thread.
/// - `unix_micros` is wall-clock time, for the timestamps written into
///   blobs and announcements (never for waits or timeouts, which use
///   `now`); it may jump, and moves with `now` on a manual clock.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
    /// Wall-clock time in microseconds since the Unix epoch.
    fn unix_micros(&self) -> i64;
    /// Waits for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// A source of uniformly distributed random numbers.
///
/// # Contract
///
/// - Every call returns 64 bits uniformly distributed over `u64`.
/// - It is shared between concurrent calls (`&self`); an implementation
///   seeded with a fixed value yields the same sequence of values every run.
/// - Never fails, never blocks.
pub trait Rng: fmt::Debug + Send + Sync + 'static {
    /// The next value of the sequence.
    fn next_u64(&self) -> u64;
}

/// A uniformly random duration in `[0, max]`, at nanosecond resolution.
pub fn random_duration(rng: &dyn Rng, max: Duration) -> Duration {
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_nanos == 0 {
        return Duration::ZERO;
    }
    // Multiply-shift: maps 64 random bits onto [0, max_nanos] without the
    // modulo bias mattering at these magnitudes.
    let scaled = (u128::from(rng.next_u64()) * (u128::from(max_nanos) + 1)) >> 64;
    Duration::from_nanos(scaled as u64)
}

/// Waits for `fut` for at most `timeout` of `clock`'s time; `None` if the
/// time ran out first (and `fut` is dropped).
pub async fn with_timeout<F: Future>(
    clock: &dyn Clock,
    timeout: Duration,
    fut: F,
) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match futures::future::select(fut, clock.sleep(timeout)).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(((), _)) => None,
    }
}

/// The real clock, on tokio's timer (so `tokio::time::pause()` pauses it
/// too). Needs a tokio runtime with the time driver enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn unix_micros(&self) -> i64 {
        crate::announcer::now_micros()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A deterministic generator (SplitMix64), safe to share between tasks.
pub struct SeededRng {
    state: AtomicU64,
}

impl SeededRng {
    /// The same sequence for the same seed, every run.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: AtomicU64::new(seed),
        }
    }

    /// Seeded from the process's hash randomness and the time: for
    /// production jitter, where different processes must not move in step.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        SeededRng::new(hasher.finish())
    }
}

impl fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededRng").finish_non_exhaustive()
    }
}

impl Rng for SeededRng {
    fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilience_seeded_rng_is_deterministic_and_durations_are_bounded() {
        let a = SeededRng::new(7);
        let b = SeededRng::new(7);
        let max = Duration::from_millis(250);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let d = random_duration(&a, max);
            assert!(d <= max);
            assert_eq!(d, random_duration(&b, max));
        }
        assert_eq!(random_duration(&a, Duration::ZERO), Duration::ZERO);
    }
}
