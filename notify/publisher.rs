//! The producer's side: [`Publisher`], a background task that delivers
//! notifications through a channel, with retries behind a circuit breaker,
//! from a bounded queue in which the newest notification of a dataset
//! supersedes older ones ([`NotifyQueue`]).
//!
//! [`Publisher::notify`] never waits and never fails: it puts the
//! notification in the queue and wakes the task. The task delivers the
//! queue's head; a failed attempt is retried after a backoff drawn with
//! full jitter from the retry policy's ceiling (`base_delay` doubling to
//! `max_delay`), each attempt bounded by `call_timeout`; while the breaker
//! is open the task waits out its cool-down and the notification stays
//! queued, so it is sent when the channel returns. With nothing to deliver
//! the task sends a heartbeat every `heartbeat_interval` (through the same
//! breaker: a heartbeat is also the breaker's trial call when idle).
//!
//! Health ([`Publisher::health`]: breaker state, queue depth, last
//! delivery) is also in the `metrics` crate (gauges
//! `burrow_producer_notify_queue_depth`, `burrow_producer_notify_breaker_open`;
//! counters `burrow_producer_notify_delivered_total`,
//! `burrow_producer_notify_failures_total`) and is handed to every
//! [`PublishListener`] with each delivery and failure.
//!
//! A [`Publisher`] is a producer [`CycleListener`]: added with
//! `ProducerBuilder::listener`, it queues the notification of every entry
//! a cycle announces. Pins and unpins are appended by whoever writes them
//! (the CLI's `pin`), who calls [`Publisher::notify`] with
//! [`Notification::of`] the entry.

use super::{Message, Notification, NotifyChannel, NotifyError};
use crate::blobstore::resilience::{
    random_duration, with_timeout, BreakerConfig, BreakerState, CallBreaker, Clock, RetryPolicy,
    Rng, SeededRng, SystemClock,
};
use crate::producer::{CycleEvent, CycleListener};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The retry queue: at most one notification per dataset (the newest
/// wins), at most `capacity` datasets (the oldest is dropped past that).
#[derive(Debug, Clone)]
pub struct NotifyQueue {
    items: VecDeque<Notification>,
    capacity: usize,
    superseded: u64,
    dropped: u64,
}

impl NotifyQueue {
    /// An empty queue of at most `capacity` notifications (0 is taken as 1).
    pub fn new(capacity: usize) -> Self {
        NotifyQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            superseded: 0,
            dropped: 0,
        }
    }

    /// Queues `n`. A queued notification of the same dataset with a lower
    /// `seq` is replaced; one with the same or a higher `seq` makes `n`
    /// redundant. Either way one of the two is counted as superseded.
    pub fn push(&mut self, n: Notification) {
        if let Some(pos) = self.items.iter().position(|q| q.dataset_id == n.dataset_id) {
            self.superseded += 1;
            if self.items[pos].seq >= n.seq {
                return;
            }
            self.items.remove(pos);
        }
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(n);
    }

    /// The notification to deliver next.
    pub fn front(&self) -> Option<Notification> {
        self.items.front().copied()
    }

    /// Removes `n` once delivered (if it was superseded meanwhile, its
    /// successor stays queued).
    pub fn delivered(&mut self, n: &Notification) {
        self.items.retain(|q| q != n);
    }

    /// Notifications waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Notifications made redundant by a newer one of their dataset.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// How a [`Publisher`] delivers.
#[derive(Clone)]
pub struct PublisherConfig {
    /// Backoff between attempts (`base_delay`, `max_delay`, with full
    /// jitter) and the bound of one attempt (`call_timeout`). Attempts go
    /// on until delivery or supersession: the queue is the retry budget.
    pub retry: RetryPolicy,
    /// When the breaker in front of the channel opens, and its cool-down.
    pub breaker: BreakerConfig,
    /// Datasets whose notification may wait in the queue (default 64).
    pub queue_capacity: usize,
    /// Time between heartbeats while nothing is delivered (default 5 s).
    pub heartbeat_interval: Duration,
    /// Who hears of each delivery and failure.
    pub listeners: Vec<Arc<dyn PublishListener>>,
    /// The clock of every wait.
    pub clock: Arc<dyn Clock>,
    /// The randomness behind the jitter.
    pub rng: Arc<dyn Rng>,
}

impl std::fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("queue_capacity", &self.queue_capacity)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl Default for PublisherConfig {
    /// Attempts of at most 2 s, backoff from 100 ms to 5 s; the breaker
    /// opens after 5 failures in a row for 5 s; 64 queued datasets; a
    /// heartbeat every 5 s.
    fn default() -> Self {
        PublisherConfig {
            retry: RetryPolicy {
                call_timeout: Duration::from_secs(2),
                ..RetryPolicy::default()
            },
            breaker: BreakerConfig {
                cool_down: Duration::from_secs(5),
                ..BreakerConfig::default()
            },
            queue_capacity: 64,
            heartbeat_interval: Duration::from_secs(5),
            listeners: Vec::new(),
            clock: Arc::new(SystemClock),
            rng: Arc::new(SeededRng::from_entropy()),
        }
    }
}

/// The publisher's health.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherHealth {
    /// The breaker in front of the channel.
    pub breaker: BreakerState,
    /// Notifications waiting to be delivered.
    pub queue_depth: usize,
    /// Time since the last delivery (notification or heartbeat); `None`
    /// before the first.
    pub since_last_delivery: Option<Duration>,
    /// The last notification delivered.
    pub last_delivered: Option<Notification>,
    /// Notifications delivered.
    pub delivered: u64,
    /// Attempts that failed (heartbeats included).
    pub failed_attempts: u64,
    /// Notifications made redundant by a newer one.
    pub superseded: u64,
    /// Notifications dropped from a full queue.
    pub dropped: u64,
    /// The last failure, until a delivery clears it.
    pub last_error: Option<String>,
}

