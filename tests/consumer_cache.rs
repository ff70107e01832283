//! The consumer's cache as the store's local copy: files that rot on disk
//! after they were verified, blobs that fail and come back, and one owner
//! per cache directory.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::ConsumerBuilder;

/// Flips one byte of `needle`'s first occurrence in `path`.
fn flip_byte_of(path: &std::path::Path, needle: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{} holds no {:?}", path.display(), needle));
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// A fresh directory whose `store` holds `records` records published by
/// producer "p1" as one version: the directory, the store, the model and
/// the version.
async fn published(records: u64) -> (tempfile::TempDir, BlobStore, Model, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "p1");
    let model: Model = (0..records).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    (dir, store, model, v1)
}

/// A consumer of [`published`]`(records)` on a manual clock (cache at
/// `<dir>/cache`), and the path of the version's snapshot in the store.
struct OnClock {
    dir: tempfile::TempDir,
    model: Model,
    clock: burrow::testing::ManualClock,
    consumer: burrow::consumer::Consumer,
    snapshot: std::path::PathBuf,
}

async fn on_clock(records: u64) -> OnClock {
    let (dir, store, model, v1) = published(records).await;
    let clock = burrow::testing::ManualClock::new();
    let consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .clock(std::sync::Arc::new(clock.clone()))
        .build()
        .unwrap();
    let snapshot = dir
        .path()
        .join("store")
        .join(BlobName::Snapshot(v1).to_string());
    OnClock {
        dir,
        model,
        clock,
        consumer,
        snapshot,
    }
}

/// Invariant: a consumer does not keep serving a state built from a cache
/// file that no longer matches its checksum: a new process re-verifies each
/// cache file it maps, evicts the bad one, refetches it and swaps in a
/// rebuilt state, and reports the fault as the cache's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_cached_blob_is_detected() {
    let (dir, store, model, v1) = published(50).await;
    let cache = dir.path().join("cache");
    {
        let first = consumer(&store, &cache);
        first.refresh().await.unwrap();
        assert_eq!(snapshot_of(&first), model);
        assert!(first.state_verified(), "fetched blobs are verified");
    }
    let file = cached_blob(&cache, &BlobName::Snapshot(v1));
    flip_byte_of(&file, b"Title number 17");

    let second = consumer(&store, &cache);
    second.refresh().await.unwrap();
    assert_eq!(second.version(), Some(v1));
    assert!(
        second.wait_verified().await.unwrap(),
        "the state ends verified"
    );
    assert_eq!(
        snapshot_of(&second),
        model,
        "the rebuilt state serves the right data"
    );
    let faults = second.cache_faults();
    assert_eq!(faults.len(), 1, "one cache fault: {faults:?}");
    assert_eq!(faults[0].path, file);
    assert_eq!(faults[0].blob, BlobName::Snapshot(v1).to_string());
    let health = second.health();
    assert!(health.verified);
    assert_eq!(health.cache_faults, 1);
    assert_eq!(health.consecutive_failures, 0, "not the store's fault");
    // The refetched file is whole again.
    burrow::blobstore::cache::map_file(&file, "snapshot", true).expect("refetched file verifies");
    // Not avoided as a bad blob: a third process loads the same snapshot.
    drop(second);
    let third = consumer(&store, &cache);
    third.refresh().await.unwrap();
    assert!(third.wait_verified().await.unwrap());
    assert!(third.cache_faults().is_empty());
    assert_eq!(snapshot_of(&third), model);
}

/// Invariant: a consumer built with the default options on a cache it
/// fetched into itself reports its state verified at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_fetched_by_this_process_is_verified() {
    let (dir, store, _, _) = published(5).await;
    let c = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .build()
        .unwrap();
    assert!(!c.state_verified(), "no state, nothing verified");
    c.refresh().await.unwrap();
    assert!(c.state_verified());
    assert!(c.wait_verified().await.unwrap());
}

