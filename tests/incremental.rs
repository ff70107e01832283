//! Invariant: incremental cycles (upserts and deletes by key) and full
//! cycles alternate on one chain, across restarts and pins, and a consumer
//! that follows the deltas, a consumer that starts from the newest
//! snapshot and one that walks back by reverse deltas all hold the model;
//! a failed incremental cycle leaves the producer at its last announced
//! state and the next one chains on.

use crate::common::*;
use burrow::announcer::AnnouncementLog;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::producer::{FnValidator, Producer, ProducerBuilder, ProducerError};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::examples::probe_capnp::probe;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn build(store: &BlobStore, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("incr")
        .retention(None)
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

/// The model after generation `g`'s changes: a few records changed, one
/// removed, two added.
fn step(model: &Model, g: u64, next_id: &mut u64) -> Model {
    let mut next = model.clone();
    let ids: Vec<u64> = model.keys().copied().collect();
    for k in 0..3 {
        let id = ids[(g as usize * 7 + k * 11) % ids.len()];
        next.insert(id, movie_value(id, g));
    }
    next.remove(&ids[(g as usize * 5) % ids.len()]);
    for _ in 0..2 {
        next.insert(*next_id, movie_value(*next_id, g));
        *next_id += 1;
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_cycles_alternate_with_restarts_and_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let mut producer = build(&store, 3);
    let follower = consumer(&store, &dir.path().join("follower"));
    let mut model: Model = (0..40).map(|i| (i, movie_value(i, 0))).collect();
    let mut next_id = 40;
    let mut history: BTreeMap<u64, Model> = BTreeMap::new();
    let first = publish(&producer, &model).await.unwrap();
    history.insert(first.version, model.clone());

    for g in 1..=14u64 {
        if g == 6 || g == 11 {
            // A restart: the restored producer's next cycle (incremental
            // here) chains on.
            producer = build(&store, 3);
            assert_eq!(
                producer.restore().await.unwrap(),
                history.keys().last().copied()
            );
        }
        let next = step(&model, g, &mut next_id);
        let full = g % 4 == 0;
        let report = if full {
            publish(&producer, &next).await.unwrap()
        } else {
            publish_incremental(&producer, &model, &next).await.unwrap()
        };
        assert!(report.published, "generation {g}");
        if !full {
            assert!(
                report
                    .blobs
                    .iter()
                    .all(|(n, _)| !matches!(n, BlobName::Snapshot(_))),
                "an incremental cycle writes no snapshot: {:?}",
                report.blobs
            );
            let c = &report.changes[0];
            assert_eq!((c.added, c.removed), (2, 1), "generation {g}");
        }
        model = next;
        history.insert(report.version, model.clone());

        follower.refresh().await.unwrap();
        assert_eq!(follower.version(), Some(report.version));
        assert_eq!(snapshot_of(&follower), model, "delta follower at {g}");
        let fresh = consumer(&store, &dir.path().join(format!("fresh-{g}")));
        fresh.refresh().await.unwrap();
        assert_eq!(snapshot_of(&fresh), model, "fresh consumer at {g}");
    }

    // A pin moves consumers back; incremental cycles go on under it, and
    // the unpin brings consumers to the newest.
    let log = AnnouncementLog::new(store.clone());
    let (&pinned, pinned_model) = history.iter().nth(5).unwrap();
    log.pin(pinned, "operator").await.unwrap();
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), *pinned_model);
    let next = step(&model, 99, &mut next_id);
    let report = publish_incremental(&producer, &model, &next).await.unwrap();
    model = next;
    history.insert(report.version, model.clone());
    assert!(follower.refresh().await.unwrap().is_none(), "still pinned");
    log.unpin("operator").await.unwrap();
    follower.refresh().await.unwrap();
    assert_eq!(follower.version(), Some(report.version));
    assert_eq!(snapshot_of(&follower), model);

    // Back through every version.
    let back = consumer(&store, &dir.path().join("back"));
    back.refresh().await.unwrap();
    for (version, expected) in history.iter().rev() {
        back.refresh_to(*version).await.unwrap();
        assert_eq!(&snapshot_of(&back), expected, "moved back to {version}");
    }
}

