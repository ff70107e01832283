//! Hybrid announcements: a push channel beside the announcement log.
//!
//! The log in the blob store stays the only source of truth. A notification
//! only says "look now": it names the dataset, the log entry's `seq`, its
//! version and its kind, and a consumer that receives one checks it against
//! the log before it acts. A channel that is down, slow or hostile can
//! delay a consumer (to its fallback poll interval) but never move it
//! anywhere the log does not say.
//!
//! Invariants:
//!
//! - Publishing never holds up or fails a producer's cycle: the
//!   [`Publisher`] takes notifications into a bounded queue without
//!   waiting, and a background task delivers them, with retries (backoff
//!   and full jitter, [`RetryPolicy`](crate::blobstore::resilience::RetryPolicy))
//!   behind a circuit breaker ([`CallBreaker`](crate::blobstore::resilience::CallBreaker)).
//! - The queue holds at most one notification per dataset: the newest
//!   (highest `seq`) supersedes older ones, since a consumer told to look
//!   reads the whole log from where it is. It holds at most
//!   `queue_capacity` datasets; past that, the oldest is dropped and
//!   counted.
//! - Bytes from a channel are hostile: [`Message::decode`] bounds their
//!   length and checks every field before anything else reads them.
//!
//! Where each part lives: the wire format, the [`NotifyChannel`] trait and
//! [`open_channel`] (a `--notify` URL) here; `memory`: [`MemoryChannel`],
//! an in-process channel (tests, and a producer and consumers in one
//! process); `redis`: Redis pub/sub (feature `redis`); `nats`: NATS core
//! (feature `nats`); `url`: the channel name in a URL, passwords kept out
//! of messages; `publisher`: the producer's side. The consumer's side, the
//! subscription that wakes the watcher, is `consumer/subscribe.rs`
//! ([`crate::consumer::NotifyConfig`]).
//!
//! Both servers are tested for real (`tests/notify.rs` starts
//! `redis-server` and `nats-server`): push with polling an hour apart, the
//! server killed and restarted, frozen (SIGSTOP) and thawed, hostile
//! messages, eight consumers across a restart.

mod memory;
#[cfg(feature = "nats")]
mod nats;
mod publisher;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod url;

pub use memory::MemoryChannel;
#[cfg(feature = "nats")]
pub use nats::{NatsChannel, DEFAULT_NATS_SUBJECT};
pub use publisher::{
    NotifyQueue, PublishEvent, PublishListener, Publisher, PublisherConfig, PublisherHealth,
};
#[cfg(feature = "redis")]
pub use redis::{RedisChannel, DEFAULT_REDIS_CHANNEL};

use crate::announcer::{AnnounceKind, Announcement};
use crate::schema::DatasetId;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::fmt;

/// Errors of a notification channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The channel's server could not be reached, or the connection broke.
    #[error("notification channel {channel}: {op} failed: {reason}")]
    Unavailable {
        /// The channel (its URL or name).
        channel: String,
        /// What was being done (`publish`, `subscribe`).
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A call took longer than its timeout.
    #[error("notification channel {channel}: {op} timed out")]
    TimedOut {
        /// The channel (its URL or name).
        channel: String,
        /// What was being done.
        op: &'static str,
    },
    /// The circuit breaker in front of the channel is open.
    #[error(transparent)]
    CircuitOpen(#[from] Box<crate::blobstore::resilience::ResilienceError>),
    /// A channel URL this build cannot use.
    #[error("notification channel {url}: {reason}")]
    Config {
        /// The URL (without a password).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message's bytes are not a notification or a heartbeat.
    #[error("malformed notification ({len} bytes): {reason}")]
    Malformed {
        /// The message's length.
        len: usize,
        /// What was wrong.
        reason: String,
    },
}

/// "Look at the log now": entry `seq` of dataset `dataset_id` announces
/// (or pins) `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// The dataset whose log has the entry.
    pub dataset_id: DatasetId,
    /// The entry's sequence number in the log.
    pub seq: u64,
    /// The version consumers should now be at (the pinned one for a pin).
    pub version: u64,
    /// The entry's kind.
    pub kind: AnnounceKind,
}

impl Notification {
    /// The notification of a log entry just appended.
    pub fn of(entry: &Announcement) -> Notification {
        Notification {
            dataset_id: entry.dataset_id,
            seq: entry.seq,
            version: entry.target(),
            kind: entry.kind,
        }
    }
}

/// What travels on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A log entry was appended.
    Notify(Notification),
    /// A publisher is alive (sent while it has nothing to deliver), so that
    /// a subscriber can tell a silent channel from a quiet dataset.
    Heartbeat,
}

/// The first word of every message, with the wire format's version.
const MAGIC: &str = "burrow-notify/1";

/// The longest message [`Message::decode`] reads.
pub const MAX_MESSAGE_BYTES: usize = 256;

impl Message {
    /// One line of ASCII: `burrow-notify/1 heartbeat`, or
    /// `burrow-notify/1 <kind> <dataset id, 32 hex digits> <seq> <version>`.
    pub fn encode(&self) -> Bytes {
        Bytes::from(match self {
            Message::Heartbeat => format!("{MAGIC} heartbeat"),
            Message::Notify(n) => format!(
                "{MAGIC} {} {} {} {}",
                n.kind.as_str(),
                n.dataset_id,
                n.seq,
                n.version
            ),
        })
    }

