//! [`RedisChannel`]: Redis pub/sub (feature `redis`), through the `redis`
//! crate's tokio client.
//!
//! Publishing keeps one multiplexed connection and drops it after any
//! failure, so the next attempt connects afresh (the publisher's retries
//! and breaker pace the attempts). Each subscription is a connection of
//! its own in subscribe mode; its stream ends when the connection does,
//! and the subscriber subscribes again. Redis pub/sub keeps nothing for a
//! subscriber that is not connected: what is missed then is read from the
//! log at the next poll.

use super::url::{redact, split_param};
use super::{NotifyChannel, NotifyError, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// The pub/sub channel notifications use unless the URL names another.
pub const DEFAULT_REDIS_CHANNEL: &str = "burrow-notify";

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis pub/sub channel.
pub struct RedisChannel {
    client: redis::Client,
    /// The URL as given, for messages (without a password).
    label: String,
    /// The pub/sub channel's name.
    channel: String,
    publisher: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.label)
    }
}

impl RedisChannel {
    /// A channel on the server of `url`: `redis://host:port[/db]`, with an
    /// optional `?channel=NAME` (default [`DEFAULT_REDIS_CHANNEL`]). Does
    /// not connect: the first publish or subscribe does.
    pub fn open(url: &str) -> Result<RedisChannel, NotifyError> {
        let (base, channel) = split_param(url, "channel", DEFAULT_REDIS_CHANNEL)?;
        let label = format!("{}#{channel}", redact(&base));
        let client = redis::Client::open(base.as_str()).map_err(|e| NotifyError::Config {
            url: redact(url),
            reason: e.to_string(),
        })?;
        Ok(RedisChannel {
            client,
            label,
            channel,
            publisher: tokio::sync::Mutex::new(None),
        })
    }

    fn unavailable(&self, op: &'static str, error: impl std::fmt::Display) -> NotifyError {
        NotifyError::Unavailable {
            channel: self.label.clone(),
            op,
            reason: error.to_string(),
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, NotifyError> {
        let mut slot = self.publisher.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.unavailable("connect", e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

#[async_trait]
impl NotifyChannel for RedisChannel {
    async fn publish(&self, message: Bytes) -> Result<(), NotifyError> {
        let mut conn = self.connection().await?;
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message.as_ref())
            .query_async(&mut conn)
            .await;
        match published {
            Ok(_) => Ok(()),
            Err(e) => {
                // A broken connection is not reused.
                *self.publisher.lock().await = None;
                Err(self.unavailable("publish", e))
            }
        }
    }

    async fn subscribe(&self) -> Result<Subscription, NotifyError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| NotifyError::TimedOut {
                channel: self.label.clone(),
                op: "subscribe",
            })?
            .map_err(|e| self.unavailable("subscribe", e))?;
        Ok(pubsub
            .into_on_message()
            .map(|msg| Ok(Bytes::copy_from_slice(msg.get_payload_bytes())))
            .boxed())
    }
}
