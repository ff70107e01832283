//! Invariant: blobs and announcement entries of two datasets never mix.
//! Every dataset has an id minted at its first cycle and carried in every
//! blob header and entry; a delta of another dataset does not apply to a
//! state, a log that changes dataset is refused, restore refuses another
//! dataset's blobs, verify reports them, and a store recreated at the same
//! place gets a new id that its producer keeps across cycles and restarts.

use crate::common::*;
use burrow::announcer::{AnnounceKind, Announcement, AnnouncementLog, Watcher};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::ReadState;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::blob::{check_dataset, OpenBlob};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::DatasetId;
use burrow::verify::verify_store;
use burrow::{Error, FormatError};
use std::path::Path;
use std::sync::Arc;

/// The model of cycle `g`: the same for every dataset, so that two
/// datasets' blobs have the same names, versions and record counts and
/// differ only in their ids (the case a name-keyed cache cannot tell).
fn model(g: u64) -> Model {
    let mut m: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    for i in 0..g {
        m.insert(i, movie_value(i, g));
        m.remove(&(10 + i));
    }
    m
}

/// A local store at `dir` with `cycles` versions published by a fresh
/// producer (a snapshot every cycle); returns the store and the producer.
async fn dataset(dir: &Path, cycles: u64) -> (BlobStore, Producer) {
    let store = BlobStore::local(dir).unwrap();
    let p = producer(&store, "p");
    for g in 0..cycles {
        publish(&p, &model(g)).await.unwrap();
    }
    (store, p)
}

/// Two datasets side by side under `root`: `a` with `cycles_a` versions
/// and `b` with `cycles_b`, their producers and their ids.
struct TwoDatasets {
    dir_a: std::path::PathBuf,
    dir_b: std::path::PathBuf,
    a: BlobStore,
    b: BlobStore,
    pa: Producer,
    id_a: DatasetId,
    id_b: DatasetId,
}

async fn two_datasets(root: &Path, cycles_a: u64, cycles_b: u64) -> TwoDatasets {
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let (a, pa) = dataset(&dir_a, cycles_a).await;
    let (b, pb) = dataset(&dir_b, cycles_b).await;
    let (id_a, id_b) = (
        pa.dataset_id().await.unwrap(),
        pb.dataset_id().await.unwrap(),
    );
    TwoDatasets {
        dir_a,
        dir_b,
        a,
        b,
        pa,
        id_a,
        id_b,
    }
}

async fn blob(store: &BlobStore, name: BlobName) -> Arc<OpenBlob> {
    let bytes = store.get(&name).await.unwrap();
    Arc::new(OpenBlob::from_bytes(&bytes, &name.to_string()).unwrap())
}

fn copy(from: &Path, to: &Path, name: BlobName) {
    std::fs::create_dir_all(to.join(name.to_string()).parent().unwrap()).unwrap();
    std::fs::copy(from.join(name.to_string()), to.join(name.to_string())).unwrap();
}

/// The error names the blob and both datasets.
fn assert_mismatch(err: &str, blob: &str, a: DatasetId, b: DatasetId) {
    assert!(
        err.contains(blob) && err.contains(&a.to_string()) && err.contains(&b.to_string()),
        "{err}"
    );
}

// A delta applies only to a state of its own dataset, even when its
// versions and record counts fit (a store recreated at the same place).
#[tokio::test]
async fn recreated_store_delta_of_another_dataset_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let TwoDatasets {
        a, b, id_a, id_b, ..
    } = two_datasets(dir.path(), 2, 2).await;
    assert_ne!(id_a, id_b, "two datasets get two ids");

    let state = ReadState::from_snapshot(blob(&a, BlobName::Snapshot(1)).await, 1).unwrap();
    assert_eq!(state.dataset_id(), id_a);
    let own = blob(&a, BlobName::Delta(1, 2)).await;
    assert_eq!(state.apply(own, 1, 2).unwrap().dataset_id(), id_a);

    let name = BlobName::Delta(1, 2);
    let foreign = blob(&b, name).await;
    let err = state.apply(foreign.clone(), 1, 2).unwrap_err();
    assert!(
        matches!(&err, Error::Format(FormatError::DatasetMismatch { expected, found, .. })
            if *expected == id_a && *found == id_b),
        "{err:?}"
    );
    assert_mismatch(&err.to_string(), &name.to_string(), id_a, id_b);

    // The check a consumer makes on every blob against the announcement it
    // planned by.
    let entry = AnnouncementLog::new(a.clone())
        .latest()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.dataset_id, id_a);
    check_dataset(&*blob(&a, name).await, entry.dataset_id).unwrap();
    let err = check_dataset(&foreign, entry.dataset_id)
        .unwrap_err()
        .to_string();
    assert_mismatch(&err, &name.to_string(), id_a, id_b);
}

