//! A watcher learns new announcements by probing the log forward from the
//! last seq it saw.

use super::{AnnounceError, Announcement, AnnouncementLog};

/// Follows the announcement log. The first poll reads the `latest` hint (or
/// lists) and probes forward; every later poll probes only `seq + 1`, so a
/// poll that finds nothing new costs one small GET.
#[derive(Debug, Clone)]
pub struct Watcher {
    log: AnnouncementLog,
    newest: Option<Announcement>,
}

impl Watcher {
    /// A watcher of `log` that has seen nothing yet.
    pub fn new(log: AnnouncementLog) -> Self {
        Watcher { log, newest: None }
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
                Ok(Some(entry))
            }
            _ => Ok(None),
        }
    }
}
