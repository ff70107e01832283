//! Writing blob bodies: a snapshot or a delta as one single-segment
//! Cap'n Proto message, framed by the envelope.
//!
//! The body is written in two parts. The *skeleton* (root, header, each
//! type's entry with its presence bitmap and key index) is built with
//! Cap'n Proto's builder. The *records area* is then appended by hand,
//! word by word: the pool of interned leaves, the `Records` struct, and
//! each type's struct lists in canonical pre-order, each record's struct
//! copied into its element and its children after the list
//! ([`wire::place_record`]). Writing the records by hand is what lets a
//! record be copied once, from the canonical message the producer keeps,
//! with its leaves interned, into exactly the layout the reader checks
//! ([`wire::check_records`]).
//!
//! # Streaming
//!
//! There is one writer, and it streams: [`stream_snapshot`] and
//! [`stream_delta`] write into a [`BlobSink`] by position (the producer's
//! spool file, `producer/spool.rs`); [`write_snapshot`] and
//! [`write_delta`] run the same code into a `Vec<u8>` for the callers
//! that want the bytes (tests, tools, fuzzing). The skeleton and the pool
//! of interned leaves stay in memory. The records area goes out as it is
//! made: a list's elements are placed a window at a time
//! (`WINDOW_WORDS`, 1 MiB) while the children each record places are appended
//! to a small buffer, written out in order once it holds
//! `PENDING_WORDS` (1 MiB); each window is then written at its place (the
//! elements come before their children in the body but are finished
//! after them). What a list pointer or the `Records` struct says is only
//! known once what precedes its target is written, so those few words are
//! reserved and written last. Memory is thus bounded by the skeleton, the
//! pool, two 1 MiB buffers and a word per list, whatever the number of
//! records.
//!
//! The envelope and the segment table, at the front, need the body's
//! length and xxh3-128 checksum, known only at the end: the segment table
//! is written then, and the checksum is computed by reading the body back
//! from the sink in bounded chunks (the body is not written in byte
//! order, so it cannot be hashed on the way out without buffering the
//! children of a whole list), then the envelope is written over the first
//! 64 bytes.
//!
//! The failpoint `mid-blob-write` (`crate::failpoint`, a no-op unless the
//! `failpoints` feature is on) marks the end of each list: the crash
//! tests kill a producer there, with a blob partly spooled.

use super::MAX_LIST_ELEMENTS;
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, header, snapshot, type_delta, type_snapshot};
use crate::schema::dataset_id::DatasetId;
use crate::schema::envelope::Envelope;
use crate::schema::envelope::{BlobKind, ENVELOPE_LEN};
use crate::schema::index::{self, BuiltIndex, IndexDef, NodeIndex};
use crate::schema::key_index::KeyIndexBuilder;
use crate::schema::record::TypeInfo;
use crate::schema::wire;
use capnp::message::ReaderOptions;

/// The schema nodes of a dataset's types, as canonical messages, and their
/// hash. Computed once per producer.
#[derive(Clone, Debug, Default)]
pub struct DatasetSchema {
    nodes: Vec<(u64, Vec<capnp::Word>)>,
    hash: u64,
}

/// A schema node's canonical words, with its display name made portable
/// ([`crate::schema::record::portable_display_name`]): a build without
/// `src_prefix` names nodes by the absolute path of their file, which must
/// not reach blobs or the schema hash.
pub(crate) fn portable_canonical_node(
    node: capnp::schema_capnp::node::Reader<'_>,
) -> capnp::Result<Vec<capnp::Word>> {
    let mut message = capnp::message::Builder::new_default();
    let raw_name = node.get_display_name()?.to_str()?;
    let (portable, cut) = crate::schema::record::portable_display_name(raw_name);
    if cut == 0 {
        message.set_root_canonical(node)?;
    } else {
        let mut copy = capnp::message::Builder::new_default();
        copy.set_root(node)?;
        let mut edited: capnp::schema_capnp::node::Builder<'_> = copy.get_root()?;
        let prefix = edited.reborrow().get_display_name_prefix_length();
        edited.reborrow().set_display_name(portable);
        edited
            .reborrow()
            .set_display_name_prefix_length(prefix.saturating_sub(cut as u32));
        message.set_root_canonical(edited.into_reader())?;
    }
    let bytes = message.get_segments_for_output()[0];
    let mut words = capnp::Word::allocate_zeroed_vec(bytes.len() / 8);
    capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(bytes);
    Ok(words)
}

impl DatasetSchema {
    /// The nodes of `types` and of every struct and enum their fields
    /// reach, sorted by id.
    pub fn of(types: &[TypeInfo]) -> capnp::Result<Self> {
        use capnp::introspect::TypeVariant;
        let mut seen = std::collections::BTreeMap::new();
        // A type given by its nodes brings them all.
        for t in types {
            for (id, words) in t.runtime_nodes().unwrap_or_default() {
                seen.insert(*id, words.clone());
            }
        }
        let mut stack: Vec<TypeVariant> = types
            .iter()
            .filter_map(|t| t.schema())
            .map(|s| TypeVariant::Struct(s.into()))
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
            let words = portable_canonical_node(node)?;
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

    /// The schema hash written into every header: xxh3-64 over each
    /// node's id (little-endian) and canonical bytes, in id order.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    fn words(&self) -> usize {
        self.nodes.iter().map(|(_, w)| w.len()).sum()
    }