#[tokio::test]
async fn what_an_incremental_cycle_counts_as_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = build(&store, 1);
    let reader = consumer(&store, &dir.path().join("c"));
    let mut model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;

    // Nothing, an unchanged upsert, a delete of an absent key: no version.
    for (what, report) in [
        (
            "no operation",
            producer.run_incremental_cycle(|_| Ok(())).await,
        ),
        (
            "an unchanged upsert",
            producer
                .run_incremental_cycle(|inc| upsert_movie(inc, 1, &model[&1]))
                .await,
        ),
        (
            "a delete of an absent key",
            producer
                .run_incremental_cycle(|inc| inc.delete::<movie::Owned, _>(&77u64))
                .await,
        ),
        (
            "an upsert of a new key then its delete",
            producer
                .run_incremental_cycle(|inc| {
                    upsert_movie(inc, 50, &movie_value(50, 0))?;
                    inc.delete::<movie::Owned, _>(&50u64)
                })
                .await,
        ),
    ] {
        let report = report.unwrap();
        assert!(!report.published, "{what} makes no version");
        assert_eq!(report.version, v1, "{what}");
    }

    // The last operation on a key wins: 2 is written twice (the second
    // stays), 3 deleted then upserted (stays, changed), 4 upserted then
    // deleted (gone).
    let report = producer
        .run_incremental_cycle(|inc| {
            upsert_movie(inc, 2, &movie_value(2, 8))?;
            upsert_movie(inc, 2, &movie_value(2, 9))?;
            inc.delete::<movie::Owned, _>(&3u64)?;
            upsert_movie(inc, 3, &movie_value(3, 9))?;
            upsert_movie(inc, 4, &movie_value(4, 9))?;
            inc.delete::<movie::Owned, _>(&4u64)
        })
        .await
        .unwrap();
    assert!(report.published);
    let c = &report.changes[0];
    assert_eq!((c.added, c.changed, c.removed), (0, 2, 1));
    model.insert(2, movie_value(2, 9));
    model.insert(3, movie_value(3, 9));
    model.remove(&4);
    reader.refresh().await.unwrap();
    assert_eq!(snapshot_of(&reader), model);

    // A key of the wrong shape is refused, naming the type.
    let err = producer
        .run_incremental_cycle(|inc| inc.delete::<movie::Owned, _>("not an id"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Movie"), "{err}");
    assert_eq!(producer.version().await, Some(report.version));
}

#[tokio::test]
async fn types_without_a_key_and_producers_without_a_state_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .retention(None)
        .primary_key::<movie::Owned>(&["id"])
        .record_type::<probe::Owned>()
        .build()
        .unwrap();
    // No state yet: the first cycle must be a full one.
    let err = producer
        .run_incremental_cycle(|inc| upsert_movie(inc, 1, &movie_value(1, 0)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            burrow::Error::Producer(ProducerError::Cycle { source, .. })
                if matches!(**source, burrow::Error::Producer(ProducerError::NoState))
        ),
        "{err}"
    );
    let model: Model = (0..3).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let err = producer
        .run_incremental_cycle(|inc| {
            inc.upsert::<probe::Owned>(|mut p| {
                p.set_name("x");
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Probe has no primary key"),
        "{err}"
    );
    let err = producer
        .run_incremental_cycle(|inc| inc.delete::<probe::Owned, _>("x"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Probe has no primary key"),
        "{err}"
    );
    assert_eq!(producer.version().await, Some(v1));

    // A second producer with no state on a store with announcements must
    // restore first.
    let other = build(&store, 1);
    let err = other
        .run_incremental_cycle(|inc| upsert_movie(inc, 1, &movie_value(1, 0)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("restore()"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_failed_incremental_cycle_leaves_the_announced_state() {
    let dir = tempfile::tempdir().unwrap();
    let FaultyLocal {
        faults: faulty,
        faulty: producer_store,
        clean: clean_store,
    } = faulty_local(dir.path());
    let refuse = Arc::new(AtomicBool::new(false));
    let refusing = refuse.clone();
    let producer = ProducerBuilder::new(producer_store)
        .retention(None)
        .primary_key::<movie::Owned>(&["id"])
        .validator(FnValidator::new("switch", move |_, _| {
            if refusing.load(Ordering::SeqCst) {
                Err("switched off".into())
            } else {
                Ok(())
            }
        }))
        .build()
        .unwrap();
    let reader = consumer(&clean_store, &dir.path().join("cache"));
    let mut model: Model = (0..30).map(|i| (i, movie_value(i, 0))).collect();
    let mut version = publish(&producer, &model).await.unwrap().version;
    let mut next_id = 30;

    // A validator refusal.
    let next = step(&model, 1, &mut next_id);
    refuse.store(true, Ordering::SeqCst);
    let err = publish_incremental(&producer, &model, &next)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("switched off"), "{err}");
    assert_eq!(producer.version().await, Some(version));
    refuse.store(false, Ordering::SeqCst);

    // The store failing each call of the cycle in turn.
    let mut failures = 0;
    for k in 0..12u64 {
        let next = step(&model, k + 2, &mut next_id);
        faulty.fail_after(k);
        let result = publish_incremental(&producer, &model, &next).await;
        faulty.heal();
        match result {
            Ok(report) => version = report.version,
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("failed at step"), "k={k}: {e}");
                assert_eq!(producer.version().await, Some(version), "k={k}");
                let _ = reader.refresh().await;
                assert_eq!(snapshot_of(&reader), model, "k={k}: nothing followed");
                // The same changes again chain on from the announced state.
                let report = publish_incremental(&producer, &model, &next).await.unwrap();
                assert!(report.published && report.version > version, "k={k}");
                version = report.version;
            }
        }
        model = next;
        reader.refresh().await.unwrap();
        assert_eq!(reader.version(), Some(version), "k={k}");
        assert_eq!(snapshot_of(&reader), model, "k={k}: after recovery");
    }
    assert!(failures >= 4, "only {failures} cycles met a failure");
    let fresh = consumer(&clean_store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), model);
}

/// The check the issue asks to be writable: no more than 5% of movies may
/// lose their title in one cycle.
fn titles_kept(cycle: &burrow::producer::CycleDiff<'_>) -> Result<(), String> {
    let movies = cycle.records::<movie::Owned>().map_err(|e| e.to_string())?;
    let mut lost = 0u32;
    for (_, old, new) in movies.changed() {
        let title = |r: &burrow::producer::Record<'_, movie::Owned>| {
            let m = r.get().map_err(|e| e.to_string())?;
            m.get_title().map(|t| t.len()).map_err(|e| e.to_string())
        };
        if title(&old)? > 0 && title(&new)? == 0 {
            lost += 1;
        }
    }
    if f64::from(lost) > 0.05 * f64::from(movies.count_before()) {
        return Err(format!(
            "{lost} of {} movies lost their title",
            movies.count_before()
        ));
    }
    Ok(())
}

#[tokio::test]
async fn record_validators_see_the_records_of_full_and_incremental_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    // What the second validator saw: added, removed and changed ids, and
    // the new state's ids read through `iter_after`.
    type Seen = (Vec<u64>, Vec<u64>, Vec<(u64, u64)>, Vec<u64>);
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let recorder = seen.clone();
    let producer = ProducerBuilder::new(store.clone())
        .retention(None)
        .primary_key::<movie::Owned>(&["id"])
        .record_validator(burrow::producer::FnRecordValidator::new(
            "titles",
            titles_kept,
        ))
        .record_validator(burrow::producer::FnRecordValidator::new(
            "recorder",
            move |cycle| {
                let movies = cycle.records::<movie::Owned>().map_err(|e| e.to_string())?;
                let id = |r: &burrow::producer::Record<'_, movie::Owned>| {
                    r.get().map(|m| m.get_id()).map_err(|e| e.to_string())
                };
                let added = movies
                    .added()
                    .map(|(_, r)| id(&r))
                    .collect::<Result<_, _>>()?;
                let removed = movies
                    .removed()
                    .map(|(_, r)| id(&r))
                    .collect::<Result<_, _>>()?;
                let changed = movies
                    .changed()
                    .map(|(_, old, new)| Ok((id(&old)?, id(&new)?)))
                    .collect::<Result<_, String>>()?;
                let mut after: Vec<u64> = movies
                    .iter_after()
                    .map(|(_, r)| id(&r))
                    .collect::<Result<_, _>>()?;
                after.sort_unstable();
                assert_eq!(after.len() as u32, movies.count_after());
                recorder
                    .lock()
                    .unwrap()
                    .push((added, removed, changed, after));
                Ok(())
            },
        ))
        .build()
        .unwrap();
    let untitled = |model: &mut Model, ids: std::ops::Range<u64>| {
        for id in ids {
            model.get_mut(&id).unwrap().0.clear();
        }
    };
    let mut model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;

    // An incremental cycle: 5 titles lost (5%: allowed), one removed, one
    // added; the validator sees each, and the new state.
    let mut next = model.clone();
    untitled(&mut next, 0..5);
    next.remove(&50);
    next.insert(100, movie_value(100, 0));
    seen.lock().unwrap().clear();
    let v2 = publish_incremental(&producer, &model, &next)
        .await
        .unwrap()
        .version;
    model = next;
    let (added, removed, changed, after) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(added, vec![100]);
    assert_eq!(removed, vec![50]);
    assert_eq!(changed, (0..5).map(|i| (i, i)).collect::<Vec<_>>());
    assert_eq!(after, model.keys().copied().collect::<Vec<_>>());

    // Six more, incrementally, and then in a full cycle: refused both ways.
    let mut next = model.clone();
    untitled(&mut next, 10..16);
    let err = publish_incremental(&producer, &model, &next)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("6 of 100 movies lost their title"),
        "{err}"
    );
    let err = publish(&producer, &next).await.unwrap_err();
    assert!(
        err.to_string().contains("6 of 100 movies lost their title"),
        "{err}"
    );
    assert_eq!(producer.version().await, Some(v2));

    // A full cycle that loses three: allowed, and seen as a full diff.
    let mut next = model.clone();
    untitled(&mut next, 20..23);
    let v3 = publish(&producer, &next).await.unwrap().version;
    assert!(v3 > v2 && v2 > v1);
    let (_, _, changed, after) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(changed, (20..23).map(|i| (i, i)).collect::<Vec<_>>());
    assert_eq!(after, next.keys().copied().collect::<Vec<_>>());
}

