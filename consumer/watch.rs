//! Watching the log in the background, and the consumer's health.
//!
//! [`Consumer::watch`] spawns a tokio task that refreshes on an interval
//! (with jitter, so many consumers do not poll in step). A poll that finds
//! nothing new is one small GET (see [`crate::announcer::Watcher`]); a poll
//! is bounded by one interval, so an unreachable store is reported within
//! one interval. While polls or refreshes fail (an open breaker included),
//! the delay grows exponentially up to a bound, the consumer is not
//! "current" ([`Health::is_current`]), and it keeps serving its last good
//! state throughout. Each tick refreshes the staleness gauge. A cache file
//! found corrupt by a background check triggers a rebuild at once. Time and
//! randomness come from the injected [`Clock`] and [`Rng`], so tests drive
//! the watcher with a manual clock and never sleep.
//!
//! With [`WatchConfig::notify`] the watcher also listens on a notification
//! channel (see `consumer/subscribe.rs`): a notification wakes it to poll
//! at once, and it polls at `interval` while the channel is healthy and at
//! the channel's fallback interval while it is not. Each change of the
//! channel's state is a [`WatchEvent::Channel`] and polls at once (a
//! notification may have been missed while it was down).
//!
//! Staleness is visible through [`Consumer::health`] and the `metrics`
//! crate (gauges `burrow_consumer_version`,
//! `burrow_consumer_newest_announced_version`,
//! `burrow_consumer_seconds_since_refresh`, `burrow_consumer_breaker_open`;
//! counters `burrow_consumer_refreshes_total` and
//! `burrow_consumer_refresh_failures_total`), so a Prometheus exporter can
//! serve them.

use super::subscribe::{ChannelState, NotifyConfig, Subscriber};
use super::{Consumer, NotifyHealth, RefreshReport};
use crate::blobstore::resilience::{BreakerState, Clock, Rng};
use std::sync::Arc;
use std::time::Duration;

/// How a background watcher polls.
#[derive(Clone)]
pub struct WatchConfig {
    /// Time between polls when all is well (default 5 s); with a healthy
    /// notification channel, the long interval between polls.
    pub interval: Duration,
    /// Each delay is the nominal one plus up to this fraction of it, at
    /// random (default 0.2).
    pub jitter: f64,
    /// Upper bound of the delay while polls fail (default 60 s).
    pub max_backoff: Duration,
    /// The clock the watcher waits on (a manual one in tests).
    pub clock: Arc<dyn Clock>,
    /// The randomness behind the jitter.
    pub rng: Arc<dyn Rng>,
    /// A notification channel to listen on (default none: polling only).
    pub notify: Option<NotifyConfig>,
}

impl std::fmt::Debug for WatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchConfig")
            .field("interval", &self.interval)
            .field("jitter", &self.jitter)
            .field("max_backoff", &self.max_backoff)
            .field("notify", &self.notify)
            .finish()
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            interval: Duration::from_secs(5),
            jitter: 0.2,
            max_backoff: Duration::from_secs(60),
            clock: Arc::new(crate::blobstore::resilience::SystemClock),
            rng: Arc::new(crate::blobstore::resilience::SeededRng::from_entropy()),
            notify: None,
        }
    }
}

impl WatchConfig {
    /// The delay before the next poll after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_from(self.interval, failures)
    }

    /// The poll interval while the notification channel is in `channel`'s
    /// state (`interval` without a channel, or while it is healthy).
    fn interval_for(&self, channel: Option<ChannelState>) -> Duration {
        match (&self.notify, channel) {
            (Some(notify), Some(state)) if !state.is_push() => notify.fallback_interval,
            _ => self.interval,
        }
    }

    fn delay_from(&self, interval: Duration, failures: u32) -> Duration {
        let nominal = if failures == 0 {
            interval
        } else {
            let factor = 1u32 << failures.min(16);
            interval.saturating_mul(factor).min(self.max_backoff)
        };
        let jitter_max = nominal.mul_f64(self.jitter.clamp(0.0, 1.0));
        nominal + crate::blobstore::resilience::random_duration(self.rng.as_ref(), jitter_max)
    }
}

