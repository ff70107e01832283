//! The figure "announce to refreshed": the time from a producer's
//! announcement to a watching consumer's new state, with push (a
//! notification channel) and with polling alone at 5 s, on the same run.
//!
//! The channel is a real Redis server when `redis-server` is on `PATH`
//! (started on 127.0.0.1, on a free port, and stopped at the end), else the
//! in-process channel, and the figure's channel says which. The producer
//! publishes delta-only cycles of the run's workload into a store of its
//! own; the instants are taken in this process: the producer's `Announced`
//! event, and the watcher's `Refreshed` event of that version.

use crate::config::BenchRun;
use anyhow::{anyhow, bail, Context};
use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder, NotifyConfig, WatchConfig, WatchEvent};
use burrow::notify::{MemoryChannel, NotifyChannel, Publisher, PublisherConfig};
use burrow::producer::{CycleEvent, CycleListener, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::Dataset;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cycles timed per `--runs`, with push and with polling at
/// [`POLL_INTERVAL`].
const PUSH_SAMPLES_PER_RUN: usize = 10;
const POLL_SAMPLES_PER_RUN: usize = 2;
/// The polling baseline's interval (the consumer's default).
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Longer than the measurement: the push consumer's poll never fires.
const NEVER: Duration = Duration::from_secs(3600);

/// The samples, in seconds, and the channel they went through.
pub struct AnnounceFigures {
    pub push: Vec<f64>,
    pub poll: Vec<f64>,
    pub channel: String,
}

/// When each version was announced.
#[derive(Default)]
struct Stamps(Mutex<HashMap<u64, Instant>>);

impl CycleListener for Stamps {
    fn on_event(&self, event: &CycleEvent<'_>) {
        if let CycleEvent::Announced { report } = event {
            self.0
                .lock()
                .expect("stamps lock")
                .insert(report.version, Instant::now());
        }
    }
}

pub async fn measure(args: &BenchRun, work: &Path) -> anyhow::Result<AnnounceFigures> {
    let dir = work.join("announce");
    let store = BlobStore::local(dir.join("store"))?;
    let (channel, label, _server) = channel(&dir)?;
    let publisher = Arc::new(Publisher::start(
        Arc::clone(&channel),
        PublisherConfig::default(),
    ));
    let stamps = Arc::new(Stamps::default());
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("bench-announce")
        .snapshot_every(u32::MAX)
        .primary_key::<movie::Owned>(&["id"])
        .listener(Arc::clone(&publisher))
        .listener(Arc::clone(&stamps))
        .build()?;
    let mut cycles = Cycles {
        producer,
        stamps,
        data: Dataset::new(args.workload.records, args.workload.seed),
        cycle: 1,
        change: args.workload.change,
        churn: args.workload.churn.unwrap_or(0.0),
    };
    cycles
        .producer
        .run_cycle(|p| cycles.data.populate(p))
        .await?;

    let push_samples = PUSH_SAMPLES_PER_RUN * args.runs;
    eprintln!("bench: announce to refreshed, push through {label} ({push_samples} cycles)");
    let push_consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.join("cache-push"))
        .build()?;
    let push = cycles
        .time(
            push_consumer,
            WatchConfig {
                interval: NEVER,
                notify: Some(NotifyConfig {
                    fallback_interval: NEVER,
                    ..NotifyConfig::new(Arc::clone(&channel))
                }),
                ..WatchConfig::default()
            },
            push_samples,
        )
        .await?;

    let poll_samples = POLL_SAMPLES_PER_RUN * args.runs;
    eprintln!("bench: announce to refreshed, polling every 5 s ({poll_samples} cycles)");
    let poll_consumer = ConsumerBuilder::new(store)
        .cache_dir(dir.join("cache-poll"))
        .build()?;
    let poll = cycles
        .time(
            poll_consumer,
            WatchConfig {
                interval: POLL_INTERVAL,
                ..WatchConfig::default()
            },
            poll_samples,
        )
        .await?;
    publisher.drain(Duration::from_secs(5)).await;
    Ok(AnnounceFigures {
        push,
        poll,
        channel: label,
    })
}

/// The producer's side of the measurement.
struct Cycles {
    producer: burrow::producer::Producer,
    stamps: Arc<Stamps>,
    data: Dataset,
    cycle: u64,
    change: f64,
    churn: f64,
}

impl Cycles {
    /// Has `consumer` watch with `config`, publishes `n` cycles, and
    /// returns each one's announce-to-refreshed time in seconds.
    async fn time(
        &mut self,
        consumer: Consumer,
        config: WatchConfig,
        n: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let consumer = Arc::new(consumer);
        let mut handle = consumer.watch(config);
        let mut events = handle.subscribe();
        let push = handle_is_push(&consumer);
        wait(&consumer, self.producer.version().await, push).await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            self.cycle += 1;
            self.data.advance(self.cycle, self.change, self.churn);
            let data = &self.data;
            let report = self.producer.run_cycle(|p| data.populate(p)).await?;
            let refreshed = refreshed_at(&mut events, report.version).await?;
            let announced = *self
                .stamps
                .0
                .lock()
                .expect("stamps lock")
                .get(&report.version)
                .ok_or_else(|| anyhow!("version {} was not announced", report.version))?;
            out.push(refreshed.saturating_duration_since(announced).as_secs_f64());
        }
        handle.shutdown().await;
        Ok(out)
    }
}

/// Whether `consumer`'s channel, if it listens to one, is healthy (a
/// polling consumer is always ready).
fn handle_is_push(consumer: &Arc<Consumer>) -> impl Fn() -> bool {
    let consumer = Arc::clone(consumer);
    move || consumer.health().notify.is_none_or(|n| n.state.is_push())
}

/// Waits until `consumer` serves `version` (at most a minute).
async fn wait(
    consumer: &Consumer,
    version: Option<u64>,
    mut extra: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.version() != version || !extra() {
        if Instant::now() > deadline {
            bail!("the consumer did not reach version {version:?} within a minute");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The instant the watcher reported reaching `version`.
async fn refreshed_at(
    events: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
    version: u64,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow!("no refresh to version {version} within a minute"))?
            .context("the watcher stopped")?;
        match event {
            WatchEvent::Refreshed(r) if r.to >= version => return Ok(Instant::now()),
            WatchEvent::Failed { error, .. } => bail!("refresh failed: {error}"),
            _ => {}
        }
    }
}

/// A Redis server on 127.0.0.1 if `redis-server` can be run, else the
/// in-process channel; its label; and the server, stopped on drop.
fn channel(dir: &Path) -> anyhow::Result<(Arc<dyn NotifyChannel>, String, Option<RedisProcess>)> {
    match RedisProcess::start(dir) {
        Some(server) => {
            let url = format!("redis://127.0.0.1:{}", server.port);
            let channel = burrow::notify::open_channel(&url)?;
            Ok((channel, format!("redis-server at {url}"), Some(server)))
        }
        None => Ok((
            Arc::new(MemoryChannel::new()),
            "the in-process channel (redis-server not found)".into(),
            None,
        )),
    }
}

/// A `redis-server` this bench started.
struct RedisProcess {
    child: std::process::Child,
    port: u16,
}

impl RedisProcess {
    fn start(dir: &Path) -> Option<RedisProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir.parent().unwrap_or(dir))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut server = RedisProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
