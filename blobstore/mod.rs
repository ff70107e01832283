//! The blob store: burrow's view of an `object_store::ObjectStore` under one
//! dataset prefix.
//!
//! # Contract
//!
//! - Blobs (snapshots, deltas, reverse deltas, announcement entries) are
//!   written with [`PutMode::Create`] and never overwritten: a second write
//!   of a name gives [`StoreError::AlreadyExists`] on every backend. Only the
//!   `announce/latest` hint is overwritten.
//! - A put is atomic: a reader sees all of an object or none of it.
//! - A missing object is [`StoreError::NotFound`], never an empty body.
//! - Backend errors keep the backend's error as their `source`; whether the
//!   call may succeed on retry is [`StoreError::is_retryable`].
//!
//! - Large blobs go up in parts through a [`BlobWriter`] with bounded
//!   memory, and stay create-only: see [`upload`] for how and why.
//!
//! Where the store is (`s3://bucket/prefix`, a directory) and how to talk to
//! it (endpoint, retries, timeouts) is [`config`]. At start-up,
//! [`BlobStore::check`] tells a missing bucket from rejected credentials.
//!
//! Fetching into a local cache (stream to a temp file while hashing, fsync,
//! verify, rename, fsync the directory) lives in [`cache`].
//!
//! A blob object is stored raw or as one zstd frame of the raw blob
//! ([`compress`]); [`BlobStore::get_blob`] and the cache's fetch take
//! either. [`BlobStore::get`] returns an object's bytes as stored.

pub mod cache;
pub mod compress;
pub mod config;
mod names;
pub mod resilience;
mod retention;
pub mod upload;

pub use cache::BlobCache;
pub use compress::Compression;
pub use config::{RetryOptions, StoreOptions, StoreUrl, UploadOptions};
pub use names::BlobName;
pub use retention::{CacheRetention, Trimmed};
pub use upload::BlobWriter;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist (on every backend alike).
    #[error("{name}: not found in the blob store")]
    NotFound {
        /// The object's name relative to the dataset prefix.
        name: String,
    },
    /// A create-only put found the name taken.
    #[error("{name}: already exists in the blob store, and blobs are never overwritten")]
    AlreadyExists {
        /// The object's name relative to the dataset prefix.
        name: String,
    },
    /// The backend failed; `source` says how.
    #[error("blob store {op} of {name} failed: {source}")]
    Backend {
        /// The operation (`get`, `create`, `list`, ...).
        op: &'static str,
        /// The object (or store) it was applied to.
        name: String,
        /// The backend's own error.
        #[source]
        source: object_store::Error,
    },
    /// The bucket named by the store URL does not exist.
    #[error("{store}: bucket {bucket} does not exist (or these credentials cannot see it)")]
    BucketNotFound {
        /// The store, as described in messages.
        store: String,
        /// The bucket that was not found.
        bucket: String,
        /// The backend's own error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store refused the credentials (HTTP 401 or 403).
    #[error(
        "{store}: the store rejected the credentials, or they may not read this prefix \
         (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and the bucket policy)"
    )]
    CredentialsRejected {
        /// The store, as described in messages.
        store: String,
        /// The backend's own error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store refused one operation to these credentials (HTTP 403, or
    /// 401, on a call after the start-up check): their policy does not
    /// allow it. Each role's permissions are in `blobstore/iam/` and the
    /// README's "Least privilege".
    #[error(
        "blob store {op} of {name} was refused: these credentials may not do it \
         (a consumer may read and list; a producer also create; gc also delete; \
         see the policies in blobstore/iam/): {source}"
    )]
    PermissionDenied {
        /// The operation (`get`, `create`, `list`, `delete`, ...).
        op: &'static str,
        /// The object (or directory) it was applied to.
        name: String,
        /// The backend's own error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An S3 store was given no credentials (no keys, web identity or
    /// container credentials in the environment or the options), and the
    /// instance metadata service, the last place object_store looks, gave
    /// none either.
    #[error(
        "{store}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (and AWS_SESSION_TOKEN for temporary keys), or AWS_WEB_IDENTITY_TOKEN_FILE with \
         AWS_ROLE_ARN; AWS_PROFILE and ~/.aws are not read. Without them the EC2 instance \
         role is tried, and that failed: {source}"
    )]
    NoCredentials {
        /// The store, as described in messages.
        store: String,
        /// The instance metadata service's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A local store's path exists but is not a directory.
    #[error("store {}: is a file, not a directory (a local store is a directory)", path.display())]
    NotADirectory {
        /// The path that was given as the store.
        path: PathBuf,
    },
    /// Another owner (a process, or another cache in this one) holds the
    /// cache directory's lock.
    #[error(
        "cache directory {} is in use by another consumer (it holds {}); \
         give each process a cache directory of its own",
        dir.display(),
        dir.join(cache::LOCK_FILE).display()
    )]
    CacheInUse {
        /// The cache directory whose lock is held.
        dir: PathBuf,
    },
    /// A local file operation (the cache, a local store's directory) failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`create store directory`, `rename`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::BucketNotFound { .. }
            | StoreError::CredentialsRejected { .. }
            | StoreError::PermissionDenied { .. }
            | StoreError::NoCredentials { .. }
            | StoreError::NotADirectory { .. } => false,
            StoreError::CacheInUse { .. } => false,
            StoreError::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
        }
    }

    pub(crate) fn from_backend(op: &'static str, name: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                name: name.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists {
                name: name.to_string(),
            },
            source if is_access_denied(&source) => StoreError::PermissionDenied {
                op,
                name: name.to_string(),
                source: Box::new(source),
            },
            source => StoreError::Backend {
                op,
                name: name.to_string(),
                source,
            },
        }
    }
}

