//! The consumer's cache stays bounded: after each swap it holds what the
//! current state maps plus at most the configured amount more, the oldest
//! versions evicted first, the current state's files never, and a state a
//! reader still holds keeps reading after its files went.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore, Compression};
use burrow::consumer::{CacheRetention, Consumer, ConsumerBuilder, RefreshReport, Step};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A producer of the Movie workload (raw blobs, so a cache file is as
/// large as its stored object) writing a snapshot every `every` cycles.
fn producer_every(store: &BlobStore, every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("p")
        .compression(Compression::None)
        .snapshot_every(every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

fn consumer_with(
    store: &BlobStore,
    cache: &Path,
    retention: CacheRetention,
    max_delta_depth: usize,
) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .cache_retention(retention)
        .max_delta_depth(max_delta_depth)
        .build()
        .unwrap()
}

/// Changes a few records of `model` for cycle `generation`.
fn change(model: &mut Model, generation: u64) {
    for i in (generation % 7..model.len() as u64).step_by(9) {
        model.insert(i, movie_value(i, generation));
    }
}

/// The blob files in the consumer's (one dataset's) cache directory.
fn cached_blobs(cache: &Path) -> BTreeSet<BlobName> {
    cache_files_in(cache)
        .iter()
        .filter_map(|f| {
            let file = f.split_once('/').map_or(f.as_str(), |(_, file)| file);
            assert!(!file.contains(".tmp-"), "a temp file was left: {f}");
            BlobName::from_cache_file_name(file)
        })
        .collect()
}

/// The size of `name` in the store (the cache holds the same bytes).
fn stored_len(store_dir: &Path, name: &BlobName) -> u64 {
    std::fs::metadata(store_dir.join(name.to_string()))
        .unwrap()
        .len()
}

/// The blobs a state maps, followed from the reports: a refresh that starts
/// with a snapshot replaces them, one of deltas adds to them.
fn follow_live(live: &mut BTreeSet<BlobName>, report: &RefreshReport) {
    if matches!(report.steps.first(), Some(Step::Snapshot(_))) {
        live.clear();
    }
    live.extend(report.steps.iter().map(|s| s.blob()));
}

/// The age order of the trim: the newest version a blob reaches.
fn reaches(name: &BlobName) -> u64 {
    match *name {
        BlobName::Snapshot(v) | BlobName::Delta(_, v) | BlobName::Reverse(v, _) => v,
        other => panic!("not a cached blob: {other}"),
    }
}

/// Invariant: a consumer that follows many versions, reloading snapshots
/// as deltas stack up, ends every refresh with its current state's blobs
/// plus the newest other blobs that fit the bound, and nothing else; it
/// serves every record right at every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_many_versions_stays_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let cache = dir.path().join("cache");
    let producer = producer_every(&store, 4);
    let mut model: Model = (0..300).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let snapshot_len = stored_len(&store_dir, &BlobName::Snapshot(1));
    // Room for about one snapshot and a few deltas beyond the live ones.
    let retention = CacheRetention {
        max_bytes: snapshot_len + snapshot_len / 2,
        max_files: 3,
    };
    let consumer = consumer_with(&store, &cache, retention, 3);
    let mut live = BTreeSet::new();
    let mut applied = BTreeSet::new();
    let mut evicted = 0;
    for generation in 1..=24 {
        let report = consumer.refresh().await.unwrap().expect("a new version");
        follow_live(&mut live, &report);
        applied.extend(report.steps.iter().map(|s| s.blob()));
        evicted += report.cache.evicted_files;
        assert_eq!(snapshot_of(&consumer), model, "version {}", report.to);

        // The model of the trim: every other blob applied so far, newest
        // first, kept while both bounds hold.
        let mut others: Vec<BlobName> = applied.difference(&live).copied().collect();
        others.sort_by_key(|n| std::cmp::Reverse((reaches(n), *n)));
        let (mut files, mut bytes) = (0, 0);
        let mut expected = live.clone();
        for name in others {
            let len = stored_len(&store_dir, &name);
            if files >= retention.max_files || bytes + len > retention.max_bytes {
                break;
            }
            files += 1;
            bytes += len;
            expected.insert(name);
        }
        assert_eq!(
            cached_blobs(&cache),
            expected,
            "version {}: the current state's blobs and the newest others within the bound",
            report.to
        );
        let live_bytes: u64 = live.iter().map(|n| stored_len(&store_dir, n)).sum();
        assert_eq!(report.cache.kept_files, expected.len() as u64);
        assert_eq!(report.cache.kept_bytes, live_bytes + bytes);
        assert_eq!(report.cache.failures, 0);

        change(&mut model, generation);
        publish(&producer, &model).await.unwrap();
    }
    assert!(evicted > 5, "the bound evicted blobs: {evicted}");
}

/// Invariant: the current state's files are never evicted, even when they
/// alone exceed the bound; a reader holding an older state keeps reading it
/// after its files were evicted (a removed file stays mapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_is_kept_beyond_the_bound_and_old_states_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let cache = dir.path().join("cache");
    let producer = producer_every(&store, 3);
    let mut model: Model = (0..200).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let consumer = consumer_with(&store, &cache, CacheRetention::CURRENT_ONLY, 2);
    let mut live = BTreeSet::new();
    let mut held = Vec::new();
    for generation in 1..=9 {
        let report = consumer.refresh().await.unwrap().expect("a new version");
        follow_live(&mut live, &report);
        assert_eq!(
            cached_blobs(&cache),
            live,
            "version {}: exactly the current state's blobs",
            report.to
        );
        assert!(report.cache.kept_bytes > 0, "kept although over the bound");
        held.push((consumer.state().unwrap(), model.clone()));
        change(&mut model, generation);
        publish(&producer, &model).await.unwrap();
    }
    assert!(
        !cached_blobs(&cache).contains(&BlobName::Snapshot(1)),
        "the first snapshot was evicted"
    );
    for (state, model) in &held {
        assert_eq!(&state_model(state), model, "version {}", state.version());
    }
}

