//! Reading blob bodies in place: an [`OpenBlob`] holds a blob's bytes,
//! and its sections expose each type's lists as bounds-checked slices of
//! them.

use super::{Layout, MAX_TYPES};
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, header, snapshot};
use crate::schema::dataset_id::{check_same, DatasetId};
use crate::schema::envelope::{BlobKind, Envelope, ENVELOPE_LEN};
use crate::schema::key_index;
use crate::schema::node_key::NodeKey;
use capnp::message::ReaderOptions;
use capnp::serialize::NoAllocBufferSegments;
use std::sync::Arc;

/// A blob's bytes held for reading: a read-only map of a verified cache
/// file, or owned, 8-byte aligned memory.
pub struct OpenBlob {
    name: String,
    envelope: Envelope,
    data: BlobBytes,
}

enum BlobBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u64>),
}

impl std::fmt::Debug for OpenBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenBlob({}, {:?})", self.name, self.envelope)
    }
}

impl OpenBlob {
    /// Takes a blob from an already-mapped file: no I/O, the format layer
    /// maps no files (the cache does: [`crate::blobstore::cache::map_file`]).
    /// The envelope and the map's length are checked; the body checksum
    /// only by [`OpenBlob::verify`] (a cache verifies a file when it enters
    /// the cache, and a consumer re-verifies it in the background).
    ///
    /// The caller guarantees what the map's safety rests on: the file is
    /// immutable while mapped.
    pub fn from_mmap(map: memmap2::Mmap, name: &str) -> Result<Self, FormatError> {
        let envelope = Envelope::decode(&map, name)?;
        envelope.check_len((map.len() - ENVELOPE_LEN) as u64, name)?;
        Ok(OpenBlob {
            name: name.to_string(),
            envelope,
            data: BlobBytes::Mapped(map),
        })
    }

    /// Checks the body against the envelope's checksum (a blob taken with
    /// `verify` off, e.g. re-verified in the background after open).
    pub fn verify(&self) -> Result<(), FormatError> {
        self.envelope.verify_body(self.body(), &self.name)
    }

