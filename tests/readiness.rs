//! Readiness: until its first state a consumer says what it waits for
//! (`readiness`, and the error of a timed-out `ready`); once it has one it
//! stays ready; `burrow follow` reports both; the README's health endpoint
//! is the doctest that runs.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::{ConsumerBuilder, ConsumerError, Readiness, Waiting};
use burrow::error::Error;
use burrow::testing::faults::{FaultyStore, Op};
use std::sync::Arc;
use std::time::Duration;

/// The reason of a `ready` that timed out.
fn not_ready(outcome: Result<Arc<burrow::consumer::ReadState>, Error>) -> (Waiting, String) {
    match outcome {
        Err(e @ Error::Consumer(ConsumerError::NotReady { .. })) => {
            let text = e.to_string();
            let Error::Consumer(ConsumerError::NotReady { waiting, .. }) = e else {
                unreachable!()
            };
            (waiting, text)
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_what_the_consumer_waits_for() {
    // Invariant: before the first state, readiness and a timed-out ready()
    // name the reason (not started, nothing announced, store unreachable
    // with its error, a fetch in progress); the first swap wakes ready();
    // a failure after it leaves the consumer ready.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let local = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("store")).unwrap(),
    );
    let faulty = Arc::new(FaultyStore::new(local.clone()));
    let consumer = Arc::new(
        ConsumerBuilder::new(BlobStore::new(faulty.clone(), ""))
            .cache_dir(dir.path().join("cache"))
            .build()
            .unwrap(),
    );
    let short = Duration::from_millis(5);

    assert_eq!(
        consumer.readiness(),
        Readiness::Waiting(Waiting::NotStarted)
    );
    let (waiting, text) = not_ready(consumer.ready(short).await);
    assert_eq!(waiting, Waiting::NotStarted);
    assert!(text.contains("no refresh has run"), "{text}");

    assert!(consumer.refresh().await.is_err());
    assert_eq!(
        consumer.readiness(),
        Readiness::Waiting(Waiting::NoAnnouncement)
    );
    let (_, text) = not_ready(consumer.ready(short).await);
    assert!(text.contains("no version has been announced"), "{text}");

    faulty.set_down(true);
    assert!(consumer.refresh().await.is_err());
    let (waiting, text) = not_ready(consumer.ready(short).await);
    match &waiting {
        Waiting::StoreUnreachable {
            last_error,
            consecutive_failures,
        } => {
            assert!(last_error.contains("injected fault"), "{last_error}");
            // The refresh that found nothing announced failed too.
            assert_eq!(*consecutive_failures, 2);
        }
        other => panic!("expected StoreUnreachable, got {other:?}"),
    }
    assert!(
        text.contains("could not be read") && text.contains("injected fault"),
        "{text}"
    );
    faulty.set_down(false);

    // A fetch in progress: the snapshot's GET hangs until released.
    let producer = producer(&BlobStore::new(local, ""), "p");
    let model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    faulty.hang_matching(|op, path| op == Op::Get && path.contains("snapshot"));
    let refreshing = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move { consumer.refresh().await }
    });
    while faulty.hanging() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        consumer.readiness(),
        Readiness::Waiting(Waiting::Fetching { version: v1 })
    );
    let (_, text) = not_ready(consumer.ready(short).await);
    assert!(
        text.contains(&format!("version {v1}")) && text.contains("fetch in progress"),
        "{text}"
    );
    let waiter = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move { consumer.ready(Duration::from_secs(60)).await }
    });
    faulty.release();
    refreshing.await.unwrap().unwrap();
    let state = waiter.await.unwrap().unwrap();
    assert_eq!(state.version(), v1);
    assert_eq!(consumer.readiness(), Readiness::Ready { version: v1 });

    // Ready stays ready: a failed refresh keeps the state serving.
    faulty.set_down(true);
    assert!(consumer.refresh().await.is_err());
    assert_eq!(consumer.readiness(), Readiness::Ready { version: v1 });
    assert_eq!(consumer.ready(short).await.unwrap().version(), v1);
}

