//! RetryStore: transient failures are retried within the policy's bounds,
//! hung calls time out, final answers are returned at once.

use super::{backoffs, kind, lenient_breaker, rig};
use burrow::blobstore::resilience::{ResilienceError, RetryPolicy};
use burrow::blobstore::{BlobName, BlobStore, StoreError};
use burrow::testing::faults::Op;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::time::Duration;

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

#[tokio::test]
async fn resilience_retries_k_failures_to_success_with_bounded_jittered_backoff() {
    let policy = RetryPolicy::default();
    let r = rig(policy.clone(), lenient_breaker());
    r.faulty.fail_next(3);
    let store = &r.stack.store;
    r.clock
        .drive(store.put(&Path::from("a"), PutPayload::from_static(b"x")))
        .await
        .expect("the fourth attempt succeeds");
    assert_eq!(r.faulty.calls(Op::Put), 4);

    let sleeps = backoffs(&r.clock, &policy);
    assert_eq!(sleeps.len(), 3, "one backoff per retry: {sleeps:?}");
    for (n, sleep) in sleeps.iter().enumerate() {
        assert!(*sleep <= policy.backoff_ceiling(n as u32 + 1), "{sleeps:?}");
    }
    assert_eq!(r.clock.elapsed(), sleeps.iter().sum::<Duration>());
    assert_eq!(r.clock.pending_sleeps(), 0, "no timer left behind");
}

#[tokio::test]
async fn resilience_gives_up_after_max_attempts_with_a_clear_error() {
    let policy = RetryPolicy::default();
    let r = rig(policy.clone(), lenient_breaker());
    r.faulty.fail_next(100);
    let err = r
        .clock
        .drive(r.stack.store.get(&Path::from("a")))
        .await
        .unwrap_err();
    match kind(&err) {
        ResilienceError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, policy.max_attempts);
            assert!(last.to_string().contains("injected fault"), "{last}");
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert!(err.to_string().contains("after 5 attempt(s)"), "{err}");
    assert_eq!(r.faulty.calls(Op::Get), u64::from(policy.max_attempts));
    assert_eq!(backoffs(&r.clock, &policy).len(), 4);

    // Through the BlobStore it is a retryable backend error.
    r.faulty.fail_next(100);
    let blobs = BlobStore::new(r.stack.store.clone(), "");
    let err = r
        .clock
        .drive(blobs.get(&BlobName::Latest))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(err.is_retryable() && !err.is_circuit_open(), "{err}");
}

#[tokio::test]
async fn resilience_total_time_bound_stops_retries_early() {
    let policy = RetryPolicy {
        max_attempts: 1000,
        base_delay: Duration::from_millis(400),
        max_delay: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(3),
        call_timeout: Duration::from_secs(1),
    };
    let r = rig(policy.clone(), lenient_breaker());
    r.faulty.set_down(true);
    let err = r
        .clock
        .drive(r.stack.store.head(&Path::from("a")))
        .await
        .unwrap_err();
    let ResilienceError::RetriesExhausted {
        attempts, elapsed, ..
    } = kind(&err)
    else {
        panic!("expected RetriesExhausted: {err}");
    };
    assert!(*attempts < 1000 && *attempts >= 2, "{err}");
    assert!(*elapsed < policy.max_elapsed, "{err}");
    assert!(r.clock.elapsed() < policy.max_elapsed);
}