    /// Reads a message; anything else is [`NotifyError::Malformed`] naming
    /// what was wrong.
    pub fn decode(bytes: &[u8]) -> Result<Message, NotifyError> {
        let bad = |reason: &str| NotifyError::Malformed {
            len: bytes.len(),
            reason: reason.to_string(),
        };
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(bad("longer than any message"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let words: Vec<&str> = text.split(' ').collect();
        match words[..] {
            [MAGIC, "heartbeat"] => Ok(Message::Heartbeat),
            [MAGIC, kind, id, seq, version] => {
                let kind = match kind {
                    "announce" => AnnounceKind::Announce,
                    "pin" => AnnounceKind::Pin,
                    "unpin" => AnnounceKind::Unpin,
                    _ => return Err(bad("unknown kind")),
                };
                let dataset_id = DatasetId::parse(id).ok_or_else(|| bad("bad dataset id"))?;
                let number = |s: &str, what: &str| {
                    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad(what));
                    }
                    s.parse::<u64>().map_err(|_| bad(what))
                };
                let seq = number(seq, "bad seq")?;
                let version = number(version, "bad version")?;
                if seq == 0 {
                    return Err(bad("seq 0 (log entries start at 1)"));
                }
                Ok(Message::Notify(Notification {
                    dataset_id,
                    seq,
                    version,
                    kind,
                }))
            }
            [MAGIC, ..] => Err(bad("wrong number of fields")),
            _ => Err(bad("no burrow-notify/1 header")),
        }
    }
}

/// A stream of raw messages from a subscription. It ends (or yields an
/// error) when the connection breaks; the subscriber subscribes again.
pub type Subscription = BoxStream<'static, Result<Bytes, NotifyError>>;

/// A publish/subscribe channel on one topic.
///
/// # Contract
///
/// - `publish` hands one message to the server for every subscriber of the
///   topic connected at that moment; it is fire-and-forget (a subscriber
///   not connected then never sees it: the log is what is durable). It
///   returns an error when the server could not take it; it may hang on a
///   frozen server, so callers bound it with a timeout.
/// - `subscribe` connects and returns the stream of messages published
///   from then on, as raw bytes (decoded, and distrusted, by the caller
///   with [`Message::decode`]). The stream ends or yields an error when
///   the connection is lost; it never reconnects by itself.
/// - Errors are all retryable: a channel is never a source of truth, so
///   none of its failures is final.
#[async_trait]
pub trait NotifyChannel: fmt::Debug + Send + Sync + 'static {
    /// Publishes `message` to the topic's current subscribers.
    async fn publish(&self, message: Bytes) -> Result<(), NotifyError>;
    /// Subscribes to the topic.
    async fn subscribe(&self) -> Result<Subscription, NotifyError>;
}

/// The channel a `--notify` URL names: `redis://host:port[/db][?channel=NAME]`
/// (feature `redis`) or `nats://host:port[?subject=NAME]` (feature `nats`).
/// Does not connect.
pub fn open_channel(url: &str) -> Result<std::sync::Arc<dyn NotifyChannel>, NotifyError> {
    let config = |reason: &str| NotifyError::Config {
        url: url.split('@').next_back().unwrap_or(url).to_string(),
        reason: reason.to_string(),
    };
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis") => {
            #[cfg(feature = "redis")]
            return Ok(std::sync::Arc::new(RedisChannel::open(url)?));
            #[cfg(not(feature = "redis"))]
            return Err(config(
                "this build has no Redis support (build with --features redis)",
            ));
        }
        Some("nats") => {
            #[cfg(feature = "nats")]
            return Ok(std::sync::Arc::new(NatsChannel::open(url)?));
            #[cfg(not(feature = "nats"))]
            return Err(config(
                "this build has no NATS support (build with --features nats)",
            ));
        }
        _ => Err(config(
            "not a notification channel URL: expected redis://host:port or nats://host:port",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_messages_round_trip_and_garbage_is_refused() {
        let n = Notification {
            dataset_id: DatasetId::mint(),
            seq: 7,
            version: 42,
            kind: AnnounceKind::Pin,
        };
        for m in [Message::Heartbeat, Message::Notify(n)] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        let id = n.dataset_id.to_string();
        for bad in [
            b"".to_vec(),
            b"\xff\xfe".to_vec(),
            b"burrow-notify/2 heartbeat".to_vec(),
            format!("burrow-notify/1 announce {id} 0 1").into_bytes(),
            format!("burrow-notify/1 announce {id} 1 -1").into_bytes(),
            format!("burrow-notify/1 announce {id} 1 99999999999999999999").into_bytes(),
            format!("burrow-notify/1 delete {id} 1 1").into_bytes(),
            format!("burrow-notify/1 announce {id} 1").into_bytes(),
            b"burrow-notify/1 announce 00000000000000000000000000000000 1 1".to_vec(),
            vec![b'a'; MAX_MESSAGE_BYTES + 1],
        ] {
            let err = Message::decode(&bad).unwrap_err();
            assert!(matches!(err, NotifyError::Malformed { .. }), "{err}");
        }
    }
}
