//! The announcement log: how consumers learn versions, and the producer's
//! leader election, with nothing but the blob store behind it.
//!
//! Entry `announce/<seq>` is created with a create-only put, so when two
//! producers race for the same `seq` exactly one wins; the other gets
//! [`AnnounceError::NotPrimary`] and must restore before it publishes
//! again. Entries are dense: a writer only ever creates `seq + 1` after
//! reading `seq`. Every entry carries the whole resolved state (newest
//! version, its chain link, nearest snapshot, active pin), so a reader needs
//! only the newest entry to know where consumers should be.
//!
//! `announce/latest` is a best-effort hint naming the newest seq. A reader
//! starts from the hint (or, if it is missing or unreadable, from a LIST of
//! `announce/`) and probes `seq + 1, seq + 2, ...` until one is missing. A
//! [`Watcher`] that already knows a seq probes only the next one: one small
//! GET per poll when nothing changed, no LIST. [`chain_to`] reads the
//! chain of announced deltas between two versions (for update planning,
//! restore and verify).
//!
//! Every entry carries the dataset id ([`crate::schema::dataset_id`]), and
//! one log is one dataset's: every walk from an entry to its neighbour
//! ([`AnnouncementLog::read_after`], [`AnnouncementLog::read_before`],
//! used by [`AnnouncementLog::latest`], [`AnnouncementLog::entries_from`],
//! [`AnnouncementLog::find_version`], [`chain_to`] and the [`Watcher`])
//! refuses an entry whose id differs from the one before it, with
//! [`FormatError::DatasetMismatch`].

mod chain;
mod entry;
mod watcher;

pub use chain::chain_to;
pub use entry::{check_next, now_micros, utc, AnnounceKind, Announcement};
pub use watcher::{Watcher, REVALIDATE_EVERY};

use crate::blobstore::{BlobBody, BlobName, BlobStore, StoreError};
use crate::error::FormatError;
use bytes::Bytes;

/// Errors of the announcement log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// Another writer created this entry first.
    #[error(
        "not the primary producer: announcement {seq} was already written by another producer; \
         restore from the log before publishing again"
    )]
    NotPrimary {
        /// The entry this writer tried to create.
        seq: u64,
    },
    /// A pin named a version that the log never announced.
    #[error("version {version} was never announced, so it cannot be pinned")]
    NotAnnounced {
        /// The version the pin named.
        version: u64,
    },
    /// The operation needs at least one announcement.
    #[error("the announcement log is empty: nothing has been announced yet")]
    Empty,
    /// Reading or writing an entry in the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry's bytes are bad, or it belongs to another dataset.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// An entry this reader read before is gone or holds something else
    /// now. Entries are never deleted or rewritten, so the store was
    /// deleted and published again under the reader (a new dataset whose
    /// log is not longer than the old one).
    #[error(
        "announcement {seq}, read before, is gone or was replaced: the store was recreated \
         under this reader"
    )]
    Replaced {
        /// The entry that changed.
        seq: u64,
    },
}

impl AnnounceError {
    /// Whether the same call may succeed if tried again: only a retryable
    /// store fault; a lost race or a bad entry is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            AnnounceError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The largest announcement entry a reader accepts (entries are a few
/// hundred bytes; the bound keeps a hostile store from making a poll read
/// an arbitrarily large object into memory).
pub const MAX_ENTRY_BYTES: u64 = 64 << 10;

/// Entries kept by a log after they were read: they are immutable
/// (create-only), so a cached entry is never stale. Walking the chain back
/// on every refresh (for update planning) would otherwise GET the same
/// entries again and again.
const CACHED_ENTRIES: usize = 1024;

/// The log of one dataset. Clones share one cache of entries read.
#[derive(Debug, Clone)]
pub struct AnnouncementLog {
    store: BlobStore,
    cache: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Announcement>>>,
}

impl AnnouncementLog {
    /// The log kept under `announce/` in `store`.
    pub fn new(store: BlobStore) -> Self {
        AnnouncementLog {
            store,
            cache: Default::default(),
        }
    }

    fn remember(&self, entry: &Announcement) {
        let mut cache = self.cache.lock().expect("entry cache lock");
        cache.insert(entry.seq, entry.clone());
        if cache.len() > CACHED_ENTRIES {
            // Keep the newest: planning walks back from the head.
            cache.pop_first();
        }
    }

    /// The store the log's entries live in.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Reads entry `seq`; `None` if it does not exist. An object larger
    /// than [`MAX_ENTRY_BYTES`] is refused before it is read into memory.
    pub async fn read(&self, seq: u64) -> Result<Option<Announcement>, AnnounceError> {
        if let Some(entry) = self.cache.lock().expect("entry cache lock").get(&seq) {
            return Ok(Some(entry.clone()));
        }
        self.read_from_store(seq).await
    }

