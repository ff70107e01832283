//! A consumer's read state: the records of one version, read in place from
//! mapped blobs.
//!
//! Records are elements of struct lists in the blobs (format v2): a
//! snapshot's element `o` is ordinal `o`, a delta's element `i` is the
//! `i`-th ordinal it sets. Per type, a table maps each ordinal to where its
//! record lives: in the snapshot the state started from, or in one of the
//! deltas applied since. The table is a list of fixed-size chunks; a chunk
//! that no delta touched is implicit (the snapshot's element and presence
//! bit say where the record is), and a delta copies only the chunks it
//! touches (copy on write), so applying a delta costs work in proportion to
//! the delta, and a state opened from a snapshot costs nothing per record.
//!
//! Reads hand out the generated reader of the element ([`Element`]),
//! reached by arithmetic on lists validated once per view
//! ([`ReadState::view`]): a lookup is the key index slot and the record
//! (the overlay is consulted only when a delta added keys, the table only
//! for an ordinal a delta touched), and iteration walks runs of untouched
//! ordinals straight down the snapshot's lists. Key lookups use the key
//! index the producer built into the snapshot, behind a small overlay of
//! keys added by deltas since; each candidate is confirmed by comparing the
//! record's own key (an integer key straight from the element's data
//! section), so a stale index entry (a removed key, a reused ordinal) can
//! never answer.
//!
//! A state belongs to one dataset ([`ReadState::dataset_id`], from its
//! snapshot's header): a delta whose header names another is refused with
//! [`FormatError::DatasetMismatch`], naming the delta and both ids.
//!
//! States are immutable once built; the consumer swaps whole states in
//! atomically, and a reader holding an `Arc<ReadState>` keeps a consistent
//! view for as long as it holds it.

use super::index::{IndexBuild, IndexState, IndexView};
use crate::error::{Error, FormatError, KeyError};
use crate::schema::blob::{BlobHeader, DeltaSection, OpenBlob, RecordLists, SnapshotSection};
use crate::schema::checksum;
use crate::schema::dataset_id::{check_same, DatasetId};
use crate::schema::envelope::BlobKind;
use crate::schema::evolve::{self, SchemaError};
use crate::schema::index::{IndexDef, NodeIndex};
use crate::schema::key::{Key, KeyBuf, KeySpec, ResolvedKey};
use crate::schema::key_index::KeyIndex;
use crate::schema::record::{Element, RecordType, TypeInfo};
use hashbrown::HashMap;
use std::sync::{Arc, Mutex};

/// Ordinals per chunk of the location table.
const CHUNK: usize = 64;
/// A record's location: part (0 = the snapshot, p = the p-th delta applied)
/// in the high 32 bits, element index within the part in the low 32.
type Loc = u64;
const HOLE: Loc = u64::MAX;
/// The most deltas a state can stack on its snapshot; a consumer moves to a
/// newer snapshot well before this.
const MAX_PARTS: usize = u16::MAX as usize;

/// The free ordinals a delta that creates a type may open beyond the
/// records it sets: a re-created type keeps the holes it had, and this
/// bounds the location table such a delta can make (8 MiB).
const MAX_CREATED_HOLES: u64 = 1 << 26;

/// A schema check's outcome for one generated type
/// ([`evolve::generated_identity`]).
type Verdict = (usize, Result<(), SchemaError>);

/// The records of one type in a read state.
#[derive(Clone)]
pub struct TypeData {
    type_id: u64,
    name: String,
    key_fields: Vec<String>,
    record_count: u32,
    ordinal_limit: u32,
    base: Option<Arc<SnapshotSection>>,
    chunks: Vec<Option<Arc<[Loc; CHUNK]>>>,
    parts: Vec<Arc<DeltaSection>>,
    /// Key hash → ordinals of records added by deltas since the snapshot.
    overlay: Arc<HashMap<u64, Vec<u32>>>,
    /// Secondary indexes: the snapshot's, then those the consumer built
    /// ([`super::index`]).
    indexes: Vec<IndexState>,
    blob_name: Arc<str>,
    /// The blobs whose schema nodes describe this type's records (its
    /// snapshot's and each delta's), one per distinct schema hash: what
    /// [`ReadState::view`] checks generated code against.
    schemas: Vec<(u64, Arc<OpenBlob>)>,
    /// The verdicts of those checks, by generated code
    /// ([`evolve::generated_identity`]); shared by states with the same
    /// `schemas`.
    verdicts: Arc<Mutex<Vec<Verdict>>>,
}

impl TypeData {
    fn empty(type_id: u64, name: String, key_fields: Vec<String>) -> Self {
        TypeData {
            type_id,
            name,
            key_fields,
            record_count: 0,
            ordinal_limit: 0,
            base: None,
            chunks: Vec::new(),
            parts: Vec::new(),
            overlay: Arc::default(),
            indexes: Vec::new(),
            blob_name: Arc::from("(empty)"),
            schemas: Vec::new(),
            verdicts: Arc::default(),
        }
    }

