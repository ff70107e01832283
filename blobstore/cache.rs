//! A consumer's local cache of verified blobs, and the one place that opens
//! and maps them ([`BlobCache::map`], [`map_file`]; the format layer does
//! no I/O, it is handed the mapped bytes).
//!
//! A blob enters the cache only one way: streamed from the store into
//! `<dir>/<name>.tmp-<random>` while its checksum is computed, fsynced,
//! checked against its envelope, its contents proven (the records' layout
//! and a snapshot's key indexes: [`OpenBlob::check_contents`]), renamed
//! to `<dir>/<name>`, and the directory fsynced (file writes, fsyncs and
//! renames run on tokio's blocking pool, never on a worker thread). So a
//! file with a final name was whole and verified when it arrived; it is
//! never rewritten, so a mapping of it never changes under a reader. A
//! disk can still change it afterwards: the consumer re-verifies each file
//! the first time a process maps it (see [`crate::consumer`]) and evicts
//! one that fails.
//!
//! Blobs are kept per dataset, in `<dir>/<dataset id>/` ([`BlobCache::for_dataset`]):
//! the consumer caches by the dataset id of the announcements it follows,
//! so a store deleted and published again (a new dataset) is never read
//! through its predecessor's files.
//!
//! A stored object that is a zstd frame ([`super::compress`]) is
//! decompressed on the way into the temp file, chunk by chunk (no
//! whole-blob buffer): the checksum is computed over the decompressed
//! bytes, which are what the file holds and what is mapped. The
//! decompressed size is bounded by the cache's max blob bytes, by the
//! frame's declared content size and by the size its envelope declares;
//! a stream past any bound, cut short or corrupt is a
//! [`FormatError::Compression`] and its temp file is removed.
//!
//! The cache keeps what the consumer's current state maps plus a bounded
//! amount more; [`BlobCache::trim`] (in `retention.rs`) evicts the rest.
//!
//! One process owns a cache directory at a time: [`BlobCache::open`] takes
//! an exclusive lock on `<dir>/.lock` (`flock`, on Unix) held for the
//! cache's life, and a second owner gets [`StoreError::CacheInUse`]. Only
//! the owner removes leftover temp files (a process killed mid-fetch), so
//! start-up never deletes another process's fetch in progress.

use super::compress::{self, FrameDecoder};
use super::{BlobBody, BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::blob::OpenBlob;
use crate::schema::envelope::{BodyHasher, Envelope, ENVELOPE_LEN};
use crate::schema::DatasetId;
use futures::StreamExt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const TMP_MARK: &str = ".tmp-";

/// The lock file that marks a cache directory's owner.
pub const LOCK_FILE: &str = ".lock";

/// A directory of verified blobs, owned by this process while any clone of
/// it lives.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
    max_blob_bytes: u64,
    /// The open lock file; the lock is released when the last clone drops.
    _lock: Arc<File>,
}

/// Opens and maps a cache file (or any file holding one whole blob). The
/// envelope and the length are checked; the body checksum only when
/// `verify` is set (it reads every byte).
pub fn map_file(path: &Path, name: &str, verify: bool) -> Result<OpenBlob, Error> {
    let file = File::open(path).map_err(io("open cached blob", path))?;
    // SAFETY: cache files are created by rename after they are whole and
    // verified, and are never written again (the cache's contract), so the
    // mapped bytes do not change while mapped. Deleting the file leaves the
    // mapping valid.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("map cached blob", path))?;
    let blob = OpenBlob::from_mmap(map, name)?;
    if verify {
        blob.verify()?;
    }
    Ok(blob)
}

/// Takes the exclusive lock of a cache directory, or reports who holds it.
#[cfg(unix)]
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open cache lock file", &path))?;
    // SAFETY: flock on a descriptor `file` owns and keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(StoreError::CacheInUse {
                dir: dir.to_path_buf(),
            });
        }
        return Err(io("lock cache directory", &path)(err));
    }
    Ok(file)
}

