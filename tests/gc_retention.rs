//! Invariant: retention deletes only what no retained version needs, the
//! producer applies it after its announcements without holding up a
//! cycle, a consumer left at a retired version re-plans around the blobs
//! that went instead of failing, `verify` accepts the retired versions, and
//! `burrow gc` prints what it deletes (or would) and why.

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::gc::{collect_garbage, needed_blobs, DeleteReason, RetentionPolicy};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

fn policy(keep: usize) -> RetentionPolicy {
    RetentionPolicy {
        keep,
        grace: Duration::ZERO,
        snapshot_spacing: None,
    }
}

fn producer_with(store: &BlobStore, every: u32, retention: Option<RetentionPolicy>) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("gc")
        .snapshot_every(every)
        .retention(retention)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

async fn blobs(store: &BlobStore) -> BTreeSet<BlobName> {
    let mut out = BTreeSet::new();
    for dir in ["snapshot", "delta", "reverse"] {
        out.extend(store.list(dir).await.unwrap().into_iter().map(|m| m.name));
    }
    out
}

/// Publishes `n` more versions of a model that changes a record a cycle.
async fn cycles(producer: &Producer, model: &mut Model, n: u64) -> u64 {
    let mut version = 0;
    for _ in 0..n {
        let g = model.len() as u64;
        model.insert(g % 7, movie_value(g % 7, g));
        model.insert(100 + g, movie_value(100 + g, 0));
        version = publish(producer, model).await.unwrap().version;
    }
    version
}

/// A consumer at a version retention retired plans its chain of deltas,
/// finds the first gone, and re-plans onto the newest snapshot instead of
/// failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_at_a_retired_version_replans_around_deleted_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer_with(&store, 1, None);
    // Enough records that five small deltas cost less than a snapshot: the
    // planner's first choice is the chain.
    let mut model: Model = (0..3000).map(|i| (i, movie_value(i, 0))).collect();
    cycles(&producer, &mut model, 3).await;
    let behind = consumer(&store, &dir.path().join("behind"));
    behind.refresh().await.unwrap();
    let newest = cycles(&producer, &mut model, 5).await;
    let report = collect_garbage(&store, &policy(2), SystemTime::now(), false)
        .await
        .unwrap();
    assert!(
        report
            .deleted
            .iter()
            .any(|d| d.name == BlobName::Delta(3, 4).to_string()
                && d.reason == DeleteReason::Retired),
        "{:?}",
        report.deleted
    );
    let refreshed = behind.refresh().await.unwrap().expect("moves");
    assert_eq!(refreshed.to, newest);
    assert_eq!(refreshed.replans, 1, "{refreshed:?}");
    assert!(
        matches!(
            refreshed.steps.first(),
            Some(burrow::consumer::Step::Snapshot(_))
        ),
        "{refreshed:?}"
    );
    assert_eq!(snapshot_of(&behind), model);
}

/// The producer's background step keeps the newest K versions reachable
/// and deletes the rest; the next cycle's report carries its outcome; the
/// store then holds exactly what the policy needs, and verify accepts the
/// versions it retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_applies_retention_after_each_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer_with(&store, 3, Some(policy(2)));
    let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    let first = publish(&producer, &model).await.unwrap();
    assert!(
        first.last_gc.is_none(),
        "no run has finished before the first"
    );
    let outcome = producer.wait_for_gc().await.expect("a run after version 1");
    assert_eq!(outcome.after_version, 1);
    assert!(outcome.result.unwrap().deleted.is_empty());
    for _ in 0..7 {
        cycles(&producer, &mut model, 1).await;
        producer.wait_for_gc().await;
    }
    let report = publish(&producer, &{
        model.insert(1, movie_value(1, 99));
        model.clone()
    })
    .await
    .unwrap();
    let last = report.last_gc.expect("the previous announcement's run");
    assert_eq!(last.after_version, 8);
    let gone = last.result.unwrap();
    assert!(!gone.deleted.is_empty(), "{gone:?}");
    producer.wait_for_gc().await;
    let needed = needed_blobs(&store, &policy(2), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(blobs(&store).await, needed);
    // Version 9, snapshots at 1, 4, 7: version 8 and 9 from snapshot 7.
    let want: BTreeSet<BlobName> = [
        BlobName::Snapshot(7),
        BlobName::Delta(7, 8),
        BlobName::Delta(8, 9),
        BlobName::Reverse(9, 8),
    ]
    .into_iter()
    .collect();
    assert_eq!(needed, want);
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), model);
    fresh.refresh_to(8).await.unwrap();
    let verified = burrow::verify::verify_store(&store).await.unwrap();
    assert!(verified.is_clean(), "{:?}", verified.problems);
    assert_eq!(verified.retired, (1..=6).collect::<Vec<u64>>());
    assert_eq!(verified.versions_reachable, 3);
}

