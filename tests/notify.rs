//! Hybrid announcements with real notification servers (Redis and NATS,
//! started by the tests; see `common::servers`): versions reach consumers
//! by push while polling is set far beyond the test's length; consumers
//! fall back to polling when the server is killed or frozen, and return to
//! push when it is back; the producer's queue holds and drains; hostile
//! notifications move nobody.

use crate::common::servers::{Kind, Server};
use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::{ChannelState, Consumer, NotifyConfig, WatchConfig, WatchHandle};
use burrow::notify::{
    open_channel, Message, Notification, NotifyChannel, Publisher, PublisherConfig,
};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::DatasetId;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longer than any test: a poll at this interval never happens in one.
const NEVER: Duration = Duration::from_secs(3600);

struct Setup {
    _dir: tempfile::TempDir,
    store: BlobStore,
    server: Server,
    producer: Producer,
    publisher: Arc<Publisher>,
    model: Model,
    next_id: u64,
}

impl Setup {
    async fn new(kind: Kind) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("store")).unwrap();
        let server = Server::start(kind);
        let publisher = Arc::new(Publisher::start(
            channel(&server),
            PublisherConfig {
                heartbeat_interval: Duration::from_millis(100),
                ..PublisherConfig::default()
            },
        ));
        let producer = ProducerBuilder::new(store.clone())
            .producer_id("p")
            .primary_key::<movie::Owned>(&["id"])
            .listener(Arc::clone(&publisher))
            .build()
            .unwrap();
        let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
        let mut setup = Setup {
            _dir: dir,
            store,
            server,
            producer,
            publisher,
            model,
            next_id: 1000,
        };
        setup.cycle().await;
        setup
    }

    /// Publishes a cycle that adds a record; its version.
    async fn cycle(&mut self) -> u64 {
        self.model
            .insert(self.next_id, movie_value(self.next_id, 0));
        self.next_id += 1;
        let report = publish(&self.producer, &self.model).await.unwrap();
        assert!(report.published);
        report.version
    }

    /// A consumer watching the store, polling at `interval` while the
    /// channel is healthy and `fallback` while it is not.
    fn consumer(&self, interval: Duration, fallback: Duration) -> (Arc<Consumer>, WatchHandle) {
        let cache = self
            ._dir
            .path()
            .join(format!("cache-{}", DatasetId::mint()));
        let consumer = Arc::new(consumer(&self.store, &cache));
        let handle = consumer.watch(WatchConfig {
            interval,
            notify: Some(NotifyConfig {
                fallback_interval: fallback,
                silence_limit: Duration::from_millis(800),
                max_reconnect_delay: Duration::from_millis(300),
                ..NotifyConfig::new(channel(&self.server))
            }),
            ..WatchConfig::default()
        });
        (consumer, handle)
    }
}

fn channel(server: &Server) -> Arc<dyn NotifyChannel> {
    open_channel(&server.url()).unwrap()
}

/// Waits (at most 15 s) until `check` holds; fails with `what`.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state_of(consumer: &Consumer) -> Option<ChannelState> {
    consumer.health().notify.map(|n| n.state)
}

