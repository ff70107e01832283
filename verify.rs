//! Checking a whole store: every blob and the announcement log.
//!
//! [`verify_store`] reads everything a consumer could ever be asked to
//! trust and reports each problem with the name of the blob it is in:
//!
//! - every blob under `snapshot/`, `delta/` and `reverse/`: its envelope,
//!   its checksum, that its name matches what its envelope says (kind and
//!   versions), that its body decodes, and that every record in it is a
//!   readable Cap'n Proto message (bounds-checked, traversal-bounded); for a
//!   snapshot also that its record count is right and that every key index
//!   slot names a record and at least one slot is free;
//! - the announcement log: every entry decodes, entries are dense from 1,
//!   versions only grow, a pin names an announced version, and every
//!   announced version is reachable: the log links it to its nearest
//!   snapshot ([`chain_to`]) and either its snapshot or the delta from the
//!   version before it exists, verifies and applies. Where both exist they
//!   must hold the same types (an empty type too: deltas create and drop
//!   types as snapshots hold them) and the same records, and the reverse
//!   delta must take the state back to the version before.
//!
//! - dataset identity: every entry of the log carries the same dataset id
//!   (an entry whose id differs from the one before it is a problem: a
//!   store recreated under its readers, or two datasets mixed under one
//!   prefix), and every blob, orphans included, carries the log's (that of
//!   its newest entry, the one consumers follow); a blob of another dataset
//!   is a problem, and is not used to reach a version.
//!
//! - retention: a version whose blobs retention deleted is *retired*, not
//!   a problem. A missing blob is a problem only when the newest entry
//!   needs it (the snapshot path of its version and of its pin: what
//!   every [`crate::gc::RetentionPolicy`] keeps); an announced version that
//!   is unreachable only for blobs nothing needs is listed in
//!   [`VerifyReport::retired`]. (verify cannot tell a blob retention
//!   deleted from one lost otherwise, outside what consumers need.)
//!
//! A blob stored as a zstd frame ([`crate::blobstore::compress`]) is
//! decompressed first, with the consumer's checks (a bad frame is a
//! problem in that blob); the report counts both sizes.
//!
//! The log is walked once, oldest first, carrying one [`ReadState`]
//! forward, so each blob is fetched once and the cost is linear in the
//! store's size. Blobs that no announcement names (orphans of failed
//! cycles) are checked too, but are not problems for being orphans. The
//! leftovers of interrupted writes ([`crate::gc`]) are listed, not read.

use crate::announcer::{chain_to, AnnounceKind, Announcement, AnnouncementLog};
use crate::blobstore::{BlobName, BlobStore};
use crate::consumer::ReadState;
use crate::error::{Error, FormatError};
use crate::gc::{find_leftovers, Leftover};
use crate::schema::blob::{check_dataset, OpenBlob};
use crate::schema::envelope::BlobKind;
use crate::schema::key_index::KeyIndex;
use crate::schema::DatasetId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One thing wrong with a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The blob (or announcement entry) the problem is in, e.g.
    /// `delta/00000000000000000001-00000000000000000002`.
    pub blob: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.blob, self.reason)
    }
}

/// What [`verify_store`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The dataset the log belongs to (its newest entry's); `None` when the
    /// log is empty or unreadable.
    pub dataset_id: Option<DatasetId>,
    /// Blobs read and checked (announcement entries not included).
    pub blobs_checked: usize,
    /// Records read, over all blobs.
    pub records_checked: u64,
    /// Bytes of the blobs checked, as stored (compressed or not).
    pub bytes_stored: u64,
    /// Bytes of the blobs checked, decompressed (as a consumer maps them).
    pub bytes_decompressed: u64,
    /// Announcement entries read.
    pub entries_checked: usize,
    /// Announced versions found reachable.
    pub versions_reachable: usize,
    /// Announced versions no longer reachable because blobs that no
    /// consumer needs any more are gone (retention retired them). Not
    /// problems.
    pub retired: Vec<u64>,
    /// Blobs that no announcement names.
    pub orphans: Vec<String>,
    /// Leftovers of interrupted writes (partial writes, temporary uploads;
    /// see [`crate::gc`]). Not problems: no name of burrow's points at them
    /// and nothing reads them; `gc::sweep_leftovers` deletes them.
    pub leftovers: Vec<Leftover>,
    /// Everything found wrong; empty for a clean store.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No problems found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, blob: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            blob: blob.into(),
            reason: reason.into(),
        });
    }
}

