//! Invariant: a producer or consumer process killed with SIGKILL at any
//! point leaves a store and a cache from which a fresh producer continues
//! the chain, and consumers (following, or starting fresh) reach a state
//! equal to the model; a cache holds only whole, verified blobs after a
//! restart, and the temp files of interrupted fetches are gone.
//!
//! The producer's points include kills while a blob is being spooled
//! (`mid-blob-write`) and between the parts of a multipart upload
//! (`after-upload-part`: the crash process uploads in 512-byte parts, so
//! every blob goes up in several); the temporary uploads those leave are
//! never read as blobs, and gc sweeps them.
//!
//! The processes are `burrow-crashtest` (tests/bin/crashtest.rs): the real
//! producer and consumer code. They are killed at failpoints
//! (`BURROW_FAILPOINT`, see `burrow::testing::failpoint`) and, to reach the points
//! between failpoints, from outside after pseudo-random delays (a fixed
//! seed, printed, so a failure can be replayed).

#[path = "bin/crash_model.rs"]
mod crash_model;

use burrow::blobstore::{BlobCache, BlobStore};
use burrow::consumer::{Consumer, ConsumerBuilder, ReadState};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::failpoint::PRODUCER_POINTS;
use burrow::testing::workload::{Movie, Rng};
use crash_model::{generation, generation_of, CrashModel};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_burrow-crashtest");

/// How a child process ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Killed,
    Exited,
}

fn produce(store: &Path, from: u64, to: u64, failpoint: Option<&str>) -> End {
    produce_with(store, from, to, failpoint, false)
}

/// As [`produce`], by incremental cycles when `incremental`.
fn produce_with(
    store: &Path,
    from: u64,
    to: u64,
    failpoint: Option<&str>,
    incremental: bool,
) -> End {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "produce",
        store.to_str().unwrap(),
        &from.to_string(),
        &to.to_string(),
    ]);
    if incremental {
        cmd.arg("incremental");
    }
    finish(cmd, failpoint, None)
}

fn consume(store: &Path, cache: &Path, failpoint: Option<&str>) -> End {
    let mut cmd = Command::new(BIN);
    cmd.args(["consume", store.to_str().unwrap(), cache.to_str().unwrap()]);
    finish(cmd, failpoint, None)
}

