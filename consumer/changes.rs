//! Change notifications: after each refresh that swaps a state in, a
//! [`RefreshListener`] is told, per type, which keys were added, removed
//! and changed, with the old and new records of each changed key, so that
//! a read service can keep caches derived from the records current
//! (Hollow's refresh listeners).
//!
//! How the changes are found ([`RefreshEvent::compute`]):
//!
//! - **By the deltas applied** (a delta or reverse delta refresh): a
//!   type's state keeps its snapshot and the deltas stacked on it, so the
//!   ordinals the refresh's deltas removed or set are read straight from
//!   them, and only those records are looked at: cost in proportion to the
//!   change, whatever the dataset's size.
//! - **By comparing states** (a snapshot load, a jump through another
//!   snapshot, a first load, a type dropped or re-created): every record
//!   of both states is looked at.
//!
//! Either way, records are matched by primary key (encoded by the schema
//! node their blob carries, [`crate::schema::node_key`]), not by ordinal: a
//! key that moved to another ordinal between the two states is a change
//! (or nothing, if its record is the same), never a removal and an
//! addition. A type without a key is matched by record content, so its
//! records are only ever added or removed. A key whose record is byte for
//! byte the same in both states (canonical form) is not reported.

use super::state::{ReadState, TypeData, TypeView};
use crate::error::{Error, FormatError};
use crate::schema::node_key::NodeKey;
use crate::schema::record::{Element, RecordType, TypeInfo};
use std::collections::HashMap;
use std::sync::Arc;

/// Told of the changes of each refresh that swapped a state in.
///
/// # Contract
///
/// Called after the new state is swapped in (readers already see it),
/// from the refreshing task, once per listener in the order they were
/// added, before the refresh returns; the next refresh waits for it. A
/// listener must be quick (hand heavy work to a task of its own) and must
/// not call back into the consumer's refresh. A refresh that swaps
/// nothing (already at the target, or failed) calls no listener.
pub trait RefreshListener: Send + Sync {
    /// Sees the changes of the refresh that just completed.
    fn refreshed(&self, event: &RefreshEvent);
}

/// A shared listener (the service keeps a handle to what it derives).
impl<L: RefreshListener + ?Sized> RefreshListener for Arc<L> {
    fn refreshed(&self, event: &RefreshEvent) {
        (**self).refreshed(event);
    }
}

/// How a refresh's changes were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeSource {
    /// Read from the deltas the refresh applied: only touched records
    /// were looked at.
    Deltas,
    /// By comparing the two states record by record (a snapshot load, a
    /// first load, or a type whose state was rebuilt).
    #[default]
    Compared,
}

/// The changes of one type, as ordinals of the two states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeChanges {
    /// The type's node id.
    pub type_id: u64,
    /// The type's display name.
    pub name: String,
    /// Records whose keys are new, by ordinal in the new state (sorted).
    pub added: Vec<u32>,
    /// Records whose keys are gone, by ordinal in the old state (sorted).
    pub removed: Vec<u32>,
    /// Keys whose records changed: (ordinal in the old state, ordinal in
    /// the new), sorted by the new.
    pub changed: Vec<(u32, u32)>,
    /// How they were found.
    pub source: ChangeSource,
    /// Records looked at to find them (both states' counted): what the
    /// computation cost.
    pub examined: u64,
}

impl TypeChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What one refresh changed.
pub struct RefreshEvent {
    from: Option<Arc<ReadState>>,
    to: Arc<ReadState>,
    changes: Result<Vec<TypeChanges>, Error>,
}

impl std::fmt::Debug for RefreshEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshEvent")
            .field("from", &self.from.as_ref().map(|s| s.version()))
            .field("to", &self.to.version())
            .field("changes", &self.changes)
            .finish()
    }
}

impl RefreshEvent {
    /// The changes from `from` (`None`: nothing was loaded, so every
    /// record is added) to `to`.
    pub fn compute(from: Option<Arc<ReadState>>, to: Arc<ReadState>) -> RefreshEvent {
        let changes = changes(from.as_deref(), &to);
        RefreshEvent { from, to, changes }
    }

    /// The state before the refresh (`None` for a first load).
    pub fn from(&self) -> Option<&Arc<ReadState>> {
        self.from.as_ref()
    }

    /// The state the refresh swapped in.
    pub fn to(&self) -> &Arc<ReadState> {
        &self.to
    }

    /// Every type with a change (types without one are left out), or the
    /// error that kept them from being found (a record whose key does not
    /// read): a service then rebuilds what it derives from [`Self::to`].
    pub fn changes(&self) -> Result<&[TypeChanges], &Error> {
        self.changes.as_deref()
    }