/// Invariant: the bench's open timings are ordered (verified comes after
/// the first lookup) and the lookup sees the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_timings_order_first_lookup_before_verified() {
    let (dir, store, model, _) = published(20).await;
    drop(consumer(&store, &dir.path().join("cache")));
    let warm = consumer(&store, &dir.path().join("cache"));
    warm.refresh().await.unwrap();
    drop(warm);
    let mut seen = 0;
    let (c, t) = burrow::consumer::Consumer::open_timed(
        ConsumerBuilder::new(store.clone()).cache_dir(dir.path().join("cache")),
        |state| {
            seen = state_model(state).len();
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(seen, model.len());
    assert!(t.to_first_lookup <= t.to_verified);
    assert!(c.state_verified());
}

/// Invariant: a blob that failed (here: missing from the store) is avoided
/// only for a bounded back-off, measured on the consumer's clock; once it
/// is back and the back-off has passed, the consumer uses it again without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_blob_is_retried_after_backoff() {
    let OnClock {
        dir,
        model,
        clock,
        consumer: c,
        snapshot: blob,
    } = on_clock(10).await;
    let aside = dir.path().join("aside");
    std::fs::rename(&blob, &aside).unwrap();
    let err = c.refresh().await.unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    // Within the back-off the blob is avoided: no path.
    std::fs::rename(&aside, &blob).unwrap();
    let err = c.refresh().await.unwrap_err().to_string();
    assert!(err.contains("no usable path"), "{err}");
    // After it, the blob is tried again and works.
    clock.advance(burrow::consumer::FAILED_BLOB_FIRST_BACKOFF);
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c), model);
}

/// Invariant: the back-off of a blob that keeps failing grows, and is
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_blob_backoff_grows_and_is_bounded() {
    use burrow::consumer::{FAILED_BLOB_FIRST_BACKOFF, FAILED_BLOB_MAX_BACKOFF};
    let OnClock {
        dir: _dir,
        clock,
        consumer: c,
        snapshot: blob,
        ..
    } = on_clock(3).await;
    std::fs::remove_file(&blob).unwrap();
    let mut backoff = FAILED_BLOB_FIRST_BACKOFF;
    for _ in 0..12 {
        // A try: the blob is missing again.
        let err = c.refresh().await.unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
        // Avoided until its back-off has passed, and no longer.
        clock.advance(backoff - std::time::Duration::from_millis(1));
        let err = c.refresh().await.unwrap_err().to_string();
        assert!(err.contains("no usable path"), "{err}");
        clock.advance(std::time::Duration::from_millis(1));
        backoff = (backoff * 2).min(FAILED_BLOB_MAX_BACKOFF);
    }
    assert_eq!(backoff, FAILED_BLOB_MAX_BACKOFF);
}

/// Invariant: one owner per cache directory: a second consumer on a cache
/// in use is refused with an error naming the directory; once the first
/// is gone, the directory can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_consumer_on_same_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let cache = dir.path().join("cache");
    let first = consumer(&store, &cache);
    let err = ConsumerBuilder::new(store.clone())
        .cache_dir(&cache)
        .build()
        .err()
        .expect("a second owner is refused")
        .to_string();
    assert!(err.contains("in use"), "{err}");
    assert!(
        err.contains(&cache.display().to_string()),
        "names the directory: {err}"
    );
    drop(first);
    consumer(&store, &cache);
}

/// Invariant: opening a cache never deletes another owner's temp files (a
/// fetch in progress): only the owner of the lock cleans them up.
#[test]
fn startup_does_not_delete_other_process_temp_files() {
    use burrow::blobstore::BlobCache;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let owner = BlobCache::open(&cache).unwrap();
    let in_flight = cache.join(format!(
        "{}.tmp-0123456789abcdef",
        BlobName::Snapshot(1).cache_file_name()
    ));
    std::fs::write(&in_flight, b"half a blob").unwrap();
    let err = BlobCache::open(&cache).expect_err("the directory is owned");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(in_flight.exists(), "another owner's temp file was deleted");
    drop(owner);
    // The next owner cleans up what the last one left.
    BlobCache::open(&cache).unwrap();
    assert!(
        !in_flight.exists(),
        "a leftover temp file survived start-up"
    );
}

/// Invariant: a cache file whose envelope or length no longer checks out
/// when it is mapped is the cache's fault: it is evicted and refetched in
/// the same refresh, reported as a cache fault, and the store's blob is not
/// avoided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_cache_file_is_refetched_not_avoided() {
    let (dir, store, model, v1) = published(20).await;
    let cache = dir.path().join("cache");
    consumer(&store, &cache).refresh().await.unwrap();
    let file = cached_blob(&cache, &BlobName::Snapshot(v1));
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 8)
        .unwrap();
    let c = consumer(&store, &cache);
    let report = c.refresh().await.unwrap().expect("loaded");
    assert!(report.fetched_bytes > 0, "the snapshot was fetched again");
    assert_eq!(snapshot_of(&c), model);
    assert!(c.state_verified());
    let faults = c.cache_faults();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(faults[0].path, file);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
}