    /// Takes a whole blob from memory, verifying envelope and checksum.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, FormatError> {
        let (envelope, _) = Envelope::open(bytes, name)?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: reinterpreting the u64 buffer as bytes of the same length.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8)
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        Ok(OpenBlob {
            name: name.to_string(),
            envelope,
            data: BlobBytes::Owned(words),
        })
    }

    /// The blob's name, as its errors report it (`snapshot/7`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The blob's envelope: kind, versions, body length and checksum.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            BlobBytes::Mapped(m) => m,
            BlobBytes::Owned(w) => &crate::schema::record::words_as_bytes(w)
                [..ENVELOPE_LEN + self.envelope.body_len as usize],
        }
    }

    /// The body: a standard Cap'n Proto message, 8-byte aligned.
    pub fn body(&self) -> &[u8] {
        &self.bytes()[ENVELOPE_LEN..]
    }

    /// Total size, envelope included.
    pub fn len(&self) -> u64 {
        ENVELOPE_LEN as u64 + self.envelope.body_len
    }

    /// Always `false`: a blob holds at least its envelope.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn corrupt(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            blob: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn message(&self) -> Result<capnp::message::Reader<NoAllocBufferSegments<&[u8]>>, FormatError> {
        // The body is read once, at open, for its list positions: a well
        // formed body is traversed about once. The limit stops a body whose
        // pointers share targets, or whose lists of zero-sized structs claim
        // 2^29 elements in no space, from making that read (and the
        // sections it allocates) unbounded.
        let words = self.envelope.body_len / 8;
        let options = ReaderOptions {
            traversal_limit_in_words: Some(
                usize::try_from(words.saturating_mul(2).saturating_add(1 << 12))
                    .unwrap_or(usize::MAX),
            ),
            nesting_limit: 16,
        };
        let mut body = self.body();
        let segments = NoAllocBufferSegments::from_slice(&mut body, options)
            .map_err(|e| FormatError::capnp(&self.name, "segment table", e))?;
        Ok(capnp::message::Reader::new(segments, options))
    }

    /// A slice of the blob as `T`s, checked to lie inside the blob.
    fn region<T: Copy>(
        self: &Arc<Self>,
        slice: Option<&[T]>,
        what: &str,
    ) -> Result<Region<T>, FormatError> {
        let slice = slice.ok_or_else(|| {
            self.corrupt(format!("{what} is not a list of the expected element size"))
        })?;
        let bytes = self.bytes();
        let start = slice.as_ptr() as usize;
        let end = start + std::mem::size_of_val(slice);
        let base = bytes.as_ptr() as usize;
        if slice.is_empty() {
            return Ok(Region {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
                _blob: self.clone(),
            });
        }
        if start < base
            || end > base + bytes.len()
            || !start.is_multiple_of(std::mem::align_of::<T>())
        {
            return Err(self.corrupt(format!("{what} lies outside the blob")));
        }
        Ok(Region {
            ptr: slice.as_ptr(),
            len: slice.len(),
            _blob: self.clone(),
        })
    }

    /// Maps a Cap'n Proto error to a `Corrupt` error naming this blob.
    fn cap(&self, what: &'static str) -> impl Fn(capnp::Error) -> FormatError + '_ {
        move |e| FormatError::capnp(&self.name, what, e)
    }

    /// A list field of primitives as a region of the blob.
    fn list<T: capnp::private::layout::PrimitiveElement + Copy>(
        self: &Arc<Self>,
        list: capnp::Result<capnp::primitive_list::Reader<'_, T>>,
        what: &'static str,
    ) -> Result<Region<T>, FormatError> {
        self.region(list.map_err(self.cap(what))?.as_slice(), what)
    }

    fn check_type_count(&self, count: u32) -> Result<(), FormatError> {
        if count > MAX_TYPES {
            return Err(FormatError::TooLarge {
                blob: self.name.clone(),
                what: "number of types",
                value: count.into(),
                limit: MAX_TYPES.into(),
            });
        }
        Ok(())
    }

    fn expect_kind(&self, ok: bool, expected: &str) -> Result<(), FormatError> {
        if ok {
            return Ok(());
        }
        Err(self.corrupt(format!(
            "expected {expected}, found a {}",
            self.envelope.kind.as_str()
        )))
    }

    /// Runs `read` on the message's root, read as `L`.
    fn with_root<L: Layout, T>(
        &self,
        read: impl FnOnce(L::Reader<'_>) -> Result<T, FormatError>,
    ) -> Result<T, FormatError> {
        let message = self.message()?;
        let root = message
            .get_root::<L::Reader<'_>>()
            .map_err(self.cap(L::ROOT))?;
        read(root)
    }

    /// Runs `read` on the header (of a snapshot, delta or reverse delta).
    fn with_header<T>(
        &self,
        read: impl FnOnce(header::Reader<'_>) -> Result<T, FormatError>,
    ) -> Result<T, FormatError> {
        fn header_of<L: Layout, T>(
            blob: &OpenBlob,
            read: impl FnOnce(header::Reader<'_>) -> Result<T, FormatError>,
        ) -> Result<T, FormatError> {
            blob.with_root::<L, T>(|root| read(L::header(&root).map_err(blob.cap("header"))?))
        }
        match self.envelope.kind {
            BlobKind::Snapshot => header_of::<snapshot::Owned, T>(self, read),
            BlobKind::Delta | BlobKind::Reverse => header_of::<delta::Owned, T>(self, read),
            BlobKind::Announcement => {
                Err(self.corrupt("expected a snapshot or delta, found an announcement"))
            }
        }
    }

    /// Reads the header and every type entry of a blob whose root is `L`
    /// (refusing a blob of another kind and more than [`MAX_TYPES`]
    /// types), each entry turned into a section by `section`.
    fn sections<L: Layout, S>(
        &self,
        mut section: impl FnMut(
            <L::Entry as capnp::traits::OwnedStruct>::Reader<'_>,
        ) -> Result<S, FormatError>,
    ) -> Result<(BlobHeader, Vec<S>), FormatError> {
        self.expect_kind(L::holds(self.envelope.kind), L::EXPECTED)?;
        self.with_root::<L, _>(|root| {
            let header =
                BlobHeader::read(L::header(&root).map_err(self.cap("header"))?, &self.name)?;
            let types = L::types(&root).map_err(self.cap("types"))?;
            self.check_type_count(types.len())?;
            let sections = types.iter().map(&mut section).collect::<Result<_, _>>()?;
            Ok((header, sections))
        })
    }

    /// Reads only the header (of a snapshot, delta or reverse delta): what
    /// a reader checks before it uses the blob.
    pub fn header(&self) -> Result<BlobHeader, FormatError> {
        self.with_header(|header| BlobHeader::read(header, &self.name))
    }

    /// The dataset the blob belongs to (read from its header).
    pub fn dataset_id(&self) -> Result<DatasetId, FormatError> {
        Ok(self.header()?.dataset_id)
    }

    /// The primary key of type `type_id` (fields `key_fields`), resolved
    /// against the schema node this blob's header carries: how a reader
    /// without generated code for the type encodes its keys (see
    /// [`crate::schema::node_key`]).
    pub fn node_key(&self, type_id: u64, key_fields: &[String]) -> Result<NodeKey, FormatError> {
        self.with_header(|header| {
            let nodes = header.get_nodes().map_err(self.cap("nodes"))?;
            let node = nodes
                .iter()
                .find(|n| n.get_id() == type_id)
                .ok_or_else(|| self.corrupt(format!("no schema node for type {type_id:#018x}")))?;
            NodeKey::resolve(node, key_fields)
                .map_err(|reason| self.corrupt(format!("type {type_id:#018x}: {reason}")))
        })
    }

    /// Reads a snapshot's header and sections.
    pub fn snapshot(self: &Arc<Self>) -> Result<(BlobHeader, Vec<SnapshotSection>), FormatError> {
        self.sections::<snapshot::Owned, _>(|t| {
            let name = text(t.get_name(), &self.name, "type name")?;
            let offsets = self.list(t.get_offsets(), "offsets")?;
            let words = self.list(t.get_words(), "words")?;
            let key_index = self.list(t.get_key_index(), "key index")?;
            key_index::check_shape(key_index.get().len())
                .map_err(|reason| self.corrupt(format!("{name}: {reason}")))?;
            let ordinal_limit = offsets.get().len().saturating_sub(1);
            if ordinal_limit > u32::MAX as usize - 1 {
                return Err(self.corrupt(format!("{name}: too many ordinals")));
            }
            Ok(SnapshotSection {
                type_id: t.get_type_id(),
                key_fields: texts(t.get_key_fields(), &self.name)?,
                name,
                record_count: t.get_record_count(),
                ordinal_limit: ordinal_limit as u32,
                offsets,
                words,
                key_index,
            })
        })
    }

    /// Reads a delta's (or reverse delta's) header and sections.
    pub fn delta(self: &Arc<Self>) -> Result<(BlobHeader, Vec<DeltaSection>), FormatError> {
        let mut seen = std::collections::HashSet::new();
        self.sections::<delta::Owned, _>(|t| {
            let name = text(t.get_name(), &self.name, "type name")?;
            let section = DeltaSection {
                type_id: t.get_type_id(),
                key_fields: texts(t.get_key_fields(), &self.name)?,
                removed: self.list(t.get_removed(), "removed")?,
                removed_hashes: self.list(t.get_removed_key_hashes(), "removed key hashes")?,
                ordinals: self.list(t.get_ordinals(), "ordinals")?,
                key_hashes: self.list(t.get_key_hashes(), "key hashes")?,
                offsets: self.list(t.get_offsets(), "offsets")?,
                words: self.list(t.get_words(), "words")?,
                record_count_after: t.get_record_count_after(),
                ordinal_limit_after: t.get_ordinal_limit_after(),
                dropped: t.get_dropped(),
                name,
            };
            if !seen.insert(section.type_id) {
                return Err(self.corrupt(format!(
                    "{}: the type appears twice in one delta",
                    section.name
                )));
            }
            if section.dropped
                && (!section.removed.get().is_empty()
                    || !section.ordinals.get().is_empty()
                    || section.record_count_after != 0
                    || section.ordinal_limit_after != 0)
            {
                return Err(self.corrupt(format!(
                    "{}: drops the type and also changes its records",
                    section.name
                )));
            }
            let n = section.ordinals.get().len();
            if section.removed.get().len() != section.removed_hashes.get().len()
                || section.key_hashes.get().len() != n
                || section.offsets.get().len() != n + 1
            {
                return Err(
                    self.corrupt(format!("{}: delta lists disagree in length", section.name))
                );
            }
            Ok(section)
        })
    }
}

fn text(
    t: capnp::Result<capnp::text::Reader<'_>>,
    blob: &str,
    what: &str,
) -> Result<String, FormatError> {
    t.and_then(|t| t.to_string().map_err(Into::into))
        .map_err(|e| FormatError::capnp(blob, what, e))
}

fn texts(
    t: capnp::Result<capnp::text_list::Reader<'_>>,
    blob: &str,
) -> Result<Vec<String>, FormatError> {
    let list = t.map_err(|e| FormatError::capnp(blob, "key fields", e))?;
    list.iter().map(|x| text(x, blob, "key field")).collect()
}

/// A slice of an [`OpenBlob`] that keeps the blob alive.
pub struct Region<T> {
    ptr: *const T,
    len: usize,
    _blob: Arc<OpenBlob>,
}

// SAFETY: a Region is an immutable view of memory owned by the Arc'd blob it
// holds; the memory is never written while mapped, so sharing it across
// threads is as safe as sharing `&[T]`.
unsafe impl<T: Sync> Send for Region<T> {}
unsafe impl<T: Sync> Sync for Region<T> {}

impl<T> Region<T> {
    /// The region's elements, borrowed from the blob.
    #[inline]
    pub fn get(&self) -> &[T] {
        // SAFETY: `ptr..ptr+len` was checked to lie inside the blob, aligned
        // for T, when the Region was made; `_blob` keeps that memory alive
        // and it is never written.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The header of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader {
    /// The dataset the blob belongs to (never zero: a blob without one is
    /// refused when its header is read).
    pub dataset_id: DatasetId,
    /// The version a delta starts from (for a reverse delta, the newer
    /// one); 0 for a snapshot.
    pub from_version: u64,
    /// The version the blob makes.
    pub to_version: u64,
    /// The id of the producer that wrote the blob.
    pub producer_id: String,
    /// When the writing cycle began, in microseconds since the Unix epoch.
    pub cycle_start_micros: i64,
    /// The schema hash (see [`super::DatasetSchema::hash`]): equal
    /// hashes mean the same schema nodes.
    pub schema_hash: u64,
    /// How many schema nodes the header carries (every struct and enum
    /// the dataset's types reach).
    pub node_count: u32,
    /// The producer's header tags, as (key, value) pairs in written order.
    pub tags: Vec<(String, String)>,
}

impl BlobHeader {
    fn read(h: header::Reader<'_>, blob: &str) -> Result<Self, FormatError> {
        let mut tags = Vec::new();
        for t in h
            .get_tags()
            .map_err(|e| FormatError::capnp(blob, "tags", e))?
        {
            tags.push((
                text(t.get_key(), blob, "tag key")?,
                text(t.get_value(), blob, "tag value")?,
            ));
        }
        Ok(BlobHeader {
            dataset_id: DatasetId::read(h.get_dataset_id_hi(), h.get_dataset_id_lo(), blob)?,
            from_version: h.get_from_version(),
            to_version: h.get_to_version(),
            producer_id: text(h.get_producer_id(), blob, "producer id")?,
            cycle_start_micros: h.get_cycle_start_micros(),
            schema_hash: h.get_schema_hash(),
            node_count: h
                .get_nodes()
                .map_err(|e| FormatError::capnp(blob, "nodes", e))?
                .len(),
            tags,
        })
    }
}

/// Checks that `blob` belongs to the dataset `expected`: the id of the
/// announcement a reader planned by, or of the state a blob is applied to.
/// [`FormatError::DatasetMismatch`] naming the blob and both ids if not;
/// `Corrupt` if the blob has no identity or its header does not read.
///
/// A consumer calls it on every blob it fetched or mapped from its cache,
/// before building a state from it, with the `dataset_id` of the
/// announcement it planned by: a cache file left by another dataset under
/// the same name then fails here, as the cache's file, instead of being
/// served.
pub fn check_dataset(blob: &OpenBlob, expected: DatasetId) -> Result<(), FormatError> {
    check_same(blob.name(), expected, blob.dataset_id()?)
}

/// One type of a snapshot.
pub struct SnapshotSection {
    /// The Cap'n Proto node id of the type's struct.
    pub type_id: u64,
    /// The type's display name (e.g. `movies.capnp:Movie`).
    pub name: String,
    /// The primary key's field names, in key order; empty for a type
    /// without a primary key.
    pub key_fields: Vec<String>,
    /// Number of records (ordinals below `ordinal_limit` that are not
    /// holes).
    pub record_count: u32,
    /// One past the highest ordinal; `offsets` has `ordinal_limit + 1`
    /// entries.
    pub ordinal_limit: u32,
    /// Ordinal `o`'s record is `words[offsets[o]..offsets[o + 1]]`, an
    /// empty range for a hole (read it with [`record_at`]).
    pub offsets: Region<u32>,
    /// The records' canonical Cap'n Proto words, in ordinal order.
    pub words: Region<u64>,
    /// The type's key index ([`crate::schema::key_index`]); empty for a
    /// type without a primary key.
    pub key_index: Region<u64>,
}

/// One type of a delta.
pub struct DeltaSection {
    /// The Cap'n Proto node id of the type's struct.
    pub type_id: u64,
    /// The type's display name.
    pub name: String,
    /// The primary key's field names, in key order; empty for a type
    /// without a primary key.
    pub key_fields: Vec<String>,
    /// Ordinals whose records the delta removes, sorted.
    pub removed: Region<u32>,
    /// The key hash of each removed record, one per entry of `removed`.
    pub removed_hashes: Region<u64>,
    /// Ordinals the delta sets (new or changed records), sorted.
    pub ordinals: Region<u32>,
    /// The key hash of each set record, one per entry of `ordinals`.
    pub key_hashes: Region<u64>,
    /// `ordinals.len() + 1` entries: the `i`-th set record is
    /// `words[offsets[i]..offsets[i + 1]]` (read it with [`record_at`]).
    pub offsets: Region<u32>,
    /// The set records' canonical Cap'n Proto words, in `ordinals` order.
    pub words: Region<u64>,
    /// The type's record count once the delta is applied.
    pub record_count_after: u32,
    /// The type's ordinal limit (one past its highest ordinal) once the
    /// delta is applied.
    pub ordinal_limit_after: u32,
    /// The type leaves the state (see `TypeDelta.dropped`); the reader
    /// refuses a dropped section that also removes or sets records.
    pub dropped: bool,
}

/// Record `i` of a list of records stored as (offsets, words), bounds
/// checked: `None` for an empty record (a hole).
#[inline]
pub fn record_at<'a>(
    offsets: &[u32],
    words: &'a [u64],
    i: usize,
    blob: &str,
) -> Result<Option<&'a [u64]>, FormatError> {
    let (Some(&start), Some(&end)) = (offsets.get(i), offsets.get(i + 1)) else {
        return Err(FormatError::Corrupt {
            blob: blob.to_string(),
            reason: format!("record {i} is past the end of the offsets list"),
        });
    };
    let (start, end) = (start as usize, end as usize);
    if start > end || end > words.len() {
        return Err(FormatError::Corrupt {
            blob: blob.to_string(),
            reason: format!(
                "record {i} spans words {start}..{end}, outside 0..{}",
                words.len()
            ),
        });
    }
    Ok((start < end).then(|| &words[start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::blob::{write_snapshot, DatasetSchema, HeaderInfo};

    fn mapped(bytes: &[u8]) -> memmap2::Mmap {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        // SAFETY: an unnamed temp file this test alone holds and no longer
        // writes.
        unsafe { memmap2::Mmap::map(&file) }.unwrap()
    }

    /// A blob taken from a map without verifying is checked later by
    /// `verify`, which names the blob; with `verify` on, the open fails.
    #[test]
    fn from_mmap_checks_the_envelope_and_verify_the_body() {
        let schema = DatasetSchema::default();
        let head = HeaderInfo {
            dataset_id: DatasetId::mint(),
            from_version: 0,
            to_version: 1,
            producer_id: "p",
            cycle_start_micros: 0,
            schema: &schema,
            tags: &[],
        };
        let mut bytes = write_snapshot(&head, &[]).unwrap();
        let blob = OpenBlob::from_mmap(mapped(&bytes), "snapshot/1").unwrap();
        blob.verify().unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        let blob = OpenBlob::from_mmap(mapped(&bytes), "snapshot/1").unwrap();
        let err = blob.verify().unwrap_err().to_string();
        assert!(err.contains("snapshot/1"), "{err}");
        let err = OpenBlob::from_mmap(mapped(&bytes[..20]), "snapshot/1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated envelope"), "{err}");
    }
}