    /// The changes of type `T`, with typed access to the old and new
    /// records: `Ok(None)` when `T` did not change.
    pub fn typed<T: RecordType>(&self) -> Result<Option<TypedChanges<'_, T>>, Error> {
        let info = TypeInfo::of::<T>();
        let all = self
            .changes
            .as_ref()
            .map_err(|e| super::ConsumerError::ChangesUnavailable {
                reason: e.to_string(),
            })?;
        let Some(changes) = all.iter().find(|c| c.type_id == info.type_id) else {
            return Ok(None);
        };
        fn view<T: RecordType>(s: &ReadState, id: u64) -> Result<Option<TypeView<'_, T>>, Error> {
            match s.raw_type(id) {
                Some(_) => s.view::<T>().map(Some),
                None => Ok(None),
            }
        }
        Ok(Some(TypedChanges {
            changes,
            old: match &self.from {
                Some(s) => view::<T>(s, info.type_id)?,
                None => None,
            },
            new: view::<T>(&self.to, info.type_id)?,
        }))
    }
}

/// One type's changes with the records themselves, typed.
pub struct TypedChanges<'e, T: RecordType> {
    changes: &'e TypeChanges,
    old: Option<TypeView<'e, T>>,
    new: Option<TypeView<'e, T>>,
}

impl<'e, T: RecordType> TypedChanges<'e, T> {
    /// The ordinals, as [`RefreshEvent::changes`] gives them.
    pub fn ordinals(&self) -> &'e TypeChanges {
        self.changes
    }

    /// The records added, from the new state.
    pub fn added(&self) -> impl Iterator<Item = Element<'e, T>> + '_ {
        self.changes
            .added
            .iter()
            .filter_map(|&o| self.new.as_ref()?.get(o))
    }

    /// The records removed, from the old state.
    pub fn removed(&self) -> impl Iterator<Item = Element<'e, T>> + '_ {
        self.changes
            .removed
            .iter()
            .filter_map(|&o| self.old.as_ref()?.get(o))
    }

    /// The records changed: (old, new).
    pub fn changed(&self) -> impl Iterator<Item = (Element<'e, T>, Element<'e, T>)> + '_ {
        self.changes
            .changed
            .iter()
            .filter_map(|&(a, b)| Some((self.old.as_ref()?.get(a)?, self.new.as_ref()?.get(b)?)))
    }
}

