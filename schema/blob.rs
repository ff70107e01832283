//! Writing and reading blob bodies: snapshots and deltas.
//!
//! Writing builds one single-segment Cap'n Proto message sized up front, so
//! record words are copied once into it, then framed by the envelope.
//! Reading never copies: a blob is held as an [`OpenBlob`] (a read-only map
//! of a cache file, or aligned owned memory), and each type's lists are
//! exposed as plain slices of it (`&[u32]`, `&[u64]`) through sections that
//! hold the blob alive. All reads of records go through bounds checks. The
//! blob's own message is read once, at open, for its list positions, with a
//! traversal limit of twice the body's size (a well-formed body is
//! traversed about once; the limit stops shared pointers and lists of
//! zero-sized structs from making that read unbounded), and each record is
//! read with its own bounded reader.

use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, header, snapshot, type_delta, type_snapshot};
use crate::schema::envelope::{frame, BlobKind, Envelope, ENVELOPE_LEN};
use crate::schema::record::TypeInfo;
use capnp::message::ReaderOptions;
use capnp::serialize::NoAllocBufferSegments;
use std::sync::Arc;

/// Cap'n Proto's bound on list elements (exclusive).
pub const MAX_LIST_ELEMENTS: usize = (1 << 29) - 1;
/// The most record types one blob may hold.
pub const MAX_TYPES: u32 = 1 << 12;

/// The schema nodes of a dataset's types, as canonical messages, and their
/// hash. Computed once per producer.
#[derive(Clone, Debug, Default)]
pub struct DatasetSchema {
    nodes: Vec<(u64, Vec<capnp::Word>)>,
    hash: u64,
}

impl DatasetSchema {
    /// The nodes of `types` and of every struct and enum their fields
    /// reach, sorted by id.
    pub fn of(types: &[TypeInfo]) -> capnp::Result<Self> {
        use capnp::introspect::TypeVariant;
        let mut seen = std::collections::BTreeMap::new();
        let mut stack: Vec<TypeVariant> = types
            .iter()
            .map(|t| TypeVariant::Struct(t.schema().into()))
            .collect();
        while let Some(ty) = stack.pop() {
            let node = match ty {
                TypeVariant::Struct(raw) => {
                    let schema = capnp::schema::StructSchema::new(raw);
                    let proto = schema.get_proto();
                    if seen.contains_key(&proto.get_id()) {
                        continue;
                    }
                    for field in schema.get_fields()? {
                        stack.push(field.get_type().which());
                    }
                    proto
                }
                TypeVariant::Enum(raw) => capnp::schema::EnumSchema::new(raw).get_proto(),
                TypeVariant::List(element) => {
                    stack.push(element.which());
                    continue;
                }
                _ => continue,
            };
            if seen.contains_key(&node.get_id()) {
                continue;
            }
            let mut message = capnp::message::Builder::new_default();
            message.set_root_canonical(node)?;
            let bytes = message.get_segments_for_output()[0];
            let mut words = capnp::Word::allocate_zeroed_vec(bytes.len() / 8);
            capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(bytes);
            seen.insert(node.get_id(), words);
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (id, words) in &seen {
            hasher.update(&id.to_le_bytes());
            hasher.update(capnp::Word::words_to_bytes(words));
        }
        Ok(DatasetSchema {
            nodes: seen.into_iter().collect(),
            hash: hasher.digest(),
        })
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    fn words(&self) -> usize {
        self.nodes.iter().map(|(_, w)| w.len()).sum()
    }
}

/// What every blob's header says.
pub struct HeaderInfo<'a> {
    pub from_version: u64,
    pub to_version: u64,
    pub producer_id: &'a str,
    pub cycle_start_micros: i64,
    pub schema: &'a DatasetSchema,
    pub tags: &'a [(String, String)],
}

impl HeaderInfo<'_> {
    fn write(&self, mut h: header::Builder<'_>) -> capnp::Result<()> {
        h.set_from_version(self.from_version);
        h.set_to_version(self.to_version);
        h.set_producer_id(self.producer_id);
        h.set_cycle_start_micros(self.cycle_start_micros);
        h.set_schema_hash(self.schema.hash);
        let mut nodes = h.reborrow().init_nodes(self.schema.nodes.len() as u32);
        for (i, (_, words)) in self.schema.nodes.iter().enumerate() {
            let reader = capnp::message::Reader::new(
                crate::schema::record::OneSegment(capnp::Word::words_to_bytes(words)),
                ReaderOptions::new(),
            );
            nodes.set_with_caveats(i as u32, reader.get_root()?)?;
        }
        let mut tags = h.init_tags(self.tags.len() as u32);
        for (i, (k, v)) in self.tags.iter().enumerate() {
            let mut t = tags.reborrow().get(i as u32);
            t.set_key(k.as_str());
            t.set_value(v.as_str());
        }
        Ok(())
    }

