//! Readers through refreshes (issue 17): reader threads (twice the cores)
//! look keys up and scan short runs while a consumer follows a producer
//! that publishes a cycle every 100 ms, with snapshot loads, a pin back and
//! an unpin on the way.
//!
//! Invariant: every read is answered from one whole state. The workload
//! makes that checkable: a record's title names its generation, which
//! never exceeds the version of the state it was read from, and equals the
//! generation the model of that version holds; sampled states equal their
//! model record for record. No read errs, no read is torn.

use burrow::announcer::AnnouncementLog;
use burrow::blobstore::BlobStore;
use burrow::consumer::{ConsumerBuilder, ReadState, RefreshReport, Step, WatchConfig, WatchEvent};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::{generation_of, Dataset, Movie, Rng};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RECORDS: u64 = 2_000;
const CYCLES: u64 = 30;
const PIN_AT: u64 = 12;
const PIN_TO: u64 = 8;
const UNPIN_AT: u64 = 18;

/// The model of each version: id → generation.
type Models = Arc<Mutex<HashMap<u64, Arc<BTreeMap<u64, u64>>>>>;

/// What the readers found.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    errors: AtomicU64,
    torn: AtomicU64,
    sampled: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Tally {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.first_problem.lock().unwrap().get_or_insert(what);
    }
}

/// Checks one record read from `state` against the model of its version:
/// present there, its generation the model's and at most the version, the
/// rest of it the workload's record at that generation.
fn check_record(
    state: &ReadState,
    model: &BTreeMap<u64, u64>,
    record: movie::Reader<'_>,
    tally: &Tally,
) {
    let version = state.version();
    let m = match Movie::decode(record) {
        Ok(m) => m,
        Err(e) => return tally.problem(&tally.errors, format!("v{version}: decode: {e}")),
    };
    let generation = generation_of(m.id, &m.title);
    let ok = generation
        .is_some_and(|g| g <= version && model.get(&m.id) == Some(&g) && m == Movie::new(m.id, g));
    if !ok {
        tally.problem(
            &tally.torn,
            format!(
                "v{version}: read {m:?}, the model holds {:?}",
                model.get(&m.id)
            ),
        );
    }
}

