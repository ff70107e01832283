//! The soak (issue 17): many refreshes of a small dataset while readers
//! hold and drop states, with what a leak would grow measured from
//! `/proc/self` at checkpoints: anonymous memory, mapped regions, open
//! descriptors, and the cache files still mapped after the cache deleted
//! them.
//!
//! A producer publishes [`VERSIONS`] versions (a snapshot every fourth);
//! the consumer then moves to a random other version at each refresh
//! (deltas, reverse deltas, snapshot loads past [`MAX_DEPTH`] deltas),
//! with a cache that keeps only [`KEPT_FILES`] files beyond the current
//! state, so that blobs leave the cache while old states may still map
//! them, and are fetched again later. Two readers look keys up in the
//! current state, each holding up to three states at a time. At each
//! checkpoint (after 100 refreshes, each power of ten after, and the end)
//! the readers drop what they hold and wait while the process is measured,
//! so every checkpoint measures the same thing: the consumer and its one
//! current state.

use super::child::rss_split;
use super::report::{Figure, Unit};
use crate::config::BenchRun;
use anyhow::{anyhow, Context};
use burrow::blobstore::{BlobStore, CacheRetention};
use burrow::consumer::{Consumer, ConsumerBuilder, ReadState, Step};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::{Dataset, Rng};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VERSIONS: u64 = 12;
const MAX_DEPTH: usize = 3;
const KEPT_FILES: u64 = 8;
const READERS: usize = 2;

/// What a checkpoint measured.
#[derive(Debug, Clone)]
struct Checkpoint {
    refreshes: u64,
    anon_bytes: u64,
    maps: u64,
    fds: u64,
    threads: u64,
    /// Mapped files under the cache directory, and those of them deleted.
    cache_files_mapped: u64,
    /// The blobs the current state reads (its snapshot and deltas): all
    /// that should be mapped once readers hold nothing else.
    state_blobs: u64,
    deleted_mapped: u64,
    cache_files: u64,
}

impl Checkpoint {
    fn json(&self) -> Value {
        json!({
            "refreshes": self.refreshes,
            "anon_bytes": self.anon_bytes,
            "maps": self.maps,
            "fds": self.fds,
            "threads": self.threads,
            "cache_files_mapped": self.cache_files_mapped,
            "state_blobs": self.state_blobs,
            "maps_besides_cache_files": self.maps - self.cache_files_mapped,
            "deleted_mapped": self.deleted_mapped,
            "cache_files": self.cache_files,
        })
    }
}

fn measure(refreshes: u64, cache: &Path, state_blobs: u64) -> anyhow::Result<Checkpoint> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let cache_prefix = cache.display().to_string();
    let mut mapped: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_once(&cache_prefix).map(|(_, rest)| rest))
        .collect();
    mapped.sort_unstable();
    mapped.dedup();
    let fds = std::fs::read_dir("/proc/self/fd")
        .context("reading /proc/self/fd")?
        .count() as u64;
    let cache_files = walk_files(cache)?;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Threads in /proc/self/status")?;
    Ok(Checkpoint {
        refreshes,
        anon_bytes: rss_split()?.1,
        maps: maps.lines().count() as u64,
        fds,
        threads,
        cache_files_mapped: mapped.len() as u64,
        state_blobs,
        deleted_mapped: mapped.iter().filter(|l| l.ends_with("(deleted)")).count() as u64,
        cache_files,
    })
}

fn walk_files(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += walk_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

/// The readers' controls: stop, and pause (drop every held state and wait).
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicUsize,
}

fn reader(consumer: &Consumer, control: &Control, records: u64, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed);
    let mut held: VecDeque<Arc<ReadState>> = VecDeque::new();
    while !control.stop.load(Ordering::Relaxed) {
        if control.pause.load(Ordering::Acquire) {
            held.clear();
            control.paused.fetch_add(1, Ordering::AcqRel);
            while control.pause.load(Ordering::Acquire) && !control.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(200));
            }
            control.paused.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let state = consumer.state()?;
        let view = state.view::<movie::Owned>()?;
        for _ in 0..16 {
            std::hint::black_box(view.find(&rng.below(records))?.map(|(_, r)| r.get_year()));
        }
        drop(view);
        // A service between requests: leaves the refreshes some CPU.
        std::thread::sleep(Duration::from_micros(100));
        if rng.below(8) == 0 {
            held.push_back(state);
            if held.len() > 3 {
                held.pop_front();
            }
        }
    }
    Ok(())
}