/// Without `flock`, the lock file is only opened: nothing stops a second
/// owner (documented in the module).
#[cfg(not(unix))]
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open cache lock file", &path))
}

/// Removes the temp files of interrupted fetches from one directory.
fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io("read cache directory", dir))? {
        let entry = entry.map_err(io("read cache directory", dir))?;
        if entry.file_name().to_string_lossy().contains(TMP_MARK) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io("remove stale temp file", &path))?;
            tracing::info!(path = %path.display(), "removed a temp file left by an interrupted fetch");
        }
    }
    Ok(())
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl BlobCache {
    /// Opens (creating if needed) a cache directory, takes its lock
    /// ([`StoreError::CacheInUse`] if another owner holds it), and then
    /// removes temp files left by an interrupted fetch.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create cache directory", &dir))?;
        let lock = lock_dir(&dir)?;
        remove_temp_files(&dir)?;
        for entry in std::fs::read_dir(&dir).map_err(io("read cache directory", &dir))? {
            let entry = entry.map_err(io("read cache directory", &dir))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_temp_files(&entry.path())?;
            }
        }
        Ok(BlobCache {
            dir,
            max_blob_bytes: u64::MAX,
            _lock: Arc::new(lock),
        })
    }

    /// The part of this cache that holds dataset `id`'s blobs: the
    /// subdirectory `<dir>/<id>` (created if missing), under the same lock.
    /// Blobs are cached by dataset and name, so a store recreated at the
    /// same place (a new dataset) never reads its predecessor's files.
    pub fn for_dataset(&self, id: DatasetId) -> Result<BlobCache, StoreError> {
        let dir = self.dir.join(id.to_string());
        std::fs::create_dir_all(&dir).map_err(io("create cache directory", &dir))?;
        Ok(BlobCache {
            dir,
            max_blob_bytes: self.max_blob_bytes,
            _lock: Arc::clone(&self._lock),
        })
    }

    /// Refuses blobs larger than `bytes` (envelope included): stored
    /// objects, and what a compressed one decompresses to.
    pub fn with_max_blob_bytes(mut self, bytes: u64) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    /// The cache directory.
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

    /// Opens and maps the cached copy of `name` without reading its body
    /// (see [`map_file`]).
    pub fn map(&self, name: &BlobName) -> Result<OpenBlob, Error> {
        map_file(&self.path(name), &name.to_string(), false)
    }

    /// Returns the cached path of `name`, fetching and verifying it first if
    /// it is not cached yet.
    pub async fn fetch(&self, store: &BlobStore, name: &BlobName) -> Result<PathBuf, Error> {
        Ok(self.fetch_reporting(store, name).await?.0)
    }

    /// Like [`BlobCache::fetch`], and says whether the blob came from the
    /// store now (`true`: verified as it arrived) or was already cached.
    pub async fn fetch_reporting(
        &self,
        store: &BlobStore,
        name: &BlobName,
    ) -> Result<(PathBuf, bool), Error> {
        let dest = self.path(name);
        if dest.is_file() {
            return Ok((dest, false));
        }
        let label = name.to_string();
        let (size, body) = store.open_read(name).await?;
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
        let joined = |e: tokio::task::JoinError| -> Error {
            StoreError::Io {
                op: "write blob into the cache",
                path: tmp.clone(),
                source: std::io::Error::other(e),
            }
            .into()
        };
        let result = async {
            let incoming = {
                let (tmp, label) = (tmp.clone(), label.clone());
                let max = self.max_blob_bytes;
                tokio::task::spawn_blocking(move || Inflow::new(&tmp, label, size, max))
                    .await
                    .map_err(joined)??
            };
            let incoming = match body {
                BlobBody::Stream(mut stream) => {
                    // Chunks go to a writer on the blocking pool, so no
                    // write runs on a tokio worker.
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
                    let writer = tokio::task::spawn_blocking(move || {
                        let mut incoming = incoming;
                        while let Some(chunk) = rx.blocking_recv() {
                            incoming.push(&chunk)?;
                        }
                        Ok::<_, Error>(incoming)
                    });
                    let mut read_error = None;
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(chunk) => {
                                if tx.send(chunk).await.is_err() {
                                    break; // the writer stopped on an error
                                }
                            }
                            Err(e) => {
                                read_error = Some(StoreError::from_backend("read", &label, e));
                                break;
                            }
                        }
                    }
                    drop(tx);
                    let written = writer.await.map_err(joined)?;
                    if let Some(e) = read_error {
                        return Err(e.into());
                    }
                    written?
                }
                BlobBody::File(mut file) => {
                    // A local store's file: copy it with large reads on the
                    // blocking pool.
                    tokio::task::spawn_blocking(move || {
                        let mut incoming = incoming;
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = std::io::Read::read(&mut file, &mut buf).map_err(io(
                                "read blob from the local store",
                                &incoming.incoming.path,
                            ))?;
                            if n == 0 {
                                return Ok::<_, Error>(incoming);
                            }
                            incoming.push(&buf[..n])?;
                        }
                    })
                    .await
                    .map_err(joined)??
                }
            };
            let (tmp, dest, dir) = (tmp.clone(), dest.clone(), self.dir.clone());
            let label = label.clone();
            tokio::task::spawn_blocking(move || {
                incoming.finish()?;
                // The checksum held as it streamed; the body's structure is
                // proven before the file takes its final name.
                map_file(&tmp, &label, false)?.check_contents()?;
                crate::failpoint::hit("fetch-before-rename");
                std::fs::rename(&tmp, &dest).map_err(io("rename into cache", &dest))?;
                crate::failpoint::hit("fetch-after-rename");
                sync_dir(&dir)?;
                Ok::<_, Error>(())
            })
            .await
            .map_err(joined)?
        }
        .await;
        if let Err(err) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        Ok((dest, true))
    }

    /// Removes a cached blob (one found corrupt, or no longer needed), and
    /// says whether it was there. Existing mappings of it stay valid.
    pub fn evict(&self, name: &BlobName) -> Result<bool, StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove cached blob", &path)(e)),
        }
    }
}

