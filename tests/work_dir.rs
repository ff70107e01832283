//! Invariant: the producer keeps its records in unlinked scratch files of
//! its work directory (`ProducerBuilder::work_dir`): full cycles,
//! incremental cycles and restores leave no name in the directory, and a
//! work directory that disappears fails the cycle or restore that needs a
//! new scratch file with an error naming it, the producer staying at its
//! last announced state, so that the next cycle, once the directory is
//! back, chains on.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::producer::{Producer, ProducerBuilder, ProducerError};
use burrow::schema::examples::movies_capnp::movie;
use burrow::Error;
use std::path::Path;

/// Enough records that each type's record words and descriptors outgrow
/// the heap part of their arenas and move to scratch files.
const RECORDS: u64 = 3_000;

fn build(store: &BlobStore, work: &Path) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("work-dir")
        .retention(None)
        .work_dir(work)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

fn model(generation: u64) -> Model {
    (0..RECORDS)
        .map(|i| {
            // A few records change from one generation to the next.
            let g = if i % 100 == 0 { generation } else { 0 };
            (i, movie_value(i, g))
        })
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// How many of this process's open files are (unlinked) scratch files of
/// `dir`: the arenas that hold a producer's state.
#[cfg(target_os = "linux")]
fn scratch_files_open_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_cycles_leave_the_work_dir_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let producer = build(&store, &work);
    let follower = consumer(&store, &dir.path().join("follower"));

    let first = model(0);
    assert!(publish(&producer, &first).await.unwrap().published);
    assert_eq!(names_in(&work), Vec::<String>::new());
    // The announced state is in the work directory's scratch files, held
    // open by descriptor only.
    #[cfg(target_os = "linux")]
    assert!(scratch_files_open_in(&work) >= 2);

    let second = model(1);
    let report = publish_incremental(&producer, &first, &second)
        .await
        .unwrap();
    assert_eq!(report.changes[0].changed, 30);
    assert_eq!(names_in(&work), Vec::<String>::new());
    let third = model(2);
    assert!(publish(&producer, &third).await.unwrap().published);
    assert_eq!(names_in(&work), Vec::<String>::new());
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), third);

    // A restarted producer restores into the work directory too.
    drop(producer);
    let producer = build(&store, &work);
    producer.restore().await.unwrap();
    let fourth = model(3);
    publish_incremental(&producer, &third, &fourth)
        .await
        .unwrap();
    assert_eq!(names_in(&work), Vec::<String>::new());
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), fourth);

    // Dropping the producer closes every scratch file.
    drop(producer);
    #[cfg(target_os = "linux")]
    assert_eq!(scratch_files_open_in(&work), 0);
}

/// The scratch-file error inside a failed cycle's, with the work directory.
fn work_dir_of(e: &Error) -> Option<&Path> {
    match e {
        Error::Producer(ProducerError::Cycle { source, .. }) => work_dir_of(source),
        Error::Producer(ProducerError::WorkDir { dir, .. }) => Some(dir),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_work_dir_fails_the_cycle_by_name_and_the_next_one_chains_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let producer = build(&store, &work);
    let follower = consumer(&store, &dir.path().join("follower"));
    let first = model(0);
    let v1 = publish(&producer, &first).await.unwrap().version;

    std::fs::remove_dir(&work).unwrap();
    // A full cycle needs new scratch files for its batch: it fails, naming
    // the directory, and announces nothing.
    let err = publish(&producer, &model(1)).await.unwrap_err();
    assert_eq!(work_dir_of(&err), Some(work.as_path()), "{err}");
    assert!(
        err.to_string().contains(&work.display().to_string()),
        "{err}"
    );
    assert!(matches!(
        err,
        Error::Producer(ProducerError::Cycle {
            step: burrow::producer::CycleStep::Populate,
            ..
        })
    ));
    // So does a restore, which rebuilds the state in new scratch files;
    // the producer keeps the state it had.
    let err = producer.restore().await.unwrap_err();
    assert_eq!(work_dir_of(&err), Some(work.as_path()), "{err}");
    follower.refresh().await.unwrap();
    assert_eq!(follower.version(), Some(v1));
    // An incremental cycle of a few changes builds its upserts on the
    // heap, but spools its delta and reverse delta: it fails at its write
    // step, naming the directory, and announces nothing.
    let second = model(2);
    let err = publish_incremental(&producer, &first, &second)
        .await
        .unwrap_err();
    assert_eq!(work_dir_of(&err), Some(work.as_path()), "{err}");
    assert!(matches!(
        err,
        Error::Producer(ProducerError::Cycle {
            step: burrow::producer::CycleStep::WriteBlobs,
            ..
        })
    ));
    assert_eq!(producer.version().await, Some(v1));
    let v2 = v1;

    // The directory is back: the next full cycle chains on from the last
    // announced state.
    std::fs::create_dir(&work).unwrap();
    let third = model(3);
    let report = publish(&producer, &third).await.unwrap();
    assert_eq!(report.version, v2 + 1);
    assert_eq!(report.changes[0].changed, 30);
    follower.refresh().await.unwrap();
    assert_eq!(follower.version(), Some(report.version));
    assert_eq!(snapshot_of(&follower), third);
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), third);
    assert_eq!(names_in(&work), Vec::<String>::new());
}

/// Invariant: a record the work directory could not take is not silently
/// left out: the cycle fails even when the populate closure drops the
/// error its `add` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_failure_the_closure_drops_still_fails_the_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let producer = build(&store, &work);
    std::fs::remove_dir(&work).unwrap();
    let first = model(0);
    let mut dropped = None;
    let err = producer
        .run_cycle(|p| {
            // The closure swallows the error (a caller skipping records it
            // thinks are bad).
            dropped = add_model(p, &first).err().map(|e| e.to_string());
            Ok(())
        })
        .await
        .unwrap_err();
    let dropped = dropped.expect("an add failed");
    assert!(dropped.contains(&work.display().to_string()), "{dropped}");
    assert_eq!(work_dir_of(&err), Some(work.as_path()), "{err}");
    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    assert!(log.latest().await.unwrap().is_none(), "nothing announced");

    std::fs::create_dir(&work).unwrap();
    assert_eq!(publish(&producer, &first).await.unwrap().version, 1);
}