    /// The Cap'n Proto node id of the type's struct; types are matched by
    /// it across versions.
    pub fn type_id(&self) -> u64 {
        self.type_id
    }
    /// The type's display name, as written in the blobs.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The type's primary key fields, in key order; empty if it has no
    /// primary key.
    pub fn key_fields(&self) -> &[String] {
        &self.key_fields
    }
    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }
    /// One past the highest ordinal in the type's ordinal space.
    pub fn ordinal_limit(&self) -> u32 {
        self.ordinal_limit
    }
    /// Number of deltas stacked on the snapshot for this type.
    pub fn delta_parts(&self) -> usize {
        self.parts.len()
    }
    /// The snapshot section the type was opened from, if any.
    pub fn base(&self) -> Option<&SnapshotSection> {
        self.base.as_deref()
    }

    /// The type's secondary indexes: those the producer shipped, then those
    /// the consumer built ([`ReadState::with_index`]).
    pub fn indexes(&self) -> &[IndexState] {
        &self.indexes
    }

    /// The name of the last blob the type's records came from.
    pub(super) fn blob_name(&self) -> &str {
        &self.blob_name
    }

    /// The snapshot section, shared: states built from one snapshot
    /// share it (what change notifications compare).
    pub(super) fn base_arc(&self) -> Option<&Arc<SnapshotSection>> {
        self.base.as_ref()
    }

    /// The deltas stacked on the snapshot, oldest first; a state built by
    /// applying deltas to another starts with the other's.
    pub(super) fn parts(&self) -> &[Arc<DeltaSection>] {
        &self.parts
    }

    /// One blob per distinct schema the type's records were written
    /// under: the snapshot's and the deltas' whose schema hash differs.
    pub(super) fn schema_blobs(&self) -> impl Iterator<Item = &Arc<OpenBlob>> {
        self.schemas.iter().map(|(_, b)| b)
    }

    #[inline]
    fn base_loc(&self, ordinal: u32) -> Loc {
        match &self.base {
            Some(b) if ordinal < b.ordinal_limit && b.is_present(ordinal) => Loc::from(ordinal),
            _ => HOLE,
        }
    }

    #[inline]
    fn loc(&self, ordinal: u32) -> Loc {
        if ordinal >= self.ordinal_limit {
            return HOLE;
        }
        match self.chunks.get(ordinal as usize / CHUNK) {
            Some(Some(chunk)) => chunk[ordinal as usize % CHUNK],
            _ => self.base_loc(ordinal),
        }
    }

    /// Where the record at `ordinal` lies: its blob, lists and element
    /// index; `None` for a hole or an ordinal past the limit.
    pub fn element(&self, ordinal: u32) -> Option<(&OpenBlob, &RecordLists, u32)> {
        let loc = self.loc(ordinal);
        if loc == HOLE {
            return None;
        }
        let (part, index) = ((loc >> 32) as usize, loc as u32);
        if part == 0 {
            let base = self.base.as_ref()?;
            Some((&base.blob, &base.lists, index))
        } else {
            let p = self.parts.get(part - 1)?;
            Some((&p.blob, &p.lists, index))
        }
    }

    /// Appends the canonical message of the record at `ordinal` to `out`
    /// (byte for byte what the producer was given); `false` for a hole.
    /// What restore, `verify` and the tests compare records by.
    pub fn canonical_record(&self, ordinal: u32, out: &mut Vec<u64>) -> Result<bool, FormatError> {
        let Some((blob, lists, index)) = self.element(ordinal) else {
            return Ok(false);
        };
        crate::schema::wire::canonical_record(
            blob.segment(),
            lists.element(index),
            lists.data,
            lists.ptrs,
            out,
        )
        .map_err(|reason| FormatError::Corrupt {
            blob: blob.name().to_string(),
            reason: format!("{}: record at ordinal {ordinal}: {reason}", self.name),
        })?;
        Ok(true)
    }

    /// The ordinal of the record whose canonical key bytes are `key`, read
    /// without generated code: candidates from the overlay and the
    /// snapshot's key index, each confirmed by reading its key through
    /// `node_key` (the type's key resolved against its schema node, see
    /// [`crate::schema::node_key`]). What `burrow dump --key` looks up by.
    pub fn find_key_bytes(
        &self,
        key: &[u8],
        node_key: &crate::schema::node_key::NodeKey,
    ) -> Result<Option<u32>, FormatError> {
        let hash = crate::schema::key::key_hash(key);
        let mut candidate = Vec::new();
        let mut is_it = |o: u32| -> Result<bool, FormatError> {
            let Some((blob, lists, index)) = self.element(o) else {
                return Ok(false);
            };
            candidate.clear();
            node_key
                .encode_struct(
                    blob.segment(),
                    lists.element(index),
                    usize::from(lists.data),
                    usize::from(lists.ptrs),
                    &mut candidate,
                )
                .map_err(|reason| FormatError::Corrupt {
                    blob: blob.name().to_string(),
                    reason: format!("{}: key of ordinal {o}: {reason}", self.name),
                })?;
            Ok(candidate == key)
        };
        for &o in self.overlay.get(&hash).into_iter().flatten() {
            if is_it(o)? {
                return Ok(Some(o));
            }
        }
        if let Some(base) = &self.base {
            for slot in KeyIndex::new(base.key_index.get()).probe(hash) {
                if is_it(slot.ordinal)? {
                    return Ok(Some(slot.ordinal));
                }
            }
        }
        Ok(None)
    }

    /// Checks generated code `info` against the schema nodes of every blob
    /// this type's records come from ([`evolve::Rule::Read`]): once per
    /// generated type and set of schemas, the verdict cached.
    fn check_schema(&self, info: &TypeInfo) -> Result<(), Error> {
        let id = evolve::generated_identity(info);
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, verdict)) = verdicts.iter().find(|(k, _)| *k == id) {
            return verdict.clone().map_err(Error::from);
        }
        let ours = evolve::generated_nodes(std::slice::from_ref(info));
        let types = [(self.type_id, self.key_fields.clone())];
        for (_, blob) in &self.schemas {
            match evolve::check_blob(blob, &ours, &types, evolve::Rule::Read) {
                Ok(()) => {}
                Err(Error::Schema(e)) => {
                    verdicts.push((id, Err(e.clone())));
                    return Err(e.into());
                }
                Err(other) => return Err(other),
            }
        }
        verdicts.push((id, Ok(())));
        Ok(())
    }

    /// Whether `ordinal`'s record is still the snapshot's (no delta touched
    /// its chunk).
    #[inline]
    pub(super) fn is_untouched(&self, ordinal: u32) -> bool {
        matches!(self.chunks.get(ordinal as usize / CHUNK), Some(None) | None)
    }

    fn set_loc(&mut self, ordinal: u32, loc: Loc) {
        let c = ordinal as usize / CHUNK;
        if self.chunks[c].is_none() {
            let mut fresh = [HOLE; CHUNK];
            for (i, slot) in fresh.iter_mut().enumerate() {
                *slot = self.base_loc((c * CHUNK + i) as u32);
            }
            self.chunks[c] = Some(Arc::new(fresh));
        }
        let chunk = self.chunks[c].as_mut().expect("just set");
        Arc::make_mut(chunk)[ordinal as usize % CHUNK] = loc;
    }

    fn from_snapshot(
        section: SnapshotSection,
        blob: &str,
        schema_hash: u64,
        indexes: Vec<IndexState>,
    ) -> Self {
        TypeData {
            indexes,
            schemas: vec![(schema_hash, Arc::clone(&section.blob))],
            verdicts: Arc::default(),
            type_id: section.type_id,
            name: section.name.clone(),
            key_fields: section.key_fields.clone(),
            record_count: section.record_count,
            ordinal_limit: section.ordinal_limit,
            chunks: vec![None; (section.ordinal_limit as usize).div_ceil(CHUNK)],
            base: Some(Arc::new(section)),
            parts: Vec::new(),
            overlay: Arc::default(),
            blob_name: Arc::from(blob),
        }
    }

    /// Resolves the snapshot section's shipped indexes against its blob's
    /// schema node for the type.
    fn shipped_indexes(section: &SnapshotSection) -> Result<Vec<IndexState>, FormatError> {
        if section.indexes.is_empty() {
            return Ok(Vec::new());
        }
        let corrupt = |reason: String| FormatError::Corrupt {
            blob: section.blob.name().to_string(),
            reason: format!("{}: {reason}", section.name),
        };
        section.blob.with_schema_nodes(|nodes| {
            let node = nodes
                .iter()
                .find(|n| n.get_id() == section.type_id)
                .ok_or_else(|| corrupt("no schema node for the type".into()))?;
            section
                .indexes
                .iter()
                .enumerate()
                .map(|(i, shipped)| {
                    let resolved = NodeIndex::resolve(node, &shipped.def).map_err(corrupt)?;
                    Ok(IndexState {
                        def: shipped.def.clone(),
                        node: Arc::new(resolved),
                        shipped: Some(i),
                        overlay: Arc::default(),
                    })
                })
                .collect()
        })
    }

    /// This type with `delta` applied. `created`: the delta creates the
    /// type (the state did not hold it).
    fn apply(
        &self,
        delta: DeltaSection,
        blob: &str,
        schema_hash: u64,
        created: bool,
    ) -> Result<TypeData, FormatError> {
        let corrupt = |reason: String| FormatError::Corrupt {
            blob: blob.to_string(),
            reason: format!("{}: {reason}", self.name),
        };
        if self.parts.len() + 1 >= MAX_PARTS {
            return Err(corrupt("too many deltas stacked on one snapshot".into()));
        }
        let removed = delta.removed.get();
        let removed_hashes = delta.removed_hashes.get();
        let ordinals = delta.ordinals.get();
        let hashes = delta.key_hashes.get();
        let limit_after = delta.ordinal_limit_after;
        // The ordinal space grows by at most the records set, so that a
        // small delta cannot make a large location table. A delta that
        // creates a type (the reverse of a drop) re-creates its holes too,
        // within a bounded allowance.
        let allowance = if created { MAX_CREATED_HOLES } else { 0 };
        if u64::from(limit_after)
            > u64::from(self.ordinal_limit) + ordinals.len() as u64 + allowance
        {
            return Err(corrupt(format!(
                "ordinal limit grows from {} to {limit_after} with only {} records set",
                self.ordinal_limit,
                ordinals.len()
            )));
        }
        if delta.lists.len as usize != ordinals.len() {
            return Err(corrupt(format!(
                "{} records for {} ordinals set",
                delta.lists.len,
                ordinals.len()
            )));
        }
        let mut next = self.clone();
        next.blob_name = Arc::from(blob);
        let grown = (limit_after.max(self.ordinal_limit) as usize).div_ceil(CHUNK);
        next.chunks.resize(grown, None);
        next.ordinal_limit = limit_after.max(self.ordinal_limit);
        let part = (next.parts.len() + 1) as u64;
        let overlay = Arc::make_mut(&mut next.overlay);
        let mut count = i64::from(self.record_count);
        let mut last: Option<u32> = None;
        for (&o, &h) in removed.iter().zip(removed_hashes) {
            if last.is_some_and(|l| o <= l) {
                return Err(corrupt(
                    "removed ordinals are not sorted and distinct".into(),
                ));
            }
            last = Some(o);
            if self.loc(o) == HOLE {
                return Err(corrupt(format!(
                    "removes ordinal {o}, which holds no record"
                )));
            }
            if let Some(list) = overlay.get_mut(&h) {
                list.retain(|&x| x != o);
                if list.is_empty() {
                    overlay.remove(&h);
                }
            }
            count -= 1;
        }
        let mut last: Option<u32> = None;
        for (&o, &h) in ordinals.iter().zip(hashes) {
            if last.is_some_and(|l| o <= l) {
                return Err(corrupt("set ordinals are not sorted and distinct".into()));
            }
            last = Some(o);
            if o >= next.ordinal_limit {
                return Err(corrupt(format!(
                    "sets ordinal {o}, past the limit {limit_after}"
                )));
            }
            let was_present = self.loc(o) != HOLE && removed.binary_search(&o).is_err();
            if !was_present {
                overlay.entry(h).or_default().push(o);
                count += 1;
            }
        }
        for &o in removed {
            next.set_loc(o, HOLE);
        }
        for (i, &o) in ordinals.iter().enumerate() {
            next.set_loc(o, part << 32 | i as u64);
        }
        if count != i64::from(delta.record_count_after) {
            return Err(corrupt(format!(
                "leaves {count} records but says {}: the delta does not apply to this state",
                delta.record_count_after
            )));
        }
        if limit_after < next.ordinal_limit {
            for o in limit_after..next.ordinal_limit {
                if next.loc(o) != HOLE {
                    return Err(corrupt(format!(
                        "shrinks the ordinal space to {limit_after} but ordinal {o} still holds a record"
                    )));
                }
            }
            next.ordinal_limit = limit_after;
            next.chunks.truncate((limit_after as usize).div_ceil(CHUNK));
        }
        next.record_count = delta.record_count_after;
        // Each ordinal the delta touched, once (removed and set are each
        // sorted), for the secondary indexes once the delta is in place.
        let mut touched: Vec<u32> = Vec::new();
        if !next.indexes.is_empty() {
            touched = removed.iter().chain(ordinals).copied().collect();
            touched.sort_unstable();
            touched.dedup();
        }
        if !next.schemas.iter().any(|(h, _)| *h == schema_hash) {
            next.schemas.push((schema_hash, Arc::clone(&delta.blob)));
            next.verdicts = Arc::default();
        }
        next.parts.push(Arc::new(delta));
        if !next.indexes.is_empty() {
            let mut indexes = std::mem::take(&mut next.indexes);
            for index in &mut indexes {
                index
                    .apply(self, &next, touched.iter().copied())
                    .map_err(|e| corrupt(format!("index {}: {e}", index.def().name)))?;
            }
            next.indexes = indexes;
        }
        Ok(next)
    }
}

