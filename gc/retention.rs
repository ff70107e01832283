//! The retention policy: which of a dataset's blobs its announcement log
//! still needs, and which may go (the rules are in the [`crate::gc`] docs).
//!
//! [`needed`] walks the log back from its newest entry, through the grace
//! window, taking the union of what each entry needs (`Walk::needs`);
//! [`collect_garbage_in`] lists the blobs and deletes the rest that is old
//! enough, with the leftovers of interrupted writes. Announcement entries
//! and `announce/latest` are never listed for deletion.

use super::{GcError, LeftoverKind};
use crate::announcer::{AnnounceKind, Announcement, AnnouncementLog};
use crate::blobstore::{BlobName, BlobStore, StoreError};
use futures::TryStreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// How many of the newest announced versions retention keeps reachable by
/// default.
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

/// How long a blob stays after no retained version needs it any more (and
/// how old an unannounced blob must be) by default: far longer than a
/// consumer takes to fetch a snapshot or a producer to write and announce
/// one.
pub const DEFAULT_RETENTION_GRACE: Duration = Duration::from_secs(15 * 60);

/// A dataset's retention policy: see the [`crate::gc`] docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// How many of the newest announced versions stay reachable (at least
    /// 1). Default [`DEFAULT_KEEP_VERSIONS`].
    pub keep: usize,
    /// How long a blob outlives the last version that needed it, and how
    /// old a blob no announcement names must be before it goes. Default
    /// [`DEFAULT_RETENTION_GRACE`]. It must be longer than a consumer takes
    /// to fetch a blob after reading the log, and than a producer takes
    /// from writing a blob to announcing it (a younger unannounced blob may
    /// be a cycle in progress); zero suits only a store nothing else uses
    /// meanwhile (tests).
    pub grace: Duration,
    /// Also keep the oldest snapshot of every span of this many versions
    /// below the retained ones; `None` (the default) keeps none.
    pub snapshot_spacing: Option<u64>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep: DEFAULT_KEEP_VERSIONS,
            grace: DEFAULT_RETENTION_GRACE,
            snapshot_spacing: None,
        }
    }
}

impl RetentionPolicy {
    /// Refuses a policy that keeps nothing: `keep` 0 or a spacing of 0.
    pub fn check(&self) -> Result<(), GcError> {
        if self.keep == 0 {
            return Err(GcError::Policy {
                what: "keep",
                reason: "must keep at least 1 version".into(),
            });
        }
        if self.snapshot_spacing == Some(0) {
            return Err(GcError::Policy {
                what: "snapshot_spacing",
                reason: "must be at least 1 version (or none)".into(),
            });
        }
        Ok(())
    }
}

/// Why a blob is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Announced, but no version retained within the grace period needs it.
    Retired,
    /// No announcement names it (a failed, lost or abandoned cycle), and it
    /// is older than the grace period.
    Unannounced,
    /// A leftover of an interrupted write ([`super::Leftover`]) older than
    /// the grace period.
    Leftover(LeftoverKind),
}

impl std::fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeleteReason::Retired => f.write_str("retired: no retained version needs it"),
            DeleteReason::Unannounced => {
                f.write_str("unannounced: no announcement names it (a failed or lost cycle)")
            }
            DeleteReason::Leftover(kind) => write!(f, "leftover: {kind}"),
        }
    }
}

/// One object gc deletes (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Its name relative to the dataset.
    pub name: String,
    /// Its size in bytes as stored.
    pub size: u64,
    /// Time since it was last written.
    pub age: Duration,
    /// Why it goes.
    pub reason: DeleteReason,
}

impl std::fmt::Display for Deletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, written {} s ago): {}",
            self.name,
            self.size,
            self.age.as_secs(),
            self.reason
        )
    }
}

/// What one gc run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The newest announced version, `None` for an empty log.
    pub newest_version: Option<u64>,
    /// The versions the newest entry retains (newest first), its pin
    /// included.
    pub retained_versions: Vec<u64>,
    /// Log entries read (the walk back from the newest).
    pub entries_read: usize,
    /// Blobs kept because a version retained within the grace period
    /// needs them.
    pub needed: usize,
    /// Blobs kept only because they are younger than the grace period.
    pub young: usize,
    /// Bytes of every blob kept.
    pub kept_bytes: u64,
    /// What was deleted (or would be, in a dry run), by name.
    pub deleted: Vec<Deletion>,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
}

