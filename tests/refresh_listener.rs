//! Change notifications (`consumer::RefreshListener`): a read service's
//! cache derived only from the events (removed keys deleted, added keys
//! inserted, changed keys replaced, each old record checked against what
//! the cache holds) stays equal to the consumer's state and to the model,
//! for a consumer following every delta, one that jumps (forward and back,
//! by reverse deltas or snapshots) and one that loads only snapshots; a
//! delta refresh looks at no more records than the deltas touched.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::{ChangeSource, ConsumerBuilder, RefreshEvent, RefreshListener};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Value = (String, u32, Vec<String>);

fn value(m: movie::Reader<'_>) -> (u64, Value) {
    let tags = m
        .get_tags()
        .unwrap()
        .iter()
        .map(|t| t.unwrap().to_string().unwrap())
        .collect();
    (
        m.get_id(),
        (
            m.get_title().unwrap().to_string().unwrap(),
            m.get_year(),
            tags,
        ),
    )
}

/// What a listener saw of one refresh.
#[derive(Debug, Clone)]
struct Seen {
    to: u64,
    source: Option<ChangeSource>,
    examined: u64,
    keys: usize,
}

/// A read service's cache, kept only from refresh events.
#[derive(Default)]
struct DerivedCache {
    cache: Mutex<Model>,
    seen: Mutex<Vec<Seen>>,
}

impl RefreshListener for DerivedCache {
    fn refreshed(&self, event: &RefreshEvent) {
        let mut cache = self.cache.lock().unwrap();
        let changes = event.typed::<movie::Owned>().unwrap();
        let mut seen = Seen {
            to: event.to().version(),
            source: None,
            examined: 0,
            keys: 0,
        };
        if let Some(changes) = changes {
            let ordinals = changes.ordinals();
            seen.source = Some(ordinals.source);
            seen.examined = ordinals.examined;
            seen.keys = ordinals.added.len() + ordinals.removed.len() + ordinals.changed.len();
            for r in changes.removed() {
                let (id, v) = value(r);
                assert_eq!(
                    cache.remove(&id),
                    Some(v),
                    "removed key {id} was cached as it was"
                );
            }
            for r in changes.added() {
                let (id, v) = value(r);
                assert!(
                    cache.insert(id, v).is_none(),
                    "added key {id} was not cached"
                );
            }
            for (old, new) in changes.changed() {
                let ((id, before), (new_id, after)) = (value(old), value(new));
                assert_eq!(id, new_id, "a change keeps its key");
                assert_ne!(before, after, "a change changes the record");
                assert_eq!(
                    cache.insert(id, after),
                    Some(before),
                    "changed key {id}'s old record"
                );
            }
        }
        self.seen.lock().unwrap().push(seen);
    }
}

/// A deterministic random sequence (xorshift), so that a failure repeats.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The number of keys added, removed or changed from `a` to `b`.
fn diff_size(a: &Model, b: &Model) -> u64 {
    let gone = a.keys().filter(|k| !b.contains_key(k)).count();
    let new_or_changed = b.iter().filter(|(k, v)| a.get(k) != Some(v)).count();
    (gone + new_or_changed) as u64
}

