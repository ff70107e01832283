//! What the pages and the API show, read through the explorer: plain data
//! that [`super::pages`] renders as HTML and [`super::api`] as JSON, so
//! the two always agree.

use super::request::Failure;
use super::Shared;
use crate::announcer::{AnnounceKind, Announcement};
use crate::explore::{Diff, ExploreError, Explorer, HistoryReport, TypeSummary, VersionView};
use serde_json::{json, Value};

/// Entries the timeline shows unless asked for more.
pub(crate) const TIMELINE_DEFAULT: usize = 50;
/// Records a browser page shows unless asked for fewer or more.
pub(crate) const PER_PAGE_DEFAULT: u32 = 50;
/// The most records a browser page shows.
pub(crate) const PER_PAGE_MAX: u32 = 500;
/// The most ordinals one browser page scans for records that match its
/// filter; the next page goes on from there.
pub(crate) const SCAN_MAX: u32 = 100_000;

/// Versions whose types and counts the server remembers (each a few
/// dozen bytes per type); past it they are forgotten and built again.
const COUNTS_MAX: usize = 4096;

/// One announcement entry, with the types and counts of the version it
/// announced (`None` for a pin or unpin; an error text when the version
/// can no longer be built).
pub(crate) struct TimelineEntry {
    pub entry: Announcement,
    pub types: Option<Result<Vec<TypeSummary>, String>>,
}

/// The newest entries of the log (as far as the server's consumer has
/// seen it), newest first.
pub(crate) struct Timeline {
    pub dataset: String,
    pub newest: u64,
    /// Entries in the log.
    pub total: usize,
    pub entries: Vec<TimelineEntry>,
}

pub(crate) async fn timeline(shared: &Shared, limit: usize) -> Result<Timeline, Failure> {
    let explorer = shared.explorer().await;
    let newest = explorer.newest_entries(limit).await?;
    let mut entries = Vec::new();
    for entry in newest {
        let types = match entry.kind {
            AnnounceKind::Announce => Some(
                types_at(shared, &explorer, entry.version)
                    .await
                    .map_err(|f| f.message),
            ),
            _ => None,
        };
        entries.push(TimelineEntry { entry, types });
    }
    Ok(Timeline {
        dataset: explorer.dataset_id().to_string(),
        newest: explorer.newest_version(),
        total: usize::try_from(explorer.newest_seq()).unwrap_or(usize::MAX),
        entries,
    })
}

/// An entry as JSON (the fields `burrow versions --json` prints, with
/// the version's types when it announced one).
pub(crate) fn entry_json(e: &TimelineEntry) -> Value {
    let a = &e.entry;
    let mut v = json!({
        "seq": a.seq,
        "kind": a.kind.as_str(),
        "version": a.version,
        "from_version": (a.from_version != 0).then_some(a.from_version),
        "has_snapshot": a.has_snapshot,
        "snapshot_version": a.snapshot_version,
        "pinned_version": a.pinned_version,
        "producer": a.producer_id,
        "timestamp_micros": a.timestamp_micros,
        "time": super::fmt::utc(a.timestamp_micros),
        "snapshot_bytes": a.snapshot_bytes,
        "delta_bytes": a.delta_bytes,
        "reverse_bytes": a.reverse_bytes,
    });
    match &e.types {
        Some(Ok(types)) => {
            v["types"] = types_json(types);
            v["records"] = json!(types.iter().map(|t| u64::from(t.records)).sum::<u64>());
        }
        Some(Err(why)) => v["unavailable"] = json!(why),
        None => {}
    }
    v
}

pub(crate) fn types_json(types: &[TypeSummary]) -> Value {
    Value::Array(
        types
            .iter()
            .map(|t| {
                let mut j = t.to_json();
                j["url_name"] = json!(url_name(types, &t.name));
                j
            })
            .collect(),
    )
}