impl GcReport {
    /// Bytes deleted (or that would be).
    pub fn deleted_bytes(&self) -> u64 {
        self.deleted.iter().map(|d| d.size).sum()
    }
}

/// Walks the log back from its newest entry, remembering every entry read.
struct Walk<'a> {
    log: &'a AnnouncementLog,
    read: BTreeMap<u64, Announcement>,
}

impl Walk<'_> {
    async fn before(&mut self, e: &Announcement) -> Result<Option<Announcement>, GcError> {
        if e.seq <= 1 {
            return Ok(None);
        }
        if let Some(prev) = self.read.get(&(e.seq - 1)) {
            return Ok(Some(prev.clone()));
        }
        let prev = self.log.read_before(e).await?;
        if let Some(p) = &prev {
            self.read.insert(p.seq, p.clone());
        }
        Ok(prev)
    }

    /// The announce entry of `version`, walking back from `from`. A log
    /// that does not hold it is broken: gc stops rather than delete on it.
    async fn announce_of(
        &mut self,
        from: &Announcement,
        version: u64,
    ) -> Result<Announcement, GcError> {
        let mut e = from.clone();
        loop {
            if e.kind == AnnounceKind::Announce && e.version == version {
                return Ok(e);
            }
            if e.version < version {
                break;
            }
            match self.before(&e).await? {
                Some(prev) => e = prev,
                None => break,
            }
        }
        Err(GcError::BrokenLog {
            seq: from.seq,
            version,
        })
    }

    /// Adds the snapshot path of announce entry `a`: its nearest snapshot
    /// and the deltas from there.
    async fn snapshot_path(
        &mut self,
        a: &Announcement,
        keep: &mut BTreeSet<BlobName>,
    ) -> Result<(), GcError> {
        let mut x = a.clone();
        while !x.has_snapshot {
            if x.from_version == 0 {
                return Err(GcError::BrokenLog {
                    seq: a.seq,
                    version: a.snapshot_version,
                });
            }
            keep.insert(BlobName::Delta(x.from_version, x.version));
            x = self.announce_of(&x, x.from_version).await?;
        }
        keep.insert(BlobName::Snapshot(x.version));
        Ok(())
    }

    /// What entry `e` needs (see the module docs), and the versions it
    /// retains.
    async fn needs(
        &mut self,
        e: &Announcement,
        keep_versions: usize,
        keep: &mut BTreeSet<BlobName>,
    ) -> Result<Vec<u64>, GcError> {
        let mut a = self.announce_of(e, e.version).await?;
        let mut retained = vec![a.version];
        loop {
            self.snapshot_path(&a, keep).await?;
            if retained.len() >= keep_versions || a.from_version == 0 {
                break;
            }
            keep.insert(BlobName::Delta(a.from_version, a.version));
            keep.insert(BlobName::Reverse(a.version, a.from_version));
            a = self.announce_of(&a, a.from_version).await?;
            retained.push(a.version);
        }
        if let Some(pin) = e.pinned_version {
            let pinned = self.announce_of(e, pin).await?;
            self.snapshot_path(&pinned, keep).await?;
            let mut x = self.announce_of(e, e.version).await?;
            while x.version > pin {
                keep.insert(BlobName::Delta(x.from_version, x.version));
                keep.insert(BlobName::Reverse(x.version, x.from_version));
                x = self.announce_of(&x, x.from_version).await?;
            }
            if !retained.contains(&pin) {
                retained.push(pin);
            }
        }
        Ok(retained)
    }
}

/// The blob names announce entry `a` names.
fn named_by(a: &Announcement) -> impl Iterator<Item = BlobName> {
    let snapshot = a.has_snapshot.then_some(BlobName::Snapshot(a.version));
    let deltas = (a.from_version != 0).then_some([
        BlobName::Delta(a.from_version, a.version),
        BlobName::Reverse(a.version, a.from_version),
    ]);
    snapshot.into_iter().chain(deltas.into_iter().flatten())
}

/// The version a blob leads to (for the archive and for telling retired
/// from unannounced blobs).
fn version_of(name: &BlobName) -> u64 {
    match *name {
        BlobName::Snapshot(v) | BlobName::Delta(_, v) | BlobName::Reverse(v, _) => v,
        BlobName::Announce(_) | BlobName::Latest => 0,
    }
}