/// Checks every blob and the announcement log of `store`. Problems with the
/// store's contents are in the report; `Err` only when the store itself
/// cannot be listed or read (unreachable, refused).
pub async fn verify_store(store: &BlobStore) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    let mut listed = BTreeSet::new();
    for dir in ["snapshot", "delta", "reverse"] {
        for meta in store.list(dir).await? {
            listed.insert(meta.name);
        }
    }
    // What any retention policy keeps: the newest entry's needs. An
    // unreadable log keeps everything required (its problems are reported
    // by the walk).
    let minimal = crate::gc::RetentionPolicy {
        keep: 1,
        grace: std::time::Duration::ZERO,
        snapshot_spacing: None,
    };
    let required = crate::gc::needed_blobs(store, &minimal, std::time::SystemTime::now())
        .await
        .ok();
    let mut checker = Checker {
        store,
        required,
        retired_missing: 0,
        listed: &listed,
        dataset: None,
        checked: BTreeMap::new(),
        report: &mut report,
    };
    checker.walk_log().await?;
    checker.report.leftovers = find_leftovers(store).await?;
    let unchecked: Vec<BlobName> = listed
        .iter()
        .filter(|n| !checker.checked.contains_key(n))
        .copied()
        .collect();
    for name in unchecked {
        checker.report.orphans.push(name.to_string());
        checker.blob(name).await?;
    }
    Ok(report)
}

struct Checker<'a> {
    store: &'a BlobStore,
    /// The blobs the newest entry needs; a missing blob outside them is
    /// retired, not a problem. `None`: every blob is required.
    required: Option<BTreeSet<BlobName>>,
    /// Blobs found missing that nothing requires, so far.
    retired_missing: usize,
    listed: &'a BTreeSet<BlobName>,
    /// The log's dataset, once its entries are read.
    dataset: Option<DatasetId>,
    /// Blobs checked so far, and whether each was good.
    checked: BTreeMap<BlobName, bool>,
    report: &'a mut VerifyReport,
}

