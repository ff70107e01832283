//! The announcement chain query: which announce entries link one version
//! to another through announced deltas.
//!
//! Only announced links count: every announce entry names the version its
//! delta starts from, so a chain is read from the log, never guessed from
//! blob names. A chain that the log does not link is an error naming the
//! entry where it breaks.

use super::{AnnounceError, AnnounceKind, Announcement, AnnouncementLog};
use crate::error::FormatError;

/// The announce entries from `from_version` (inclusive; omitted when 0) up
/// to `head`, oldest first, each linked to the one before by its delta.
/// Walks the log backwards from `head`.
pub async fn chain_to(
    log: &AnnouncementLog,
    head: &Announcement,
    from_version: u64,
) -> Result<Vec<Announcement>, AnnounceError> {
    let mut out = vec![head.clone()];
    let mut entry = head.clone();
    while entry.version > from_version {
        if entry.from_version < from_version {
            return Err(broken(head, from_version, &entry));
        }
        if entry.from_version == 0 {
            if from_version == 0 {
                break;
            }
            return Err(broken(head, from_version, &entry));
        }
        // Walk back to the announce entry of `entry.from_version`.
        let want = entry.from_version;
        // Each entry read is checked against the one after it: one log,
        // one dataset.
        let mut at = entry.clone();
        let prev = loop {
            if at.seq <= 1 {
                return Err(broken(head, from_version, &entry));
            }
            match log.read_before(&at).await? {
                Some(e) if e.kind == AnnounceKind::Announce && e.version == want => break e,
                Some(e) if e.version < want => return Err(broken(head, from_version, &entry)),
                Some(e) => at = e,
                None => return Err(broken(head, from_version, &entry)),
            }
        };
        out.push(prev.clone());
        entry = prev;
    }
    out.reverse();
    if out.first().map(|e| e.version) != Some(from_version) && from_version != 0 {
        return Err(broken(head, from_version, &entry));
    }
    Ok(out)
}

fn broken(head: &Announcement, from: u64, at: &Announcement) -> AnnounceError {
    AnnounceError::Format(FormatError::Corrupt {
        blob: format!("announce/{}", at.seq),
        reason: format!(
            "no announced delta chain from version {from} to {} (broken at version {}, which starts from {})",
            head.version, at.version, at.from_version
        ),
    })
}