/// What the log needs: the union over the grace window, the newest entry's
/// retained versions, the names of every entry read, and the oldest
/// version read.
struct Needed {
    keep: BTreeSet<BlobName>,
    retained: Vec<u64>,
    named: BTreeSet<BlobName>,
    oldest_read: u64,
    entries_read: usize,
}

async fn needed(
    log: &AnnouncementLog,
    newest: &Announcement,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Result<Needed, GcError> {
    let window_start = now
        .checked_sub(policy.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let window_start = window_start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut walk = Walk {
        log,
        read: BTreeMap::new(),
    };
    walk.read.insert(newest.seq, newest.clone());
    let mut keep = BTreeSet::new();
    let retained = walk.needs(newest, policy.keep, &mut keep).await?;
    // Every entry of the grace window, and the one that was newest when
    // the window began.
    let mut e = newest.clone();
    while e.timestamp_micros >= window_start {
        let Some(prev) = walk.before(&e).await? else {
            break;
        };
        walk.needs(&prev, policy.keep, &mut keep).await?;
        e = prev;
    }
    let named = walk
        .read
        .values()
        .filter(|e| e.kind == AnnounceKind::Announce)
        .flat_map(named_by)
        .collect();
    let oldest_read = walk.read.values().map(|e| e.version).min().unwrap_or(0);
    Ok(Needed {
        keep,
        retained,
        named,
        oldest_read,
        entries_read: walk.read.len(),
    })
}

/// One listed blob with its age.
struct Listed {
    name: BlobName,
    size: u64,
    age: Duration,
}

/// Every blob under `snapshot/`, `delta/` and `reverse/` (paged through by
/// object_store's LIST, however many there are).
async fn list_blobs(store: &BlobStore, now: SystemTime) -> Result<Vec<Listed>, StoreError> {
    let mut out = Vec::new();
    for dir in ["snapshot", "delta", "reverse"] {
        let mut pages = store.object_store().list(Some(&store.path_of(dir)));
        while let Some(meta) = pages
            .try_next()
            .await
            .map_err(|e| StoreError::from_backend("list", dir, e))?
        {
            let Some(name) = store
                .relative_name(&meta.location)
                .and_then(|n| BlobName::parse(&n))
            else {
                continue;
            };
            let written = SystemTime::UNIX_EPOCH
                + Duration::from_millis(meta.last_modified.timestamp_millis().max(0) as u64);
            out.push(Listed {
                name,
                size: meta.size,
                age: now.duration_since(written).unwrap_or_default(),
            });
        }
    }
    out.sort_by_key(|l| l.name);
    Ok(out)
}

/// Applies `policy` to the dataset in `store` as of `now` (the clock that
/// entries' timestamps and blob ages are read against): finds what may go
/// and, unless `dry_run`, deletes it, leftovers of interrupted writes
/// older than the grace period included. A blob already gone when it is
/// deleted (another gc) is not an error. An empty log deletes only
/// leftovers.
pub async fn collect_garbage(
    store: &BlobStore,
    policy: &RetentionPolicy,
    now: SystemTime,
    dry_run: bool,
) -> Result<GcReport, GcError> {
    collect_garbage_in(&AnnouncementLog::new(store.clone()), policy, now, dry_run).await
}

/// [`collect_garbage`] on the store of `log`, reading entries through it
/// (and its cache of entries read).
pub(crate) async fn collect_garbage_in(
    log: &AnnouncementLog,
    policy: &RetentionPolicy,
    now: SystemTime,
    dry_run: bool,
) -> Result<GcReport, GcError> {
    policy.check()?;
    let store = log.store();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let Some(newest) = log.latest().await? else {
        report.deleted = super::leftovers_to_delete(store, policy.grace, now, dry_run).await?;
        return Ok(report);
    };
    let needed = needed(log, &newest, policy, now).await?;
    report.newest_version = Some(newest.version);
    report.retained_versions = needed.retained.clone();
    report.entries_read = needed.entries_read;
    let listed = list_blobs(store, now).await?;
    let oldest_retained = needed
        .keep
        .iter()
        .map(version_of)
        .min()
        .unwrap_or(newest.version);
    let archive: BTreeSet<BlobName> = match policy.snapshot_spacing {
        Some(n) => {
            let mut first_of_span = BTreeMap::new();
            for l in &listed {
                let BlobName::Snapshot(v) = l.name else {
                    continue;
                };
                let known_orphan = v >= needed.oldest_read && !needed.named.contains(&l.name);
                if v < oldest_retained && !known_orphan {
                    first_of_span.entry(v / n).or_insert(l.name);
                }
            }
            first_of_span.into_values().collect()
        }
        None => BTreeSet::new(),
    };
    let mut doomed = Vec::new();
    for l in listed {
        if needed.keep.contains(&l.name) || archive.contains(&l.name) {
            report.needed += 1;
            report.kept_bytes += l.size;
            continue;
        }
        if l.age < policy.grace {
            report.young += 1;
            report.kept_bytes += l.size;
            continue;
        }
        let announced = needed.named.contains(&l.name)
            || (version_of(&l.name) < needed.oldest_read && version_of(&l.name) <= newest.version);
        doomed.push(Deletion {
            name: l.name.to_string(),
            size: l.size,
            age: l.age,
            reason: if announced {
                DeleteReason::Retired
            } else {
                DeleteReason::Unannounced
            },
        });
    }
    if !dry_run {
        for d in &doomed {
            store.delete_raw(&d.name).await?;
            tracing::info!(deletion = %d, "gc deleted a blob");
        }
    }
    report.deleted = doomed;
    report
        .deleted
        .extend(super::leftovers_to_delete(store, policy.grace, now, dry_run).await?);
    if !dry_run {
        metrics::counter!("burrow_gc_runs_total").increment(1);
        metrics::counter!("burrow_gc_deleted_blobs_total").increment(report.deleted.len() as u64);
        metrics::counter!("burrow_gc_deleted_bytes_total").increment(report.deleted_bytes());
    }
    metrics::gauge!("burrow_gc_kept_bytes").set(report.kept_bytes as f64);
    Ok(report)
}

/// The blobs that the log needs as of `now` under `policy` (the kept set
/// without the archive and the young), for checks such as the property
/// tests'.
pub async fn needed_blobs(
    store: &BlobStore,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Result<BTreeSet<BlobName>, GcError> {
    let log = AnnouncementLog::new(store.clone());
    match log.latest().await? {
        Some(newest) => Ok(needed(&log, &newest, policy, now).await?.keep),
        None => Ok(BTreeSet::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DatasetId;

    /// An announce entry of version `v` at seq `seq`, from `from`, with a
    /// snapshot when `snap`, written at `t` s.
    fn announce(seq: u64, v: u64, from: u64, snap: Option<u64>, t: i64) -> Announcement {
        Announcement {
            dataset_id: DatasetId::from_u128(7).unwrap(),
            seq,
            kind: AnnounceKind::Announce,
            version: v,
            from_version: from,
            snapshot_version: snap.unwrap_or(0),
            has_snapshot: snap == Some(v),
            pinned_version: None,
            producer_id: "p".into(),
            timestamp_micros: t * 1_000_000,
            snapshot_bytes: 0,
            delta_bytes: 0,
            reverse_bytes: 0,
        }
    }

    /// A log of versions 1..=n, one per seq, a snapshot every `every`
    /// versions (and at 1), entry `v` written at second `v * 60`.
    async fn log_of(n: u64, every: u64) -> AnnouncementLog {
        let log = AnnouncementLog::new(BlobStore::memory());
        let mut snap = 1;
        for v in 1..=n {
            if v == 1 || (v - 1) % every == 0 {
                snap = v;
            }
            log.append(&announce(v, v, v - 1, Some(snap), v as i64 * 60))
                .await
                .unwrap();
        }
        log
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn policy(keep: usize, grace_s: u64) -> RetentionPolicy {
        RetentionPolicy {
            keep,
            grace: Duration::from_secs(grace_s),
            snapshot_spacing: None,
        }
    }

    fn names(set: &BTreeSet<BlobName>) -> Vec<String> {
        set.iter().map(|n| n.to_string()).collect()
    }

    /// The newest K versions keep their snapshot paths and the deltas and
    /// reverses between them; nothing older.
    #[tokio::test]
    async fn keeps_the_newest_versions_with_their_snapshot_paths() {
        let log = log_of(10, 4).await; // snapshots at 1, 5, 9
        let newest = log.latest().await.unwrap().unwrap();
        let n = needed(&log, &newest, &policy(3, 0), at(100_000))
            .await
            .unwrap();
        assert_eq!(n.retained, [10, 9, 8]);
        let want = [
            BlobName::Snapshot(9),
            BlobName::Delta(9, 10),
            BlobName::Reverse(10, 9),
            BlobName::Snapshot(5),
            BlobName::Delta(5, 6),
            BlobName::Delta(6, 7),
            BlobName::Delta(7, 8),
            BlobName::Delta(8, 9),
            BlobName::Reverse(9, 8),
        ];
        assert_eq!(n.keep, want.into_iter().collect(), "{:?}", names(&n.keep));
        // The walk stopped at version 5's snapshot: no full log read.
        assert_eq!(n.oldest_read, 5);
    }

    /// What entries written within the grace period needed stays: a blob
    /// retired 2 minutes ago outlives a 5-minute grace, not a 1-minute one.
    #[tokio::test]
    async fn a_retired_blob_outlives_the_grace_period() {
        let log = log_of(10, 1).await; // a snapshot every version
        let newest = log.latest().await.unwrap().unwrap();
        // Entry 10 at 600 s; now 720 s. Keep 1: entry 10 needs snapshot 10;
        // entry 9 (540 s) was newest until 600 s, 2 minutes ago.
        let short = needed(&log, &newest, &policy(1, 60), at(720))
            .await
            .unwrap();
        assert!(!short.keep.contains(&BlobName::Snapshot(9)));
        let long = needed(&log, &newest, &policy(1, 300), at(721))
            .await
            .unwrap();
        for v in [7, 8, 9, 10] {
            assert!(long.keep.contains(&BlobName::Snapshot(v)), "{v}");
        }
        // Snapshot 6 stopped being needed when entry 7 was written (420 s),
        // more than 300 s before 721 s.
        assert!(!long.keep.contains(&BlobName::Snapshot(6)));
    }

    /// A pin keeps the pinned version's snapshot path and the way back to
    /// it and forward again, however old it is.
    #[tokio::test]
    async fn a_pin_keeps_what_the_pinned_version_needs() {
        let log = log_of(10, 4).await;
        let newest = log.latest().await.unwrap().unwrap();
        let pin = newest.follow_up(AnnounceKind::Pin, Some(3), "op");
        log.append(&pin).await.unwrap();
        let n = needed(&log, &pin, &policy(2, 0), at(100_000))
            .await
            .unwrap();
        assert_eq!(n.retained, [10, 9, 3]);
        for name in [
            BlobName::Snapshot(1),
            BlobName::Delta(1, 2),
            BlobName::Delta(2, 3),
            BlobName::Delta(3, 4),
            BlobName::Reverse(4, 3),
            BlobName::Reverse(10, 9),
            BlobName::Delta(9, 10),
        ] {
            assert!(n.keep.contains(&name), "{name}: {:?}", names(&n.keep));
        }
        assert!(!n.keep.contains(&BlobName::Reverse(3, 2)));
    }

    /// Retired, unannounced and young blobs: each is told apart, and a
    /// dry run deletes nothing.
    #[tokio::test]
    async fn collect_deletes_retired_and_old_unannounced_blobs() {
        let store = BlobStore::memory();
        let log = AnnouncementLog::new(store.clone());
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for (seq, v, snap) in [(1, 1, 1), (2, 2, 1), (3, 3, 3)] {
            log.append(&announce(
                seq,
                v,
                v - 1,
                Some(snap),
                secs - 3600 + seq as i64,
            ))
            .await
            .unwrap();
        }
        for n in [
            BlobName::Snapshot(1),
            BlobName::Delta(1, 2),
            BlobName::Reverse(2, 1),
            BlobName::Snapshot(3),
            BlobName::Delta(2, 3),
            BlobName::Reverse(3, 2),
            BlobName::Snapshot(4), // a cycle that never announced
        ] {
            store
                .create(&n, vec![bytes::Bytes::from_static(b"x")])
                .await
                .unwrap();
        }
        // With a grace of 0 s everything not needed goes.
        let p = policy(1, 0);
        let dry = collect_garbage(&store, &p, now + Duration::from_secs(1), true)
            .await
            .unwrap();
        let gone: Vec<_> = dry
            .deleted
            .iter()
            .map(|d| (d.name.as_str(), d.reason))
            .collect();
        assert_eq!(
            gone,
            [
                ("snapshot/00000000000000000001", DeleteReason::Retired),
                ("snapshot/00000000000000000004", DeleteReason::Unannounced),
                (
                    "delta/00000000000000000001-00000000000000000002",
                    DeleteReason::Retired
                ),
                (
                    "delta/00000000000000000002-00000000000000000003",
                    DeleteReason::Retired
                ),
                (
                    "reverse/00000000000000000002-00000000000000000001",
                    DeleteReason::Retired
                ),
                (
                    "reverse/00000000000000000003-00000000000000000002",
                    DeleteReason::Retired
                ),
            ]
        );
        assert_eq!(dry.deleted.len(), 6);
        assert!(store.get(&BlobName::Snapshot(1)).await.is_ok(), "dry run");
        // A real run with the default grace: the unannounced snapshot is
        // young and stays, the retired ones are older... by their entries,
        // but their objects are young too: nothing goes yet.
        let real = collect_garbage(&store, &policy(1, 600), now, false)
            .await
            .unwrap();
        assert!(real.deleted.is_empty(), "{:?}", real.deleted);
        assert_eq!(real.young, 6);
        let real = collect_garbage(&store, &p, now + Duration::from_secs(1), false)
            .await
            .unwrap();
        assert_eq!(real.deleted.len(), 6);
        assert_eq!(real.needed, 1);
        assert!(store.get(&BlobName::Snapshot(3)).await.is_ok());
        assert!(store.get(&BlobName::Snapshot(4)).await.is_err());
        assert_eq!(log.latest().await.unwrap().unwrap().seq, 3, "entries stay");
    }

    /// A snapshot spacing keeps the oldest snapshot of each span of
    /// versions below the retained ones, and nothing else of them.
    #[tokio::test]
    async fn snapshot_spacing_keeps_one_snapshot_a_span() {
        let log = log_of(12, 1).await;
        let store = log.store().clone();
        for v in 1..=12 {
            store
                .create(
                    &BlobName::Snapshot(v),
                    vec![bytes::Bytes::from_static(b"s")],
                )
                .await
                .unwrap();
            if v > 1 {
                store
                    .create(
                        &BlobName::Delta(v - 1, v),
                        vec![bytes::Bytes::from_static(b"d")],
                    )
                    .await
                    .unwrap();
            }
        }
        let p = RetentionPolicy {
            snapshot_spacing: Some(4),
            ..policy(2, 0)
        };
        let now = SystemTime::now() + Duration::from_secs(1);
        collect_garbage(&store, &p, now, false).await.unwrap();
        let left: Vec<BlobName> = list_blobs(&store, now)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        let want = [1, 4, 8, 11, 12]
            .map(BlobName::Snapshot)
            .into_iter()
            .chain([BlobName::Delta(11, 12)])
            .collect::<Vec<_>>();
        assert_eq!(left, want);
    }

    /// A temporary upload older than the grace period goes with the run,
    /// named as a leftover.
    #[tokio::test]
    async fn stale_uploads_go_as_leftovers() {
        use object_store::ObjectStoreExt;
        let log = log_of(2, 1).await;
        let store = log.store().clone();
        store
            .object_store()
            .put(
                &store.path_of("upload/abc"),
                bytes::Bytes::from_static(b"u").into(),
            )
            .await
            .unwrap();
        let now = SystemTime::now() + Duration::from_secs(1);
        let dry = collect_garbage(&store, &policy(1, 0), now, true)
            .await
            .unwrap();
        assert_eq!(
            dry.deleted
                .iter()
                .map(|d| (d.name.as_str(), d.reason))
                .collect::<Vec<_>>(),
            [(
                "upload/abc",
                DeleteReason::Leftover(LeftoverKind::TemporaryUpload)
            )]
        );
        let young = collect_garbage(&store, &policy(1, 60), now, false)
            .await
            .unwrap();
        assert!(young.deleted.is_empty());
        collect_garbage(&store, &policy(1, 0), now, false)
            .await
            .unwrap();
        assert!(super::super::find_leftovers(&store)
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        assert!(policy(0, 1).check().is_err());
        let p = RetentionPolicy {
            snapshot_spacing: Some(0),
            ..RetentionPolicy::default()
        };
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("snapshot_spacing"));
        RetentionPolicy::default().check().unwrap();
    }
}