    /// A reader over each node (to read them as `node::Reader`s, for
    /// [`crate::schema::evolve`]).
    pub fn node_messages(
        &self,
    ) -> Vec<capnp::message::Reader<crate::schema::record::OneSegment<'_>>> {
        self.nodes
            .iter()
            .map(|(_, words)| crate::schema::record::node_message(words))
            .collect()
    }

    /// The struct size (data words, pointers) of node `id`, if it is one
    /// of these nodes and a struct.
    pub fn struct_size(&self, id: u64) -> Option<(u16, u16)> {
        let at = self.nodes.binary_search_by_key(&id, |(n, _)| *n).ok()?;
        let words = &self.nodes[at].1;
        let reader = capnp::message::Reader::new(
            crate::schema::record::OneSegment(capnp::Word::words_to_bytes(words)),
            ReaderOptions::new(),
        );
        let node: capnp::schema_capnp::node::Reader<'_> = reader.get_root().ok()?;
        match node.which().ok()? {
            capnp::schema_capnp::node::Struct(st) => {
                Some((st.get_data_word_count(), st.get_pointer_count()))
            }
            _ => None,
        }
    }
}

/// What every blob's header says.
pub struct HeaderInfo<'a> {
    /// The dataset the blob belongs to (see [`crate::schema::dataset_id`]).
    pub dataset_id: DatasetId,
    /// The version a delta starts from (the newer one for a reverse
    /// delta); 0 for a snapshot.
    pub from_version: u64,
    /// The version the blob makes.
    pub to_version: u64,
    /// The id of the producer writing the blob.
    pub producer_id: &'a str,
    /// When the writing cycle began, in microseconds since the Unix epoch.
    pub cycle_start_micros: i64,
    /// The dataset's schema nodes, written into the header with their hash.
    pub schema: &'a DatasetSchema,
    /// The producer's header tags, as (key, value) pairs.
    pub tags: &'a [(String, String)],
    /// The checksum of every type of the state the blob makes
    /// ([`crate::schema::checksum`]); empty writes no claim.
    pub type_checksums: &'a [crate::schema::checksum::TypeChecksum],
    /// The largest `listShift` the writer uses ([`MAX_LIST_SHIFT`]
    /// normally; tests lower it to split small types into several lists).
    pub max_list_shift: u8,
}

#[cfg(test)]
impl<'a> HeaderInfo<'a> {
    /// The header of a unit test's snapshot (version 1, a fresh dataset).
    pub(crate) fn for_test(schema: &'a DatasetSchema) -> Self {
        HeaderInfo {
            dataset_id: DatasetId::mint(),
            from_version: 0,
            to_version: 1,
            producer_id: "p",
            cycle_start_micros: 0,
            schema,
            tags: &[],
            type_checksums: &[],
            max_list_shift: MAX_LIST_SHIFT,
        }
    }
}

impl HeaderInfo<'_> {
    fn write(&self, mut h: header::Builder<'_>) -> capnp::Result<()> {
        h.set_from_version(self.from_version);
        h.set_to_version(self.to_version);
        h.set_producer_id(self.producer_id);
        h.set_cycle_start_micros(self.cycle_start_micros);
        h.set_schema_hash(self.schema.hash);
        h.set_dataset_id_hi(self.dataset_id.hi());
        h.set_dataset_id_lo(self.dataset_id.lo());
        let mut nodes = h.reborrow().init_nodes(self.schema.nodes.len() as u32);
        for (i, (_, words)) in self.schema.nodes.iter().enumerate() {
            let reader = capnp::message::Reader::new(
                crate::schema::record::OneSegment(capnp::Word::words_to_bytes(words)),
                ReaderOptions::new(),
            );
            nodes.set_with_caveats(i as u32, reader.get_root()?)?;
        }
        let mut tags = h.reborrow().init_tags(self.tags.len() as u32);
        for (i, (k, v)) in self.tags.iter().enumerate() {
            let mut t = tags.reborrow().get(i as u32);
            t.set_key(k.as_str());
            t.set_value(v.as_str());
        }
        if !self.type_checksums.is_empty() {
            let mut sorted = self.type_checksums.to_vec();
            sorted.sort_unstable_by_key(|c| c.type_id);
            let mut list = h.init_type_checksums(sorted.len() as u32);
            for (i, c) in sorted.iter().enumerate() {
                let mut e = list.reborrow().get(i as u32);
                e.set_type_id(c.type_id);
                e.set_checksum(c.checksum);
            }
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
            + 1
            + 2 * self.type_checksums.len()
    }
}