/// Threads of the soak runtime's blocking pool, all started before the
/// soak and kept for its whole length.
const BLOCKING_THREADS: usize = 4;

/// The soak's figures and its checkpoints (in the config block). It runs
/// on a runtime of its own, on a thread of its own, with a fixed set of
/// threads (a current-thread runtime and a blocking pool started in full
/// and never shrunk): a pool that grew or shrank between checkpoints would
/// change their stacks, mapped regions and allocator arenas, which are
/// not the consumer's.
pub async fn figures(
    args: &BenchRun,
    work: &Path,
) -> anyhow::Result<(Vec<Figure>, Map<String, Value>)> {
    let (args, work) = (args.clone(), work.to_path_buf());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_keep_alive(Duration::from_secs(365 * 24 * 3600))
            .build()
            .context("starting the soak's runtime")?;
        runtime.block_on(async {
            // Every blocking thread at once: each waits for all the others.
            let all = Arc::new(std::sync::Barrier::new(BLOCKING_THREADS));
            let started: Vec<_> = (0..BLOCKING_THREADS)
                .map(|_| {
                    let all = Arc::clone(&all);
                    tokio::task::spawn_blocking(move || {
                        all.wait();
                    })
                })
                .collect();
            for s in started {
                s.await?;
            }
            soak(&args, &work).await
        })
    })
    .join()
    .map_err(|_| anyhow!("the soak's thread panicked"))?
}