/// Whether a failed LIST means the bucket is missing. object_store maps
/// S3's LIST failures to `Generic` (only GET, HEAD, PUT get typed 404s), so
/// this looks for S3's error code `NoSuchBucket` in the error's chain; the
/// code is part of the S3 API, which MinIO and moto implement too.
fn is_missing_bucket(error: &object_store::Error) -> bool {
    if matches!(error, object_store::Error::NotFound { .. }) {
        return true;
    }
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        if e.to_string().contains("NoSuchBucket") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether the store refused a request to these credentials. object_store
/// types a 401 or 403 of GET, HEAD and PUT; a refused LIST or DELETE comes
/// as `Generic`, so its chain is searched for S3's error code
/// `AccessDenied` (MinIO and moto use the same code).
fn is_access_denied(error: &object_store::Error) -> bool {
    if matches!(
        error,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) {
        return true;
    }
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        if e.to_string().contains("AccessDenied") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether a failed request failed while asking the EC2 instance metadata
/// service for credentials (its token or credentials paths appear in the
/// error's chain), rather than at the store itself.
fn is_metadata_failure(error: &object_store::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        let text = e.to_string();
        if text.contains("/latest/api/token") || text.contains("/latest/meta-data/") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The body of a blob being read.
pub(crate) enum BlobBody {
    File(std::fs::File),
    Stream(futures::stream::BoxStream<'static, object_store::Result<Bytes>>),
}

/// Metadata of one listed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The blob's name.
    pub name: BlobName,
    /// Its size in bytes.
    pub size: u64,
}

/// A dataset's objects in an `ObjectStore`, under a prefix.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    description: String,
    /// The S3 bucket, for messages; `None` for other backends.
    bucket: Option<String>,
    /// An S3 store whose only credential source is the instance metadata
    /// service (nothing configured): a failed start-up check then says
    /// "no credentials" instead of the metadata service's HTTP error.
    implicit_credentials: bool,
    upload: UploadOptions,
    /// The directory of a local store ([`BlobStore::local`]), for what only
    /// the file system shows (see [`crate::gc`]); `None` for other backends.
    local_root: Option<PathBuf>,
}

impl BlobStore {
    /// A blob store over any `ObjectStore`, keeping the dataset under
    /// `prefix` ("" for the store's root).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let description = format!("{inner}/{prefix}");
        BlobStore {
            inner,
            prefix: ObjectPath::from(prefix),
            description,
            bucket: None,
            implicit_credentials: false,
            upload: UploadOptions::default(),
            local_root: None,
        }
    }

    /// How large blobs are uploaded (see [`BlobStore::writer`]).
    pub fn upload_options(&self) -> &UploadOptions {
        &self.upload
    }

    /// How this store's [`BlobWriter`]s upload large blobs.
    pub fn with_upload_options(mut self, upload: UploadOptions) -> Self {
        self.upload = upload;
        self
    }

    /// The same store with the dataset under `rel`, relative to this
    /// store's prefix (one store per dataset, or per test run).
    pub fn with_subprefix(&self, rel: &str) -> Self {
        let prefix = self.path_of(rel);
        let mut store = self.clone();
        store.description = format!("{}/{rel}", self.description.trim_end_matches('/'));
        store.prefix = prefix;
        store
    }

    /// The dataset prefix inside the object store.
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }

    /// The directory that holds the dataset, for a local store; `None` for
    /// other backends.
    pub fn local_dir(&self) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(
            self.prefix
                .parts()
                .fold(root.clone(), |dir, part| dir.join(part.as_ref())),
        )
    }

    /// Asks the store whether it can be used: the bucket exists and the
    /// credentials are accepted. For a start-up check: it reads, never
    /// writes.
    ///
    /// Errors: [`StoreError::CredentialsRejected`],
    /// [`StoreError::BucketNotFound`], or [`StoreError::Backend`] (the store
    /// did not answer, within the retry bounds).
    pub async fn check(&self) -> Result<(), StoreError> {
        // A HEAD of a name inside the prefix: 401/403 means the credentials
        // were refused; a 404 does not say whether the key or the bucket is
        // missing, so a LIST of the prefix decides (S3 answers a LIST of a
        // missing bucket with 404 NoSuchBucket).
        let probe = self.path(&BlobName::Latest);
        let store = self.description.clone();
        match self.inner.head(&probe).await {
            Ok(_) => return Ok(()),
            Err(source @ object_store::Error::PermissionDenied { .. })
            | Err(source @ object_store::Error::Unauthenticated { .. }) => {
                return Err(StoreError::CredentialsRejected {
                    store,
                    source: Box::new(source),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) if self.implicit_credentials && is_metadata_failure(&source) => {
                return Err(StoreError::NoCredentials {
                    store,
                    source: Box::new(source),
                })
            }
            Err(source) => {
                return Err(StoreError::Backend {
                    op: "check",
                    name: store,
                    source,
                })
            }
        }
        match self.inner.list_with_delimiter(Some(&self.prefix)).await {
            Ok(_) => Ok(()),
            Err(source) if is_missing_bucket(&source) => Err(StoreError::BucketNotFound {
                store,
                bucket: self.bucket.clone().unwrap_or_default(),
                source: Box::new(source),
            }),
            Err(source) => Err(StoreError::Backend {
                op: "check",
                name: store,
                source,
            }),
        }
    }

    /// A blob store in a local directory, created if missing. Every write
    /// is fsynced (file and directory) before it returns, so "written"
    /// means durable: a producer announces only after its blobs would
    /// survive a power cut.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory { path: dir });
        }
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create store directory",
            path: dir.clone(),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| StoreError::Backend {
                op: "open",
                name: dir.display().to_string(),
                source,
            })?
            .with_fsync(true);
        let mut store = BlobStore::new(Arc::new(fs), "");
        store.description = dir.display().to_string();
        store.local_root = Some(dir);
        Ok(store)
    }

    /// An in-memory blob store, for unit tests.
    pub fn memory() -> Self {
        let mut store = BlobStore::new(Arc::new(object_store::memory::InMemory::new()), "");
        store.description = "memory".to_string();
        store
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Where the store is, for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn path(&self, name: &BlobName) -> ObjectPath {
        self.path_of(&name.to_string())
    }

    pub(crate) fn path_of(&self, rel: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in rel.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    /// Writes a new blob; [`StoreError::AlreadyExists`] if the name is taken.
    /// `parts` are concatenated, so a caller can send an envelope and a body
    /// without joining them first.
    pub async fn create(&self, name: &BlobName, parts: Vec<Bytes>) -> Result<(), StoreError> {
        let payload: PutPayload = parts.into_iter().collect();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.inner
            .put_opts(&self.path(name), payload, opts)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_backend("create", &name.to_string(), e))
    }

    /// Overwrites an object: only for the `announce/latest` hint.
    pub async fn overwrite(&self, name: &BlobName, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_backend("put", &name.to_string(), e))
    }

    /// Reads a whole object into memory (for small objects: announcements).
    pub async fn get(&self, name: &BlobName) -> Result<Bytes, StoreError> {
        let label = name.to_string();
        let result = self
            .inner
            .get(&self.path(name))
            .await
            .map_err(|e| StoreError::from_backend("get", &label, e))?;
        result
            .bytes()
            .await
            .map_err(|e| StoreError::from_backend("read", &label, e))
    }

    /// Reads a whole blob into memory as its raw bytes (what a cache file
    /// holds): decompressed, on tokio's blocking pool, if it is stored as
    /// a zstd frame (see [`compress`]). For readers of whole blobs
    /// (restore, `verify`, `inspect`); a consumer streams through its
    /// cache instead.
    pub async fn get_blob(&self, name: &BlobName) -> Result<Bytes, crate::error::Error> {
        let stored = self.get(name).await?;
        if !compress::is_compressed(&stored) {
            return Ok(stored);
        }
        let label = name.to_string();
        tokio::task::spawn_blocking(move || compress::decode_stored(stored, &label, u64::MAX))
            .await
            .map_err(|e| StoreError::Io {
                op: "decompress blob",
                path: PathBuf::from(name.to_string()),
                source: std::io::Error::other(e),
            })?
    }

    /// The size of an object, in bytes.
    pub async fn size(&self, name: &BlobName) -> Result<u64, StoreError> {
        self.inner
            .head(&self.path(name))
            .await
            .map(|meta| meta.size)
            .map_err(|e| StoreError::from_backend("head", &name.to_string(), e))
    }

    /// Lists burrow's objects under `dir` (`"snapshot"`, `"delta"`,
    /// `"reverse"`, `"announce"`), sorted by name. Objects whose names are
    /// not burrow's are skipped.
    pub async fn list(&self, dir: &str) -> Result<Vec<BlobMeta>, StoreError> {
        let base = self.path_of(dir);
        let metas: Vec<_> = self
            .inner
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| StoreError::from_backend("list", dir, e))?;
        let mut out: Vec<BlobMeta> = metas
            .into_iter()
            .filter_map(|meta| {
                Some(BlobMeta {
                    name: BlobName::parse(&self.relative_name(&meta.location)?)?,
                    size: meta.size,
                })
            })
            .collect();
        out.sort_by_key(|m| m.name.to_string());
        Ok(out)
    }

    /// `location`'s name relative to the dataset prefix; `None` if it is
    /// not under the prefix.
    pub(crate) fn relative_name(&self, location: &ObjectPath) -> Option<String> {
        Some(
            location
                .prefix_match(&self.prefix)?
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    /// Deletes the object at `rel` (relative to the prefix); gone already is
    /// not an error. Only garbage collection deletes ([`crate::gc`]).
    pub(crate) async fn delete_raw(&self, rel: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path_of(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from_backend("delete", rel, e)),
        }
    }

    /// Opens a read of a whole blob: its size and its body, which is a
    /// local file when the store is a local directory (read with large
    /// buffers, not object_store's small stream chunks) and a stream of
    /// chunks otherwise.
    pub(crate) async fn open_read(&self, name: &BlobName) -> Result<(u64, BlobBody), StoreError> {
        let result = self
            .inner
            .get(&self.path(name))
            .await
            .map_err(|e| StoreError::from_backend("get", &name.to_string(), e))?;
        let size = result.meta.size;
        Ok(match result.payload {
            object_store::GetResultPayload::File(file, _) => (size, BlobBody::File(file)),
            object_store::GetResultPayload::Stream(stream) => (size, BlobBody::Stream(stream)),
        })
    }
}