fn finish(mut cmd: Command, failpoint: Option<&str>, kill_after: Option<Duration>) -> End {
    cmd.env("BURROW_FAILPOINT", failpoint.unwrap_or(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(delay) = kill_after {
        // Not a wait for something to happen: the delay picks the moment
        // of an asynchronous SIGKILL, as a machine failure would.
        std::thread::sleep(delay);
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    match out.status.signal() {
        Some(9) => End::Killed,
        Some(other) => panic!("child died of signal {other}"),
        None => {
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            End::Exited
        }
    }
}

fn model_of(state: &ReadState) -> CrashModel {
    let view = state.view::<movie::Owned>().unwrap();
    let mut out = CrashModel::new();
    for (ordinal, record) in view.iter() {
        let m = Movie::decode(record).unwrap();
        let (found, _) = view.find(&m.id).unwrap().unwrap();
        out.insert(m.id, m);
        assert_eq!(found, ordinal);
    }
    assert_eq!(view.len() as usize, out.len());
    out
}

/// Checks a consumer's state is whole: it equals the model of the
/// generation its record 0 names. Returns that generation.
fn consistent(consumer: &Consumer) -> Result<u64, String> {
    let state = consumer.state().map_err(|e| e.to_string())?;
    let model = model_of(&state);
    let g = generation_of(&model).ok_or("no generation record")?;
    if model != generation(g) {
        return Err(format!(
            "state at version {} is not generation {g}",
            state.version()
        ));
    }
    Ok(g)
}

fn consumer(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .build()
        .unwrap()
}

/// One kill of the producer, then recovery (by incremental cycles when
/// `incremental`); returns what was inconsistent.
async fn kill_and_recover(
    store_dir: &Path,
    store: &BlobStore,
    follower: &Consumer,
    next_gen: &mut u64,
    kill: impl FnOnce(u64) -> End,
    scratch: &Path,
    incremental: bool,
) -> (End, Vec<String>) {
    let mut bad = Vec::new();
    let end = kill(*next_gen);
    // A consumer following the store sees a whole version, whatever moment
    // the producer died at.
    match follower.refresh().await {
        Ok(_) => {
            if let Err(e) = consistent(follower) {
                bad.push(format!("follower after the kill: {e}"));
            }
        }
        Err(e) => bad.push(format!("follower refresh after the kill: {e}")),
    }
    // A fresh producer restores and continues; the generation the killed
    // one may or may not have announced is published (or found unchanged).
    let target = *next_gen + 1;
    if produce_with(store_dir, *next_gen, target, None, incremental) != End::Exited {
        bad.push("the recovering producer did not finish".into());
    }
    *next_gen = target + 1;
    match follower.refresh().await {
        Ok(_) => match consistent(follower) {
            Ok(g) if g == target => {}
            Ok(g) => bad.push(format!("follower at generation {g}, expected {target}")),
            Err(e) => bad.push(format!("follower after recovery: {e}")),
        },
        Err(e) => bad.push(format!("follower refresh after recovery: {e}")),
    }
    let fresh = consumer(store, scratch);
    match fresh.refresh().await {
        Ok(_) => match consistent(&fresh) {
            Ok(g) if g == target => {}
            Ok(g) => bad.push(format!(
                "fresh consumer at generation {g}, expected {target}"
            )),
            Err(e) => bad.push(format!("fresh consumer: {e}")),
        },
        Err(e) => bad.push(format!("fresh consumer refresh: {e}")),
    }
    match burrow::verify::verify_store(store).await {
        Ok(report) if report.is_clean() => {}
        Ok(report) => bad.push(format!("verify: {:?}", report.problems)),
        Err(e) => bad.push(format!("verify: {e}")),
    }
    (end, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_killed_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    assert_eq!(produce(&store_dir, 0, 1, None), End::Exited);
    let follower = consumer(&store, &dir.path().join("follower"));
    follower.refresh().await.unwrap();
    let mut next_gen = 2;
    let mut exercised = 0;
    let mut not_reached = 0;
    let mut inconsistent = Vec::new();
    let producer_points = &burrow::testing::failpoint::NAMES[..PRODUCER_POINTS];
    let mut runs: Vec<String> = Vec::new();
    for name in producer_points {
        // The killed process publishes three generations: with a snapshot
        // every third cycle, the n-th hit falls in cycles with and without
        // a snapshot.
        for n in 1..=3 {
            runs.push(format!("{name}@{n}"));
        }
    }
    for n in 1..=12 {
        runs.push(format!("any@{n}"));
    }
    for (i, spec) in runs.iter().enumerate() {
        let (end, bad) = kill_and_recover(
            &store_dir,
            &store,
            &follower,
            &mut next_gen,
            |g| produce(&store_dir, g, g + 2, Some(spec)),
            &dir.path().join(format!("fresh-{i}")),
            false,
        )
        .await;
        match end {
            End::Killed => exercised += 1,
            End::Exited => not_reached += 1,
        }
        if !bad.is_empty() {
            inconsistent.push(format!("{spec}: {bad:?}"));
        }
    }
    // Kills from outside, at pseudo-random moments of a run of cycles.
    let seed = 0x5eed_b0b0;
    let mut rng = Rng::new(seed);
    let mut async_kills = 0;
    for i in 0..16 {
        let delay = Duration::from_micros(rng.below(40_000));
        let (end, bad) = kill_and_recover(
            &store_dir,
            &store,
            &follower,
            &mut next_gen,
            |g| {
                let mut cmd = Command::new(BIN);
                cmd.args(["produce", store_dir.to_str().unwrap(), &g.to_string()])
                    .arg((g + 4).to_string());
                finish(cmd, None, Some(delay))
            },
            &dir.path().join(format!("fresh-async-{i}")),
            false,
        )
        .await;
        if end == End::Killed {
            async_kills += 1;
        }
        if !bad.is_empty() {
            inconsistent.push(format!(
                "random kill {i} after {delay:?} (seed {seed:#x}): {bad:?}"
            ));
        }
    }
    eprintln!(
        "crash figures: producer killed at {exercised} failpoint runs ({not_reached} runs ended \
         before their point), {async_kills} kills at random moments; {} inconsistent",
        inconsistent.len()
    );
    assert!(
        exercised >= producer_points.len() + 12,
        "only {exercised} failpoint kills happened"
    );
    assert!(inconsistent.is_empty(), "{inconsistent:#?}");
    // Kills between upload parts leave temporary uploads, never a blob:
    // gc sweeps them, and the store still verifies.
    let left = burrow::gc::find_leftovers(&store).await.unwrap();
    eprintln!(
        "crash figures: {} temporary uploads left by the kills",
        left.len()
    );
    let swept = burrow::gc::sweep_leftovers(&store, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.len(), left.len());
    assert_eq!(burrow::gc::find_leftovers(&store).await.unwrap(), vec![]);
    assert!(burrow::verify::verify_store(&store)
        .await
        .unwrap()
        .is_clean());
}

/// Invariant: the same, for incremental cycles: a producer killed at any
/// failpoint of an incremental cycle leaves no announced version missing a
/// blob, and a restored producer's incremental cycles chain on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_killed_during_incremental_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    assert_eq!(produce(&store_dir, 0, 1, None), End::Exited);
    let follower = consumer(&store, &dir.path().join("follower"));
    follower.refresh().await.unwrap();
    let mut next_gen = 2;
    let mut exercised = 0;
    let mut inconsistent = Vec::new();
    // An incremental cycle writes no snapshot: its failpoint is never hit.
    let points: Vec<&str> = burrow::testing::failpoint::NAMES[..PRODUCER_POINTS]
        .iter()
        .copied()
        .filter(|n| *n != "after-snapshot-put")
        .collect();
    let mut runs = Vec::new();
    for name in &points {
        for n in 1..=2 {
            runs.push(format!("{name}@{n}"));
        }
    }
    for (i, spec) in runs.iter().enumerate() {
        let (end, bad) = kill_and_recover(
            &store_dir,
            &store,
            &follower,
            &mut next_gen,
            |g| produce_with(&store_dir, g, g + 2, Some(spec), true),
            &dir.path().join(format!("fresh-{i}")),
            true,
        )
        .await;
        if end == End::Killed {
            exercised += 1;
        }
        if !bad.is_empty() {
            inconsistent.push(format!("{spec}: {bad:?}"));
        }
    }
    eprintln!(
        "crash figures: incremental producer killed at {exercised} of {} failpoint runs; {} \
         inconsistent",
        runs.len(),
        inconsistent.len()
    );
    assert_eq!(
        exercised,
        runs.len(),
        "every failpoint run killed the producer"
    );
    assert!(inconsistent.is_empty(), "{inconsistent:#?}");
}

/// The files in a cache directory: (temp files, final names).
fn cache_files(cache: &Path) -> (Vec<String>, Vec<String>) {
    crate::common::cache_files_in(cache)
        .into_iter()
        .partition(|name| name.contains(".tmp-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_while_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    // Versions 1..=5: snapshots at 1 and 4, so a fresh consumer fetches
    // the snapshot of 4 and the delta to 5.
    assert_eq!(produce(&store_dir, 1, 5, None), End::Exited);
    let mut exercised = 0;
    let mut inconsistent = Vec::new();
    let mut temp_files_left = 0;
    for name in &burrow::testing::failpoint::NAMES[PRODUCER_POINTS..] {
        for n in 1..=2 {
            let spec = format!("{name}@{n}");
            let cache = dir.path().join(format!("cache-{name}-{n}"));
            if consume(&store_dir, &cache, Some(&spec)) == End::Killed {
                exercised += 1;
            }
            let (tmp, _) = cache_files(&cache);
            temp_files_left += tmp.len();
            if *name == "fetch-mid-write" && tmp.is_empty() {
                inconsistent.push(format!("{spec}: the kill left no temp file to clean"));
            }
            // Restart: opening the cache removes the temp files; whatever
            // has a final name is whole and verifies.
            let mut bad = Vec::new();
            BlobCache::open(&cache).unwrap();
            let (tmp, done) = cache_files(&cache);
            if !tmp.is_empty() {
                bad.push(format!("temp files survive a restart: {tmp:?}"));
            }
            for file in &done {
                if let Err(e) = burrow::blobstore::cache::map_file(&cache.join(file), file, true) {
                    bad.push(format!("{file} is in the cache but does not verify: {e}"));
                }
            }
            let c = consumer(&store, &cache);
            match c.refresh().await {
                Ok(_) => match consistent(&c) {
                    Ok(5) => {}
                    Ok(g) => bad.push(format!("restarted consumer at generation {g}, expected 5")),
                    Err(e) => bad.push(e),
                },
                Err(e) => bad.push(format!("restarted consumer: {e}")),
            }
            if !bad.is_empty() {
                inconsistent.push(format!("{spec}: {bad:?}"));
            }
        }
    }
    eprintln!(
        "crash figures: consumer killed at {exercised} fetch failpoints, {temp_files_left} temp \
         files left by the kills and removed at restart; {} inconsistent",
        inconsistent.len()
    );
    assert!(exercised >= 5, "only {exercised} consumer kills happened");
    assert!(temp_files_left >= 2, "the mid-write kills left temp files");
    assert!(inconsistent.is_empty(), "{inconsistent:#?}");
}
