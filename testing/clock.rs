//! [`ManualClock`]: a [`Clock`] whose time moves only when the test
//! advances it, so tests of backoff, timeouts and breaker cool-downs never
//! wait for real time. (The production clock, [`SystemClock`], and the
//! [`Clock`] contract live in `burrow::blobstore::resilience`.)
//!
//! [`SystemClock`]: crate::blobstore::resilience::SystemClock

use crate::blobstore::resilience::Clock;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

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
    /// The wall-clock time of a manual clock's origin (2026-01-01T00:00:00Z,
    /// in microseconds since the Unix epoch).
    pub const UNIX_START_MICROS: i64 = 1_767_225_600_000_000;

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
    /// (in-memory stores, [`crate::testing::FaultyStore`]): a
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

    /// [`ManualClock::UNIX_START_MICROS`] plus the time advanced, so that
    /// what a producer on this clock writes is the same on every run.
    fn unix_micros(&self) -> i64 {
        ManualClock::UNIX_START_MICROS + self.elapsed().as_micros() as i64
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
    use crate::blobstore::resilience::with_timeout;

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
