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
//!    lookup of every record's key reaches the slot naming it.

use super::read::{struct_size, text, texts, OpenBlob};
use crate::error::FormatError;
use crate::schema::burrow_capnp::{delta, snapshot};
use crate::schema::envelope::BlobKind;
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
    list.as_slice().ok_or_else(|| {
        blob.corrupt(format!(
            "{what} is not a list of the expected element size"
        ))
    })
}
