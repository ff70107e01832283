//! Secondary indexes in a read state: the producer's, shipped in the
//! snapshot, and the consumer's own, built on request.
//!
//! Each index a type carries ([`IndexState`]) is the snapshot's table (for
//! a shipped index) behind an **overlay**: value hash → the ordinals whose
//! *current* values include a value of that hash that the snapshot's table
//! does not give them. A delta updates the overlay for the ordinals it
//! removes or sets, reading each one's values before and after (and in the
//! snapshot), so applying a delta costs work in proportion to the delta. A
//! consumer-built index has no table: its overlay is the whole index,
//! built once by scanning the records ([`IndexBuild`] reports the cost)
//! and then kept current the same way.
//!
//! A lookup ([`IndexView::find`]) reads the overlay's ordinals for the
//! value's hash, then the snapshot's group for the value, and confirms each
//! candidate: an overlay entry and a snapshot entry for an ordinal a delta
//! touched by the record's current values, a snapshot group by its first
//! record, so that records no delta touched are handed out with no further
//! read. The overlay and the snapshot never both give one ordinal for one
//! value (the overlay holds only values the snapshot does not), so no
//! record is returned twice.

use super::state::{TypeData, TypeView};
use crate::error::{Error, FormatError, KeyError};
use crate::schema::blob::ShippedIndex;
use crate::schema::index::{value_hash, IndexDef, IndexTable, NodeIndex, Values};
use crate::schema::key::{Key, KeyBuf, KeySpec};
use crate::schema::key_index::{KeyIndex, Probe};
use crate::schema::record::{Element, RecordType, TypeInfo};
use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One secondary index of a type in a read state.
#[derive(Clone)]
pub struct IndexState {
    pub(super) def: IndexDef,
    pub(super) node: Arc<NodeIndex>,
    /// Position of the snapshot's copy in the base section's indexes;
    /// `None` for an index the consumer built.
    pub(super) shipped: Option<usize>,
    /// Value hash → ordinals whose current values hold a value of that
    /// hash that the snapshot's table does not give them.
    pub(super) overlay: Arc<HashMap<u64, Vec<u32>>>,
}

impl IndexState {
    /// The index's name, fields and uniqueness.
    pub fn def(&self) -> &IndexDef {
        &self.def
    }

    /// Whether the producer shipped it (rather than the consumer built it).
    pub fn is_shipped(&self) -> bool {
        self.shipped.is_some()
    }

    /// Ordinals in the overlay (for a consumer-built index, the whole
    /// index; for a shipped one, what deltas changed).
    pub fn overlay_len(&self) -> usize {
        self.overlay.values().map(Vec::len).sum()
    }

