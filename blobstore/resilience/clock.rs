//! Injected time and randomness: the [`Clock`] and [`Rng`] traits, the
//! production implementations ([`SystemClock`], [`SeededRng::from_entropy`])
//! and the deterministic ones tests use ([`ManualClock`], [`SeededRng::new`]).
//!
//! Every wait of the resilience decorators (backoff, per-call timeouts,
//! circuit-breaker cool-downs) goes through a [`Clock`], so a test with a
//! [`ManualClock`] never waits for real time: time moves only when the test
//! advances it, and every sleep that was asked for is recorded.

use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
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
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
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

/// A test clock whose time moves only when the test advances it.
///
/// Cloning shares the clock. Every sleep asked for is recorded
/// ([`ManualClock::requested_sleeps`]), so a test can check a backoff
/// schedule; pending sleeps complete when [`ManualClock::advance`] or
/// [`ManualClock::advance_to_next`] moves time past their deadline.
/// [`ManualClock::drive`] runs a future to completion, advancing time
/// whenever the future is idle, the way tokio's paused clock does.
#[derive(Debug, Clone)]
pub struct ManualClock {
    shared: Arc<ManualShared>,
}

#[derive(Debug)]
struct ManualShared {
    origin: Instant,
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    elapsed: Duration,
    next_id: u64,
    sleepers: BTreeMap<u64, Sleeper>,
    requested: Vec<Duration>,
}

#[derive(Debug)]
struct Sleeper {
    deadline: Duration,
    waker: Option<Waker>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock at its origin, with no sleepers.
    pub fn new() -> Self {
        ManualClock {
            shared: Arc::new(ManualShared {
                origin: Instant::now(),
                state: Mutex::new(ManualState::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ManualState> {
        lock(&self.shared.state)
    }

    /// How far the clock has been advanced since it was made.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    /// Moves time forward by `by`, completing the sleeps that are due.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.elapsed += by;
        wake_due(&mut state);
    }

    /// Moves time to the earliest pending sleep's deadline (if it is in the
    /// future) and completes it. Returns how far time moved, or `None` if no
    /// sleep is pending.
    pub fn advance_to_next(&self) -> Option<Duration> {
        let mut state = self.state();
        let deadline = state.sleepers.values().map(|s| s.deadline).min()?;
        let moved = deadline.saturating_sub(state.elapsed);
        state.elapsed += moved;
        wake_due(&mut state);
        Some(moved)
    }

    /// Sleeps that were started and have neither completed nor been dropped.
    pub fn pending_sleeps(&self) -> usize {
        self.state().sleepers.len()
    }

    /// Every duration passed to `sleep`, in call order.
    pub fn requested_sleeps(&self) -> Vec<Duration> {
        self.state().requested.clone()
    }

    /// Runs `fut` to completion. Whenever `fut` is idle (pending, and not
    /// woken by anything during its last poll or a yield to the runtime),
    /// time jumps to the next pending sleep's deadline.
    ///
    /// Only for futures that wait on nothing but this clock and each other
    /// (in-memory stores, [`crate::blobstore::faults::FaultyStore`]): a
    /// future waiting on real I/O (a local directory's blocking pool) looks
    /// idle too, and its timeouts would fire early.
    pub async fn drive<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let flag = Arc::new(WakeFlag::default());
        let waker = Waker::from(Arc::clone(&flag));
        loop {
            flag.woken.store(false, Ordering::SeqCst);
            let polled = futures::future::poll_fn(|cx| {
                *lock(&flag.outer) = Some(cx.waker().clone());
                Poll::Ready(fut.as_mut().poll(&mut Context::from_waker(&waker)))
            })
            .await;
            if let Poll::Ready(out) = polled {
                return out;
            }
            // Let spawned tasks run before deciding that all is idle.
            tokio::task::yield_now().await;
            if flag.woken.load(Ordering::SeqCst) {
                continue;
            }
            if self.advance_to_next().is_none() {
                // Nothing sleeps on this clock: wait for `fut` to be woken.
                futures::future::poll_fn(|cx| {
                    *lock(&flag.outer) = Some(cx.waker().clone());
                    if flag.woken.load(Ordering::SeqCst) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic (every update is one
    // assignment), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wake_due(state: &mut ManualState) {
    let now = state.elapsed;
    for sleeper in state.sleepers.values_mut() {
        if sleeper.deadline <= now {
            if let Some(waker) = sleeper.waker.take() {
                waker.wake();
            }
        }
    }
}

#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(waker) = lock(&self.outer).as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.shared.origin + self.elapsed()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut state = self.state();
        state.requested.push(duration);
        let id = state.next_id;
        state.next_id += 1;
        let deadline = state.elapsed + duration;
        state.sleepers.insert(
            id,
            Sleeper {
                deadline,
                waker: None,
            },
        );
        Box::pin(ManualSleep {
            clock: self.clone(),
            id,
        })
    }
}

struct ManualSleep {
    clock: ManualClock,
    id: u64,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.clock.state();
        let now = state.elapsed;
        match state.sleepers.get_mut(&self.id) {
            None => Poll::Ready(()),
            Some(sleeper) if sleeper.deadline <= now => {
                state.sleepers.remove(&self.id);
                Poll::Ready(())
            }
            Some(sleeper) => {
                sleeper.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        self.clock.state().sleepers.remove(&self.id);
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

    #[tokio::test]
    async fn resilience_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        let sleep = clock.sleep(Duration::from_secs(5));
        assert_eq!(clock.pending_sleeps(), 1);
        clock.advance(Duration::from_secs(4));
        let mut sleep = std::pin::pin!(sleep);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(clock.advance_to_next(), Some(Duration::from_secs(1)));
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        assert_eq!(clock.now() - start, Duration::from_secs(5));
        assert_eq!(clock.pending_sleeps(), 0);
        assert_eq!(clock.requested_sleeps(), vec![Duration::from_secs(5)]);
    }

    #[tokio::test]
    async fn resilience_drive_advances_idle_time_and_timeouts_fire() {
        let clock = ManualClock::new();
        let c = clock.clone();
        let out = clock
            .drive(async move {
                c.sleep(Duration::from_secs(3)).await;
                with_timeout(&c, Duration::from_secs(2), futures::future::pending::<()>()).await
            })
            .await;
        assert_eq!(out, None);
        assert_eq!(clock.elapsed(), Duration::from_secs(5));
    }
}