    fn words(&self) -> usize {
        64 + self.schema.words()
            + self
                .tags
                .iter()
                .map(|(k, v)| 4 + (k.len() + v.len()) / 8)
                .sum::<usize>()
    }
}

/// One type's records, as the producer hands them to the snapshot writer.
pub struct SnapshotTypeSource<'a> {
    pub info: &'a TypeInfo,
    pub key_fields: &'a [String],
    pub ordinal_limit: u32,
    pub record_count: u32,
    /// Sum of the words of every record.
    pub total_words: usize,
    pub records: &'a dyn SnapshotRecords,
}

/// Where the snapshot writer reads a type's records.
pub trait SnapshotRecords {
    /// The record at an ordinal and its key hash; `None` for a hole.
    fn record(&self, ordinal: u32) -> Option<(&[u64], u64)>;
}

/// One type's changes, as the producer hands them to the delta writer.
pub struct DeltaTypeSource<'a> {
    pub info: &'a TypeInfo,
    pub key_fields: &'a [String],
    /// Sorted removed ordinals with the key hash of the record removed.
    pub removed: &'a [(u32, u64)],
    /// Sorted ordinals set, with their record and key hash.
    pub set: &'a [(u32, &'a [u64], u64)],
    pub record_count_after: u32,
    pub ordinal_limit_after: u32,
}

fn too_large(what: &'static str, value: usize, limit: usize) -> FormatError {
    FormatError::TooLarge {
        blob: "(being written)".into(),
        what,
        value: value as u64,
        limit: limit as u64,
    }
}

fn list_len(what: &'static str, len: usize) -> Result<u32, FormatError> {
    if len > MAX_LIST_ELEMENTS {
        return Err(too_large(what, len, MAX_LIST_ELEMENTS));
    }
    Ok(len as u32)
}

fn builder_for(
    words: usize,
) -> Result<capnp::message::Builder<capnp::message::HeapAllocator>, FormatError> {
    let first =
        u32::try_from(words).map_err(|_| too_large("blob words", words, u32::MAX as usize))?;
    Ok(capnp::message::Builder::new(
        capnp::message::HeapAllocator::new().first_segment_words(first.max(64)),
    ))
}

fn finish(
    kind: BlobKind,
    from: u64,
    to: u64,
    message: &capnp::message::Builder<capnp::message::HeapAllocator>,
) -> Vec<u8> {
    let body = capnp::serialize::write_message_to_words(message);
    frame(kind, from, to, &body)
}

fn capnp_write(e: capnp::Error) -> FormatError {
    FormatError::Corrupt {
        blob: "(being written)".into(),
        reason: e.to_string(),
    }
}

/// The size of an open-addressing key index for `count` keys: a power of
/// two at most half full.
pub fn index_slots(count: u32) -> usize {
    if count == 0 {
        0
    } else {
        (count as usize * 2).next_power_of_two()
    }
}