/// One type's records, as the producer hands them to the snapshot writer.
pub struct SnapshotTypeSource<'a> {
    /// The type's id, display name and schema.
    pub info: &'a TypeInfo,
    /// The primary key's field names, in key order; empty for no key (the
    /// snapshot then carries no key index).
    pub key_fields: &'a [String],
    /// One past the highest ordinal: the writer asks `records` for every
    /// ordinal below it.
    pub ordinal_limit: u32,
    /// Number of records (non-hole ordinals); sizes the key index, and the
    /// writer refuses more keyed records than this.
    pub record_count: u32,
    /// The pointer of the body's `Records` struct that holds the type's
    /// lists (the producer numbers its types; see `TypeSnapshot.recordsSlot`).
    pub slot: u16,
    /// Where the writer reads each ordinal's record.
    pub records: &'a dyn SnapshotRecords,
    /// The secondary indexes to build over the records
    /// ([`crate::schema::index`]), each resolved against the type's node.
    pub indexes: &'a [(IndexDef, NodeIndex)],
}

/// Where the snapshot writer reads a type's records.
pub trait SnapshotRecords {
    /// The record at an ordinal (its canonical message) and its key hash;
    /// `None` for a hole.
    fn record(&self, ordinal: u32) -> Option<(&[u64], u64)>;
}

/// One type's changes, as the producer hands them to the delta writer.
pub struct DeltaTypeSource<'a> {
    /// The type's node id and display name (a dropped type is no longer
    /// registered, so it has no [`TypeInfo`], only these).
    pub type_id: u64,
    /// See `type_id`.
    pub name: &'a str,
    /// The primary key's field names, in key order; empty for no key.
    pub key_fields: &'a [String],
    /// Sorted removed ordinals with the key hash of the record removed.
    pub removed: &'a [(u32, u64)],
    /// Sorted ordinals set, with their record (canonical message) and key
    /// hash: the hash of a record whose key is new at its ordinal, 0 for a
    /// changed record (see `TypeDelta.keyHashes`).
    pub set: &'a [(u32, &'a [u64], u64)],
    /// The type's record count once the delta is applied.
    pub record_count_after: u32,
    /// The type's ordinal limit (one past its highest ordinal) once the
    /// delta is applied.
    pub ordinal_limit_after: u32,
    /// The type leaves the state: `removed` and `set` must be empty and
    /// both counts 0.
    pub dropped: bool,
    /// As in [`SnapshotTypeSource::slot`].
    pub slot: u16,
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

fn capnp_write(e: capnp::Error) -> FormatError {
    corrupt_write(e.to_string())
}

fn corrupt_write(reason: String) -> FormatError {
    FormatError::Corrupt {
        blob: "(being written)".into(),
        reason,
    }
}

/// The size of a snapshot type's key index for `count` keys (see
/// [`crate::schema::key_index`]).
pub use crate::schema::key_index::slots_for as index_slots;

/// One type's records as the records area sees them: the records of its
/// list elements in order (`None`: a hole, an all-zero element).
struct ListSource<'a> {
    name: &'a str,
    type_id: u64,
    slot: u16,
    len: u32,
    record: Box<dyn Fn(u32) -> Option<&'a [u64]> + 'a>,
}

/// How a type's records are split into lists: `1 << shift` elements a
/// list, as many as fit a Cap'n Proto list of `stride`-word elements.
fn list_shift(stride: usize, limit: u8) -> u8 {
    let mut shift = limit.min(MAX_LIST_SHIFT);
    while shift > 0 && ((1usize << shift) * stride.max(1) >= 1 << 29) {
        shift -= 1;
    }
    shift
}

/// The largest `listShift`: lists of at most 2^28 elements.
pub const MAX_LIST_SHIFT: u8 = 28;

