//! A consumer's read state: the records of one version, read in place from
//! mapped blobs.
//!
//! Per type, a table maps each ordinal to where its record lives: in the
//! snapshot the state started from, or in one of the deltas applied since.
//! The table is a list of fixed-size chunks; a chunk that no delta touched
//! is implicit (the snapshot's own offsets say where the record is), and a
//! delta copies only the chunks it touches (copy on write), so applying a
//! delta costs work in proportion to the delta, and a state opened from a
//! snapshot costs nothing per record. Key lookups use the key index the
//! producer built into the snapshot, behind a small overlay of keys added
//! by deltas since; each candidate is confirmed by comparing the record's
//! own key, so a stale index entry (a removed key, a reused ordinal) can
//! never answer.
//!
//! A state belongs to one dataset ([`ReadState::dataset_id`], from its
//! snapshot's header): a delta whose header names another is refused with
//! [`FormatError::DatasetMismatch`], naming the delta and both ids.
//!
//! States are immutable once built; the consumer swaps whole states in
//! atomically, and a reader holding an `Arc<ReadState>` keeps a consistent
//! view for as long as it holds it.

use crate::error::{Error, FormatError, KeyError};
use crate::schema::blob::{record_at, BlobHeader, DeltaSection, OpenBlob, SnapshotSection};
use crate::schema::dataset_id::{check_same, DatasetId};
use crate::schema::envelope::BlobKind;
use crate::schema::key::{Key, KeyBuf, KeySpec, ResolvedKey};
use crate::schema::key_index::KeyIndex;
use crate::schema::record::{record_message, OneSegment, RecordType, TypeInfo};
use hashbrown::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Ordinals per chunk of the location table.
const CHUNK: usize = 64;
/// A record's location: part (0 = the snapshot, p = the p-th delta applied)
/// in the high 32 bits, index within the part in the low 32.
type Loc = u64;
const HOLE: Loc = u64::MAX;
/// The most deltas a state can stack on its snapshot; a consumer moves to a
/// newer snapshot well before this.
const MAX_PARTS: usize = u16::MAX as usize;

/// The free ordinals a delta that creates a type may open beyond the
/// records it sets: a re-created type keeps the holes it had, and this
/// bounds the location table such a delta can make (8 MiB).
const MAX_CREATED_HOLES: u64 = 1 << 26;

