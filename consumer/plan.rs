//! Update planning: which blobs take a consumer from where it is to the
//! version it should be at.
//!
//! Only announced links are followed. Every announce entry names the
//! version its delta starts from, so the chain of versions is read from the
//! log, never guessed from blob names: a blob that no announcement names (an
//! orphan of a failed cycle) is never used. The chain itself is read by
//! [`chain_to`], which belongs to the announcement log.

use crate::announcer::{chain_to, AnnounceError, Announcement, AnnouncementLog};
use crate::blobstore::{BlobName, StoreError};
use crate::error::{Error, FormatError};
use std::collections::HashSet;

/// One blob to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Load `snapshot/<v>`.
    Snapshot(u64),
    /// Apply `delta/<from>-<to>`.
    Delta(u64, u64),
    /// Apply `reverse/<from>-<to>` (from > to).
    Reverse(u64, u64),
}

impl Step {
    /// The blob this step applies.
    pub fn blob(&self) -> BlobName {
        match *self {
            Step::Snapshot(v) => BlobName::Snapshot(v),
            Step::Delta(a, b) => BlobName::Delta(a, b),
            Step::Reverse(a, b) => BlobName::Reverse(a, b),
        }
    }
}

/// A plan and its cost in bytes to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The blobs to apply, in order.
    pub steps: Vec<Step>,
    /// Their total size, from the announcements (what the plan costs to fetch).
    pub bytes: u64,
}