/// Writes a whole snapshot blob (envelope and body) in memory: what
/// [`stream_snapshot`] streams, into a vector.
pub fn write_snapshot(
    head: &HeaderInfo<'_>,
    types: &[SnapshotTypeSource<'_>],
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    stream_snapshot(head, types, &mut out)?;
    Ok(out)
}

/// Streams a snapshot blob into `sink` (see [`BlobSink`]); returns its
/// length in bytes.
pub fn stream_snapshot<S: BlobSink>(
    head: &HeaderInfo<'_>,
    types: &[SnapshotTypeSource<'_>],
    sink: &mut S,
) -> Result<u64, S::Error> {
    let sources: Vec<ListSource<'_>> = types.iter().map(snapshot_source).collect();
    let sizes = sources
        .iter()
        .map(|t| element_size(t, head.schema))
        .collect::<Result<Vec<_>, _>>()?;
    let built = types
        .iter()
        .map(build_indexes)
        .collect::<Result<Vec<_>, _>>()?;
    let index_words: usize = built
        .iter()
        .flatten()
        .map(|(def, b)| {
            16 + b.table.len()
                + (b.starts.len() + b.postings.len()).div_ceil(2)
                + def.name.len() / 8
                + def.fields.iter().map(|f| 2 + f.len() / 8).sum::<usize>()
        })
        .sum();
    let type_words = |t: &SnapshotTypeSource<'_>| {
        let mut words = 24 + (t.ordinal_limit as usize).div_ceil(64);
        if !t.key_fields.is_empty() {
            words += index_slots(t.record_count);
        }
        words + t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>() + t.info.name.len() / 8
    };
    let skeleton_words =
        head.words() + 16 + types.iter().map(type_words).sum::<usize>() + index_words;
    let mut message = builder_for(skeleton_words)?;
    {
        let mut root = message.init_root::<snapshot::Builder<'_>>();
        head.write(root.reborrow().init_header())
            .map_err(capnp_write)?;
        let mut list = root.init_types(list_len("types", types.len())?);
        for (i, (t, &(d, p))) in types.iter().zip(&sizes).enumerate() {
            let mut b = list.reborrow().get(i as u32);
            write_type_snapshot(b.reborrow(), t, d + p, head.max_list_shift)?;
            write_indexes(b, &built[i])?;
        }
    }
    stream_body(
        &message,
        &sources,
        &sizes,
        head.max_list_shift,
        BlobKind::Snapshot,
        0,
        head.to_version,
        sink,
    )
}

/// Builds the type's secondary indexes from its records.
fn build_indexes(t: &SnapshotTypeSource<'_>) -> Result<Vec<(IndexDef, BuiltIndex)>, FormatError> {
    t.indexes
        .iter()
        .map(|(def, node)| {
            let present = (0..t.ordinal_limit).filter(|&o| t.records.record(o).is_some());
            let built = index::build(def, present, |o, out| {
                let (words, _) = t.records.record(o).ok_or("a record vanished")?;
                node.record_values(words, out)
                    .map_err(|e| format!("index {}: record {o}: {e}", def.name))
            })
            .map_err(|e| corrupt_write(format!("{}: {e}", t.info.name)))?;
            Ok((def.clone(), built))
        })
        .collect()
}

/// Writes a type's secondary indexes (`TypeSnapshot.indexes`); none
/// leaves the list null.
fn write_indexes(
    b: type_snapshot::Builder<'_>,
    built: &[(IndexDef, BuiltIndex)],
) -> Result<(), FormatError> {
    if built.is_empty() {
        return Ok(());
    }
    let mut list = b.init_indexes(list_len("indexes", built.len())?);
    for (i, (def, index)) in built.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_name(def.name.as_str());
        set_texts(
            e.reborrow().init_fields(def.fields.len() as u32),
            &def.fields,
        );
        e.set_unique(def.unique);
        let mut table = e
            .reborrow()
            .init_table(list_len("index table", index.table.len())?);
        for (j, &w) in index.table.iter().enumerate() {
            table.set(j as u32, w);
        }
        let mut starts = e
            .reborrow()
            .init_starts(list_len("index starts", index.starts.len())?);
        for (j, &w) in index.starts.iter().enumerate() {
            starts.set(j as u32, w);
        }
        let mut postings = e.init_postings(list_len("index postings", index.postings.len())?);
        for (j, &w) in index.postings.iter().enumerate() {
            postings.set(j as u32, w);
        }
    }
    Ok(())
}

fn snapshot_source<'a>(t: &'a SnapshotTypeSource<'a>) -> ListSource<'a> {
    ListSource {
        name: &t.info.name,
        type_id: t.info.type_id,
        slot: t.slot,
        len: t.ordinal_limit,
        record: Box::new(move |o| t.records.record(o).map(|(words, _)| words)),
    }
}

fn delta_source<'a>(t: &'a DeltaTypeSource<'a>) -> ListSource<'a> {
    ListSource {
        name: t.name,
        type_id: t.type_id,
        slot: t.slot,
        len: t.set.len() as u32,
        record: Box::new(move |i| Some(t.set[i as usize].1)),
    }
}

/// The element size of a type's lists: the largest struct among its
/// records. Where `schema` holds the type's node, no record may be larger
/// than it (readers refuse such lists, see `OpenBlob::record_lists`): a
/// record copied from a reader of a newer schema, with fields this
/// producer's schema does not describe, is refused by name.
fn element_size(t: &ListSource<'_>, schema: &DatasetSchema) -> Result<(u16, u16), FormatError> {
    let node = schema.struct_size(t.type_id);
    let (mut d, mut p) = (0u16, 0u16);
    for i in 0..t.len {
        if let Some(words) = (t.record)(i) {
            let (rd, rp) = wire::record_struct_size(words)
                .map_err(|e| corrupt_write(format!("{}: record {i}: {e}", t.name)))?;
            if let Some((nd, np)) = node {
                if rd > nd || rp > np {
                    return Err(corrupt_write(format!(
                        "{}: record {i} has {rd} data words and {rp} pointers, more than the \
                         type's schema ({nd} data words, {np} pointers): a record of a newer \
                         schema cannot be written under this one",
                        t.name
                    )));
                }
            }
            d = d.max(rd);
            p = p.max(rp);
        }
    }
    Ok((d, p))
}

