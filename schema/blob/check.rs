//! Proving a blob's contents before anything walks them: what
//! [`OpenBlob::verify`] checks beyond the envelope.
//!
//! Opening a blob ([`OpenBlob::snapshot`], [`OpenBlob::delta`]) reads its
//! type entries and locates its record lists, and nothing more, so that a
//! mapped state opens in time independent of its records. What a reader
//! then trusts without looking is proven here, once per blob, when it
//! enters a cache (the cache's fetch, after its streamed checksum) and
//! when a consumer re-verifies a cached file, and by whole-blob readers
//! (restore, `burrow verify`) before they walk every record:
//!
//! 1. the type entries and record lists, as opening reads them (so that
//!    damage there is named as such, not as a stray pointer);
//! 2. the records' layout ([`wire::check_records`]): every object in
//!    pre-order, once, only leaves shared, no pointer outside the body, and
//!    a walk that follows every pointer bounded by a constant factor of
//!    the body;
//! 3. in a snapshot, each keyed type's key index against its records: a
//!    lookup of every record's key reaches the slot naming it;
//! 4. in a snapshot, each secondary index: its lists are exactly what
//!    the records give ([`crate::schema::index::check`]).

use super::read::{struct_size, text, texts, OpenBlob, MAX_INDEXES};
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, snapshot};
use crate::schema::envelope::BlobKind;
use crate::schema::index::{self, IndexDef, IndexTable, NodeIndex};
use crate::schema::key_index::KeyIndex;
use crate::schema::node_key::NodeKey;
use crate::schema::wire;

impl OpenBlob {
    /// Checks the body against the envelope's checksum, then its contents
    /// ([`Self::check_contents`]): what a consumer re-checks of a cached
    /// blob in the background.
    pub fn verify(&self) -> Result<(), FormatError> {
        self.envelope().verify_body(self.body(), self.name())?;
        self.check_contents().map(|_| ())
    }

    /// Everything [`Self::verify`] proves but the checksum (see the module
    /// doc): what a cache proves of a blob before it enters (its checksum
    /// was checked as it streamed in), and what a whole-blob reader proves
    /// before it walks the records.
    pub fn check_contents(&self) -> Result<wire::RecordsCheck, FormatError> {
        let kind = self.envelope().kind;
        if kind == BlobKind::Announcement {
            return Ok(wire::RecordsCheck::default());
        }
        self.check_lists()?;
        let layout = self.check_layout()?;
        if kind == BlobKind::Snapshot {
            self.check_key_indexes()?;
            self.check_indexes()?;
        }
        Ok(layout)
    }

    /// The type entries and record lists, checked as opening checks them.
    fn check_lists(&self) -> Result<(), FormatError> {
        if self.envelope().kind == BlobKind::Snapshot {
            let mut slots = std::collections::HashSet::new();
            self.sections::<snapshot::Owned, _>(|t, nodes| {
                let name = text(t.get_name(), self.name(), "type name")?;
                let present = t.get_present().map_err(self.cap("presence bitmap"))?;
                let present = words(self, &present, "presence bitmap")?;
                self.snapshot_lists(&name, t, present, nodes, &mut slots)
                    .map(drop)
            })?;
        } else {
            self.sections::<delta::Owned, _>(|t, nodes| {
                let name = text(t.get_name(), self.name(), "type name")?;
                let set = t.get_ordinals().map_err(self.cap("ordinals"))?.len();
                let (slot, shift) = (t.get_records_slot(), t.get_list_shift());
                let size = struct_size(nodes, t.get_type_id());
                self.record_lists(&name, slot, shift, set, size).map(drop)
            })?;
        }
        Ok(())
    }

    /// Proves the records area's layout ([`wire::check_records`]): every
    /// object below the records in pre-order, each once, only leaves
    /// shared, and a walker that follows every pointer reads at most
    /// eight times the body's words (plus 64 Ki words).
    pub fn check_layout(&self) -> Result<wire::RecordsCheck, FormatError> {
        let Some(at) = self.records_pointer()? else {
            return Ok(wire::RecordsCheck::default());
        };
        let seg = self.segment();
        let bound = (seg.len() as u64).saturating_mul(8).saturating_add(1 << 16);
        wire::check_records(seg, at, bound)
            .map_err(|reason| self.corrupt(format!("records: {reason}")))
    }

