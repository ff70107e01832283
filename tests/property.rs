//! Invariant: a consumer that follows every delta, a consumer that loads
//! only the latest snapshot, a consumer moved back through reverse deltas,
//! and a BTreeMap model all hold the same records at every version; a kept
//! key never changes ordinal and freed ordinals are reused first.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
enum Op {
    /// Add `adds` new keys, change ids picked by `changes`, remove by `removes`.
    Cycle {
        adds: u8,
        changes: Vec<u16>,
        removes: Vec<u16>,
    },
    NoChange,
    /// Drop the producer and restore a new one from the store.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, prop::collection::vec(any::<u16>(), 0..6), prop::collection::vec(any::<u16>(), 0..6))
            .prop_map(|(adds, changes, removes)| Op::Cycle { adds, changes, removes }),
        1 => Just(Op::NoChange),
        1 => Just(Op::Restart),
    ]
}

fn ordinals(consumer: &burrow::consumer::Consumer) -> HashMap<u64, u32> {
    let state = consumer.state().unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    view.iter()
        .map(|r| {
            let (o, rec) = r.unwrap();
            (rec.get().unwrap().get_id(), o)
        })
        .collect()
}

fn build(store: &BlobStore, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("prop")
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

async fn run(ops: Vec<Op>, snapshot_every: u32) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let mut producer = build(&store, snapshot_every);
    let follower = consumer(&store, &dir.path().join("follower"));
    let mut model: Model = (0..8).map(|i| (i, movie_value(i, 0))).collect();
    let mut next_id = 8u64;
    let mut history: BTreeMap<u64, Model> = BTreeMap::new();
    let first = publish(&producer, &model).await.unwrap();
    history.insert(first.version, model.clone());
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
        match op {
            Op::Restart => {
                producer = build(&store, snapshot_every);
                let restored = producer.restore().await.unwrap();
                assert_eq!(restored, history.keys().last().copied());
                continue;
            }
            Op::NoChange => {
                let report = publish(&producer, &model).await.unwrap();
                assert!(
                    !report.published,
                    "a cycle with no change publishes nothing"
                );
                continue;
            }
            Op::Cycle {
                adds,
                changes,
                removes,
            } => {
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
            }
        }
        let report = publish(&producer, &model).await.unwrap();
        if !report.published {
            continue;
        }
        history.insert(report.version, model.clone());

        // The follower applies the delta.
        follower.refresh().await.unwrap();
        assert_eq!(follower.version(), Some(report.version));
        assert_eq!(
            snapshot_of(&follower),
            model,
            "delta follower at {}",
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
    }

    // A consumer at the newest version walks back through every version by
    // reverse deltas (or snapshots, whichever the planner finds cheaper)
    // and holds the model of each.
    let back = consumer(&store, &dir.path().join("back"));
    back.refresh().await.unwrap();
    for (version, expected) in history.iter().rev() {
        back.refresh_to(*version).await.unwrap();
        assert_eq!(&snapshot_of(&back), expected, "moved back to {version}");
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
