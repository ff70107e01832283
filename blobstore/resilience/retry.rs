//! [`RetryStore`]: retries with exponential backoff and full jitter, a
//! bound on attempts and on total time, and a timeout on every call.
//!
//! What is retried, method by method:
//!
//! - `put_opts`, `get_opts`, `get_ranges`, `list_with_delimiter`,
//!   `copy_opts`, `rename_opts`, `put_multipart_opts` (starting the upload):
//!   the whole call, on [`is_transient`] errors.
//! - A create-only put (`PutMode::Create`) retried after an attempt whose
//!   outcome is unknown (it timed out or failed after the request may have
//!   landed) can meet its own first write as `AlreadyExists`. The retry
//!   layer then reads the object back: if it holds exactly the payload,
//!   the put succeeded; otherwise `AlreadyExists` stands (someone else won
//!   the name, which is how announcement races are decided).
//!   `PutMode::Update`, copy and rename have the same ambiguity and are
//!   not reconciled: a retry may report `Precondition`, `AlreadyExists` or
//!   `NotFound` for work an earlier attempt did. burrow's publish path uses
//!   none of them.
//! - `list` and `list_with_offset`: re-listed only if the stream fails
//!   before it has yielded anything; once a caller has seen entries, an
//!   error is passed on (a re-list would repeat them).
//! - The body of a `get` and every item of `list` and `delete_stream` get
//!   the per-call timeout as an idle timeout, but are not retried: half a
//!   body cannot be resumed transparently, and the blob cache verifies a
//!   checksum and fetches again. `delete_stream` consumes its input, so it
//!   cannot be replayed.
//! - Multipart parts, `complete` and `abort` get the timeout but are not
//!   retried: object_store numbers parts by call order, so a retried part
//!   would be a second part. A failed upload fails as a whole; the writer
//!   starts over.

use super::decorated::{Call, Decorated, Decorator, Fut, Make, MakeOnce, Op, Put, Stream, Upload};
use super::{is_transient, random_duration, with_timeout, Clock, ResilienceError, Rng};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, MultipartUpload, ObjectStore, PutMode, PutPayload,
    PutResult, Result, UploadPart,
};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a [`RetryStore`] retries.
///
/// Defaults: 5 attempts, 100 ms base delay doubling to a 5 s cap, 30 s in
/// all, 10 s per call. With full jitter the expected wait before attempt
/// `n + 1` is half of `min(max_delay, base_delay * 2^(n-1))`, so the four
/// retries of a store that keeps failing wait about 0.75 s on average.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included (0 is taken as 1).
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles per retry.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
    /// No retry starts (and no attempt runs) past this much time after the
    /// call began.
    pub max_elapsed: Duration,
    /// One attempt (or one item of a stream) that takes longer fails with
    /// [`ResilienceError::Timeout`].
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling after `failures` failed attempts (1 or more):
    /// `min(max_delay, base_delay * 2^(failures - 1))`. The actual delay
    /// is uniform in `[0, ceiling]` (full jitter).
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.base_delay
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// An `ObjectStore` decorator that retries transient failures and times
/// out calls that hang: the [`Retry`] policy over [`Decorated`]'s
/// forwarding. See the module docs for what is retried.
pub type RetryStore = Decorated<Retry>;

/// Retries and timeouts, as the [`Decorator`] of a [`RetryStore`].
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
}

/// Where a retried call stands.
struct Attempts {
    op: &'static str,
    path: String,
    start: Instant,
    made: u32,
}

impl RetryStore {
    /// Retries `inner`'s calls by `policy`, sleeping on `clock` with jitter from `rng`.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        policy: RetryPolicy,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        Decorated::decorate(inner, Retry { policy, clock, rng })
    }

    /// How calls are retried.
    pub fn policy(&self) -> &RetryPolicy {
        &self.decorator().policy
    }
}

impl Retry {
    fn begin(&self, op: &'static str, path: impl fmt::Display) -> Attempts {
        Attempts {
            op,
            path: path.to_string(),
            start: self.clock.now(),
            made: 0,
        }
    }

    /// The timeout for the next attempt: the per-call timeout, cut to what
    /// is left of the total budget.
    fn attempt_timeout(&self, attempts: &Attempts) -> Duration {
        let elapsed = self.clock.now().saturating_duration_since(attempts.start);
        self.policy
            .call_timeout
            .min(self.policy.max_elapsed.saturating_sub(elapsed))
    }

