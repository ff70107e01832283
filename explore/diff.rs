//! The records added, removed and changed between two versions, matched
//! by primary key, with field-level changes.
//!
//! When one version is reached from the other by announced deltas, only
//! the ordinals those deltas remove or set are compared (each delta says
//! which, per type), so the cost follows the change, not the dataset; a
//! producer keeps a key at its ordinal while the key lives, so a record
//! no delta touched is the same in both versions. Otherwise (versions on
//! different chains, a delta no longer retained) every record of both
//! versions is compared. A type without a primary key is matched by its
//! records' whole contents: its records are only ever added or removed.

use super::{ExploreError, Explorer, VersionView};
use crate::blobstore::BlobName;
use crate::consumer::TypeData;
use crate::error::Error;
use crate::schema::dynamic::diff_values;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a diff was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffMethod {
    /// By the deltas between the versions: only the ordinals they touch.
    Deltas {
        /// Deltas read.
        deltas: usize,
    },
    /// By comparing every record of both versions.
    Full,
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Where in the record: `$.title`, `$.tags[2]`.
    pub path: String,
    /// The value before; `None` where the field was absent (another union
    /// member, a shorter list).
    pub before: Option<Value>,
    /// The value after.
    pub after: Option<Value>,
}

/// One record added, removed or changed.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    /// The record's key in the syntax keys are given in; `None` for a
    /// type without a key.
    pub key: Option<String>,
    /// Its ordinal before (`None`: added).
    pub ordinal_before: Option<u32>,
    /// Its ordinal after (`None`: removed).
    pub ordinal_after: Option<u32>,
    /// The record before.
    pub before: Option<Value>,
    /// The record after.
    pub after: Option<Value>,
    /// The fields that differ (for a changed record).
    pub fields: Vec<FieldChange>,
}

/// One type's changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDiff {
    /// The type's full name.
    pub name: String,
    /// Its key fields.
    pub key_fields: Vec<String>,
    /// Records only in the later version.
    pub added: Vec<RecordChange>,
    /// Records only in the earlier version.
    pub removed: Vec<RecordChange>,
    /// Records in both that differ.
    pub changed: Vec<RecordChange>,
}

/// The differences from version `from` to version `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// The version compared from.
    pub from: u64,
    /// The version compared to.
    pub to: u64,
    /// How the records to compare were found.
    pub method: DiffMethod,
    /// Each type's changes (every type either version holds, or the one
    /// asked for).
    pub types: Vec<TypeDiff>,
}

impl FieldChange {
    /// As JSON: `{"path", "before", "after"}` (absent values as null).
    pub fn to_json(&self) -> Value {
        json!({"path": self.path, "before": self.before, "after": self.after})
    }
}

impl RecordChange {
    /// As JSON, with the fields that apply to its kind of change.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("key".into(), json!(self.key));
        if let Some(o) = self.ordinal_before {
            m.insert("ordinal_before".into(), json!(o));
        }
        if let Some(o) = self.ordinal_after {
            m.insert("ordinal_after".into(), json!(o));
        }
        if let Some(v) = &self.before {
            m.insert("before".into(), v.clone());
        }
        if let Some(v) = &self.after {
            m.insert("after".into(), v.clone());
        }
        if !self.fields.is_empty() {
            m.insert(
                "fields".into(),
                Value::Array(self.fields.iter().map(FieldChange::to_json).collect()),
            );
        }
        Value::Object(m)
    }
}

impl Diff {
    /// As one JSON object: versions, method, and per type its counts and
    /// changes.
    pub fn to_json(&self) -> Value {
        let list = |l: &[RecordChange]| Value::Array(l.iter().map(RecordChange::to_json).collect());
        json!({
            "from": self.from,
            "to": self.to,
            "method": match self.method {
                DiffMethod::Deltas { .. } => "deltas",
                DiffMethod::Full => "full",
            },
            "deltas_read": match self.method {
                DiffMethod::Deltas { deltas } => deltas,
                DiffMethod::Full => 0,
            },
            "types": self.types.iter().map(|t| json!({
                "type": t.name,
                "key_fields": t.key_fields,
                "added": list(&t.added),
                "removed": list(&t.removed),
                "changed": list(&t.changed),
            })).collect::<Vec<_>>(),
        })
    }