/// The chain from `from` to `head`, or `None` when the log links none (a
/// broken or unreadable chain: planning then looks for another path). A
/// store failure is not a missing chain: it is returned, so that a
/// transient fault is retried rather than answered with a costlier plan.
async fn linked(
    log: &AnnouncementLog,
    head: &Announcement,
    from: u64,
) -> Result<Option<Vec<Announcement>>, AnnounceError> {
    match chain_to(log, head, from).await {
        Ok(chain) => Ok(Some(chain)),
        Err(AnnounceError::Format(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Plans from `current` to the version of `target` (an announce entry).
/// Considers the delta chain forward, reverse deltas back, and the nearest
/// snapshots at or below the target followed by deltas; takes the cheapest
/// by bytes, avoiding `failed` blobs. `prefer_snapshot` (a state with many
/// stacked deltas) rules out paths that keep the current state.
pub async fn plan(
    log: &AnnouncementLog,
    newest: &Announcement,
    target: &Announcement,
    current: Option<u64>,
    failed: &HashSet<BlobName>,
    prefer_snapshot: bool,
) -> Result<Option<Plan>, AnnounceError> {
    let mut best: Option<Plan> = None;
    let mut consider = |p: Plan| {
        if p.steps.iter().any(|s| failed.contains(&s.blob())) {
            return;
        }
        if best.as_ref().is_none_or(|b| p.bytes < b.bytes) {
            best = Some(p);
        }
    };
    let t = target.version;
    if let (Some(c), false) = (current, prefer_snapshot) {
        if c == t {
            return Ok(Some(Plan {
                steps: Vec::new(),
                bytes: 0,
            }));
        }
        if c < t {
            if let Some(chain) = linked(log, target, c).await? {
                consider(Plan {
                    steps: chain
                        .windows(2)
                        .map(|w| Step::Delta(w[0].version, w[1].version))
                        .collect(),
                    bytes: chain[1..].iter().map(|e| e.delta_bytes).sum(),
                });
            }
        } else if let Some(head) = log.find_version(newest, c).await? {
            if let Some(chain) = linked(log, &head, t).await? {
                consider(Plan {
                    steps: chain
                        .windows(2)
                        .rev()
                        .map(|w| Step::Reverse(w[1].version, w[0].version))
                        .collect(),
                    bytes: chain[1..].iter().map(|e| e.reverse_bytes).sum(),
                });
            }
        }
    }
    // Snapshots at or below the target, nearest first. The chain is walked
    // back only as far as the nearest snapshot, and one snapshot further
    // each time the nearer one is known to be bad (at most three).
    let mut chain = chain_to(log, target, target.snapshot_version).await?;
    for _ in 0..3 {
        let first = &chain[0];
        if first.has_snapshot {
            let mut steps = vec![Step::Snapshot(first.version)];
            steps.extend(
                chain
                    .windows(2)
                    .map(|w| Step::Delta(w[0].version, w[1].version)),
            );
            let bytes =
                first.snapshot_bytes + chain[1..].iter().map(|x| x.delta_bytes).sum::<u64>();
            let usable = !failed.contains(&BlobName::Snapshot(first.version));
            consider(Plan { steps, bytes });
            if usable {
                break;
            }
        }
        if first.from_version == 0 {
            break;
        }
        let Some(prev) = log.find_version(newest, first.from_version).await? else {
            break;
        };
        let mut older = chain_to(log, &prev, prev.snapshot_version).await?;
        older.extend(chain);
        chain = older;
    }
    Ok(best)
}

/// Whether an error means the blob itself is bad or missing (so plans
/// avoid it for a back-off), as opposed to the store being unreachable.
/// Missing is not bad for good: a blob being copied back, or a listing
/// that lags, is found on a later try. The producer's restore plans
/// around blobs by the same rule.
pub(crate) fn is_bad_blob(e: &Error) -> bool {
    matches!(
        e,
        Error::Format(
            FormatError::Corrupt { .. }
                | FormatError::Compression { .. }
                | FormatError::Incompatible { .. }
                | FormatError::DatasetMismatch { .. }
        ) | Error::Store(StoreError::NotFound { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcer::AnnounceKind;
    use crate::blobstore::BlobStore;
    use crate::testing::faults::{FaultyStore, Op};
    use std::sync::Arc;

    fn entry(version: u64, snapshot_version: u64) -> Announcement {
        Announcement {
            dataset_id: crate::schema::DatasetId::from_u128(1).unwrap(),
            seq: version,
            kind: AnnounceKind::Announce,
            version,
            from_version: version - 1,
            snapshot_version,
            has_snapshot: snapshot_version == version,
            pinned_version: None,
            producer_id: "p".into(),
            timestamp_micros: 0,
            snapshot_bytes: 1000,
            delta_bytes: 1,
            reverse_bytes: 1,
        }
    }

    /// A store failure while walking the delta chain is the store's error:
    /// planning neither takes it for a broken chain nor quietly answers
    /// with a costlier plan (a snapshot) that hides the fault.
    #[tokio::test]
    async fn planning_store_failure_is_not_a_broken_chain() {
        let faulty = Arc::new(FaultyStore::memory());
        let writer = AnnouncementLog::new(BlobStore::new(faulty.clone(), "d"));
        let entries = [entry(1, 1), entry(2, 1), entry(3, 3), entry(4, 3)];
        for e in &entries {
            writer.append(e).await.unwrap();
        }
        // A fresh log that has read the newest entries (cached), then loses
        // the store for the older ones.
        let log = AnnouncementLog::new(BlobStore::new(faulty.clone(), "d"));
        let newest = log.read(4).await.unwrap().unwrap();
        log.read(3).await.unwrap();
        let old = BlobName::Announce(2).to_string();
        faulty.fail_matching(move |op, path| op == Op::Get && path.ends_with(&old));
        let err = plan(&log, &newest, &newest, Some(1), &HashSet::new(), false)
            .await
            .expect_err("the forward chain could not be read");
        assert!(matches!(err, AnnounceError::Store(_)), "{err:?}");
        // With the store back, the cheap forward path wins.
        faulty.heal();
        let plan = plan(&log, &newest, &newest, Some(1), &HashSet::new(), false)
            .await
            .unwrap()
            .expect("a plan");
        assert_eq!(
            plan.steps,
            [Step::Delta(1, 2), Step::Delta(2, 3), Step::Delta(3, 4)]
        );
    }
}