/// What a [`Publisher`] reports to its listeners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PublishEvent {
    /// A notification reached the channel.
    Delivered(Notification),
    /// An attempt failed; the notification (`None` for a heartbeat) stays
    /// queued.
    Failed {
        /// The notification attempted.
        notification: Option<Notification>,
        /// Why it failed.
        error: String,
        /// Failed attempts in a row.
        consecutive: u32,
    },
}

/// Hears of a [`Publisher`]'s deliveries and failures, with its health.
///
/// # Contract
///
/// Called from the publisher's task, in order; must be quick and must not
/// call back into the publisher's `shutdown`.
pub trait PublishListener: Send + Sync {
    /// Sees one event and the health right after it.
    fn on_event(&self, event: &PublishEvent, health: &PublisherHealth);
}

#[derive(Default)]
struct Stats {
    delivered: u64,
    failed_attempts: u64,
    last_delivery: Option<Instant>,
    last_delivered: Option<Notification>,
    last_error: Option<String>,
}

struct Shared {
    queue: Mutex<NotifyQueue>,
    stats: Mutex<Stats>,
    wake: tokio::sync::Notify,
    breaker: CallBreaker,
    config: PublisherConfig,
}

impl Shared {
    fn health(&self) -> PublisherHealth {
        let queue = self.queue.lock().expect("notify queue lock");
        let stats = self.stats.lock().expect("notify stats lock");
        let now = self.config.clock.now();
        PublisherHealth {
            breaker: self.breaker.state(),
            queue_depth: queue.len(),
            since_last_delivery: stats
                .last_delivery
                .map(|t| now.saturating_duration_since(t)),
            last_delivered: stats.last_delivered,
            delivered: stats.delivered,
            failed_attempts: stats.failed_attempts,
            superseded: queue.superseded(),
            dropped: queue.dropped(),
            last_error: stats.last_error.clone(),
        }
    }