/// A retention run that hangs (its LIST of `snapshot/` stuck) holds up no
/// cycle: cycles announce while it hangs, start no second run, and report
/// no outcome until it finishes; once released it finishes and the next
/// cycle's report carries its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_retention_run_holds_up_no_cycle() {
    use burrow::testing::faults::{FaultyStore, Op};
    let faulty = std::sync::Arc::new(FaultyStore::memory());
    let store = BlobStore::new(faulty.clone(), "d");
    let producer = producer_with(&store, 1, Some(policy(1)));
    faulty.hang_matching(|op, path| op == Op::List && path.contains("snapshot"));
    let mut model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let first = publish(&producer, &model).await.unwrap();
    while faulty.hanging() == 0 {
        tokio::task::yield_now().await;
    }
    for g in 1..4u64 {
        model.insert(g, movie_value(g, g));
        let report = publish(&producer, &model).await.unwrap();
        assert!(report.published);
        assert!(report.last_gc.is_none(), "the hung run has not finished");
    }
    assert_eq!(faulty.hanging(), 1, "no second run started");
    faulty.release();
    let outcome = producer.wait_for_gc().await.expect("the released run");
    assert_eq!(outcome.after_version, first.version);
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    model.insert(9, movie_value(9, 9));
    let report = publish(&producer, &model).await.unwrap();
    assert_eq!(report.last_gc.unwrap().after_version, first.version);
}

/// A grace period keeps what was retired recently; a blob no announcement
/// names goes only once it is older than the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_keeps_recent_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer_with(&store, 1, None);
    let mut model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    cycles(&producer, &mut model, 4).await;
    store
        .create(
            &BlobName::Snapshot(9),
            vec![bytes::Bytes::from_static(b"x")],
        )
        .await
        .unwrap();
    let before = blobs(&store).await;
    let hour = RetentionPolicy {
        grace: Duration::from_secs(3600),
        ..policy(1)
    };
    let report = collect_garbage(&store, &hour, SystemTime::now(), false)
        .await
        .unwrap();
    assert!(report.deleted.is_empty(), "{:?}", report.deleted);
    assert_eq!(blobs(&store).await, before);
    // An hour later (by gc's clock): everything but version 4's snapshot.
    let later = SystemTime::now() + Duration::from_secs(7200);
    let report = collect_garbage(&store, &hour, later, false).await.unwrap();
    let unannounced: Vec<_> = report
        .deleted
        .iter()
        .filter(|d| d.reason == DeleteReason::Unannounced)
        .map(|d| d.name.clone())
        .collect();
    assert_eq!(unannounced, [BlobName::Snapshot(9).to_string()]);
    assert_eq!(
        blobs(&store).await,
        [BlobName::Snapshot(4)].into_iter().collect()
    );
    // Entries are never deleted.
    assert_eq!(store.list("announce").await.unwrap().len(), 5);
}

/// An invalid policy is refused by name, by gc and by the builder.
#[tokio::test]
async fn an_invalid_policy_is_refused() {
    let store = BlobStore::memory();
    let err = collect_garbage(&store, &policy(0), SystemTime::now(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("keep"), "{err}");
    let err = ProducerBuilder::new(store)
        .retention(Some(policy(0)))
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("retention") && err.contains("keep"), "{err}");
}