/// Invariant: caches kept from refresh events equal the state and the
/// model after every refresh, through deltas, jumps and snapshot loads;
/// a delta refresh examines at most two records per key it changes.
#[tokio::test]
async fn caches_kept_from_refresh_events_match_the_model() {
    for seed in [0x9e37_79b9_7f4a_7c15u64, 0x2545_f491_4f6c_dd1d] {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("listen")
        .snapshot_every(3)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let consumer = |name: &str, deep: Option<usize>| {
        let cache = Arc::new(DerivedCache::default());
        let b = ConsumerBuilder::new(store.clone())
            .cache_dir(dir.path().join(name))
            .refresh_listener(Arc::clone(&cache));
        let b = match deep {
            Some(d) => b.max_delta_depth(d),
            None => b,
        };
        (b.build().unwrap(), cache)
    };
    let (follower, follower_cache) = consumer("follower", None);
    let (jumper, jumper_cache) = consumer("jumper", None);
    // Never stacks a delta: every refresh is a snapshot load.
    let (snapshots, snapshots_cache) = consumer("snapshots", Some(0));

    let mut rng = Rng(seed);
    let mut model = Model::new();
    let mut generation = 0;
    let mut versions: BTreeMap<u64, Model> = BTreeMap::new();
    let mut checked_deltas = 0;
    for cycle in 0..14 {
        generation += 1;
        // Small key space: keys go and come back (at other ordinals).
        for _ in 0..rng.below(6) {
            let id = rng.below(24);
            model.insert(id, movie_value(id, generation));
        }
        for _ in 0..rng.below(4) {
            model.remove(&rng.below(24));
        }
        for _ in 0..rng.below(3) {
            let id = rng.below(24);
            if model.contains_key(&id) {
                model.insert(id, movie_value(id, generation + 100));
            }
        }
        let report = publish(&producer, &model).await.unwrap();
        versions.insert(report.version, model.clone());
        let refreshed = follower.refresh().await.unwrap();
        let version = follower.version().unwrap();
        let seen = follower_cache.seen.lock().unwrap().last().cloned();
        let by_deltas = refreshed.as_ref().is_some_and(|r| {
            r.from.is_some()
                && r.steps
                    .iter()
                    .all(|s| matches!(s, burrow::consumer::Step::Delta(..)))
        });
        if let (true, Some(from), Some(seen)) = (by_deltas, refreshed.and_then(|r| r.from), seen) {
            assert_eq!(seen.to, version);
            if seen.source.is_some() {
                checked_deltas += 1;
                assert_eq!(seen.source, Some(ChangeSource::Deltas), "{seen:?}");
                let size = diff_size(&versions[&from], &versions[&version]);
                assert_eq!(seen.keys as u64, size, "{seen:?}");
                assert!(seen.examined <= 2 * size, "{seen:?}, {size} keys changed");
            }
        }
        snapshots.refresh().await.unwrap();
        // The jumper moves every other cycle, sometimes back.
        if cycle % 2 == 1 {
            let known: Vec<u64> = versions.keys().copied().collect();
            let target = known[rng.below(known.len() as u64) as usize];
            jumper.refresh_to(target).await.unwrap();
        }
        for (c, cache) in [
            (&follower, &follower_cache),
            (&jumper, &jumper_cache),
            (&snapshots, &snapshots_cache),
        ] {
            let Some(state) = c.current() else { continue };
            let derived = cache.cache.lock().unwrap().clone();
            assert_eq!(
                derived,
                state_model(&state),
                "cache vs state at {}",
                state.version()
            );
            assert_eq!(derived, versions[&state.version()], "cache vs model");
        }
    }
    assert!(
        checked_deltas >= 5,
        "only {checked_deltas} delta refreshes checked"
    );
    // The snapshot-only consumer's changes were found by comparing states.
    assert!(snapshots_cache
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.source != Some(ChangeSource::Deltas)));
}