    /// After a failed attempt: `Ok(())` once the backoff has been slept and
    /// the call should be tried again, or the error to return.
    async fn after_failure(
        &self,
        attempts: &Attempts,
        err: object_store::Error,
    ) -> Result<(), object_store::Error> {
        if !is_transient(&err) {
            return Err(err);
        }
        let elapsed = self.clock.now().saturating_duration_since(attempts.start);
        let delay = random_duration(&*self.rng, self.policy.backoff_ceiling(attempts.made));
        if attempts.made >= self.policy.max_attempts.max(1)
            || elapsed + delay >= self.policy.max_elapsed
        {
            return Err(ResilienceError::RetriesExhausted {
                op: attempts.op,
                path: attempts.path.clone(),
                attempts: attempts.made,
                elapsed,
                last: err,
            }
            .into_object_error());
        }
        tracing::debug!(
            op = attempts.op,
            path = %attempts.path,
            attempt = attempts.made,
            ?delay,
            error = %err,
            "store call failed; retrying"
        );
        self.clock.sleep(delay).await;
        Ok(())
    }

    /// One attempt under the timeout.
    async fn attempt<T>(
        &self,
        attempts: &mut Attempts,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        attempts.made += 1;
        let timeout = self.attempt_timeout(attempts);
        with_timeout(&*self.clock, timeout, fut)
            .await
            .unwrap_or_else(|| Err(timeout_error(attempts.op, &attempts.path, timeout)))
    }

    /// Runs `call` until it succeeds, fails for good, or the policy gives
    /// up; `attempts` counts the attempts made.
    async fn retry<T, F, Fut>(&self, attempts: &mut Attempts, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        loop {
            match self.attempt(attempts, call()).await {
                Ok(out) => return Ok(out),
                Err(err) => self.after_failure(attempts, err).await?,
            }
        }
    }

    /// A create-only put met `AlreadyExists` after an attempt whose outcome
    /// is unknown: it succeeded if the object holds exactly `payload`.
    async fn reconcile_create(
        &self,
        inner: &Arc<dyn ObjectStore>,
        location: &Path,
        payload: &PutPayload,
        exists: object_store::Error,
    ) -> Result<PutResult> {
        let mut attempts = self.begin("get (reconcile create)", location);
        let stored = self
            .retry(&mut attempts, || async {
                let got = inner.get_opts(location, GetOptions::default()).await?;
                let meta = got.meta.clone();
                Ok((meta, got.bytes().await?))
            })
            .await;
        let (meta, bytes) = match stored {
            Ok(found) => found,
            // Could not check: the name is taken, which is what we know.
            Err(_) => return Err(exists),
        };
        if payload_equals(payload, &bytes) {
            tracing::info!(
                path = %location,
                "create-only put: an earlier attempt that reported failure had written the object"
            );
            Ok(PutResult {
                e_tag: meta.e_tag,
                version: meta.version,
                extensions: Default::default(),
            })
        } else {
            Err(exists)
        }
    }

    fn timed_stream<T: Send + 'static>(
        &self,
        stream: BoxStream<'static, Result<T>>,
        op: &'static str,
        path: String,
    ) -> BoxStream<'static, Result<T>> {
        idle_timeout(
            stream,
            Arc::clone(&self.clock),
            self.policy.call_timeout,
            op,
            path,
        )
    }

    /// A listing re-made from scratch while it has yielded nothing.
    fn retried_list<T: Send + 'static>(
        &self,
        op: &'static str,
        path: String,
        make: impl Fn() -> BoxStream<'static, Result<T>> + Send + Sync + 'static,
    ) -> BoxStream<'static, Result<T>> {
        struct State<M, T> {
            store: Retry,
            make: M,
            stream: Option<BoxStream<'static, Result<T>>>,
            attempts: Attempts,
            yielded: bool,
            done: bool,
        }
        let attempts = self.begin(op, &path);
        let state = State {
            store: self.clone(),
            make,
            stream: None,
            attempts,
            yielded: false,
            done: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if st.stream.is_none() {
                    st.stream = Some((st.make)());
                    st.attempts.made += 1;
                }
                let stream = st.stream.as_mut()?;
                let timeout = if st.yielded {
                    st.store.policy.call_timeout
                } else {
                    st.store.attempt_timeout(&st.attempts)
                };
                let err = match with_timeout(&*st.store.clock, timeout, stream.next()).await {
                    Some(Some(Ok(item))) => {
                        st.yielded = true;
                        return Some((Ok(item), st));
                    }
                    Some(None) => return None,
                    Some(Some(Err(err))) => err,
                    None => timeout_error(st.attempts.op, &st.attempts.path, timeout),
                };
                st.stream = None;
                let retry = if st.yielded {
                    Err(err)
                } else {
                    st.store.after_failure(&st.attempts, err).await
                };
                if let Err(err) = retry {
                    st.done = true;
                    return Some((Err(err), st));
                }
            }
        })
        .boxed()
    }
}

fn timeout_error(op: &'static str, path: &str, after: Duration) -> object_store::Error {
    ResilienceError::Timeout {
        op,
        path: path.to_string(),
        after,
    }
    .into_object_error()
}