/// One reader: random key lookups and short scans of whatever state is
/// current, some states held across several rounds (and so across swaps);
/// reader 0 also compares each new state it sees with its model whole.
fn reader(
    id: usize,
    consumer: &burrow::consumer::Consumer,
    models: &Models,
    stop: &AtomicBool,
    tally: &Tally,
    max_id: u64,
) -> Vec<u64> {
    let mut rng = Rng::new(0x10ad ^ id as u64);
    let mut held: Option<Arc<ReadState>> = None;
    let mut seen = Vec::new();
    let mut compared = None;
    while !stop.load(Ordering::Relaxed) {
        // Hold the state for a few rounds now and then.
        let state = match held.take() {
            Some(s) if rng.below(4) != 0 => s,
            _ => match consumer.current() {
                Some(s) => s,
                None => {
                    std::thread::yield_now();
                    continue;
                }
            },
        };
        let version = state.version();
        if seen.last() != Some(&version) {
            seen.push(version);
        }
        let Some(model) = models.lock().unwrap().get(&version).cloned() else {
            tally.problem(&tally.errors, format!("v{version}: no model for it"));
            continue;
        };
        let view = match state.view::<movie::Owned>() {
            Ok(v) => v,
            Err(e) => {
                tally.problem(&tally.errors, format!("v{version}: view: {e}"));
                continue;
            }
        };
        if id == 0 && seen.len() % 3 == 1 && compared != Some(version) {
            compared = Some(version);
            let mut whole = BTreeMap::new();
            for (_, record) in view.iter() {
                check_record(&state, &model, record, tally);
                if let Some(g) = record.get_title().ok().and_then(|t| t.to_str().ok()) {
                    whole.insert(
                        record.get_id(),
                        generation_of(record.get_id(), g).unwrap_or(0),
                    );
                }
            }
            if whole != *model {
                tally.problem(
                    &tally.torn,
                    format!("v{version}: the state differs from its model"),
                );
            }
            tally.sampled.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..64 {
            let key = rng.below(max_id);
            match view.find(&key) {
                Ok(Some((_, record))) => check_record(&state, &model, record, tally),
                Ok(None) if model.contains_key(&key) => tally.problem(
                    &tally.torn,
                    format!("v{version}: id {key} not found, the model holds it"),
                ),
                Ok(None) => {}
                Err(e) => tally.problem(&tally.errors, format!("v{version}: find {key}: {e}")),
            }
        }
        let start = rng.below(u64::from(view.ordinal_limit()).max(1)) as u32;
        let mut found = 0;
        for ordinal in start..start.saturating_add(32) {
            if let Some(record) = view.get(ordinal) {
                check_record(&state, &model, record, tally);
                found += 1;
            }
        }
        tally.reads.fetch_add(64 + found, Ordering::Relaxed);
        drop(view);
        held = Some(state);
    }
    seen
}

/// The watcher's next refresh report, on the way to `goal`.
async fn next_report(
    events: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
    goal: u64,
) -> RefreshReport {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Ok(WatchEvent::Refreshed(r))) => return r,
            // A poll is bounded by one interval; on two shared cores with
            // every reader busy one may run out (and is retried).
            Ok(Ok(WatchEvent::Failed { error, .. })) => assert!(
                error.contains("did not answer within"),
                "a refresh failed: {error}"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watch events: {e}"),
            Err(_) => panic!("the consumer never reached version {goal}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_through_refreshes_never_see_a_torn_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("p")
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    // Snapshot loads: no more than two deltas on a snapshot.
    let consumer = Arc::new(
        ConsumerBuilder::new(store.clone())
            .cache_dir(dir.path().join("cache"))
            .max_delta_depth(2)
            .build()
            .unwrap(),
    );
    let models: Models = Arc::default();
    let mut data = Dataset::new(RECORDS, 17);
    // Cycle 1 first, so that readers start on a state.
    models
        .lock()
        .unwrap()
        .insert(1, Arc::new(data.records().clone()));
    assert_eq!(
        producer
            .run_cycle(|p| data.populate(p))
            .await
            .unwrap()
            .version,
        1
    );

    let mut watcher = consumer.watch(WatchConfig {
        interval: Duration::from_millis(50),
        jitter: 0.0,
        // A poll that ran out (two shared cores, every reader busy) is
        // retried soon, not after the default minute.
        max_backoff: Duration::from_millis(200),
        ..WatchConfig::default()
    });
    let mut events = watcher.subscribe();
    consumer.ready(Duration::from_secs(60)).await.unwrap();

    let threads = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // Ids reach past the highest one ever added (0.1% churn a cycle).
    let max_id = RECORDS + CYCLES * (RECORDS / 1000 + 1) + 10;
    let readers: Vec<_> = (0..threads)
        .map(|id| {
            let (consumer, models, stop, tally) = (
                Arc::clone(&consumer),
                Arc::clone(&models),
                Arc::clone(&stop),
                Arc::clone(&tally),
            );
            std::thread::spawn(move || reader(id, &consumer, &models, &stop, &tally, max_id))
        })
        .collect();

    // A cycle every 100 ms; a pin back to PIN_TO at PIN_AT, lifted at UNPIN_AT.
    let log = AnnouncementLog::new(store.clone());
    let mut reports = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for cycle in 2..=CYCLES {
        tick.tick().await;
        data.advance(cycle, 0.01, 0.001);
        models
            .lock()
            .unwrap()
            .insert(cycle, Arc::new(data.records().clone()));
        let report = producer.run_cycle(|p| data.populate(p)).await.unwrap();
        assert_eq!(report.version, cycle, "one version a cycle");
        if cycle == PIN_AT {
            log.pin(PIN_TO, "operator").await.unwrap();
            // The consumer goes back (reverse deltas) before the cycles go on.
            let back = |r: &RefreshReport| r.to == PIN_TO && r.from > Some(PIN_TO);
            while !reports.iter().any(back) {
                reports.push(next_report(&mut events, PIN_TO).await);
            }
        }
        if cycle == UNPIN_AT {
            log.unpin("operator").await.unwrap();
        }
    }
    // The consumer reaches the last version, then the readers stop.
    while !reports.iter().any(|r| r.to == CYCLES) {
        reports.push(next_report(&mut events, CYCLES).await);
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Vec<u64>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    watcher.shutdown().await;

    let problem = tally.first_problem.lock().unwrap().clone();
    assert_eq!(
        tally.errors.load(Ordering::Relaxed),
        0,
        "read errors: {problem:?}"
    );
    assert_eq!(
        tally.torn.load(Ordering::Relaxed),
        0,
        "torn reads: {problem:?}"
    );
    assert!(
        tally.reads.load(Ordering::Relaxed) > 10_000,
        "the readers read"
    );
    assert!(
        tally.sampled.load(Ordering::Relaxed) >= 3,
        "states were compared whole"
    );
    // The run went through what it should have: deltas, snapshot loads
    // past the first, a move back to the pinned version and on again.
    let deltas = reports
        .iter()
        .flat_map(|r| &r.steps)
        .filter(|s| matches!(s, Step::Delta(..)))
        .count();
    assert!(deltas > 0, "deltas applied");
    let reloads = reports
        .iter()
        .filter(|r| r.from.is_some())
        .flat_map(|r| &r.steps)
        .filter(|s| matches!(s, Step::Snapshot(_)))
        .count();
    assert!(reloads > 0, "snapshots loaded after the first state");
    assert!(
        reports
            .iter()
            .any(|r| r.to == PIN_TO && r.from > Some(PIN_TO)),
        "pinned back"
    );
    assert!(
        seen.iter().any(|s| s.windows(2).any(|w| w[1] < w[0])),
        "a reader saw the version go back: {seen:?}"
    );
}