/// Invariant: a first load reports every record as added, a refresh that
/// changes nothing of a type reports nothing for it, and a listener sees
/// old and new records of a changed key.
#[tokio::test]
async fn first_load_adds_everything_and_changes_carry_both_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "listen");
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    struct Log(Arc<Mutex<Vec<String>>>);
    impl RefreshListener for Log {
        fn refreshed(&self, event: &RefreshEvent) {
            let mut out = self.0.lock().unwrap();
            let Some(c) = event.typed::<movie::Owned>().unwrap() else {
                out.push(format!("{}: nothing", event.to().version()));
                return;
            };
            let ids = |it: &mut dyn Iterator<Item = u64>| {
                it.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            };
            let added = ids(&mut c.added().map(|m| m.get_id()));
            let removed = ids(&mut c.removed().map(|m| m.get_id()));
            let changed = c
                .changed()
                .map(|(a, b)| format!("{}:{}->{}", a.get_id(), a.get_year(), b.get_year()))
                .collect::<Vec<_>>()
                .join(",");
            out.push(format!(
                "{}: +[{added}] -[{removed}] ~[{changed}]",
                event.to().version()
            ));
        }
    }
    let consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .refresh_listener(Log(Arc::clone(&events)))
        .build()
        .unwrap();
    let mut model: Model = (0..3).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    consumer.refresh().await.unwrap();
    model.get_mut(&1).unwrap().1 = 2001;
    model.remove(&2);
    model.insert(5, movie_value(5, 0));
    publish(&producer, &model).await.unwrap();
    consumer.refresh().await.unwrap();
    // Nothing to do: no refresh, no event.
    consumer.refresh().await.unwrap();
    let old_year = movie_value(1, 0).1;
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            "1: +[0,1,2] -[] ~[]".to_string(),
            format!("2: +[5] -[2] ~[1:{old_year}->2001]"),
        ]
    );
}

/// Invariant: a type without a primary key is matched by content (a
/// changed record is one removed and one added), and a type that leaves
/// the state reports every record removed, one that comes back every
/// record added.
#[tokio::test]
async fn keyless_types_and_types_that_come_and_go() {
    use burrow::schema::examples::probe_capnp::probe;
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let build = |with_probe: bool| {
        let b = ProducerBuilder::new(store.clone())
            .producer_id("listen")
            .primary_key::<movie::Owned>(&["id"]);
        let b = if with_probe {
            b.record_type::<probe::Owned>()
        } else {
            b
        };
        b.build().unwrap()
    };
    let publish_probes = |p: burrow::producer::Producer, counts: Vec<u32>| async move {
        p.run_cycle(|c| {
            c.add::<movie::Owned>(|mut m| {
                m.set_id(1);
                Ok(())
            })?;
            for n in &counts {
                c.add::<probe::Owned>(|mut r| {
                    r.set_count(*n);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
        p
    };
    /// Per refresh: Probe counts added, removed, and how many changed.
    type ProbeLog = Arc<Mutex<Vec<(Vec<u32>, Vec<u32>, usize)>>>;
    let seen: ProbeLog = Arc::default();
    struct Probes(ProbeLog);
    impl RefreshListener for Probes {
        fn refreshed(&self, event: &RefreshEvent) {
            let entry = match event.typed::<probe::Owned>().unwrap() {
                Some(c) => {
                    let mut added: Vec<u32> = c.added().map(|r| r.get_count()).collect();
                    let mut removed: Vec<u32> = c.removed().map(|r| r.get_count()).collect();
                    added.sort_unstable();
                    removed.sort_unstable();
                    (added, removed, c.changed().count())
                }
                None => (Vec::new(), Vec::new(), 0),
            };
            self.0.lock().unwrap().push(entry);
        }
    }
    let consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .refresh_listener(Probes(Arc::clone(&seen)))
        .build()
        .unwrap();
    let p = publish_probes(build(true), vec![1, 2, 3]).await;
    consumer.refresh().await.unwrap();
    publish_probes(p, vec![1, 2, 30]).await;
    consumer.refresh().await.unwrap();
    // A restart without Probe drops it; one with it brings it back.
    let p = build(false);
    p.restore().await.unwrap();
    let p = publish_probes(p, vec![]).await;
    drop(p);
    consumer.refresh().await.unwrap();
    let p = build(true);
    p.restore().await.unwrap();
    publish_probes(p, vec![7]).await;
    consumer.refresh().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (vec![1, 2, 3], vec![], 0),
            (vec![30], vec![3], 0),
            (vec![], vec![1, 2, 30], 0),
            (vec![7], vec![], 0),
        ]
    );
}
