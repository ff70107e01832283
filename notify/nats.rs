//! [`NatsChannel`]: NATS core publish/subscribe (feature `nats`), through
//! the official `async-nats` client.
//!
//! The client reconnects by itself and buffers publishes while it is
//! disconnected, and its flush only empties the socket's buffer, so
//! neither would show an outage (or a frozen server) to the publisher's
//! breaker. So a publish is refused unless the client is connected, and is
//! confirmed by an echo: the publishing connection also subscribes to an
//! inbox of its own and, after the notification, publishes a token there;
//! the server handles one connection's messages in order, so the token
//! coming back means the notification was taken. A publish that fails or
//! times out drops the connection, and the next one connects afresh. A subscription has a client of
//! its own, whose stream is ended by this module as soon as that client is
//! disconnected (checked every [`STATE_CHECK`]): the subscriber then falls
//! back to polling and subscribes again, as with Redis. NATS core keeps
//! nothing for a subscriber that is not connected; the log does.

use super::url::{redact, split_param};
use super::{NotifyChannel, NotifyError, Subscription};
use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// The subject notifications use unless the URL names another.
pub const DEFAULT_NATS_SUBJECT: &str = "burrow.notify";

/// How long connecting (and a publish's flush) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a subscription checks that its client is still connected.
const STATE_CHECK: Duration = Duration::from_millis(200);

/// A NATS subject.
pub struct NatsChannel {
    /// The server address for the client (`nats://host:port`).
    server: String,
    /// The URL, for messages (without a password).
    label: String,
    subject: String,
    publisher: tokio::sync::Mutex<Option<Echoed>>,
}

/// The publishing connection and its echo inbox.
struct Echoed {
    client: async_nats::Client,
    inbox: String,
    echoes: async_nats::Subscriber,
    next_token: u64,
}

impl std::fmt::Debug for NatsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.label)
    }
}

impl NatsChannel {
    /// A channel on the server of `url`: `nats://host:port`, with an
    /// optional `?subject=NAME` (default [`DEFAULT_NATS_SUBJECT`]). Does not
    /// connect: the first publish or subscribe does.
    pub fn open(url: &str) -> Result<NatsChannel, NotifyError> {
        let (server, subject) = split_param(url, "subject", DEFAULT_NATS_SUBJECT)?;
        Ok(NatsChannel {
            label: format!("{}#{subject}", redact(&server)),
            server,
            subject,
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

    async fn connect(&self, op: &'static str) -> Result<async_nats::Client, NotifyError> {
        async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(self.server.as_str())
            .await
            .map_err(|e| self.unavailable(op, e))
    }

    /// Publishes `message` on `conn` and waits for the echo behind it.
    async fn publish_on(&self, conn: &mut Echoed, message: Bytes) -> Result<(), NotifyError> {
        if conn.client.connection_state() != State::Connected {
            return Err(self.unavailable("publish", "disconnected from the server"));
        }
        conn.client
            .publish(self.subject.clone(), message)
            .await
            .map_err(|e| self.unavailable("publish", e))?;
        conn.next_token += 1;
        let token = Bytes::from(conn.next_token.to_string());
        conn.client
            .publish(conn.inbox.clone(), token.clone())
            .await
            .map_err(|e| self.unavailable("publish", e))?;
        let echoed = async {
            while let Some(echo) = conn.echoes.next().await {
                if echo.payload == token {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, echoed).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.unavailable("publish", "the connection closed")),
            Err(_) => Err(NotifyError::TimedOut {
                channel: self.label.clone(),
                op: "publish",
            }),
        }
    }

    async fn connect_echoed(&self) -> Result<Echoed, NotifyError> {
        let client = self.connect("connect").await?;
        let inbox = client.new_inbox();
        let echoes = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.unavailable("connect", e))?;
        Ok(Echoed {
            client,
            inbox,
            echoes,
            next_token: 0,
        })
    }
}

#[async_trait]
impl NotifyChannel for NatsChannel {
    async fn publish(&self, message: Bytes) -> Result<(), NotifyError> {
        let mut slot = self.publisher.lock().await;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.connect_echoed().await?,
        };
        self.publish_on(&mut conn, message).await?;
        // Kept only after a confirmed publish.
        *slot = Some(conn);
        Ok(())
    }

    async fn subscribe(&self) -> Result<Subscription, NotifyError> {
        let client = self.connect("subscribe").await?;
        let messages = client
            .subscribe(self.subject.clone())
            .await
            .map_err(|e| self.unavailable("subscribe", e))?;
        // Make sure the server has the subscription before returning, so a
        // publish that follows is seen.
        tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
            .await
            .map_err(|_| NotifyError::TimedOut {
                channel: self.label.clone(),
                op: "subscribe",
            })?
            .map_err(|e| self.unavailable("subscribe", e))?;
        let label = self.label.clone();
        let messages = messages.map(|m| Ok(m.payload));
        // Ends the stream with an error once the client is disconnected.
        let watchdog = futures::stream::unfold(client, move |client| {
            let label = label.clone();
            async move {
                loop {
                    tokio::time::sleep(STATE_CHECK).await;
                    if client.connection_state() != State::Connected {
                        let error = NotifyError::Unavailable {
                            channel: label,
                            op: "subscribe",
                            reason: "disconnected from the server".into(),
                        };
                        return Some((Err(error), client));
                    }
                }
            }
        });
        let merged = futures::stream::select(messages, watchdog);
        // The first error ends the subscription.
        Ok(merged
            .scan(false, |failed, item| {
                let next = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                futures::future::ready(next)
            })
            .boxed())
    }
}