    fn emit(&self, event: PublishEvent) {
        let health = self.health();
        metrics::gauge!("burrow_producer_notify_queue_depth").set(health.queue_depth as f64);
        let open = health.breaker != BreakerState::Closed;
        metrics::gauge!("burrow_producer_notify_breaker_open").set(if open { 1.0 } else { 0.0 });
        match &event {
            PublishEvent::Delivered(_) => {
                metrics::counter!("burrow_producer_notify_delivered_total").increment(1)
            }
            PublishEvent::Failed { .. } => {
                metrics::counter!("burrow_producer_notify_failures_total").increment(1)
            }
        }
        for listener in &self.config.listeners {
            listener.on_event(&event, &health);
        }
    }

    /// One attempt through the breaker, bounded by the call timeout.
    async fn attempt(
        &self,
        channel: &dyn NotifyChannel,
        message: Message,
    ) -> Result<(), NotifyError> {
        let permit = self.breaker.admit()?;
        let timeout = self.config.retry.call_timeout;
        match with_timeout(
            &*self.config.clock,
            timeout,
            channel.publish(message.encode()),
        )
        .await
        {
            Some(Ok(())) => {
                permit.finish(true);
                let mut stats = self.stats.lock().expect("notify stats lock");
                stats.last_delivery = Some(self.config.clock.now());
                stats.last_error = None;
                Ok(())
            }
            Some(Err(e)) => {
                permit.finish(false);
                Err(e)
            }
            None => {
                permit.finish(false);
                Err(NotifyError::TimedOut {
                    channel: format!("{channel:?}"),
                    op: "publish",
                })
            }
        }
    }

    fn failed(&self, notification: Option<Notification>, error: &NotifyError, consecutive: u32) {
        {
            let mut stats = self.stats.lock().expect("notify stats lock");
            stats.failed_attempts += 1;
            stats.last_error = Some(error.to_string());
        }
        tracing::debug!(%error, consecutive, "notification not delivered; it stays queued");
        self.emit(PublishEvent::Failed {
            notification,
            error: error.to_string(),
            consecutive,
        });
    }
}

