//! CircuitBreakerStore: opens on a failing store, fails fast while open,
//! lets exactly the allowed trials through after the cool-down, closes when
//! the store is back; final answers (NotFound, AlreadyExists) never open it.

use super::rig;
use burrow::blobstore::resilience::{
    resilience_error, BreakerConfig, BreakerState, CircuitBreakerStore, ResilienceError,
    RetryPolicy,
};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::testing::faults::{FaultyStore, Op};
use burrow::testing::ManualClock;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;

const COOL_DOWN: Duration = Duration::from_secs(30);

fn breaker(
    threshold: u32,
    trials: u32,
) -> (Arc<FaultyStore>, ManualClock, Arc<CircuitBreakerStore>) {
    let faulty = Arc::new(FaultyStore::memory());
    let clock = ManualClock::new();
    let config = BreakerConfig {
        failure_threshold: threshold,
        cool_down: COOL_DOWN,
        half_open_trials: trials,
    };
    let store = CircuitBreakerStore::new(
        Arc::clone(&faulty) as Arc<dyn ObjectStore>,
        config,
        Arc::new(clock.clone()),
    );
    (faulty, clock, Arc::new(store))
}

fn is_open_error(err: &object_store::Error) -> bool {
    matches!(
        resilience_error(err),
        Some(ResilienceError::CircuitOpen { .. })
    )
}

#[tokio::test]
async fn resilience_breaker_opens_fails_fast_trials_and_closes() {
    let (faulty, clock, store) = breaker(3, 2);
    let a = Path::from("a");
    store.put(&a, PutPayload::from_static(b"x")).await.unwrap();
    faulty.reset_counts();

    // Down: three failures open it.
    faulty.set_down(true);
    for n in 1..=3 {
        let err = store.get(&a).await.unwrap_err();
        assert!(!is_open_error(&err), "failure {n} reached the store: {err}");
    }
    assert_eq!(store.state(), BreakerState::Open);
    assert_eq!(store.transitions(), 1);
    assert_eq!(faulty.total_calls(), 3);

    // Open: calls fail fast and the store sees none of them.
    for _ in 0..10 {
        let err = store.get(&a).await.unwrap_err();
        assert!(is_open_error(&err), "{err}");
        assert!(err.to_string().contains("circuit breaker is open"), "{err}");
    }
    clock.advance(COOL_DOWN - Duration::from_millis(1));
    assert!(is_open_error(&store.get(&a).await.unwrap_err()));
    assert_eq!(faulty.total_calls(), 3);

    // After the cool-down: exactly two trials reach the store (held in
    // flight by a hang), the third call fails fast.
    clock.advance(Duration::from_millis(1));
    faulty.set_down(false);
    faulty.hang_all();
    let trials: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.get(&Path::from("a")).await.map(|_| ()) })
        })
        .collect();
    while faulty.hanging() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.state(), BreakerState::HalfOpen);
    assert!(is_open_error(&store.get(&a).await.unwrap_err()));
    assert_eq!(faulty.total_calls(), 5);

    // The store is back: the trials succeed and the breaker closes.
    faulty.release();
    for trial in trials {
        trial.await.unwrap().unwrap();
    }
    assert_eq!(store.state(), BreakerState::Closed);
    assert_eq!(
        store.transitions(),
        3,
        "closed -> open -> half-open -> closed"
    );
    store.get(&a).await.unwrap();
    assert_eq!(faulty.total_calls(), 6);
}

#[tokio::test]
async fn resilience_breaker_failed_trial_opens_it_again() {
    let (faulty, clock, store) = breaker(2, 1);
    let a = Path::from("a");
    faulty.set_down(true);
    for _ in 0..2 {
        store.get(&a).await.unwrap_err();
    }
    assert_eq!(store.state(), BreakerState::Open);
    clock.advance(COOL_DOWN);
    let trial = store.get(&a).await.unwrap_err();
    assert!(
        !is_open_error(&trial),
        "the trial reached the store: {trial}"
    );
    assert_eq!(store.state(), BreakerState::Open);
    assert_eq!(faulty.total_calls(), 3);
    // A fresh cool-down starts from the failed trial.
    clock.advance(COOL_DOWN / 2);
    assert!(is_open_error(&store.get(&a).await.unwrap_err()));
    assert_eq!(faulty.total_calls(), 3);
    assert_eq!(
        store.transitions(),
        3,
        "closed -> open -> half-open -> open"
    );
}

#[tokio::test]
async fn resilience_final_answers_do_not_open_the_breaker() {
    let (faulty, _clock, store) = breaker(2, 1);
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let a = Path::from("a");
    store
        .put_opts(&a, PutPayload::from_static(b"x"), create.clone())
        .await
        .unwrap();
    for _ in 0..10 {
        let missing = store.get(&Path::from("missing")).await;
        assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));
        let exists = store
            .put_opts(&a, PutPayload::from_static(b"y"), create.clone())
            .await;
        assert!(matches!(
            exists,
            Err(object_store::Error::AlreadyExists { .. })
        ));
    }
    assert_eq!(store.state(), BreakerState::Closed);
    assert_eq!(store.transitions(), 0);
    assert_eq!(store.consecutive_failures(), 0);
    assert_eq!(faulty.total_calls(), 21);
}

/// Through the whole stack: the breaker opens within one retried call, the
/// retry layer stops at the open breaker instead of spending its budget,
/// and the error tells the caller the store is known to be down.
#[tokio::test]
async fn resilience_stack_fails_fast_on_a_down_store_and_recovers() {
    let r = rig(
        RetryPolicy::default(),
        BreakerConfig {
            failure_threshold: 3,
            cool_down: COOL_DOWN,
            half_open_trials: 1,
        },
    );
    let blobs = BlobStore::new(Arc::clone(&r.stack.store), "");
    let name = BlobName::Announce(1);
    blobs
        .create(&name, vec![bytes::Bytes::from_static(b"entry")])
        .await
        .unwrap();
    r.faulty.reset_counts();
    r.faulty.set_down(true);

    let err = r.clock.drive(blobs.get(&name)).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert!(err.is_retryable(), "an open breaker may close later: {err}");
    assert_eq!(
        r.faulty.total_calls(),
        3,
        "three attempts, then the open breaker"
    );
    assert_eq!(r.stack.breaker.state(), BreakerState::Open);

    let err = r.clock.drive(blobs.get(&name)).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(
        r.faulty.total_calls(),
        3,
        "fails fast: the store sees nothing"
    );
    assert!(err.to_string().contains("circuit breaker is open"), "{err}");

    r.faulty.set_down(false);
    r.clock.advance(COOL_DOWN);
    let bytes = r.clock.drive(blobs.get(&name)).await.unwrap();
    assert_eq!(&bytes[..], b"entry");
    assert_eq!(r.stack.breaker.state(), BreakerState::Closed);
    assert_eq!(r.faulty.calls(Op::Get), 4);
}

/// Hung calls the retry layer abandons count as failures, so a hanging
/// store opens the breaker too.
#[tokio::test]
async fn resilience_stack_timeouts_open_the_breaker() {
    let r = rig(
        RetryPolicy::default(),
        BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        },
    );
    r.faulty.hang_all();
    let err = r
        .clock
        .drive(r.stack.store.get(&Path::from("a")))
        .await
        .unwrap_err();
    assert!(is_open_error(&err), "{err}");
    assert_eq!(r.faulty.calls(Op::Get), 2);
    assert_eq!(r.faulty.hanging(), 0);
    assert_eq!(r.stack.breaker.state(), BreakerState::Open);
}