/// Writes a whole snapshot blob (envelope and body).
pub fn write_snapshot(
    head: &HeaderInfo<'_>,
    types: &[SnapshotTypeSource<'_>],
) -> Result<Vec<u8>, FormatError> {
    let mut estimate = head.words() + 16;
    for t in types {
        estimate += 16 + t.total_words + (t.ordinal_limit as usize + 2) / 2;
        if !t.key_fields.is_empty() {
            estimate += 2 * index_slots(t.record_count);
        }
        estimate +=
            t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>() + t.info.name.len() / 8 + 2;
    }
    let mut message = builder_for(estimate)?;
    {
        let mut root = message.init_root::<snapshot::Builder>();
        head.write(root.reborrow().init_header())
            .map_err(capnp_write)?;
        let mut list = root.init_types(list_len("types", types.len())?);
        for (i, t) in types.iter().enumerate() {
            write_type_snapshot(list.reborrow().get(i as u32), t)?;
        }
    }
    Ok(finish(BlobKind::Snapshot, 0, head.to_version, &message))
}

fn set_texts(mut list: capnp::text_list::Builder<'_>, texts: &[String]) {
    for (i, text) in texts.iter().enumerate() {
        list.set(i as u32, text.as_str());
    }
}

fn write_type_snapshot(
    mut b: type_snapshot::Builder<'_>,
    t: &SnapshotTypeSource<'_>,
) -> Result<(), FormatError> {
    b.set_type_id(t.info.type_id);
    b.set_name(t.info.name.as_str());
    set_texts(
        b.reborrow().init_key_fields(t.key_fields.len() as u32),
        t.key_fields,
    );
    b.set_record_count(t.record_count);
    let limit = t.ordinal_limit as usize;
    let keyed = !t.key_fields.is_empty();
    let mut index = vec![
        0u64;
        if keyed {
            2 * index_slots(t.record_count)
        } else {
            0
        }
    ];
    let mask = (index.len() / 2).wrapping_sub(1);
    {
        let mut offsets = b.reborrow().init_offsets(list_len("ordinals", limit + 1)?);
        let offsets = offsets.as_slice().expect("UInt32 list is a slice");
        let mut at = 0usize;
        for o in 0..t.ordinal_limit {
            let start = u32::try_from(at)
                .map_err(|_| too_large("record words of one type", at, u32::MAX as usize))?;
            offsets[o as usize] = start;
            if let Some((record, hash)) = t.records.record(o) {
                at += record.len();
                if keyed {
                    let mut slot = hash as usize & mask;
                    while index[2 * slot] != 0 {
                        slot = (slot + 1) & mask;
                    }
                    index[2 * slot] = (hash >> 32) << 32 | (u64::from(o) + 1);
                    index[2 * slot + 1] = u64::from(start) | (record.len() as u64) << 32;
                }
            }
        }
        offsets[limit] = u32::try_from(at)
            .map_err(|_| too_large("record words of one type", at, u32::MAX as usize))?;
        if at != t.total_words {
            return Err(FormatError::Corrupt {
                blob: "(being written)".into(),
                reason: format!(
                    "{}: records fill {at} words, expected {}",
                    t.info.name, t.total_words
                ),
            });
        }
    }
    {
        let mut words = b
            .reborrow()
            .init_words(list_len("record words of one type", t.total_words)?);
        let words = words.as_slice().expect("UInt64 list is a slice");
        let mut at = 0usize;
        for o in 0..t.ordinal_limit {
            if let Some((record, _)) = t.records.record(o) {
                words[at..at + record.len()].copy_from_slice(record);
                at += record.len();
            }
        }
    }
    if keyed {
        let mut list = b.init_key_index(list_len("key index slots", index.len())?);
        list.as_slice()
            .expect("UInt64 list is a slice")
            .copy_from_slice(&index);
    }
    Ok(())
}

/// Writes a whole delta or reverse delta blob. `kind` is
/// [`BlobKind::Delta`] or [`BlobKind::Reverse`]; the envelope carries
/// `from -> to` as given (for a reverse delta, `from > to`).
pub fn write_delta(
    kind: BlobKind,
    head: &HeaderInfo<'_>,
    types: &[DeltaTypeSource<'_>],
) -> Result<Vec<u8>, FormatError> {
    let mut estimate = head.words() + 16;
    for t in types {
        let words: usize = t.set.iter().map(|(_, r, _)| r.len()).sum();
        estimate += 24 + words + t.removed.len() * 2 + t.set.len() * 2 + t.info.name.len() / 8;
        estimate += t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>();
    }
    let mut message = builder_for(estimate)?;
    {
        let mut root = message.init_root::<delta::Builder>();
        head.write(root.reborrow().init_header())
            .map_err(capnp_write)?;
        let mut list = root.init_types(list_len("types", types.len())?);
        for (i, t) in types.iter().enumerate() {
            write_type_delta(list.reborrow().get(i as u32), t)?;
        }
    }
    Ok(finish(kind, head.from_version, head.to_version, &message))
}

fn write_type_delta(
    mut b: type_delta::Builder<'_>,
    t: &DeltaTypeSource<'_>,
) -> Result<(), FormatError> {
    b.set_type_id(t.info.type_id);
    b.set_name(t.info.name.as_str());
    set_texts(
        b.reborrow().init_key_fields(t.key_fields.len() as u32),
        t.key_fields,
    );
    b.set_record_count_after(t.record_count_after);
    b.set_ordinal_limit_after(t.ordinal_limit_after);
    let n = list_len("removed ordinals", t.removed.len())?;
    {
        let mut removed = b.reborrow().init_removed(n);
        let removed = removed.as_slice().expect("slice");
        for (dst, (o, _)) in removed.iter_mut().zip(t.removed) {
            *dst = *o;
        }
    }
    {
        let mut hashes = b.reborrow().init_removed_key_hashes(n);
        let hashes = hashes.as_slice().expect("slice");
        for (dst, (_, h)) in hashes.iter_mut().zip(t.removed) {
            *dst = *h;
        }
    }
    let n = list_len("changed ordinals", t.set.len())?;
    let total: usize = t.set.iter().map(|(_, r, _)| r.len()).sum();
    {
        let mut ordinals = b.reborrow().init_ordinals(n);
        let ordinals = ordinals.as_slice().expect("slice");
        for (dst, (o, _, _)) in ordinals.iter_mut().zip(t.set) {
            *dst = *o;
        }
    }
    {
        let mut hashes = b.reborrow().init_key_hashes(n);
        let hashes = hashes.as_slice().expect("slice");
        for (dst, (_, _, h)) in hashes.iter_mut().zip(t.set) {
            *dst = *h;
        }
    }
    {
        let mut offsets = b.reborrow().init_offsets(n + 1);
        let offsets = offsets.as_slice().expect("slice");
        let mut at = 0usize;
        for (i, (_, record, _)) in t.set.iter().enumerate() {
            offsets[i] = u32::try_from(at)
                .map_err(|_| too_large("record words of one type", at, u32::MAX as usize))?;
            at += record.len();
        }
        offsets[t.set.len()] = u32::try_from(at)
            .map_err(|_| too_large("record words of one type", at, u32::MAX as usize))?;
    }
    let mut words = b.init_words(list_len("record words of one type", total)?);
    let words = words.as_slice().expect("slice");
    let mut at = 0usize;
    for (_, record, _) in t.set {
        words[at..at + record.len()].copy_from_slice(record);
        at += record.len();
    }
    Ok(())
}

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
    /// Takes a read-only map of a cache file (the cache opens and maps it:
    /// see [`crate::blobstore::cache::map_file`]; this layer does no I/O).
    /// The envelope and the length are checked; the body checksum only by
    /// [`OpenBlob::verify`].
    pub fn from_mmap(map: memmap2::Mmap, name: &str) -> Result<Self, FormatError> {
        let envelope = Envelope::decode(&map, name)?;
        envelope.check_len((map.len() - ENVELOPE_LEN) as u64, name)?;
        Ok(OpenBlob {
            name: name.to_string(),
            envelope,
            data: BlobBytes::Mapped(map),
        })
    }

    /// Checks the body against the envelope's checksum (reads every byte).
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

    pub fn name(&self) -> &str {
        &self.name
    }

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
        if start < base || end > base + bytes.len() || start % std::mem::align_of::<T>() != 0 {
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

    /// Reads a snapshot's header and sections.
    pub fn snapshot(self: &Arc<Self>) -> Result<(BlobHeader, Vec<SnapshotSection>), FormatError> {
        self.expect_kind(self.envelope.kind == BlobKind::Snapshot, "a snapshot")?;
        let message = self.message()?;
        let cap = |what: &'static str| self.cap(what);
        let root = message
            .get_root::<snapshot::Reader>()
            .map_err(cap("snapshot root"))?;
        let header = BlobHeader::read(root.get_header().map_err(cap("header"))?, &self.name)?;
        let mut sections = Vec::new();
        let types = root.get_types().map_err(cap("types"))?;
        self.check_type_count(types.len())?;
        for t in types {
            let name = text(t.get_name(), &self.name, "type name")?;
            let offsets = self.list(t.get_offsets(), "offsets")?;
            let words = self.list(t.get_words(), "words")?;
            let key_index = self.list(t.get_key_index(), "key index")?;
            let index_len = key_index.get().len();
            if index_len != 0 && (index_len % 2 != 0 || !(index_len / 2).is_power_of_two()) {
                return Err(self.corrupt(format!(
                    "{name}: key index has {index_len} words, not two per slot for a \
                     power-of-two number of slots"
                )));
            }
            let ordinal_limit = offsets.get().len().saturating_sub(1);
            if ordinal_limit > u32::MAX as usize - 1 {
                return Err(self.corrupt(format!("{name}: too many ordinals")));
            }
            sections.push(SnapshotSection {
                type_id: t.get_type_id(),
                key_fields: texts(t.get_key_fields(), &self.name)?,
                name,
                record_count: t.get_record_count(),
                ordinal_limit: ordinal_limit as u32,
                offsets,
                words,
                key_index,
            });
        }
        Ok((header, sections))
    }

    /// Reads a delta's (or reverse delta's) header and sections.
    pub fn delta(self: &Arc<Self>) -> Result<(BlobHeader, Vec<DeltaSection>), FormatError> {
        self.expect_kind(
            matches!(self.envelope.kind, BlobKind::Delta | BlobKind::Reverse),
            "a delta",
        )?;
        let message = self.message()?;
        let cap = |what: &'static str| self.cap(what);
        let root = message
            .get_root::<delta::Reader>()
            .map_err(cap("delta root"))?;
        let header = BlobHeader::read(root.get_header().map_err(cap("header"))?, &self.name)?;
        let mut sections = Vec::new();
        let types = root.get_types().map_err(cap("types"))?;
        self.check_type_count(types.len())?;
        for t in types {
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
                name,
            };
            let n = section.ordinals.get().len();
            if section.removed.get().len() != section.removed_hashes.get().len()
                || section.key_hashes.get().len() != n
                || section.offsets.get().len() != n + 1
            {
                return Err(
                    self.corrupt(format!("{}: delta lists disagree in length", section.name))
                );
            }
            sections.push(section);
        }
        Ok((header, sections))
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
    pub from_version: u64,
    pub to_version: u64,
    pub producer_id: String,
    pub cycle_start_micros: i64,
    pub schema_hash: u64,
    pub node_count: u32,
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

/// One type of a snapshot.
pub struct SnapshotSection {
    pub type_id: u64,
    pub name: String,
    pub key_fields: Vec<String>,
    pub record_count: u32,
    pub ordinal_limit: u32,
    pub offsets: Region<u32>,
    pub words: Region<u64>,
    pub key_index: Region<u64>,
}

/// One type of a delta.
pub struct DeltaSection {
    pub type_id: u64,
    pub name: String,
    pub key_fields: Vec<String>,
    pub removed: Region<u32>,
    pub removed_hashes: Region<u64>,
    pub ordinals: Region<u32>,
    pub key_hashes: Region<u64>,
    pub offsets: Region<u32>,
    pub words: Region<u64>,
    pub record_count_after: u32,
    pub ordinal_limit_after: u32,
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
