//! Invariant: a consumer that follows every delta, a consumer that loads
//! only the latest snapshot, a consumer moved back through reverse deltas,
//! and a BTreeMap model all hold the same records at every version; a kept
//! key never changes ordinal and freed ordinals are reused first. Types
//! come and go: restarts register the second type (Probe) or not, so it
//! appears (created by a delta) and disappears (dropped by a delta), and
//! every consumer agrees on whether it is there and what it holds. Cycles
//! are full or incremental (upserts and deletes by key, with an unchanged
//! upsert, a superseded upsert and a delete of an absent key mixed in).

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::examples::probe_capnp::probe;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
enum Op {
    /// Add `adds` new keys, change ids picked by `changes`, remove by `removes`.
    Cycle {
        adds: u8,
        changes: Vec<u16>,
        removes: Vec<u16>,
        /// Published by an incremental cycle rather than a full one.
        incremental: bool,
    },
    NoChange,
    /// Drop the producer and restore a new one from the store, registering
    /// the Probe type or not.
    Restart {
        probe: bool,
    },
}

/// The Probe records: name -> big. `None`: the type is not in the state.
type ProbeModel = Option<BTreeMap<String, i64>>;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, prop::collection::vec(any::<u16>(), 0..6), prop::collection::vec(any::<u16>(), 0..6), any::<bool>())
            .prop_map(|(adds, changes, removes, incremental)| Op::Cycle { adds, changes, removes, incremental }),
        1 => Just(Op::NoChange),
        2 => any::<bool>().prop_map(|probe| Op::Restart { probe }),
    ]
}

fn ordinals(consumer: &burrow::consumer::Consumer) -> HashMap<u64, u32> {
    let state = consumer.state().unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    view.iter().map(|(o, rec)| (rec.get_id(), o)).collect()
}

fn build(store: &BlobStore, snapshot_every: u32) -> Producer {
    build_with(store, snapshot_every, false)
}

fn build_with(store: &BlobStore, snapshot_every: u32, probe: bool) -> Producer {
    let builder = ProducerBuilder::new(store.clone())
        .producer_id("prop")
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"]);
    let builder = if probe {
        builder.primary_key::<probe::Owned>(&["name"])
    } else {
        builder
    };
    builder.build().unwrap()
}