fn changes(from: Option<&ReadState>, to: &ReadState) -> Result<Vec<TypeChanges>, Error> {
    let mut ids: Vec<u64> = to.types().iter().map(TypeData::type_id).collect();
    if let Some(from) = from {
        for t in from.types() {
            if !ids.contains(&t.type_id()) {
                ids.push(t.type_id());
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let old = from.and_then(|s| s.raw_type(id));
        let new = to.raw_type(id);
        let changes = type_changes(old, new)?;
        if !changes.is_empty() {
            out.push(changes);
        }
    }
    Ok(out)
}

/// The ordinals a refresh's deltas touched, when `new` is `old` with
/// deltas stacked on it (the same snapshot, `old`'s deltas first); `None`
/// when the states must be compared.
fn touched(old: &TypeData, new: &TypeData) -> Option<Vec<u32>> {
    let (old_parts, new_parts) = (old.parts(), new.parts());
    let same_base = match (old.base_arc(), new.base_arc()) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    if !same_base
        || new_parts.len() < old_parts.len()
        || !old_parts
            .iter()
            .zip(new_parts)
            .all(|(a, b)| Arc::ptr_eq(a, b))
    {
        return None;
    }
    let mut touched = Vec::new();
    for part in &new_parts[old_parts.len()..] {
        touched.extend_from_slice(part.removed.get());
        touched.extend_from_slice(part.ordinals.get());
    }
    touched.sort_unstable();
    touched.dedup();
    Some(touched)
}

/// One side of a type: its records by key (primary key bytes, or the
/// canonical record for a type without a key).
struct Side<'d> {
    data: &'d TypeData,
    key: Option<NodeKey>,
}

impl<'d> Side<'d> {
    fn new(data: &'d TypeData) -> Result<Self, Error> {
        let key = if data.key_fields().is_empty() {
            None
        } else {
            // Key fields keep their place across compatible schemas, so
            // any of the type's blobs that describes it gives the key.
            let mut found = None;
            let mut last_error = None;
            for blob in data.schema_blobs() {
                match blob.node_key(data.type_id(), data.key_fields()) {
                    Ok(k) => {
                        found = Some(k);
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            match (found, last_error) {
                (Some(k), _) => Some(k),
                (None, Some(e)) => return Err(e.into()),
                (None, None) => {
                    return Err(FormatError::Corrupt {
                        blob: data.name().to_string(),
                        reason: "no blob describes the type's key".into(),
                    }
                    .into())
                }
            }
        };
        Ok(Side { data, key })
    }

    /// The key of the record at `o` (`None`: a hole), into `out`.
    fn key(&self, o: u32, out: &mut Vec<u8>) -> Result<bool, Error> {
        out.clear();
        let Some((blob, lists, index)) = self.data.element(o) else {
            return Ok(false);
        };
        match &self.key {
            Some(key) => key
                .encode_struct(
                    blob.segment(),
                    lists.element(index),
                    lists.data as usize,
                    lists.ptrs as usize,
                    out,
                )
                .map_err(|reason| FormatError::Corrupt {
                    blob: blob.name().to_string(),
                    reason: format!("{}: the key of ordinal {o}: {reason}", self.data.name()),
                })?,
            None => {
                let mut words = Vec::new();
                self.data.canonical_record(o, &mut words)?;
                out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            }
        }
        Ok(true)
    }

    fn all(&self) -> impl Iterator<Item = u32> {
        0..self.data.ordinal_limit()
    }
}

fn type_changes(old: Option<&TypeData>, new: Option<&TypeData>) -> Result<TypeChanges, Error> {
    let any = new.or(old).expect("a type of one of the states");
    let mut out = TypeChanges {
        type_id: any.type_id(),
        name: any.name().to_string(),
        source: ChangeSource::Compared,
        ..TypeChanges::default()
    };
    // Keys of one side are comparable with the other's only when both
    // name the same key fields.
    let comparable = match (old, new) {
        (Some(a), Some(b)) => a.key_fields() == b.key_fields(),
        _ => true,
    };
    let touched = match (old, new) {
        (Some(a), Some(b)) if comparable => touched(a, b),
        _ => None,
    };
    if touched.is_some() {
        out.source = ChangeSource::Deltas;
    }
    let old = old.map(Side::new).transpose()?;
    let new = new.map(Side::new).transpose()?;
    if !comparable {
        // Nothing of one side matches the other: all removed, all added.
        let mut key = Vec::new();
        if let Some(old) = &old {
            for o in old.all() {
                if old.key(o, &mut key)? {
                    out.examined += 1;
                    out.removed.push(o);
                }
            }
        }
        if let Some(new) = &new {
            for o in new.all() {
                if new.key(o, &mut key)? {
                    out.examined += 1;
                    out.added.push(o);
                }
            }
        }
        return Ok(out);
    }
    // A key keeps its ordinal for as long as it lives, so most records
    // are settled ordinal by ordinal: the same canonical record at the
    // same ordinal is the same key, unchanged, with no key read; the same
    // key with another record is a change. Only the rest (a key that left,
    // arrived, or came back at another ordinal) is matched by key.
    let limit = |side: &Option<Side<'_>>| side.as_ref().map_or(0, |s| s.data.ordinal_limit());
    let ordinals: Vec<u32> = match &touched {
        Some(t) => t.clone(),
        None => (0..limit(&old).max(limit(&new))).collect(),
    };
    let (mut words_old, mut words_new) = (Vec::new(), Vec::new());
    let (mut key_old, mut key_new) = (Vec::new(), Vec::new());
    let mut old_rest: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut new_rest: Vec<(u32, Vec<u8>)> = Vec::new();
    for o in ordinals {
        words_old.clear();
        words_new.clear();
        let in_old = match &old {
            Some(side) => side.data.canonical_record(o, &mut words_old)?,
            None => false,
        };
        let in_new = match &new {
            Some(side) => side.data.canonical_record(o, &mut words_new)?,
            None => false,
        };
        out.examined += u64::from(in_old) + u64::from(in_new);
        if in_old && in_new && words_old == words_new {
            continue;
        }
        if in_old {
            old.as_ref().expect("in_old").key(o, &mut key_old)?;
        }
        if in_new {
            new.as_ref().expect("in_new").key(o, &mut key_new)?;
        }
        if in_old && in_new && key_old == key_new {
            out.changed.push((o, o));
            continue;
        }
        if in_old {
            old_rest.insert(key_old.clone(), o);
        }
        if in_new {
            new_rest.push((o, key_new.clone()));
        }
    }
    for (o, key) in new_rest {
        match old_rest.remove(&key) {
            Some(before) => {
                let (old, new) = (
                    old.as_ref().expect("old key"),
                    new.as_ref().expect("new key"),
                );
                words_old.clear();
                words_new.clear();
                old.data.canonical_record(before, &mut words_old)?;
                new.data.canonical_record(o, &mut words_new)?;
                if words_old != words_new {
                    out.changed.push((before, o));
                }
            }
            None => out.added.push(o),
        }
    }
    out.changed.sort_unstable_by_key(|&(_, o)| o);
    out.added.sort_unstable();
    out.removed.extend(old_rest.into_values());
    out.removed.sort_unstable();
    Ok(out)
}