    /// Forgets every entry read so far, for a reader that found the store
    /// recreated under it (its cached entries belong to the old dataset).
    pub fn forget_read_entries(&self) {
        self.cache.lock().expect("entry cache lock").clear();
    }

    /// Reads entry `seq` from the store, never from the cache of entries
    /// read (to check that an entry read before is still there).
    pub(crate) async fn read_from_store(
        &self,
        seq: u64,
    ) -> Result<Option<Announcement>, AnnounceError> {
        let name = BlobName::Announce(seq);
        match self.get_bounded(&name).await {
            Ok(bytes) => {
                let label = name.to_string();
                let entry = Announcement::decode(&bytes, &label)?;
                // An entry copied under another seq would send a reader
                // probing `seq + 1` round in a circle: the name must match.
                if entry.seq != seq {
                    return Err(FormatError::Corrupt {
                        blob: label,
                        reason: format!("holds the entry of seq {}", entry.seq),
                    }
                    .into());
                }
                self.remember(&entry);
                Ok(Some(entry))
            }
            Err(AnnounceError::Store(StoreError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the entry after `prev` (`prev.seq + 1`); `None` if it does not
    /// exist. An entry of another dataset than `prev`'s is refused
    /// ([`check_next`]): the log is one dataset's, and an entry of another
    /// means the store was recreated under its readers or two datasets
    /// were mixed under one prefix.
    pub async fn read_after(
        &self,
        prev: &Announcement,
    ) -> Result<Option<Announcement>, AnnounceError> {
        let Some(next) = self.read(prev.seq + 1).await? else {
            return Ok(None);
        };
        check_next(prev, &next)?;
        Ok(Some(next))
    }

    /// Reads the entry before `next` (`next.seq - 1`, which must be at
    /// least 1); `None` if it does not exist. Refuses an entry of another
    /// dataset, as [`AnnouncementLog::read_after`] does.
    pub async fn read_before(
        &self,
        next: &Announcement,
    ) -> Result<Option<Announcement>, AnnounceError> {
        let Some(prev) = self.read(next.seq - 1).await? else {
            return Ok(None);
        };
        check_next(&prev, next)?;
        Ok(Some(prev))
    }

    /// Reads a whole entry, refusing (and not reading) one over
    /// [`MAX_ENTRY_BYTES`], whatever size the store claims for it.
    async fn get_bounded(&self, name: &BlobName) -> Result<Bytes, AnnounceError> {
        use futures::StreamExt;
        let label = name.to_string();
        let too_large = |value: u64| -> AnnounceError {
            FormatError::TooLarge {
                blob: label.clone(),
                what: "announcement entry size",
                value,
                limit: MAX_ENTRY_BYTES,
            }
            .into()
        };
        let (size, body) = self.store.open_read(name).await?;
        if size > MAX_ENTRY_BYTES {
            return Err(too_large(size));
        }
        let mut out = Vec::with_capacity(size as usize);
        match body {
            BlobBody::File(file) => {
                // At most MAX_ENTRY_BYTES + 1 bytes of a local file: a
                // small, bounded read.
                use std::io::Read;
                file.take(MAX_ENTRY_BYTES + 1)
                    .read_to_end(&mut out)
                    .map_err(|source| StoreError::Io {
                        op: "read announcement entry",
                        path: label.clone().into(),
                        source,
                    })?;
            }
            BlobBody::Stream(mut stream) => {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| StoreError::from_backend("read", &label, e))?;
                    out.extend_from_slice(&chunk);
                    if out.len() as u64 > MAX_ENTRY_BYTES {
                        break;
                    }
                }
            }
        }
        if out.len() as u64 > MAX_ENTRY_BYTES {
            return Err(too_large(out.len() as u64));
        }
        Ok(Bytes::from(out))
    }

    /// Where to start probing: the hint, or a LIST when the hint is missing
    /// or unreadable. `None` when the log is empty.
    async fn start_seq(&self) -> Result<Option<u64>, AnnounceError> {
        match self.store.get(&BlobName::Latest).await {
            Ok(bytes) => match parse_hint(&bytes) {
                Some(seq) => return Ok(Some(seq)),
                None => tracing::warn!(
                    "announce/latest does not hold a sequence number; listing announce/ instead"
                ),
            },
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let listed = self.store.list("announce").await?;
        Ok(listed
            .iter()
            .filter_map(|m| match m.name {
                BlobName::Announce(seq) => Some(seq),
                _ => None,
            })
            .max())
    }

    /// The newest entry, or `None` if nothing was announced yet.
    pub async fn latest(&self) -> Result<Option<Announcement>, AnnounceError> {
        let Some(start) = self.start_seq().await? else {
            return Ok(None);
        };
        let mut newest = match self.read(start).await? {
            Some(entry) => entry,
            // A hint ahead of the log (it is written after the entry, so
            // only a hand edit does this): fall back to listing.
            None => {
                let listed = self.store.list("announce").await?;
                let max = listed
                    .iter()
                    .filter_map(|m| match m.name {
                        BlobName::Announce(seq) => Some(seq),
                        _ => None,
                    })
                    .max();
                match max {
                    Some(seq) => self.read(seq).await?.ok_or(AnnounceError::Empty)?,
                    None => return Ok(None),
                }
            }
        };
        while let Some(next) = self.read_after(&newest).await? {
            newest = next;
        }
        Ok(Some(newest))
    }

    /// Appends `entry` at `entry.seq` with a create-only put, then updates
    /// the hint. If another entry holds the seq, [`AnnounceError::NotPrimary`];
    /// if this very entry does (a retry), the append succeeds.
    ///
    /// The hint is best effort: the entry is durable once this returns, and
    /// a failed hint write only makes the next reader probe further (it is
    /// logged at warn level, with the error).
    pub async fn append(&self, entry: &Announcement) -> Result<(), AnnounceError> {
        let name = BlobName::Announce(entry.seq);
        let bytes = Bytes::from(entry.encode());
        match self.store.create(&name, vec![bytes.clone()]).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // A retried create whose first attempt landed (the response
                // was lost) also ends here: the entry is then byte for byte
                // ours (it carries our id and timestamp), and we won.
                if self.store.get(&name).await? != bytes {
                    return Err(AnnounceError::NotPrimary { seq: entry.seq });
                }
            }
            Err(e) => return Err(e.into()),
        }
        crate::failpoint::hit("after-announce-entry");
        if let Err(error) = self
            .store
            .overwrite(&BlobName::Latest, Bytes::from(entry.seq.to_string()))
            .await
        {
            tracing::warn!(seq = entry.seq, %error, "announced, but could not update announce/latest");
        }
        crate::failpoint::hit("after-announce-hint");
        Ok(())
    }

    /// Every entry from `from_seq` (inclusive) to the newest, in order,
    /// all of one dataset (an entry of another is refused, as by
    /// [`AnnouncementLog::read_after`]).
    pub async fn entries_from(&self, from_seq: u64) -> Result<Vec<Announcement>, AnnounceError> {
        let Some(first) = self.read(from_seq).await? else {
            return Ok(Vec::new());
        };
        let mut out = vec![first];
        while let Some(entry) = self.read_after(out.last().expect("not empty")).await? {
            out.push(entry);
        }
        Ok(out)
    }

    /// Finds the announce entry that published `version`, walking back from
    /// `newest`. `None` if the log never announced it.
    pub async fn find_version(
        &self,
        newest: &Announcement,
        version: u64,
    ) -> Result<Option<Announcement>, AnnounceError> {
        let mut entry = newest.clone();
        loop {
            if entry.kind == AnnounceKind::Announce && entry.version == version {
                return Ok(Some(entry));
            }
            if entry.version < version || entry.seq <= 1 {
                return Ok(None);
            }
            match self.read_before(&entry).await? {
                Some(prev) => entry = prev,
                None => return Ok(None),
            }
        }
    }

    /// Pins consumers to `version`, which must have been announced. The pin
    /// carries the dataset id of the newest entry, like every entry after it.
    pub async fn pin(&self, version: u64, writer_id: &str) -> Result<Announcement, AnnounceError> {
        let newest = self.latest().await?.ok_or(AnnounceError::Empty)?;
        if self.find_version(&newest, version).await?.is_none() {
            return Err(AnnounceError::NotAnnounced { version });
        }
        let entry = newest.follow_up(AnnounceKind::Pin, Some(version), writer_id);
        self.append(&entry).await?;
        Ok(entry)
    }

    /// Lifts a pin: consumers follow the newest announced version again.
    pub async fn unpin(&self, writer_id: &str) -> Result<Announcement, AnnounceError> {
        let newest = self.latest().await?.ok_or(AnnounceError::Empty)?;
        let entry = newest.follow_up(AnnounceKind::Unpin, None, writer_id);
        self.append(&entry).await?;
        Ok(entry)
    }
}

fn parse_hint(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.parse().ok()
}
