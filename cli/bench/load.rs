//! The read-service load figures (issue 17): key lookup latency (p50, p99,
//! max) on reader threads, twice the cores, with the consumer idle and
//! while it refreshes (a delta every 100 ms, forth and back along the
//! published versions), and the p99 of the first lookups after each swap
//! with each warm-up ([`WarmUp`]): after delta swaps, and after snapshot
//! loads (every refresh maps the snapshot anew).
//!
//! Each reader loads the current state, makes its view, and times each of
//! 64 random lookups (find + `year`) alone; the first [`AFTER_SWAP`]
//! lookups of each reader after it sees a new version also go to the
//! after-swap histogram. Every configuration gets its own consumer on its
//! own cache directory (the blobs hard-linked from one fetched copy), its
//! background re-verification finished before any timing.

use super::latency::Histogram;
use super::link_or_copy;
use super::report::{Figure, Unit};
use crate::config::BenchRun;
use anyhow::{anyhow, Context};
use burrow::blobstore::{BlobCache, BlobName, BlobStore};
use burrow::consumer::{Consumer, ConsumerBuilder, WarmUp};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::{Dataset, Rng};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Versions published: a snapshot and this many deltas after it.
const DELTAS: u64 = 4;
/// Lookups per reader counted as "right after a swap".
const AFTER_SWAP: u32 = 1000;
/// Time between refreshes while refreshing.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The published store and one fetched copy of its blobs.
struct Published {
    store: BlobStore,
    master: BlobCache,
    names: Vec<BlobName>,
    dataset: String,
    /// The order refreshes visit versions in: forth and back.
    schedule: Vec<u64>,
}

async fn publish(args: &BenchRun, dir: &Path) -> anyhow::Result<Published> {
    let store = BlobStore::local(dir.join("store"))?;
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("bench-load")
        .snapshot_every(u32::MAX)
        .primary_key::<movie::Owned>(&["id"])
        .build()?;
    let w = args.workload;
    let mut data = Dataset::new(w.records, w.seed);
    let mut names = Vec::new();
    let mut versions = Vec::new();
    for cycle in 1..=DELTAS + 1 {
        if cycle > 1 {
            data.advance(cycle, w.change, w.churn.unwrap_or(0.0));
        }
        let report = producer.run_cycle(|p| data.populate(p)).await?;
        names.extend(report.blobs.iter().map(|(n, _)| *n));
        versions.push(report.version);
    }
    let master = BlobCache::open(dir.join("master-cache"))?;
    for n in &names {
        master.fetch(&store, n).await?;
    }
    let first = BlobName::Snapshot(versions[0]);
    let dataset =
        burrow::blobstore::cache::map_file(&master.path(&first), &first.to_string(), false)?
            .dataset_id()?
            .to_string();
    let back = versions.iter().rev().skip(1).take(versions.len() - 2);
    let schedule = versions.iter().chain(back).copied().collect();
    Ok(Published {
        store,
        master,
        names,
        dataset,
        schedule,
    })
}

/// A consumer with `warm_up` and `max_delta_depth` on a cache of its own
/// holding every blob, at the first version, verified.
async fn consumer(
    p: &Published,
    dir: PathBuf,
    warm_up: WarmUp,
    depth: usize,
) -> anyhow::Result<Arc<Consumer>> {
    std::fs::create_dir_all(dir.join(&p.dataset))?;
    for n in &p.names {
        link_or_copy(
            &p.master.path(n),
            &dir.join(&p.dataset).join(n.cache_file_name()),
        )?;
    }
    let c = ConsumerBuilder::new(p.store.clone())
        .cache_dir(&dir)
        .warm_up(warm_up)
        .max_delta_depth(depth)
        .build()?;
    c.refresh_to(p.schedule[0]).await?;
    c.wait_verified().await?;
    Ok(Arc::new(c))
}

/// What one timed run saw.
#[derive(Default)]
struct Run {
    all: Histogram,
    after_swap: Histogram,
    /// Refresh wall times, and the warm-up part of each, in seconds.
    refresh: Vec<f64>,
    warm_up: Vec<f64>,
}

