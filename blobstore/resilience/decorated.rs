//! [`Decorated`]: the one place that forwards every `ObjectStore` method
//! to an inner store, for the store decorators ([`RetryStore`],
//! [`CircuitBreakerStore`], and the test tool `burrow::testing::FaultyStore`).
//! Each decorator is a [`Decorator`]: it says what happens around one call
//! ([`Decorator::call`]), around a stream ([`Decorator::stream`],
//! [`Decorator::stream_once`]) and to a multipart upload
//! ([`Decorator::upload`]); [`Decorated`] writes each `ObjectStore` method
//! once, in terms of those hooks.
//!
//! # Contract
//!
//! - Every `ObjectStore` method, provided ones included, is forwarded
//!   (`clippy::missing_trait_methods` is denied on the impl), so no call
//!   reaches the inner store around the decorator through a default method.
//! - Each call reaches the decorator as one [`Op`] with the path it names
//!   (for a list, the prefix; for a copy or rename, the source; for
//!   `delete_stream`, the empty string).
//! - A hook may make the inner call any number of times (retries) or none
//!   (failing fast); the inner call is made only through the closure it is
//!   handed.
//!
//! [`RetryStore`]: super::RetryStore
//! [`CircuitBreakerStore`]: super::CircuitBreakerStore

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The kind of a store call, as decorators see it (for counters,
/// predicates and messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put_opts`.
    Put,
    /// `put_multipart_opts` (starting an upload).
    PutMultipart,
    /// A multipart upload's `put_part`.
    PutPart,
    /// A multipart upload's `complete`.
    CompleteMultipart,
    /// A multipart upload's `abort`.
    AbortMultipart,
    /// `get_opts`.
    Get,
    /// `get_ranges`.
    GetRanges,
    /// `delete_stream`.
    Delete,
    /// `list` and `list_with_offset`.
    List,
    /// `list_with_delimiter`.
    ListWithDelimiter,
    /// `copy_opts`.
    Copy,
    /// `rename_opts`.
    Rename,
}

impl Op {
    /// Every kind, in declaration order.
    pub const ALL: [Op; 12] = [
        Op::Put,
        Op::PutMultipart,
        Op::PutPart,
        Op::CompleteMultipart,
        Op::AbortMultipart,
        Op::Get,
        Op::GetRanges,
        Op::Delete,
        Op::List,
        Op::ListWithDelimiter,
        Op::Copy,
        Op::Rename,
    ];

    /// Its position in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// How messages name it ("put", "get ranges", ...).
    pub fn label(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutMultipart => "put multipart",
            Op::PutPart => "put part",
            Op::CompleteMultipart => "complete multipart",
            Op::AbortMultipart => "abort multipart",
            Op::Get => "get",
            Op::GetRanges => "get ranges",
            Op::Delete => "delete",
            Op::List | Op::ListWithDelimiter => "list",
            Op::Copy => "copy",
            Op::Rename => "rename",
        }
    }
}

/// The inner call a hook is handed: it makes the inner store's call (again,
/// for a retry).
pub type Call<'a, T> = Box<dyn FnMut() -> Fut<'a, T> + Send + 'a>;
/// A call's result, to come.
pub type Fut<'a, T> = BoxFuture<'a, Result<T>>;
/// A stream of results.
pub type Stream<T> = BoxStream<'static, Result<T>>;
/// Makes an inner stream that cannot be made twice.
pub type MakeOnce<T> = Box<dyn FnOnce() -> Stream<T> + Send>;
/// Makes an inner stream, as often as asked.
pub type Make<T> = Box<dyn Fn() -> Stream<T> + Send + Sync>;
/// A multipart upload.
pub type Upload = Box<dyn MultipartUpload>;

/// A put as [`Decorated`] hands it to [`Decorator::put`].
pub struct Put<'a> {
    /// The decorated store's inner store.
    pub inner: &'a Arc<dyn ObjectStore>,
    /// Where to put.
    pub location: &'a Path,
    /// What to put.
    pub payload: PutPayload,
    /// How to put it.
    pub opts: PutOptions,
}

impl<'a> Put<'a> {
    /// Makes the put on the inner store (again, for a retry).
    pub fn send(&self) -> Fut<'a, PutResult> {
        let (payload, opts) = (self.payload.clone(), self.opts.clone());
        self.inner.put_opts(self.location, payload, opts)
    }
}