#[tokio::test]
async fn resilience_hung_calls_time_out_and_nothing_waits_forever() {
    let policy = RetryPolicy {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(60),
        ..RetryPolicy::default()
    };
    let r = rig(policy.clone(), lenient_breaker());
    r.faulty.hang_all();
    let err = r
        .clock
        .drive(r.stack.store.get(&Path::from("a")))
        .await
        .unwrap_err();
    let ResilienceError::RetriesExhausted { attempts, last, .. } = kind(&err) else {
        panic!("expected RetriesExhausted: {err}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(kind(last), ResilienceError::Timeout { after, .. } if *after == policy.call_timeout),
        "{last}"
    );
    assert_eq!(r.faulty.calls(Op::Get), 3);
    assert_eq!(r.faulty.hanging(), 0, "abandoned calls are dropped");
    let waited = r.clock.elapsed();
    assert!(waited >= policy.call_timeout * 3, "{waited:?}");
    assert!(
        waited < policy.call_timeout * 3 + Duration::from_secs(1),
        "{waited:?}"
    );

    // The timeout is cut to what is left of the total budget.
    let tight = RetryPolicy {
        max_attempts: 10,
        max_elapsed: Duration::from_secs(15),
        ..RetryPolicy::default()
    };
    let r = rig(tight.clone(), lenient_breaker());
    r.faulty.hang_all();
    let start = r.clock.elapsed();
    r.clock
        .drive(r.stack.store.get(&Path::from("a")))
        .await
        .unwrap_err();
    assert!(r.clock.elapsed() - start <= tight.max_elapsed);
}

#[tokio::test]
async fn resilience_final_answers_are_returned_at_once() {
    let policy = RetryPolicy::default();
    let r = rig(policy.clone(), lenient_breaker());
    let store = &r.stack.store;
    let missing = r.clock.drive(store.get(&Path::from("missing"))).await;
    assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));
    assert_eq!(r.faulty.calls(Op::Get), 1);

    let path = Path::from("blob");
    store
        .put_opts(&path, PutPayload::from_static(b"one"), create())
        .await
        .unwrap();
    let again = store
        .put_opts(&path, PutPayload::from_static(b"two"), create())
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(r.faulty.calls(Op::Put), 2);

    r.faulty
        .set_error(|_, path| object_store::Error::PermissionDenied {
            path: path.to_string(),
            source: "injected".into(),
        });
    r.faulty.fail_next(1);
    let denied = store.get(&path).await;
    assert!(matches!(
        denied,
        Err(object_store::Error::PermissionDenied { .. })
    ));
    assert_eq!(r.faulty.calls(Op::Get), 2);
    assert!(
        backoffs(&r.clock, &policy).is_empty(),
        "nothing was retried"
    );
}

/// Regression: a create-only put whose write landed but whose answer was
/// lost must not report `AlreadyExists` for its own write.
#[tokio::test]
async fn resilience_create_after_a_lost_answer_recognises_its_own_write() {
    let r = rig(RetryPolicy::default(), lenient_breaker());
    let store = &r.stack.store;
    let path = Path::from("announce/1");
    r.faulty.lose_next_responses(1);
    r.clock
        .drive(store.put_opts(&path, PutPayload::from_static(b"mine"), create()))
        .await
        .expect("the first attempt's write is recognised");
    let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(stored, Bytes::from_static(b"mine"));

    // Someone else's bytes under the name: AlreadyExists stands.
    let other = Path::from("announce/2");
    store
        .put_opts(&other, PutPayload::from_static(b"theirs"), create())
        .await
        .unwrap();
    r.faulty.fail_next(1);
    let lost = r
        .clock
        .drive(store.put_opts(&other, PutPayload::from_static(b"mine"), create()))
        .await;
    assert!(
        matches!(lost, Err(object_store::Error::AlreadyExists { .. })),
        "{lost:?}"
    );
}

#[tokio::test]
async fn resilience_list_is_retried_only_before_its_first_item() {
    let r = rig(RetryPolicy::default(), lenient_breaker());
    let store = &r.stack.store;
    for name in ["d/1", "d/2", "d/3"] {
        store
            .put(&Path::from(name), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    r.faulty.fail_next(2);
    let listed: Vec<_> = r
        .clock
        .drive(store.list(Some(&Path::from("d"))).try_collect::<Vec<_>>())
        .await
        .expect("the third listing succeeds");
    assert_eq!(listed.len(), 3);
    assert_eq!(r.faulty.calls(Op::List), 3);
}

#[tokio::test]
async fn resilience_multipart_uploads_go_through_every_layer() {
    let policy = RetryPolicy::default();
    let r = rig(policy.clone(), lenient_breaker());
    let store = &r.stack.store;
    let path = Path::from("snapshot/1");
    let mut upload = store.put_multipart(&path).await.unwrap();
    upload
        .put_part(PutPayload::from_static(b"hello "))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from_static(b"world"))
        .await
        .unwrap();
    upload.complete().await.unwrap();
    let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(stored, Bytes::from_static(b"hello world"));
    assert_eq!(r.faulty.calls(Op::PutPart), 2);
    assert_eq!(r.faulty.calls(Op::CompleteMultipart), 1);

    // A part that hangs times out; parts are not retried.
    let mut upload = store
        .put_multipart(&Path::from("snapshot/2"))
        .await
        .unwrap();
    r.faulty.hang_matching(|op, _| op == Op::PutPart);
    let err = r
        .clock
        .drive(upload.put_part(PutPayload::from_static(b"x")))
        .await
        .unwrap_err();
    assert!(
        matches!(kind(&err), ResilienceError::Timeout { after, .. } if *after == policy.call_timeout),
        "{err}"
    );
    assert_eq!(r.faulty.calls(Op::PutPart), 3);
    assert_eq!(r.faulty.hanging(), 0);
}
