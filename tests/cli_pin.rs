//! `burrow pin` and `burrow unpin`, run as the binary on a real local store
//! that the library publishes to, with a real consumer following: a pin
//! holds the consumer at the pinned version, an unpin releases it, and
//! every refusal is one line naming the problem, with nothing written.

use crate::common::cli::*;
use crate::common::*;
use burrow::announcer::{AnnounceKind, AnnouncementLog};
use burrow::blobstore::BlobStore;

/// Entries in the log, for "nothing was written" checks.
async fn entries(store: &BlobStore) -> usize {
    AnnouncementLog::new(store.clone())
        .entries_from(1)
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_holds_consumers_and_unpin_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let producer = producer(&store, "p");
    let mut model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let first = model.clone();
    model.insert(7, movie_value(7, 1));
    let v2 = publish(&producer, &model).await.unwrap().version;
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    assert_eq!(c.version(), Some(v2));

    // Pin v1 (table output): the consumer goes back to it.
    let out = burrow(&store_dir, &["pin", &v1.to_string()]);
    assert!(out.status.success(), "pin: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("SEQ") && lines[0].contains("PINNED"),
        "{stdout}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "3",
            "pin",
            &v1.to_string(),
            &v2.to_string(),
            &v1.to_string()
        ]
    );
    let newest = AnnouncementLog::new(store.clone())
        .latest()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest.kind, AnnounceKind::Pin);
    assert_eq!(newest.pinned_version, Some(v1));
    c.refresh().await.unwrap();
    assert_eq!(c.version(), Some(v1));
    assert_eq!(snapshot_of(&c), first);

    // A producer's next cycle keeps the pin: consumers stay at v1.
    model.insert(8, movie_value(8, 1));
    let v3 = publish(&producer, &model).await.unwrap().version;
    c.refresh().await.unwrap();
    assert_eq!(c.version(), Some(v1), "still pinned after v{v3}");

    // Unpin (JSON output): the consumer follows the newest version again.
    let out = burrow(&store_dir, &["--json", "unpin"]);
    assert!(out.status.success(), "unpin: {}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["kind"], "unpin");
    assert_eq!(line["pinned_version"], serde_json::Value::Null);
    assert_eq!(line["version"], v3);
    assert_eq!(line["target"], v3);
    c.refresh().await.unwrap();
    assert_eq!(c.version(), Some(v3));
    assert_eq!(snapshot_of(&c), model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_and_unpin_refuse_what_would_change_nothing_or_mislead() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();

    // An empty store: nothing to pin.
    assert_refused(
        &burrow(&store_dir, &["pin", "1"]),
        "nothing has been announced",
    );

    let producer = producer(&store, "p");
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let before = entries(&store).await;

    assert_refused(
        &burrow(&store_dir, &["pin", "99"]),
        "version 99 was never announced",
    );
    assert_refused(&burrow(&store_dir, &["pin", "0"]), "VERSION 0");
    assert_refused(&burrow(&store_dir, &["pin", "latest"]), "invalid VERSION");
    assert_refused(&burrow(&store_dir, &["unpin"]), "nothing is pinned");
    assert_eq!(entries(&store).await, before, "no refusal wrote an entry");

    let out = burrow(&store_dir, &["pin", &v1.to_string()]);
    assert!(out.status.success(), "pin: {}", text(&out.stderr));
    assert_refused(
        &burrow(&store_dir, &["pin", &v1.to_string()]),
        "already pinned",
    );
    assert_eq!(entries(&store).await, before + 1);

    // Stores that are not there, or not directories.
    assert_refused(
        &burrow(&dir.path().join("absent"), &["pin", "1"]),
        "does not exist",
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_refused(&burrow(&file, &["unpin"]), "is a file, not a directory");
}