/// The records of one version. Immutable; shared by `Arc`.
#[derive(Clone)]
pub struct ReadState {
    version: u64,
    header: BlobHeader,
    types: Vec<TypeData>,
    /// The types this state holds read state for, by node id, when the
    /// consumer filters types ([`ReadState::from_snapshot_filtered`]);
    /// `None` for every type.
    filter: Option<Arc<[u64]>>,
}

impl std::fmt::Debug for ReadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadState")
            .field("version", &self.version)
            .field(
                "types",
                &self
                    .types
                    .iter()
                    .map(|t| (&t.name, t.record_count))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ReadState {
    /// A state from a snapshot blob, which must be of `version`.
    pub fn from_snapshot(blob: Arc<OpenBlob>, version: u64) -> Result<ReadState, Error> {
        Self::from_snapshot_filtered(blob, version, None)
    }

    /// A state from a snapshot blob holding only the types whose node ids
    /// `filter` lists (every type for `None`): no read state, index or
    /// location table is built for the others, and every state made from
    /// this one by deltas skips them too. [`ReadState::view`] of a type
    /// left out is [`ConsumerError::FilteredOut`](crate::consumer::ConsumerError).
    pub fn from_snapshot_filtered(
        blob: Arc<OpenBlob>,
        version: u64,
        filter: Option<Arc<[u64]>>,
    ) -> Result<ReadState, Error> {
        let env = blob.envelope();
        if env.kind != BlobKind::Snapshot || env.to_version != version {
            return Err(FormatError::Corrupt {
                blob: blob.name().to_string(),
                reason: format!(
                    "expected the snapshot of version {version}, found a {} of version {}",
                    env.kind.as_str(),
                    env.to_version
                ),
            }
            .into());
        }
        let (header, sections) = blob.snapshot()?;
        check_header(&header, &blob, 0, version)?;
        let wanted = |id: u64| filter.as_ref().is_none_or(|f| f.contains(&id));
        let types = sections
            .into_iter()
            .filter(|s| wanted(s.type_id))
            .map(|s| {
                let indexes = TypeData::shipped_indexes(&s)?;
                Ok(TypeData::from_snapshot(
                    s,
                    blob.name(),
                    header.schema_hash,
                    indexes,
                ))
            })
            .collect::<Result<_, FormatError>>()?;
        Ok(ReadState {
            version,
            header,
            types,
            filter,
        })
    }

    /// This state moved from `from` (its own version) to `to` by a delta
    /// or reverse delta blob. A section for a type the state does not hold
    /// creates it; a dropped section removes its type entirely (a delta
    /// that drops a type the state does not hold is corrupt).
    pub fn apply(&self, blob: Arc<OpenBlob>, from: u64, to: u64) -> Result<ReadState, Error> {
        let env = blob.envelope();
        let bad = |reason: String| -> Error {
            FormatError::Corrupt {
                blob: blob.name().to_string(),
                reason,
            }
            .into()
        };
        if from != self.version {
            return Err(bad(format!(
                "moves from version {from}, but the state is at {}",
                self.version
            )));
        }
        if env.from_version != from || env.to_version != to {
            return Err(bad(format!(
                "envelope says {} -> {}, expected {from} -> {to}",
                env.from_version, env.to_version
            )));
        }
        let (header, sections) = blob.delta()?;
        check_header(&header, &blob, from, to)?;
        // A delta of another dataset never applies, even where its
        // versions and counts happen to fit (a store recreated at the same
        // place reuses every name).
        check_same(blob.name(), self.header.dataset_id, header.dataset_id)?;
        self.check_delta_checksums(&header, &sections, blob.name())?;
        let mut types = self.types.clone();
        for section in sections {
            if !self.holds_type(section.type_id) {
                continue;
            }
            if section.dropped {
                // The type leaves the state entirely, as it is absent from
                // the snapshot of `to`.
                let Some(at) = types.iter().position(|t| t.type_id == section.type_id) else {
                    return Err(bad(format!(
                        "{}: drops a type the state at {from} does not hold",
                        section.name
                    )));
                };
                types.remove(at);
                continue;
            }
            let found = types.iter().position(|t| t.type_id == section.type_id);
            let created = found.is_none();
            let at = match found {
                Some(at) => at,
                None => {
                    types.push(TypeData::empty(
                        section.type_id,
                        section.name.clone(),
                        section.key_fields.clone(),
                    ));
                    types.len() - 1
                }
            };
            if types[at].key_fields != section.key_fields {
                return Err(bad(format!(
                    "{}: key fields {:?} differ from the state's {:?}",
                    section.name, section.key_fields, types[at].key_fields
                )));
            }
            types[at] = types[at].apply(section, blob.name(), header.schema_hash, created)?;
        }
        Ok(ReadState {
            version: to,
            header,
            types,
            filter: self.filter.clone(),
        })
    }

    /// Checks that this state plus the delta whose `header` and
    /// `sections` are given sums to the state checksums the delta's header
    /// claims, for every type this state keeps (in time proportional to
    /// the delta: [`checksum::apply_delta`]); a type the delta does not
    /// touch must keep its checksum. Nothing is checked where either
    /// header makes no claims (blobs written before state checksums).
    fn check_delta_checksums(
        &self,
        header: &BlobHeader,
        sections: &[DeltaSection],
        blob: &str,
    ) -> Result<(), Error> {
        if header.type_checksums.is_empty() || self.header.type_checksums.is_empty() {
            return Ok(());
        }
        let before = |type_id: u64| {
            self.header
                .type_checksums
                .iter()
                .find(|c| c.type_id == type_id)
                .map_or(0, |c| c.checksum)
        };
        let after = checksum::apply_delta(
            sections,
            |type_id| self.holds_type(type_id),
            before,
            &mut PriorState {
                state: self,
                words: Vec::new(),
            },
        )?;
        for c in &after {
            let claimed = header.type_checksum(c.type_id, blob)?.unwrap_or(0);
            if claimed != c.checksum {
                let name = sections
                    .iter()
                    .find(|s| s.type_id == c.type_id)
                    .map_or("?", |s| s.name.as_str());
                return Err(checksum::mismatch(
                    blob,
                    name,
                    claimed,
                    c.checksum,
                    &format!("the state at {} plus this delta", self.version),
                )
                .into());
            }
        }
        for t in &self.types {
            let touched = sections.iter().any(|s| s.type_id == t.type_id);
            if touched {
                continue;
            }
            let claimed = header.type_checksum(t.type_id, blob)?.unwrap_or(0);
            if claimed != before(t.type_id) {
                return Err(checksum::mismatch(
                    blob,
                    &t.name,
                    claimed,
                    before(t.type_id),
                    &format!(
                        "the state at {} (the delta leaves the type as it is)",
                        self.version
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Checks every type this state keeps against the state checksum its
    /// header claims, summing every record: O(records). A consumer runs it
    /// after loading a snapshot; a state made by deltas was checked delta
    /// by delta ([`ReadState::apply`]).
    pub fn check_checksums(&self) -> Result<(), Error> {
        let blob = self.types.first().map_or_else(
            || format!("snapshot/{}", self.version),
            |t| t.blob_name().to_string(),
        );
        let mut words = Vec::new();
        for t in &self.types {
            let Some(claimed) = self.header.type_checksum(t.type_id, &blob)? else {
                return Ok(());
            };
            let mut sum = 0u64;
            for o in 0..t.ordinal_limit() {
                words.clear();
                if t.canonical_record(o, &mut words)? {
                    sum = sum.wrapping_add(checksum::entry(
                        t.type_id,
                        o,
                        checksum::record_hash(&words),
                    ));
                }
            }
            if sum != claimed {
                return Err(checksum::mismatch(
                    &blob,
                    &t.name,
                    claimed,
                    sum,
                    "the sum of its records",
                )
                .into());
            }
        }
        Ok(())
    }

    /// Whether the state keeps records of type `type_id` (it passes the
    /// consumer's type filter, if any).
    pub fn holds_type(&self, type_id: u64) -> bool {
        self.filter.as_ref().is_none_or(|f| f.contains(&type_id))
    }

    /// The version these records are.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The dataset these records belong to: every blob the state was
    /// built from carries it ([`ReadState::apply`] refuses a delta of
    /// another).
    pub fn dataset_id(&self) -> DatasetId {
        self.header.dataset_id
    }

    /// The header of the last blob this state was built from.
    pub fn header(&self) -> &BlobHeader {
        &self.header
    }

    /// The header tags of the cycle that made this state: the producer's
    /// own and those set for that cycle (`Populate::tag`), as written.
    pub fn tags(&self) -> &[(String, String)] {
        &self.header.tags
    }

    /// The value of header tag `key` of the cycle that made this state.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.header
            .tags
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// When the cycle that made this state began (from the producer's
    /// clock): what a read service reports as its data's age.
    pub fn cycle_started_at(&self) -> std::time::SystemTime {
        let micros = self.header.cycle_start_micros;
        let offset = std::time::Duration::from_micros(micros.unsigned_abs());
        let at = if micros >= 0 {
            std::time::UNIX_EPOCH.checked_add(offset)
        } else {
            std::time::UNIX_EPOCH.checked_sub(offset)
        };
        at.unwrap_or(std::time::UNIX_EPOCH)
    }

    /// Every type in the state.
    pub fn types(&self) -> &[TypeData] {
        &self.types
    }

    /// A type by node id.
    pub fn raw_type(&self, type_id: u64) -> Option<&TypeData> {
        self.types.iter().find(|t| t.type_id == type_id)
    }

    /// This state with index `def` built by the consumer over `T`'s
    /// records (Hollow's consumer-side hash index), and what building it
    /// cost. Every state made from this one by a delta keeps it current in
    /// time proportional to the delta. An index of the same name on the
    /// type (shipped or built) is replaced.
    pub fn with_index<T: RecordType>(
        &self,
        def: IndexDef,
    ) -> Result<(ReadState, IndexBuild), Error> {
        let info = TypeInfo::of::<T>();
        let at = self
            .types
            .iter()
            .position(|t| t.type_id == info.type_id)
            .ok_or_else(|| crate::consumer::ConsumerError::UnknownType {
                type_name: info.name.clone(),
                version: self.version,
            })?;
        self.types[at].check_schema(&info)?;
        let node = super::index::resolve(&info, &def)?;
        let (index, report) = IndexState::build(&self.types[at], def, node).map_err(|reason| {
            FormatError::Corrupt {
                blob: self.types[at].blob_name.to_string(),
                reason: format!("{}: {reason}", info.name),
            }
        })?;
        let mut next = self.clone();
        let t = &mut next.types[at];
        t.indexes.retain(|i| i.def().name != index.def().name);
        t.indexes.push(index);
        Ok((next, report))
    }

    /// Most deltas stacked on a snapshot in any type.
    pub fn delta_depth(&self) -> usize {
        self.types.iter().map(|t| t.parts.len()).max().unwrap_or(0)
    }

    /// A typed view of `T`'s records: resolves the key and validates the
    /// record lists of the snapshot and of each delta once, so that every
    /// read after is arithmetic.
    pub fn view<T: RecordType>(&self) -> Result<TypeView<'_, T>, Error> {
        let info = TypeInfo::of::<T>();
        if !self.holds_type(info.type_id) {
            return Err(crate::consumer::ConsumerError::FilteredOut {
                type_name: info.name.clone(),
            }
            .into());
        }
        let data = self.raw_type(info.type_id).ok_or_else(|| {
            crate::consumer::ConsumerError::UnknownType {
                type_name: info.name.clone(),
                version: self.version,
            }
        })?;
        data.check_schema(&info)?;
        let key = if data.key_fields.is_empty() {
            None
        } else {
            let names: Vec<&str> = data.key_fields.iter().map(String::as_str).collect();
            let spec = KeySpec::resolve(&info, &names)?;
            let resolved = spec.resolved().map_err(|e| KeyError::Spec {
                type_name: info.name.clone(),
                field: String::new(),
                reason: e.to_string(),
            })?;
            Some((spec, resolved))
        };
        let base = match &data.base {
            Some(b) => Lists::new(&b.blob, &b.lists)?,
            None => Lists::empty(),
        };
        let parts = data
            .parts
            .iter()
            .map(|p| Lists::new(&p.blob, &p.lists))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TypeView {
            data,
            base,
            parts,
            key,
        })
    }
}

fn check_header(header: &BlobHeader, blob: &OpenBlob, from: u64, to: u64) -> Result<(), Error> {
    if header.from_version != from || header.to_version != to {
        return Err(FormatError::Corrupt {
            blob: blob.name().to_string(),
            reason: format!(
                "header says {} -> {}, the envelope {from} -> {to}",
                header.from_version, header.to_version
            ),
        }
        .into());
    }
    Ok(())
}

/// A state's records as [`checksum::apply_delta`] reads them.
struct PriorState<'a> {
    state: &'a ReadState,
    words: Vec<u64>,
}

impl checksum::PriorRecords for PriorState<'_> {
    fn record_hash(&mut self, type_id: u64, ordinal: u32) -> Result<Option<u64>, FormatError> {
        let Some(t) = self.state.raw_type(type_id) else {
            return Ok(None);
        };
        self.words.clear();
        Ok(t.canonical_record(ordinal, &mut self.words)?
            .then(|| checksum::record_hash(&self.words)))
    }
}

/// One part's record lists, typed: element `i` is in list `i >> shift`.
struct Lists<'s, T: RecordType> {
    shift: u32,
    lists: Vec<capnp::struct_list::Reader<'s, T>>,
}

impl<'s, T: RecordType> Lists<'s, T> {
    fn new(blob: &'s OpenBlob, lists: &RecordLists) -> Result<Self, FormatError> {
        Ok(Lists {
            shift: u32::from(lists.shift),
            lists: blob.typed_lists::<T>(lists)?,
        })
    }

    fn empty() -> Self {
        Lists {
            shift: 0,
            lists: Vec::new(),
        }
    }

    /// Element `i`, which the caller knows to exist (an index a validated
    /// section or location table gave).
    #[inline]
    fn get(&self, i: u32) -> Option<Element<'s, T>> {
        let list = self.lists.get((i >> self.shift) as usize)?;
        list.try_get(i & ((1 << self.shift) - 1))
    }
}

/// A typed, zero-copy view of one type's records in a state.
pub struct TypeView<'s, T: RecordType> {
    data: &'s TypeData,
    base: Lists<'s, T>,
    parts: Vec<Lists<'s, T>>,
    key: Option<(KeySpec, ResolvedKey)>,
}