/// Default traversal limit for reading one record (words), bounding the
/// work a malicious record can cause.
pub const DEFAULT_RECORD_TRAVERSAL_WORDS: u64 = 8 << 20;

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
    blob_name: Arc<str>,
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
            blob_name: Arc::from("(empty)"),
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

    #[inline]
    fn base_loc(&self, ordinal: u32) -> Loc {
        match &self.base {
            Some(b) if ordinal < b.ordinal_limit => {
                // An empty record range in the snapshot is a hole.
                let offsets = b.offsets.get();
                let o = ordinal as usize;
                if offsets.get(o).is_some() && offsets.get(o) == offsets.get(o + 1) {
                    HOLE
                } else {
                    Loc::from(ordinal)
                }
            }
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

    /// The words of the record at `ordinal`; `None` for a hole or an
    /// ordinal past the limit. Bounds-checked against the blob.
    #[inline]
    pub fn record_words(&self, ordinal: u32) -> Result<Option<&[u64]>, FormatError> {
        if ordinal >= self.ordinal_limit {
            return Ok(None);
        }
        let loc = match self.chunks.get(ordinal as usize / CHUNK) {
            Some(Some(chunk)) => chunk[ordinal as usize % CHUNK],
            // Untouched since the snapshot: the snapshot's own offsets say
            // where the record is (an empty range is a hole).
            _ => {
                return match &self.base {
                    Some(b) if ordinal < b.ordinal_limit => record_at(
                        b.offsets.get(),
                        b.words.get(),
                        ordinal as usize,
                        &self.blob_name,
                    ),
                    _ => Ok(None),
                }
            }
        };
        if loc == HOLE {
            return Ok(None);
        }
        let (part, index) = ((loc >> 32) as usize, loc as u32 as usize);
        if part == 0 {
            let base = self.base.as_ref().expect("part 0 is only used with a base");
            record_at(base.offsets.get(), base.words.get(), index, &self.blob_name)
        } else {
            let p = &self.parts[part - 1];
            record_at(p.offsets.get(), p.words.get(), index, &self.blob_name)
        }
    }

    /// Whether `ordinal`'s record is still the snapshot's (no delta touched
    /// its chunk), so the key index's record place can be used directly.
    #[inline]
    fn is_untouched(&self, ordinal: u32) -> bool {
        ordinal < self.ordinal_limit
            && matches!(self.chunks.get(ordinal as usize / CHUNK), Some(None) | None)
            && self
                .base
                .as_ref()
                .is_some_and(|b| ordinal < b.ordinal_limit)
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

    fn from_snapshot(section: SnapshotSection, blob: &str) -> Self {
        TypeData {
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

    /// This type with `delta` applied. `created`: the delta creates the
    /// type (the state did not hold it).
    fn apply(
        &self,
        delta: DeltaSection,
        blob: &str,
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
        for (i, (&o, &h)) in ordinals.iter().zip(hashes).enumerate() {
            if last.is_some_and(|l| o <= l) {
                return Err(corrupt("set ordinals are not sorted and distinct".into()));
            }
            last = Some(o);
            // A set record must be a whole, non-empty range of the delta's
            // words: an empty one would read as a hole that the record
            // count says is a record (found by fuzzing; see
            // fuzz/corpus/delta/crash-empty-set-record).
            match record_at(delta.offsets.get(), delta.words.get(), i, blob) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(corrupt(format!("sets ordinal {o} to an empty record"))),
                Err(e) => return Err(e),
            }
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
        next.parts.push(Arc::new(delta));
        Ok(next)
    }
}

/// The records of one version. Immutable; shared by `Arc`.
#[derive(Clone)]
pub struct ReadState {
    version: u64,
    header: BlobHeader,
    types: Vec<TypeData>,
    record_traversal_words: u64,
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
        let types = sections
            .into_iter()
            .map(|s| TypeData::from_snapshot(s, blob.name()))
            .collect();
        Ok(ReadState {
            version,
            header,
            types,
            record_traversal_words: DEFAULT_RECORD_TRAVERSAL_WORDS,
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
        let mut types = self.types.clone();
        for section in sections {
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
            types[at] = types[at].apply(section, blob.name(), created)?;
        }
        Ok(ReadState {
            version: to,
            header,
            types,
            record_traversal_words: self.record_traversal_words,
        })
    }

    pub(crate) fn with_record_traversal_words(mut self, words: u64) -> Self {
        self.record_traversal_words = words;
        self
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

    /// Every type in the state.
    pub fn types(&self) -> &[TypeData] {
        &self.types
    }

    /// A type by node id.
    pub fn raw_type(&self, type_id: u64) -> Option<&TypeData> {
        self.types.iter().find(|t| t.type_id == type_id)
    }

    /// Most deltas stacked on a snapshot in any type.
    pub fn delta_depth(&self) -> usize {
        self.types.iter().map(|t| t.parts.len()).max().unwrap_or(0)
    }

    /// A typed view of `T`'s records.
    pub fn view<T: RecordType>(&self) -> Result<TypeView<'_, T>, Error> {
        let info = TypeInfo::of::<T>();
        let data = self.raw_type(info.type_id).ok_or_else(|| {
            crate::consumer::ConsumerError::UnknownType {
                type_name: info.name.clone(),
                version: self.version,
            }
        })?;
        let spec = if data.key_fields.is_empty() {
            None
        } else {
            let names: Vec<&str> = data.key_fields.iter().map(String::as_str).collect();
            Some(KeySpec::resolve(&info, &names)?)
        };
        let resolved = match &spec {
            Some(s) => Some(s.resolved().map_err(|e| KeyError::Spec {
                type_name: info.name.clone(),
                field: String::new(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(TypeView {
            data,
            spec,
            resolved,
            limit: self.record_traversal_words,
            _type: PhantomData,
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

/// A typed, zero-copy view of one type's records in a state.
pub struct TypeView<'s, T: RecordType> {
    data: &'s TypeData,
    spec: Option<KeySpec>,
    resolved: Option<ResolvedKey>,
    limit: u64,
    _type: PhantomData<fn() -> T>,
}

/// One record, read in place.
pub struct Record<'s, T: RecordType> {
    message: capnp::message::Reader<OneSegment<'s>>,
    _type: PhantomData<fn() -> T>,
}

impl<'s, T: RecordType> Record<'s, T> {
    /// The typed reader. A malformed record is an error here, never a
    /// panic.
    pub fn get(&self) -> capnp::Result<T::Reader<'_>> {
        self.message.get_root()
    }
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

    fn record(&self, words: &'s [u64]) -> Record<'s, T> {
        Record {
            message: record_message(words, self.limit),
            _type: PhantomData,
        }
    }

    /// The record at `ordinal`, if there is one.
    #[inline]
    pub fn get(&self, ordinal: u32) -> Result<Option<Record<'s, T>>, FormatError> {
        Ok(self.data.record_words(ordinal)?.map(|w| self.record(w)))
    }

    /// Looks a record up by primary key; returns its ordinal and record.
    pub fn find<K: Key + ?Sized>(&self, key: &K) -> Result<Option<(u32, Record<'s, T>)>, Error> {
        let (Some(spec), Some(resolved)) = (&self.spec, &self.resolved) else {
            return Err(KeyError::NoKey {
                type_name: self.data.name.clone(),
            }
            .into());
        };
        let mut query = KeyBuf::new();
        spec.encode_query(&self.data.name, key, &mut query)?;
        let hash = query.hash();
        let mut candidate = KeyBuf::new();
        let mut check = |o: u32, words: &'s [u64]| -> Result<Option<Record<'s, T>>, Error> {
            let record = self.record(words);
            candidate.clear();
            if !spec.encode_words(words, &mut candidate) {
                let reader = record.get().map_err(|e| {
                    FormatError::capnp(&self.data.blob_name, &format!("record at ordinal {o}"), e)
                })?;
                resolved
                    .encode_record(T::dynamic(reader), &mut candidate)
                    .map_err(|e| {
                        FormatError::capnp(&self.data.blob_name, &format!("key of ordinal {o}"), e)
                    })?;
            }
            Ok((candidate.as_bytes() == query.as_bytes()).then_some(record))
        };
        if let Some(ordinals) = self.data.overlay.get(&hash) {
            for &o in ordinals {
                if let Some(words) = self.data.record_words(o)? {
                    if let Some(r) = check(o, words)? {
                        return Ok(Some((o, r)));
                    }
                }
            }
        }
        if let Some(base) = &self.data.base {
            for slot in KeyIndex::new(base.key_index.get()).probe(hash) {
                let o = slot.ordinal;
                let found = if self.data.is_untouched(o) {
                    // The slot says where the record is: no trip through
                    // `offsets`. Bounds-checked like any read.
                    let words = base.words.get();
                    match words.get(slot.range()) {
                        Some(w) if !w.is_empty() => check(o, w)?,
                        _ => {
                            return Err(FormatError::Corrupt {
                                blob: self.data.blob_name.to_string(),
                                reason: format!(
                                    "key index slot {} places ordinal {o} at words {}..{} \
                                     outside 0..{}",
                                    slot.slot,
                                    slot.start,
                                    slot.range().end,
                                    words.len()
                                ),
                            }
                            .into())
                        }
                    }
                } else {
                    match self.data.record_words(o)? {
                        Some(words) => check(o, words)?,
                        None => None,
                    }
                };
                if let Some(r) = found {
                    return Ok(Some((o, r)));
                }
            }
        }
        Ok(None)
    }

    /// Every record, in ordinal order.
    pub fn iter(&self) -> Iter<'_, 's, T> {
        Iter {
            view: self,
            next: 0,
        }
    }
}

/// Iterates a type's records in ordinal order. Runs of ordinals that no
/// delta touched are read straight off the snapshot's offsets, one offset
/// per record.
pub struct Iter<'v, 's, T: RecordType> {
    view: &'v TypeView<'s, T>,
    next: u32,
}

impl<'s, T: RecordType> Iterator for Iter<'_, 's, T> {
    type Item = Result<(u32, Record<'s, T>), FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data: &'s TypeData = self.view.data;
        while self.next < data.ordinal_limit {
            let o = self.next as usize;
            if let (Some(base), None | Some(None)) = (&data.base, data.chunks.get(o / CHUNK)) {
                let end = ((o / CHUNK + 1) * CHUNK)
                    .min(base.ordinal_limit as usize)
                    .min(data.ordinal_limit as usize);
                if o < end {
                    let offsets = base.offsets.get();
                    let words = base.words.get();
                    // offsets has ordinal_limit + 1 entries (checked when
                    // the snapshot was opened), so i + 1 <= end is in range.
                    let mut start = offsets[o] as usize;
                    for i in o..end {
                        let stop = offsets[i + 1] as usize;
                        if start > stop || stop > words.len() {
                            self.next = i as u32 + 1;
                            return Some(Err(FormatError::Corrupt {
                                blob: data.blob_name.to_string(),
                                reason: format!(
                                    "record {i} spans words {start}..{stop}, outside 0..{}",
                                    words.len()
                                ),
                            }));
                        }
                        if start < stop {
                            self.next = i as u32 + 1;
                            return Some(Ok((i as u32, self.view.record(&words[start..stop]))));
                        }
                        start = stop;
                    }
                    self.next = end as u32;
                    continue;
                }
            }
            self.next += 1;
            match data.record_words(o as u32) {
                Ok(Some(words)) => return Some(Ok((o as u32, self.view.record(words)))),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}