/// The README's health endpoint is the doctest of `Consumer::readiness`
/// (what runs), line for line.
#[test]
fn readme_health_endpoint_is_the_doctest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("consumer/ready.rs")).unwrap();
    let block: Vec<&str> = readme
        .split("```rust\n")
        .find(|b| b.contains("fn ready_endpoint"))
        .and_then(|b| b.split("```").next())
        .expect("README has the health endpoint")
        .lines()
        .collect();
    let doctest: Vec<&str> = source
        .lines()
        .map(str::trim_start)
        .filter_map(|l| {
            l.strip_prefix("///")
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
        })
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .collect();
    assert_eq!(block, doctest);
}

/// `burrow follow` says what it waits for until the first state, then that
/// it is ready.
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reports_readiness() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--store")
        .arg(&store_dir)
        .args([
            "--json",
            "follow",
            "--interval-ms",
            "50",
            "--ready-timeout-ms",
            "100",
            "--cache",
        ])
        .arg(dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _child = Kill(child);
    let mut events = lines.map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap());
    // Failed polls print their own lines; a `waiting` line follows each
    // ready timeout (on a loaded machine the first may find a poll under
    // way, or one that ran out).
    let first = events
        .find(|v| v["event"] == "waiting" && v["waiting_for"] == "no_announcement")
        .expect("follow printed what it waits for");
    assert_eq!(first["event"], "waiting", "{first}");
    assert_eq!(first["waiting_for"], "no_announcement", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("no version has been announced"),
        "{first}"
    );
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer(&store, "p"), &model)
        .await
        .unwrap()
        .version;
    let ready = events
        .find(|v| v["event"] == "ready")
        .expect("follow printed more");
    assert_eq!(ready["version"], v1, "{ready}");
}

/// A bad `--ready-timeout-ms` is refused by name before anything runs.
#[cfg(feature = "cli")]
#[test]
fn follow_bad_ready_timeout_is_named() {
    use crate::common::cli::{assert_fails, burrow};
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "3600001"] {
        let out = burrow(
            &dir.path().join("store"),
            &["follow", "--ready-timeout-ms", value],
        );
        assert_fails(&out, &format!("invalid --ready-timeout-ms {value}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_refresh_is_not_a_fetch_in_progress() {
    // Regression: a refresh future dropped half-way (a caller's timeout)
    // must not leave readiness saying a fetch is in progress forever.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let local = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("store")).unwrap(),
    );
    let faulty = Arc::new(FaultyStore::new(local.clone()));
    let producer = producer(&BlobStore::new(local, ""), "p");
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;
    let consumer = ConsumerBuilder::new(BlobStore::new(faulty.clone(), ""))
        .cache_dir(dir.path().join("cache"))
        .build()
        .unwrap();
    faulty.hang_matching(|op, path| op == Op::Get && path.contains("snapshot"));
    {
        let refresh = consumer.refresh();
        tokio::pin!(refresh);
        while faulty.hanging() == 0 {
            tokio::select! {
                outcome = &mut refresh => panic!("the refresh ended: {outcome:?}"),
                _ = tokio::task::yield_now() => {}
            }
        }
        assert_eq!(
            consumer.readiness(),
            Readiness::Waiting(Waiting::Fetching { version: v1 })
        );
    }
    assert_eq!(
        consumer.readiness(),
        Readiness::Waiting(Waiting::NotStarted)
    );
    faulty.heal();
    consumer.refresh().await.unwrap();
    assert_eq!(consumer.readiness(), Readiness::Ready { version: v1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_blocking_waits_on_a_thread() {
    // Invariant: the blocking form times out with the same reason as the
    // async one, and a thread blocked in it wakes at the first swap.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let consumer = Arc::new(consumer(&store, &dir.path().join("cache")));
    let outcome = consumer.ready_blocking(Duration::from_millis(5));
    assert_eq!(not_ready(outcome).0, Waiting::NotStarted);
    let waiter = std::thread::spawn({
        let consumer = Arc::clone(&consumer);
        move || consumer.ready_blocking(Duration::from_secs(60))
    });
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer(&store, "p"), &model)
        .await
        .unwrap()
        .version;
    consumer.refresh().await.unwrap();
    assert_eq!(waiter.join().unwrap().unwrap().version(), v1);
    assert_eq!(
        consumer.ready_blocking(Duration::ZERO).unwrap().version(),
        v1
    );
}