impl<'s, T: RecordType> TypeView<'s, T> {
    /// Number of records.
    pub fn len(&self) -> u32 {
        self.data.record_count
    }

    /// Whether the type has no records in this state.
    pub fn is_empty(&self) -> bool {
        self.data.record_count == 0
    }

    /// One past the highest ordinal.
    pub fn ordinal_limit(&self) -> u32 {
        self.data.ordinal_limit
    }

    /// The type's primary key fields (empty if it has none).
    pub fn key_fields(&self) -> &[String] {
        &self.data.key_fields
    }

    #[inline]
    fn at(&self, loc: Loc) -> Option<Element<'s, T>> {
        if loc == HOLE {
            return None;
        }
        match (loc >> 32) as usize {
            0 => self.base.get(loc as u32),
            p => self.parts.get(p - 1)?.get(loc as u32),
        }
    }

    /// The record at `ordinal`, if there is one.
    #[inline]
    pub fn get(&self, ordinal: u32) -> Option<Element<'s, T>> {
        self.at(self.data.loc(ordinal))
    }

    /// Looks a record up by primary key; returns its ordinal and record.
    /// A lookup reads the key index slot and the record: the overlay only
    /// when deltas added keys, the location table only for an ordinal a
    /// delta touched.
    #[inline]
    pub fn find<K: Key + ?Sized>(&self, key: &K) -> Result<Option<(u32, Element<'s, T>)>, Error> {
        let Some((spec, resolved)) = &self.key else {
            return Err(KeyError::NoKey {
                type_name: self.data.name.clone(),
            }
            .into());
        };
        let mut query = KeyBuf::new();
        spec.encode_query(&self.data.name, key, &mut query)?;
        let hash = query.hash();
        let data = self.data;
        // The candidate as its struct reader (Copy), so that it can be
        // both checked and handed out.
        // A key of one integer field is compared as a word, straight from
        // the candidate's data section; any other by its canonical bytes.
        let direct = match <[u8; 8]>::try_from(query.as_bytes()) {
            Ok(bytes) if spec.is_direct() => Some(u64::from_le_bytes(bytes)),
            _ => None,
        };
        let matches = |o: u32, r: Element<'s, T>| -> Result<Option<Element<'s, T>>, Error> {
            use capnp::traits::IntoInternalStructReader;
            let reader = r.into_internal_struct_reader();
            let same = match direct {
                Some(q) => spec.matches_direct(&reader, q) == Some(true),
                None => key_bytes_match::<T>(resolved, reader, query.as_bytes(), data, o)?,
            };
            Ok(same.then(|| reader.into()))
        };
        if !data.overlay.is_empty() {
            if let Some(ordinals) = data.overlay.get(&hash) {
                for &o in ordinals {
                    if let Some(r) = self.get(o) {
                        if let Some(r) = matches(o, r)? {
                            return Ok(Some((o, r)));
                        }
                    }
                }
            }
        }
        if let Some(base) = &data.base {
            for slot in KeyIndex::new(base.key_index.get()).probe(hash) {
                let o = slot.ordinal;
                let found = if o < data.ordinal_limit && data.is_untouched(o) {
                    // Untouched since the snapshot: the element is the
                    // record, if the ordinal holds one.
                    if o < base.ordinal_limit && base.is_present(o) {
                        self.base.get(o)
                    } else {
                        None
                    }
                } else {
                    self.get(o)
                };
                if let Some(r) = found {
                    if let Some(r) = matches(o, r)? {
                        return Ok(Some((o, r)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Element `ordinal` of the snapshot's lists, with no presence test:
    /// for a type whose snapshot has no holes and to which no delta
    /// applies (the index lookup's fast path).
    #[inline]
    pub(super) fn base_element_unchecked(&self, ordinal: u32) -> Option<Element<'s, T>> {
        self.base.get(ordinal)
    }

    /// The record at `ordinal` in the snapshot, for an ordinal no delta
    /// touched.
    #[inline]
    pub(super) fn base_element(&self, ordinal: u32) -> Option<Element<'s, T>> {
        match &self.data.base {
            Some(b) if ordinal < b.ordinal_limit && b.is_present(ordinal) => self.base.get(ordinal),
            _ => None,
        }
    }

    /// The secondary index `name` of the type: one the producer shipped
    /// (`ProducerBuilder::index`) or the consumer built
    /// ([`ReadState::with_index`]). An unknown name is an error listing
    /// the type's indexes.
    pub fn index(&self, name: &str) -> Result<IndexView<'_, 's, T>, Error> {
        let data = self.data;
        let index = data
            .indexes
            .iter()
            .find(|i| i.def().name == name)
            .ok_or_else(|| KeyError::NoIndex {
                type_name: data.name.clone(),
                index: name.to_string(),
                known: data.indexes.iter().map(|i| i.def().name.clone()).collect(),
            })?;
        let info = TypeInfo::of::<T>();
        let fields: Vec<&str> = index.def().fields.iter().map(String::as_str).collect();
        let spec = KeySpec::resolve_index(&info, &fields)?;
        Ok(IndexView {
            view: self,
            data,
            index,
            spec,
        })
    }

    /// Every record, in ordinal order.
    pub fn iter(&self) -> Iter<'_, 's, T> {
        Iter {
            view: self,
            next: 0,
            run: None,
            run_at: 0,
            run_end: 0,
            run_first: 0,
            check: false,
            present: &[],
        }
    }
}

/// Whether the record `reader` (ordinal `o`) has the key whose canonical
/// bytes are `query`, read through reflection: the path of keys other
/// than one integer field, kept out of line so that the common lookup
/// stays short.
#[cold]
#[inline(never)]
fn key_bytes_match<T: RecordType>(
    resolved: &ResolvedKey,
    reader: capnp::private::layout::StructReader<'_>,
    query: &[u8],
    data: &TypeData,
    o: u32,
) -> Result<bool, Error> {
    let mut candidate = KeyBuf::new();
    resolved
        .encode_record(T::dynamic_element(reader.into()), &mut candidate)
        .map_err(|e| FormatError::capnp(&data.blob_name, &format!("key of ordinal {o}"), e))?;
    Ok(candidate.as_bytes() == query)
}

/// Iterates a type's records in ordinal order. Runs of ordinals that no
/// delta touched are read straight down the snapshot's list, with a
/// presence bit test only where the snapshot has holes.
pub struct Iter<'v, 's, T: RecordType> {
    view: &'v TypeView<'s, T>,
    /// The next ordinal past the current run.
    next: u32,
    /// The current run: a snapshot list, the index in it of the next
    /// element, the index past the run's end, and the ordinal of index 0.
    run: Option<capnp::struct_list::Reader<'s, T>>,
    run_at: u32,
    run_end: u32,
    run_first: u32,
    /// The run is the snapshot's and it has holes: test presence bits.
    check: bool,
    /// The snapshot's presence bitmap, while `check`.
    present: &'s [u64],
}

impl<'s, T: RecordType> Iterator for Iter<'_, 's, T> {
    type Item = (u32, Element<'s, T>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(list) = self.run {
                if self.run_at < self.run_end {
                    let i = self.run_at;
                    self.run_at += 1;
                    let o = self.run_first.wrapping_add(i);
                    if self.check {
                        // The presence word of `o`, shifted so that bit 0 is
                        // `o`: absent ordinals are skipped a word at a time.
                        let word = self.present.get(o as usize / 64).copied().unwrap_or(0);
                        let rest = word >> (o % 64);
                        if rest & 1 == 0 {
                            let skip = if rest == 0 {
                                64 - o % 64
                            } else {
                                rest.trailing_zeros()
                            };
                            self.run_at = (i + skip).min(self.run_end);
                            continue;
                        }
                    }
                    return Some((o, list.try_get(i)?));
                }
                self.run = None;
            }
            if !self.start_run() {
                return None;
            }
        }
    }
}

impl<'s, T: RecordType> Iter<'_, 's, T> {
    /// Moves to the next run of ordinals: a stretch of untouched chunks
    /// within one snapshot list, or one touched ordinal at a time (which
    /// becomes a one-element run). `false` when no ordinal is left.
    #[cold]
    fn start_run(&mut self) -> bool {
        let data = self.view.data;
        while self.next < data.ordinal_limit {
            let o = self.next;
            let base_limit = data.base.as_ref().map_or(0, |b| b.ordinal_limit);
            if data.is_untouched(o) && o < base_limit {
                let shift = self.view.base.shift;
                let list_first = (o >> shift) << shift;
                let list_end =
                    (list_first as u64 + (1u64 << shift)).min(u64::from(base_limit)) as u32;
                // Extend over untouched chunks.
                let mut end = o;
                while end < list_end.min(data.ordinal_limit) && data.is_untouched(end) {
                    end = ((end as usize / CHUNK + 1) * CHUNK) as u32;
                }
                let end = end.min(list_end).min(data.ordinal_limit);
                let Some(list) = self.view.base.lists.get((o >> shift) as usize).copied() else {
                    self.next = data.ordinal_limit;
                    return false;
                };
                self.run = Some(list);
                self.present = data.base.as_ref().map_or(&[], |b| b.present.get());
                self.check = !self.present.is_empty();
                self.run_first = list_first;
                self.run_at = o - list_first;
                self.run_end = end - list_first;
                self.next = end;
                return true;
            }
            // A touched ordinal: read it through the table.
            self.next = o + 1;
            let loc = data.loc(o);
            if loc == HOLE {
                continue;
            }
            let (part, index) = ((loc >> 32) as usize, loc as u32);
            let lists = if part == 0 {
                &self.view.base
            } else {
                match self.view.parts.get(part - 1) {
                    Some(l) => l,
                    None => continue,
                }
            };
            let shift = lists.shift;
            let Some(list) = lists.lists.get((index >> shift) as usize).copied() else {
                continue;
            };
            let i = index & ((1 << shift) - 1);
            self.run = Some(list);
            // A one-element run whose ordinal is `o`.
            self.run_first = o.wrapping_sub(i);
            self.run_at = i;
            self.run_end = i + 1;
            self.check = false;
            return true;
        }
        false
    }
}
