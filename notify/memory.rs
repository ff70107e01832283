//! [`MemoryChannel`]: a channel inside one process, on a tokio broadcast.

use super::{NotifyChannel, NotifyError, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A channel whose subscribers are in this process. It can be taken down
/// and brought back ([`MemoryChannel::set_down`]), as a server can: while
/// down, publishes and subscribes fail, and taking it down ends every
/// subscription.
#[derive(Debug)]
pub struct MemoryChannel {
    state: Mutex<State>,
    published: AtomicU64,
}

#[derive(Debug)]
struct State {
    down: bool,
    sender: tokio::sync::broadcast::Sender<Bytes>,
}

impl Default for MemoryChannel {
    fn default() -> Self {
        MemoryChannel::new()
    }
}

impl MemoryChannel {
    /// An up channel with no subscribers.
    pub fn new() -> Self {
        MemoryChannel {
            state: Mutex::new(State {
                down: false,
                sender: tokio::sync::broadcast::channel(256).0,
            }),
            published: AtomicU64::new(0),
        }
    }

    /// Takes the channel down (ending every subscription) or brings it back.
    pub fn set_down(&self, down: bool) {
        let mut state = self.state.lock().expect("memory channel lock");
        if down && !state.down {
            // Dropping the sender ends every receiver's stream.
            state.sender = tokio::sync::broadcast::channel(256).0;
        }
        state.down = down;
    }

    /// Messages published successfully so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn down(op: &'static str) -> NotifyError {
        NotifyError::Unavailable {
            channel: "memory".into(),
            op,
            reason: "the channel is down".into(),
        }
    }
}

#[async_trait]
impl NotifyChannel for MemoryChannel {
    async fn publish(&self, message: Bytes) -> Result<(), NotifyError> {
        let state = self.state.lock().expect("memory channel lock");
        if state.down {
            return Err(Self::down("publish"));
        }
        // No subscriber is not an error: nobody was listening.
        let _ = state.sender.send(message);
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe(&self) -> Result<Subscription, NotifyError> {
        let state = self.state.lock().expect("memory channel lock");
        if state.down {
            return Err(Self::down("subscribe"));
        }
        let rx = state.sender.subscribe();
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(bytes) => return Some((Ok(bytes), rx)),
                    // A slow subscriber missed messages: the next one still
                    // says "look now".
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }
}
