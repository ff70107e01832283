//! Reading blob bodies in place: an [`OpenBlob`] holds a blob's bytes,
//! and its sections expose each type's lists as bounds-checked slices of
//! them.

use super::{Layout, MAX_TYPES};
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, header, snapshot, type_snapshot};
use crate::schema::dataset_id::{check_same, DatasetId};
use crate::schema::envelope::{BlobKind, Envelope, ENVELOPE_LEN};
use crate::schema::index::{IndexDef, IndexTable};
use crate::schema::node_key::NodeKey;
use crate::schema::wire;
use capnp::message::ReaderOptions;
use capnp::schema_capnp::node;
use capnp::serialize::NoAllocBufferSegments;
use std::sync::Arc;

/// A blob's bytes held for reading: a read-only map of a verified cache
/// file, or owned, 8-byte aligned memory.
pub struct OpenBlob {
    name: String,
    envelope: Envelope,
    data: BlobBytes,
    arena: BodyArena,
}

/// The blob's one segment as a Cap'n Proto reader arena: what the
/// generated code reads records through. Bounds-checked like capnp's own
/// arena, but with no traversal limit (a mapped state is read for as long
/// as it serves, and the limit's shared counter would be written by every
/// reader thread); the records' layout is proven instead, once, by
/// [`OpenBlob::check_layout`].
struct BodyArena {
    start: *const u8,
    words: u32,
}

// SAFETY: the arena points into memory owned by the OpenBlob that holds
// it (a read-only map or a Vec that is never written after construction),
// which outlives every reader made from it; it has no interior mutability.
unsafe impl Send for BodyArena {}
unsafe impl Sync for BodyArena {}

// SAFETY: `get_segment` returns the one segment the arena was made for,
// and `contains_interval` refuses every interval outside it, as capnp's
// own arena does.
unsafe impl capnp::private::arena::ReaderArena for BodyArena {
    fn get_segment(&self, id: u32) -> capnp::Result<(*const u8, u32)> {
        if id == 0 {
            Ok((self.start, self.words))
        } else {
            Err(capnp::Error::from_kind(capnp::ErrorKind::InvalidSegmentId(
                id,
            )))
        }
    }

    fn contains_interval(&self, id: u32, start: *const u8, size: usize) -> capnp::Result<()> {
        let begin = self.start as usize;
        let end = begin + self.words as usize * 8;
        let at = start as usize;
        let inside = id == 0
            && at >= begin
            && size
                .checked_mul(8)
                .and_then(|bytes| at.checked_add(bytes))
                .is_some_and(|stop| stop <= end);
        if inside {
            Ok(())
        } else {
            Err(capnp::Error::from_kind(
                capnp::ErrorKind::MessageContainsOutOfBoundsPointer,
            ))
        }
    }

    fn amplified_read(&self, _virtual_amount: u64) -> capnp::Result<()> {
        Ok(())
    }

    fn nesting_limit(&self) -> i32 {
        64
    }

    fn size_in_words(&self) -> usize {
        self.words as usize
    }
}

