//! Looking inside a dataset with nothing but its store: any version's
//! records as JSON, the differences between two versions, and one key's
//! history. What `burrow dump`, `burrow diff`, `burrow history` and
//! `burrow schema` run on, and what a web explorer can call: every result
//! is plain data with a `to_json` rendering.
//!
//! An [`Explorer`] reads the announcement log and fetches blobs into a
//! cache of its own ([`BlobCache`]: verified on the way in, like a
//! consumer's, and locked, so never a running consumer's cache). A
//! version's state ([`VersionView`]) is built as a consumer builds it: the
//! nearest snapshot at or below it, then the announced deltas up to it.
//! Records are read through the schema nodes the blobs carry
//! ([`crate::schema::dynamic`]), so no generated code is needed; where the
//! blobs' schemas differ (a type that gained fields), the newest node of
//! each type reads every record (Cap'n Proto reads old records with a
//! newer schema).
//!
//! Keys are given as text in one syntax everywhere
//! ([`crate::schema::dynamic::key_text`]) and looked up through the key
//! index and the schema node ([`TypeData::find_key_bytes`]); records are
//! shown with their key in the same syntax ([`VersionView::key_text`]).

mod diff;
mod history;
#[cfg(feature = "serve")]
pub mod web;

pub use diff::{diff, Diff, DiffMethod, FieldChange, RecordChange, TypeDiff};
pub use history::{history, Change, HistoryEntry, HistoryReport};

use crate::announcer::{chain_to, AnnounceKind, Announcement, AnnouncementLog};
use crate::blobstore::cache::map_file;
use crate::blobstore::{BlobCache, BlobName, BlobStore, CacheRetention, StoreError};
use crate::consumer::{ReadState, TypeData};
use crate::error::{Error, FormatError};
use crate::schema::blob::{check_dataset, OpenBlob};
use crate::schema::dynamic::{DynamicSchema, RecordRef};
use crate::schema::node_key::NodeKey;
use crate::schema::DatasetId;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the explorer was asked for that the dataset does not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExploreError {
    /// Nothing has been announced in the store.
    #[error("nothing has been announced in store {store}")]
    Empty {
        /// The store, as described by [`BlobStore::description`].
        store: String,
    },
    /// The version was never announced.
    #[error("version {version} was never announced (newest is {newest}; see `burrow versions`)")]
    UnknownVersion {
        /// The version asked for.
        version: u64,
        /// The newest announced version.
        newest: u64,
    },
    /// A version was announced, but a blob needed to build it is gone
    /// (deleted by retention).
    #[error("version {version} is no longer retained: {blob} is gone from the store")]
    NotRetained {
        /// The version asked for.
        version: u64,
        /// The missing blob.
        blob: String,
    },
    /// No type of that name at that version.
    #[error("version {version} has no type {name:?} (it has: {known})")]
    UnknownType {
        /// The name asked for.
        name: String,
        /// The version.
        version: u64,
        /// The version's types, comma-separated.
        known: String,
    },
    /// The version holds several types and none was named.
    #[error("version {version} holds {count} types ({known}): name one with --type")]
    TypeRequired {
        /// The version.
        version: u64,
        /// How many types it holds.
        count: usize,
        /// Their names, comma-separated.
        known: String,
    },
    /// A type name that matches several types.
    #[error("type {name:?} matches several types ({matches}): give its full name")]
    AmbiguousType {
        /// The name asked for.
        name: String,
        /// The full names it matches, comma-separated.
        matches: String,
    },
    /// No record answers the key or ordinal.
    #[error("{type_name} at version {version} has no record with {what}")]
    NoRecord {
        /// The record type.
        type_name: String,
        /// The version.
        version: u64,
        /// `key 42`, `ordinal 7`.
        what: String,
    },
    /// No retained version holds a record with the key.
    #[error("no retained version holds a record of {type_name} with key {key:?}")]
    NoHistory {
        /// The record type.
        type_name: String,
        /// The key as given.
        key: String,
    },
}

/// Reads a store's versions through a cache of its own.
pub struct Explorer {
    store: BlobStore,
    log: AnnouncementLog,
    cache: BlobCache,
    newest: Announcement,
    /// Blobs opened so far (each verified once per explorer).
    open: Mutex<HashMap<BlobName, Arc<OpenBlob>>>,
}

