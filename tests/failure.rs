//! Invariant: a cycle that fails at any step publishes nothing a consumer
//! follows, leaves the producer at its last announced state, and the next
//! cycle succeeds and chains on.

use crate::common::*;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_at_each_step_of_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let FaultyLocal {
        faults: faulty,
        faulty: producer_store,
        clean: clean_store,
    } = faulty_local(dir.path());
    let producer = producer(&producer_store, "p");
    let reader = consumer(&clean_store, &dir.path().join("cache"));

    let mut model: Model = (0..40).map(|i| (i, movie_value(i, 0))).collect();
    let mut version = publish(&producer, &model).await.unwrap().version;
    reader.refresh().await.unwrap();
    let mut failures_seen = 0;
    for k in 0..64u64 {
        let before = model.clone();
        model.insert(k % 40, movie_value(k % 40, k + 1));
        model.insert(1000 + k, movie_value(1000 + k, 0));
        faulty.fail_after(k);
        let result = publish(&producer, &model).await;
        faulty.heal();
        match result {
            Err(e) => {
                failures_seen += 1;
                let text = e.to_string();
                assert!(text.contains("failed at step"), "k={k}: {text}");
                assert_eq!(
                    producer.version().await,
                    Some(version),
                    "k={k}: producer moved"
                );
                // No consumer sees a partial version.
                let _ = reader.refresh().await;
                assert_eq!(reader.version(), Some(version), "k={k}");
                assert_eq!(snapshot_of(&reader), before, "k={k}");
                let fresh = consumer(&clean_store, &dir.path().join(format!("fresh-{k}")));
                fresh.refresh().await.unwrap();
                assert_eq!(snapshot_of(&fresh), before, "k={k}: fresh consumer");
                // The retry succeeds and chains on.
                let report = publish(&producer, &model).await.unwrap();
                assert!(report.version > version);
                version = report.version;
                reader.refresh().await.unwrap();
                assert_eq!(snapshot_of(&reader), model, "k={k}: after recovery");
            }
            Ok(report) => {
                // Enough calls went through for the whole cycle.
                assert!(report.version > version);
                reader.refresh().await.unwrap();
                assert_eq!(snapshot_of(&reader), model);
                break;
            }
        }
    }
    assert!(
        failures_seen >= 5,
        "every store call of a cycle was failed once ({failures_seen})"
    );
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl burrow::producer::CycleListener for Recorder {
    fn on_event(&self, event: &burrow::producer::CycleEvent<'_>) {
        use burrow::producer::CycleEvent::*;
        let text = match event {
            Started { .. } => "started".to_string(),
            StepDone { step, .. } => format!("done {step}"),
            NoChange { .. } => "no change".to_string(),
            Announced { report } => format!("announced {}", report.version),
            Failed { step, .. } => format!("failed at {step}"),
            _ => "other".to_string(),
        };
        self.0.lock().unwrap().push(text);
    }
}

/// Invariant: listeners see every step of a cycle and exactly one outcome;
/// a validator's refusal stops the cycle before anything is published.
#[tokio::test]
async fn listeners_see_steps_and_outcomes_and_validators_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let FaultyLocal {
        faults: faulty,
        faulty: store,
        ..
    } = faulty_local(dir.path());
    let recorder = Arc::new(Recorder::default());
    let producer = burrow::producer::ProducerBuilder::new(store.clone())
        .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(&["id"])
        .listener(recorder.clone())
        .validator(burrow::producer::RecordCountChangeLimit { max_fraction: 0.5 })
        .build()
        .unwrap();
    let mut model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let events = std::mem::take(&mut *recorder.0.lock().unwrap());
    assert_eq!(
        events,
        [
            "started",
            "done mint",
            "done populate",
            "done identify",
            "done validate",
            "done publish",
            "done announce",
            &format!("announced {v1}"),
        ]
    );
    publish(&producer, &model).await.unwrap();
    assert_eq!(recorder.0.lock().unwrap().last().unwrap(), "no change");

    // Losing 8 of 10 records is refused by the validator.
    let shrunk: Model = model.iter().take(2).map(|(k, v)| (*k, v.clone())).collect();
    let err = publish(&producer, &shrunk).await.unwrap_err().to_string();
    assert!(
        err.contains("record count change limit") && err.contains("from 10 to 2"),
        "{err}"
    );
    assert_eq!(
        recorder.0.lock().unwrap().last().unwrap(),
        "failed at validate"
    );
    assert_eq!(producer.version().await, Some(v1));

    // A failed announcement is reported as such.
    model.insert(1, movie_value(1, 1));
    faulty.fail_matching(|op, path| {
        op == burrow::testing::faults::Op::Put && path.contains("announce/0")
    });
    publish(&producer, &model).await.unwrap_err();
    faulty.heal();
    assert_eq!(
        recorder.0.lock().unwrap().last().unwrap(),
        "failed at announce"
    );
}

/// A producer of the Movie workload spooling in `work`.
fn producer_in(
    store: &burrow::blobstore::BlobStore,
    work: &std::path::Path,
) -> burrow::producer::Producer {
    burrow::producer::ProducerBuilder::new(store.clone())
        .producer_id("p")
        .retention(None)
        .work_dir(work)
        .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(&["id"])
        .build()
        .unwrap()
}

/// Invariant: a blob that cannot be spooled (the work directory removed
/// after the producer was built) fails the cycle at its "write blobs"
/// step, naming the blob and the directory; nothing is put or announced,
/// the producer stays at its last announced state, and once the directory
/// is back the next cycle chains on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_dir_removed_fails_the_cycle_at_write_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let producer = producer_in(&store, &work);
    let reader = consumer(&store, &dir.path().join("cache"));
    let mut model: Model = (0..200).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let stored_before = std::fs::read_dir(dir.path().join("store/delta"))
        .map(|d| d.count())
        .unwrap_or(0);

    std::fs::remove_dir(&work).unwrap();
    model.insert(7, movie_value(7, 1));
    let err = publish(&producer, &model).await.unwrap_err().to_string();
    assert!(
        err.contains("failed at step write blobs")
            && err.contains("delta/")
            && err.contains(&work.display().to_string()),
        "{err}"
    );
    assert_eq!(producer.version().await, Some(v1));
    let stored_after = std::fs::read_dir(dir.path().join("store/delta"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored_after, stored_before, "nothing was put");
    reader.refresh().await.unwrap();
    assert_eq!(reader.version(), Some(v1));

    std::fs::create_dir(&work).unwrap();
    let v2 = publish(&producer, &model).await.unwrap().version;
    assert_eq!(v2, v1 + 1);
    reader.refresh().await.unwrap();
    assert_eq!(snapshot_of(&reader), model);
    // The spools left no file behind.
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}