/// Invariant: a consumer restarted on a trimmed cache opens from what is
/// left (fetching nothing when its state's files are there) and fetches
/// again what the trim removed when it needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_trimmed_cache_refetches_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let cache = dir.path().join("cache");
    let producer = producer_every(&store, 1);
    let mut model: Model = (0..150).map(|i| (i, movie_value(i, 0))).collect();
    let mut models = vec![(1, model.clone())];
    publish(&producer, &model).await.unwrap();
    {
        // Loads snapshot/1, then a snapshot at every refresh (depth 1).
        let first = consumer_with(&store, &cache, CacheRetention::CURRENT_ONLY, 1);
        for generation in 1..=4 {
            first.refresh().await.unwrap();
            change(&mut model, generation);
            let v = publish(&producer, &model).await.unwrap().version;
            models.push((v, model.clone()));
        }
        first.refresh().await.unwrap();
        assert_eq!(first.version(), Some(5));
    }
    assert_eq!(
        cached_blobs(&cache),
        BTreeSet::from([BlobName::Snapshot(5)]),
        "the trimmed cache holds the last state's snapshot only"
    );

    let second = consumer_with(&store, &cache, CacheRetention::CURRENT_ONLY, 1);
    let report = second.refresh().await.unwrap().expect("loaded");
    assert_eq!(report.fetched_bytes, 0, "opened from the cache: {report:?}");
    assert_eq!(snapshot_of(&second), models[4].1);
    drop(second);

    let third = consumer_with(&store, &cache, CacheRetention::CURRENT_ONLY, 1);
    let report = third.refresh_to(2).await.unwrap().expect("loaded");
    assert_eq!(report.steps, [Step::Snapshot(2)]);
    assert_eq!(
        report.fetched_bytes,
        stored_len(&store_dir, &BlobName::Snapshot(2)),
        "the evicted snapshot was fetched again"
    );
    assert_eq!(snapshot_of(&third), models[1].1);
    assert_eq!(report.cache.evicted_files, 1, "snapshot/5 went: {report:?}");
    assert_eq!(
        cached_blobs(&cache),
        BTreeSet::from([BlobName::Snapshot(2)])
    );
}

