//! The consumer's side of hybrid announcements: a task that listens on a
//! notification channel ([`crate::notify`]) and wakes the background
//! watcher, which then polls the log at once.
//!
//! A notification is only a hint. The subscriber drops, and counts, what
//! cannot move the consumer: bytes that are not a message, a notification
//! of another dataset than the log's, and one whose entry the consumer has
//! already seen (duplicates, reordered and stale ones). What is left wakes
//! the watcher, whose refresh reads the log; a notification of an entry the
//! log turns out not to have is counted as unconfirmed and changes
//! nothing. So a forged notification costs at most one poll, and the
//! consumer only ever goes where the log says.
//!
//! The channel's state ([`ChannelState`]) decides the watcher's poll
//! interval: the long one (`WatchConfig::interval`) while it is
//! [`ChannelState::Healthy`], [`NotifyConfig::fallback_interval`] while it
//! is connecting, disconnected or silent. Silent means no message, not
//! even the publisher's heartbeat, for [`NotifyConfig::silence_limit`]:
//! a frozen server or a dead producer, which a quiet dataset never looks
//! like. A lost connection is subscribed again after a back-off (100 ms
//! doubling to [`NotifyConfig::max_reconnect_delay`]).

use super::Consumer;
use crate::blobstore::resilience::Clock;
use crate::notify::{Message, Notification, NotifyChannel};
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a consumer's watcher listens for notifications.
#[derive(Clone)]
pub struct NotifyConfig {
    /// The channel the producer publishes on.
    pub channel: Arc<dyn NotifyChannel>,
    /// The poll interval while the channel is not healthy (default 5 s).
    pub fallback_interval: Duration,
    /// Silence (no notification and no heartbeat) after which the channel
    /// counts as down (default 15 s: three of the publisher's heartbeats).
    pub silence_limit: Duration,
    /// The longest wait between subscribe attempts (default 5 s).
    pub max_reconnect_delay: Duration,
}

impl NotifyConfig {
    /// Listens on `channel` with the default intervals.
    pub fn new(channel: Arc<dyn NotifyChannel>) -> Self {
        NotifyConfig {
            channel,
            fallback_interval: Duration::from_secs(5),
            silence_limit: Duration::from_secs(15),
            max_reconnect_delay: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("channel", &self.channel)
            .field("fallback_interval", &self.fallback_interval)
            .field("silence_limit", &self.silence_limit)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .finish()
    }
}

/// Where a consumer's notification channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Not subscribed yet.
    Connecting,
    /// Subscribed and hearing from the publisher: the watcher polls at its
    /// long interval and refreshes when notified.
    Healthy,
    /// The connection failed or broke; subscribing again.
    Disconnected,
    /// Subscribed but silent for longer than the silence limit.
    Silent,
}

impl ChannelState {
    /// Whether the consumer learns versions by push (else by polling at
    /// the fallback interval).
    pub fn is_push(self) -> bool {
        self == ChannelState::Healthy
    }

    /// `push` or `polling`, with the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Connecting => "polling (channel connecting)",
            ChannelState::Healthy => "push",
            ChannelState::Disconnected => "polling (channel disconnected)",
            ChannelState::Silent => "polling (channel silent)",
        }
    }
}