/// What a store decorator does around the calls [`Decorated`] forwards.
pub trait Decorator: fmt::Debug + Send + Sync + 'static {
    /// How `Display` names the decorated store: `{NAME}({inner})`.
    const NAME: &'static str;

    /// One call of `op` on `path`; `call` makes the inner store's call.
    fn call<'a, T: Send + 'a>(&'a self, op: Op, path: &'a str, call: Call<'a, T>) -> Fut<'a, T>;

    /// A stream that cannot be made twice (`delete_stream` consumes its
    /// input). Nothing may happen before it is first polled.
    fn stream_once<T: Send + 'static>(&self, op: Op, path: String, make: MakeOnce<T>) -> Stream<T>;

    /// A stream that may be made again (a listing); by default as
    /// [`Decorator::stream_once`].
    fn stream<T: Send + 'static>(&self, op: Op, path: String, make: Make<T>) -> Stream<T> {
        self.stream_once(op, path, Box::new(make))
    }

    /// A multipart upload the inner store started at `path`, wrapped so
    /// that its calls meet the decorator too.
    fn upload(&self, path: &Path, upload: Upload) -> Upload;

    /// A `get`'s result, once the call succeeded (to wrap its body); as is
    /// by default.
    fn got(&self, _path: &Path, result: GetResult) -> GetResult {
        result
    }

    /// A put; by default one [`Decorator::call`] of [`Op::Put`].
    fn put<'a>(&'a self, put: Put<'a>) -> Fut<'a, PutResult> {
        self.call(Op::Put, put.location.as_ref(), Box::new(move || put.send()))
    }
}

/// An `ObjectStore` that forwards every call to `inner` through the
/// decorator `D` (see the module docs).
#[derive(Clone)]
pub struct Decorated<D> {
    inner: Arc<dyn ObjectStore>,
    decorator: D,
}

impl<D: Decorator> Decorated<D> {
    /// `inner`, decorated by `decorator`.
    pub fn decorate(inner: Arc<dyn ObjectStore>, decorator: D) -> Self {
        Decorated { inner, decorator }
    }

    /// The store calls are forwarded to.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The decorator.
    pub fn decorator(&self) -> &D {
        &self.decorator
    }
}

impl<D: Decorator> fmt::Debug for Decorated<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(D::NAME)
            .field("decorator", &self.decorator)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<D: Decorator> fmt::Display for Decorated<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", D::NAME, self.inner)
    }
}

fn label(prefix: Option<&Path>) -> String {
    prefix.map(|p| p.to_string()).unwrap_or_default()
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<D: Decorator> ObjectStore for Decorated<D> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let put = Put {
            inner: &self.inner,
            location,
            payload,
            opts,
        };
        self.decorator.put(put).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self
            .decorator
            .call(
                Op::PutMultipart,
                location.as_ref(),
                Box::new(|| self.inner.put_multipart_opts(location, opts.clone())),
            )
            .await?;
        Ok(self.decorator.upload(location, upload))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let got = self
            .decorator
            .call(
                Op::Get,
                location.as_ref(),
                Box::new(|| self.inner.get_opts(location, options.clone())),
            )
            .await?;
        Ok(self.decorator.got(location, got))
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.decorator
            .call(
                Op::GetRanges,
                location.as_ref(),
                Box::new(|| self.inner.get_ranges(location, ranges)),
            )
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = Arc::clone(&self.inner);
        self.decorator.stream_once(
            Op::Delete,
            String::new(),
            Box::new(move || inner.delete_stream(locations)),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        self.decorator.stream(
            Op::List,
            label(prefix.as_ref()),
            Box::new(move || inner.list(prefix.as_ref())),
        )
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        let offset = offset.clone();
        self.decorator.stream(
            Op::List,
            label(prefix.as_ref()),
            Box::new(move || inner.list_with_offset(prefix.as_ref(), &offset)),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let path = label(prefix);
        self.decorator
            .call(
                Op::ListWithDelimiter,
                &path,
                Box::new(|| self.inner.list_with_delimiter(prefix)),
            )
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.decorator
            .call(
                Op::Copy,
                from.as_ref(),
                Box::new(|| self.inner.copy_opts(from, to, options.clone())),
            )
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.decorator
            .call(
                Op::Rename,
                from.as_ref(),
                Box::new(|| self.inner.rename_opts(from, to, options.clone())),
            )
            .await
    }
}