    fn table<'a>(&self, data: &'a TypeData) -> Option<&'a ShippedIndex> {
        data.base()?.indexes.get(self.shipped?)
    }

    /// The values of the record at `o` in `data` (none for a hole).
    fn current(&self, data: &TypeData, o: u32, out: &mut Values) -> Result<(), String> {
        out.clear();
        let Some((blob, lists, i)) = data.element(o) else {
            return Ok(());
        };
        self.node.values(
            blob.segment(),
            lists.element(i),
            lists.data.into(),
            lists.ptrs.into(),
            out,
        )
    }

    /// The values the snapshot's table gives `o` (none for a consumer-built
    /// index, or an ordinal the snapshot does not hold).
    fn in_table(&self, data: &TypeData, o: u32, out: &mut Values) -> Result<(), String> {
        out.clear();
        let Some(base) = data.base() else {
            return Ok(());
        };
        if self.shipped.is_none() || o >= base.ordinal_limit || !base.is_present(o) {
            return Ok(());
        }
        let l = &base.lists;
        self.node.values(
            base.blob.segment(),
            l.element(o),
            l.data.into(),
            l.ptrs.into(),
            out,
        )
    }

    /// Updates the overlay for the ordinals a delta touched (`touched`,
    /// each once), `before` and `after` being the type before and after.
    pub(super) fn apply(
        &mut self,
        before: &TypeData,
        after: &TypeData,
        touched: impl Iterator<Item = u32>,
    ) -> Result<(), String> {
        let mut overlay_arc = std::mem::take(&mut self.overlay);
        let result = self.apply_to(Arc::make_mut(&mut overlay_arc), before, after, touched);
        self.overlay = overlay_arc;
        result
    }

    fn apply_to(
        &self,
        overlay: &mut HashMap<u64, Vec<u32>>,
        before: &TypeData,
        after: &TypeData,
        touched: impl Iterator<Item = u32>,
    ) -> Result<(), String> {
        let (mut old, mut new, mut table) =
            (Values::default(), Values::default(), Values::default());
        for o in touched {
            self.current(before, o, &mut old)?;
            self.current(after, o, &mut new)?;
            self.in_table(after, o, &mut table)?;
            for v in old
                .iter()
                .filter(|v| !table.contains(v) && !new.contains(v))
            {
                let h = value_hash(v);
                if let Some(list) = overlay.get_mut(&h) {
                    list.retain(|&x| x != o);
                    if list.is_empty() {
                        overlay.remove(&h);
                    }
                }
            }
            for v in new
                .iter()
                .filter(|v| !table.contains(v) && !old.contains(v))
            {
                let list = overlay.entry(value_hash(v)).or_default();
                if !list.contains(&o) {
                    list.push(o);
                }
            }
        }
        Ok(())
    }

    /// The index `def` built by the consumer over `data`'s records.
    pub(super) fn build(
        data: &TypeData,
        def: IndexDef,
        node: NodeIndex,
    ) -> Result<(IndexState, IndexBuild), String> {
        let started = std::time::Instant::now();
        let mut state = IndexState {
            def,
            node: Arc::new(node),
            shipped: None,
            overlay: Arc::default(),
        };
        let mut overlay: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut vals = Values::default();
        let (mut records, mut values) = (0u64, 0u64);
        let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
        for o in 0..data.ordinal_limit() {
            state.current(data, o, &mut vals)?;
            if data.element(o).is_some() {
                records += 1;
            }
            for v in vals.iter() {
                if state.def.unique {
                    if let Some(other) = seen.insert(v.to_vec(), o) {
                        return Err(format!(
                            "unique index {}: ordinals {other} and {o} hold the same value",
                            state.def.name
                        ));
                    }
                }
                overlay.entry(value_hash(v)).or_default().push(o);
                values += 1;
            }
        }
        state.overlay = Arc::new(overlay);
        let report = IndexBuild {
            name: state.def.name.clone(),
            records,
            values,
            elapsed: started.elapsed(),
        };
        Ok((state, report))
    }
}

/// What building a consumer-side index cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBuild {
    /// The index's name.
    pub name: String,
    /// Records read.
    pub records: u64,
    /// Entries made (one per record and distinct value).
    pub values: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// The index `def` on `info`'s type, resolved against the generated code's
/// schema node (what a consumer-built index reads fields by).
pub(super) fn resolve(info: &TypeInfo, def: &IndexDef) -> Result<NodeIndex, Error> {
    let bad = |reason: String| -> Error {
        KeyError::Index {
            type_name: info.name.clone(),
            index: def.name.clone(),
            reason,
        }
        .into()
    };
    info.with_node(|node| NodeIndex::resolve(node, def))
        .map_err(|e| bad(e.to_string()))?
        .map_err(bad)
}

/// A typed view of one index of a type ([`TypeView::index`]).
pub struct IndexView<'v, 's, T: RecordType> {
    pub(super) view: &'v TypeView<'s, T>,
    pub(super) data: &'s TypeData,
    pub(super) index: &'s IndexState,
    pub(super) spec: KeySpec,
}

impl<'v, 's, T: RecordType> IndexView<'v, 's, T> {
    /// The index's name, fields and uniqueness.
    pub fn def(&self) -> &IndexDef {
        &self.index.def
    }

    /// The records whose values include `value` (for an index over a list
    /// field, those whose list holds it; for several fields, a tuple in
    /// field order), as `(ordinal, record)`, read in place. The iteration
    /// allocates nothing for records no delta touched. A unique index
    /// yields at most one.
    pub fn find<K: Key + ?Sized>(&self, value: &K) -> Result<Matches<'v, 's, T>, Error> {
        let mut query = KeyBuf::new();
        self.spec
            .encode_query(self.data.name(), value, &mut query)
            .map_err(Error::from)?;
        let hash = query.hash();
        let table = self.index.table(self.data).map(ShippedIndex::table);
        let overlay: &'s [u32] = self.index.overlay.get(&hash).map_or(&[], Vec::as_slice);
        Ok(Matches {
            view: self.view,
            data: self.data,
            index: self.index,
            query,
            overlay: overlay.iter(),
            probe: table.map(|t| (t, KeyIndex::new(t.table).probe(hash))),
            group: [].iter(),
            left: if self.index.def.unique { 1 } else { usize::MAX },
            clean: self.data.delta_parts() == 0
                && self.data.base().is_some_and(|b| {
                    b.present.get().is_empty() && b.ordinal_limit == self.data.ordinal_limit()
                }),
            vals: Values::default(),
        })
    }

