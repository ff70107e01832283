//! Tests that only mean something on a real S3 server: the start-up check
//! against a server that checks credentials, and a long announcement race.

use super::announce_cases::race_rounds;
use super::support::s3::{create_bucket, endpoint, options, BUCKET};
use super::support::Backend;
use burrow::blobstore::{BlobStore, StoreError};
use burrow::Error;

/// A server that checks credentials: `.ci/s3.sh` starts a second moto with
/// IAM authentication on, a bucket `burrow-auth` and one user's keys.
struct AuthServer {
    endpoint: String,
    key: String,
    secret: String,
}

fn auth_server() -> Option<AuthServer> {
    let endpoint = endpoint("BURROW_TEST_S3_AUTH_ENDPOINT")?;
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set with the auth endpoint"))
    };
    Some(AuthServer {
        endpoint,
        key: var("BURROW_TEST_S3_AUTH_KEY_ID"),
        secret: var("BURROW_TEST_S3_AUTH_SECRET"),
    })
}

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
    let Some(server) = auth_server() else { return };

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
    let Some(endpoint) = endpoint(super::support::s3::ENDPOINT_VAR) else {
        return;
    };
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
    if endpoint(super::support::s3::ENDPOINT_VAR).is_none() {
        return;
    }
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
    let Some(backend) = Backend::s3().await else {
        return;
    };
    race_rounds(&backend, 25).await;
}