/// What a background watcher reports.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The consumer moved to a new version.
    Refreshed(RefreshReport),
    /// A poll or refresh failed; the consumer keeps serving its state.
    Failed {
        /// What failed.
        error: String,
        /// Failures in a row, this one included.
        consecutive: u32,
        /// When the watcher tries again (grows while failures go on).
        retry_in: Duration,
    },
    /// The first successful poll after failures.
    Recovered,
    /// A cache file was found corrupt when this process re-verified it: it
    /// was evicted, and the state is rebuilt from blobs refetched from the
    /// store. The cache's fault, not the store's.
    CacheCorrupt(super::CacheFault),
    /// The notification channel changed state: push while
    /// [`ChannelState::Healthy`], polling at the fallback interval
    /// otherwise.
    Channel(ChannelState),
}

/// A consumer's view of its own freshness.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The version being served, if any.
    pub version: Option<u64>,
    /// The newest version the log announced (or pinned) when last polled.
    pub newest_target: Option<u64>,
    /// Time since the last successful refresh or poll that found the
    /// consumer up to date; `None` before the first.
    pub since_last_success: Option<Duration>,
    /// Failed polls or refreshes in a row.
    pub consecutive_failures: u32,
    /// The last failure's message, until a success clears it.
    pub last_error: Option<String>,
    /// The circuit breaker's state, when the consumer was given one.
    pub breaker: Option<BreakerState>,
    /// Whether every blob of the served state has been verified by this
    /// process (see [`Consumer::state_verified`]).
    pub verified: bool,
    /// Cache files found corrupt (each evicted and refetched).
    pub cache_faults: u64,
    /// The last of them.
    pub last_cache_fault: Option<String>,
    /// The notification channel's state and counts, when the watcher
    /// listens to one.
    pub notify: Option<NotifyHealth>,
}

impl Health {
    /// Whether the consumer serves the version the log asks for, as far as
    /// it can tell: never while the store cannot be reached (the last poll
    /// failed, or the breaker is open), since the log may have moved.
    pub fn is_current(&self) -> bool {
        self.version.is_some()
            && self.version == self.newest_target
            && self.consecutive_failures == 0
            && self.breaker != Some(BreakerState::Open)
    }
}

