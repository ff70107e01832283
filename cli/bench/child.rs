//! The parts of a bench run that need a process of their own: the producer
//! (so its peak memory is its own), the zero-copy consumer's open and the
//! decode-everything consumer's open (so start-up and resident memory are
//! measured from a cold process). Each prints one JSON object on stdout.

use crate::config::BenchWorkload;
use anyhow::{anyhow, Context};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::ConsumerBuilder;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::{Dataset, Movie};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: the one clock parent and child share.
pub fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Fields of `/proc/self/<file>` given in kB (`Rss:   1234 kB`), in
/// bytes, in the order of `names`.
fn proc_fields<const N: usize>(file: &str, names: [&str; N]) -> anyhow::Result<[u64; N]> {
    let path = format!("/proc/self/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut out = [0u64; N];
    for (value, name) in out.iter_mut().zip(names) {
        *value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| anyhow!("no {name} in {path}"))?;
    }
    Ok(out)
}

/// Resident memory of this process from `/proc/self/smaps_rollup`, in
/// bytes: (resident, anonymous). File-backed is the difference.
pub fn rss_split() -> anyhow::Result<(u64, u64)> {
    let [rss, anon] = proc_fields("smaps_rollup", ["Rss", "Anonymous"])?;
    Ok((rss, anon))
}

/// The peak resident memory of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> anyhow::Result<u64> {
    Ok(proc_fields("status", ["VmHWM"])?[0])
}

/// Anonymous and file-backed resident memory now (`RssAnon`, and
/// `RssFile` + `RssShmem`, of `/proc/self/status`), in bytes.
fn rss_kinds() -> anyhow::Result<(u64, u64)> {
    let [anon, file, shmem] = proc_fields("status", ["RssAnon", "RssFile", "RssShmem"])?;
    Ok((anon, file + shmem))
}