#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use crate::common::cli::{assert_fails, burrow, json_lines, text};

    /// `burrow gc --dry-run` prints what it would delete and why and
    /// deletes nothing; the real run deletes the same and verify stays
    /// clean; bad values are named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_dry_run_then_real_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = BlobStore::local(&path).unwrap();
        let producer = producer_with(&store, 1, None);
        let mut model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
        cycles(&producer, &mut model, 5).await;
        let before = blobs(&store).await;

        let dry = burrow(&path, &["gc", "--dry-run", "--keep", "2", "--grace", "0s"]);
        assert!(dry.status.success(), "{}", text(&dry.stderr));
        let out = text(&dry.stdout);
        let snapshot1 = BlobName::Snapshot(1).to_string();
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("WOULD DELETE {snapshot1} "))
                    && l.contains("retired")),
            "{out}"
        );
        assert!(out.contains("dry run: nothing deleted"), "{out}");
        assert_eq!(blobs(&store).await, before, "a dry run deletes nothing");

        let json = burrow(
            &path,
            &["gc", "--dry-run", "--keep", "2", "--grace", "0s", "--json"],
        );
        let json = json_lines(&json);
        let would: BTreeSet<String> = json[0]["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(json[0]["retained_versions"], serde_json::json!([5, 4]));

        let real = burrow(&path, &["gc", "--keep", "2", "--grace", "0s"]);
        assert!(real.status.success(), "{}", text(&real.stderr));
        let out = text(&real.stdout);
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("DELETE {snapshot1} "))),
            "{out}"
        );
        let left = blobs(&store).await;
        let deleted: BTreeSet<String> = before.difference(&left).map(|n| n.to_string()).collect();
        assert_eq!(deleted, would);
        assert!(left.contains(&BlobName::Snapshot(4)) && left.contains(&BlobName::Snapshot(5)));

        // A retired version cannot be pinned: consumers could not reach it.
        assert_fails(
            &burrow(&path, &["pin", "1"]),
            "cannot pin version 1: retention retired it",
        );
        let pin = burrow(&path, &["pin", "4"]);
        assert!(pin.status.success(), "{}", text(&pin.stderr));
        burrow(&path, &["unpin"]);

        let verify = burrow(&path, &["verify"]);
        assert!(verify.status.success(), "{}", text(&verify.stdout));
        assert!(
            text(&verify.stdout).contains("3 retired"),
            "{}",
            text(&verify.stdout)
        );

        // With the default grace nothing this young goes.
        let young = burrow(&path, &["gc", "--keep", "1"]);
        assert!(
            text(&young.stdout).contains("deleted 0 blobs"),
            "{}",
            text(&young.stdout)
        );

        assert_fails(
            &burrow(&path, &["gc", "--grace", "10"]),
            "invalid --grace \"10\": needs a unit",
        );
        assert_fails(
            &burrow(&path, &["gc", "--grace", "5 weeks"]),
            "invalid --grace",
        );
        assert_fails(
            &burrow(&path, &["gc", "--keep", "0"]),
            "invalid --keep \"0\"",
        );
        assert_fails(
            &burrow(&path, &["gc", "--snapshot-spacing", "x"]),
            "invalid --snapshot-spacing",
        );
    }

    /// `burrow versions` reads back from the newest entry only as far as it
    /// shows (100 by default, `--last N`): with the oldest entry made
    /// unreadable it still lists the newest, and only `--all` reads it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_reads_only_the_entries_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = BlobStore::local(&path).unwrap();
        let producer = producer_with(&store, 1, None);
        let mut model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
        cycles(&producer, &mut model, 5).await;
        let seqs = |out: &std::process::Output| -> Vec<u64> {
            json_lines(out)
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(
            seqs(&burrow(&path, &["--json", "versions"])),
            [1, 2, 3, 4, 5]
        );
        std::fs::write(path.join(BlobName::Announce(1).to_string()), b"garbage").unwrap();
        let last = burrow(&path, &["--json", "versions", "--last", "2"]);
        assert!(last.status.success(), "{}", text(&last.stderr));
        assert_eq!(seqs(&last), [4, 5]);
        assert_eq!(
            seqs(&burrow(&path, &["--json", "versions", "--last", "4"])),
            [2, 3, 4, 5]
        );
        assert_fails(
            &burrow(&path, &["versions", "--all"]),
            "announce/00000000000000000001",
        );
        assert_fails(
            &burrow(&path, &["versions", "--last", "0"]),
            "invalid --last \"0\"",
        );
    }

    /// `burrow demo --no-gc` leaves retention to `burrow gc`; without it the
    /// demo's producer runs it (with the default grace nothing young goes).
    #[test]
    fn demo_no_gc_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let out = burrow(
            &path,
            &[
                "demo",
                "--records",
                "200",
                "--cycles",
                "3",
                "--no-gc",
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let cycles = json_lines(&out);
        assert!(cycles
            .iter()
            .filter(|e| e["event"] == "cycle")
            .all(|e| e["gc_deleted_blobs"].is_null()));
        let out = burrow(
            &path,
            &["demo", "--records", "200", "--cycles", "3", "--json"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let last = json_lines(&out)
            .into_iter()
            .rfind(|e| e["event"] == "cycle")
            .unwrap();
        assert_eq!(last["gc_deleted_blobs"], 0, "{last}");
    }
}