// One log is one dataset's: an entry whose id differs from the entry
// before it (another dataset's entry under this prefix) is refused by
// every reader of the log, and no producer appends after it.
#[tokio::test]
async fn announcement_log_mixing_datasets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let TwoDatasets {
        dir_a,
        dir_b,
        a,
        pa,
        id_a,
        id_b,
        ..
    } = two_datasets(dir.path(), 2, 3).await;
    let log = AnnouncementLog::new(a.clone());
    let mut watcher = Watcher::new(log.clone());
    assert_eq!(watcher.poll().await.unwrap().unwrap().seq, 2);

    copy(&dir_b, &dir_a, BlobName::Announce(3));
    let third = BlobName::Announce(3).to_string();
    let err = watcher.poll().await.unwrap_err().to_string();
    assert_mismatch(&err, &third, id_a, id_b);
    let fresh = AnnouncementLog::new(a.clone());
    assert_mismatch(
        &fresh.latest().await.unwrap_err().to_string(),
        &third,
        id_a,
        id_b,
    );
    assert_mismatch(
        &fresh.entries_from(1).await.unwrap_err().to_string(),
        &third,
        id_a,
        id_b,
    );
    let err = publish(&pa, &model(5)).await.unwrap_err().to_string();
    assert!(err.contains(&id_b.to_string()), "{err}");
    assert!(log.read(4).await.unwrap().is_none(), "nothing appended");

    let report = verify_store(&a).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.blob == third && p.reason.contains("belongs to dataset")),
        "{:?}",
        report.problems
    );
}

// verify names every blob whose dataset is not the log's, announced or
// orphan.
#[tokio::test]
async fn verify_reports_a_blob_of_another_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let TwoDatasets {
        dir_a,
        dir_b,
        a,
        id_a,
        id_b,
        ..
    } = two_datasets(dir.path(), 2, 3).await;
    assert!(verify_store(&a).await.unwrap().is_clean());

    let replaced = BlobName::Reverse(2, 1);
    std::fs::remove_file(dir_a.join(replaced.to_string())).unwrap();
    copy(&dir_b, &dir_a, replaced);
    let orphan = BlobName::Delta(2, 3);
    copy(&dir_b, &dir_a, orphan);
    let report = verify_store(&a).await.unwrap();
    assert_eq!(report.dataset_id, Some(id_a));
    for name in [replaced, orphan] {
        let problem = report
            .problems
            .iter()
            .find(|p| p.blob == name.to_string())
            .unwrap_or_else(|| panic!("{name} reported: {:?}", report.problems));
        assert_mismatch(&problem.reason, "", id_a, id_b);
    }
}

fn announced_ids(entries: &[Announcement]) -> Vec<DatasetId> {
    entries.iter().map(|e| e.dataset_id).collect()
}