async fn versions_arrive_by_push(kind: Kind) {
    let mut s = Setup::new(kind).await;
    let (consumer, handle) = s.consumer(NEVER, NEVER);
    wait_for("the first state", || consumer.version().is_some()).await;
    wait_for("the channel", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;
    for _ in 0..3 {
        let version = s.cycle().await;
        wait_for(&format!("version {version} by push"), || {
            consumer.version() == Some(version)
        })
        .await;
    }
    let notify = consumer.health().notify.unwrap();
    assert!(notify.acted_on >= 3, "{notify:?}");
    assert_eq!(notify.unconfirmed, 0, "{notify:?}");
    handle.shutdown().await;
}

async fn server_killed_then_back(kind: Kind) {
    let mut s = Setup::new(kind).await;
    let (consumer, handle) = s.consumer(NEVER, Duration::from_millis(200));
    wait_for("the channel", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;

    s.server.kill();
    wait_for("the consumer to notice the channel is gone", || {
        state_of(&consumer).is_some_and(|st| !st.is_push())
    })
    .await;
    // Versions still arrive, by polling at the fallback interval, and the
    // producer's notifications wait in its queue (one: the newest).
    for _ in 0..2 {
        let version = s.cycle().await;
        wait_for(&format!("version {version} by polling"), || {
            consumer.version() == Some(version)
        })
        .await;
    }
    wait_for("the publisher to hold the undelivered notification", || {
        s.publisher.health().queue_depth == 1
    })
    .await;

    s.server.restart();
    wait_for("the queue to drain", || {
        s.publisher.health().queue_depth == 0
    })
    .await;
    wait_for("push again", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;
    let version = s.cycle().await;
    wait_for(&format!("version {version}"), || {
        consumer.version() == Some(version)
    })
    .await;
    handle.shutdown().await;
}

async fn server_frozen_then_thawed(kind: Kind) {
    let mut s = Setup::new(kind).await;
    let (consumer, handle) = s.consumer(NEVER, Duration::from_millis(200));
    wait_for("the channel", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;

    s.server.freeze(true);
    wait_for("the consumer to find the channel silent", || {
        state_of(&consumer).is_some_and(|st| !st.is_push())
    })
    .await;
    let version = s.cycle().await;
    wait_for(&format!("version {version} by polling"), || {
        consumer.version() == Some(version)
    })
    .await;
    // The cycle was not held up by the frozen channel; its notification
    // waits.
    let health = s.publisher.health();
    assert_eq!(health.queue_depth, 1, "{health:?}");

    s.server.freeze(false);
    wait_for("the queue to drain", || {
        s.publisher.health().queue_depth == 0
    })
    .await;
    wait_for("push again", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;
    handle.shutdown().await;
}

async fn hostile_notifications_move_nobody(kind: Kind) {
    let s = Setup::new(kind).await;
    let (consumer, handle) = s.consumer(NEVER, NEVER);
    wait_for("the channel", || {
        state_of(&consumer) == Some(ChannelState::Healthy)
    })
    .await;
    wait_for("the first state", || consumer.version().is_some()).await;
    let version = consumer.version().unwrap();
    let entry = burrow::announcer::AnnouncementLog::new(s.store.clone())
        .latest()
        .await
        .unwrap()
        .unwrap();
    let real = Notification::of(&entry);
    let raw = channel(&s.server);
    let forged = [
        b"\x00\xffnot a message at all".to_vec(),
        b"burrow-notify/1 announce zz 1 1".to_vec(),
        Message::Notify(Notification {
            dataset_id: DatasetId::mint(),
            seq: real.seq + 1,
            version: version + 1,
            ..real
        })
        .encode()
        .to_vec(),
        // A duplicate of the entry already read.
        Message::Notify(real).encode().to_vec(),
    ];
    let before = consumer.health().notify.unwrap();
    for bytes in forged {
        raw.publish(bytes.into()).await.unwrap();
    }
    // An entry the log does not have: it wakes a poll, which finds nothing.
    raw.publish(
        Message::Notify(Notification {
            seq: real.seq + 100,
            version: version + 100,
            ..real
        })
        .encode(),
    )
    .await
    .unwrap();
    wait_for("the forged messages to be counted", || {
        let n = consumer.health().notify.unwrap();
        n.ignored >= before.ignored + 4 && n.unconfirmed > before.unconfirmed
    })
    .await;
    assert_eq!(consumer.version(), Some(version));
    let health = consumer.health();
    assert_eq!(health.consecutive_failures, 0, "{health:?}");
    assert_eq!(health.newest_target, Some(version), "{health:?}");
    handle.shutdown().await;
}

async fn eight_consumers_across_a_restart(kind: Kind) {
    let mut s = Setup::new(kind).await;
    let watchers: Vec<_> = (0..8)
        .map(|_| s.consumer(NEVER, Duration::from_millis(300)))
        .collect();
    for (consumer, _) in &watchers {
        wait_for("every channel", || {
            state_of(consumer) == Some(ChannelState::Healthy)
        })
        .await;
    }
    let mut last = 0;
    for i in 0..12 {
        if i == 4 {
            s.server.kill();
        }
        if i == 8 {
            s.server.restart();
        }
        last = s.cycle().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (consumer, _) in &watchers {
        wait_for(&format!("version {last} at every consumer"), || {
            consumer.version() == Some(last)
        })
        .await;
    }
    for (_, handle) in watchers {
        handle.shutdown().await;
    }
}

macro_rules! on_both_servers {
    ($($case:ident),* $(,)?) => {
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Redis).await
                }
            )*
        }
        #[cfg(feature = "nats")]
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Nats).await
                }
            )*
        }
    };
}

on_both_servers!(
    versions_arrive_by_push,
    server_killed_then_back,
    server_frozen_then_thawed,
    hostile_notifications_move_nobody,
    eight_consumers_across_a_restart,
);