fn write_type_snapshot(
    mut b: type_snapshot::Builder<'_>,
    t: &SnapshotTypeSource<'_>,
    stride: u16,
    max_shift: u8,
) -> Result<(), FormatError> {
    b.set_type_id(t.info.type_id);
    b.set_name(t.info.name.as_str());
    set_texts(
        b.reborrow().init_key_fields(t.key_fields.len() as u32),
        t.key_fields,
    );
    b.set_record_count(t.record_count);
    b.set_ordinal_limit(t.ordinal_limit);
    b.set_records_slot(t.slot);
    b.set_list_shift(list_shift(stride as usize, max_shift));
    list_len("ordinals", t.ordinal_limit as usize)?;
    let keyed = !t.key_fields.is_empty();
    let mut index = KeyIndexBuilder::new(if keyed { t.record_count } else { 0 });
    let mut bits = vec![0u64; (t.ordinal_limit as usize).div_ceil(64)];
    let mut count = 0u32;
    for o in 0..t.ordinal_limit {
        if let Some((_, hash)) = t.records.record(o) {
            count += 1;
            bits[o as usize / 64] |= 1 << (o % 64);
            if keyed && !index.insert(hash, o) {
                return Err(corrupt_write(format!(
                    "{}: more records than its record count {}",
                    t.info.name, t.record_count
                )));
            }
        }
    }
    if count != t.record_count {
        return Err(corrupt_write(format!(
            "{}: {count} records, but its record count says {}",
            t.info.name, t.record_count
        )));
    }
    if count != t.ordinal_limit {
        let mut list = b.reborrow().init_present(bits.len() as u32);
        list.as_slice()
            .expect("UInt64 list is a slice")
            .copy_from_slice(&bits);
    }
    if keyed {
        let index = index.words();
        let mut list = b.init_key_index(list_len("key index slots", index.len())?);
        list.as_slice()
            .expect("UInt64 list is a slice")
            .copy_from_slice(index);
    }
    Ok(())
}

/// Interning: which pointer fields of a type repeat enough to intern.
/// The first [`INTERN_SAMPLE`] records are sampled; a field is interned
/// when its leaves there are at most half distinct (each value used twice
/// on average), so that a field of unique values (titles, ids as text)
/// costs no hashing beyond the sample.
const INTERN_SAMPLE: u32 = 4096;

fn intern_fields(t: &ListSource<'_>) -> Result<u64, FormatError> {
    let mut seen: Vec<(u32, hashbrown::HashSet<u64>)> = Vec::new();
    for i in 0..t.len.min(INTERN_SAMPLE) {
        let Some(words) = (t.record)(i) else { continue };
        let leaves = wire::leaf_children(words)
            .map_err(|e| corrupt_write(format!("{}: record {i}: {e}", t.name)))?;
        for (field, block) in leaves {
            if field >= 64 {
                continue;
            }
            if seen.len() <= field {
                seen.resize_with(field + 1, Default::default);
            }
            let bytes = crate::schema::record::words_as_bytes(&words[block]);
            seen[field].0 += 1;
            seen[field].1.insert(xxhash_rust::xxh3::xxh3_64(bytes));
        }
    }
    let mut mask = 0u64;
    for (field, (uses, distinct)) in seen.iter().enumerate() {
        if *uses >= 2 && distinct.len() * 2 <= *uses as usize {
            mask |= 1 << field;
        }
    }
    Ok(mask)
}

/// Where a blob is written: a file the producer spools to, or memory
/// (`Vec<u8>`).
///
/// # Contract
///
/// - `write_at` writes `bytes` at byte `offset` of the blob, past its
///   current end if need be; bytes never written read as zeros (a file's
///   hole, a vector's zero fill).
/// - `read_at` fills `buf` from byte `offset`, all of which was written
///   (or lies in a gap below the end) before.
/// - The writer writes each byte at most twice (a reserved word is
///   written once, when it is known), and reads the body back once, in
///   order, to checksum it.
/// - An error (a full disk, a directory gone) stops the write at once;
///   the sink then holds part of a blob and must be discarded.
pub trait BlobSink {
    /// What a failed write or read is; a [`FormatError`] of the records
    /// converts into it.
    type Error: From<FormatError>;
    /// Writes `bytes` at byte `offset`.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Reads `buf.len()` bytes at byte `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl BlobSink for Vec<u8> {
    type Error = FormatError;

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        let at = usize::try_from(offset).map_err(|_| too_large("blob bytes", usize::MAX, 0))?;
        let end = at + bytes.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[at..end].copy_from_slice(bytes);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at + buf.len()))
            .ok_or_else(|| corrupt_write(format!("read past the blob's {} bytes", self.len())))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The byte offset of the segment's first word: after the envelope and the
/// one-word segment table.
const SEGMENT_AT: u64 = ENVELOPE_LEN as u64 + 8;

/// Children are written out once this many words are pending (1 MiB).
const PENDING_WORDS: usize = 1 << 17;

/// Elements are placed this many words at a time (1 MiB), then written.
const WINDOW_WORDS: usize = 1 << 17;