    /// Checks each snapshot type's secondary indexes against its records
    /// ([`crate::schema::index::check`]): each index's fields resolve
    /// against the type's schema node in the header, and its lists are
    /// exactly what [`crate::schema::index::build`] makes of the records
    /// (a unique index's records hold distinct values). Reads every
    /// record's indexed fields: O(records) per index.
    pub fn check_indexes(&self) -> Result<(), FormatError> {
        let mut slots = std::collections::HashSet::new();
        self.sections::<snapshot::Owned, _>(|t, nodes| {
            let list = t.get_indexes().map_err(self.cap("indexes"))?;
            if list.is_empty() {
                return Ok(());
            }
            let name = text(t.get_name(), self.name(), "type name")?;
            let bad = |reason: String| self.corrupt(format!("{name}: {reason}"));
            if list.len() > MAX_INDEXES {
                return Err(bad(format!(
                    "{} indexes, more than {MAX_INDEXES}",
                    list.len()
                )));
            }
            let present = t.get_present().map_err(self.cap("presence bitmap"))?;
            let present = words(self, &present, "presence bitmap")?;
            let lists = self.snapshot_lists(&name, t, present, nodes, &mut slots)?;
            let type_id = t.get_type_id();
            let node = nodes
                .get(&type_id)
                .ok_or_else(|| bad(format!("no schema node for type {type_id:#018x}")))?;
            let is_present = |o: u32| {
                present.is_empty()
                    || present
                        .get(o as usize / 64)
                        .is_some_and(|w| w >> (o % 64) & 1 == 1)
            };
            let seg = self.segment();
            let (data, ptrs) = (lists.data as usize, lists.ptrs as usize);
            let mut names = std::collections::HashSet::new();
            for e in list.iter() {
                let def = IndexDef {
                    name: text(e.get_name(), self.name(), "index name")?,
                    fields: texts(e.get_fields(), self.name())?,
                    unique: e.get_unique(),
                };
                if !names.insert(def.name.clone()) {
                    return Err(bad(format!("two indexes named {}", def.name)));
                }
                let resolved = NodeIndex::resolve(*node, &def).map_err(&bad)?;
                let table = e.get_table().map_err(self.cap("index table"))?;
                let starts = e.get_starts().map_err(self.cap("index starts"))?;
                let postings = e.get_postings().map_err(self.cap("index postings"))?;
                let u32s = |l: &capnp::primitive_list::Reader<'_, u32>, what: &str| {
                    if l.is_empty() {
                        return Ok(Vec::new());
                    }
                    l.as_slice().map(<[u32]>::to_vec).ok_or_else(|| {
                        bad(format!(
                            "index {}: {what} is not a list of UInt32",
                            def.name
                        ))
                    })
                };
                let (starts, postings) = (u32s(&starts, "starts")?, u32s(&postings, "postings")?);
                let stored = IndexTable {
                    table: words(self, &table, "index table")?,
                    starts: &starts,
                    postings: &postings,
                };
                let present = (0..t.get_ordinal_limit().min(lists.len)).filter(|&o| is_present(o));
                let rebuilt = index::build(&def, present, |o, out| {
                    resolved
                        .values(seg, lists.element(o), data, ptrs, out)
                        .map_err(|e| format!("index {}: record {o}: {e}", def.name))
                })
                .map_err(&bad)?;
                index::check(&def, stored, &rebuilt).map_err(&bad)?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// Checks each keyed type's key index against its records: every
    /// occupied slot names a distinct ordinal holding a record, there is
    /// one slot per record and a free one ([`KeyIndex::check`]), and a
    /// lookup of each record's key, read by the schema node the header
    /// carries, reaches the slot naming it ([`KeyIndex::check_keys`]). A
    /// reader confirms every candidate by its key, so a bad index could
    /// only leave records unfound; this makes it a named error instead.
    /// Reads every keyed record's key fields: O(records).
    pub fn check_key_indexes(&self) -> Result<(), FormatError> {
        let mut slots = std::collections::HashSet::new();
        self.sections::<snapshot::Owned, _>(|t, nodes| {
            let key_fields = texts(t.get_key_fields(), self.name())?;
            let name = text(t.get_name(), self.name(), "type name")?;
            let bad = |reason: String| self.corrupt(format!("{name}: {reason}"));
            let present = t.get_present().map_err(self.cap("presence bitmap"))?;
            let present = words(self, &present, "presence bitmap")?;
            let lists = self.snapshot_lists(&name, t, present, nodes, &mut slots)?;
            if key_fields.is_empty() {
                return Ok(());
            }
            let index = t.get_key_index().map_err(self.cap("key index"))?;
            let index = KeyIndex::new(words(self, &index, "key index")?);
            let is_present = |o: u32| {
                present.is_empty()
                    || present
                        .get(o as usize / 64)
                        .is_some_and(|w| w >> (o % 64) & 1 == 1)
            };
            let (limit, count) = (t.get_ordinal_limit(), t.get_record_count());
            index.check(limit, is_present, count).map_err(bad)?;
            if index.slots() == 0 {
                return Ok(());
            }
            let type_id = t.get_type_id();
            let node = nodes
                .get(&type_id)
                .ok_or_else(|| bad(format!("no schema node for type {type_id:#018x}")))?;
            let key = NodeKey::resolve(*node, &key_fields).map_err(bad)?;
            let seg = self.segment();
            let (data, ptrs) = (lists.data as usize, lists.ptrs as usize);
            let mut bytes = Vec::new();
            index
                .check_keys(|o| {
                    bytes.clear();
                    key.encode_struct(seg, lists.element(o), data, ptrs, &mut bytes)
                        .map_err(|e| format!("the key of ordinal {o}: {e}"))?;
                    Ok(crate::schema::key::key_hash(&bytes))
                })
                .map_err(bad)
        })
        .map(drop)
    }
}

/// A `List(UInt64)` field as words of the blob (a null list: none).
fn words<'r>(
    blob: &OpenBlob,
    list: &'r capnp::primitive_list::Reader<'_, u64>,
    what: &'static str,
) -> Result<&'r [u64], FormatError> {
    if list.is_empty() {
        return Ok(&[]);
    }
    list.as_slice()
        .ok_or_else(|| blob.corrupt(format!("{what} is not a list of the expected element size")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::blob::{
        write_snapshot, DatasetSchema, HeaderInfo, SnapshotRecords, SnapshotTypeSource,
    };
    use crate::schema::key::{KeyBuf, KeySpec};
    use crate::schema::movies_capnp::movie;
    use crate::schema::record::TypeInfo;
    use crate::schema::wire::Ptr;

    /// A snapshot's movies by ordinal (`None`: a hole), as canonical
    /// records with their key hashes.
    struct Movies(Vec<Option<(Vec<u64>, u64)>>);

    impl SnapshotRecords for Movies {
        fn record(&self, ordinal: u32) -> Option<(&[u64], u64)> {
            let (words, hash) = self.0[ordinal as usize].as_ref()?;
            Some((words, *hash))
        }
    }

    /// A snapshot of 10 movies (ordinals 0..11, ordinal 4 a hole), keyed by
    /// id, as the writer lays it out.
    fn snapshot() -> Vec<u8> {
        let info = TypeInfo::of::<movie::Owned>();
        let spec = KeySpec::resolve(&info, &["id"]).unwrap();
        let records = (0..11u64)
            .map(|id| {
                (id != 4).then(|| {
                    let mut message = capnp::message::Builder::new_default();
                    let mut m = message.init_root::<movie::Builder<'_>>();
                    m.set_id(id);
                    m.set_year(1990);
                    m.set_title(format!("movie {id}").as_str());
                    m.init_tags(1).set(0, "drama");
                    let mut words = Vec::new();
                    crate::schema::record::append_canonical(
                        message.get_root_as_reader().unwrap(),
                        None,
                        &mut Vec::new(),
                        &mut words,
                    )
                    .unwrap();
                    let mut key = KeyBuf::new();
                    assert!(spec.encode_words(&words, &mut key));
                    (words, key.hash())
                })
            })
            .collect();
        let records = Movies(records);
        let schema = DatasetSchema::of(std::slice::from_ref(&info)).unwrap();
        let head = HeaderInfo::for_test(&schema);
        let key_fields = ["id".to_string()];
        let source = SnapshotTypeSource {
            info: &info,
            key_fields: &key_fields,
            ordinal_limit: 11,
            record_count: 10,
            slot: 0,
            records: &records,
            indexes: &[],
        };
        write_snapshot(&head, &[source]).unwrap()
    }

    /// The words of a blob's segment, to damage and reseal.
    fn words(bytes: &[u8]) -> Vec<u64> {
        bytes[crate::schema::envelope::ENVELOPE_LEN + 8..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// The blob of `bytes` with its segment replaced by `seg`, resealed.
    fn resealed(bytes: &[u8], seg: &[u64]) -> OpenBlob {
        let start = crate::schema::envelope::ENVELOPE_LEN;
        let mut body = bytes[start..start + 8].to_vec();
        body.extend(seg.iter().flat_map(|w| w.to_le_bytes()));
        let blob = crate::schema::envelope::frame(BlobKind::Snapshot, 0, 1, &body);
        OpenBlob::from_bytes(&blob, "snapshot/1").unwrap()
    }

    /// Where the one type's presence bitmap and key index lie, and its
    /// record list's tag, in words of the segment, found by the reader.
    fn entry(
        blob: &std::sync::Arc<OpenBlob>,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, usize) {
        let (_, sections) = blob.snapshot().unwrap();
        let s = &sections[0];
        let at = |p: *const u64| (p as usize - blob.segment().as_ptr() as usize) / 8;
        let present = at(s.present.get().as_ptr());
        let index = at(s.key_index.get().as_ptr());
        (
            present..present + s.present.get().len(),
            index..index + s.key_index.get().len(),
            s.lists.starts[0] - 1,
        )
    }

    /// Invariant: what the writer lays out passes every check, and each
    /// kind of damage the checks exist for is refused by name: elements
    /// larger than the type's node, a presence bit the record count does
    /// not account for, a key index entry naming another record.
    #[test]
    fn check_contents_names_the_damage() {
        let bytes = snapshot();
        let blob = std::sync::Arc::new(OpenBlob::from_bytes(&bytes, "snapshot/1").unwrap());
        let layout = blob.check_contents().unwrap();
        assert_eq!(layout.records, 11);
        let (present, index, tag_at) = entry(&blob);
        let seg = words(&bytes);

        // Elements of the node's size (2 data words, 2 pointers) read as
        // one data word more and one pointer fewer.
        let mut bad = seg.clone();
        let tag = Ptr(bad[tag_at]);
        bad[tag_at] = Ptr::to_struct(tag.offset(), tag.data_words() + 1, tag.ptr_count() - 1);
        let err = resealed(&bytes, &bad)
            .check_contents()
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than the type's struct"), "{err}");

        // The hole's presence bit set.
        let mut bad = seg.clone();
        bad[present.start] |= 1 << 4;
        let err = resealed(&bytes, &bad)
            .check_contents()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("presence bitmap marks 11 ordinals, but the record count is 10"),
            "{err}"
        );
        // A bit past the ordinal limit.
        let mut bad = seg.clone();
        bad[present.start] |= 1 << 40;
        let err = resealed(&bytes, &bad)
            .check_contents()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("marks ordinal 40, past the ordinal limit 11"),
            "{err}"
        );

        // Two entries' ordinals swapped.
        let mut bad = seg.clone();
        let used: Vec<usize> = index.filter(|&s| bad[s] != 0).take(2).collect();
        let (a, b) = (bad[used[0]], bad[used[1]]);
        bad[used[0]] = a & !0xffff_ffff | b & 0xffff_ffff;
        bad[used[1]] = b & !0xffff_ffff | a & 0xffff_ffff;
        let err = resealed(&bytes, &bad)
            .check_contents()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("whose key does not hash to the slot's tag"),
            "{err}"
        );
    }
}
