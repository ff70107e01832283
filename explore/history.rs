//! One record's history: the record at every retained version where it
//! changed.
//!
//! The log is walked oldest first. From one retained version to the next
//! announced one the state moves by its delta (fetched once, applied in
//! place of a new snapshot), so the walk reads each delta once and looks
//! the key up once per version; where the chain breaks (a version whose
//! delta is gone, or one that starts a new chain) the state is built again
//! from the nearest retained snapshot, and a version that cannot be built
//! at all is skipped (not retained): a change across it is shown at the
//! next version that can be.

use super::diff::FieldChange;
use super::{ExploreError, Explorer, VersionView};
use crate::announcer::AnnounceKind;
use crate::blobstore::BlobName;
use crate::error::Error;
use crate::schema::dynamic::diff_values;
use serde_json::{json, Value};

/// What happened to the record at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The record as it is at the oldest retained version that holds it
    /// (it may be older still).
    Oldest,
    /// The key appears (it was absent at the retained version before).
    Added,
    /// The record differs from the retained version before.
    Changed,
    /// The key is gone.
    Removed,
}

impl Change {
    /// `oldest`, `added`, `changed`, `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Oldest => "oldest",
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Removed => "removed",
        }
    }
}

/// The record at one version where it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The version.
    pub version: u64,
    /// What happened.
    pub change: Change,
    /// The record's ordinal (`None` once removed).
    pub ordinal: Option<u32>,
    /// The record at this version (`None` once removed).
    pub record: Option<Value>,
    /// The fields that changed from the version before (for `changed`).
    pub fields: Vec<FieldChange>,
}

/// A key's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryReport {
    /// The record type's full name.
    pub type_name: String,
    /// The key as given.
    pub key: String,
    /// Versions read (retained and announced).
    pub versions_read: usize,
    /// Announced versions that could not be built (no longer retained).
    pub versions_skipped: Vec<u64>,
    /// Each version where the record changed, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl HistoryEntry {
    /// As JSON: version, change, ordinal, record, fields.
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "change": self.change.as_str(),
            "ordinal": self.ordinal,
            "record": self.record,
            "fields": self.fields.iter().map(FieldChange::to_json).collect::<Vec<_>>(),
        })
    }
}

impl HistoryReport {
    /// As one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.type_name,
            "key": self.key,
            "versions_read": self.versions_read,
            "versions_skipped": self.versions_skipped,
            "entries": self.entries.iter().map(HistoryEntry::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The history of the record of type `type_name` (optional when the
/// dataset has one type) whose key is `key` (key text, see
/// [`crate::schema::dynamic::key_text`]). A key that no retained version
/// holds is [`ExploreError::NoHistory`].
pub async fn history(
    explorer: &Explorer,
    type_name: Option<&str>,
    key: &str,
) -> Result<HistoryReport, Error> {
    let entries = explorer.entries().await?;
    let mut view: Option<VersionView> = None;
    let mut last: Option<(u32, Value)> = None;
    let mut seen_any = false;
    let mut report = HistoryReport {
        type_name: String::new(),
        key: key.to_string(),
        versions_read: 0,
        versions_skipped: Vec::new(),
        entries: Vec::new(),
    };
    for e in entries.iter().filter(|e| e.kind == AnnounceKind::Announce) {
        let moved = match &view {
            Some(v) if e.from_version != 0 && v.version() == e.from_version => {
                match explorer
                    .blob(BlobName::Delta(e.from_version, e.version), e.version)
                    .await
                {
                    Ok(blob) => Some(v.apply(blob, e.from_version, e.version)?),
                    Err(Error::Explore(ExploreError::NotRetained { .. })) => None,
                    Err(err) => return Err(err),
                }
            }
            _ => None,
        };
        let next = match moved {
            Some(v) => v,
            None => match explorer.version(Some(e.version)).await {
                Ok(v) => v,
                Err(Error::Explore(ExploreError::NotRetained { .. })) => {
                    report.versions_skipped.push(e.version);
                    view = None;
                    continue;
                }
                Err(err) => return Err(err),
            },
        };
        report.versions_read += 1;
        let now = match next.type_named(type_name) {
            Ok(t) => {
                report.type_name = t.name().to_string();
                let bytes = next.key_bytes(t, key)?;
                match next.find_key(t, &bytes)? {
                    Some(o) => next.record(t, o)?.map(|v| (o, v)),
                    None => None,
                }
            }
            // A type absent at this version holds no record.
            Err(ExploreError::UnknownType { .. }) if type_name.is_some() => None,
            Err(err) => return Err(err.into()),
        };
        let entry = match (&last, &now) {
            (None, Some((o, v))) => Some(HistoryEntry {
                version: e.version,
                change: if seen_any {
                    Change::Added
                } else {
                    Change::Oldest
                },
                ordinal: Some(*o),
                record: Some(v.clone()),
                fields: Vec::new(),
            }),
            (Some((_, before)), Some((o, v))) if before != v => Some(HistoryEntry {
                version: e.version,
                change: Change::Changed,
                ordinal: Some(*o),
                record: Some(v.clone()),
                fields: diff_values(before, v)
                    .into_iter()
                    .map(|(path, before, after)| FieldChange {
                        path,
                        before,
                        after,
                    })
                    .collect(),
            }),
            (Some(_), None) => Some(HistoryEntry {
                version: e.version,
                change: Change::Removed,
                ordinal: None,
                record: None,
                fields: Vec::new(),
            }),
            _ => None,
        };
        seen_any = true;
        report.entries.extend(entry);
        last = now;
        view = Some(next);
    }
    if report.entries.is_empty() {
        return Err(ExploreError::NoHistory {
            type_name: if report.type_name.is_empty() {
                type_name.unwrap_or("the type").to_string()
            } else {
                report.type_name
            },
            key: key.to_string(),
        }
        .into());
    }
    Ok(report)
}
