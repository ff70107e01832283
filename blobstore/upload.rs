//! Writing large blobs with bounded memory, create-only.
//!
//! A [`BlobWriter`] takes a blob in chunks. Up to one part's worth
//! ([`UploadOptions::part_size`]) it only buffers, and a blob that ends
//! there goes up as one create-only put, like [`BlobStore::create`]. A
//! larger blob goes up as a multipart upload, so the writer never holds
//! more than `part_size * (max_concurrent_parts + 1)` bytes of its own.
//!
//! # Why a temporary name
//!
//! A multipart upload cannot be made create-only through object_store 0.14:
//! `PutMultipartOptions` has no `PutMode`, and its S3 backend completes
//! uploads unconditionally (the `If-None-Match: *` completion exists inside
//! it, but only for `copy_if_not_exists`). A plain multipart upload to the
//! final name would overwrite an existing blob, which burrow forbids.
//!
//! So a large blob is uploaded to a unique temporary name under
//! `<prefix>/upload/`, then moved into place with
//! [`ObjectStoreExt::copy_if_not_exists`], which every backend does
//! atomically and create-only: the local directory with a hard link, the
//! in-memory store under its lock, S3 with a one-part multipart *copy*
//! completed with `If-None-Match: *` (moto implements both the copy and the
//! condition; MinIO and AWS do too). The copy is server-side: the bytes are
//! not sent twice. Then the temporary object is deleted.
//!
//! Consequences, each deliberate:
//!
//! - Before uploading, the writer checks that the final name is free, so a
//!   writer that would lose does not upload gigabytes first. The check is
//!   only an optimisation; the copy is what decides.
//! - AWS S3 copies at most 5 GiB in one part, so on AWS a blob above 5 GiB
//!   fails at the copy with the backend's error. Snapshots that large
//!   should be split by type.
//! - A process that dies mid-upload leaves an incomplete multipart upload
//!   (S3: use a lifecycle rule that aborts them) or a temporary object under
//!   `upload/`. Neither is ever read: blob names are parsed, and `upload/`
//!   is not one of them. [`crate::gc::sweep_leftovers`] deletes old ones.
//! - If the temporary object cannot be deleted after a successful move, the
//!   blob *is* created, so `finish` succeeds and logs the failure at warn
//!   level; reporting an error would make the caller retry a create that can
//!   only fail with `AlreadyExists`. The leftover is swept like any other.

use super::{BlobName, BlobStore, StoreError, UploadOptions};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, WriteMultipart};

/// The directory, under the dataset prefix, of temporary upload objects.
pub(crate) const UPLOAD_DIR: &str = "upload";

/// Writes one blob in chunks; see the [module docs](self). Dropping a
/// writer without [`BlobWriter::finish`] creates nothing (an upload in
/// progress is left for the store's lifecycle rules and
/// [`crate::gc::sweep_leftovers`]; call [`BlobWriter::abort`] to clean up
/// at once).
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    name: BlobName,
    options: UploadOptions,
    written: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Less than one part so far.
    Buffering { chunks: Vec<Bytes>, len: usize },
    /// A multipart upload to `temp` is under way.
    Uploading {
        temp: ObjectPath,
        upload: WriteMultipart,
    },
}

impl BlobWriter {
    pub(crate) fn new(store: BlobStore, name: BlobName) -> Self {
        let options = store.upload.clone();
        BlobWriter {
            store,
            name,
            options,
            written: 0,
            state: State::Buffering {
                chunks: Vec::new(),
                len: 0,
            },
        }
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Adds `chunk` to the blob. Waits while `max_concurrent_parts` parts
    /// are in flight, so memory stays bounded however fast the caller is.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        match &mut self.state {
            State::Buffering { chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                if *len > self.options.part_size {
                    let chunks = std::mem::take(chunks);
                    self.start_upload(chunks).await?;
                }
                Ok(())
            }
            State::Uploading { upload, .. } => {
                let waited = upload
                    .wait_for_capacity(self.options.max_concurrent_parts)
                    .await;
                if let Err(e) = waited {
                    return Err(self.fail("upload part", e).await);
                }
                if let State::Uploading { upload, .. } = &mut self.state {
                    upload.put(chunk);
                }
                Ok(())
            }
        }
    }

    async fn start_upload(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let label = self.name.to_string();
        // Losing writers should not upload first (see the module docs).
        match self.store.inner.head(&self.store.path(&self.name)).await {
            Ok(_) => return Err(StoreError::AlreadyExists { name: label }),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError::from_backend("head", &label, e)),
        }
        let temp = self.store.path_of(&format!(
            "{UPLOAD_DIR}/{}.{}",
            self.name.cache_file_name(),
            super::cache::unique_suffix()
        ));
        let multipart = self
            .store
            .inner
            .put_multipart(&temp)
            .await
            .map_err(|e| StoreError::from_backend("start multipart upload", &label, e))?;
        let mut upload = WriteMultipart::new_with_chunk_size(multipart, self.options.part_size);
        for chunk in chunks {
            upload.put(chunk);
        }
        self.state = State::Uploading { temp, upload };
        Ok(())
    }

    /// Aborts the upload after `source`, and returns the error to report.
    async fn fail(&mut self, op: &'static str, source: object_store::Error) -> StoreError {
        let state = std::mem::replace(
            &mut self.state,
            State::Buffering {
                chunks: Vec::new(),
                len: 0,
            },
        );
        if let State::Uploading { upload, temp } = state {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(temp = %temp, error = %abort, "could not abort a failed multipart upload");
            }
        }
        StoreError::from_backend(op, &self.name.to_string(), source)
    }

    /// Creates the blob from everything written. [`StoreError::AlreadyExists`]
    /// if the name is taken, before or during the upload.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let label = self.name.to_string();
        let state = std::mem::replace(
            &mut self.state,
            State::Buffering {
                chunks: Vec::new(),
                len: 0,
            },
        );
        match state {
            State::Buffering { chunks, .. } => {
                self.store.create(&self.name, chunks).await?;
            }
            State::Uploading { temp, upload } => {
                upload.finish().await.map_err(|e| {
                    StoreError::from_backend("complete multipart upload", &label, e)
                })?;
                let dest = self.store.path(&self.name);
                let moved = self.store.inner.copy_if_not_exists(&temp, &dest).await;
                if let Err(error) = self.store.inner.delete(&temp).await {
                    tracing::warn!(temp = %temp, %error, "could not delete a temporary upload; gc::sweep_leftovers will");
                }
                moved.map_err(|e| StoreError::from_backend("create", &label, e))?;
            }
        }
        Ok(self.written)
    }

    /// Gives up: nothing is created and a multipart upload is aborted.
    pub async fn abort(mut self) -> Result<(), StoreError> {
        let state = std::mem::replace(
            &mut self.state,
            State::Buffering {
                chunks: Vec::new(),
                len: 0,
            },
        );
        if let State::Uploading { upload, .. } = state {
            upload.abort().await.map_err(|e| {
                StoreError::from_backend("abort multipart upload", &self.name.to_string(), e)
            })?;
        }
        Ok(())
    }
}

impl BlobStore {
    /// A writer for a new blob `name`, for blobs too large to hold twice in
    /// memory. See [`BlobWriter`].
    pub fn writer(&self, name: &BlobName) -> BlobWriter {
        BlobWriter::new(self.clone(), *name)
    }
}
