//! Secondary hash indexes: the one place that knows their layout.
//!
//! A producer declares an index on a type by name and fields
//! ([`IndexDef`]: `by_year` over `year`, `by_tag` over the list `tags`);
//! the snapshot writer builds it ([`build`]) beside the primary key index,
//! a consumer probes it ([`IndexTable::groups`]) and keeps it current by
//! deltas, and the checker rebuilds it from the records and compares
//! ([`check`]). A consumer builds the same structure in memory for an
//! index the producer did not ship.
//!
//! # Values
//!
//! A record's **values** for an index are the canonical bytes of its
//! fields in the index's order, encoded as primary keys are
//! ([`crate::schema::key`]): an integer or enum as 8 bytes (signed as
//! i64), a bool as one byte, text and data as a u32 length and the bytes.
//! A field may be a list of such scalars (at most one per index): the
//! record then has one value per distinct element (a movie with tags
//! `[a, b]` is found under `a` and under `b`), none for an empty list.
//! Fields are read through the type's schema node
//! ([`NodeIndex::resolve`]), so the producer, the consumer and the checker
//! read them the same way, with or without generated code.
//!
//! # Layout (format v2, `TypeSnapshot.indexes`)
//!
//! Records with equal values form a **group**. Groups are numbered in
//! order of (value hash, value bytes), the value hash being the xxh3-64 of
//! the value's bytes; `postings` holds each group's ordinals, ascending,
//! group after group, and `starts` (one more entry than there are groups,
//! the first 0, strictly increasing, the last `postings.len`) says where
//! each group begins. `table` is laid out exactly as a key index
//! ([`crate::schema::key_index`]) whose "ordinal" is the group number: a
//! lookup probes it with the value hash, and the first ordinal of each
//! candidate group confirms the value. A unique index has one ordinal per
//! group. An index over a type without records is empty.
//!
//! # Invariants
//!
//! - The layout is a function of the records: [`check`] rebuilds it and
//!   requires the words to be equal, so a hostile index is refused by
//!   name, never trusted to answer.
//! - Every candidate a lookup yields is confirmed by the record's own
//!   values, so a stale entry (a record a delta changed) never answers.

use crate::schema::key_index::{KeyIndex, KeyIndexBuilder};
use crate::schema::node_key::{read_bytes, NodeKey};
use capnp::schema_capnp::{field, node, type_};
use hashbrown::HashMap;

/// A secondary index's declaration: its name, fields and uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexDef {
    /// The index's name, e.g. `by_year`; distinct within its type.
    pub name: String,
    /// The fields, in value order; at most one of them a list.
    pub fields: Vec<String>,
    /// At most one record per value.
    pub unique: bool,
}

impl IndexDef {
    /// An index `name` over `fields`.
    pub fn new(name: &str, fields: &[&str], unique: bool) -> Self {
        IndexDef {
            name: name.to_string(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            unique,
        }
    }
}

/// How one element of a list field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Int { width: usize, signed: bool },
    Bool,
    Bytes { text: bool },
}

/// How one field of an index is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexField {
    /// A scalar field, read as a one-field key.
    Plain(NodeKey),
    /// A list of scalars behind pointer `index`.
    List { index: usize, elem: Elem },
}

/// An index's fields resolved against a struct's schema node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIndex {
    fields: Vec<IndexField>,
}