impl Checker<'_> {
    /// Fetches and checks one blob; `None` (with the problem reported
    /// once) if it is missing or bad.
    async fn blob(&mut self, name: BlobName) -> Result<Option<Arc<OpenBlob>>, Error> {
        let label = name.to_string();
        let first = match self.checked.get(&name) {
            Some(false) => return Ok(None),
            Some(true) => false,
            None => true,
        };
        let bytes = if self.listed.contains(&name) {
            match self.store.get(&name).await {
                Ok(b) => Some(b),
                Err(crate::blobstore::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let Some(bytes) = bytes else {
            self.checked.insert(name, false);
            if self.required.as_ref().is_some_and(|r| !r.contains(&name)) {
                self.retired_missing += 1;
                return Ok(None);
            }
            self.report.problem(&label, "missing from the store");
            self.checked.insert(name, false);
            return Ok(None);
        };
        let stored_len = bytes.len() as u64;
        let checked = crate::blobstore::compress::decode_stored(bytes, &label, u64::MAX)
            .and_then(|raw| check_blob(name, &raw, &label))
            .and_then(|(blob, records)| {
                if let Some(expected) = self.dataset {
                    check_dataset(&blob, expected)?;
                }
                Ok((blob, records))
            });
        match checked {
            Ok((blob, records)) => {
                if first {
                    self.report.blobs_checked += 1;
                    self.report.records_checked += records;
                    self.report.bytes_stored += stored_len;
                    self.report.bytes_decompressed += blob.len();
                }
                self.checked.insert(name, true);
                Ok(Some(blob))
            }
            Err(e) => {
                self.report
                    .problem(&label, strip_name(&e.to_string(), &label));
                self.checked.insert(name, false);
                Ok(None)
            }
        }
    }

    async fn walk_log(&mut self) -> Result<(), Error> {
        let store = self.store.clone();
        let log = AnnouncementLog::new(store.clone());
        let mut seqs: Vec<u64> = store
            .list("announce")
            .await?
            .into_iter()
            .filter_map(|m| match m.name {
                BlobName::Announce(seq) => Some(seq),
                _ => None,
            })
            .collect();
        seqs.sort_unstable();
        let mut entries: BTreeMap<u64, Announcement> = BTreeMap::new();
        let mut expected = 1;
        for &seq in &seqs {
            if seq != expected {
                self.report.problem(
                    BlobName::Announce(expected).to_string(),
                    format!("missing: the log jumps from seq {} to {seq}", expected - 1),
                );
            }
            expected = seq + 1;
            self.report.entries_checked += 1;
            match log.read(seq).await {
                Ok(Some(entry)) => {
                    entries.insert(seq, entry);
                }
                Ok(None) => self.report.problem(
                    BlobName::Announce(seq).to_string(),
                    "listed but could not be read",
                ),
                Err(e) => {
                    let label = BlobName::Announce(seq).to_string();
                    if !e.is_retryable() {
                        self.report
                            .problem(&label, strip_name(&e.to_string(), &label));
                    } else {
                        return Err(e.into());
                    }
                }
            }
        }
        self.check_dataset_ids(&entries);
        let mut prev: Option<(Announcement, Option<ReadState>)> = None;
        let mut announced = BTreeSet::new();
        for entry in entries.values() {
            let label = BlobName::Announce(entry.seq).to_string();
            if let Some((p, _)) = &prev {
                if entry.version < p.version {
                    self.report.problem(
                        &label,
                        format!(
                            "version {} is older than the version {} announced before it",
                            entry.version, p.version
                        ),
                    );
                }
            }
            match entry.kind {
                AnnounceKind::Pin => {
                    let pinned = entry.pinned_version.unwrap_or(0);
                    if !announced.contains(&pinned) {
                        self.report.problem(
                            &label,
                            format!("pins version {pinned}, which was never announced"),
                        );
                    }
                    continue;
                }
                AnnounceKind::Unpin => continue,
                AnnounceKind::Announce => {}
            }
            if prev
                .as_ref()
                .is_some_and(|(p, _)| p.version == entry.version)
            {
                // A re-announcement of the same version (a restored
                // producer): nothing new to check.
                continue;
            }
            announced.insert(entry.version);
            if let Err(e) = chain_to(&log, entry, entry.snapshot_version).await {
                if e.is_retryable() {
                    return Err(e.into());
                }
                self.report.problem(&label, e.to_string());
            }
            let state = self.reach(entry, prev.take()).await?;
            if state.is_some() {
                self.report.versions_reachable += 1;
            }
            prev = Some((entry.clone(), state));
        }
        Ok(())
    }

    /// Takes the log's dataset id (its newest entry's, which consumers
    /// follow) and reports every entry whose id differs from the entry
    /// before it.
    fn check_dataset_ids(&mut self, entries: &BTreeMap<u64, Announcement>) {
        self.dataset = entries.values().last().map(|e| e.dataset_id);
        self.report.dataset_id = self.dataset;
        let mut before: Option<&Announcement> = None;
        for entry in entries.values() {
            if let Some(prev) = before {
                if prev.dataset_id != entry.dataset_id {
                    self.report.problem(
                        BlobName::Announce(entry.seq).to_string(),
                        format!(
                            "belongs to dataset {}, but {} before it to dataset {}: the store was \
                             recreated under its readers, or two datasets' entries are mixed \
                             under one prefix",
                            entry.dataset_id,
                            BlobName::Announce(prev.seq),
                            prev.dataset_id
                        ),
                    );
                }
            }
            before = Some(entry);
        }
    }

    /// The state of `entry`'s version, reached from the previous announced
    /// state by the delta and from the snapshot, checked against each other
    /// and against the reverse delta.
    async fn reach(
        &mut self,
        entry: &Announcement,
        prev: Option<(Announcement, Option<ReadState>)>,
    ) -> Result<Option<ReadState>, Error> {
        let v = entry.version;
        let label = BlobName::Announce(entry.seq).to_string();
        let (problems_before, retired_before) = (self.report.problems.len(), self.retired_missing);
        let mut by_delta = None;
        let mut why = Vec::new();
        if entry.from_version != 0 {
            let name = BlobName::Delta(entry.from_version, v);
            let blob = self.blob(name).await?;
            match (&prev, blob) {
                (Some((p, Some(base))), Some(blob)) if p.version == entry.from_version => {
                    match base.apply(blob, entry.from_version, v) {
                        Ok(s) => by_delta = Some(s),
                        Err(e) => {
                            let text = strip_name(&e.to_string(), &name.to_string());
                            self.report.problem(
                                name.to_string(),
                                format!("does not apply to version {}: {text}", p.version),
                            );
                            why.push(format!("{name} does not apply"));
                        }
                    }
                }
                (_, None) => why.push(format!("{name} is missing or bad")),
                (Some((p, _)), Some(_)) if p.version != entry.from_version => {
                    self.report.problem(
                        &label,
                        format!(
                            "version {v} starts from {}, but the version announced before it is {}",
                            entry.from_version, p.version
                        ),
                    );
                }
                _ => why.push(format!(
                    "version {} before it is unreachable",
                    entry.from_version
                )),
            }
        }
        let mut by_snapshot = None;
        if entry.has_snapshot {
            let name = BlobName::Snapshot(v);
            if let Some(blob) = self.blob(name).await? {
                // The snapshot's records must sum to its state checksums.
                match ReadState::from_snapshot(blob, v)
                    .and_then(|s| s.check_checksums().map(|()| s))
                {
                    Ok(s) => by_snapshot = Some(s),
                    Err(e) => {
                        self.report.problem(
                            name.to_string(),
                            strip_name(&e.to_string(), &name.to_string()),
                        );
                        why.push(format!("{name} is bad"));
                    }
                }
            } else {
                why.push(format!("{name} is missing or bad"));
            }
        } else if entry.from_version == 0 {
            why.push("it has neither a snapshot nor a delta".to_string());
        }
        if let (Some(a), Some(b)) = (&by_delta, &by_snapshot) {
            if let Some(diff) = differ(a, b) {
                self.report.problem(
                    BlobName::Snapshot(v).to_string(),
                    format!("the delta chain and the snapshot disagree at version {v}: {diff}"),
                );
            }
        }
        let state = by_snapshot.or(by_delta);
        if entry.from_version != 0 {
            let name = BlobName::Reverse(v, entry.from_version);
            let blob = self.blob(name).await?;
            if let (Some(blob), Some(now), Some((p, Some(before)))) = (blob, &state, &prev) {
                match now.apply(blob, v, p.version) {
                    Ok(back) => {
                        if let Some(diff) = differ(&back, before) {
                            self.report.problem(
                                name.to_string(),
                                format!("does not lead back to version {}: {diff}", p.version),
                            );
                        }
                    }
                    Err(e) => self.report.problem(
                        name.to_string(),
                        format!(
                            "does not apply to version {v}: {}",
                            strip_name(&e.to_string(), &name.to_string())
                        ),
                    ),
                }
            }
        }
        // Unreachable only for blobs nothing needs any more, or only
        // because the version it starts from is retired.
        let after_retired = self.report.retired.last() == Some(&entry.from_version);
        let retired = (self.retired_missing > retired_before || after_retired)
            && self.report.problems.len() == problems_before;
        if state.is_none() && retired {
            self.report.retired.push(v);
        } else if state.is_none() {
            self.report.problem(
                &label,
                format!("announced version {v} is unreachable: {}", why.join("; ")),
            );
        }
        Ok(state)
    }
}

/// Checks one blob's bytes: envelope, checksum, name, body, every record.
/// Returns the blob and the number of records read.
pub fn check_blob(
    name: BlobName,
    bytes: &[u8],
    label: &str,
) -> Result<(Arc<OpenBlob>, u64), Error> {
    let blob = Arc::new(OpenBlob::from_bytes(bytes, label)?);
    let env = *blob.envelope();
    let corrupt = |reason: String| -> Error {
        FormatError::Corrupt {
            blob: label.to_string(),
            reason,
        }
        .into()
    };
    let (kind, from, to) = match name {
        BlobName::Snapshot(v) => (BlobKind::Snapshot, 0, v),
        BlobName::Delta(a, b) => (BlobKind::Delta, a, b),
        BlobName::Reverse(a, b) => (BlobKind::Reverse, a, b),
        other => return Err(corrupt(format!("{other} is not a blob name"))),
    };
    if env.kind != kind || env.from_version != from || env.to_version != to {
        return Err(corrupt(format!(
            "the envelope says this is a {} {} -> {}",
            env.kind.as_str(),
            env.from_version,
            env.to_version
        )));
    }
    // The records' layout (every record readable, nothing but leaves
    // shared, walks bounded) and a snapshot's key indexes, before the
    // records are walked.
    blob.check_contents()?;
    let mut records = 0u64;
    if kind == BlobKind::Snapshot {
        let (_, sections) = blob.snapshot()?;
        for section in &sections {
            let present = (0..section.ordinal_limit)
                .filter(|&o| section.is_present(o))
                .count() as u32;
            records += u64::from(present);
            if present != section.record_count {
                return Err(corrupt(format!(
                    "{}: says {} records, holds {present}",
                    section.name, section.record_count
                )));
            }
            if !section.key_fields.is_empty() {
                KeyIndex::new(section.key_index.get())
                    .check(section.ordinal_limit, |o| section.is_present(o), present)
                    .map_err(|reason| corrupt(format!("{}: {reason}", section.name)))?;
            }
        }
        ReadState::from_snapshot(blob.clone(), to)?;
    } else {
        let (_, sections) = blob.delta()?;
        records = sections.iter().map(|s| s.ordinals.get().len() as u64).sum();
    }
    Ok((blob, records))
}

/// The first difference between two states' records, if any. A type held
/// by one side only is a difference even when it is empty: deltas create
/// and drop types exactly as snapshots hold them.
fn differ(a: &ReadState, b: &ReadState) -> Option<String> {
    for ta in a.types() {
        let Some(tb) = b.raw_type(ta.type_id()) else {
            return Some(format!("type {} is missing from one side", ta.name()));
        };
        if ta.record_count() != tb.record_count() {
            return Some(format!(
                "{}: {} records against {}",
                ta.name(),
                ta.record_count(),
                tb.record_count()
            ));
        }
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        for o in 0..ta.ordinal_limit().max(tb.ordinal_limit()) {
            ra.clear();
            rb.clear();
            let (Ok(a_has), Ok(b_has)) = (
                ta.canonical_record(o, &mut ra),
                tb.canonical_record(o, &mut rb),
            ) else {
                return Some(format!("{}: ordinal {o} is unreadable", ta.name()));
            };
            if a_has != b_has || ra != rb {
                return Some(format!("{}: ordinal {o} differs", ta.name()));
            }
        }
    }
    for tb in b.types() {
        if a.raw_type(tb.type_id()).is_none() {
            return Some(format!("type {} is missing from one side", tb.name()));
        }
    }
    None
}

/// Errors already start with the blob's name; a problem carries it apart.
fn strip_name(text: &str, label: &str) -> String {
    text.strip_prefix(label)
        .and_then(|t| t.strip_prefix(": "))
        .unwrap_or(text)
        .to_string()
}
