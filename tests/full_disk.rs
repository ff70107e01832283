//! Invariant: a cache on a filesystem that fills up during a fetch gives a
//! refresh error that says the disk is full and names the blob; the
//! consumer keeps serving its state; nothing half-written is left that a
//! later start would trust.
//!
//! The cache is a real size-limited tmpfs (`mount -t tmpfs -o size=1m`),
//! which needs root. Where mounting is refused the test fails saying so:
//! it is never skipped.

use crate::common::*;
use burrow::blobstore::{BlobCache, BlobStore};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, detached on drop (lazily: a consumer may still map a
/// blob in it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_during_a_fetch_leaves_the_consumer_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let _mount = match Tmpfs::mount(&cache, "1m") {
        Ok(m) => m,
        Err(why) => panic!(
            "this test needs to mount a 1 MiB tmpfs for the cache, which needs root \
             (run the tests as root): {why}"
        ),
    };
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = producer(&store, "p");
    let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&p, &model).await.unwrap().version;
    let c = consumer(&store, &cache);
    c.refresh().await.unwrap();
    // Version 2: enough new records that neither its delta nor its
    // snapshot fits in what is left of 1 MiB.
    for i in 50..20_000 {
        model.insert(i, movie_value(i, 0));
    }
    let report = publish(&p, &model).await.unwrap();
    assert!(
        report
            .blobs
            .iter()
            .filter(|(n, _)| !matches!(n, burrow::blobstore::BlobName::Reverse(..)))
            .all(|(_, size)| *size > 1 << 20),
        "{:?}",
        report.blobs
    );
    let err = c.refresh().await.expect_err("the disk is full").to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("write temp file"), "{err}");
    assert!(
        err.contains("delta/") || err.contains("snapshot/"),
        "names the blob: {err}"
    );
    assert_eq!(c.version(), Some(v1), "the consumer keeps its state");
    assert_eq!(snapshot_of(&c).len(), 50, "and keeps serving it");
    // Nothing half-written: no temp file, and what a restart finds under
    // a final name is whole and verifies.
    let files = cache_files_in(&cache);
    assert!(files.iter().all(|f| !f.contains(".tmp-")), "{files:?}");
    // The running consumer owns the directory: a second owner is refused.
    assert!(BlobCache::open(&cache).is_err());
    for f in &files {
        burrow::blobstore::cache::map_file(&cache.join(f), f, true).unwrap();
    }
    // A full disk is not a bad blob: once there is room, the same
    // consumer fetches version 2.
    drop(_mount);
    let c2 = consumer(&store, &dir.path().join("cache2"));
    c2.refresh().await.unwrap();
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c), model);
}

/// Invariant: a producer whose work directory fills up while it spools a
/// blob or grows its record arenas fails the cycle (at "populate" or
/// "write blobs") with an error that says the disk is full and names the
/// directory; it stays at its last announced state, and once there is room
/// the next cycle chains on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_work_dir_fails_the_cycle_and_the_next_chains_on() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let mount = match Tmpfs::mount(&work, "256k") {
        Ok(m) => m,
        Err(why) => panic!(
            "this test needs to mount a 256 KiB tmpfs for the work directory, which needs \
             root (run the tests as root): {why}"
        ),
    };
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = burrow::producer::ProducerBuilder::new(store.clone())
        .producer_id("p")
        .retention(None)
        .compression(burrow::blobstore::Compression::None)
        .work_dir(&work)
        .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(&["id"])
        .build()
        .unwrap();
    let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    // Version 2: a snapshot (the first cycle's was small) would not fit,
    // nor would its delta: thousands of new records.
    for i in 50..20_000 {
        model.insert(i, movie_value(i, 0));
    }
    // The new records' arenas (`producer/arena.rs`) are in the work
    // directory too, and they fill it first: the cycle fails at populate;
    // with a smaller change they fit and the delta's spool does not.
    let err = publish(&producer, &model).await.unwrap_err();
    let text = err.to_string();
    assert!(
        (text.contains("failed at step populate") || text.contains("failed at step write blobs"))
            && text.contains(&work.display().to_string())
            && text.to_lowercase().contains("no space left"),
        "{text}"
    );
    assert_eq!(producer.version().await, Some(v1));
    // Room again (the tmpfs unmounted: the directory is on the disk).
    drop(mount);
    let v2 = publish(&producer, &model).await.unwrap().version;
    assert_eq!(v2, v1 + 1);
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c), model);
}