impl NodeIndex {
    /// Resolves `def`'s fields against the struct `node`. An error names
    /// the field and says why it cannot be indexed.
    pub fn resolve(node: node::Reader<'_>, def: &IndexDef) -> Result<NodeIndex, String> {
        if def.name.is_empty() {
            return Err("an index needs a name".into());
        }
        if def.fields.is_empty() {
            return Err(format!("index {}: needs at least one field", def.name));
        }
        let node::Struct(st) = node.which().map_err(|e| e.to_string())? else {
            return Err("the node is not a struct".into());
        };
        let all = st.get_fields().map_err(|e| e.to_string())?;
        let mut fields = Vec::with_capacity(def.fields.len());
        let mut lists = 0;
        for (i, name) in def.fields.iter().enumerate() {
            let bad = |why: &str| format!("index {}: field {name}: {why}", def.name);
            if def.fields[..i].contains(name) {
                return Err(bad("named twice"));
            }
            let f = all
                .iter()
                .find(|f| f.get_name().ok().and_then(|n| n.to_str().ok()) == Some(name))
                .ok_or_else(|| bad("no such field"))?;
            if f.get_discriminant_value() != field::NO_DISCRIMINANT {
                return Err(bad("is a union member"));
            }
            let field::Slot(slot) = f.which().map_err(|e| bad(&e.to_string()))? else {
                return Err(bad("is a group"));
            };
            let ty = slot
                .get_type()
                .and_then(|t| t.which().map_err(Into::into))
                .map_err(|e| bad(&e.to_string()))?;
            if let type_::List(list) = ty {
                let elem = list
                    .get_element_type()
                    .and_then(|t| t.which().map_err(Into::into))
                    .map_err(|e| bad(&e.to_string()))?;
                let int = |width, signed| Elem::Int { width, signed };
                let elem = match elem {
                    type_::Bool(()) => Elem::Bool,
                    type_::Int8(()) => int(1, true),
                    type_::Int16(()) => int(2, true),
                    type_::Int32(()) => int(4, true),
                    type_::Int64(()) => int(8, true),
                    type_::Uint8(()) => int(1, false),
                    type_::Uint16(()) | type_::Enum(_) => int(2, false),
                    type_::Uint32(()) => int(4, false),
                    type_::Uint64(()) => int(8, false),
                    type_::Text(()) => Elem::Bytes { text: true },
                    type_::Data(()) => Elem::Bytes { text: false },
                    _ => return Err(bad(
                        "is a list of something other than integers, bools, enums, text or data",
                    )),
                };
                lists += 1;
                if lists > 1 {
                    return Err(bad("is a second list field; an index takes at most one"));
                }
                fields.push(IndexField::List {
                    index: slot.get_offset() as usize,
                    elem,
                });
            } else {
                let key = NodeKey::resolve(node, std::slice::from_ref(name))
                    .map_err(|e| format!("index {}: {e}", def.name))?;
                fields.push(IndexField::Plain(key));
            }
        }
        Ok(NodeIndex { fields })
    }

    /// Whether the index is one scalar field (one value per record).
    pub fn is_plain(&self) -> bool {
        !self
            .fields
            .iter()
            .any(|f| matches!(f, IndexField::List { .. }))
    }

    /// The values of the struct whose data section starts at word `data`
    /// of `words` (`data_words` data words, then `ptr_count` pointers), into
    /// `out` (cleared first), distinct and sorted. Every read is
    /// bounds-checked; an error says what is laid out wrongly.
    pub fn values(
        &self,
        words: &[u64],
        data: usize,
        data_words: usize,
        ptr_count: usize,
        out: &mut Values,
    ) -> Result<(), String> {
        out.clear();
        let list = self.fields.iter().find_map(|f| match f {
            IndexField::List { index, elem } => Some((*index, *elem)),
            IndexField::Plain(_) => None,
        });
        let Some((index, elem)) = list else {
            for f in &self.fields {
                if let IndexField::Plain(k) = f {
                    k.encode_struct(words, data, data_words, ptr_count, &mut out.bytes)?;
                }
            }
            out.ends.push(out.bytes.len());
            return Ok(());
        };
        let mut elems = out.scratch.take().unwrap_or_default();
        elems.clear();
        let result: Result<(), String> = (|| {
            if index < ptr_count {
                read_list(words, data + data_words + index, elem, &mut elems)?;
            }
            for e in 0..elems.len() {
                for f in &self.fields {
                    match f {
                        IndexField::Plain(k) => {
                            k.encode_struct(words, data, data_words, ptr_count, &mut out.bytes)?
                        }
                        IndexField::List { .. } => out.bytes.extend_from_slice(elems.get(e)),
                    }
                }
                out.ends.push(out.bytes.len());
            }
            Ok(())
        })();
        out.scratch = Some(elems);
        result?;
        out.sort_dedup();
        Ok(())
    }

