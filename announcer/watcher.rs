//! A watcher learns new announcements by probing the log forward from the
//! last seq it saw.

use super::{AnnounceError, Announcement, AnnouncementLog};

/// Follows the announcement log. The first poll reads the `latest` hint (or
/// lists) and probes forward; every later poll probes only `seq + 1`, so a
/// poll that finds nothing new costs one small GET.
///
/// Every [`REVALIDATE_EVERY`]th poll that finds nothing new also re-reads
/// the newest entry it knows from the store: entries are never deleted or
/// rewritten, so one that is gone or changed means the store was deleted
/// and published again with a log no longer than the old one (which
/// probing `seq + 1` alone would never notice); the poll then fails with
/// [`AnnounceError::Replaced`]. (A recreated log that is longer shows up at
/// once, as an entry of another dataset after the known one.)
#[derive(Debug, Clone)]
pub struct Watcher {
    log: AnnouncementLog,
    newest: Option<Announcement>,
    idle_polls: u32,
}

/// How often (in polls that find nothing new) a watcher re-reads the
/// newest entry it knows: one extra GET every this many idle polls.
pub const REVALIDATE_EVERY: u32 = 12;

impl Watcher {
    /// A watcher of `log` that has seen nothing yet.
    pub fn new(log: AnnouncementLog) -> Self {
        Watcher {
            log,
            newest: None,
            idle_polls: 0,
        }
    }

    /// The log it watches.
    pub fn log(&self) -> &AnnouncementLog {
        &self.log
    }

    /// The newest entry seen so far.
    pub fn newest(&self) -> Option<&Announcement> {
        self.newest.as_ref()
    }

    /// Looks for newer entries. Returns the newest entry if it changed since
    /// the last poll, `None` if nothing is new.
    pub async fn poll(&mut self) -> Result<Option<Announcement>, AnnounceError> {
        let found = match &self.newest {
            None => self.log.latest().await?,
            Some(known) => {
                // Each entry is checked against the one before it: an
                // entry of another dataset (a store recreated under this
                // watcher) is an error, never followed.
                let mut newest: Option<Announcement> = None;
                while let Some(entry) = self
                    .log
                    .read_after(newest.as_ref().unwrap_or(known))
                    .await?
                {
                    newest = Some(entry);
                }
                newest
            }
        };
        match found {
            Some(entry) if Some(entry.seq) != self.newest.as_ref().map(|e| e.seq) => {
                self.newest = Some(entry.clone());
                self.idle_polls = 0;
                Ok(Some(entry))
            }
            _ => {
                self.idle_polls += 1;
                if self.idle_polls >= REVALIDATE_EVERY {
                    self.idle_polls = 0;
                    self.revalidate().await?;
                }
                Ok(None)
            }
        }
    }

    /// Checks that the newest entry known is still in the store, unchanged.
    async fn revalidate(&self) -> Result<(), AnnounceError> {
        let Some(known) = &self.newest else {
            return Ok(());
        };
        match self.log.read_from_store(known.seq).await {
            Ok(Some(entry)) if entry == *known => Ok(()),
            Ok(_) | Err(AnnounceError::Format(_)) => {
                Err(AnnounceError::Replaced { seq: known.seq })
            }
            Err(e) => Err(e),
        }
    }
}
