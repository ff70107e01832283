//! Readiness: whether a consumer serves a state yet, and if not, what it is
//! waiting for.
//!
//! A read service must not take traffic before its consumer has a state.
//! [`Consumer::ready`] waits for the first state (the one swapped in by
//! whatever refreshes the consumer: [`Consumer::watch`] or calls to
//! [`Consumer::refresh`]) and fails after its timeout with
//! [`ConsumerError::NotReady`], which names what the consumer was waiting
//! for ([`Waiting`]); [`Consumer::ready_blocking`] does the same on a
//! thread outside async code. [`Consumer::readiness`] answers the same
//! question at once, without waiting, for a health endpoint.
//!
//! Invariant: once a consumer has a state it stays ready (a failed refresh
//! keeps the current state serving), so readiness never goes back to
//! waiting; staleness is [`Consumer::health`]'s business.

use super::{Consumer, ConsumerError, ReadState};
use crate::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a consumer with no state yet is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// Nothing has refreshed it yet: start [`Consumer::watch`] or call
    /// [`Consumer::refresh`].
    NotStarted,
    /// Its first poll of the announcement log is under way.
    Polling,
    /// The store answered, but announces no version yet.
    NoAnnouncement,
    /// The last attempt failed (the store unreachable, a blob missing or
    /// bad); the next one retries.
    StoreUnreachable {
        /// The last failure's message.
        last_error: String,
        /// Failed attempts in a row.
        consecutive_failures: u32,
    },
    /// A refresh is fetching the blobs of `version` and building its state.
    Fetching {
        /// The version it moves to.
        version: u64,
    },
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::NotStarted => write!(
                f,
                "no refresh has run yet (start Consumer::watch or call Consumer::refresh)"
            ),
            Waiting::Polling => write!(f, "the first poll of the announcement log is under way"),
            Waiting::NoAnnouncement => {
                write!(f, "the store answers but no version has been announced yet")
            }
            Waiting::StoreUnreachable {
                last_error,
                consecutive_failures,
            } => write!(
                f,
                "the store could not be read ({consecutive_failures} failure(s) in a row), last error: {last_error}"
            ),
            Waiting::Fetching { version } => {
                write!(f, "fetching the blobs of version {version} (a fetch in progress)")
            }
        }
    }
}

/// Whether a consumer serves a state, or what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It serves `version`.
    Ready {
        /// The version served.
        version: u64,
    },
    /// It has no state yet.
    Waiting(Waiting),
}

impl Readiness {
    /// Whether the consumer serves a state.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }
}

/// What a refresh in flight is doing, for readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum InFlight {
    /// No refresh runs.
    #[default]
    Idle,
    /// A refresh polls the log.
    Polling,
    /// A refresh moves to this version.
    Fetching(u64),
}

impl Consumer {
    /// Whether the consumer serves a state yet, and if not, what it is
    /// waiting for. Never waits: what a health endpoint answers with.
    ///
    /// A read service's health endpoint, and its start-up (the README
    /// shows the same code; a test keeps the two equal):
    ///
    /// ```
    /// # use burrow::blobstore::BlobStore;
    /// # use burrow::consumer::{ConsumerBuilder, WatchConfig};
    /// # use burrow::producer::ProducerBuilder;
    /// # use burrow::schema::examples::movies_capnp::movie;
    /// # use std::sync::Arc;
    /// use burrow::consumer::{Consumer, Readiness};
    /// use std::time::Duration;
    ///
    /// /// `GET /ready`: 200 once the first state serves, 503 and the reason before.
    /// fn ready_endpoint(consumer: &Consumer) -> (u16, String) {
    ///     match consumer.readiness() {
    ///         Readiness::Ready { version } => (200, format!("serving version {version}")),
    ///         Readiness::Waiting(why) => (503, format!("not ready: {why}")),
    ///     }
    /// }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
    /// # let store = BlobStore::local(dir.path().join("store"))?;
    /// # let producer = ProducerBuilder::new(store.clone()).primary_key::<movie::Owned>(&["id"]).build()?;
    /// # producer.run_cycle(|p| p.add::<movie::Owned>(|mut m| { m.set_id(1); Ok(()) })).await?;
    /// # let consumer = Arc::new(ConsumerBuilder::new(store).cache_dir(dir.path().join("cache")).build()?);
    /// # assert_eq!(ready_endpoint(&consumer).0, 503);
    ///
    /// // At start-up: follow the store, then wait for the first state (30 s at
    /// // most) before taking traffic; the error says what is missing.
    /// let watcher = consumer.watch(WatchConfig::default());
    /// let state = consumer.ready(Duration::from_secs(30)).await?;
    /// assert_eq!(ready_endpoint(&consumer), (200, format!("serving version {}", state.version())));
    /// # watcher.shutdown().await;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })
    /// # }
    /// ```
    pub fn readiness(&self) -> Readiness {
        if let Some(version) = self.version() {
            return Readiness::Ready { version };
        }
        let h = self.health.lock().expect("health lock");
        let waiting = match (h.in_flight, &h.last_error) {
            (InFlight::Fetching(version), _) => Waiting::Fetching { version },
            (_, Some(_)) if h.nothing_announced => Waiting::NoAnnouncement,
            (_, Some(e)) => Waiting::StoreUnreachable {
                last_error: e.clone(),
                consecutive_failures: h.consecutive_failures,
            },
            (InFlight::Polling, None) => Waiting::Polling,
            // No refresh ever ran, or every one so far ended without a
            // state and without an error (nothing to load).
            (InFlight::Idle, None) => Waiting::NotStarted,
        };
        drop(h);
        // The state may have been swapped in while the lock was taken.
        match self.version() {
            Some(version) => Readiness::Ready { version },
            None => Readiness::Waiting(waiting),
        }
    }

    /// [`Consumer::ready`] for code that is not async (a service on
    /// threads, its consumer watched on a runtime elsewhere): blocks the
    /// calling thread until the first state, or fails as `ready` does
    /// after `timeout`. Do not call it on an async worker thread.
    pub fn ready_blocking(&self, timeout: Duration) -> Result<Arc<ReadState>, Error> {
        let started = Instant::now();
        let mut health = self.health.lock().expect("health lock");
        loop {
            if let Some(state) = self.current() {
                return Ok(state);
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            health = self
                .first_state
                .wait_timeout(health, left)
                .expect("health lock")
                .0;
        }
        drop(health);
        match self.readiness() {
            Readiness::Ready { .. } => self.state(),
            Readiness::Waiting(waiting) => Err(ConsumerError::NotReady {
                waited: started.elapsed(),
                waiting,
            }
            .into()),
        }
    }

    /// Waits until the consumer has a state and returns it; after
    /// `timeout` without one, fails with [`ConsumerError::NotReady`],
    /// which says what the consumer was waiting for. It does not refresh:
    /// something else must ([`Consumer::watch`], or calls to
    /// [`Consumer::refresh`]), and with nothing refreshing the error says
    /// [`Waiting::NotStarted`].
    pub async fn ready(&self, timeout: Duration) -> Result<Arc<ReadState>, Error> {
        let started = Instant::now();
        let mut swaps = self.swapped.subscribe();
        // Either the first state arrives or the timeout runs out; which
        // one, the state says.
        let _ = tokio::time::timeout(timeout, swaps.wait_for(|v| v.is_some())).await;
        if let Some(state) = self.current() {
            return Ok(state);
        }
        match self.readiness() {
            Readiness::Ready { .. } => self.state(),
            Readiness::Waiting(waiting) => Err(ConsumerError::NotReady {
                waited: started.elapsed(),
                waiting,
            }
            .into()),
        }
    }
}