/// The body's checksum reads it back in chunks of this many bytes.
const READ_BACK: usize = 1 << 20;

/// The records area being streamed into a sink: positions are words of
/// the segment; what is appended is held in `pending` and written out in
/// order once it grows, and reserved words (a list's elements, its
/// pointers) are written at their place once they are known.
struct Stream<'s, S: BlobSink> {
    sink: &'s mut S,
    /// Words of the segment written, pending or reserved so far.
    end: usize,
    /// Appended words not yet written; they end at `end`.
    pending: Vec<u64>,
}

impl<S: BlobSink> Stream<'_, S> {
    fn byte(at: usize) -> u64 {
        SEGMENT_AT + at as u64 * 8
    }

    /// Appends `words`; returns the word they start at.
    fn append(&mut self, words: &[u64]) -> usize {
        let at = self.end;
        self.pending.extend_from_slice(words);
        self.end += words.len();
        at
    }

    fn flush(&mut self) -> Result<(), S::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = self.end - self.pending.len();
        self.sink.write_at(
            Self::byte(at),
            crate::schema::record::words_as_bytes(&self.pending),
        )?;
        self.pending.clear();
        Ok(())
    }

    /// Reserves `n` words, written later with [`Stream::write`]; returns
    /// the word they start at.
    fn reserve(&mut self, n: usize) -> Result<usize, S::Error> {
        self.flush()?;
        let at = self.end;
        self.end += n;
        Ok(at)
    }

    /// Writes reserved words.
    fn write(&mut self, at: usize, words: &[u64]) -> Result<(), S::Error> {
        self.sink
            .write_at(Self::byte(at), crate::schema::record::words_as_bytes(words))
    }
}