    /// The one record holding `value`, for a unique index (the first for
    /// another).
    pub fn get<K: Key + ?Sized>(&self, value: &K) -> Result<Option<(u32, Element<'s, T>)>, Error> {
        self.find(value)?.next().transpose()
    }
}

/// The records an index lookup matched ([`IndexView::find`]); each item is
/// a record or the error of one whose values could not be read.
pub struct Matches<'v, 's, T: RecordType> {
    view: &'v TypeView<'s, T>,
    data: &'s TypeData,
    index: &'s IndexState,
    query: KeyBuf,
    overlay: std::slice::Iter<'s, u32>,
    probe: Option<(IndexTable<'s>, Probe<'s>)>,
    group: std::slice::Iter<'s, u32>,
    left: usize,
    /// No delta applies and the snapshot has no holes: every ordinal of a
    /// group is its element, read with no further test.
    clean: bool,
    vals: Values,
}

impl<'s, T: RecordType> Matches<'_, 's, T> {
    fn corrupt(&self, o: u32, reason: String) -> Error {
        FormatError::Corrupt {
            blob: self.data.blob_name().to_string(),
            reason: format!(
                "{}: index {}: ordinal {o}: {reason}",
                self.data.name(),
                self.index.def.name
            ),
        }
        .into()
    }

    /// Whether the record at `o` holds the query value now.
    fn holds(&mut self, o: u32) -> Result<bool, Error> {
        let mut vals = std::mem::take(&mut self.vals);
        let r = self.index.current(self.data, o, &mut vals);
        let held = vals.contains(self.query.as_bytes());
        self.vals = vals;
        r.map_err(|e| self.corrupt(o, e))?;
        Ok(held)
    }

    /// Whether the snapshot's record at `o` held the query value (the
    /// group of `o` is the query's).
    fn held(&mut self, o: u32) -> Result<bool, Error> {
        let mut vals = std::mem::take(&mut self.vals);
        let r = self.index.in_table(self.data, o, &mut vals);
        let held = vals.contains(self.query.as_bytes());
        self.vals = vals;
        r.map_err(|e| self.corrupt(o, e))?;
        Ok(held)
    }

    #[inline]
    fn step(&mut self) -> Result<Option<(u32, Element<'s, T>)>, Error> {
        if self.clean {
            if let Some(&o) = self.group.next() {
                if let Some(r) = self.view.base_element_unchecked(o) {
                    return Ok(Some((o, r)));
                }
            }
        }
        self.step_slow()
    }

    #[cold]
    fn step_slow(&mut self) -> Result<Option<(u32, Element<'s, T>)>, Error> {
        while let Some(&o) = self.overlay.next() {
            if self.holds(o)? {
                if let Some(r) = self.view.get(o) {
                    return Ok(Some((o, r)));
                }
            }
        }
        loop {
            while let Some(&o) = self.group.next() {
                if o >= self.data.ordinal_limit() {
                    // Past an ordinal space a delta shrank: no record.
                    continue;
                }
                if self.data.is_untouched(o) {
                    if let Some(r) = self.view.base_element(o) {
                        return Ok(Some((o, r)));
                    }
                } else if self.holds(o)? {
                    if let Some(r) = self.view.get(o) {
                        return Ok(Some((o, r)));
                    }
                }
            }
            let Some((table, probe)) = &mut self.probe else {
                return Ok(None);
            };
            let Some(slot) = probe.next() else {
                self.probe = None;
                return Ok(None);
            };
            let group = table.group(slot.ordinal);
            let Some(&first) = group.first() else {
                continue;
            };
            if self.held(first)? {
                // Groups hold distinct values: no other candidate is ours.
                self.group = group.iter();
                self.probe = None;
            }
        }
    }
}

impl<'s, T: RecordType> Iterator for Matches<'_, 's, T> {
    type Item = Result<(u32, Element<'s, T>), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        match self.step() {
            Ok(Some(found)) => {
                self.left -= 1;
                Some(Ok(found))
            }
            Ok(None) => {
                self.left = 0;
                None
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}