/// Invariant: a consumer's state tells the tags and start time of the
/// cycle that made it, whichever way it got there (snapshot, delta, or a
/// reverse delta back to a pinned version).
#[tokio::test]
async fn per_cycle_tags_and_start_time_reach_consumers() {
    use burrow::testing::ManualClock;
    use std::time::{Duration, UNIX_EPOCH};
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let clock = Arc::new(ManualClock::new());
    let producer = ProducerBuilder::new(store.clone())
        .retention(None)
        .clock(clock.clone())
        .snapshot_every(100)
        .header_tag("team", "catalog")
        .header_tag("source", "default")
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let follower = consumer(&store, &dir.path().join("c"));
    let start = |s: u64| {
        UNIX_EPOCH
            + Duration::from_micros(ManualClock::UNIX_START_MICROS as u64)
            + Duration::from_secs(s)
    };
    let tags = |source: &str| {
        vec![
            ("team".to_string(), "catalog".to_string()),
            ("source".to_string(), source.to_string()),
        ]
    };

    // Large enough that reverse deltas are cheaper than the snapshot.
    let mut model: Model = (0..500).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = producer
        .run_cycle(|p| {
            p.tag("source", "batch-41");
            add_model(p, &model)
        })
        .await
        .unwrap()
        .version;
    follower.refresh().await.unwrap();
    let state = follower.state().unwrap();
    assert_eq!(state.tags(), tags("batch-41").as_slice());
    assert_eq!(state.cycle_started_at(), start(0));

    // An incremental cycle 60 s later, with its own tag; a full cycle
    // after it with none (the producer's default again).
    clock.advance(Duration::from_secs(60));
    let next: Model = {
        let mut m = model.clone();
        m.insert(1, movie_value(1, 1));
        m
    };
    let v2 = producer
        .run_incremental_cycle(|inc| {
            inc.tag("source", "ignored");
            inc.tag("source", "batch-42");
            add_changes(inc, &model, &next)
        })
        .await
        .unwrap()
        .version;
    model = next;
    follower.refresh().await.unwrap();
    let state = follower.state().unwrap();
    assert_eq!(state.version(), v2);
    assert_eq!(state.tag("source"), Some("batch-42"));
    assert_eq!(state.cycle_started_at(), start(60));
    clock.advance(Duration::from_secs(60));
    model.insert(2, movie_value(2, 2));
    publish(&producer, &model).await.unwrap();
    follower.refresh().await.unwrap();
    let state = follower.state().unwrap();
    assert_eq!(state.tags(), tags("default").as_slice());
    assert_eq!(state.cycle_started_at(), start(120));

    // Pinned back to v1 through reverse deltas: v1's cycle again.
    let log = AnnouncementLog::new(store.clone());
    log.pin(v1, "operator").await.unwrap();
    let report = follower.refresh().await.unwrap().unwrap();
    assert!(
        report
            .steps
            .iter()
            .all(|s| matches!(s, burrow::consumer::Step::Reverse(..))),
        "{:?}",
        report.steps
    );
    let state = follower.state().unwrap();
    assert_eq!(state.tag("source"), Some("batch-41"));
    assert_eq!(state.cycle_started_at(), start(0));

    // A restored producer's reverse delta leads back to its state's cycle.
    log.unpin("operator").await.unwrap();
    let restored = ProducerBuilder::new(store.clone())
        .retention(None)
        .clock(clock.clone())
        .snapshot_every(100)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let v3 = restored.restore().await.unwrap().unwrap();
    clock.advance(Duration::from_secs(60));
    let v4 = restored
        .run_incremental_cycle(|inc| upsert_movie(inc, 3, &movie_value(3, 3)))
        .await
        .unwrap()
        .version;
    follower.refresh().await.unwrap();
    assert_eq!(follower.state().unwrap().version(), v4);
    assert!(follower.state().unwrap().tags().is_empty());
    let report = follower.refresh_to(v3).await.unwrap().unwrap();
    assert!(
        matches!(
            report.steps.as_slice(),
            [burrow::consumer::Step::Reverse(..)]
        ),
        "{:?}",
        report.steps
    );
    let state = follower.state().unwrap();
    assert_eq!(state.tags(), tags("default").as_slice());
    assert_eq!(state.cycle_started_at(), start(120));
}
