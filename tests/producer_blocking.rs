//! The producer's blocking work and the tokio runtime it runs on.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::schema::examples::movies_capnp::movie;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long a test waits for an event before it calls it a failure (a
/// bound, not a wait: the events come at once when things work).
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_cycle_runs_on_a_current_thread_runtime() {
    // Invariant: a producer works on a current-thread runtime (its blocking
    // steps run inline there; block_in_place would panic).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("store")).unwrap();
        let p = producer(&store, "p");
        let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
        assert_eq!(publish(&p, &model).await.unwrap().version, 1);
        model.insert(5, movie_value(5, 1));
        assert_eq!(publish(&p, &model).await.unwrap().version, 2);
        let restored = producer(&store, "p");
        assert_eq!(restored.restore().await.unwrap(), Some(2));
        model.remove(&6);
        assert_eq!(publish(&restored, &model).await.unwrap().version, 3);
        let reader = consumer(&store, &dir.path().join("cache"));
        reader.refresh().await.unwrap();
        assert_eq!(snapshot_of(&reader), model);
    });
}

#[test]
fn other_tasks_progress_while_populate_blocks() {
    // Invariant: a populate closure that blocks does not hold a tokio
    // worker: on a runtime with one worker thread, another task still runs
    // (here, the task that unblocks the populate; if populate held the
    // only worker, it would never run).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = Arc::new(producer(&store, "p"));
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let report = rt.block_on(async {
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let cycle_model = model.clone();
        let cycle_producer = Arc::clone(&p);
        // The cycle runs on the worker (a spawned task), not on this
        // thread (block_on's).
        let cycle = tokio::spawn(async move {
            cycle_producer
                .run_cycle(move |pop| {
                    started_tx.send(()).unwrap();
                    go_rx
                        .recv_timeout(BOUND)
                        .map_err(|e| burrow::Error::Config {
                            what: "test".into(),
                            reason: format!("no other task ran while populate blocked: {e}"),
                        })?;
                    for (id, (title, year, _)) in &cycle_model {
                        pop.add::<movie::Owned>(|mut m| {
                            m.set_id(*id);
                            m.set_title(title.as_str());
                            m.set_year(*year);
                            m.init_tags(0);
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
                .await
        });
        // Populate is now blocking on the worker; only then is the other
        // task spawned.
        started_rx
            .recv_timeout(BOUND)
            .expect("populate started on the worker");
        tokio::spawn(async move { go_tx.send(()).unwrap() });
        cycle.await.unwrap()
    });
    let report = report.expect("the cycle ran to the end");
    assert_eq!(report.version, 1);
    assert_eq!(report.changes[0].added, 20);
}