/// Publishes the Movie model and, when the producer registers Probe, the
/// Probe records.
async fn publish_all(
    producer: &Producer,
    model: &Model,
    probes: &ProbeModel,
) -> burrow::Result<burrow::producer::CycleReport> {
    producer
        .run_cycle(|p| {
            add_model(p, model)?;
            for (name, big) in probes.iter().flatten() {
                p.add::<probe::Owned>(|mut r| {
                    r.set_name(name.as_str());
                    r.set_big(*big);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
}

/// Publishes the change from (`model_before`, `probes_before`) to
/// (`model`, `probes`) as one incremental cycle, with changes that are no
/// change mixed in: an unchanged upsert, an upsert superseded by a later
/// one, a delete of a key never published.
async fn publish_incremental_all(
    producer: &Producer,
    (model_before, probes_before): (&Model, &ProbeModel),
    (model, probes): (&Model, &ProbeModel),
) -> burrow::Result<burrow::producer::CycleReport> {
    producer
        .run_incremental_cycle(|inc| {
            if let Some((id, value)) = model.iter().next() {
                upsert_movie(inc, *id, &movie_value(*id, 9999))?;
                upsert_movie(inc, *id, value)?;
            }
            add_changes(inc, model_before, model)?;
            inc.delete::<movie::Owned, _>(&u64::MAX)?;
            if let Some(probes) = probes {
                let empty = BTreeMap::new();
                let before = probes_before.as_ref().unwrap_or(&empty);
                for (name, big) in probes {
                    if before.get(name) != Some(big) {
                        inc.upsert::<probe::Owned>(|mut r| {
                            r.set_name(name.as_str());
                            r.set_big(*big);
                            Ok(())
                        })?;
                    }
                }
                for name in before.keys().filter(|n| !probes.contains_key(*n)) {
                    inc.delete::<probe::Owned, _>(name.as_str())?;
                }
            }
            Ok(())
        })
        .await
}

/// The Probe records of a consumer's state, each also found by its key;
/// `None` when the state has no Probe type.
fn probes_of(consumer: &burrow::consumer::Consumer) -> ProbeModel {
    let state = consumer.state().unwrap();
    let view = match state.view::<probe::Owned>() {
        Ok(view) => view,
        Err(burrow::Error::Consumer(burrow::consumer::ConsumerError::UnknownType { .. })) => {
            return None
        }
        Err(e) => panic!("Probe view: {e}"),
    };
    let mut out = BTreeMap::new();
    for (o, r) in view.iter() {
        let name = r.get_name().unwrap().to_string().unwrap();
        let (found, _) = view.find(name.as_str()).unwrap().expect("found by key");
        assert_eq!(found, o, "{name} found at its ordinal");
        out.insert(name, r.get_big());
    }
    assert_eq!(view.len() as usize, out.len());
    Some(out)
}

async fn run(ops: Vec<Op>, snapshot_every: u32) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let mut producer = build_with(&store, snapshot_every, true);
    let follower = consumer(&store, &dir.path().join("follower"));
    let mut model: Model = (0..8).map(|i| (i, movie_value(i, 0))).collect();
    // Probe is registered (`probes` is `Some`) or not; the state holds it
    // as the last published cycle's producer registered it.
    let mut probes: ProbeModel = Some((0..3).map(|i| (format!("p{i}"), i)).collect());
    let mut probe_state = probes.clone();
    let mut next_id = 8u64;
    let mut history: BTreeMap<u64, (Model, ProbeModel)> = BTreeMap::new();
    let first = publish_all(&producer, &model, &probes).await.unwrap();
    history.insert(first.version, (model.clone(), probes.clone()));
    follower.refresh().await.unwrap();
    let mut prev_ordinals = ordinals(&follower);
    let mut holes_before = 0usize;
    let mut limit_before = follower
        .state()
        .unwrap()
        .view::<movie::Owned>()
        .unwrap()
        .ordinal_limit();

    for (step, op) in ops.into_iter().enumerate() {
        let generation = step as u64 + 1;
        let model_before = model.clone();
        let mut incremental_cycle = false;
        match op {
            Op::Restart { probe } => {
                producer = build_with(&store, snapshot_every, probe);
                let restored = producer.restore().await.unwrap();
                assert_eq!(restored, history.keys().last().copied());
                // A producer that registers Probe starts from the records
                // the state holds; one that does not will drop them.
                probes = if probe {
                    probe_state.clone().or_else(|| Some(BTreeMap::new()))
                } else {
                    None
                };
                continue;
            }
            Op::NoChange if probes == probe_state => {
                let report = publish_all(&producer, &model, &probes).await.unwrap();
                assert!(
                    !report.published,
                    "a cycle with no change publishes nothing"
                );
                continue;
            }
            // Probe records changed, or the type comes or goes (a change
            // even with no record changed).
            Op::NoChange => {}
            Op::Cycle {
                adds,
                changes,
                removes,
                incremental,
            } => {
                incremental_cycle = incremental;
                let ids: Vec<u64> = model.keys().copied().collect();
                for c in changes {
                    if !ids.is_empty() {
                        let id = ids[c as usize % ids.len()];
                        model.insert(id, movie_value(id, generation));
                    }
                }
                for r in removes {
                    if !ids.is_empty() {
                        model.remove(&ids[r as usize % ids.len()]);
                    }
                }
                for _ in 0..adds {
                    model.insert(next_id, movie_value(next_id, 0));
                    next_id += 1;
                }
                if let Some(p) = probes.as_mut() {
                    // Add or change one, remove one now and then.
                    p.insert(format!("p{}", adds % 5), generation as i64);
                    if adds % 3 == 0 {
                        p.remove(&format!("p{}", (adds + 1) % 5));
                    }
                }
            }
        }
        let report = if incremental_cycle {
            publish_incremental_all(&producer, (&model_before, &probe_state), (&model, &probes))
                .await
                .unwrap()
        } else {
            publish_all(&producer, &model, &probes).await.unwrap()
        };
        if !report.published {
            assert_eq!(probes, probe_state, "a type coming or going publishes");
            continue;
        }
        probe_state = probes.clone();
        history.insert(report.version, (model.clone(), probes.clone()));

        // The follower applies the delta.
        follower.refresh().await.unwrap();
        assert_eq!(follower.version(), Some(report.version));
        assert_eq!(
            snapshot_of(&follower),
            model,
            "delta follower at {}",
            report.version
        );
        assert_eq!(
            probes_of(&follower),
            probes,
            "delta follower's Probe at {}",
            report.version
        );

        // Ordinals: kept keys keep theirs; new keys fill holes first.
        let now = ordinals(&follower);
        let mut new_beyond_limit = 0usize;
        let mut added = 0usize;
        for (id, o) in &now {
            match prev_ordinals.get(id) {
                Some(prev) => assert_eq!(prev, o, "id {id} kept its key but moved ordinal"),
                None => {
                    added += 1;
                    if *o >= limit_before {
                        new_beyond_limit += 1;
                    }
                }
            }
        }
        assert!(
            new_beyond_limit <= added.saturating_sub(holes_before),
            "{added} new keys, {holes_before} free ordinals, yet {new_beyond_limit} went past the limit"
        );
        let view_limit = follower
            .state()
            .unwrap()
            .view::<movie::Owned>()
            .unwrap()
            .ordinal_limit();
        holes_before = view_limit as usize - now.len();
        limit_before = view_limit;
        prev_ordinals = now;

        // A fresh consumer loads the nearest snapshot (and deltas from it).
        let fresh = consumer(&store, &dir.path().join(format!("fresh-{step}")));
        fresh.refresh().await.unwrap();
        assert_eq!(
            snapshot_of(&fresh),
            model,
            "snapshot consumer at {}",
            report.version
        );
        assert_eq!(
            probes_of(&fresh),
            probes,
            "snapshot consumer's Probe at {}",
            report.version
        );
    }

    // A consumer at the newest version walks back through every version by
    // reverse deltas (or snapshots, whichever the planner finds cheaper)
    // and holds the model of each.
    let back = consumer(&store, &dir.path().join("back"));
    back.refresh().await.unwrap();
    for (version, expected) in history.iter().rev() {
        back.refresh_to(*version).await.unwrap();
        assert_eq!(&snapshot_of(&back), &expected.0, "moved back to {version}");
        assert_eq!(
            &probes_of(&back),
            &expected.1,
            "Probe moved back to {version}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn consumers_and_model_agree(ops in prop::collection::vec(op(), 1..10), snapshot_every in 1u32..4) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, snapshot_every));
    }
}

/// Moving back to an old version uses reverse deltas when they are cheaper
/// than a snapshot.
#[tokio::test]
async fn pin_walks_back_through_reverse_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = build(&store, 100);
    let follower = consumer(&store, &dir.path().join("c"));
    let mut model: Model = (0..500).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let first = model.clone();
    follower.refresh().await.unwrap();
    for g in 1..4u64 {
        model.insert(g, movie_value(g, g));
        publish(&producer, &model).await.unwrap();
        follower.refresh().await.unwrap();
    }
    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    log.pin(v1, "operator").await.unwrap();
    let report = follower.refresh().await.unwrap().expect("moves to the pin");
    assert_eq!(report.to, v1);
    assert!(
        report
            .steps
            .iter()
            .all(|s| matches!(s, burrow::consumer::Step::Reverse(..))),
        "walked back by reverse deltas: {:?}",
        report.steps
    );
    assert_eq!(snapshot_of(&follower), first);
    // The producer keeps publishing while pinned; consumers stay pinned.
    model.insert(9, movie_value(9, 9));
    let v5 = publish(&producer, &model).await.unwrap().version;
    assert!(follower.refresh().await.unwrap().is_none(), "still pinned");
    log.unpin("operator").await.unwrap();
    let report = follower.refresh().await.unwrap().expect("unpinned");
    assert_eq!(report.to, v5);
    assert_eq!(snapshot_of(&follower), model);
}
