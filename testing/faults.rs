//! [`FaultyStore`]: an `ObjectStore` wrapper that injects faults, **a test
//! tool** (feature `testing`). It is public (not `cfg(test)`) because integration tests, fuzz
//! targets and benches use it; production code has no reason to.
//!
//! Faults, checked in this order on every call:
//!
//! 1. the store is down ([`FaultyStore::set_down`]): every call fails;
//! 2. the next K calls fail ([`FaultyStore::fail_next`]);
//! 3. calls whose path matches fail ([`FaultyStore::fail_matching`],
//!    [`FaultyStore::fail_prefix`]), so a test can fail "the announce step"
//!    or "the snapshot put";
//! 4. once N more calls have gone through, every call fails
//!    ([`FaultyStore::fail_after`]);
//! 5. matching calls hang until [`FaultyStore::release`]
//!    ([`FaultyStore::hang_matching`], [`FaultyStore::hang_all`]);
//! 6. the next K calls reach the inner store but their answers are lost
//!    ([`FaultyStore::lose_next_responses`]): the write happened, the caller
//!    sees an error.
//!
//! An injected failure is `object_store::Error::Generic` with a
//! [`FaultError`] source, which the resilience layer treats as transient,
//! unless [`FaultyStore::set_error`] says otherwise. Every call is counted
//! per [`Op`] before any fault applies, so the counters tell how many
//! calls reached this layer. A `list` or `delete_stream` counts (and
//! meets its fault) when first polled; a `delete_stream` is one call with
//! an empty path.

pub use crate::blobstore::resilience::Op;

use crate::blobstore::resilience::decorated::{Call, Fut, MakeOnce, Stream, Upload};
use crate::blobstore::resilience::{Decorated, Decorator};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload, PutResult, Result, UploadPart};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

/// The error inside an injected failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError {
    /// A failure the faulty store was told to inject.
    #[error("injected fault ({fault}) on {op:?} of {path:?}")]
    Injected {
        /// Which fault (`fail`, `hang`, `lose answer`, ...).
        fault: &'static str,
        /// The call it hit.
        op: Op,
        /// The object the call was for.
        path: String,
    },
}

type Predicate = Arc<dyn Fn(Op, &str) -> bool + Send + Sync>;
type ErrorMaker = Arc<dyn Fn(Op, &str) -> object_store::Error + Send + Sync>;

/// A store that fails, hangs or loses answers on command (see the module
/// docs): the [`Faulty`] decorator over [`Decorated`]'s forwarding. Keep an
/// `Arc<FaultyStore>` to steer it and hand a clone, as
/// `Arc<dyn ObjectStore>`, to the code under test.
pub type FaultyStore = Decorated<Faulty>;

/// The faults, as the [`Decorator`] of a [`FaultyStore`].
pub struct Faulty {
    shared: Arc<Shared>,
}

