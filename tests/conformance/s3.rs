//! Tests that only mean something on a real S3 server: the start-up check
//! against a server that checks credentials, and a long announcement race.

use super::announce_cases::race_rounds;
use super::support::s3::{auth_server, create_bucket, options, plain_endpoint, BUCKET};
use super::support::Backend;
use burrow::blobstore::{BlobStore, StoreError};
use burrow::Error;

async fn check(endpoint: &str, bucket: &str, key: &str, secret: &str) -> Result<BlobStore, Error> {
    BlobStore::connect(
        &format!("s3://{bucket}/startup-check"),
        &options(endpoint, key, secret),
    )
    .await
}

/// Start-up says which is wrong: rejected credentials, or a missing bucket.
#[tokio::test]
async fn startup_check_tells_bad_credentials_from_missing_bucket() {
    let server = auth_server();

    check(&server.endpoint, "burrow-auth", &server.key, &server.secret)
        .await
        .expect("good credentials and an existing bucket pass");

    let err = check(&server.endpoint, "burrow-auth", &server.key, "wrong-secret")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::CredentialsRejected { .. })),
        "wrong secret: {err:?}"
    );
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );

    let err = check(&server.endpoint, "burrow-auth", "AKIANOSUCHKEY0000000", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::CredentialsRejected { .. })),
        "unknown key: {err:?}"
    );

    let err = check(
        &server.endpoint,
        "burrow-no-such-bucket",
        &server.key,
        &server.secret,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::BucketNotFound { ref bucket, .. }) if bucket == "burrow-no-such-bucket"),
        "missing bucket: {err:?}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// The same distinction on the plain test server, which accepts any
/// credentials: a missing bucket is `BucketNotFound`.
#[tokio::test]
async fn startup_check_reports_a_missing_bucket() {
    let endpoint = plain_endpoint();
    create_bucket(&endpoint, BUCKET).await;
    check(&endpoint, BUCKET, "test", "test").await.unwrap();
    let err = check(&endpoint, "burrow-absent", "test", "test")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::BucketNotFound { .. })),
        "{err:?}"
    );
}

/// A server that does not answer is neither of the two: it is a backend
/// error, reported within the retry bounds.
#[tokio::test]
async fn startup_check_reports_an_unreachable_server() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = check(&format!("http://127.0.0.1:{port}"), BUCKET, "test", "test")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Backend { .. })),
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
}

/// Eight producers racing for 25 consecutive entries on S3: exactly one
/// winner per entry, the others get `NotPrimary`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_announcers_race_for_many_rounds() {
    let backend = Backend::s3().await;
    race_rounds(&backend, 25).await;
}

