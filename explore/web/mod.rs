//! The web explorer that `burrow serve` runs: a store's version timeline,
//! each version's types with their counts and schemas, a record browser
//! (by key, by ordinal, paged through a type, with a field filter), the
//! diff of two versions, a key's history, and the health of the server's
//! own consumer, as HTML pages that link to each other by URL and as JSON
//! under `/api/`.
//!
//! The server follows the store as a consumer does: a real
//! [`Consumer`] watches the log (polling every `interval`, through the
//! retry and circuit-breaker wrappers) in a cache of its own, and each
//! version it reaches makes the [`Explorer`] behind the pages read the log
//! again, so new versions appear without a restart. The explorer keeps its
//! blobs in a second cache (both under the configured directory, each
//! locked); the blobs it holds open are released past
//! [`MAX_OPEN_BLOBS`], so a long-running server maps a bounded number.
//!
//! Everything taken from a request is checked before use, and bad input
//! (an unknown version, type or key, a malformed number or key) gets a page
//! (or, under `/api/`, a JSON object) naming the problem, with a 4xx
//! status. Every value from the data reaches HTML through the templates,
//! which escape it.
//!
//! | Page | API | |
//! |---|---|---|
//! | `/` | `/api/versions` | the announcement log, newest first |
//! | `/versions/{v}` | `/api/versions/{v}` | types, counts, schema |
//! | `/versions/{v}/types/{t}?from=O&per=N&field=P&match=S` | same under `/api` | records from ordinal `O`, those whose field `P` contains `S` |
//! | `/versions/{v}/types/{t}/record?key=K` or `?ordinal=O` | same under `/api` | one record |
//! | `/diff?from=A&to=B[&type=T]` | `/api/diff?…` | added, removed, changed |
//! | `/history?key=K[&type=T]` | `/api/history?…` | a key at every version where it changed |
//! | `/health` | `/api/health` | the server's consumer |

mod api;
mod data;
mod fmt;
mod pages;
mod request;

use crate::blobstore::resilience::Resilience;
use crate::blobstore::BlobStore;
use crate::consumer::{Consumer, ConsumerBuilder, WatchConfig, WatchEvent, WatchHandle};
use crate::error::Error;
use crate::explore::{Explorer, TypeSummary};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, RwLock};

/// Blobs the explorer may hold open before it releases them all (the
/// pages being served keep theirs until they finish).
pub const MAX_OPEN_BLOBS: usize = 64;

/// Where and how the explorer serves.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// The directory holding the server's two caches: `consumer/` and
    /// `explorer/` (created if missing; each locked while serving).
    pub cache_dir: PathBuf,
    /// Time between polls of the announcement log.
    pub interval: Duration,
}

/// Why the explorer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The store or a cache cannot be opened.
    #[error(transparent)]
    Open(#[from] Error),
}

/// A running explorer. Dropping it stops serving; prefer
/// [`WebServer::shutdown`], which waits for requests in flight.
pub struct WebServer {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    follower: tokio::task::JoinHandle<()>,
    watch: WatchHandle,
}

/// What every handler reads.
pub(crate) struct Shared {
    explorer: RwLock<Explorer>,
    consumer: Arc<Consumer>,
    /// Each version's types and counts, once built (a version never
    /// changes).
    counts: Mutex<HashMap<u64, Vec<TypeSummary>>>,
    follow: Mutex<FollowStatus>,
    started: Instant,
    interval: Duration,
}

/// How the explorer has kept up with the consumer.
#[derive(Debug, Default, Clone)]
pub(crate) struct FollowStatus {
    /// Times the explorer read the log again after the consumer moved.
    refreshes: u64,
    /// The last of those that failed, until one succeeds.
    last_error: Option<String>,
}

impl WebServer {
    /// Opens the explorer and the consumer over `store` and serves on
    /// `config.addr`. A store with nothing announced is refused
    /// ([`crate::explore::ExploreError::Empty`]).
    pub async fn start(store: BlobStore, config: WebConfig) -> Result<Self, WebError> {
        let explorer = Explorer::open(store.clone(), config.cache_dir.join("explorer")).await?;
        let (resilient, breaker) = store.resilient_with_breaker(&Resilience::system());
        let consumer = Arc::new(
            ConsumerBuilder::new(resilient)
                .cache_dir(config.cache_dir.join("consumer"))
                .breaker(breaker)
                .build()?,
        );
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| WebError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| WebError::Bind {
            addr: config.addr,
            source,
        })?;
        let shared = Arc::new(Shared {
            explorer: RwLock::new(explorer),
            consumer: Arc::clone(&consumer),
            counts: Mutex::new(HashMap::new()),
            follow: Mutex::new(FollowStatus::default()),
            started: Instant::now(),
            interval: config.interval,
        });
        let mut watch = consumer.watch(WatchConfig {
            interval: config.interval,
            ..WatchConfig::default()
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let follower = tokio::spawn(follow(
            Arc::clone(&shared),
            watch.subscribe(),
            stopped.clone(),
        ));
        let app = router(shared);
        let mut until = stopped;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // Dropped at once: a held `Ref` would make the future !Send.
                    let _ = until.wait_for(|s| *s).await.map(drop);
                })
                .await
        });
        Ok(WebServer {
            addr,
            stop,
            server,
            follower,
            watch,
        })
    }

    /// The address served (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for requests in flight, and stops the
    /// consumer.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        let served = self
            .server
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let _ = self.follower.await;
        self.watch.shutdown().await;
        served
    }
}

/// Makes the explorer read the log again each time the consumer moves.
async fn follow(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<WatchEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(WatchEvent::Refreshed(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    shared.refresh_explorer().await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                break;
            },
        }
    }
}

impl Shared {
    async fn refresh_explorer(&self) {
        let mut explorer = self.explorer.write().await;
        let outcome = explorer.refresh().await;
        explorer.forget_blobs();
        explorer.trim_cache();
        let mut status = self.follow.lock().expect("follow status");
        status.refreshes += 1;
        status.last_error = outcome.err().map(|e| e.to_string());
    }

    /// The explorer, its open blobs released first if past the bound.
    async fn explorer(&self) -> tokio::sync::RwLockReadGuard<'_, Explorer> {
        let explorer = self.explorer.read().await;
        if explorer.open_blob_count() > MAX_OPEN_BLOBS {
            explorer.forget_blobs();
        }
        explorer
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(pages::timeline))
        .route("/versions/{version}", get(pages::version))
        .route("/versions/{version}/types/{type}", get(pages::browse))
        .route(
            "/versions/{version}/types/{type}/record",
            get(pages::record),
        )
        .route("/diff", get(pages::diff))
        .route("/history", get(pages::history))
        .route("/health", get(pages::health))
        .route("/api/versions", get(api::versions))
        .route("/api/versions/{version}", get(api::version))
        .route("/api/versions/{version}/types/{type}", get(api::browse))
        .route(
            "/api/versions/{version}/types/{type}/record",
            get(api::record),
        )
        .route("/api/diff", get(api::diff))
        .route("/api/history", get(api::history))
        .route("/api/health", get(api::health))
        .fallback(request::not_found)
        .with_state(shared)
}