/// Invariant: once the store holds another dataset (deleted and published
/// again), the old dataset's blobs leave the cache whatever the bound, and
/// a reader still holding the old state keeps reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_dataset_leaves_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cache = dir.path().join("cache");
    let old: Model = (0..40).map(|i| (i, movie_value(i, 0))).collect();
    let new: Model = (100..130).map(|i| (i, movie_value(i, 5))).collect();
    let store = BlobStore::local(&store_dir).unwrap();
    publish(&producer_every(&store, 1), &old).await.unwrap();
    let consumer = consumer_with(&store, &cache, CacheRetention::UNBOUNDED, 256);
    consumer.refresh().await.unwrap();
    let old_state = consumer.state().unwrap();
    let old_id = old_state.dataset_id().to_string();

    std::fs::remove_dir_all(&store_dir).unwrap();
    let store = BlobStore::local(&store_dir).unwrap();
    // Two versions: the new log is longer than the one the consumer knows.
    let producer = producer_every(&store, 1);
    publish(&producer, &old).await.unwrap();
    publish(&producer, &new).await.unwrap();
    let report = consumer.refresh().await.unwrap().expect("switched");
    let new_id = consumer.state().unwrap().dataset_id().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(report.cache.evicted_files, 1, "{report:?}");
    assert_eq!(
        cache_files_in(&cache),
        [format!(
            "{new_id}/{}",
            BlobName::Snapshot(2).cache_file_name()
        )],
        "the old dataset's directory is gone"
    );
    assert_eq!(snapshot_of(&consumer), new);
    assert_eq!(state_model(&old_state), old, "the old state still reads");
}

/// `burrow follow --cache-max-files/--cache-max-bytes` reach the consumer:
/// on a cache seeded with older blobs, the first version it prints reports
/// what the trim evicted, and the directory holds what the flags allow.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_flags_bound_the_cache() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let cache: PathBuf = dir.path().join("cache");
    let producer = producer_every(&store, 1);
    let mut model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    {
        // Seeds snapshot/1 and delta/1-2 .. delta/3-4.
        let seed = consumer_with(&store, &cache, CacheRetention::UNBOUNDED, 256);
        for generation in 1..=3 {
            seed.refresh().await.unwrap();
            change(&mut model, generation);
            publish(&producer, &model).await.unwrap();
        }
        seed.refresh().await.unwrap();
    }
    assert_eq!(cached_blobs(&cache).len(), 4);

    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follow = Running(
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--store")
            .arg(&store_dir)
            .args(["--json", "follow", "--cache-max-files", "1"])
            .args(["--cache-max-bytes", "1GiB", "--cache"])
            .arg(&cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The first version line (a `ready` line comes beside it).
    let mut reader = std::io::BufReader::new(follow.0.stdout.take().unwrap());
    let mut line = String::new();
    let event = loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] != "ready" {
            break event;
        }
    };
    assert_eq!(event["event"], "version", "{line}");
    assert_eq!(event["version"], 4, "{line}");
    // A fresh consumer loads snapshot/4; of the four seeded blobs the
    // newest (delta/3-4) stays.
    assert_eq!(event["evicted_files"], 3, "{line}");
    assert_eq!(
        cached_blobs(&cache),
        BTreeSet::from([BlobName::Snapshot(4), BlobName::Delta(3, 4)])
    );
}

/// Bad `--cache-max-bytes` and `--cache-max-files` values fail with one
/// line naming the flag and the value.
#[cfg(feature = "cli")]
#[test]
fn follow_bad_cache_bounds_are_named() {
    use crate::common::cli::{assert_fails, burrow};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (flag, value, names) in [
        ("--cache-max-bytes", "12parsecs", "unknown unit"),
        ("--cache-max-bytes", "-1", "number of bytes"),
        ("--cache-max-bytes", "", "number of bytes"),
        ("--cache-max-bytes", "99999999999TiB", "too large"),
        ("--cache-max-files", "-3", "whole number"),
        ("--cache-max-files", "many", "whole number"),
    ] {
        let out = burrow(&store, &["follow", &format!("{flag}={value}")]);
        assert_fails(&out, &format!("invalid {flag} {value:?}"));
        assert_fails(&out, names);
    }
}