async fn soak(args: &BenchRun, work: &Path) -> anyhow::Result<(Vec<Figure>, Map<String, Value>)> {
    let say = |what: String| eprintln!("bench: {what}");
    let dir = work.join("soak");
    let w = args.workload;
    say(format!(
        "soak: publishing {VERSIONS} versions of {} records",
        w.records
    ));
    let store = BlobStore::local(dir.join("store"))?;
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("bench-soak")
        .snapshot_every(4)
        .primary_key::<movie::Owned>(&["id"])
        .build()?;
    let mut data = Dataset::new(w.records, w.seed);
    for cycle in 1..=VERSIONS {
        if cycle > 1 {
            data.advance(cycle, w.change, w.churn.unwrap_or(0.0));
        }
        producer.run_cycle(|p| data.populate(p)).await?;
    }
    drop(producer);

    let cache: PathBuf = dir.join("cache");
    std::fs::create_dir_all(&cache)?;
    let cache = cache.canonicalize()?;
    let consumer = Arc::new(
        ConsumerBuilder::new(store)
            .cache_dir(&cache)
            .max_delta_depth(MAX_DEPTH)
            .cache_retention(CacheRetention {
                max_bytes: u64::MAX,
                max_files: KEPT_FILES,
            })
            .build()?,
    );
    consumer.refresh_to(1).await?;
    let control = Arc::new(Control::default());
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (consumer, control) = (Arc::clone(&consumer), Arc::clone(&control));
            std::thread::spawn(move || reader(&consumer, &control, w.records, w.seed ^ r as u64))
        })
        .collect();

    let total = args.refreshes;
    let mut marks: Vec<u64> = std::iter::successors(Some(100u64), |m| m.checked_mul(10))
        .take_while(|&m| m < total)
        .collect();
    marks.push(total);
    let mut rng = Rng::new(w.seed ^ 0x50a6);
    let mut checkpoints = Vec::new();
    let mut durations = Vec::new();
    let (mut evicted, mut snapshots, mut reverses) = (0u64, 0u64, 0u64);
    let mut held_deleted = 0u64;
    let mut at = 1;
    let outcome = async {
        for done in 1..=total {
            let mut to = 1 + rng.below(VERSIONS);
            if to == at {
                to = 1 + to % VERSIONS;
            }
            let report = consumer
                .refresh_to(to)
                .await?
                .ok_or_else(|| anyhow!("refresh {done} to {to} did nothing"))?;
            at = to;
            evicted += report.cache.evicted_files;
            snapshots += report
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Snapshot(_)))
                .count() as u64;
            reverses += report
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Reverse(..)))
                .count() as u64;
            if done % 10 == 0 {
                durations.push(report.duration.as_secs_f64());
                // While readers hold old states, their evicted files stay
                // mapped: what the checkpoints then see released.
                held_deleted = held_deleted.max(measure(done, &cache, 0)?.deleted_mapped);
            }
            if marks.contains(&done) {
                control.pause.store(true, Ordering::Release);
                while control.paused.load(Ordering::Acquire) < READERS {
                    if readers.iter().any(|r| r.is_finished()) {
                        return Err(anyhow!("a soak reader stopped"));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let state = consumer.state()?;
                let c = measure(done, &cache, state.delta_depth() as u64 + 1)?;
                drop(state);
                say(format!("soak: after {done} refreshes: {c:?}"));
                checkpoints.push(c);
                control.pause.store(false, Ordering::Release);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    control.stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().map_err(|_| anyhow!("a soak reader panicked"))??;
    }
    outcome?;

    let first = checkpoints.first().cloned().context("no checkpoint")?;
    let last = checkpoints.last().cloned().context("no checkpoint")?;
    let figures = vec![
        Figure::new(
            "soak_anon_at_100",
            "soak: anonymous memory after 100 refreshes",
            Unit::Bytes,
            vec![first.anon_bytes as f64],
        ),
        Figure::new(
            "soak_anon_at_end",
            "soak: anonymous memory at the end",
            Unit::Bytes,
            vec![last.anon_bytes as f64],
        )
        .vs("soak_anon_at_100")
        .target("within 5% of after 100", Some(1.05), None),
        Figure::new(
            "soak_maps_at_100",
            "soak: mapped regions after 100 refreshes (besides the state's blobs)",
            Unit::Count,
            vec![(first.maps - first.cache_files_mapped) as f64],
        ),
        Figure::new(
            "soak_maps_at_end",
            "soak: mapped regions at the end (besides the state's blobs)",
            Unit::Count,
            vec![(last.maps - last.cache_files_mapped) as f64],
        )
        .vs("soak_maps_at_100")
        .target("within 5% of after 100", Some(1.05), None),
        Figure::new(
            "soak_fds_at_100",
            "soak: open descriptors after 100 refreshes",
            Unit::Count,
            vec![first.fds as f64],
        ),
        Figure::new(
            "soak_fds_at_end",
            "soak: open descriptors at the end",
            Unit::Count,
            vec![last.fds as f64],
        )
        .vs("soak_fds_at_100")
        .target("within 5% of after 100", Some(1.05), None),
        Figure::new(
            "soak_blobs_mapped_at_end",
            "soak: cache files mapped at the end (the state's blobs)",
            Unit::Count,
            vec![last.cache_files_mapped as f64],
        ),
        Figure::new(
            "soak_deleted_mapped_at_end",
            "soak: deleted cache files still mapped at the end",
            Unit::Count,
            vec![last.deleted_mapped as f64],
        )
        .target("none", None, Some(0.0)),
        Figure::new(
            "soak_refresh",
            "soak: refresh (every 10th)",
            Unit::Seconds,
            durations,
        ),
    ];
    let mut config = Map::new();
    config.insert("soak_refreshes".into(), json!(total));
    config.insert("soak_versions".into(), json!(VERSIONS));
    config.insert("soak_evicted_files".into(), json!(evicted));
    config.insert(
        "soak_deleted_mapped_max_while_held".into(),
        json!(held_deleted),
    );
    config.insert("soak_snapshot_loads".into(), json!(snapshots));
    config.insert("soak_reverse_deltas".into(), json!(reverses));
    config.insert(
        "soak_checkpoints".into(),
        Value::Array(checkpoints.iter().map(Checkpoint::json).collect()),
    );
    Ok((figures, config))
}