fn payload_equals(payload: &PutPayload, bytes: &Bytes) -> bool {
    if payload.content_length() != bytes.len() {
        return false;
    }
    let mut rest = &bytes[..];
    for chunk in payload {
        let (head, tail) = rest.split_at(chunk.len());
        if head != &chunk[..] {
            return false;
        }
        rest = tail;
    }
    true
}

/// Ends `stream` with a [`ResilienceError::Timeout`] if an item takes
/// longer than `timeout`.
fn idle_timeout<T: Send + 'static>(
    stream: BoxStream<'static, Result<T>>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    op: &'static str,
    path: String,
) -> BoxStream<'static, Result<T>> {
    futures::stream::unfold(Some(stream), move |stream| {
        let clock = Arc::clone(&clock);
        let path = path.clone();
        async move {
            let mut stream = stream?;
            match with_timeout(&*clock, timeout, stream.next()).await {
                Some(Some(item)) => Some((item, Some(stream))),
                Some(None) => None,
                None => Some((Err(timeout_error(op, &path, timeout)), None)),
            }
        }
    })
    .boxed()
}

impl Decorator for Retry {
    const NAME: &'static str = "Retry";

    fn call<'a, T: Send + 'a>(&'a self, op: Op, path: &'a str, call: Call<'a, T>) -> Fut<'a, T> {
        let mut attempts = self.begin(op.label(), path);
        Box::pin(async move { self.retry(&mut attempts, call).await })
    }

    fn stream_once<T: Send + 'static>(&self, op: Op, path: String, make: MakeOnce<T>) -> Stream<T> {
        self.timed_stream(make(), op.label(), path)
    }

    fn stream<T: Send + 'static>(&self, op: Op, path: String, make: Make<T>) -> Stream<T> {
        self.retried_list(op.label(), path, make)
    }

    fn upload(&self, path: &Path, upload: Upload) -> Upload {
        Box::new(TimedUpload {
            upload,
            clock: Arc::clone(&self.clock),
            timeout: self.policy.call_timeout,
            path: path.to_string(),
        })
    }

    fn got(&self, path: &Path, result: GetResult) -> GetResult {
        let payload = match result.payload {
            GetResultPayload::Stream(stream) => {
                GetResultPayload::Stream(self.timed_stream(stream, "read", path.to_string()))
            }
            file @ GetResultPayload::File(..) => file,
        };
        GetResult { payload, ..result }
    }

    /// A create-only put whose retry meets `AlreadyExists` is reconciled
    /// (see the module docs).
    fn put<'a>(&'a self, put: Put<'a>) -> Fut<'a, PutResult> {
        let create = matches!(put.opts.mode, PutMode::Create);
        let mut attempts = self.begin(Op::Put.label(), put.location);
        Box::pin(async move {
            match self.retry(&mut attempts, || put.send()).await {
                Err(exists @ object_store::Error::AlreadyExists { .. })
                    if create && attempts.made > 1 =>
                {
                    let (inner, location) = (put.inner, put.location);
                    self.reconcile_create(inner, location, &put.payload, exists)
                        .await
                }
                other => other,
            }
        })
    }
}

/// A multipart upload whose every call has the per-call timeout.
#[derive(Debug)]
struct TimedUpload {
    upload: Box<dyn MultipartUpload>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    path: String,
}

#[async_trait]
impl MultipartUpload for TimedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.upload.put_part(data);
        let clock = Arc::clone(&self.clock);
        let timeout = self.timeout;
        let path = self.path.clone();
        Box::pin(async move {
            with_timeout(&*clock, timeout, part)
                .await
                .unwrap_or_else(|| Err(timeout_error("put part", &path, timeout)))
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let fut = self.upload.complete();
        with_timeout(&*self.clock, self.timeout, fut)
            .await
            .unwrap_or_else(|| {
                Err(timeout_error(
                    "complete multipart",
                    &self.path,
                    self.timeout,
                ))
            })
    }

    async fn abort(&mut self) -> Result<()> {
        let fut = self.upload.abort();
        with_timeout(&*self.clock, self.timeout, fut)
            .await
            .unwrap_or_else(|| Err(timeout_error("abort multipart", &self.path, self.timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilience_backoff_ceiling_doubles_to_the_cap() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<_> = (1..=8).map(|n| policy.backoff_ceiling(n)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            ceilings,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        assert_eq!(policy.backoff_ceiling(u32::MAX), ms(5000));
    }

    #[test]
    fn resilience_payload_comparison_spans_chunks() {
        let payload: PutPayload = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]
            .into_iter()
            .collect();
        assert!(payload_equals(&payload, &Bytes::from_static(b"abcd")));
        assert!(!payload_equals(&payload, &Bytes::from_static(b"abce")));
        assert!(!payload_equals(&payload, &Bytes::from_static(b"abc")));
    }
}
