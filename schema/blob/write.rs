//! Writing blob bodies: a snapshot or a delta as one single-segment
//! Cap'n Proto message sized up front, framed by the envelope.

use super::{Layout, MAX_LIST_ELEMENTS};
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, header, snapshot, type_delta, type_snapshot};
use crate::schema::dataset_id::DatasetId;
use crate::schema::envelope::{frame, BlobKind};
use crate::schema::key_index::KeyIndexBuilder;
use crate::schema::record::TypeInfo;
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
fn portable_canonical_node(
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
    /// Sum of the words of every record; the writer checks it.
    pub total_words: usize,
    /// Where the writer reads each ordinal's record.
    pub records: &'a dyn SnapshotRecords,
}

/// Where the snapshot writer reads a type's records.
pub trait SnapshotRecords {
    /// The record at an ordinal and its key hash; `None` for a hole.
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
    /// Sorted ordinals set, with their record and key hash.
    pub set: &'a [(u32, &'a [u64], u64)],
    /// The type's record count once the delta is applied.
    pub record_count_after: u32,
    /// The type's ordinal limit (one past its highest ordinal) once the
    /// delta is applied.
    pub ordinal_limit_after: u32,
    /// The type leaves the state: `removed` and `set` must be empty and
    /// both counts 0.
    pub dropped: bool,
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
    FormatError::Corrupt {
        blob: "(being written)".into(),
        reason: e.to_string(),
    }
}

/// The size of a snapshot type's key index for `count` keys (see
/// [`crate::schema::key_index`]).
pub use crate::schema::key_index::slots_for as index_slots;

/// Writes a whole snapshot blob (envelope and body).
pub fn write_snapshot(
    head: &HeaderInfo<'_>,
    types: &[SnapshotTypeSource<'_>],
) -> Result<Vec<u8>, FormatError> {
    let type_words = |t: &SnapshotTypeSource<'_>| {
        let mut words = 16 + t.total_words + (t.ordinal_limit as usize + 2) / 2;
        if !t.key_fields.is_empty() {
            words += 2 * index_slots(t.record_count);
        }
        words
            + t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>()
            + t.info.name.len() / 8
            + 2
    };
    let body = write_body::<snapshot::Owned, _>(head, types, type_words, write_type_snapshot)?;
    Ok(frame(BlobKind::Snapshot, 0, head.to_version, &body))
}

/// The body every blob kind shares: one single-segment message sized up
/// front (the header's words, 16, and `type_words` of each type), whose
/// root `L` holds the header written from `head` and one entry per type,
/// written by `write_type`.
fn write_body<L: Layout, T>(
    head: &HeaderInfo<'_>,
    types: &[T],
    type_words: impl Fn(&T) -> usize,
    write_type: impl Fn(
        <L::Entry as capnp::traits::OwnedStruct>::Builder<'_>,
        &T,
    ) -> Result<(), FormatError>,
) -> Result<Vec<u8>, FormatError> {
    let estimate = head.words() + 16 + types.iter().map(type_words).sum::<usize>();
    let mut message = builder_for(estimate)?;
    {
        let root = message.init_root::<L::Builder<'_>>();
        let mut list = L::init(root, |h| head.write(h), list_len("types", types.len())?)
            .map_err(capnp_write)?;
        for (i, t) in types.iter().enumerate() {
            write_type(list.reborrow().get(i as u32), t)?;
        }
    }
    Ok(capnp::serialize::write_message_to_words(&message))
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
    let mut index = KeyIndexBuilder::new(if keyed { t.record_count } else { 0 });
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
                if keyed && !index.insert(hash, o, start, record.len() as u32) {
                    return Err(FormatError::Corrupt {
                        blob: "(being written)".into(),
                        reason: format!(
                            "{}: more records than its record count {}",
                            t.info.name, t.record_count
                        ),
                    });
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
        let index = index.words();
        let mut list = b.init_key_index(list_len("key index slots", index.len())?);
        list.as_slice()
            .expect("UInt64 list is a slice")
            .copy_from_slice(index);
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
    let type_words = |t: &DeltaTypeSource<'_>| {
        let words: usize = t.set.iter().map(|(_, r, _)| r.len()).sum();
        24 + words
            + t.removed.len() * 2
            + t.set.len() * 2
            + t.name.len() / 8
            + t.key_fields.iter().map(|k| 2 + k.len() / 8).sum::<usize>()
    };
    let body = write_body::<delta::Owned, _>(head, types, type_words, write_type_delta)?;
    Ok(frame(kind, head.from_version, head.to_version, &body))
}

fn write_type_delta(
    mut b: type_delta::Builder<'_>,
    t: &DeltaTypeSource<'_>,
) -> Result<(), FormatError> {
    b.set_type_id(t.type_id);
    b.set_name(t.name);
    set_texts(
        b.reborrow().init_key_fields(t.key_fields.len() as u32),
        t.key_fields,
    );
    b.set_record_count_after(t.record_count_after);
    b.set_ordinal_limit_after(t.ordinal_limit_after);
    if t.dropped {
        if !t.removed.is_empty()
            || !t.set.is_empty()
            || t.record_count_after != 0
            || t.ordinal_limit_after != 0
        {
            return Err(FormatError::Corrupt {
                blob: "(being written)".into(),
                reason: format!("{}: a dropped type must carry no records", t.name),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

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