    /// The values of a canonical record (root pointer in word 0).
    pub fn record_values(&self, words: &[u64], out: &mut Values) -> Result<(), String> {
        let root = *words.first().ok_or("empty record")?;
        if root == 0 {
            return self.values(words, 1, 0, 0, out);
        }
        if root & 3 != 0 {
            return Err("the record's root is not a struct pointer".into());
        }
        let offset = i64::from((root as u32 as i32) >> 2);
        let data = usize::try_from(1 + offset).map_err(|_| "root pointer points backwards")?;
        let (d, p) = ((root >> 32) as u16 as usize, (root >> 48) as u16 as usize);
        self.values(words, data, d, p, out)
    }
}

/// Appends the encoded elements of the list behind the pointer at word
/// `at` to `out` (a null pointer is an empty list).
fn read_list(words: &[u64], at: usize, elem: Elem, out: &mut Values) -> Result<(), String> {
    let bytes = crate::schema::record::words_as_bytes(words);
    let p = *words
        .get(at)
        .ok_or("a list pointer lies outside the words")?;
    if p == 0 {
        return Ok(());
    }
    let code = (p >> 32) & 7;
    let want = match elem {
        Elem::Bool => 1,
        Elem::Int { width, .. } => match width {
            1 => 2,
            2 => 3,
            4 => 4,
            _ => 5,
        },
        Elem::Bytes { .. } => 6,
    };
    if p & 3 != 1 || code != want {
        return Err(format!(
            "an indexed list is not a list of element size {want} (pointer {p:#018x})"
        ));
    }
    let offset = i64::from((p as u32 as i32) >> 2);
    let count = (p >> 35) as usize;
    let start = usize::try_from(at as i64 + 1 + offset)
        .map_err(|_| "an indexed list points before the segment")?;
    let outside = || "an indexed list lies outside the segment".to_string();
    match elem {
        Elem::Bool => {
            let b = bytes
                .get(start * 8..(start * 8).saturating_add(count.div_ceil(8)))
                .ok_or_else(outside)?;
            for i in 0..count {
                out.push(&[b[i / 8] >> (i % 8) & 1]);
            }
        }
        Elem::Int { width, signed } => {
            let b = bytes
                .get(start * 8..(start * 8).saturating_add(count.saturating_mul(width)))
                .ok_or_else(outside)?;
            for c in b.chunks_exact(width) {
                let mut buf = [0u8; 8];
                buf[..width].copy_from_slice(c);
                let raw = u64::from_le_bytes(buf);
                let v = if signed {
                    let shift = 64 - 8 * width as u32;
                    (((raw << shift) as i64) >> shift) as u64
                } else {
                    raw
                };
                out.push(&v.to_le_bytes());
            }
        }
        Elem::Bytes { text } => {
            if start.saturating_add(count) > words.len() {
                return Err(outside());
            }
            for i in 0..count {
                let v = read_bytes(words, bytes, start + i, text)?.unwrap_or(&[]);
                out.bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.bytes.extend_from_slice(v);
                out.ends.push(out.bytes.len());
            }
        }
    }
    Ok(())
}

/// A record's values: byte strings kept in one buffer, reused from record
/// to record so that reading values allocates only while it grows.
#[derive(Debug, Default, Clone)]
pub struct Values {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// A list field's elements, read before they are combined with the
    /// other fields.
    scratch: Option<Box<Values>>,
}

impl Values {
    /// No values.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Every value.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Whether `value` is one of them.
    pub fn contains(&self, value: &[u8]) -> bool {
        self.iter().any(|v| v == value)
    }

    fn sort_dedup(&mut self) {
        if self.len() < 2 {
            return;
        }
        let mut all: Vec<Vec<u8>> = self.iter().map(<[u8]>::to_vec).collect();
        all.sort_unstable();
        all.dedup();
        self.clear();
        for v in &all {
            self.push(v);
        }
    }
}

/// The xxh3-64 of a value's bytes: what the table is probed with.
#[inline]
pub fn value_hash(value: &[u8]) -> u64 {
    crate::schema::key::key_hash(value)
}

/// An index's words, as written into a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuiltIndex {
    /// The group table, laid out as a key index.
    pub table: Vec<u64>,
    /// Where each group begins in `postings`, and its end.
    pub starts: Vec<u32>,
    /// Each group's ordinals, ascending.
    pub postings: Vec<u32>,
}

