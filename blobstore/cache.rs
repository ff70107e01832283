//! A consumer's local cache of verified blobs.
//!
//! A blob enters the cache only one way: streamed from the store into
//! `<dir>/<name>.tmp-<random>` while its checksum is computed, fsynced,
//! checked against its envelope, renamed to `<dir>/<name>`, and the
//! directory fsynced. So a file with a final name is whole and was verified
//! when it arrived; it is never rewritten, so a mapping of it never changes
//! under a reader. Leftover temp files (a process killed mid-fetch) are
//! removed when the cache opens.

use super::{BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::envelope::{BodyHasher, Envelope, ENVELOPE_LEN};
use futures::StreamExt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const TMP_MARK: &str = ".tmp-";

/// A directory of verified blobs.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
    max_blob_bytes: u64,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl BlobCache {
    /// Opens (creating if needed) a cache directory and removes temp files
    /// left by an interrupted fetch.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create cache directory", &dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io("read cache directory", &dir))? {
            let entry = entry.map_err(io("read cache directory", &dir))?;
            if entry.file_name().to_string_lossy().contains(TMP_MARK) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io("remove stale temp file", &path))?;
                tracing::info!(path = %path.display(), "removed a temp file left by an interrupted fetch");
            }
        }
        Ok(BlobCache {
            dir,
            max_blob_bytes: u64::MAX,
        })
    }

    /// Refuses blobs larger than `bytes` (envelope included).
    pub fn with_max_blob_bytes(mut self, bytes: u64) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `name` lives in the cache (whether or not it is there yet).
    pub fn path(&self, name: &BlobName) -> PathBuf {
        self.dir.join(name.cache_file_name())
    }

    /// Whether a verified copy of `name` is in the cache.
    pub fn contains(&self, name: &BlobName) -> bool {
        self.path(name).is_file()
    }

    /// Returns the cached path of `name`, fetching and verifying it first if
    /// it is not cached yet.
    pub async fn fetch(&self, store: &BlobStore, name: &BlobName) -> Result<PathBuf, Error> {
        let dest = self.path(name);
        if dest.is_file() {
            return Ok(dest);
        }
        let label = name.to_string();
        let (size, mut stream) = store.stream(name).await?;
        if size > self.max_blob_bytes {
            return Err(FormatError::TooLarge {
                blob: label,
                what: "blob size",
                value: size,
                limit: self.max_blob_bytes,
            }
            .into());
        }
        let tmp = self.dir.join(format!(
            "{}{TMP_MARK}{}",
            name.cache_file_name(),
            unique_suffix()
        ));
        let result = async {
            let mut file = File::create(&tmp).map_err(io("create temp file", &tmp))?;
            let mut head = Vec::with_capacity(ENVELOPE_LEN);
            let mut envelope: Option<Envelope> = None;
            let mut hasher = BodyHasher::new();
            let mut body_bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StoreError::from_backend("read", &label, e))?;
                file.write_all(&chunk)
                    .map_err(io("write temp file", &tmp))?;
                let mut rest = &chunk[..];
                if envelope.is_none() {
                    let take = (ENVELOPE_LEN - head.len()).min(rest.len());
                    head.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if head.len() == ENVELOPE_LEN {
                        let env = Envelope::decode(&head, &label)?;
                        if ENVELOPE_LEN as u64 + env.body_len != size {
                            return Err(FormatError::Corrupt {
                                blob: label.clone(),
                                reason: format!(
                                    "the store says the blob is {size} bytes, its envelope says {}",
                                    ENVELOPE_LEN as u64 + env.body_len
                                ),
                            }
                            .into());
                        }
                        envelope = Some(env);
                    }
                }
                body_bytes += rest.len() as u64;
                hasher.update(rest);
            }
            let envelope = match envelope {
                Some(env) => env,
                None => {
                    return Err(FormatError::Corrupt {
                        blob: label.clone(),
                        reason: format!(
                            "truncated envelope: {} bytes, need {ENVELOPE_LEN}",
                            head.len()
                        ),
                    }
                    .into())
                }
            };
            envelope.check_len(body_bytes, &label)?;
            envelope.check_checksum(hasher.finish(), &label)?;
            file.sync_all().map_err(io("fsync temp file", &tmp))?;
            drop(file);
            std::fs::rename(&tmp, &dest).map_err(io("rename into cache", &dest))?;
            sync_dir(&self.dir)?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        Ok(dest)
    }

    /// Removes a cached blob (one found corrupt, or no longer needed).
    /// Existing mappings of it stay valid.
    pub fn evict(&self, name: &BlobName) -> Result<(), StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove cached blob", &path)(e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync cache directory", dir))
}

pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(
            &[std::process::id() as u64, nanos, n]
                .map(u64::to_le_bytes)
                .concat()
        )
    )
}