/// A running background watcher. Dropping it stops the task too; prefer
/// [`WatchHandle::shutdown`], which waits for it to finish.
pub struct WatchHandle {
    stop: tokio::sync::watch::Sender<bool>,
    events: tokio::sync::broadcast::Sender<WatchEvent>,
    /// Subscribed before the task started, so no event is missed.
    first: Option<tokio::sync::broadcast::Receiver<WatchEvent>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WatchHandle {
    /// Receives the watcher's events. The first call sees every event since
    /// the watcher started; later calls see events from then on.
    pub fn subscribe(&mut self) -> tokio::sync::broadcast::Receiver<WatchEvent> {
        self.first.take().unwrap_or_else(|| self.events.subscribe())
    }

    /// Stops the watcher and waits for its task to end. A refresh in
    /// progress finishes first (it is never left half-applied).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Waits for `receiver` to change; never, without one.
async fn changed<T>(
    receiver: Option<&mut tokio::sync::watch::Receiver<T>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.changed().await,
        None => std::future::pending().await,
    }
}

/// After the poll a notification woke: a notification of an entry the log
/// did not have is counted as unconfirmed (it moved nothing).
fn check_notification(consumer: &Consumer, n: &crate::notify::Notification, polled: bool) {
    let (_, seen) = consumer.log_position();
    if polled && seen.is_none_or(|s| s < n.seq) {
        tracing::warn!(
            seq = n.seq,
            version = n.version,
            "a notification named an entry the log does not have; ignored"
        );
        metrics::counter!("burrow_consumer_notify_unconfirmed_total").increment(1);
        consumer.set_notify_health(|h| h.unconfirmed += 1);
    }
}

impl Consumer {
    /// Starts refreshing in the background on the current tokio runtime.
    pub fn watch(self: &Arc<Self>, config: WatchConfig) -> WatchHandle {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (events, first) = tokio::sync::broadcast::channel(64);
        let consumer = Arc::clone(self);
        let sender = events.clone();
        let (mut channel_rx, mut wake_rx, subscriber) = match config.notify.clone() {
            Some(notify) => {
                let s = Subscriber::start(Arc::clone(self), notify, Arc::clone(&config.clock));
                (Some(s.state), Some(s.wake), Some(s.task))
            }
            None => (None, None, None),
        };
        let task = tokio::spawn(async move {
            // The subscriber lives as long as this task.
            let _subscriber = subscriber;
            let mut failures = 0u32;
            // The notification that woke this poll, to check against the log.
            let mut woken_by = None;
            let mut checks = consumer.rechecks.subscribe();
            let mut faults_seen = 0;
            'watch: loop {
                if *stopped.borrow() {
                    break;
                }
                // The poll is bounded by one interval, so an unreachable
                // store is reported within one interval, not after the
                // retry layer's attempts.
                let channel = channel_rx.as_ref().map(|rx| *rx.borrow());
                let interval = config.interval_for(channel);
                let outcome = consumer
                    .refresh_polling_within(interval, config.clock.as_ref())
                    .await;
                if let Some(n) = woken_by.take() {
                    check_notification(&consumer, &n, outcome.is_ok());
                }
                // Keeps the staleness gauge fresh without a health() caller.
                let _ = consumer.health();
                for fault in consumer.rechecks.faults().into_iter().skip(faults_seen) {
                    faults_seen += 1;
                    let _ = sender.send(WatchEvent::CacheCorrupt(fault));
                }
                let delay = match outcome {
                    Ok(report) => {
                        if failures > 0 {
                            let _ = sender.send(WatchEvent::Recovered);
                        }
                        failures = 0;
                        if let Some(report) = report {
                            let _ = sender.send(WatchEvent::Refreshed(report));
                        }
                        config.delay_from(interval, 0)
                    }
                    Err(error) => {
                        failures += 1;
                        // Back off while failing, the breaker open or not
                        // (an open breaker fails fast, so polling it at the
                        // nominal interval is a busy loop); recovery is
                        // seen within `max_backoff` (plus jitter).
                        let retry_in = config.delay_from(interval, failures);
                        tracing::warn!(%error, failures, ?retry_in, "background refresh failed; serving the current state");
                        let _ = sender.send(WatchEvent::Failed {
                            error: error.to_string(),
                            consecutive: failures,
                            retry_in,
                        });
                        retry_in
                    }
                };
                let sleep = config.clock.sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = stopped.changed() => break 'watch,
                        // A notification: poll now.
                        Ok(()) = changed(wake_rx.as_mut()) => {
                            woken_by = wake_rx.as_mut().and_then(|rx| *rx.borrow_and_update());
                            break;
                        }
                        // The channel went down or came back: poll now, at
                        // the interval of its new state.
                        Ok(()) = changed(channel_rx.as_mut()) => {
                            if let Some(rx) = channel_rx.as_mut() {
                                let _ = sender.send(WatchEvent::Channel(*rx.borrow_and_update()));
                            }
                            break;
                        }
                        // A background check found a corrupt cache file:
                        // rebuild now rather than at the next poll.
                        changed = checks.changed() => {
                            if changed.is_ok()
                                && (consumer.rechecks.rebuild_pending()
                                    || consumer.rechecks.fault_count() > faults_seen)
                            {
                                break;
                            }
                        }
                    }
                }
            }
        });
        WatchHandle {
            stop,
            events,
            first: Some(first),
            task: Some(task),
        }
    }
}