/// Builds an index from records given in ascending ordinal order: `values`
/// reads the values of each ordinal into its second argument. A unique
/// index whose value two records share is an error naming both.
pub fn build(
    def: &IndexDef,
    ordinals: impl Iterator<Item = u32>,
    mut values: impl FnMut(u32, &mut Values) -> Result<(), String>,
) -> Result<BuiltIndex, String> {
    let mut groups: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    let mut vals = Values::default();
    for o in ordinals {
        values(o, &mut vals)?;
        for v in vals.iter() {
            let postings = groups.entry_ref(v).or_default();
            if def.unique {
                if let Some(&other) = postings.first() {
                    return Err(format!(
                        "unique index {}: ordinals {other} and {o} hold the same value",
                        def.name
                    ));
                }
            }
            postings.push(o);
        }
    }
    let mut order: Vec<(u64, Vec<u8>, Vec<u32>)> = groups
        .into_iter()
        .map(|(v, p)| (value_hash(&v), v, p))
        .collect();
    order.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let count = u32::try_from(order.len()).map_err(|_| "too many distinct values")?;
    let mut table = KeyIndexBuilder::new(count);
    let mut built = BuiltIndex::default();
    if count > 0 {
        built.starts.push(0);
    }
    for (g, (hash, _, postings)) in order.into_iter().enumerate() {
        if !table.insert(hash, g as u32) {
            return Err(format!("index {}: the group table is full", def.name));
        }
        built.postings.extend_from_slice(&postings);
        let end = u32::try_from(built.postings.len()).map_err(|_| "too many postings")?;
        built.starts.push(end);
    }
    built.table = table.words().to_vec();
    Ok(built)
}

/// An index as read from a snapshot: views of its three lists.
#[derive(Clone, Copy, Debug)]
pub struct IndexTable<'a> {
    /// The group table.
    pub table: &'a [u64],
    /// Group starts.
    pub starts: &'a [u32],
    /// Ordinals.
    pub postings: &'a [u32],
}