/// Delivers notifications in the background (see the module docs).
/// Dropping it stops the task; [`Publisher::shutdown`] also waits for it.
pub struct Publisher {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the task on the current tokio runtime.
    pub fn start(channel: Arc<dyn NotifyChannel>, config: PublisherConfig) -> Publisher {
        let breaker = CallBreaker::new(
            format!("notify {channel:?}"),
            config.breaker.clone(),
            Arc::clone(&config.clock),
        );
        let shared = Arc::new(Shared {
            queue: Mutex::new(NotifyQueue::new(config.queue_capacity)),
            stats: Mutex::new(Stats::default()),
            wake: tokio::sync::Notify::new(),
            breaker,
            config,
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), channel, stopped));
        Publisher {
            shared,
            stop,
            task: Some(task),
        }
    }

    /// Queues `n` for delivery; never waits, never fails.
    pub fn notify(&self, n: Notification) {
        let depth = {
            let mut queue = self.shared.queue.lock().expect("notify queue lock");
            queue.push(n);
            queue.len()
        };
        metrics::gauge!("burrow_producer_notify_queue_depth").set(depth as f64);
        self.shared.wake.notify_one();
    }

    /// The publisher's health.
    pub fn health(&self) -> PublisherHealth {
        self.shared.health()
    }

    /// Waits until nothing is queued (every notification delivered or
    /// superseded), at most `limit`; whether the queue emptied. For a
    /// process about to exit, such as `burrow demo`.
    pub async fn drain(&self, limit: Duration) -> bool {
        let clock = &self.shared.config.clock;
        let deadline = clock.now() + limit;
        loop {
            if self
                .shared
                .queue
                .lock()
                .expect("notify queue lock")
                .is_empty()
            {
                return true;
            }
            if clock.now() >= deadline {
                return false;
            }
            clock.sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the task and waits for it (what is still queued is dropped:
    /// consumers will see it in the log at their next poll).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Queues the notification of every entry a cycle announces.
impl CycleListener for Publisher {
    fn on_event(&self, event: &CycleEvent<'_>) {
        if let CycleEvent::Announced { report } = event {
            if let Some(entry) = &report.announcement {
                self.notify(Notification::of(entry));
            }
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    channel: Arc<dyn NotifyChannel>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let clock = Arc::clone(&shared.config.clock);
    let heartbeat = shared
        .config
        .heartbeat_interval
        .max(Duration::from_millis(1));
    let mut failures = 0u32;
    let mut next_heartbeat = clock.now() + heartbeat;
    loop {
        if *stopped.borrow() {
            return;
        }
        let head = shared.queue.lock().expect("notify queue lock").front();
        let delay = match head {
            Some(n) => match shared.attempt(&*channel, Message::Notify(n)).await {
                Ok(()) => {
                    failures = 0;
                    shared
                        .queue
                        .lock()
                        .expect("notify queue lock")
                        .delivered(&n);
                    {
                        let mut stats = shared.stats.lock().expect("notify stats lock");
                        stats.delivered += 1;
                        stats.last_delivered = Some(n);
                    }
                    next_heartbeat = clock.now() + heartbeat;
                    shared.emit(PublishEvent::Delivered(n));
                    continue;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    shared.failed(Some(n), &error, failures);
                    backoff(&shared, failures)
                }
            },
            None => {
                let now = clock.now();
                if now >= next_heartbeat {
                    next_heartbeat = now + heartbeat;
                    match shared.attempt(&*channel, Message::Heartbeat).await {
                        Ok(()) => failures = 0,
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            shared.failed(None, &error, failures);
                        }
                    }
                    continue;
                }
                // Wait for work or the next heartbeat.
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = clock.sleep(next_heartbeat - now) => {}
                    _ = stopped.changed() => return,
                }
                continue;
            }
        };
        tokio::select! {
            _ = clock.sleep(delay) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// The wait after `failures` failed attempts in a row: the breaker's
/// cool-down while it is open, else full jitter under the retry policy's
/// ceiling.
fn backoff(shared: &Shared, failures: u32) -> Duration {
    let config = &shared.config;
    if shared.breaker.state() == BreakerState::Open {
        return config.breaker.cool_down;
    }
    random_duration(&*config.rng, config.retry.backoff_ceiling(failures))
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcer::AnnounceKind;
    use crate::notify::MemoryChannel;
    use crate::schema::DatasetId;
    use futures::StreamExt;

    fn note(dataset_id: DatasetId, seq: u64) -> Notification {
        Notification {
            dataset_id,
            seq,
            version: seq * 10,
            kind: AnnounceKind::Announce,
        }
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Polls `f` until it holds, failing the test past the deadline.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn fast_config() -> PublisherConfig {
        PublisherConfig {
            retry: RetryPolicy {
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
                call_timeout: Duration::from_secs(1),
                ..RetryPolicy::default()
            },
            breaker: BreakerConfig {
                failure_threshold: 2,
                cool_down: Duration::from_millis(30),
                half_open_trials: 1,
            },
            heartbeat_interval: Duration::from_secs(3600),
            ..PublisherConfig::default()
        }
    }

    #[test]
    fn notify_queue_newest_notification_of_a_dataset_supersedes_older_ones() {
        let (a, b, c) = (DatasetId::mint(), DatasetId::mint(), DatasetId::mint());
        let mut q = NotifyQueue::new(2);
        q.push(note(a, 1));
        q.push(note(a, 2));
        assert_eq!(
            (q.len(), q.front(), q.superseded()),
            (1, Some(note(a, 2)), 1)
        );
        // A stale or duplicate one never replaces the newer.
        q.push(note(a, 1));
        q.push(note(a, 2));
        assert_eq!(
            (q.len(), q.front(), q.superseded()),
            (1, Some(note(a, 2)), 3)
        );
        q.push(note(b, 5));
        assert_eq!(q.len(), 2);
        // Full: the oldest dataset's notification is dropped and counted.
        q.push(note(c, 1));
        assert_eq!((q.len(), q.dropped()), (2, 1));
        assert_eq!(q.front(), Some(note(b, 5)));
        // Delivered while superseded: the successor stays.
        q.push(note(b, 6));
        q.delivered(&note(b, 5));
        assert_eq!(q.len(), 2);
        q.delivered(&note(c, 1));
        assert_eq!(q.front(), Some(note(b, 6)));
    }

    #[tokio::test]
    async fn notify_publisher_delivers_in_the_background_and_sends_heartbeats() {
        let channel = Arc::new(MemoryChannel::new());
        let mut sub = channel.subscribe().await.unwrap();
        let publisher = Publisher::start(
            Arc::clone(&channel) as Arc<dyn NotifyChannel>,
            PublisherConfig {
                heartbeat_interval: Duration::from_millis(20),
                ..fast_config()
            },
        );
        let n = note(DatasetId::mint(), 3);
        publisher.notify(n);
        let got = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(Message::decode(&got).unwrap(), Message::Notify(n));
        let next = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(Message::decode(&next).unwrap(), Message::Heartbeat);
        let health = publisher.health();
        assert_eq!((health.delivered, health.queue_depth), (1, 0));
        assert_eq!(health.last_delivered, Some(n));
        assert_eq!(health.breaker, BreakerState::Closed);
        publisher.shutdown().await;
    }

    struct Recorder(Mutex<Vec<(String, BreakerState, usize)>>);
    impl PublishListener for Recorder {
        fn on_event(&self, event: &PublishEvent, health: &PublisherHealth) {
            let what = match event {
                PublishEvent::Delivered(n) => format!("delivered {}", n.seq),
                PublishEvent::Failed { .. } => "failed".to_string(),
            };
            self.0
                .lock()
                .unwrap()
                .push((what, health.breaker, health.queue_depth));
        }
    }

    #[tokio::test]
    async fn notify_publisher_opens_its_breaker_while_the_channel_is_down_and_drains_the_newest_after(
    ) {
        let channel = Arc::new(MemoryChannel::new());
        channel.set_down(true);
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let publisher = Publisher::start(
            Arc::clone(&channel) as Arc<dyn NotifyChannel>,
            PublisherConfig {
                listeners: vec![Arc::clone(&recorder) as Arc<dyn PublishListener>],
                ..fast_config()
            },
        );
        let id = DatasetId::mint();
        publisher.notify(note(id, 1));
        until("the breaker opens", || {
            publisher.health().breaker == BreakerState::Open
        })
        .await;
        // Queued while the channel is down: the newer one supersedes.
        publisher.notify(note(id, 2));
        let health = publisher.health();
        assert_eq!(health.queue_depth, 1);
        assert!(health.failed_attempts >= 2, "{health:?}");
        assert!(health.last_error.is_some());
        assert_eq!(health.delivered, 0);
        // Open: attempts stop reaching the channel (one trial per cool-down).
        let failed = health.failed_attempts;
        channel.set_down(false);
        until("the queue drains", || publisher.health().queue_depth == 0).await;
        let health = publisher.health();
        assert_eq!(health.delivered, 1);
        assert_eq!(health.last_delivered, Some(note(id, 2)));
        assert_eq!(health.breaker, BreakerState::Closed);
        assert!(health.failed_attempts <= failed + 1, "{health:?}");
        assert_eq!(channel.published(), 1);
        let events = recorder.0.lock().unwrap().clone();
        assert!(
            events.iter().any(|(_, b, _)| *b == BreakerState::Open),
            "{events:?}"
        );
        assert_eq!(
            events.last().unwrap(),
            &("delivered 2".to_string(), BreakerState::Closed, 0)
        );
        publisher.shutdown().await;
    }
}