impl std::fmt::Display for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the channel has brought so far (in [`super::Health::notify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyHealth {
    /// The channel's state.
    pub state: ChannelState,
    /// Messages received (heartbeats included).
    pub received: u64,
    /// Notifications that woke the watcher.
    pub acted_on: u64,
    /// Messages dropped unread: malformed, of another dataset, or of an
    /// entry already seen.
    pub ignored: u64,
    /// Notifications of an entry the log did not have when read.
    pub unconfirmed: u64,
}

impl NotifyHealth {
    pub(crate) fn new() -> Self {
        NotifyHealth {
            state: ChannelState::Connecting,
            received: 0,
            acted_on: 0,
            ignored: 0,
            unconfirmed: 0,
        }
    }
}

/// The running subscriber: the watcher reads its state and its wake-ups;
/// dropping it stops the task.
pub(crate) struct Subscriber {
    pub(crate) state: tokio::sync::watch::Receiver<ChannelState>,
    pub(crate) wake: tokio::sync::watch::Receiver<Option<Notification>>,
    pub(crate) task: AbortOnDrop,
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first wait before subscribing again.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

impl Subscriber {
    /// Starts listening for `consumer` on the current runtime.
    pub(crate) fn start(
        consumer: Arc<Consumer>,
        config: NotifyConfig,
        clock: Arc<dyn Clock>,
    ) -> Subscriber {
        let (state_tx, state) = tokio::sync::watch::channel(ChannelState::Connecting);
        let (wake_tx, wake) = tokio::sync::watch::channel(None);
        consumer.set_notify_health(|h| h.state = ChannelState::Connecting);
        let task = tokio::spawn(listen(consumer, config, clock, state_tx, wake_tx));
        Subscriber {
            state,
            wake,
            task: AbortOnDrop(task),
        }
    }
}

async fn listen(
    consumer: Arc<Consumer>,
    config: NotifyConfig,
    clock: Arc<dyn Clock>,
    state: tokio::sync::watch::Sender<ChannelState>,
    wake: tokio::sync::watch::Sender<Option<Notification>>,
) {
    let set = |new: ChannelState| {
        state.send_if_modified(|s| std::mem::replace(s, new) != new);
        consumer.set_notify_health(|h| h.state = new);
        metrics::gauge!("burrow_consumer_notify_push").set(if new.is_push() { 1.0 } else { 0.0 });
    };
    let mut delay = FIRST_RECONNECT_DELAY;
    loop {
        match config.channel.subscribe().await {
            Ok(mut stream) => {
                delay = FIRST_RECONNECT_DELAY;
                set(ChannelState::Healthy);
                loop {
                    let next = tokio::select! {
                        next = stream.next() => next,
                        _ = clock.sleep(config.silence_limit) => {
                            set(ChannelState::Silent);
                            continue;
                        }
                    };
                    match next {
                        Some(Ok(bytes)) => {
                            set(ChannelState::Healthy);
                            if let Some(n) = admit(&consumer, &bytes) {
                                wake.send_replace(Some(n));
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "notification channel failed; polling until it is back");
                            break;
                        }
                        None => {
                            tracing::warn!("notification channel closed; polling until it is back");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, ?delay, "could not subscribe to the notification channel");
            }
        }
        set(ChannelState::Disconnected);
        clock.sleep(delay).await;
        delay = (delay * 2).min(config.max_reconnect_delay.max(FIRST_RECONNECT_DELAY));
    }
}

/// Reads one message; the notification it carries if it may move the
/// consumer (see the module docs), counting the rest.
fn admit(consumer: &Consumer, bytes: &[u8]) -> Option<Notification> {
    let message = Message::decode(bytes);
    let (dataset, seen) = consumer.log_position();
    let verdict = match message {
        Err(error) => Err(format!("{error}")),
        Ok(Message::Heartbeat) => {
            consumer.set_notify_health(|h| h.received += 1);
            return None;
        }
        Ok(Message::Notify(n)) if dataset.is_some_and(|d| d != n.dataset_id) => Err(format!(
            "notification of dataset {}, not this log's",
            n.dataset_id
        )),
        Ok(Message::Notify(n)) if seen.is_some_and(|s| s >= n.seq) => {
            Err(format!("notification of entry {} already seen", n.seq))
        }
        Ok(Message::Notify(n)) => Ok(n),
    };
    consumer.set_notify_health(|h| {
        h.received += 1;
        match verdict {
            Ok(_) => h.acted_on += 1,
            Err(_) => h.ignored += 1,
        }
    });
    match verdict {
        Ok(n) => Some(n),
        Err(reason) => {
            tracing::debug!(%reason, "ignored a notification");
            metrics::counter!("burrow_consumer_notify_ignored_total").increment(1);
            None
        }
    }
}

/// Shared by the consumer and its subscriber.
pub(crate) type NotifyHealthCell = Mutex<Option<NotifyHealth>>;