// A store deleted and recreated at the same place is a new dataset: its
// first cycle mints a new id, kept across cycles and restarts and written
// into every blob and entry; the old dataset's producer appends nothing to
// the new log.
#[tokio::test]
async fn restore_after_a_recreated_store_mints_a_new_id_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (_, old) = dataset(&path, 2).await;
    let id_a = old.dataset_id().await.unwrap();

    std::fs::remove_dir_all(&path).unwrap();
    let store = BlobStore::local(&path).unwrap();
    let p = producer(&store, "p2");
    assert_eq!(p.restore().await.unwrap(), None);
    assert_eq!(p.dataset_id().await, None);
    publish(&p, &model(0)).await.unwrap();
    let id_b = p.dataset_id().await.unwrap();
    assert_ne!(id_a, id_b, "a recreated store is a new dataset");
    publish(&p, &model(1)).await.unwrap();
    assert_eq!(p.dataset_id().await, Some(id_b));

    // The old producer's log (seq 2, dataset A) looks like the new one
    // (seq 2): it must not append its cycle to it.
    let err = publish(&old, &model(2)).await.unwrap_err().to_string();
    assert_mismatch(&err, &BlobName::Announce(2).to_string(), id_b, id_a);
    let log = AnnouncementLog::new(store.clone());
    assert_eq!(log.latest().await.unwrap().unwrap().seq, 2);

    let restarted = producer(&store, "p3");
    assert_eq!(restarted.restore().await.unwrap(), Some(2));
    assert_eq!(restarted.dataset_id().await, Some(id_b));
    publish(&restarted, &model(3)).await.unwrap();
    let entries = log.entries_from(1).await.unwrap();
    assert_eq!(announced_ids(&entries), vec![id_b; 3]);
    let pin = log.pin(2, "operator").await.unwrap();
    assert_eq!(pin.kind, AnnounceKind::Pin);
    assert_eq!(log.read(4).await.unwrap().unwrap().dataset_id, id_b);
    for dir in ["snapshot", "delta", "reverse"] {
        for meta in store.list(dir).await.unwrap() {
            assert_eq!(blob(&store, meta.name).await.dataset_id().unwrap(), id_b);
        }
    }
    assert!(verify_store(&store).await.unwrap().is_clean());
}

// Restore builds state only from blobs of the log's dataset, and a
// producer given its dataset's id restores no other.
#[tokio::test]
async fn restore_refuses_a_blob_of_another_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let TwoDatasets {
        dir_a,
        dir_b,
        a,
        id_a,
        id_b,
        ..
    } = two_datasets(dir.path(), 1, 1).await;
    let name = BlobName::Snapshot(1);

    let pinned = ProducerBuilder::new(a.clone())
        .primary_key::<movie::Owned>(&["id"])
        .dataset_id(id_b)
        .build()
        .unwrap();
    let err = pinned.restore().await.unwrap_err().to_string();
    assert_mismatch(&err, &BlobName::Announce(1).to_string(), id_b, id_a);

    std::fs::remove_file(dir_a.join(name.to_string())).unwrap();
    copy(&dir_b, &dir_a, name);
    let err = producer(&a, "p").restore().await.unwrap_err().to_string();
    assert_mismatch(&err, &name.to_string(), id_a, id_b);
}

// A blob or entry with no dataset id (zero: written before dataset ids)
// is refused, never taken to match another without one.
#[test]
fn a_blob_or_entry_without_a_dataset_id_is_refused() {
    use burrow::schema::burrow_capnp::snapshot;
    use burrow::schema::envelope::{frame, BlobKind};
    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<snapshot::Builder>()
        .init_header()
        .set_to_version(1);
    let bytes = frame(
        BlobKind::Snapshot,
        0,
        1,
        &capnp::serialize::write_message_to_words(&message),
    );
    let blob = Arc::new(OpenBlob::from_bytes(&bytes, "snapshot/1").unwrap());
    let err = ReadState::from_snapshot(blob.clone(), 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("snapshot/1") && err.contains("no dataset identity"),
        "{err}"
    );
    let err = check_dataset(&blob, DatasetId::mint())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no dataset identity"), "{err}");

    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<burrow::schema::burrow_capnp::announcement::Builder>()
        .set_seq(1);
    let bytes = frame(
        BlobKind::Announcement,
        0,
        1,
        &capnp::serialize::write_message_to_words(&message),
    );
    let err = Announcement::decode(&bytes, "announce/1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("announce/1") && err.contains("no dataset identity"),
        "{err}"
    );
}

