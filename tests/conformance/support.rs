//! What the conformance cases run on: one [`Backend`] per store, each under
//! its own random prefix, behind a [`CountingStore`] that counts requests.

use async_trait::async_trait;
use burrow::blobstore::{BlobStore, UploadOptions};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Requests seen by a [`CountingStore`], by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub gets: AtomicU64,
    pub heads: AtomicU64,
    pub puts: AtomicU64,
    pub multipart_uploads: AtomicU64,
    pub lists: AtomicU64,
    pub copies: AtomicU64,
    pub deletes: AtomicU64,
}

/// A snapshot of [`Counts`], for assertions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub gets: u64,
    pub heads: u64,
    pub puts: u64,
    pub multipart_uploads: u64,
    pub lists: u64,
    pub copies: u64,
    pub deletes: u64,
}

impl Counts {
    pub fn seen(&self) -> Seen {
        let n = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Seen {
            gets: n(&self.gets),
            heads: n(&self.heads),
            puts: n(&self.puts),
            multipart_uploads: n(&self.multipart_uploads),
            lists: n(&self.lists),
            copies: n(&self.copies),
            deletes: n(&self.deletes),
        }
    }
}

impl Seen {
    /// Requests between `earlier` and `self`.
    pub fn since(self, earlier: Seen) -> Seen {
        Seen {
            gets: self.gets - earlier.gets,
            heads: self.heads - earlier.heads,
            puts: self.puts - earlier.puts,
            multipart_uploads: self.multipart_uploads - earlier.multipart_uploads,
            lists: self.lists - earlier.lists,
            copies: self.copies - earlier.copies,
            deletes: self.deletes - earlier.deletes,
        }
    }
}

/// Runs before a put reaches the store (to stop a server at a chosen step).
pub type BeforePut = Arc<dyn Fn(&Path) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Forwards every method (required and provided) to `inner`, counting.
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<Counts>,
    before_put: Option<BeforePut>,
}

impl fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStore")
            .field("inner", &self.inner)
            .field("counts", &self.counts)
            .finish()
    }
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (
            CountingStore {
                inner,
                counts: counts.clone(),
                before_put: None,
            },
            counts,
        )
    }

    /// Calls `hook` before every put, and waits for it.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn with_before_put(mut self, hook: BeforePut) -> Self {
        self.before_put = Some(hook);
        self
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Self::bump(&self.counts.puts);
        if let Some(hook) = &self.before_put {
            hook(location).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Self::bump(&self.counts.multipart_uploads);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            Self::bump(&self.counts.heads);
        } else {
            Self::bump(&self.counts.gets);
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        Self::bump(&self.counts.gets);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counts = self.counts.clone();
        let counted = locations
            .inspect(move |_| Self::bump(&counts.deletes))
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Self::bump(&self.counts.lists);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Self::bump(&self.counts.lists);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        Self::bump(&self.counts.lists);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        Self::bump(&self.counts.copies);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        Self::bump(&self.counts.copies);
        self.inner.rename_opts(from, to, options).await
    }
}

/// One store under test, under a prefix of its own.
pub struct Backend {
    pub name: &'static str,
    /// The dataset's store, through the counting wrapper.
    pub store: BlobStore,
    pub counts: Arc<Counts>,
    /// Keeps a local store's directory alive for the test.
    _dir: Option<tempfile::TempDir>,
}

/// Parts of 5 MiB (S3's minimum), so a 12 MiB blob is three parts.
pub fn small_parts() -> UploadOptions {
    UploadOptions {
        part_size: 5 * 1024 * 1024,
        max_concurrent_parts: 2,
    }
}

/// A prefix no other run uses.
pub fn random_prefix() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("run-{:016x}", h.finish())
}

impl Backend {
    fn wrap(
        name: &'static str,
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let (counting, counts) = CountingStore::new(inner);
        let store = BlobStore::new(Arc::new(counting), prefix).with_upload_options(small_parts());
        Backend {
            name,
            store,
            counts,
            _dir: dir,
        }
    }

    pub fn memory() -> Self {
        let inner = Arc::new(object_store::memory::InMemory::new());
        Backend::wrap("memory", inner, &random_prefix(), None)
    }

    pub fn local() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .expect("a local store");
        Backend::wrap("local", Arc::new(fs), &random_prefix(), Some(dir))
    }

    /// `base` with its calls going through the retry and circuit-breaker
    /// decorators (outside the counting wrapper, so counts are the real
    /// store's calls).
    pub fn resilient(mut self) -> Self {
        let resilience = burrow::blobstore::resilience::Resilience::system();
        self.store = self.store.resilient(&resilience);
        self.name = match self.name {
            "memory" => "resilient-memory",
            _ => "resilient-local",
        };
        self
    }

    /// The dataset's object store without the counting wrapper's prefix
    /// logic: for cases that plant objects behind burrow's back.
    pub fn raw(&self) -> &Arc<dyn ObjectStore> {
        self.store.object_store()
    }

    /// `rel` under this backend's prefix, as an object path.
    pub fn path(&self, rel: &str) -> Path {
        let mut path = self.store.prefix().clone();
        for part in rel.split('/') {
            path = path.join(part);
        }
        path
    }
}

#[cfg(feature = "s3")]
pub mod s3 {
    //! The S3 backend: a real S3 server (moto; see `super::super::moto`
    //! for how the tests find or start it).

    use super::*;
    use burrow::blobstore::{RetryOptions, StoreOptions};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub use super::super::moto::{auth_server, plain_endpoint};
    pub const BUCKET: &str = "burrow-conformance";

    /// Options for a test server: path-style, plain HTTP, test keys, short
    /// retries so that a broken server fails fast.
    pub fn options(endpoint: &str, key: &str, secret: &str) -> StoreOptions {
        StoreOptions {
            endpoint: Some(endpoint.to_string()),
            path_style: Some(true),
            allow_http: Some(true),
            region: Some("us-east-1".into()),
            s3_settings: vec![
                ("aws_access_key_id".into(), key.into()),
                ("aws_secret_access_key".into(), secret.into()),
            ],
            retry: RetryOptions {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
            },
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            upload: small_parts(),
        }
    }

    /// Creates `bucket` on an unauthenticated test server (an S3 `PUT
    /// /bucket`); a bucket that already exists is fine.
    pub async fn create_bucket(endpoint: &str, bucket: &str) {
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let mut conn = tokio::net::TcpStream::connect(host)
            .await
            .unwrap_or_else(|e| panic!("connect to the S3 server at {endpoint}: {e}"));
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.expect("receive");
        let response = String::from_utf8_lossy(&response);
        let status = response.split(' ').nth(1).unwrap_or("");
        assert!(
            status == "200" || response.contains("BucketAlreadyOwnedByYou"),
            "create bucket {bucket}: {response}"
        );
    }

    impl Backend {
        /// The S3 backend on the plain test server, started on first use;
        /// panics (failing the test) when there is none and moto is missing.
        pub async fn s3() -> Backend {
            let endpoint = plain_endpoint();
            create_bucket(&endpoint, BUCKET).await;
            let prefix = random_prefix();
            let url = format!("s3://{BUCKET}/{prefix}");
            let s3 = BlobStore::from_url(&url, &options(&endpoint, "test", "test"))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            s3.check().await.unwrap_or_else(|e| panic!("{url}: {e}"));
            Backend::wrap("s3", s3.object_store().clone(), &prefix, None)
        }
    }
}
