//! Spool files: where the producer writes each blob of a cycle before it
//! puts it, so that no blob is ever whole in memory.
//!
//! A cycle streams each blob (delta, reverse delta, snapshot: one code
//! path) into a [`Spool`], an unlinked scratch file of the producer's work
//! directory (`workdir.rs`), through the format's [`BlobSink`]
//! (positional writes; the writer patches the envelope last, see
//! `schema/blob/write.rs`). The forward delta is read back through a
//! read-only map of its spool ([`Spool::map`]). Compression then streams
//! the raw spool into a second spool ([`Spool::compressed`]), the raw one
//! is dropped, and the publish step uploads from the file: one create-only
//! put of at most a part, or a multipart upload fed one part at a time
//! (`cycle.rs`). Memory stays bounded by the writer's buffers, zstd's
//! window and the upload's parts in flight; the spooled bytes are the page
//! cache's, which the kernel writes back and drops under pressure.
//!
//! A spool is never renamed or read by anyone else: it has no name from
//! the moment it is created, and its space is freed when it is dropped,
//! or when the process dies however it dies. A failed spool write (a full
//! disk, the work directory removed) is [`ProducerError::Spool`], naming
//! the blob and the work directory; the cycle stops at its write step.

use super::workdir::WorkDir;
use super::ProducerError;
use crate::blobstore::{BlobName, Compression};
use crate::error::Error;
use crate::schema::blob::BlobSink;
use bytes::Bytes;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One blob spooled in an unlinked scratch file.
#[derive(Debug)]
pub(super) struct Spool {
    file: File,
    /// One past the highest byte written.
    len: u64,
    /// The blob, for errors.
    blob: BlobName,
    /// The work directory, for errors.
    dir: PathBuf,
}

impl Spool {
    /// A new, empty spool for `blob` in `work`.
    pub(super) fn new(work: &WorkDir, blob: &BlobName) -> Result<Self, Error> {
        let dir = work.path().to_path_buf();
        let file = work
            .scratch(&blob.cache_file_name())
            .map_err(|source| spool_error(blob, &dir, "create", source))?;
        Ok(Spool {
            file,
            len: 0,
            blob: *blob,
            dir,
        })
    }

    /// The blob's length in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    fn fail(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| spool_error(&self.blob, &self.dir, op, source)
    }

    /// A read-only map of the whole spool, to read the blob back in place.
    pub(super) fn map(&self) -> Result<memmap2::Mmap, Error> {
        // SAFETY: the file is unlinked (no other process can open it) and
        // this producer writes it only before it is mapped; the map is
        // dropped before the spool is, and nothing writes the file while
        // a map of it lives (the spool is borrowed shared for the map's
        // use, and writing needs it exclusively).
        unsafe { memmap2::MmapOptions::new().map(&self.file) }.map_err(self.fail("map"))
    }

    /// The bytes `at..at + len` in memory (a part to upload, or a whole
    /// small blob).
    pub(super) fn read_chunk(&self, at: u64, len: usize) -> Result<Bytes, Error> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(self.fail("read"))?;
        Ok(Bytes::from(buf))
    }

    /// A reader of the whole spool from its start.
    fn reader(&self) -> SpoolReader<'_> {
        SpoolReader {
            file: &self.file,
            at: 0,
            end: self.len,
        }
    }

    /// The object to store for this raw blob: itself without compression,
    /// else a new spool holding its one zstd frame, streamed from this one
    /// in bounded memory ([`Compression::compress_stream`]).
    pub(super) fn compressed(
        self,
        compression: Compression,
        work: &WorkDir,
    ) -> Result<Self, Error> {
        if compression == Compression::None {
            return Ok(self);
        }
        let mut out = Spool::new(work, &self.blob)?;
        let src = BufReader::with_capacity(1 << 20, self.reader());
        let dst = BufWriter::with_capacity(1 << 20, &out.file);
        compression
            .compress_stream(src, self.len, dst)
            .map_err(|source| spool_error(&self.blob, &self.dir, "compress into", source))?;
        out.len = out.file.metadata().map_err(out.fail("measure"))?.len();
        Ok(out)
    }
}

/// Reads a spool sequentially by position (the file's own offset is not
/// used: every write is positional).
struct SpoolReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = (self.end - self.at).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the spool ends at byte {}, before its {} bytes",
                    self.at, self.end
                ),
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

impl BlobSink for Spool {
    type Error = Error;

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| spool_error(&self.blob, &self.dir, "write", source))?;
        self.len = self.len.max(offset + bytes.len() as u64);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(self.fail("read"))
    }
}

fn spool_error(
    blob: &BlobName,
    dir: &std::path::Path,
    op: &'static str,
    source: std::io::Error,
) -> Error {
    ProducerError::Spool {
        blob: blob.to_string(),
        dir: dir.to_path_buf(),
        op,
        source,
    }
    .into()
}