/// The arena of a blob's bytes, after checking that its body is one
/// segment (the segment table says one segment filling the body).
fn body_arena(bytes: &[u8], body_len: u64, name: &str) -> Result<BodyArena, FormatError> {
    let corrupt = |reason: String| FormatError::Corrupt {
        blob: name.to_string(),
        reason,
    };
    let body = &bytes[ENVELOPE_LEN..];
    if body_len < 16 || body.len() < 16 || !body_len.is_multiple_of(8) {
        return Err(corrupt(format!(
            "a body of {body_len} bytes is not a message"
        )));
    }
    let count = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
    let words = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    if count != 0 || u64::from(words) * 8 + 8 != body_len {
        return Err(corrupt(format!(
            "the body is not one segment filling it ({} segments, {words} words in {body_len} bytes)",
            u64::from(count) + 1
        )));
    }
    Ok(BodyArena {
        start: body[8..].as_ptr(),
        words,
    })
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
        let arena = body_arena(&map, envelope.body_len, name)?;
        Ok(OpenBlob {
            name: name.to_string(),
            envelope,
            data: BlobBytes::Mapped(map),
            arena,
        })
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
        let arena = body_arena(dst, envelope.body_len, name)?;
        Ok(OpenBlob {
            name: name.to_string(),
            envelope,
            data: BlobBytes::Owned(words),
            arena,
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

    /// The file mapping the blob is read from, if it was mapped (not
    /// taken from memory): what a consumer advises the kernel about, or
    /// touches, to warm it before serving it.
    pub fn mapping(&self) -> Option<&memmap2::Mmap> {
        match &self.data {
            BlobBytes::Mapped(m) => Some(m),
            BlobBytes::Owned(_) => None,
        }
    }

    /// Total size, envelope included.
    pub fn len(&self) -> u64 {
        ENVELOPE_LEN as u64 + self.envelope.body_len
    }

    /// Always `false`: a blob holds at least its envelope.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(super) fn corrupt(&self, reason: impl Into<String>) -> FormatError {
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
    pub(super) fn cap(&self, what: &'static str) -> impl Fn(capnp::Error) -> FormatError + '_ {
        move |e| FormatError::capnp(&self.name, what, e)
    }

    /// A list field of primitives as a region of the blob.
    fn list<T: capnp::private::layout::PrimitiveElement + Copy>(
        self: &Arc<Self>,
        list: capnp::Result<capnp::primitive_list::Reader<'_, T>>,
        what: &'static str,
    ) -> Result<Region<T>, FormatError> {
        let list = list.map_err(self.cap(what))?;
        if list.is_empty() {
            // A null pointer reads as an empty list with no element size.
            return self.region(Some(&[]), what);
        }
        self.region(list.as_slice(), what)
    }

    pub(super) fn check_type_count(&self, count: u32) -> Result<(), FormatError> {
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
    pub(super) fn with_root<L: Layout, T>(
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
    /// types), each entry turned into a section by `section`, which is
    /// also given every schema node the header carries, by id.
    pub(super) fn sections<L: Layout, S>(
        &self,
        mut section: impl FnMut(
            <L::Entry as capnp::traits::OwnedStruct>::Reader<'_>,
            &Nodes<'_>,
        ) -> Result<S, FormatError>,
    ) -> Result<(BlobHeader, Vec<S>), FormatError> {
        self.expect_kind(L::holds(self.envelope.kind), L::EXPECTED)?;
        self.with_root::<L, _>(|root| {
            let head = L::header(&root).map_err(self.cap("header"))?;
            let header = BlobHeader::read(head, &self.name)?;
            let nodes: Nodes<'_> = head
                .get_nodes()
                .map_err(self.cap("nodes"))?
                .iter()
                .map(|node| (node.get_id(), node))
                .collect();
            let types = L::types(&root).map_err(self.cap("types"))?;
            self.check_type_count(types.len())?;
            let sections = types
                .iter()
                .map(|t| section(t, &nodes))
                .collect::<Result<_, _>>()?;
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

    /// Runs `read` on the schema nodes the header carries (every struct
    /// and enum the dataset's types reach, see `Header.nodes`): what a
    /// reader without generated code learns the types from (see
    /// [`crate::schema::capnp_text`]).
    pub fn with_schema_nodes<T, E: From<FormatError>>(
        &self,
        read: impl FnOnce(
            capnp::struct_list::Reader<'_, capnp::schema_capnp::node::Owned>,
        ) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut result = None;
        self.with_header(|header| {
            let nodes = header.get_nodes().map_err(self.cap("nodes"))?;
            result = Some(read(nodes));
            Ok(())
        })?;
        result.expect("with_header ran `read` or failed")
    }

    /// The body's one segment as words (the body is a one-segment message:
    /// its segment table was checked when the blob was taken).
    pub fn segment(&self) -> &[u64] {
        let body = self.body();
        let bytes = &body[8.min(body.len())..];
        // SAFETY: the blob's bytes start 8-byte aligned (a map starts on a
        // page, owned memory is a Vec<u64>), the envelope and the segment
        // table are whole words, and u64 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u64>(), bytes.len() / 8) }
    }

    /// The word of the root's `records` pointer in [`Self::segment`], or
    /// `None` when the root has no such pointer (an empty body).
    pub(super) fn records_pointer(&self) -> Result<Option<usize>, FormatError> {
        let seg = self.segment();
        let root = wire::Ptr(*seg.first().ok_or_else(|| self.corrupt("empty segment"))?);
        if root.kind() != 0 || root.offset() < 0 {
            return Err(self.corrupt("the root is not a struct after its pointer"));
        }
        if root.ptr_count() <= RECORDS_POINTER as u16 {
            return Ok(None);
        }
        let at = 1 + root.offset() as usize + root.data_words() as usize + RECORDS_POINTER;
        if at >= seg.len() {
            return Err(self.corrupt("the root lies outside the segment"));
        }
        Ok(Some(at))
    }

    /// Locates the record lists of the type in `slot` of `Records`,
    /// holding `len` elements in lists of `1 << shift`: reads the
    /// pointers only (the records themselves are checked by
    /// [`Self::verify`]). Every list must be a struct list of one element
    /// size, inside the segment, with the element count the split says.
    /// Where the header carries the type's node (`node_size`: its data
    /// words and pointers), the elements must fit in it: the writer trims
    /// trailing zeros, so elements may be smaller, and refuses records
    /// larger than the node, so they never are (a section larger than the
    /// node would read some of a record's words as the wrong kind). The
    /// node is the blob's own, whatever schema version a reader's code is
    /// (see `schema/evolve.rs`: its generated reader bounds each field by
    /// the element's sizes, larger or smaller than its struct). A
    /// reverse delta that re-creates a type the producer no longer
    /// registers carries no node for it.
    pub(super) fn record_lists(
        &self,
        name: &str,
        slot: u16,
        shift: u8,
        len: u32,
        node_size: Option<(u16, u16)>,
    ) -> Result<RecordLists, FormatError> {
        let bad = |reason: String| self.corrupt(format!("{name}: {reason}"));
        if shift > super::MAX_LIST_SHIFT {
            return Err(bad(format!(
                "list shift {shift} exceeds {}",
                super::MAX_LIST_SHIFT
            )));
        }
        let mut lists = RecordLists {
            slot,
            shift,
            data: 0,
            ptrs: 0,
            starts: Vec::new(),
            len,
        };
        if len == 0 {
            return Ok(lists);
        }
        let seg = self.segment();
        let at = |ptr: usize, words: u64| -> Result<usize, FormatError> {
            let p = wire::Ptr(seg[ptr]);
            let t = ptr as i64 + 1 + p.offset();
            if t < 0 || (t as u64).saturating_add(words) > seg.len() as u64 {
                return Err(bad(format!(
                    "pointer at word {ptr} points outside the segment"
                )));
            }
            Ok(t as usize)
        };
        let records = self
            .records_pointer()?
            .ok_or_else(|| bad("the blob has no records area".into()))?;
        let r = wire::Ptr(seg[records]);
        if r.kind() != 0 || r.ptr_count() <= slot {
            return Err(bad(format!(
                "records slot {slot} is not in the records struct"
            )));
        }
        let r_at = at(
            records,
            u64::from(r.data_words()) + u64::from(r.ptr_count()),
        )?;
        let slot_ptr = r_at + r.data_words() as usize + slot as usize;
        let l = wire::Ptr(seg[slot_ptr]);
        let per_list = 1u64 << shift;
        let expected = u64::from(len).div_ceil(per_list);
        if l.kind() != 1 || l.elem_size() != wire::SIZE_POINTER || u64::from(l.count()) != expected
        {
            return Err(bad(format!(
                "records slot {slot} is not a list of {expected} list pointers"
            )));
        }
        let l_at = at(slot_ptr, expected)?;
        for k in 0..expected {
            let ptr = l_at + k as usize;
            let p = wire::Ptr(seg[ptr]);
            let n = per_list.min(u64::from(len) - k * per_list);
            if p.kind() != 1 || p.elem_size() != wire::SIZE_COMPOSITE {
                return Err(bad(format!("record list {k} is not a list of structs")));
            }
            let tag_at = at(ptr, u64::from(p.count()) + 1)?;
            let tag = wire::Ptr(seg[tag_at]);
            let stride = u64::from(tag.data_words()) + u64::from(tag.ptr_count());
            if tag.kind() != 0 || tag.offset() != n as i64 || n * stride != u64::from(p.count()) {
                return Err(bad(format!(
                    "record list {k} holds {} elements of {stride} words in {} words, expected {n}",
                    tag.offset(),
                    p.count()
                )));
            }
            if k == 0 {
                (lists.data, lists.ptrs) = (tag.data_words(), tag.ptr_count());
                if let Some((data, ptrs)) = node_size {
                    if lists.data > data || lists.ptrs > ptrs {
                        return Err(bad(format!(
                            "record list 0 has elements of {} data words and {} pointers, \
                             larger than the type's struct ({data} data words, {ptrs} pointers)",
                            lists.data, lists.ptrs
                        )));
                    }
                }
            } else if (lists.data, lists.ptrs) != (tag.data_words(), tag.ptr_count()) {
                return Err(bad(format!(
                    "record list {k} has another element size than list 0"
                )));
            }
            lists.starts.push(tag_at + 1);
        }
        Ok(lists)
    }

    /// The typed readers of `lists`, read through the generated code with
    /// this blob as the arena: O(lists), no record touched.
    pub fn typed_lists<T: capnp::traits::OwnedStruct>(
        &self,
        lists: &RecordLists,
    ) -> Result<Vec<capnp::struct_list::Reader<'_, T>>, FormatError> {
        use capnp::traits::FromPointerReader;
        if lists.len == 0 {
            return Ok(Vec::new());
        }
        let cap = |e: capnp::Error| FormatError::capnp(&self.name, "record lists", e);
        let root =
            capnp::private::layout::PointerReader::get_root_from_arena(&self.arena).map_err(cap)?;
        let records = root
            .get_struct(None)
            .map_err(cap)?
            .get_pointer_field(RECORDS_POINTER)
            .get_struct(None)
            .map_err(cap)?;
        let slot = records.get_pointer_field(lists.slot as usize);
        let outer: capnp::list_list::Reader<'_, capnp::struct_list::Owned<T>> =
            FromPointerReader::get_from_pointer(&slot, None).map_err(cap)?;
        let mut out = Vec::with_capacity(lists.starts.len());
        for k in 0..lists.starts.len() as u32 {
            let list = outer.get(k).map_err(cap)?;
            let expected = (lists.len - (k << lists.shift)).min(1 << lists.shift);
            if list.len() != expected {
                return Err(self.corrupt(format!("record list {k} changed under the reader")));
            }
            out.push(list);
        }
        Ok(out)
    }

    /// Checks a snapshot type's entry as a reader relies on it: its
    /// ordinal limit and record count against its presence bitmap
    /// (`present`, the entry's, as words), its records slot not one
    /// another type of the blob took (`slots`), and locates its record
    /// lists ([`Self::record_lists`]).
    pub(super) fn snapshot_lists(
        &self,
        name: &str,
        t: type_snapshot::Reader<'_>,
        present: &[u64],
        nodes: &Nodes<'_>,
        slots: &mut std::collections::HashSet<u16>,
    ) -> Result<RecordLists, FormatError> {
        let bad = |reason: String| self.corrupt(format!("{name}: {reason}"));
        let ordinal_limit = t.get_ordinal_limit();
        if ordinal_limit as usize > super::MAX_LIST_ELEMENTS * 16 {
            return Err(bad("too many ordinals".into()));
        }
        if !present.is_empty() && present.len() != (ordinal_limit as usize).div_ceil(64) {
            return Err(bad(format!(
                "presence bitmap has {} words for {ordinal_limit} ordinals",
                present.len()
            )));
        }
        let record_count = t.get_record_count();
        if record_count > ordinal_limit || (present.is_empty() && record_count != ordinal_limit) {
            return Err(bad(format!(
                "{record_count} records in {ordinal_limit} ordinals"
            )));
        }
        if !present.is_empty() {
            let marked = marked_ordinals(present, ordinal_limit).map_err(|o| {
                bad(format!(
                    "presence bitmap marks ordinal {o}, past the ordinal limit {ordinal_limit}"
                ))
            })?;
            if marked != u64::from(record_count) {
                return Err(bad(format!(
                    "presence bitmap marks {marked} ordinals, but the record count is \
                     {record_count}"
                )));
            }
        }
        let slot = t.get_records_slot();
        if !slots.insert(slot) {
            return Err(bad(format!("records slot {slot} used twice")));
        }
        self.record_lists(
            name,
            slot,
            t.get_list_shift(),
            ordinal_limit,
            struct_size(nodes, t.get_type_id()),
        )
    }

    /// Reads a snapshot's header and sections.
    pub fn snapshot(self: &Arc<Self>) -> Result<(BlobHeader, Vec<SnapshotSection>), FormatError> {
        let mut slots = std::collections::HashSet::new();
        self.sections::<snapshot::Owned, _>(|t, nodes| {
            let name = text(t.get_name(), &self.name, "type name")?;
            let present = self.list(t.get_present(), "presence bitmap")?;
            let lists = self.snapshot_lists(&name, t, present.get(), nodes, &mut slots)?;
            let key_index = self.list(t.get_key_index(), "key index")?;
            let indexes = self.shipped_indexes(&name, t)?;
            Ok(SnapshotSection {
                indexes,
                type_id: t.get_type_id(),
                key_fields: texts(t.get_key_fields(), &self.name)?,
                name,
                record_count: t.get_record_count(),
                ordinal_limit: t.get_ordinal_limit(),
                present,
                key_index,
                lists,
                blob: self.clone(),
            })
        })
    }

    /// A snapshot type's secondary indexes, located (their contents are
    /// proven by `check_indexes`, in `check.rs`).
    /// Refuses more than [`MAX_INDEXES`] and two of one name.
    pub(super) fn shipped_indexes(
        self: &Arc<Self>,
        type_name: &str,
        t: type_snapshot::Reader<'_>,
    ) -> Result<Vec<ShippedIndex>, FormatError> {
        let list = t.get_indexes().map_err(self.cap("indexes"))?;
        if list.len() > MAX_INDEXES {
            return Err(self.corrupt(format!(
                "{type_name}: {} indexes, more than {MAX_INDEXES}",
                list.len()
            )));
        }
        let mut out: Vec<ShippedIndex> = Vec::with_capacity(list.len() as usize);
        for e in list.iter() {
            let name = text(e.get_name(), &self.name, "index name")?;
            let fields = e.get_fields().map_err(self.cap("index fields"))?;
            let fields = fields
                .iter()
                .map(|x| text(x, &self.name, "index field"))
                .collect::<Result<Vec<_>, _>>()?;
            if out.iter().any(|i| i.def.name == name) {
                return Err(self.corrupt(format!("{type_name}: two indexes named {name}")));
            }
            out.push(ShippedIndex {
                def: IndexDef {
                    name,
                    fields,
                    unique: e.get_unique(),
                },
                table: self.list(e.get_table(), "index table")?,
                starts: self.list(e.get_starts(), "index starts")?,
                postings: self.list(e.get_postings(), "index postings")?,
            });
        }
        Ok(out)
    }

    /// Reads a delta's (or reverse delta's) header and sections.
    pub fn delta(self: &Arc<Self>) -> Result<(BlobHeader, Vec<DeltaSection>), FormatError> {
        let mut seen = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        self.sections::<delta::Owned, _>(|t, nodes| {
            let name = text(t.get_name(), &self.name, "type name")?;
            let ordinals = self.list(t.get_ordinals(), "ordinals")?;
            let n = ordinals.get().len();
            let type_id = t.get_type_id();
            if !seen.insert(type_id) {
                return Err(self.corrupt(format!("{name}: the type appears twice in one delta")));
            }
            let removed = self.list(t.get_removed(), "removed")?;
            let removed_hashes = self.list(t.get_removed_key_hashes(), "removed key hashes")?;
            let key_hashes = self.list(t.get_key_hashes(), "key hashes")?;
            let dropped = t.get_dropped();
            if dropped
                && (!removed.get().is_empty()
                    || n != 0
                    || t.get_record_count_after() != 0
                    || t.get_ordinal_limit_after() != 0)
            {
                return Err(self.corrupt(format!(
                    "{name}: drops the type and also changes its records"
                )));
            }
            if removed.get().len() != removed_hashes.get().len() || key_hashes.get().len() != n {
                return Err(self.corrupt(format!("{name}: delta lists disagree in length")));
            }
            if n > 0 && !slots.insert(t.get_records_slot()) {
                return Err(self.corrupt(format!(
                    "{name}: records slot {} used twice",
                    t.get_records_slot()
                )));
            }
            let lists = self.record_lists(
                &name,
                t.get_records_slot(),
                t.get_list_shift(),
                n as u32,
                struct_size(nodes, type_id),
            )?;
            let section = DeltaSection {
                type_id,
                key_fields: texts(t.get_key_fields(), &self.name)?,
                removed,
                removed_hashes,
                ordinals,
                key_hashes,
                lists,
                record_count_after: t.get_record_count_after(),
                ordinal_limit_after: t.get_ordinal_limit_after(),
                dropped,
                name,
                blob: self.clone(),
            };
            Ok(section)
        })
    }
}

/// The pointer index of `records` in the `Snapshot` and `Delta` roots.
const RECORDS_POINTER: usize = 2;

/// The schema nodes a header carries, by id.
pub(super) type Nodes<'a> = std::collections::HashMap<u64, node::Reader<'a>>;

/// The struct size (data words, pointers) of node `id`, if the header
/// carries it and it is a struct.
pub(super) fn struct_size(nodes: &Nodes<'_>, id: u64) -> Option<(u16, u16)> {
    match nodes.get(&id)?.which() {
        Ok(node::Struct(st)) => Some((st.get_data_word_count(), st.get_pointer_count())),
        _ => None,
    }
}

/// The ordinals a presence bitmap of `ceil(limit / 64)` words marks:
/// their count, or the first bit set at or past `limit` (which marks no
/// ordinal).
fn marked_ordinals(bits: &[u64], limit: u32) -> Result<u64, u64> {
    let tail = limit % 64;
    if let (Some(&last), true) = (bits.last(), tail != 0) {
        let past = last >> tail;
        if past != 0 {
            let word = bits.len() as u64 - 1;
            return Err(word * 64 + u64::from(tail) + u64::from(past.trailing_zeros()));
        }
    }
    Ok(bits.iter().map(|w| u64::from(w.count_ones())).sum())
}

/// Where one type's records lie: `len` elements of `data` data words and
/// `ptrs` pointers, split into lists of `1 << shift` (the last shorter).
#[derive(Debug, Clone)]
pub struct RecordLists {
    /// The pointer of the `Records` struct holding the lists.
    pub slot: u16,
    /// Elements per list, as a power of two.
    pub shift: u8,
    /// Data words of every element.
    pub data: u16,
    /// Pointers of every element.
    pub ptrs: u16,
    /// The segment word of each list's first element.
    pub starts: Vec<usize>,
    /// Elements in all.
    pub len: u32,
}

impl RecordLists {
    /// The segment word where element `i` starts (`i < len`).
    #[inline]
    pub fn element(&self, i: u32) -> usize {
        let stride = self.data as usize + self.ptrs as usize;
        self.starts[(i >> self.shift) as usize] + (i & ((1 << self.shift) - 1)) as usize * stride
    }
}

pub(super) fn text(
    t: capnp::Result<capnp::text::Reader<'_>>,
    blob: &str,
    what: &str,
) -> Result<String, FormatError> {
    t.and_then(|t| t.to_string().map_err(Into::into))
        .map_err(|e| FormatError::capnp(blob, what, e))
}

pub(super) fn texts(
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
    /// The checksum of every type of the state the blob makes, sorted by
    /// type id ([`crate::schema::checksum`]); empty in blobs written
    /// before state checksums.
    pub type_checksums: Vec<crate::schema::checksum::TypeChecksum>,
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
        let mut type_checksums = Vec::new();
        for c in h
            .get_type_checksums()
            .map_err(|e| FormatError::capnp(blob, "type checksums", e))?
        {
            type_checksums.push(crate::schema::checksum::TypeChecksum {
                type_id: c.get_type_id(),
                checksum: c.get_checksum(),
            });
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
            type_checksums,
        })
    }

    /// The checksum the header claims for type `type_id`: `Ok(None)` when
    /// the header makes no claims (written before state checksums), an
    /// error naming the blob when it makes claims but none for this type.
    pub fn type_checksum(&self, type_id: u64, blob: &str) -> Result<Option<u64>, FormatError> {
        if self.type_checksums.is_empty() {
            return Ok(None);
        }
        match self.type_checksums.iter().find(|c| c.type_id == type_id) {
            Some(c) => Ok(Some(c.checksum)),
            None => Err(FormatError::Corrupt {
                blob: blob.to_string(),
                reason: format!("the header has no state checksum for type {type_id:016x}"),
            }),
        }
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
    /// One past the highest ordinal: the record lists hold this many
    /// elements.
    pub ordinal_limit: u32,
    /// Bit `o % 64` of word `o / 64` is set when ordinal `o` holds a
    /// record; empty when every ordinal does.
    pub present: Region<u64>,
    /// The type's key index ([`crate::schema::key_index`]); empty for a
    /// type without a primary key.
    pub key_index: Region<u64>,
    /// Where the records lie: element `o` is ordinal `o`.
    pub lists: RecordLists,
    /// The type's secondary indexes ([`crate::schema::index`]).
    pub indexes: Vec<ShippedIndex>,
    /// The blob the section is read from.
    pub blob: Arc<OpenBlob>,
}

/// The most secondary indexes one type may carry in a snapshot.
pub const MAX_INDEXES: u32 = 64;

/// One secondary index of a snapshot type, located in its blob.
pub struct ShippedIndex {
    /// Its name, fields and uniqueness.
    pub def: IndexDef,
    /// The group table.
    pub table: Region<u64>,
    /// Where each group begins in `postings`.
    pub starts: Region<u32>,
    /// Each group's ordinals.
    pub postings: Region<u32>,
}

impl ShippedIndex {
    /// The index's lists, borrowed from the blob.
    #[inline]
    pub fn table(&self) -> IndexTable<'_> {
        IndexTable {
            table: self.table.get(),
            starts: self.starts.get(),
            postings: self.postings.get(),
        }
    }
}

impl SnapshotSection {
    /// Whether ordinal `o` (below `ordinal_limit`) holds a record.
    #[inline]
    pub fn is_present(&self, o: u32) -> bool {
        let bits = self.present.get();
        bits.is_empty()
            || bits
                .get(o as usize / 64)
                .is_some_and(|w| w >> (o % 64) & 1 == 1)
    }
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
    /// Ordinals the delta sets (new or changed records), sorted; element
    /// `i` of `lists` is the record of `ordinals[i]`.
    pub ordinals: Region<u32>,
    /// The key hash of each set record whose key is new at its ordinal (0
    /// for a changed record), one per entry of `ordinals`.
    pub key_hashes: Region<u64>,
    /// Where the set records lie.
    pub lists: RecordLists,
    /// The type's record count once the delta is applied.
    pub record_count_after: u32,
    /// The type's ordinal limit (one past its highest ordinal) once the
    /// delta is applied.
    pub ordinal_limit_after: u32,
    /// The type leaves the state (see `TypeDelta.dropped`); the reader
    /// refuses a dropped section that also removes or sets records.
    pub dropped: bool,
    /// The blob the section is read from.
    pub blob: Arc<OpenBlob>,
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
        let head = HeaderInfo::for_test(&schema);
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