    /// This diff seen the other way (`to` to `from`).
    fn reversed(self) -> Diff {
        let flip = |c: RecordChange| RecordChange {
            key: c.key,
            ordinal_before: c.ordinal_after,
            ordinal_after: c.ordinal_before,
            before: c.after,
            after: c.before,
            fields: c
                .fields
                .into_iter()
                .map(|f| FieldChange {
                    path: f.path,
                    before: f.after,
                    after: f.before,
                })
                .collect(),
        };
        Diff {
            from: self.to,
            to: self.from,
            method: self.method,
            types: self
                .types
                .into_iter()
                .map(|t| TypeDiff {
                    name: t.name,
                    key_fields: t.key_fields,
                    added: t.removed.into_iter().map(flip).collect(),
                    removed: t.added.into_iter().map(flip).collect(),
                    changed: t.changed.into_iter().map(flip).collect(),
                })
                .collect(),
        }
    }
}

/// Which ordinals of each type to compare: some, or all of them.
/// Per type, the ordinals to compare; `None`: all of them (a delta
/// dropped the type on the way).
type Touched = HashMap<u64, Option<BTreeSet<u32>>>;

enum Scope {
    Ordinals(Touched),
    All,
}

/// The differences from version `a` to version `b`, of every type or of
/// the one `type_name` names (see [`VersionView::type_named`]).
pub async fn diff(
    explorer: &Explorer,
    a: u64,
    b: u64,
    type_name: Option<&str>,
) -> Result<Diff, Error> {
    let (lo, hi) = (a.min(b), a.max(b));
    let before = explorer.version(Some(lo)).await?;
    let (after, scope, method) = if lo == hi {
        (
            before.clone(),
            Scope::Ordinals(HashMap::new()),
            DiffMethod::Deltas { deltas: 0 },
        )
    } else {
        match along_deltas(explorer, &before, hi).await? {
            Some((after, touched, deltas)) => (
                after,
                Scope::Ordinals(touched),
                DiffMethod::Deltas { deltas },
            ),
            None => (
                explorer.version(Some(hi)).await?,
                Scope::All,
                DiffMethod::Full,
            ),
        }
    };
    let mut ids: Vec<(u64, String)> = Vec::new();
    if let Some(name) = type_name {
        let t = match after.type_named(Some(name)) {
            Ok(t) => t,
            Err(ExploreError::UnknownType { .. }) => before.type_named(Some(name))?,
            Err(e) => return Err(e.into()),
        };
        ids.push((t.type_id(), t.name().to_string()));
    } else {
        for t in before.state().types().iter().chain(after.state().types()) {
            if !ids.iter().any(|(id, _)| *id == t.type_id()) {
                ids.push((t.type_id(), t.name().to_string()));
            }
        }
    }
    let mut types = Vec::with_capacity(ids.len());
    for (id, name) in ids {
        let tb = before.state().raw_type(id);
        let ta = after.state().raw_type(id);
        // A type on one side only: all its records were added or removed.
        let whole = tb.is_none() || ta.is_none();
        let ordinals: Vec<u32> = match &scope {
            Scope::Ordinals(touched) if !whole && !matches!(touched.get(&id), Some(None)) => {
                touched
                    .get(&id)
                    .and_then(Option::as_ref)
                    .map_or_else(Vec::new, |s| s.iter().copied().collect())
            }
            _ => {
                let limit = tb
                    .map_or(0, TypeData::ordinal_limit)
                    .max(ta.map_or(0, TypeData::ordinal_limit));
                (0..limit).collect()
            }
        };
        let key_fields = ta.or(tb).map_or_else(Vec::new, |t| t.key_fields().to_vec());
        let old = side(&before, tb, &ordinals)?;
        let new = side(&after, ta, &ordinals)?;
        types.push(compare(name, key_fields, old, new));
    }
    let diff = Diff {
        from: lo,
        to: hi,
        method,
        types,
    };
    Ok(if a > b { diff.reversed() } else { diff })
}

