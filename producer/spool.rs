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
//! disk, the work directory removed) is [`ProducerError::WorkDir`], naming
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
    ProducerError::WorkDir {
        dir: dir.to_path_buf(),
        action: format!("{blob}: cannot {op} its spool file"),
        source,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::blob::{
        stream_delta, stream_snapshot, write_delta, write_snapshot, DatasetSchema, DeltaTypeSource,
        HeaderInfo, OpenBlob, SnapshotRecords, SnapshotTypeSource,
    };
    use crate::schema::envelope::BlobKind;
    use crate::schema::every_capnp::every;
    use crate::schema::library_capnp::shelf;
    use crate::schema::movies_capnp::movie;
    use crate::schema::record::TypeInfo;

    /// Records by ordinal (`None`: a hole), canonical, with the hash of
    /// their key (field `id`).
    struct Records(Vec<Option<(Vec<u64>, u64)>>);

    impl SnapshotRecords for Records {
        fn record(&self, ordinal: u32) -> Option<(&[u64], u64)> {
            let (words, hash) = self.0[ordinal as usize].as_ref()?;
            Some((words, *hash))
        }
    }

    fn keyed(info: &TypeInfo, records: Vec<Option<Vec<u64>>>) -> Records {
        let spec = crate::schema::key::KeySpec::resolve(info, &["id"]).unwrap();
        Records(
            records
                .into_iter()
                .map(|r| {
                    r.map(|words| {
                        let mut key = crate::schema::key::KeyBuf::new();
                        assert!(spec.encode_words(&words, &mut key));
                        let hash = key.hash();
                        (words, hash)
                    })
                })
                .collect(),
        )
    }

    fn canonical<T: capnp::traits::Owned>(build: impl FnOnce(T::Builder<'_>)) -> Vec<u64>
    where
        for<'a> T::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
    {
        let mut message = capnp::message::Builder::new_default();
        build(message.init_root::<T::Builder<'_>>());
        let mut out = Vec::new();
        crate::schema::record::append_canonical(
            message.get_root_as_reader().unwrap(),
            None,
            &mut Vec::new(),
            &mut out,
        )
        .unwrap();
        out
    }

    /// `n` movies, every seventh ordinal a hole; tags from a small set
    /// (interned), titles unique (not interned).
    fn movies(n: u64) -> Records {
        let tags = ["action", "drama", "comedy", "noir"];
        keyed(
            &TypeInfo::of::<movie::Owned>(),
            (0..n)
                .map(|i| {
                    (i % 7 != 3).then(|| {
                        canonical::<movie::Owned>(|mut m| {
                            m.set_id(i);
                            m.set_year(1900 + (i % 120) as u32);
                            m.set_title(format!("Title number {i}").as_str());
                            let mut t = m.init_tags((i % 3) as u32);
                            for k in 0..(i % 3) as u32 {
                                t.set(k, tags[((i + k as u64) % 4) as usize]);
                            }
                        })
                    })
                })
                .collect(),
        )
    }

    /// `n` shelves: nested structs, unions, groups, lists of structs.
    fn shelves(n: u64) -> Records {
        keyed(
            &TypeInfo::of::<shelf::Owned>(),
            (0..n)
                .map(|i| {
                    Some(canonical::<shelf::Owned>(|mut s| {
                        s.set_id(i);
                        s.set_label(format!("shelf {}", i % 5).as_str());
                        let mut books = s.reborrow().init_books((i % 3) as u32);
                        for b in 0..(i % 3) as u32 {
                            let mut book = books.reborrow().get(b);
                            book.set_title(format!("book {b} of {i}").as_str());
                            book.set_pages(100 + b);
                        }
                        s.reborrow().get_location().set_room("east");
                        s.get_owner().set_library(i as u32);
                    }))
                })
                .collect(),
        )
    }

    fn source<'a>(
        info: &'a TypeInfo,
        key: &'a [String],
        records: &'a Records,
        slot: u16,
    ) -> SnapshotTypeSource<'a> {
        SnapshotTypeSource {
            info,
            key_fields: key,
            ordinal_limit: records.0.len() as u32,
            record_count: records.0.iter().flatten().count() as u32,
            slot,
            records,
            indexes: &[],
        }
    }

    fn spooled(work: &WorkDir, name: BlobName) -> Spool {
        Spool::new(work, &name).unwrap()
    }

    fn bytes(spool: &Spool) -> Vec<u8> {
        spool.read_chunk(0, spool.len() as usize).unwrap().to_vec()
    }

    /// Invariant: a blob streamed into a spool file is byte for byte the
    /// blob written in memory (one writer, two sinks), for snapshots and
    /// deltas of several types, with interned fields, holes, an empty
    /// type, types split into many lists, and enough records that the
    /// writer's element windows and child buffers fill and flush many
    /// times; and the spooled blob opens and verifies.
    #[test]
    fn streamed_blobs_equal_the_blobs_written_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::new(Some(dir.path().to_path_buf())).unwrap();
        let infos = [
            TypeInfo::of::<movie::Owned>(),
            TypeInfo::of::<shelf::Owned>(),
            TypeInfo::of::<every::Owned>(),
        ];
        let schema = DatasetSchema::of(&infos).unwrap();
        let (many, few, none) = (movies(70_000), shelves(3_000), Records(Vec::new()));
        let key = ["id".to_string()];
        let (many, few, none) = (&many, &few, &none);
        for shift in [28u8, 12, 3] {
            let mut head = HeaderInfo::for_test(&schema);
            head.max_list_shift = shift;
            let types = [
                source(&infos[0], &key, many, 0),
                source(&infos[1], &key, few, 2),
                source(&infos[2], &key, none, 1),
            ];
            let memory = write_snapshot(&head, &types).unwrap();
            let mut spool = spooled(&work, BlobName::Snapshot(1));
            let len = stream_snapshot(&head, &types, &mut spool).unwrap();
            assert_eq!(len, memory.len() as u64);
            assert!(bytes(&spool) == memory, "snapshot, list shift {shift}");
            let blob = OpenBlob::from_mmap(spool.map().unwrap(), "snapshot/1").unwrap();
            blob.verify().unwrap();
            blob.check_contents().unwrap();

            let set: Vec<(u32, &[u64], u64)> = many
                .0
                .iter()
                .enumerate()
                .filter_map(|(o, r)| Some((o as u32, &r.as_ref()?.0[..], 0)))
                .filter(|(o, _, _)| o % 2 == 0)
                .collect();
            let removed: Vec<(u32, u64)> = (0..500).map(|o| (o * 7 + 3, o as u64)).collect();
            let deltas = [DeltaTypeSource {
                type_id: infos[0].type_id,
                name: &infos[0].name,
                key_fields: &key,
                removed: &removed,
                set: &set,
                record_count_after: 60_000,
                ordinal_limit_after: 70_000,
                dropped: false,
                slot: 0,
            }];
            let memory = write_delta(BlobKind::Reverse, &head, &deltas).unwrap();
            let mut spool = spooled(&work, BlobName::Reverse(2, 1));
            stream_delta(BlobKind::Reverse, &head, &deltas, &mut spool).unwrap();
            assert!(bytes(&spool) == memory, "delta, list shift {shift}");
        }
        // Nothing is left in the work directory: spools have no name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Invariant: a compressed spool holds exactly what
    /// `Compression::compress` makes of the same blob (one set of encoder
    /// settings), and decodes back to the raw blob; without compression
    /// the raw spool itself is the object.
    #[test]
    fn a_compressed_spool_is_the_compressed_blob() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::new(Some(dir.path().to_path_buf())).unwrap();
        let info = TypeInfo::of::<movie::Owned>();
        let schema = DatasetSchema::of(std::slice::from_ref(&info)).unwrap();
        let head = HeaderInfo::for_test(&schema);
        let records = movies(20_000);
        let source = SnapshotTypeSource {
            info: &info,
            key_fields: &[],
            ordinal_limit: 20_000,
            record_count: records.0.iter().flatten().count() as u32,
            slot: 0,
            records: &records,
            indexes: &[],
        };
        let raw = write_snapshot(&head, std::slice::from_ref(&source)).unwrap();
        for compression in [Compression::Zstd { level: 1 }, Compression::None] {
            let mut spool = spooled(&work, BlobName::Snapshot(1));
            stream_snapshot(&head, std::slice::from_ref(&source), &mut spool).unwrap();
            let stored = spool.compressed(compression, &work).unwrap();
            let expected = compression.compress(Bytes::from(raw.clone())).unwrap();
            assert!(bytes(&stored) == expected, "{compression}");
            let back = crate::blobstore::compress::decode_stored(
                Bytes::from(bytes(&stored)),
                "snapshot/1",
                u64::MAX,
            )
            .unwrap();
            assert!(back == raw, "{compression}");
        }
    }

    /// Invariant: a spool that cannot be created names the blob and the
    /// work directory (here: the directory was removed after the producer
    /// checked it).
    #[test]
    fn a_spool_that_cannot_be_created_names_the_blob_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("work");
        std::fs::create_dir(&gone).unwrap();
        let work = WorkDir::new(Some(gone.clone())).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        let err = Spool::new(&work, &BlobName::Delta(1, 2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delta/") && err.contains(&gone.display().to_string()),
            "{err}"
        );
    }
}