/// A TCP forwarder in front of the S3 server that can be stopped: to the
/// client, the server is gone (connections reset, then refused).
struct Proxy {
    endpoint: String,
    acceptor: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = conns.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        // Ends when either side closes; errors end it too.
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().unwrap().push(conn.abort_handle());
            }
        });
        Proxy {
            endpoint,
            acceptor: tokio::sync::Mutex::new(Some(acceptor)),
            conns,
        }
    }

    /// Stops listening and cuts every open connection; returns once the
    /// listener is closed.
    async fn stop(&self) {
        if let Some(acceptor) = self.acceptor.lock().await.take() {
            acceptor.abort();
            let _ = acceptor.await;
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Invariant: a cycle whose store goes away before its announcement
/// publishes nothing a consumer follows; the consumer keeps serving the
/// last announced version and the log ends where it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_cycle_publishes_nothing_a_consumer_follows() {
    use crate::common::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let endpoint = plain_endpoint();
    create_bucket(&endpoint, BUCKET).await;
    let prefix = super::support::random_prefix();
    let url = format!("s3://{BUCKET}/{prefix}");
    let direct = BlobStore::connect(&url, &options(&endpoint, "test", "test"))
        .await
        .unwrap();

    // The producer's store goes through the proxy; the proxy stops just
    // before the first announcement put once `armed`.
    let proxy = Arc::new(Proxy::start(&endpoint).await);
    let via_proxy = BlobStore::from_url(&url, &options(&proxy.endpoint, "test", "test")).unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let hook: super::support::BeforePut = {
        let (proxy, armed) = (proxy.clone(), armed.clone());
        Arc::new(move |path: &object_store::path::Path| {
            let trip = armed.load(Ordering::SeqCst) && path.as_ref().contains("/announce/");
            let proxy = proxy.clone();
            Box::pin(async move {
                if trip {
                    proxy.stop().await;
                }
            })
        })
    };
    let (counting, _) = super::support::CountingStore::new(via_proxy.object_store().clone());
    let producer_store = BlobStore::new(Arc::new(counting.with_before_put(hook)), &prefix);

    let dir = tempfile::tempdir().unwrap();
    let p1 = producer(&producer_store, "p1");
    let c = consumer(&direct, &dir.path().join("cache"));
    let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    publish(&p1, &model).await.unwrap();
    // Two good cycles, so that the failed one is a delta on a chain.
    model.insert(2, movie_value(2, 1));
    let v1 = publish(&p1, &model).await.unwrap().version;
    c.refresh().await.unwrap();
    assert_eq!(c.version(), Some(v1));

    armed.store(true, Ordering::SeqCst);
    let before = model.clone();
    model.insert(3, movie_value(3, 1));
    let err = publish(&p1, &model).await.expect_err("the server is gone");
    eprintln!("cycle with the server stopped: {err}");
    assert_eq!(
        p1.version().await,
        Some(v1),
        "the failed cycle left the producer at v1"
    );

    // Nothing new was announced: the consumer stays at v1.
    assert!(c.refresh().await.unwrap().is_none());
    assert_eq!(c.version(), Some(v1));
    assert_eq!(snapshot_of(&c), before);

    // The orphaned blobs of the failed cycle are in the store, never
    // announced: the log still ends at v1.
    let log = burrow::announcer::AnnouncementLog::new(direct.clone());
    assert_eq!(log.latest().await.unwrap().map(|e| e.version), Some(v1));

    // The server is back (the producer job restarts against it): a
    // restored producer's next cycle succeeds and chains on from v1, and
    // the consumer follows it by a delta.
    let p2 = producer(&direct, "p2");
    assert_eq!(p2.restore().await.unwrap(), Some(v1));
    let v2 = publish(&p2, &model).await.unwrap().version;
    assert!(v2 > v1);
    let report = c.refresh().await.unwrap().expect("moves to v2");
    assert_eq!(report.steps, vec![burrow::consumer::Step::Delta(v1, v2)]);
    assert_eq!(snapshot_of(&c), model);
}

/// Invariant: the producer/consumer cycle works the same on S3 as on a
/// local directory: publish, follow by deltas, no-change cycles publish
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_follow_on_s3() {
    use crate::common::*;

    let backend = Backend::s3().await;
    let dir = tempfile::tempdir().unwrap();
    let producer = producer(&backend.store, "p1");
    let consumer = consumer(&backend.store, &dir.path().join("cache"));
    let mut model: Model = (0..200).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap();
    assert!(v1.published);
    consumer.refresh().await.unwrap();
    assert_eq!(snapshot_of(&consumer), model);

    for round in 1..=3 {
        model.insert(round, movie_value(round, round));
        model.remove(&(100 + round));
        model.insert(1000 + round, movie_value(1000 + round, 0));
        let v = publish(&producer, &model).await.unwrap();
        let report = consumer.refresh().await.unwrap().expect("moved");
        assert_eq!(report.to, v.version);
        assert_eq!(snapshot_of(&consumer), model);
    }
    let same = publish(&producer, &model).await.unwrap();
    assert!(!same.published);

    // A second consumer, from nothing, agrees.
    let dir2 = tempfile::tempdir().unwrap();
    let fresh = crate::common::consumer(&backend.store, &dir2.path().join("cache"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), model);
}