struct Shared {
    faults: Mutex<Faults>,
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Faults {
    down: bool,
    fail_next: u64,
    fail_matching: Vec<Predicate>,
    successes_left: Option<u64>,
    hang: Option<Predicate>,
    release_generation: u64,
    hanging: u64,
    lose_next: u64,
    error: Option<ErrorMaker>,
    calls: [u64; Op::ALL.len()],
    injected: u64,
}

enum Decision {
    Forward,
    Fail(&'static str),
    Hang(u64),
    LoseResponse,
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty").finish_non_exhaustive()
    }
}

fn lock(mutex: &Mutex<Faults>) -> MutexGuard<'_, Faults> {
    // Every update is a plain assignment, so a poisoned lock is consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    fn decide(&self, op: Op, path: &str) -> Decision {
        let mut f = self.faults();
        f.calls[op.index()] += 1;
        let decision = if f.down {
            Decision::Fail("store down")
        } else if f.fail_next > 0 {
            f.fail_next -= 1;
            Decision::Fail("fail next")
        } else if f.fail_matching.iter().any(|p| p(op, path)) {
            Decision::Fail("path matches")
        } else if f.successes_left == Some(0) {
            Decision::Fail("fail after N calls")
        } else {
            if let Some(left) = f.successes_left.as_mut() {
                *left -= 1;
            }
            if f.hang.as_ref().is_some_and(|p| p(op, path)) {
                f.hanging += 1;
                Decision::Hang(f.release_generation)
            } else if f.lose_next > 0 {
                f.lose_next -= 1;
                Decision::LoseResponse
            } else {
                Decision::Forward
            }
        };
        if matches!(decision, Decision::Fail(_) | Decision::LoseResponse) {
            f.injected += 1;
        }
        decision
    }

    fn error(&self, op: Op, path: &str, fault: &'static str) -> object_store::Error {
        let maker = self.faults().error.clone();
        match maker {
            Some(make) => make(op, path),
            None => object_store::Error::Generic {
                store: "FaultyStore",
                source: Box::new(FaultError::Injected {
                    fault,
                    op,
                    path: path.to_string(),
                }),
            },
        }
    }

    async fn wait_release(&self, generation: u64) {
        // Counted as hanging until released or dropped (a caller's timeout).
        struct Hanging<'a>(&'a Shared);
        impl Drop for Hanging<'_> {
            fn drop(&mut self) {
                self.0.faults().hanging -= 1;
            }
        }
        let _hanging = Hanging(self);
        loop {
            let notified = self.released.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.faults().release_generation > generation {
                break;
            }
            notified.await;
        }
    }

    /// One call: `call` makes the inner call, only if the faults let it
    /// through.
    async fn run<T, Fut: Future<Output = Result<T>>>(
        &self,
        op: Op,
        path: &str,
        call: impl FnOnce() -> Fut,
    ) -> Result<T> {
        match self.decide(op, path) {
            Decision::Forward => call().await,
            Decision::Fail(fault) => Err(self.error(op, path, fault)),
            Decision::Hang(generation) => {
                self.wait_release(generation).await;
                call().await
            }
            Decision::LoseResponse => {
                // The call happens; its answer (if it was a success) is
                // replaced by the injected error.
                call().await?;
                Err(self.error(op, path, "response lost"))
            }
        }
    }

    fn stream<T: Send + 'static>(
        self: &Arc<Self>,
        op: Op,
        path: String,
        make: impl FnOnce() -> BoxStream<'static, Result<T>> + Send + 'static,
    ) -> BoxStream<'static, Result<T>> {
        let shared = Arc::clone(self);
        futures::stream::once(async move {
            match shared.decide(op, &path) {
                Decision::Forward => make(),
                Decision::Fail(fault) => {
                    let err = shared.error(op, &path, fault);
                    futures::stream::once(async move { Err(err) }).boxed()
                }
                Decision::Hang(generation) => {
                    shared.wait_release(generation).await;
                    make()
                }
                Decision::LoseResponse => {
                    let err = shared.error(op, &path, "response lost");
                    // Drain the real stream (the work happens), then fail.
                    let drained: Vec<_> = make().collect().await;
                    let err = match drained.into_iter().find_map(|item| item.err()) {
                        Some(inner) => inner,
                        None => err,
                    };
                    futures::stream::once(async move { Err(err) }).boxed()
                }
            }
        })
        .flatten()
        .boxed()
    }
}

impl FaultyStore {
    /// A store that forwards everything to `inner` until told otherwise.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            released: tokio::sync::Notify::new(),
        });
        Decorated::decorate(inner, Faulty { shared })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.decorator().shared
    }

    /// Over a fresh in-memory store.
    pub fn memory() -> Self {
        FaultyStore::new(Arc::new(object_store::memory::InMemory::new()))
    }

    /// Down: every call fails until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.shared().faults().down = down;
    }

    /// The next `k` calls fail (added to any still pending).
    pub fn fail_next(&self, k: u64) {
        self.shared().faults().fail_next += k;
    }

    /// After `n` more calls go through, every call fails until
    /// [`FaultyStore::heal`].
    pub fn fail_after(&self, n: u64) {
        self.shared().faults().successes_left = Some(n);
    }

    /// Calls for which `predicate(op, path)` holds fail until
    /// [`FaultyStore::heal`]. For lists the path is the prefix listed.
    pub fn fail_matching(&self, predicate: impl Fn(Op, &str) -> bool + Send + Sync + 'static) {
        self.shared()
            .faults()
            .fail_matching
            .push(Arc::new(predicate));
    }

    /// Calls on paths that start with `prefix` fail until
    /// [`FaultyStore::heal`].
    pub fn fail_prefix(&self, prefix: impl Into<String>) {
        let prefix = prefix.into();
        self.fail_matching(move |_, path| path.starts_with(&prefix));
    }

    /// Calls for which `predicate(op, path)` holds hang until
    /// [`FaultyStore::release`].
    pub fn hang_matching(&self, predicate: impl Fn(Op, &str) -> bool + Send + Sync + 'static) {
        self.shared().faults().hang = Some(Arc::new(predicate));
    }

    /// Every call hangs until [`FaultyStore::release`].
    pub fn hang_all(&self) {
        self.hang_matching(|_, _| true);
    }

    /// Lets every hung call go on to the inner store, and stops hanging.
    pub fn release(&self) {
        {
            let mut f = self.shared().faults();
            f.hang = None;
            f.release_generation += 1;
        }
        self.shared().released.notify_waiters();
    }

    /// Calls hanging right now.
    pub fn hanging(&self) -> u64 {
        self.shared().faults().hanging
    }

    /// The next `k` calls that go through reach the inner store, but the
    /// caller gets an injected error instead of the answer.
    pub fn lose_next_responses(&self, k: u64) {
        self.shared().faults().lose_next += k;
    }

    /// Injected failures use `make(op, path)` instead of a `Generic` error
    /// (to inject, say, `PermissionDenied`).
    pub fn set_error(
        &self,
        make: impl Fn(Op, &str) -> object_store::Error + Send + Sync + 'static,
    ) {
        self.shared().faults().error = Some(Arc::new(make));
    }

    /// Clears every fault (and releases hung calls); counters stay.
    pub fn heal(&self) {
        {
            let mut f = self.shared().faults();
            f.down = false;
            f.fail_next = 0;
            f.fail_matching.clear();
            f.successes_left = None;
            f.lose_next = 0;
            f.error = None;
        }
        self.release();
    }

    /// Calls of kind `op` that reached this store, failed ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.shared().faults().calls[op.index()]
    }

    /// Calls of every kind that reached this store.
    pub fn total_calls(&self) -> u64 {
        self.shared().faults().calls.iter().sum()
    }

    /// Calls that met an injected failure (lost responses included).
    pub fn injected_failures(&self) -> u64 {
        self.shared().faults().injected
    }

    /// Zeroes the call and failure counters.
    pub fn reset_counts(&self) {
        let mut f = self.shared().faults();
        f.calls = [0; Op::ALL.len()];
        f.injected = 0;
    }
}