/// The types and counts of `version`, built once per version.
async fn types_at(
    shared: &Shared,
    explorer: &Explorer,
    version: u64,
) -> Result<Vec<TypeSummary>, Failure> {
    if let Some(t) = shared.counts.lock().expect("counts").get(&version) {
        return Ok(t.clone());
    }
    let view = explorer.version(Some(version)).await?;
    let types = view.types();
    let mut counts = shared.counts.lock().expect("counts");
    if counts.len() >= COUNTS_MAX {
        counts.clear();
    }
    counts.insert(version, types.clone());
    Ok(types)
}

/// How a type is named in URLs: the part after the last `:` or `.` when
/// no other type shares it, else the full name.
pub(crate) fn url_name(types: &[TypeSummary], full: &str) -> String {
    let short = |n: &str| n.rsplit([':', '.']).next().unwrap_or(n).to_string();
    let s = short(full);
    if types.iter().filter(|t| short(&t.name) == s).count() == 1 {
        s
    } else {
        full.to_string()
    }
}

/// One version: its entry, types and counts, and its types' schema.
pub(crate) struct VersionInfo {
    pub entry: Announcement,
    pub types: Vec<TypeSummary>,
    /// The dataset's types as Cap'n Proto source, or why not.
    pub schema: Result<String, String>,
}

pub(crate) async fn version(shared: &Shared, version: u64) -> Result<VersionInfo, Failure> {
    let explorer = shared.explorer().await;
    let entry = explorer.entry(version).await?;
    let view = explorer.version(Some(version)).await?;
    let schema =
        crate::schema::capnp_text::dataset_schema(view.last_blob()).map_err(|e| e.to_string());
    Ok(VersionInfo {
        entry,
        types: view.types(),
        schema,
    })
}

/// Which records a browser page shows.
#[derive(Debug, Clone)]
pub(crate) struct BrowseQuery {
    /// The first ordinal to look at.
    pub from: u32,
    pub per: u32,
    /// A field path whose value each row shows and the filter tests.
    pub field: Option<String>,
    /// Only records whose `field` contains this text.
    pub needle: Option<String>,
}

/// One record on a browser page.
pub(crate) struct BrowseRow {
    pub ordinal: u32,
    pub key: Option<String>,
    pub record: Value,
    /// The value at the query's field.
    pub value: Option<Value>,
}

pub(crate) struct BrowsePage {
    pub version: u64,
    pub type_name: String,
    pub url_name: String,
    pub records: u32,
    pub ordinal_limit: u32,
    pub query: BrowseQuery,
    pub rows: Vec<BrowseRow>,
    /// Where the next page starts, if there is more to see.
    pub next: Option<u32>,
}

pub(crate) async fn browse(
    shared: &Shared,
    version: u64,
    type_name: &str,
    query: BrowseQuery,
) -> Result<BrowsePage, Failure> {
    if query.needle.is_some() && query.field.is_none() {
        return Err(Failure::bad_request(
            "a filter (match) needs the field it applies to (field=PATH, such as title)",
        ));
    }
    if query.per == 0 || query.per > PER_PAGE_MAX {
        return Err(Failure::bad_request(format!(
            "invalid per {}: records per page run from 1 to {PER_PAGE_MAX}",
            query.per
        )));
    }
    let explorer = shared.explorer().await;
    let view = explorer.version(Some(version)).await?;
    let t = view.type_named(Some(type_name))?;
    let types = view.types();
    let limit = t.ordinal_limit();
    let mut rows = Vec::new();
    let mut next = None;
    let mut o = query.from;
    while o < limit {
        if rows.len() as u32 == query.per || o - query.from >= SCAN_MAX {
            next = Some(o);
            break;
        }
        if let Some(row) = browse_row(&view, t, o, &query)? {
            rows.push(row);
        }
        o += 1;
    }
    Ok(BrowsePage {
        version,
        type_name: t.name().to_string(),
        url_name: url_name(&types, t.name()),
        records: t.record_count(),
        ordinal_limit: limit,
        query,
        rows,
        next,
    })
}