/// A record as one side of a diff has it.
struct Seen {
    ordinal: u32,
    record: Value,
    key: Option<String>,
}

/// The records of `t` at `ordinals`, by what they are matched by: their
/// key text, or for a type without a key their contents.
fn side(
    view: &VersionView,
    t: Option<&TypeData>,
    ordinals: &[u32],
) -> Result<BTreeMap<String, Seen>, Error> {
    let mut out = BTreeMap::new();
    let Some(t) = t else { return Ok(out) };
    for &ordinal in ordinals {
        if let Some(record) = view.record(t, ordinal)? {
            let key = view.key_text(t, &record);
            let by = key.clone().unwrap_or_else(|| record.to_string());
            out.insert(
                by,
                Seen {
                    ordinal,
                    record,
                    key,
                },
            );
        }
    }
    Ok(out)
}

/// One type's changes from the records `old` to `new`.
fn compare(
    name: String,
    key_fields: Vec<String>,
    mut old: BTreeMap<String, Seen>,
    new: BTreeMap<String, Seen>,
) -> TypeDiff {
    let mut td = TypeDiff {
        name,
        key_fields,
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
    };
    for (by, now) in new {
        match old.remove(&by) {
            Some(was) if was.record == now.record => {}
            Some(was) => td.changed.push(RecordChange {
                fields: diff_values(&was.record, &now.record)
                    .into_iter()
                    .map(|(path, before, after)| FieldChange {
                        path,
                        before,
                        after,
                    })
                    .collect(),
                key: now.key,
                ordinal_before: Some(was.ordinal),
                ordinal_after: Some(now.ordinal),
                before: Some(was.record),
                after: Some(now.record),
            }),
            None => td.added.push(RecordChange {
                key: now.key,
                ordinal_before: None,
                ordinal_after: Some(now.ordinal),
                before: None,
                after: Some(now.record),
                fields: Vec::new(),
            }),
        }
    }
    for was in old.into_values() {
        td.removed.push(RecordChange {
            key: was.key,
            ordinal_before: Some(was.ordinal),
            ordinal_after: None,
            before: Some(was.record),
            after: None,
            fields: Vec::new(),
        });
    }
    for list in [&mut td.added, &mut td.removed, &mut td.changed] {
        list.sort_by_key(|c| (c.ordinal_after.or(c.ordinal_before), c.ordinal_before));
    }
    td
}

/// The view of `hi` reached from `before` by announced deltas, with the
/// ordinals they touched per type and how many were read; `None` when
/// `hi` is not reached that way (or a delta is gone).
async fn along_deltas(
    explorer: &Explorer,
    before: &VersionView,
    hi: u64,
) -> Result<Option<(VersionView, Touched, usize)>, Error> {
    let Some(chain) = explorer.chain(before.version(), hi).await? else {
        return Ok(None);
    };
    let mut view = before.clone();
    let mut touched: Touched = HashMap::new();
    for step in chain.windows(2) {
        let (from, to) = (step[0].version, step[1].version);
        let blob = match explorer.blob(BlobName::Delta(from, to), hi).await {
            Ok(b) => b,
            Err(Error::Explore(ExploreError::NotRetained { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (_, sections) = blob.delta()?;
        for s in &sections {
            let entry = touched
                .entry(s.type_id)
                .or_insert_with(|| Some(BTreeSet::new()));
            match entry {
                _ if s.dropped => *entry = None,
                Some(set) => {
                    set.extend(s.removed.get().iter().copied());
                    set.extend(s.ordinals.get().iter().copied());
                }
                None => {}
            }
        }
        view = view.apply(blob, from, to)?;
    }
    Ok(Some((view, touched, chain.len() - 1)))
}
