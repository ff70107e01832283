//! Least privilege: each role of `blobstore/iam/` (consumer, producer, gc),
//! with exactly its policy on the auth server (moto checks the policies),
//! does its job, and an action outside its role fails with
//! [`StoreError::PermissionDenied`] naming the operation and the object.

use super::moto::{auth_server, ROLES_BUCKET, ROLES_PREFIX};
use super::support::{random_prefix, s3::options};
use crate::common::*;
use burrow::blobstore::{BlobStore, StoreError};
use burrow::gc::{collect_garbage, sweep_leftovers, GcError, RetentionPolicy};
use burrow::producer::ProducerError;
use burrow::Error;
use object_store::{path::Path, ObjectStoreExt, PutPayload};
use std::time::Duration;

/// The dataset `dataset` under the roles' prefix, as `role` sees it.
async fn store_as(role: &str, dataset: &str) -> BlobStore {
    let server = auth_server();
    let (key, secret) = server.role(role);
    let url = format!("s3://{ROLES_BUCKET}/{ROLES_PREFIX}{dataset}");
    BlobStore::connect(&url, &options(&server.endpoint, key, secret))
        .await
        .unwrap_or_else(|e| panic!("{role} connects to {url}: {e}"))
}

/// The permission error of `err`, or of the cycle step it failed at.
fn denied(err: &Error) -> Option<(&'static str, &str)> {
    match err {
        Error::Store(StoreError::PermissionDenied { op, name, .. }) => Some((op, name)),
        Error::Producer(ProducerError::Cycle { source, .. }) => denied(source),
        _ => None,
    }
}

/// Plants a temporary upload (a leftover) in `store` behind burrow's back.
async fn plant_upload(store: &BlobStore, name: &str) {
    let path = Path::from(format!("{}/upload/{name}", store.prefix()));
    store
        .object_store()
        .put(&path, PutPayload::from_static(b"leftover"))
        .await
        .unwrap_or_else(|e| panic!("plant {path}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_and_nothing_else() {
    let dataset = random_prefix();
    let producer_store = store_as("producer", &dataset).await;
    let consumer_store = store_as("consumer", &dataset).await;
    let gc_store = store_as("gc", &dataset).await;
    let cache = tempfile::tempdir().unwrap();

    // The producer reads and creates: two cycles, a snapshot then a delta.
    let publisher = producer(&producer_store, "p1");
    let mut model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&publisher, &model)
        .await
        .expect("the producer role publishes");
    model.insert(3, movie_value(3, 1));
    let v2 = publish(&publisher, &model)
        .await
        .expect("the producer role publishes a delta");
    assert!(v1.published && v2.published && v2.version > v1.version);

    // The consumer reads: it opens at v1's chain end and follows.
    let consumer = consumer(&consumer_store, &cache.path().join("consumer"));
    let report = consumer
        .refresh()
        .await
        .expect("the consumer role refreshes");
    assert_eq!(report.expect("moved").to, v2.version);
    assert_eq!(snapshot_of(&consumer), model);

    // A consumer may not publish: its producer's cycle fails by name.
    let mut changed = model.clone();
    changed.insert(1000, movie_value(1000, 0));
    let intruder = producer(&consumer_store, "c1");
    intruder
        .restore()
        .await
        .expect("a consumer's keys read the chain");
    let err = publish(&intruder, &changed)
        .await
        .expect_err("a consumer's keys may not create blobs");
    let (op, name) = denied(&err).unwrap_or_else(|| panic!("not a permission error: {err:?}"));
    assert_eq!(op, "create", "{err}");
    assert!(
        name.starts_with("snapshot/") || name.starts_with("delta/"),
        "{err}"
    );
    assert!(err.to_string().contains("may not do it"), "{err}");

    // A consumer may not delete: a sweep finds the leftover and is refused.
    plant_upload(&producer_store, "consumer-leftover").await;
    let err = sweep_leftovers(&consumer_store, Duration::ZERO)
        .await
        .expect_err("a consumer's keys may not delete");
    assert!(
        matches!(err, StoreError::PermissionDenied { op: "delete", ref name, .. } if name == "upload/consumer-leftover"),
        "{err:?}"
    );

    // The producer may not delete either: not even a leftover upload (its
    // restore's sweep of them is housekeeping that gc does instead), and
    // not a blob.
    let err = sweep_leftovers(&producer_store, Duration::ZERO)
        .await
        .expect_err("a producer's keys may not delete");
    assert!(
        matches!(err, StoreError::PermissionDenied { op: "delete", .. }),
        "{err:?}"
    );
    let restarted = producer(&producer_store, "p2");
    restarted
        .restore()
        .await
        .expect("a refused sweep does not fail a restore");
    let snapshot = Path::from(format!(
        "{}/{}",
        producer_store.prefix(),
        first_snapshot(&producer_store).await
    ));
    let err = producer_store
        .object_store()
        .delete(&snapshot)
        .await
        .expect_err("a producer's keys may not delete blobs");
    assert!(err.to_string().contains("AccessDenied"), "{err:?}");

    // gc lists and deletes, and may not create.
    let swept = sweep_leftovers(&gc_store, Duration::ZERO)
        .await
        .expect("the gc role lists and deletes");
    assert_eq!(swept.len(), 1, "{swept:?}");
    // Retention: the consumer and the producer may not run it; gc may.
    let policy = RetentionPolicy {
        keep: 1,
        grace: Duration::ZERO,
        snapshot_spacing: None,
    };
    let now = std::time::SystemTime::now();
    for store in [&consumer_store, &producer_store] {
        let err = collect_garbage(store, &policy, now, false)
            .await
            .expect_err("only gc's keys may delete retired blobs");
        assert!(
            matches!(
                err,
                GcError::Store(StoreError::PermissionDenied { op: "delete", .. })
            ),
            "{err:?}"
        );
    }
    let report = collect_garbage(&gc_store, &policy, now, false)
        .await
        .expect("the gc role applies retention");
    assert!(!report.deleted.is_empty(), "{report:?}");
    let follower = crate::common::consumer(&consumer_store, &cache.path().join("after-gc"));
    follower
        .refresh()
        .await
        .expect("the retained version still opens");
    assert_eq!(snapshot_of(&follower), model);

    let intruder = producer(&gc_store, "g1");
    intruder.restore().await.expect("gc's keys read the chain");
    let err = publish(&intruder, &changed)
        .await
        .expect_err("gc's keys may not create blobs");
    assert!(matches!(denied(&err), Some(("create", _))), "{err:?}");
}

/// The name of a snapshot `store` holds, relative to its prefix.
async fn first_snapshot(store: &BlobStore) -> String {
    store
        .list("snapshot")
        .await
        .expect("list snapshots")
        .first()
        .map(|meta| meta.name.to_string())
        .expect("a snapshot was written")
}