impl Decorator for Faulty {
    const NAME: &'static str = "Faulty";

    fn call<'a, T: Send + 'a>(&'a self, op: Op, path: &'a str, call: Call<'a, T>) -> Fut<'a, T> {
        Box::pin(self.shared.run(op, path, call))
    }

    fn stream_once<T: Send + 'static>(&self, op: Op, path: String, make: MakeOnce<T>) -> Stream<T> {
        self.shared.stream(op, path, make)
    }

    fn upload(&self, path: &Path, upload: Upload) -> Upload {
        let (shared, path) = (Arc::clone(&self.shared), path.to_string());
        Box::new(FaultyUpload {
            upload,
            shared,
            path,
        })
    }
}

/// A multipart upload whose calls meet the store's faults.
struct FaultyUpload {
    upload: Box<dyn MultipartUpload>,
    shared: Arc<Shared>,
    path: String,
}

impl fmt::Debug for FaultyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyUpload")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.upload.put_part(data);
        let shared = Arc::clone(&self.shared);
        let path = self.path.clone();
        Box::pin(async move { shared.run(Op::PutPart, &path, || part).await })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let shared = Arc::clone(&self.shared);
        let fut = self.upload.complete();
        shared.run(Op::CompleteMultipart, &self.path, || fut).await
    }

    async fn abort(&mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let fut = self.upload.abort();
        shared.run(Op::AbortMultipart, &self.path, || fut).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn path(s: &str) -> Path {
        Path::from(s)
    }

    #[tokio::test]
    async fn resilience_faulty_store_counts_and_injects() {
        let store = FaultyStore::memory();
        store.fail_next(1);
        let err = store.put(&path("a"), "x".into()).await.unwrap_err();
        assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
        store.put(&path("a"), "x".into()).await.unwrap();

        store.fail_prefix("snapshot/");
        assert!(store.put(&path("snapshot/1"), "x".into()).await.is_err());
        store.put(&path("delta/1"), "x".into()).await.unwrap();
        store.heal();

        store.fail_after(2);
        store.get(&path("a")).await.unwrap();
        store.get(&path("a")).await.unwrap();
        assert!(store.get(&path("a")).await.is_err());
        assert!(store.get(&path("a")).await.is_err());
        store.heal();

        store.lose_next_responses(1);
        assert!(store.put(&path("b"), "y".into()).await.is_err());
        assert_eq!(
            store.get(&path("b")).await.unwrap().bytes().await.unwrap(),
            "y"
        );

        assert_eq!(store.calls(Op::Put), 5);
        assert_eq!(store.calls(Op::Get), 5);
        assert_eq!(store.injected_failures(), 5);
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 3, "a, delta/1, b");
        assert_eq!(store.calls(Op::List), 1);
    }

    #[tokio::test]
    async fn resilience_faulty_store_hangs_until_released() {
        let store = Arc::new(FaultyStore::memory());
        store.hang_all();
        let s = Arc::clone(&store);
        let call = tokio::spawn(async move { s.put(&path("a"), "x".into()).await });
        while store.hanging() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished());
        store.release();
        call.await.unwrap().unwrap();
        assert_eq!(store.hanging(), 0);
    }
}
