//! Invariant: a producer killed while it writes a blob leaves no object
//! that anything reads, `verify` lists what it does leave (the partial
//! write), and the sweep of `burrow::gc` deletes exactly those leftovers
//! once they are older than the grace period, never a blob or a younger
//! leftover, after which the store verifies clean and a restored producer
//! chains on.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::gc::{find_leftovers, sweep_leftovers, LeftoverKind};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::verify::verify_store;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn names(leftovers: &[burrow::gc::Leftover]) -> Vec<&str> {
    leftovers.iter().map(|l| l.name.as_str()).collect()
}

/// The staging files (`<name>#<digits>`) under the store's snapshot dir.
fn staging_files(store: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store.join("snapshot"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains('#'))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `burrow demo` on `store` and SIGKILLs it as soon as a snapshot's
/// staging file has bytes in it, i.e. in the middle of writing that
/// snapshot.
/// Returns whether the kill landed mid-write (the staging file survived).
fn kill_demo_mid_snapshot_write(store: &Path, records: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--store")
        .arg(store)
        .args(["demo", "--records", records, "--cycles", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the burrow binary runs");
    // Bounded watch of the directory (not a sleep standing in for an
    // event): the staging file appears when the snapshot write starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = false;
    while Instant::now() < deadline {
        // Mid-write: the staging file exists and has bytes in it.
        if staging_files(store)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        {
            seen = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::yield_now();
    }
    let _ = child.kill();
    let _ = child.wait();
    seen && !staging_files(store).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_objects_of_a_killed_snapshot_write_are_listed_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    // A snapshot big enough that its write takes a while; retried a few
    // times in case the kill lands just after the rename.
    let mut landed = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&store_dir);
        if kill_demo_mid_snapshot_write(&store_dir, "300000") {
            landed = true;
            break;
        }
    }
    assert!(
        landed,
        "no kill landed during the snapshot write in 5 tries"
    );
    let partial = staging_files(&store_dir);
    let store = BlobStore::local(&store_dir).unwrap();

    // verify lists the partial write; nothing else is wrong.
    let report = verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.leftovers.len(), partial.len(), "{report:?}");
    assert!(report
        .leftovers
        .iter()
        .all(|l| l.kind == LeftoverKind::PartialWrite && l.name.starts_with("snapshot/")));
    assert!(report.leftovers.iter().any(|l| l.size > 0), "{report:?}");

    // A grace period longer than its age keeps it (it could be a write in
    // progress).
    assert_eq!(
        sweep_leftovers(&store, Duration::from_secs(3600))
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(staging_files(&store_dir), partial);
    // A restarted producer sweeps them when it restores (here with a zero
    // grace: the killed writer is known to be dead), and nothing else.
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("after-kill")
        .leftover_grace(Duration::ZERO)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    producer.restore().await.unwrap();
    assert!(staging_files(&store_dir).is_empty());
    assert_eq!(find_leftovers(&store).await.unwrap(), vec![]);

    // The dataset carries on: the producer publishes, a consumer reads the
    // model, and the store verifies clean.
    let model: Model = (0..50).map(|i| (i, movie_value(i, 1))).collect();
    publish(&producer, &model).await.unwrap();
    let consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .build()
        .unwrap();
    consumer.refresh().await.unwrap();
    assert_eq!(state_model(&consumer.state().unwrap()), model);
    let report = verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
}

#[tokio::test]
async fn sweep_never_touches_blobs_or_young_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path()).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    // A staging file being written right now, by object_store's naming.
    let young = dir
        .path()
        .join("delta")
        .join("00000000000000000001-00000000000000000002#7");
    std::fs::create_dir_all(young.parent().unwrap()).unwrap();
    std::fs::write(&young, b"half a delta").unwrap();
    // A file whose '#' suffix is not all digits is not a staging file.
    let other = dir.path().join("snapshot").join("notes#v2");
    std::fs::write(&other, b"x").unwrap();

    let listed = find_leftovers(&store).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].name,
        "delta/00000000000000000001-00000000000000000002#7"
    );
    assert_eq!(listed[0].size, 12);
    assert_eq!(
        sweep_leftovers(&store, Duration::from_secs(60))
            .await
            .unwrap(),
        vec![]
    );
    assert!(young.exists() && other.exists());
    let before = std::fs::read_dir(dir.path().join("snapshot"))
        .unwrap()
        .count();
    let swept = sweep_leftovers(&store, Duration::ZERO).await.unwrap();
    assert_eq!(names(&swept), names(&listed));
    assert!(!young.exists() && other.exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("snapshot"))
            .unwrap()
            .count(),
        before
    );
    let report = verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