/// Invariant: a consumer's cache is keyed by dataset: after the store is
/// deleted and published again at the same place (the same blob names,
/// another dataset), a new consumer on the old cache directory serves the
/// new dataset, never the old one's cached files, and a consumer that kept
/// running through the recreation moves to the new dataset by a snapshot.
#[tokio::test]
async fn recreated_store_does_not_reuse_stale_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cache = dir.path().join("cache");
    let running_cache = dir.path().join("running");
    let old: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    let new: Model = (100..140).map(|i| (i, movie_value(i, 7))).collect();

    let (store, p) = dataset_with(&store_dir, &[&old, &old_plus_one(&old)]).await;
    drop(p);
    let first = consumer(&store, &cache);
    first.refresh().await.unwrap();
    assert_eq!(state_model(&first.state().unwrap()), old_plus_one(&old));
    drop(first); // releases the cache directory
    let running = consumer(&store, &running_cache);
    running.refresh().await.unwrap();
    let old_id = running.state().unwrap().dataset_id();

    // The store is deleted and published again: three versions, so the
    // new log is longer than the one the running consumer knows.
    std::fs::remove_dir_all(&store_dir).unwrap();
    let (store, _p) = dataset_with(
        &store_dir,
        &[&new, &old_plus_one(&new), &new_plus(&old_plus_one(&new))],
    )
    .await;

    let again = consumer(&store, &cache);
    again.refresh().await.unwrap();
    let state = again.state().unwrap();
    assert_ne!(state.dataset_id(), old_id);
    assert_eq!(state_model(&state), new_plus(&old_plus_one(&new)));

    running.refresh().await.unwrap();
    let state = running.state().unwrap();
    assert_ne!(state.dataset_id(), old_id);
    assert_eq!(state_model(&state), new_plus(&old_plus_one(&new)));
}

fn old_plus_one(m: &Model) -> Model {
    let mut m = m.clone();
    m.insert(0, movie_value(0, 1));
    m
}

fn new_plus(m: &Model) -> Model {
    let mut m = m.clone();
    m.insert(200, movie_value(200, 1));
    m
}

/// A local store at `dir` with one version per model, by a fresh producer.
async fn dataset_with(dir: &Path, models: &[&Model]) -> (BlobStore, Producer) {
    let store = BlobStore::local(dir).unwrap();
    let p = producer(&store, "p");
    for m in models {
        publish(&p, m).await.unwrap();
    }
    (store, p)
}

/// Invariant: a consumer notices a store recreated with a log no longer
/// than the one it knows (probing `seq + 1` finds nothing there): within
/// `REVALIDATE_EVERY` polls it re-reads its newest entry, finds it
/// replaced, and moves to the new dataset, whose older entries it reads
/// afresh (none of the old dataset's entries it had read is reused).
#[tokio::test]
async fn recreated_store_with_a_shorter_log_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let old: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    let mut models = vec![old.clone()];
    for g in 1..4 {
        let mut m = models.last().unwrap().clone();
        m.insert(g, movie_value(g, g));
        models.push(m);
    }
    let store = BlobStore::local(&store_dir).unwrap();
    let p = producer(&store, "p");
    let running = consumer(&store, &dir.path().join("cache"));
    // The consumer follows every old version, so it has read (and keeps)
    // every old entry: the recreated log's entries of the same seqs must
    // not be taken from what it kept.
    for m in &models {
        publish(&p, m).await.unwrap();
        running.refresh().await.unwrap();
    }
    drop(p);
    let old_id = running.state().unwrap().dataset_id();

    // Recreated with two versions (a snapshot only at the first, so the
    // consumer must walk the new log back to reach the second).
    std::fs::remove_dir_all(&store_dir).unwrap();
    let store = BlobStore::local(&store_dir).unwrap();
    let p = ProducerBuilder::new(store.clone())
        .producer_id("p")
        .snapshot_every(100)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let new: Model = (100..120).map(|i| (i, movie_value(i, 3))).collect();
    let new2 = new_plus(&new);
    publish(&p, &new).await.unwrap();
    publish(&p, &new2).await.unwrap();

    let mut polls = 0;
    while running.state().unwrap().dataset_id() == old_id {
        polls += 1;
        assert!(
            polls <= burrow::announcer::REVALIDATE_EVERY,
            "still on the old dataset after {polls} polls"
        );
        running.refresh().await.unwrap();
    }
    assert_eq!(state_model(&running.state().unwrap()), new2);
}