impl<'a> IndexTable<'a> {
    /// The ordinals of group `g`; empty for a group the lists do not hold
    /// (a hostile index misses rather than panics).
    #[inline]
    pub fn group(&self, g: u32) -> &'a [u32] {
        let g = g as usize;
        match (self.starts.get(g), self.starts.get(g + 1)) {
            (Some(&s), Some(&e)) if s <= e => {
                self.postings.get(s as usize..e as usize).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// The candidate groups for a value hashing to `hash`, in probe order:
    /// each still to be confirmed by its first record's values.
    #[inline]
    pub fn groups(&self, hash: u64) -> impl Iterator<Item = &'a [u32]> + 'a {
        let this = *self;
        KeyIndex::new(self.table)
            .probe(hash)
            .map(move |s| this.group(s.ordinal))
            .filter(|g| !g.is_empty())
    }
}

/// Checks a snapshot's index against its records: `rebuilt` is what
/// [`build`] makes of them, and the stored lists must be exactly its
/// words. Returns the reason naming the first list that differs.
pub fn check(def: &IndexDef, stored: IndexTable<'_>, rebuilt: &BuiltIndex) -> Result<(), String> {
    let lists = [
        ("table", stored.table.len(), rebuilt.table.len()),
        ("starts", stored.starts.len(), rebuilt.starts.len()),
        ("postings", stored.postings.len(), rebuilt.postings.len()),
    ];
    for (what, found, want) in lists {
        if found != want {
            return Err(format!(
                "index {}: {what} has {found} entries, the records give {want}",
                def.name
            ));
        }
    }
    let first_diff = |a: &[u64], b: &[u64]| a.iter().zip(b).position(|(x, y)| x != y);
    if let Some(i) = first_diff(stored.table, &rebuilt.table) {
        return Err(format!(
            "index {}: table slot {i} differs from what the records give",
            def.name
        ));
    }
    if let Some(i) = stored
        .starts
        .iter()
        .zip(&rebuilt.starts)
        .position(|(x, y)| x != y)
    {
        return Err(format!(
            "index {}: start of group {i} differs from what the records give",
            def.name
        ));
    }
    if let Some(i) = stored
        .postings
        .iter()
        .zip(&rebuilt.postings)
        .position(|(x, y)| x != y)
    {
        return Err(format!(
            "index {}: posting {i} names ordinal {}, the records give {}",
            def.name, stored.postings[i], rebuilt.postings[i]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::examples::movies_capnp::movie;
    use crate::schema::record::{append_canonical, TypeInfo};

    fn movie(id: u64, year: u32, tags: &[&str]) -> Vec<u64> {
        let mut m = capnp::message::Builder::new_default();
        let mut r = m.init_root::<movie::Builder<'_>>();
        r.set_id(id);
        r.set_year(year);
        r.set_title("t");
        let mut t = r.init_tags(tags.len() as u32);
        for (i, tag) in tags.iter().enumerate() {
            t.set(i as u32, *tag);
        }
        let mut out = Vec::new();
        append_canonical(
            m.get_root_as_reader().unwrap(),
            None,
            &mut Vec::new(),
            &mut out,
        )
        .unwrap();
        out
    }

    fn resolve(def: &IndexDef) -> Result<NodeIndex, String> {
        let info = TypeInfo::of::<movie::Owned>();
        NodeIndex::resolve(info.schema().unwrap().get_proto(), def)
    }

    /// Invariant: a list field gives one value per distinct element, and
    /// a lookup of each finds exactly the records holding it.
    #[test]
    fn list_fields_index_each_distinct_element() {
        let def = IndexDef::new("by_tag", &["tags"], false);
        let idx = resolve(&def).unwrap();
        assert!(!idx.is_plain());
        let records = [
            movie(1, 1999, &["a", "b", "a"]),
            movie(2, 2000, &["b"]),
            movie(3, 2000, &[]),
        ];
        let mut v = Values::default();
        idx.record_values(&records[0], &mut v).unwrap();
        assert_eq!(v.len(), 2, "duplicates collapse");
        let built = build(&def, 0..3, |o, out| {
            idx.record_values(&records[o as usize], out)
        })
        .unwrap();
        let table = IndexTable {
            table: &built.table,
            starts: &built.starts,
            postings: &built.postings,
        };
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.push(b'b');
        let groups: Vec<&[u32]> = table.groups(value_hash(&b)).collect();
        assert!(groups.contains(&&[0u32, 1][..]), "{groups:?}");
        assert_eq!(built.postings.len(), 3);
        assert_eq!(check(&def, table, &built), Ok(()));
    }

    #[test]
    fn unique_and_bad_definitions_are_named() {
        let def = IndexDef::new("by_year", &["year"], true);
        let idx = resolve(&def).unwrap();
        let records = [movie(1, 1999, &[]), movie(2, 1999, &[])];
        let err = build(&def, 0..2, |o, out| {
            idx.record_values(&records[o as usize], out)
        })
        .unwrap_err();
        assert!(
            err.contains("unique index by_year: ordinals 0 and 1"),
            "{err}"
        );
        let err = resolve(&IndexDef::new("x", &["nope"], false)).unwrap_err();
        assert!(err.contains("index x: field nope: no such field"), "{err}");
        let err = resolve(&IndexDef::new("x", &["year", "year"], false)).unwrap_err();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn check_names_a_damaged_list() {
        let def = IndexDef::new("by_year", &["year"], false);
        let idx = resolve(&def).unwrap();
        let records = [
            movie(1, 1999, &[]),
            movie(2, 2000, &[]),
            movie(3, 1999, &[]),
        ];
        let built = build(&def, 0..3, |o, out| {
            idx.record_values(&records[o as usize], out)
        })
        .unwrap();
        let mut postings = built.postings.clone();
        postings.swap(0, 2);
        let stored = IndexTable {
            table: &built.table,
            starts: &built.starts,
            postings: &postings,
        };
        let err = check(&def, stored, &built).unwrap_err();
        assert!(
            err.contains("index by_year: posting 0 names ordinal"),
            "{err}"
        );
        let stored = IndexTable {
            table: &built.table[1..],
            starts: &built.starts,
            postings: &built.postings,
        };
        assert!(check(&def, stored, &built)
            .unwrap_err()
            .contains("table has"));
    }
}