/// The record at `o` if there is one and it passes the filter.
fn browse_row(
    view: &VersionView,
    t: &crate::consumer::TypeData,
    o: u32,
    query: &BrowseQuery,
) -> Result<Option<BrowseRow>, Failure> {
    let Some(record) = view.record(t, o)? else {
        return Ok(None);
    };
    let value = match &query.field {
        Some(path) => Some(view.record_path(t, o, path)?.unwrap_or(Value::Null)),
        None => None,
    };
    if let (Some(needle), Some(v)) = (&query.needle, &value) {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !text.contains(needle.as_str()) {
            return Ok(None);
        }
    }
    Ok(Some(BrowseRow {
        ordinal: o,
        key: view.key_text(t, &record),
        record,
        value,
    }))
}

/// A record asked for by key or by ordinal.
pub(crate) enum Select {
    Key(String),
    Ordinal(u32),
}

/// One record.
pub(crate) struct RecordInfo {
    pub version: u64,
    pub type_name: String,
    pub url_name: String,
    pub key_fields: Vec<String>,
    pub ordinal: u32,
    pub key: Option<String>,
    pub record: Value,
}

impl RecordInfo {
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "type": self.type_name,
            "key_fields": self.key_fields,
            "ordinal": self.ordinal,
            "key": self.key,
            "record": self.record,
        })
    }
}

pub(crate) async fn record(
    shared: &Shared,
    version: u64,
    type_name: &str,
    select: Select,
) -> Result<RecordInfo, Failure> {
    let explorer = shared.explorer().await;
    let view = explorer.version(Some(version)).await?;
    let t = view.type_named(Some(type_name))?;
    let missing = |what: String| ExploreError::NoRecord {
        type_name: t.name().to_string(),
        version,
        what,
    };
    let ordinal = match &select {
        Select::Key(key) => {
            let bytes = view.key_bytes(t, key)?;
            view.find_key(t, &bytes)?
                .ok_or_else(|| missing(format!("key {key:?}")))?
        }
        Select::Ordinal(o) => *o,
    };
    let record = view
        .record(t, ordinal)?
        .ok_or_else(|| missing(format!("ordinal {ordinal}")))?;
    Ok(RecordInfo {
        version,
        type_name: t.name().to_string(),
        url_name: url_name(&view.types(), t.name()),
        key_fields: t.key_fields().to_vec(),
        ordinal,
        key: view.key_text(t, &record),
        record,
    })
}

pub(crate) async fn diff(
    shared: &Shared,
    from: u64,
    to: u64,
    type_name: Option<&str>,
) -> Result<Diff, Failure> {
    let explorer = shared.explorer().await;
    Ok(crate::explore::diff(&explorer, from, to, type_name).await?)
}

pub(crate) async fn history(
    shared: &Shared,
    type_name: Option<&str>,
    key: &str,
) -> Result<HistoryReport, Failure> {
    let explorer = shared.explorer().await;
    Ok(crate::explore::history(&explorer, type_name, key).await?)
}

/// The server's consumer and explorer, as one JSON object.
pub(crate) async fn health(shared: &Shared) -> Value {
    let h = shared.consumer.health();
    let (newest, open_blobs) = {
        let explorer = shared.explorer().await;
        (explorer.newest_version(), explorer.open_blob_count())
    };
    let follow = shared.follow.lock().expect("follow status").clone();
    json!({
        "current": h.is_current(),
        "consumer": {
            "version": h.version,
            "newest_target": h.newest_target,
            "seconds_since_last_success": h.since_last_success.map(|d| d.as_secs_f64()),
            "consecutive_failures": h.consecutive_failures,
            "last_error": h.last_error,
            "breaker": h.breaker.map(|b| b.as_str()),
            "verified": h.verified,
            "cache_faults": h.cache_faults,
            "last_cache_fault": h.last_cache_fault,
            "poll_interval_ms": u64::try_from(shared.interval.as_millis()).unwrap_or(u64::MAX),
        },
        "explorer": {
            "newest_version": newest,
            "open_blobs": open_blobs,
            "max_open_blobs": super::MAX_OPEN_BLOBS,
            "refreshes": follow.refreshes,
            "last_refresh_error": follow.last_error,
        },
        "uptime_seconds": shared.started.elapsed().as_secs(),
    })
}