/// Streams the body into `sink` and frames it: the skeleton (built by
/// Cap'n Proto's builder, in memory), then the records area (the pool of
/// interned leaves, the `Records` struct, then each type's lists in slot
/// order, in canonical pre-order: the layout [`wire::check_records`]
/// accepts), then the segment table and the envelope, which need the
/// body's length and checksum. Returns the blob's length in bytes.
///
/// Memory: the skeleton, the pool, one window of elements
/// ([`WINDOW_WORDS`]), the children pending ([`PENDING_WORDS`]) and each
/// type's list pointers; never the records area.
#[allow(clippy::too_many_arguments)]
fn stream_body<S: BlobSink>(
    message: &capnp::message::Builder<capnp::message::HeapAllocator>,
    types: &[ListSource<'_>],
    sizes: &[(u16, u16)],
    max_shift: u8,
    kind: BlobKind,
    from: u64,
    to: u64,
    sink: &mut S,
) -> Result<u64, S::Error> {
    let segments = message.get_segments_for_output();
    if segments.len() != 1 {
        return Err(corrupt_write("skeleton spans several segments".into()).into());
    }
    let mut skeleton: Vec<u64> = segments[0]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let mut s = Stream {
        sink,
        end: skeleton.len(),
        pending: Vec::new(),
    };
    if types.is_empty() {
        s.write(0, &skeleton)?;
        return seal(s, kind, from, to);
    }
    // The root's `records` pointer (pointer 2 of the root struct).
    let root = wire::Ptr(skeleton[0]);
    let records_ptr = 1 + root.offset() as usize + root.data_words() as usize + RECORDS_POINTER;
    let mut masks = Vec::with_capacity(types.len());
    let mut interner = wire::Interner::default();
    for t in types {
        let mask = intern_fields(t)?;
        if mask != 0 {
            for i in 0..t.len {
                let Some(words) = (t.record)(i) else { continue };
                let leaves = wire::leaf_children(words)
                    .map_err(|e| corrupt_write(format!("{}: record {i}: {e}", t.name)))?;
                for (field, block) in leaves {
                    if field < 64 && mask >> field & 1 == 1 {
                        interner.find_or_add(&words[block], true);
                    }
                }
            }
        }
        masks.push(mask);
    }
    let pool_at = s.reserve(interner.pool().len())?;
    s.write(pool_at, interner.pool())?;
    let slots = types.iter().map(|t| t.slot as usize + 1).max().unwrap_or(0);
    if slots > u16::MAX as usize {
        return Err(too_large("record slots", slots, u16::MAX as usize).into());
    }
    let records_at = s.reserve(slots)?;
    let mut records = vec![0u64; slots];
    skeleton[records_ptr] =
        wire::Ptr::to_struct((records_at - records_ptr - 1) as i64, 0, slots as u16);
    s.write(0, &skeleton)?;
    drop(skeleton);
    let mut order: Vec<usize> = (0..types.len()).collect();
    order.sort_by_key(|&i| types[i].slot);
    for w in order.windows(2) {
        if types[w[0]].slot == types[w[1]].slot {
            return Err(corrupt_write(format!(
                "{} and {} share records slot {}",
                types[w[0]].name, types[w[1]].name, types[w[0]].slot
            ))
            .into());
        }
    }
    let mut window: Vec<u64> = Vec::new();
    for i in order {
        let t = &types[i];
        let (data, ptrs) = sizes[i];
        let stride = data as usize + ptrs as usize;
        let shift = list_shift(stride, max_shift);
        let per_list = 1usize << shift;
        let lists = (t.len as usize).div_ceil(per_list);
        let slot = t.slot as usize;
        let lists_at = s.reserve(lists)?;
        records[slot] = wire::Ptr::to_list(
            (lists_at - (records_at + slot) - 1) as i64,
            wire::SIZE_POINTER,
            lists as u32,
        );
        let mut list_ptrs = vec![0u64; lists];
        let plan = wire::InternPlan {
            fields: masks[i],
            interner: &interner,
            pool_at,
        };
        // Elements placed per window: at least one.
        let per_window = (WINDOW_WORDS / stride.max(1)).max(1);
        for (k, list_ptr) in list_ptrs.iter_mut().enumerate() {
            let first = k * per_list;
            let n = per_list.min(t.len as usize - first);
            let tag_at = s.reserve(1 + n * stride)?;
            *list_ptr = wire::Ptr::to_list(
                (tag_at - (lists_at + k) - 1) as i64,
                wire::SIZE_COMPOSITE,
                (n * stride) as u32,
            );
            s.write(tag_at, &[wire::Ptr::to_struct(n as i64, data, ptrs)])?;
            let elems_at = tag_at + 1;
            for start in (0..n).step_by(per_window) {
                let count = per_window.min(n - start);
                window.clear();
                window.resize(count * stride, 0);
                for e in 0..count {
                    let ordinal = first + start + e;
                    let Some(words) = (t.record)(ordinal as u32) else {
                        continue;
                    };
                    let at = elems_at + (start + e) * stride;
                    let element = &mut window[e * stride..(e + 1) * stride];
                    wire::place_record(words, element, at, data, &plan, |block| s.append(block))
                        .map_err(|err| {
                            corrupt_write(format!("{}: record {ordinal}: {err}", t.name))
                        })?;
                    if s.pending.len() >= PENDING_WORDS {
                        s.flush()?;
                    }
                }
                s.write(elems_at + start * stride, &window)?;
            }
            crate::failpoint::hit("mid-blob-write");
        }
        s.flush()?;
        s.write(lists_at, &list_ptrs)?;
    }
    s.flush()?;
    s.write(records_at, &records)?;
    seal(s, kind, from, to)
}

/// Ends a body streamed through `s`: checks its size, writes the segment
/// table, reads the body back to checksum it and writes the envelope (the
/// body comes first in the file but last in time, so the checksum cannot
/// be computed as it is written).
fn seal<S: BlobSink>(
    mut s: Stream<'_, S>,
    kind: BlobKind,
    from: u64,
    to: u64,
) -> Result<u64, S::Error> {
    s.flush()?;
    if s.end > u32::MAX as usize {
        return Err(too_large("blob words", s.end, u32::MAX as usize).into());
    }
    let table = (s.end as u64) << 32;
    s.sink.write_at(ENVELOPE_LEN as u64, &table.to_le_bytes())?;
    let body_len = 8 + s.end as u64 * 8;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut chunk = vec![0u8; READ_BACK.min(body_len as usize)];
    let mut at = 0u64;
    while at < body_len {
        let n = (body_len - at).min(READ_BACK as u64) as usize;
        s.sink.read_at(ENVELOPE_LEN as u64 + at, &mut chunk[..n])?;
        hasher.update(&chunk[..n]);
        at += n as u64;
    }
    let envelope = Envelope {
        kind,
        from_version: from,
        to_version: to,
        body_len,
        checksum: hasher.digest128(),
    };
    s.sink.write_at(0, &envelope.encode())?;
    Ok(ENVELOPE_LEN as u64 + body_len)
}

/// The pointer index of `records` in the `Snapshot` and `Delta` roots.
const RECORDS_POINTER: usize = 2;

fn set_texts(mut list: capnp::text_list::Builder<'_>, texts: &[String]) {
    for (i, text) in texts.iter().enumerate() {
        list.set(i as u32, text.as_str());
    }
}

/// Writes a whole delta or reverse delta blob in memory. `kind` is
/// [`BlobKind::Delta`] or [`BlobKind::Reverse`]; the envelope carries
/// `from -> to` as given (for a reverse delta, `from > to`). What
/// [`stream_delta`] streams, into a vector.
pub fn write_delta(
    kind: BlobKind,
    head: &HeaderInfo<'_>,
    types: &[DeltaTypeSource<'_>],
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    stream_delta(kind, head, types, &mut out)?;
    Ok(out)
}

/// Streams a delta or reverse delta blob into `sink` (see [`write_delta`]
/// and [`BlobSink`]); returns its length in bytes.
pub fn stream_delta<S: BlobSink>(
    kind: BlobKind,
    head: &HeaderInfo<'_>,
    types: &[DeltaTypeSource<'_>],
    sink: &mut S,
) -> Result<u64, S::Error> {
    let sources: Vec<ListSource<'_>> = types.iter().map(delta_source).collect();
    let sizes = sources
        .iter()
        .map(|t| element_size(t, head.schema))
        .collect::<Result<Vec<_>, _>>()?;
    let type_words = |t: &DeltaTypeSource<'_>| {
        24 + t.removed.len() * 2
            + t.set.len() * 2
            + t.name.len() / 8
            + t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>()
    };
    let skeleton_words = head.words() + 16 + types.iter().map(type_words).sum::<usize>();
    let mut message = builder_for(skeleton_words)?;
    {
        let mut root = message.init_root::<delta::Builder<'_>>();
        head.write(root.reborrow().init_header())
            .map_err(capnp_write)?;
        let mut list = root.init_types(list_len("types", types.len())?);
        for (i, (t, &(d, p))) in types.iter().zip(&sizes).enumerate() {
            write_type_delta(list.reborrow().get(i as u32), t, d + p, head.max_list_shift)?;
        }
    }
    stream_body(
        &message,
        &sources,
        &sizes,
        head.max_list_shift,
        kind,
        head.from_version,
        head.to_version,
        sink,
    )
}

fn write_type_delta(
    mut b: type_delta::Builder<'_>,
    t: &DeltaTypeSource<'_>,
    stride: u16,
    max_shift: u8,
) -> Result<(), FormatError> {
    b.set_type_id(t.type_id);
    b.set_name(t.name);
    set_texts(
        b.reborrow().init_key_fields(t.key_fields.len() as u32),
        t.key_fields,
    );
    b.set_record_count_after(t.record_count_after);
    b.set_ordinal_limit_after(t.ordinal_limit_after);
    b.set_records_slot(t.slot);
    b.set_list_shift(list_shift(stride as usize, max_shift));
    if t.dropped {
        if !t.removed.is_empty()
            || !t.set.is_empty()
            || t.record_count_after != 0
            || t.ordinal_limit_after != 0
        {
            return Err(corrupt_write(format!(
                "{}: a dropped type must carry no records",
                t.name
            )));
        }
        b.set_dropped(true);
    }
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
    {
        let mut ordinals = b.reborrow().init_ordinals(n);
        let ordinals = ordinals.as_slice().expect("slice");
        for (dst, (o, _, _)) in ordinals.iter_mut().zip(t.set) {
            *dst = *o;
        }
    }
    let mut hashes = b.init_key_hashes(n);
    let hashes = hashes.as_slice().expect("slice");
    for (dst, (_, _, h)) in hashes.iter_mut().zip(t.set) {
        *dst = *h;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(Vec<u64>);

    impl SnapshotRecords for One {
        fn record(&self, _: u32) -> Option<(&[u64], u64)> {
            Some((&self.0, 7))
        }
    }

    /// Invariant: the writer never lays out elements larger than the
    /// type's node in the header (which readers refuse): a record with
    /// more data words than its type's schema is refused by name.
    #[test]
    fn records_larger_than_their_schema_are_refused() {
        use crate::schema::record::TypeInfo;
        let info = TypeInfo::of::<crate::schema::movies_capnp::movie::Owned>();
        let schema = DatasetSchema::of(std::slice::from_ref(&info)).unwrap();
        assert_eq!(schema.struct_size(info.type_id), Some((2, 2)));
        // A canonical record of 3 data words, one of them beyond Movie's.
        let record = One(vec![wire::Ptr::to_struct(0, 3, 0), 1, 1990, 5]);
        let head = HeaderInfo::for_test(&schema);
        let source = SnapshotTypeSource {
            info: &info,
            key_fields: &[],
            ordinal_limit: 1,
            record_count: 1,
            slot: 0,
            records: &record,
            indexes: &[],
        };
        let err = write_snapshot(&head, &[source]).unwrap_err().to_string();
        assert!(
            err.contains("record 0 has 3 data words and 0 pointers, more than the type's schema"),
            "{err}"
        );
    }

    /// Invariant: where the build ran does not reach blobs: a node named by
    /// an absolute file path is written under its file name, with the same
    /// canonical bytes as a node compiled with `src_prefix`.
    #[test]
    fn absolute_display_names_are_written_portably() {
        let node = |name: &str, prefix: u32| {
            let mut m = capnp::message::Builder::new_default();
            let mut n: capnp::schema_capnp::node::Builder<'_> = m.init_root();
            n.set_id(0xabcd);
            n.set_display_name(name);
            n.set_display_name_prefix_length(prefix);
            m
        };
        let absolute = node("/home/ci/build/schema/library.capnp:Book", 36);
        let relative = node("library.capnp:Book", 14);
        let read = |m: &capnp::message::Builder<capnp::message::HeapAllocator>| {
            portable_canonical_node(m.get_root_as_reader().unwrap()).unwrap()
        };
        assert_eq!(read(&absolute), read(&relative));
        let kept = node("examples/movies.capnp:Movie", 22);
        let words = read(&kept);
        let bytes = capnp::Word::words_to_bytes(&words);
        assert!(bytes.windows(8).any(|w| w == b"examples"));
    }
}