/// The peaks of anonymous and of file-backed resident memory, sampled
/// every millisecond by a thread of its own. The kernel keeps only the
/// peak of the two together (`VmHWM`): pages of mapped files (the
/// producer's spooled blobs and record arenas) are the page cache's, which
/// the kernel can write back and drop, so the producer's own memory is the
/// anonymous peak. A spike shorter than a sample can be missed; the
/// allocations that make a peak (a type's records, a blob) take tens of
/// milliseconds to fault in at 1M records.
pub struct MemSampler {
    anon: Arc<std::sync::atomic::AtomicU64>,
    file: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemSampler {
    pub fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let (anon0, file0) = rss_kinds()?;
        let anon = Arc::new(AtomicU64::new(anon0));
        let file = Arc::new(AtomicU64::new(file0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (anon, file, stop) = (anon.clone(), file.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mem-sampler".into())
                .spawn(move || {
                    use std::sync::atomic::Ordering::Relaxed;
                    while !stop.load(Relaxed) {
                        if let Ok((a, f)) = rss_kinds() {
                            anon.fetch_max(a, Relaxed);
                            file.fetch_max(f, Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                })
                .context("starting the memory sampler")?
        };
        Ok(MemSampler {
            anon,
            file,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts the peaks again from the memory now; returns the anonymous
    /// memory now.
    pub fn reset(&self) -> anyhow::Result<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let (a, f) = rss_kinds()?;
        self.anon.store(a, Relaxed);
        self.file.store(f, Relaxed);
        Ok(a)
    }

    /// (anonymous, file-backed) peaks since the start or the last reset,
    /// the memory now included.
    pub fn peaks(&self) -> anyhow::Result<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let (a, f) = rss_kinds()?;
        Ok((
            self.anon.fetch_max(a, Relaxed).max(a),
            self.file.fetch_max(f, Relaxed).max(f),
        ))
    }
}

impl Drop for MemSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the four cycles of the workload on a local store in `dir/store`.
pub async fn produce(
    dir: &Path,
    workload: &BenchWorkload,
    snapshot_every: u32,
) -> anyhow::Result<()> {
    let BenchWorkload {
        records,
        change,
        churn,
        seed,
    } = *workload;
    let sampler = MemSampler::start()?;
    let store = BlobStore::local(dir.join("store"))?;
    let steps = Arc::new(Steps::default());
    let producer = ProducerBuilder::new(store)
        .producer_id("bench")
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .listener(steps.clone())
        .build()?;
    let mut data = Dataset::new(records, seed);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cycles = Vec::new();
    for cycle in 1..=4u32 {
        if cycle > 1 {
            data.advance(u64::from(cycle), change, churn.unwrap_or(0.0));
        }
        steps.0.lock().map_err(|_| anyhow!("poisoned"))?.clear();
        let started = Instant::now();
        // Both cores build records (`Populate::parallel`), as a producer
        // on this machine would.
        let report = producer
            .run_cycle(|p| data.populate_parallel(p, threads))
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let size =
            |f: fn(&BlobName) -> bool| report.blobs.iter().find(|(n, _)| f(n)).map(|(_, b)| *b);
        let stored = |f: fn(&BlobName) -> bool| {
            report
                .stored_blobs
                .iter()
                .find(|(n, _)| f(n))
                .map(|(_, b)| *b)
        };
        cycles.push(json!({
            "cycle": cycle,
            "version": report.version,
            "published": report.published,
            "records": data.len(),
            "seconds": seconds,
            "populate_seconds": report.populate_time.as_secs_f64(),
            "snapshot_bytes": size(|n| matches!(n, BlobName::Snapshot(_))),
            "delta_bytes": size(|n| matches!(n, BlobName::Delta(..))),
            "reverse_bytes": size(|n| matches!(n, BlobName::Reverse(..))),
            "snapshot_bytes_stored": stored(|n| matches!(n, BlobName::Snapshot(_))),
            "delta_bytes_stored": stored(|n| matches!(n, BlobName::Delta(..))),
            "steps": steps.take()?,
        }));
    }
    let peak = peak_rss()?;
    let (anon_peak, file_peak) = sampler.peaks()?;
    // The deltas-only run also times an incremental cycle of the same
    // change, after the full cycles.
    let incremental = if snapshot_every > 1 {
        let edits = data.advance(5, change, churn.unwrap_or(0.0));
        steps.0.lock().map_err(|_| anyhow!("poisoned"))?.clear();
        let mut figures = incremental_cycle(&producer, &data, &edits, &sampler).await?;
        figures["steps"] = steps.take()?;
        Some(figures)
    } else {
        None
    };
    println!(
        "{}",
        json!({
            "cycles": cycles,
            "peak_rss_bytes": peak,
            "populate_threads": threads,
            "peak_anon_bytes": anon_peak,
            "peak_file_bytes": file_peak,
            "incremental": incremental,
        })
    );
    Ok(())
}

/// The duration of each step of the producer's cycles, as they finish.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<(String, f64)>>);

impl Steps {
    /// The steps done since the last call, as a JSON object of seconds.
    fn take(&self) -> anyhow::Result<serde_json::Value> {
        let done = std::mem::take(&mut *self.0.lock().map_err(|_| anyhow!("poisoned"))?);
        Ok(serde_json::Value::Object(
            done.into_iter()
                .map(|(step, seconds)| (step, json!(seconds)))
                .collect(),
        ))
    }
}

impl burrow::producer::CycleListener for Steps {
    fn on_event(&self, event: &burrow::producer::CycleEvent<'_>) {
        if let burrow::producer::CycleEvent::StepDone { step, duration } = event {
            if let Ok(mut steps) = self.0.lock() {
                steps.push((step.to_string(), duration.as_secs_f64()));
            }
        }
    }
}

/// Resident memory now (`VmRSS`), in bytes.
fn rss_now() -> anyhow::Result<u64> {
    Ok(proc_fields("status", ["VmRSS"])?[0])
}

/// Runs one incremental cycle of `edits` and measures it: its time, the
/// growth of the process's anonymous memory at its peak over the
/// anonymous memory just before ([`MemSampler`]: the cycle's own
/// allocations beyond what the allocator already held), and, as before,
/// the growth of the whole resident peak (`VmHWM`, reset through
/// `/proc/self/clear_refs`), which also counts pages of the state's
/// mapped arenas the cycle touches.
async fn incremental_cycle(
    producer: &burrow::producer::Producer,
    data: &Dataset,
    edits: &burrow::testing::workload::Edits,
    sampler: &MemSampler,
) -> anyhow::Result<serde_json::Value> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let anon_before = sampler.reset()?;
    let before = rss_now()?;
    let started = Instant::now();
    let report = producer
        .run_incremental_cycle(|inc| data.add_edits(edits, inc))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss()?;
    let (anon_peak, _) = sampler.peaks()?;
    anyhow::ensure!(report.published, "the incremental cycle published nothing");
    Ok(json!({
        "seconds": seconds,
        "upserts": edits.changed.len() + edits.added.len(),
        "deletes": edits.removed.len(),
        "anon_before_bytes": anon_before,
        "anon_growth_bytes": anon_peak.saturating_sub(anon_before),
        "peak_growth_bytes": peak.saturating_sub(before),
    }))
}

/// Opens a consumer whose cache already holds the blobs, and looks one
/// key up. Times from `t0_ns` (taken by the parent just before it spawned
/// this process) to the first successful lookup, and to the state being
/// verified (every cache file's checksum re-checked in the background).
pub async fn open(dir: &Path, t0_ns: u128, id: u64) -> anyhow::Result<()> {
    let in_process = Instant::now();
    let store = BlobStore::local(dir.join("store"))?;
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(dir.join("cache"))
        .build()?;
    let report = consumer
        .refresh()
        .await?
        .ok_or_else(|| anyhow!("the consumer did not load a version"))?;
    let state = consumer.state()?;
    let view = state.view::<movie::Owned>()?;
    let (_, record) = view
        .find(&id)?
        .ok_or_else(|| anyhow!("id {id} not found"))?;
    let year = record.get_year();
    let open_ns = wall_ns().saturating_sub(t0_ns);
    let in_process_ns = in_process.elapsed().as_nanos();
    // Memory as the open left it, before the background re-verification
    // reads every page of the blobs.
    let (rss, anon) = rss_split()?;
    // The cache files were written by another process, so this one
    // re-verifies them in the background: the state serves meanwhile.
    consumer.wait_verified().await?;
    let verified_ns = wall_ns().saturating_sub(t0_ns);
    // Every record touched: its data section (year) and an out-of-line
    // field (title), as a read service that serves them all would.
    let (mut years, mut title_bytes) = (0u64, 0usize);
    for (_, record) in view.iter() {
        years += u64::from(record.get_year());
        title_bytes += record.get_title()?.len();
    }
    std::hint::black_box((years, title_bytes));
    let (rss_after_scan, anon_after_scan) = rss_split()?;
    if report.fetched_bytes != 0 {
        return Err(anyhow!(
            "the open fetched {} bytes: the cache was not warm",
            report.fetched_bytes
        ));
    }
    println!(
        "{}",
        json!({
            "open_seconds": open_ns as f64 / 1e9,
            "verified_seconds": verified_ns as f64 / 1e9,
            "in_process_seconds": in_process_ns as f64 / 1e9,
            "rss_bytes": rss,
            "anon_bytes": anon,
            "rss_after_scan_bytes": rss_after_scan,
            "anon_after_scan_bytes": anon_after_scan,
            "year": year,
            "steps": report.steps.len(),
        })
    );
    Ok(())
}

/// The decode-everything consumer: maps the snapshot blob and decodes every
/// record into a `HashMap<u64, Movie>`, then looks one key up.
pub fn decode(blob: &Path, version: u64, t0_ns: u128, id: u64) -> anyhow::Result<()> {
    let map = decode_all(blob, version)?;
    let year = map
        .get(&id)
        .ok_or_else(|| anyhow!("id {id} not found"))?
        .year;
    let open_ns = wall_ns().saturating_sub(t0_ns);
    let (rss, anon) = rss_split()?;
    println!(
        "{}",
        json!({
            "open_seconds": open_ns as f64 / 1e9,
            "rss_bytes": rss,
            "anon_bytes": anon,
            "year": year,
            "records": map.len(),
        })
    );
    Ok(())
}

/// Every record of a snapshot blob, decoded into owned structs.
pub fn decode_all(blob: &Path, version: u64) -> anyhow::Result<HashMap<u64, Movie>> {
    let name = BlobName::Snapshot(version).to_string();
    let open = Arc::new(burrow::blobstore::cache::map_file(blob, &name, false)?);
    let state = burrow::consumer::ReadState::from_snapshot(open, version)?;
    let view = state.view::<movie::Owned>()?;
    let mut map = HashMap::with_capacity(view.len() as usize);
    for (_, record) in view.iter() {
        let m = Movie::decode(record)?;
        map.insert(m.id, m);
    }
    Ok(map)
}