/// A stored object arriving: raw, or a zstd frame decompressed on the way
/// (told apart by its first four bytes) into an [`Incoming`].
struct Inflow {
    incoming: Incoming,
    /// The stored object's size.
    size: u64,
    max: u64,
    mode: Mode,
}

enum Mode {
    /// The first bytes, until there are enough to tell raw from zstd.
    Sniff(Vec<u8>),
    Raw,
    Zstd(Box<FrameDecoder>),
}

impl Inflow {
    fn new(path: &Path, label: String, size: u64, max: u64) -> Result<Self, Error> {
        Ok(Inflow {
            incoming: Incoming::new(path, label)?,
            size,
            max,
            mode: Mode::Sniff(Vec::with_capacity(compress::ZSTD_MAGIC.len())),
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let incoming = &mut self.incoming;
        match &mut self.mode {
            Mode::Raw => incoming.push(chunk),
            Mode::Zstd(decoder) => decoder.push(chunk, &mut |out| incoming.push(out)),
            Mode::Sniff(head) => {
                let take = (compress::ZSTD_MAGIC.len() - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() < compress::ZSTD_MAGIC.len() {
                    return Ok(());
                }
                let head = std::mem::take(head);
                self.decide(&head)?;
                self.push(&head)?;
                self.push(&chunk[take..])
            }
        }
    }

    /// Picks raw or zstd by the object's first bytes.
    fn decide(&mut self, head: &[u8]) -> Result<(), Error> {
        self.mode = if compress::is_compressed(head) {
            Mode::Zstd(Box::new(FrameDecoder::new(&self.incoming.label, self.max)?))
        } else {
            self.incoming.size = Some(self.size);
            Mode::Raw
        };
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        if let Mode::Sniff(head) = &mut self.mode {
            // An object shorter than a zstd magic: raw, and too short.
            let head = std::mem::take(head);
            self.decide(&head)?;
            self.push(&head)?;
        }
        if let Mode::Zstd(decoder) = self.mode {
            decoder.finish()?;
        }
        self.incoming.finish()
    }
}

/// A blob arriving in a temp file: written, hashed and checked as it comes.
struct Incoming {
    file: File,
    path: PathBuf,
    label: String,
    /// The raw object's size, which its envelope must declare (`None` for
    /// a zstd frame, whose decoder checks the envelope against the frame).
    size: Option<u64>,
    head: Vec<u8>,
    envelope: Option<Envelope>,
    hasher: BodyHasher,
    body_bytes: u64,
}

impl Incoming {
    fn new(path: &Path, label: String) -> Result<Self, Error> {
        // The cache's directory is made when the cache is opened; one
        // removed since (by hand, or a disk replaced under it) is made
        // again rather than failing every fetch from then on.
        let file = match File::create(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io("create cache directory", dir))?;
                }
                File::create(path)
            }
            other => other,
        }
        .map_err(io("create temp file", path))?;
        Ok(Incoming {
            file,
            path: path.to_path_buf(),
            label,
            size: None,
            head: Vec::with_capacity(ENVELOPE_LEN),
            envelope: None,
            hasher: BodyHasher::new(),
            body_bytes: 0,
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), Error> {
        // With failpoints, written in two halves so that a crash test can
        // kill the process with part of a chunk on disk.
        #[cfg(feature = "failpoints")]
        {
            let half = chunk.len() / 2;
            self.file
                .write_all(&chunk[..half])
                .map_err(io("write temp file", &self.path))?;
            crate::failpoint::hit("fetch-mid-write");
            self.file
                .write_all(&chunk[half..])
                .map_err(io("write temp file", &self.path))?;
        }
        #[cfg(not(feature = "failpoints"))]
        self.file
            .write_all(chunk)
            .map_err(io("write temp file", &self.path))?;
        let mut rest = chunk;
        if self.envelope.is_none() {
            let take = (ENVELOPE_LEN - self.head.len()).min(rest.len());
            self.head.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.head.len() == ENVELOPE_LEN {
                let env = Envelope::decode(&self.head, &self.label)?;
                match self.size {
                    Some(size) if ENVELOPE_LEN as u64 + env.body_len != size => {
                        return Err(FormatError::Corrupt {
                            blob: self.label.clone(),
                            reason: format!(
                                "the store says the blob is {size} bytes, its envelope says {}",
                                ENVELOPE_LEN as u64 + env.body_len
                            ),
                        }
                        .into());
                    }
                    _ => {}
                }
                self.envelope = Some(env);
            }
        }
        self.body_bytes += rest.len() as u64;
        // A store that sends more than it said it holds is cut off here,
        // not when the disk is full.
        if let Some(env) = &self.envelope {
            if self.body_bytes > env.body_len {
                return Err(FormatError::Corrupt {
                    blob: self.label.clone(),
                    reason: format!(
                        "the store sent more than the {} body bytes its envelope says",
                        env.body_len
                    ),
                }
                .into());
            }
        }
        self.hasher.update(rest);
        Ok(())
    }

    /// Checks length and checksum, then makes the file durable.
    fn finish(self) -> Result<(), Error> {
        let Some(envelope) = self.envelope else {
            return Err(FormatError::Corrupt {
                blob: self.label,
                reason: format!(
                    "truncated envelope: {} bytes, need {ENVELOPE_LEN}",
                    self.head.len()
                ),
            }
            .into());
        };
        envelope.check_len(self.body_bytes, &self.label)?;
        envelope.check_checksum(self.hasher.finish(), &self.label)?;
        self.file
            .sync_all()
            .map_err(io("fsync temp file", &self.path))?;
        Ok(())
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