impl Explorer {
    /// An explorer of `store`, caching blobs under `cache_dir` (created if
    /// missing, and locked for the explorer's life: a directory another
    /// process owns is [`StoreError::CacheInUse`]). Reads the newest
    /// announcement; an empty log is [`ExploreError::Empty`].
    pub async fn open(store: BlobStore, cache_dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let log = AnnouncementLog::new(store.clone());
        let newest = log.latest().await?.ok_or_else(|| ExploreError::Empty {
            store: store.description().to_string(),
        })?;
        let cache = BlobCache::open(cache_dir)?.for_dataset(newest.dataset_id)?;
        Ok(Explorer {
            store,
            log,
            cache,
            newest,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The store explored.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The dataset (the log's).
    pub fn dataset_id(&self) -> DatasetId {
        self.newest.dataset_id
    }

    /// The newest announced version.
    pub fn newest_version(&self) -> u64 {
        self.newest.version
    }

    /// Reads the log's newest entry again (a long-lived explorer, such as
    /// a web UI, calls it to see versions announced since it opened);
    /// returns the newest version. A log of another dataset now (the store
    /// recreated) is [`FormatError::DatasetMismatch`].
    pub async fn refresh(&mut self) -> Result<u64, Error> {
        let newest = self
            .log
            .latest()
            .await?
            .ok_or_else(|| ExploreError::Empty {
                store: self.store.description().to_string(),
            })?;
        crate::schema::dataset_id::check_same(
            "announce/latest",
            self.newest.dataset_id,
            newest.dataset_id,
        )?;
        self.newest = newest;
        Ok(self.newest.version)
    }

    /// Drops the blobs this explorer holds open (each is mapped, and
    /// verified once, on first use); the next use maps them again.
    pub fn forget_blobs(&self) {
        self.open.lock().expect("open blobs").clear();
    }

    /// How many blobs this explorer holds open (a long-running caller
    /// bounds it with [`Self::forget_blobs`]).
    pub fn open_blob_count(&self) -> usize {
        self.open.lock().expect("open blobs").len()
    }

    /// Every announcement entry (publications, pins, unpins), oldest first.
    pub async fn entries(&self) -> Result<Vec<Announcement>, Error> {
        Ok(self.log.entries_from(1).await?)
    }

    /// The newest `n` entries up to the newest this explorer has read,
    /// newest first, read back one by one (a long log costs what `n`
    /// entries cost).
    pub async fn newest_entries(&self, n: usize) -> Result<Vec<Announcement>, Error> {
        let mut entries = Vec::new();
        let mut next = self.newest.clone();
        while entries.len() < n {
            let prev = if next.seq > 1 {
                self.log.read_before(&next).await?
            } else {
                None
            };
            entries.push(next);
            match prev {
                Some(p) => next = p,
                None => break,
            }
        }
        Ok(entries)
    }

    /// The sequence number of the newest entry this explorer has read
    /// (how many entries the log holds).
    pub fn newest_seq(&self) -> u64 {
        self.newest.seq
    }

    /// The entry that announced `version`.
    pub async fn entry(&self, version: u64) -> Result<Announcement, Error> {
        self.log
            .find_version(&self.newest, version)
            .await?
            .ok_or_else(|| {
                ExploreError::UnknownVersion {
                    version,
                    newest: self.newest.version,
                }
                .into()
            })
    }

    /// Blob `name`, from the cache (fetched and verified first if it is not
    /// there; a file already there is verified once per explorer), checked
    /// to belong to the dataset. A blob missing from the store is
    /// [`ExploreError::NotRetained`] for `version`.
    pub(crate) async fn blob(&self, name: BlobName, version: u64) -> Result<Arc<OpenBlob>, Error> {
        if let Some(b) = self.open.lock().expect("open blobs").get(&name) {
            return Ok(Arc::clone(b));
        }
        let mut blob = self.fetch_and_map(name, version).await;
        if let Err((Error::Format(_), false)) = &blob {
            // A cached copy that no longer verifies (a disk changed it):
            // evicted and fetched again, as a consumer does.
            self.cache.evict(&name)?;
            blob = self.fetch_and_map(name, version).await;
        }
        let blob = blob.map_err(|(e, _)| e)?;
        check_dataset(&blob, self.newest.dataset_id)?;
        let blob = Arc::new(blob);
        self.open
            .lock()
            .expect("open blobs")
            .insert(name, Arc::clone(&blob));
        Ok(blob)
    }

    /// Blob `name` fetched into the cache (if not there yet) and mapped,
    /// verified when it was already cached; the error says whether the
    /// blob came from the store just now.
    async fn fetch_and_map(&self, name: BlobName, version: u64) -> Result<OpenBlob, (Error, bool)> {
        let (path, fresh) = match self.cache.fetch_reporting(&self.store, &name).await {
            Err(Error::Store(StoreError::NotFound { .. })) => {
                let gone = ExploreError::NotRetained {
                    version,
                    blob: name.to_string(),
                };
                return Err((gone.into(), true));
            }
            Err(e) => return Err((e, true)),
            Ok(found) => found,
        };
        let label = name.to_string();
        let mapped = tokio::task::spawn_blocking(move || map_file(&path, &label, !fresh))
            .await
            .map_err(|e| {
                let failed = StoreError::Io {
                    op: "map a cached blob",
                    path: PathBuf::from(name.to_string()),
                    source: std::io::Error::other(e.to_string()),
                };
                (Error::from(failed), fresh)
            })?;
        mapped.map_err(|e| (e, fresh))
    }

    /// The state of `version` (the newest when `None`): its nearest
    /// snapshot and the announced deltas after it.
    pub async fn version(&self, version: Option<u64>) -> Result<VersionView, Error> {
        let entry = match version {
            None => self.newest_announce().await?,
            Some(v) => self.entry(v).await?,
        };
        let chain = chain_to(&self.log, &entry, entry.snapshot_version).await?;
        let snapshot = self
            .blob(BlobName::Snapshot(entry.snapshot_version), entry.version)
            .await?;
        let mut view = VersionView::from_snapshot(snapshot, entry.snapshot_version)?;
        for step in chain.windows(2) {
            let (from, to) = (step[0].version, step[1].version);
            let blob = self.blob(BlobName::Delta(from, to), entry.version).await?;
            view = view.apply(blob, from, to)?;
        }
        Ok(view)
    }

    /// The snapshot of the newest version's chain (the nearest at or below
    /// the newest announced version), from the cache.
    pub async fn latest_snapshot(&self) -> Result<Arc<OpenBlob>, Error> {
        let entry = self.newest_announce().await?;
        self.blob(BlobName::Snapshot(entry.snapshot_version), entry.version)
            .await
    }

    /// The newest announce entry (the newest entry may be a pin).
    async fn newest_announce(&self) -> Result<Announcement, Error> {
        if self.newest.kind == AnnounceKind::Announce {
            return Ok(self.newest.clone());
        }
        self.entry(self.newest.version).await
    }

    /// The chain of announce entries from `from` up to `to` along deltas,
    /// if `to` is reached from `from` by announced deltas alone.
    pub(crate) async fn chain(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Option<Vec<Announcement>>, Error> {
        let head = self.entry(to).await?;
        match chain_to(&self.log, &head, from).await {
            Ok(chain) if chain.first().map(|e| e.version) == Some(from) => Ok(Some(chain)),
            Ok(_) => Ok(None),
            // A broken chain is a fact about the log, not a failure.
            Err(crate::announcer::AnnounceError::Format(FormatError::Corrupt { .. })) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Evicts what the cache holds beyond the default retention (2 GiB,
    /// 1024 files): an explorer's cache only speeds up the next look.
    pub fn trim_cache(&self) {
        self.cache.trim(&HashSet::new(), CacheRetention::default());
    }
}

/// One version's records, read through the schema nodes of its blobs.
#[derive(Clone)]
pub struct VersionView {
    state: ReadState,
    schema: Arc<DynamicSchema>,
    /// The blobs applied, oldest first: where each type's schema node and
    /// key are resolved from (the newest that has the type).
    blobs: Vec<Arc<OpenBlob>>,
}

/// A type as a [`VersionView`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSummary {
    /// The full name (`examples/movies.capnp:Movie`).
    pub name: String,
    /// The struct's node id.
    pub type_id: u64,
    /// Primary key fields, in key order.
    pub key_fields: Vec<String>,
    /// Records at this version.
    pub records: u32,
}

impl TypeSummary {
    /// As JSON: name, type id (hex), key fields, record count.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "type_id": format!("{:#018x}", self.type_id),
            "key_fields": self.key_fields,
            "records": self.records,
        })
    }
}

impl VersionView {
    fn from_snapshot(blob: Arc<OpenBlob>, version: u64) -> Result<Self, Error> {
        let state = ReadState::from_snapshot(Arc::clone(&blob), version)?;
        let schema = blob_schema(&blob, None)?;
        Ok(VersionView {
            state,
            schema: Arc::new(schema),
            blobs: vec![blob],
        })
    }

    /// This view moved from `from` to `to` by `blob`.
    pub(crate) fn apply(&self, blob: Arc<OpenBlob>, from: u64, to: u64) -> Result<Self, Error> {
        let state = self.state.apply(Arc::clone(&blob), from, to)?;
        let schema = blob_schema(&blob, Some(&self.schema))?;
        let mut blobs = self.blobs.clone();
        blobs.push(blob);
        Ok(VersionView {
            state,
            schema: Arc::new(schema),
            blobs,
        })
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.state.version()
    }

    /// The state underneath.
    pub fn state(&self) -> &ReadState {
        &self.state
    }

    /// The schema records are read through.
    pub fn schema(&self) -> &DynamicSchema {
        &self.schema
    }

    /// The blob this view was built up to last.
    pub fn last_blob(&self) -> &Arc<OpenBlob> {
        self.blobs.last().expect("a view has its snapshot")
    }

    /// Every type, with its record count.
    pub fn types(&self) -> Vec<TypeSummary> {
        self.state
            .types()
            .iter()
            .map(|t| TypeSummary {
                name: t.name().to_string(),
                type_id: t.type_id(),
                key_fields: t.key_fields().to_vec(),
                records: t.record_count(),
            })
            .collect()
    }

    /// The type `name` names: its full name, or the part after the last
    /// `:` or `.` (`Movie`); `None` picks the only type.
    pub fn type_named(&self, name: Option<&str>) -> Result<&TypeData, ExploreError> {
        let types = self.state.types();
        let known = || {
            types
                .iter()
                .map(|t| t.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(name) = name else {
            return match types {
                [only] => Ok(only),
                _ => Err(ExploreError::TypeRequired {
                    version: self.version(),
                    count: types.len(),
                    known: if types.is_empty() {
                        "none".into()
                    } else {
                        known()
                    },
                }),
            };
        };
        if let Some(t) = types.iter().find(|t| t.name() == name) {
            return Ok(t);
        }
        let short = |full: &str| full.rsplit([':', '.']).next().unwrap_or(full).to_string();
        let matches: Vec<&TypeData> = types.iter().filter(|t| short(t.name()) == name).collect();
        match matches[..] {
            [one] => Ok(one),
            [] => Err(ExploreError::UnknownType {
                name: name.to_string(),
                version: self.version(),
                known: known(),
            }),
            _ => Err(ExploreError::AmbiguousType {
                name: name.to_string(),
                matches: matches
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The record at `ordinal` of type `t` as JSON; `None` for a hole.
    pub fn record(&self, t: &TypeData, ordinal: u32) -> Result<Option<Value>, Error> {
        let Some(rec) = record_ref(t, ordinal) else {
            return Ok(None);
        };
        Ok(Some(self.schema.render(t.type_id(), rec)?))
    }

    /// The field `path` of the record at `ordinal` (see
    /// [`crate::schema::dynamic`]); `None` for a hole.
    pub fn record_path(
        &self,
        t: &TypeData,
        ordinal: u32,
        path: &str,
    ) -> Result<Option<Value>, Error> {
        let Some(rec) = record_ref(t, ordinal) else {
            return Ok(None);
        };
        Ok(Some(self.schema.render_path(t.type_id(), rec, path)?))
    }

    /// The canonical key bytes of the key `text` names, for type `t`.
    pub fn key_bytes(&self, t: &TypeData, text: &str) -> Result<Vec<u8>, Error> {
        Ok(self
            .schema
            .key_from_text(t.type_id(), t.name(), t.key_fields(), text)?)
    }

    /// The ordinal of the record of type `t` whose key is `key` (canonical
    /// bytes, from [`Self::key_bytes`]).
    pub fn find_key(&self, t: &TypeData, key: &[u8]) -> Result<Option<u32>, Error> {
        let node_key = self.node_key(t)?;
        Ok(t.find_key_bytes(key, &node_key)?)
    }

    /// The key of type `t` read against the newest blob whose header
    /// carries its node.
    fn node_key(&self, t: &TypeData) -> Result<NodeKey, Error> {
        let mut last = None;
        for blob in self.blobs.iter().rev() {
            match blob.node_key(t.type_id(), t.key_fields()) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a view has its snapshot").into())
    }

    /// The record `ordinal`'s key as text, in the syntax keys are given
    /// in (`42`; `title=Heat,year=1995`); `None` for a type without a key.
    pub fn key_text(&self, t: &TypeData, record: &Value) -> Option<String> {
        self.schema.key_text(t.type_id(), t.key_fields(), record)
    }

    /// Every record of type `t`, in ordinal order.
    pub fn records<'v>(
        &'v self,
        t: &'v TypeData,
    ) -> impl Iterator<Item = Result<(u32, Value), Error>> + 'v {
        (0..t.ordinal_limit()).filter_map(move |o| match self.record(t, o) {
            Ok(Some(v)) => Some(Ok((o, v))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }
}

/// Where the record at `ordinal` of `t` lies.
fn record_ref(t: &TypeData, ordinal: u32) -> Option<RecordRef<'_>> {
    let (blob, lists, index) = t.element(ordinal)?;
    Some(RecordRef {
        segment: blob.segment(),
        word: lists.element(index),
        data_words: lists.data,
        ptrs: lists.ptrs,
    })
}

/// The schema of `blob`'s header, over `base` (a node in both: the
/// blob's wins).
fn blob_schema(blob: &OpenBlob, base: Option<&DynamicSchema>) -> Result<DynamicSchema, Error> {
    blob.with_schema_nodes(|nodes| -> Result<DynamicSchema, Error> {
        let own = DynamicSchema::from_nodes(nodes)?;
        Ok(match base {
            Some(base) => base.clone().merged(own),
            None => own,
        })
    })
}
