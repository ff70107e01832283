//! Invariant: `verify_store` and `burrow verify` pass a clean store and name
//! every damaged blob (corrupt body, deleted delta, truncated announcement)
//! with a non-zero exit; a version the log announces is reported
//! unreachable only when no verified path reaches it.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::producer::ProducerBuilder;
use burrow::schema::envelope::ENVELOPE_LEN;
use burrow::schema::examples::movies_capnp::movie;
use burrow::verify::verify_store;
use std::path::Path;
use std::process::Command;

/// Four versions; snapshots at versions 1 and 3.
async fn store_with_history(dir: &Path) -> (BlobStore, Vec<u64>) {
    let store = BlobStore::local(dir).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("verify")
        .snapshot_every(2)
        // Raw blobs: the tests flip bytes of the blob format itself.
        .compression(burrow::blobstore::Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let mut model: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    let mut versions = Vec::new();
    for g in 0..4u64 {
        model.insert(g, movie_value(g, g + 1));
        model.remove(&(10 + g));
        model.insert(100 + g, movie_value(100 + g, 0));
        versions.push(publish(&producer, &model).await.unwrap().version);
    }
    (store, versions)
}

fn cli(store: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burrow"));
    cmd.args(["verify", "--store", store.to_str().unwrap()]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn a_clean_store_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, versions) = store_with_history(dir.path()).await;
    let report = verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // 2 snapshots, 3 deltas, 3 reverse deltas.
    assert_eq!(report.blobs_checked, 8, "{report:?}");
    assert_eq!(report.entries_checked, versions.len());
    assert_eq!(report.versions_reachable, versions.len());
    assert!(report.records_checked > 60, "{report:?}");
    // The report, the summary line and the JSON name the dataset verified.
    let dataset = report.dataset_id.expect("a published log has a dataset");
    let announced = burrow::announcer::AnnouncementLog::new(store.clone())
        .latest()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dataset, announced.dataset_id);
    let (code, out) = cli(dir.path(), false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains(&format!("dataset {dataset}")), "{out}");
    let (code, out) = cli(dir.path(), true);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["blobs_checked"], 8);
    assert_eq!(json["dataset_id"], dataset.to_string());
}

// Invariant: `burrow verify` of a store with no announcement says that it
// verified no dataset (`none`, JSON `null`) rather than inventing one.
#[tokio::test]
async fn an_empty_store_names_no_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path()).unwrap();
    let report = verify_store(&store).await.unwrap();
    assert_eq!(report.dataset_id, None, "{report:?}");
    let (_, out) = cli(dir.path(), false);
    assert!(out.contains("dataset none"), "{out}");
    let (_, out) = cli(dir.path(), true);
    let json: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(json["dataset_id"].is_null(), "{json}");
}

#[tokio::test]
async fn a_corrupted_blob_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, versions) = store_with_history(dir.path()).await;
    let name = BlobName::Snapshot(versions[2]).to_string();
    let path = dir.path().join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = ENVELOPE_LEN + (bytes.len() - ENVELOPE_LEN) / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let report = verify_store(&store).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.blob == name && p.reason.contains("checksum")),
        "{:?}",
        report.problems
    );
    // The version is still reachable through its delta.
    assert_eq!(report.versions_reachable, versions.len(), "{report:?}");
    let (code, out) = cli(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("PROBLEM {name}")), "{out}");
}

#[tokio::test]
async fn a_deleted_delta_is_named_and_its_version_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, versions) = store_with_history(dir.path()).await;
    // Version 4 has no snapshot: without delta 3 -> 4 it is unreachable.
    let name = BlobName::Delta(versions[2], versions[3]).to_string();
    std::fs::remove_file(dir.path().join(&name)).unwrap();
    let report = verify_store(&store).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.blob == name && p.reason.contains("missing")),
        "{:?}",
        report.problems
    );
    let announce = BlobName::Announce(4).to_string();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.blob == announce && p.reason.contains("unreachable")),
        "{:?}",
        report.problems
    );
    assert_eq!(report.versions_reachable, versions.len() - 1);
    let (code, out) = cli(dir.path(), true);
    assert_eq!(code, 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(json["ok"], false);
    let blobs: Vec<&str> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["blob"].as_str().unwrap())
        .collect();
    assert!(blobs.contains(&name.as_str()), "{blobs:?}");
}

#[tokio::test]
async fn a_truncated_announcement_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_history(dir.path()).await;
    let name = BlobName::Announce(2).to_string();
    let path = dir.path().join(&name);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
    let report = verify_store(&store).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.blob == name),
        "{:?}",
        report.problems
    );
    let (code, out) = cli(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("PROBLEM {name}")), "{out}");
}

/// A store path that does not exist is an error, not an empty, clean
/// store, and verify does not create it.
#[test]
fn a_missing_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (code, out) = cli(&missing, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not exist"), "{out}");
    assert!(!missing.exists());
}