/// Times lookups on `threads` readers for `time`; with `refresh`, the
/// consumer moves along the schedule every [`REFRESH_EVERY`] meanwhile.
async fn measure(
    consumer: &Arc<Consumer>,
    queries: &Arc<[u64]>,
    threads: usize,
    time: Duration,
    refresh: Option<&[u64]>,
) -> anyhow::Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..threads)
        .map(|t| {
            let (consumer, queries, stop) =
                (Arc::clone(consumer), Arc::clone(queries), Arc::clone(&stop));
            std::thread::spawn(move || read(&consumer, &queries, &stop, t as u64))
        })
        .collect();
    let mut run = Run::default();
    let started = tokio::time::Instant::now();
    let mut at = consumer
        .version()
        .and_then(|v| refresh.and_then(|s| s.iter().position(|&x| x == v)))
        .unwrap_or(0);
    let outcome = async {
        match refresh {
            None => tokio::time::sleep(time).await,
            Some(schedule) => {
                let mut next = started + REFRESH_EVERY;
                while next < started + time {
                    tokio::time::sleep_until(next).await;
                    at = (at + 1) % schedule.len();
                    let report = consumer
                        .refresh_to(schedule[at])
                        .await?
                        .ok_or_else(|| anyhow!("refresh to {} did nothing", schedule[at]))?;
                    run.refresh.push(report.duration.as_secs_f64());
                    run.warm_up.push(report.warm_up.as_secs_f64());
                    next += REFRESH_EVERY;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (all, after) = r.join().map_err(|_| anyhow!("a reader panicked"))??;
        run.all.merge(&all);
        run.after_swap.merge(&after);
    }
    outcome?;
    Ok(run)
}

/// One reader: lookups until `stop`, each timed alone.
fn read(
    consumer: &Consumer,
    queries: &[u64],
    stop: &AtomicBool,
    seed: u64,
) -> anyhow::Result<(Histogram, Histogram)> {
    let mut rng = Rng::new(0x5eed_10ad ^ seed);
    let (mut all, mut after) = (Histogram::default(), Histogram::default());
    let mut seen = None;
    let mut after_left = 0;
    while !stop.load(Ordering::Relaxed) {
        let state = consumer.state()?;
        if seen != Some(state.version()) {
            if seen.is_some() {
                after_left = AFTER_SWAP;
            }
            seen = Some(state.version());
        }
        let view = state.view::<movie::Owned>()?;
        for _ in 0..64 {
            let id = queries[rng.below(queries.len() as u64) as usize];
            let t = Instant::now();
            let year = view.find(&id)?.map(|(_, r)| r.get_year());
            let ns = t.elapsed().as_nanos() as u64;
            black_box(year);
            all.record(ns);
            if after_left > 0 {
                after.record(ns);
                after_left -= 1;
            }
        }
    }
    Ok((all, after))
}

/// The load figures and what the config block says of them.
pub async fn figures(
    args: &BenchRun,
    work: &Path,
) -> anyhow::Result<(Vec<Figure>, Map<String, Value>)> {
    let say = |what: String| eprintln!("bench: {what}");
    let dir = work.join("load");
    say(format!(
        "load: publishing a snapshot and {DELTAS} deltas of {} records",
        args.workload.records
    ));
    let p = publish(args, &dir)
        .await
        .context("publishing for the load figures")?;
    let threads = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = Rng::new(args.workload.seed ^ 0x10ad);
    let queries: Arc<[u64]> = (0..args.lookups.max(1000))
        .map(|_| rng.below(args.workload.records))
        .collect();
    let time = args.load_time;

    // One consumer per configuration: (name, warm-up, delta depth).
    // Depth 0: every refresh loads the snapshot anew (a fresh mapping).
    let configs = [
        ("default", WarmUp::default(), 256),
        ("delta_off", WarmUp::Off, 256),
        ("snapshot_off", WarmUp::Off, 0),
        ("snapshot_willneed", WarmUp::WillNeed, 0),
        ("snapshot_populate", WarmUp::Populate, 0),
    ];
    let mut consumers = Vec::new();
    for (name, warm, depth) in configs {
        consumers.push(consumer(&p, dir.join(format!("cache-{name}")), warm, depth).await?);
    }
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    let mut per_config: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for r in 0..args.runs {
        say(format!(
            "load {}/{}: {threads} readers, idle and refreshing every {REFRESH_EVERY:?}",
            r + 1,
            args.runs
        ));
        idle.push(measure(&consumers[0], &queries, threads, time, None).await?);
        busy.push(measure(&consumers[0], &queries, threads, time, Some(&p.schedule)).await?);
        for (i, c) in consumers.iter().enumerate().skip(1) {
            per_config[i].push(measure(c, &queries, threads, time, Some(&p.schedule)).await?);
        }
    }
    let q = |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let p50 = |r: &Run| r.all.quantile(0.50) as f64;
    let p99 = |r: &Run| r.all.quantile(0.99) as f64;
    let max = |r: &Run| r.all.max() as f64;
    let p99_after = |r: &Run| r.after_swap.quantile(0.99) as f64;
    let figures = vec![
        Figure::new(
            "lookup_p50_idle",
            "lookup latency p50, idle consumer",
            Unit::NsPerOp,
            q(&idle, p50),
        ),
        Figure::new(
            "lookup_p99_idle",
            "lookup latency p99, idle consumer",
            Unit::NsPerOp,
            q(&idle, p99),
        ),
        Figure::new(
            "lookup_max_idle",
            "lookup latency max, idle consumer",
            Unit::NsPerOp,
            q(&idle, max),
        ),
        Figure::new(
            "lookup_p50_refreshing",
            "lookup latency p50, refreshing (delta every 100 ms)",
            Unit::NsPerOp,
            q(&busy, p50),
        )
        .vs("lookup_p50_idle"),
        Figure::new(
            "lookup_p99_refreshing",
            "lookup latency p99, refreshing (delta every 100 ms)",
            Unit::NsPerOp,
            q(&busy, p99),
        )
        .vs("lookup_p99_idle")
        .target("<= 3x idle p99", Some(3.0), None),
        Figure::new(
            "lookup_max_refreshing",
            "lookup latency max, refreshing",
            Unit::NsPerOp,
            q(&busy, max),
        )
        .vs("lookup_max_idle"),
        Figure::new(
            "lookup_p99_after_delta_swap",
            "lookup p99, first 1000 per reader after a delta swap (default: populate swaps)",
            Unit::NsPerOp,
            q(&busy, p99_after),
        )
        .vs("lookup_p99_idle"),
        Figure::new(
            "lookup_p99_after_delta_swap_off",
            "lookup p99, first 1000 per reader after a delta swap (warm-up off)",
            Unit::NsPerOp,
            q(&per_config[1], p99_after),
        )
        .vs("lookup_p99_idle"),
        Figure::new(
            "lookup_p99_after_snapshot_swap_off",
            "lookup p99, first 1000 per reader after a snapshot load (warm-up off)",
            Unit::NsPerOp,
            q(&per_config[2], p99_after),
        )
        .vs("lookup_p99_idle"),
        Figure::new(
            "lookup_p99_after_snapshot_swap_willneed",
            "lookup p99, first 1000 per reader after a snapshot load (MADV_WILLNEED)",
            Unit::NsPerOp,
            q(&per_config[3], p99_after),
        )
        .vs("lookup_p99_idle"),
        Figure::new(
            "lookup_p99_after_snapshot_swap_populate",
            "lookup p99, first 1000 per reader after a snapshot load (populate)",
            Unit::NsPerOp,
            q(&per_config[4], p99_after),
        )
        .vs("lookup_p99_idle"),
        Figure::new(
            "refresh_under_load",
            "delta refresh under load (default warm-up)",
            Unit::Seconds,
            busy.iter().flat_map(|r| r.refresh.clone()).collect(),
        ),
        Figure::new(
            "warm_up_delta",
            "warm-up of a delta refresh (default)",
            Unit::Seconds,
            busy.iter().flat_map(|r| r.warm_up.clone()).collect(),
        ),
        Figure::new(
            "refresh_snapshot_off",
            "snapshot-load refresh under load (warm-up off)",
            Unit::Seconds,
            per_config[2]
                .iter()
                .flat_map(|r| r.refresh.clone())
                .collect(),
        ),
        Figure::new(
            "refresh_snapshot_populate",
            "snapshot-load refresh under load (populate)",
            Unit::Seconds,
            per_config[4]
                .iter()
                .flat_map(|r| r.refresh.clone())
                .collect(),
        )
        .vs("refresh_snapshot_off"),
        Figure::new(
            "warm_up_snapshot_populate",
            "warm-up of a snapshot load (populate)",
            Unit::Seconds,
            per_config[4]
                .iter()
                .flat_map(|r| r.warm_up.clone())
                .collect(),
        ),
    ];
    let mut config = Map::new();
    config.insert("load_seconds".into(), json!(time.as_secs_f64()));
    config.insert("load_reader_threads".into(), json!(threads));
    config.insert("load_versions".into(), json!(p.schedule));
    config.insert(
        "load_lookups_timed".into(),
        json!(busy.iter().chain(&idle).map(|r| r.all.count()).sum::<u64>()),
    );
    Ok((figures, config))
}
