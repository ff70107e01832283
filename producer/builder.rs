//! Building a producer: its configuration (store, id, snapshot cadence,
//! retention, record limits, transport compression), the record types it publishes with their primary keys,
//! validators, listeners and header tags.
//!
//! [`ProducerBuilder::build`] checks the configuration once (a type
//! registered twice, no types, a zero cadence, an empty id are errors), so
//! a cycle never meets a bad one. The resulting [`Config`] is immutable and
//! shared by every cycle.

use super::{CycleEvent, CycleListener, Producer, RecordValidator, Validator};
use crate::announcer::AnnouncementLog;
use crate::blobstore::resilience::{Clock, SystemClock};
use crate::blobstore::{BlobStore, Compression};
use crate::error::Error;
use crate::gc::RetentionPolicy;
use crate::schema::blob::DatasetSchema;
use crate::schema::index::{IndexDef, NodeIndex};
use crate::schema::record::{KeyBuf, KeySpec, RecordType, TypeInfo};
use crate::schema::DatasetId;
use std::any::TypeId;
use std::sync::Arc;

/// A registered record type.
pub(super) struct RegisteredType {
    pub(super) info: TypeInfo,
    /// The generated type; `None` for a type given by its schema nodes
    /// ([`ProducerBuilder::node_type`]).
    pub(super) rust_type: Option<TypeId>,
    pub(super) key: Option<KeySpec>,
    pub(super) key_fields: Vec<String>,
    /// Encodes the key of a canonical record of this type.
    pub(super) key_of: fn(&KeySpec, &[u64], &mut KeyBuf) -> capnp::Result<()>,
    /// Secondary indexes built into every snapshot
    /// ([`ProducerBuilder::index`]), each resolved against the type's node.
    pub(super) indexes: Vec<(IndexDef, NodeIndex)>,
}

/// Encodes the key of a canonical record of `T` (from its words when the
/// key fields sit at fixed places, else by reflection).
fn key_of<T: RecordType>(spec: &KeySpec, words: &[u64], out: &mut KeyBuf) -> capnp::Result<()> {
    if spec.encode_words(words, out) {
        return Ok(());
    }
    let message = crate::schema::record::record_message(words, u64::MAX >> 8);
    let record: <T as capnp::traits::Owned>::Reader<'_> = message.get_root()?;
    spec.resolved()?.encode_record(T::dynamic(record), out)
}

/// Builds a [`Producer`].
pub struct ProducerBuilder {
    store: BlobStore,
    producer_id: String,
    snapshot_every: u32,
    max_record_bytes: u64,
    types: Vec<Result<RegisteredType, Error>>,
    validators: Vec<Arc<dyn Validator>>,
    record_validators: Vec<Arc<dyn RecordValidator>>,
    listeners: Vec<Arc<dyn CycleListener>>,
    tags: Vec<(String, String)>,
    dataset_id: Option<DatasetId>,
    clock: Arc<dyn Clock>,
    leftover_grace: std::time::Duration,
    retention: Option<RetentionPolicy>,
    format_version: u16,
    max_list_shift: u8,
    compression: Compression,
    work_dir: Option<std::path::PathBuf>,
    /// Secondary indexes declared, by type id: attached to their types at
    /// [`ProducerBuilder::build`].
    indexes: Vec<(u64, String, IndexDef)>,
}

impl ProducerBuilder {
    /// A builder for a producer that publishes to `store`, with the
    /// defaults: producer id `producer-<pid>`, a snapshot every cycle,
    /// records up to 64 MiB, no types, validators, listeners or tags, and a
    /// dataset id taken from the log (or minted at the first cycle).
    pub fn new(store: BlobStore) -> Self {
        ProducerBuilder {
            store,
            producer_id: format!("producer-{}", std::process::id()),
            snapshot_every: 1,
            max_record_bytes: 64 << 20,
            types: Vec::new(),
            validators: Vec::new(),
            record_validators: Vec::new(),
            listeners: Vec::new(),
            tags: Vec::new(),
            dataset_id: None,
            clock: Arc::new(SystemClock),
            leftover_grace: crate::gc::DEFAULT_LEFTOVER_GRACE,
            retention: Some(RetentionPolicy::default()),
            format_version: crate::schema::envelope::FORMAT_VERSION,
            max_list_shift: crate::schema::blob::MAX_LIST_SHIFT,
            compression: Compression::default(),
            work_dir: None,
            indexes: Vec::new(),
        }
    }

    /// Writes blobs in format version `version` (default: the newest this
    /// build writes, [`crate::schema::envelope::FORMAT_VERSION`]). For
    /// rolling upgrades: keep writing the version the oldest consumers
    /// read. `build` refuses a version this build cannot write
    /// ([`crate::schema::envelope::WRITABLE_VERSIONS`]).
    pub fn format_version(mut self, version: u16) -> Self {
        self.format_version = version;
        self
    }

    /// Splits each type's records into lists of at most `1 << shift`
    /// (default and most: [`crate::schema::blob::MAX_LIST_SHIFT`], what one
    /// Cap'n Proto list holds). Only tests need a smaller one, to split
    /// small types into several lists.
    #[doc(hidden)]
    pub fn max_list_shift(mut self, shift: u8) -> Self {
        self.max_list_shift = shift.min(crate::schema::blob::MAX_LIST_SHIFT);
        self
    }

    /// How blobs are stored (default zstd level 1; see
    /// [`crate::blobstore::compress`]). Consumers read any setting, and a
    /// chain may change it from one cycle to the next.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Where the producer keeps its scratch files: blobs spooled while
    /// they are written and the record arenas of its state (default: the
    /// system's temporary directory). Put it on a disk file system, not
    /// tmpfs: the files' pages are what the kernel may write back and
    /// drop, instead of the producer's heap. Every scratch file is
    /// unlinked as it is created, so a crash leaves nothing behind (see
    /// `producer/workdir.rs`); `build` refuses a directory it cannot
    /// create one in.
    pub fn work_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Adds a listener that sees every cycle's steps and outcome.
    pub fn listener(mut self, listener: impl CycleListener + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Names this producer in blob headers and announcements.
    pub fn producer_id(mut self, id: impl Into<String>) -> Self {
        self.producer_id = id.into();
        self
    }

    /// Writes a snapshot on the first cycle and then every `n` cycles
    /// (default 1: every cycle). Deltas and reverse deltas are written every
    /// cycle.
    pub fn snapshot_every(mut self, n: u32) -> Self {
        self.snapshot_every = n;
        self
    }

    /// Refuses records larger than `bytes` (default 64 MiB).
    pub fn max_record_bytes(mut self, bytes: u64) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Registers record type `T` with a primary key of the named fields.
    pub fn primary_key<T: RecordType>(mut self, fields: &[&str]) -> Self {
        let info = TypeInfo::of::<T>();
        let registered = KeySpec::resolve(&info, fields)
            .map(|spec| RegisteredType {
                rust_type: Some(TypeId::of::<T>()),
                key_fields: spec.names().map(str::to_string).collect(),
                key: Some(spec),
                info,
                key_of: key_of::<T>,
                indexes: Vec::new(),
            })
            .map_err(Error::from);
        self.types.push(registered);
        self
    }

    /// Declares a secondary hash index `name` on `T` over `fields` (field
    /// names in value order; at most one a list of scalars, whose every
    /// element is a value): every snapshot carries it beside the primary
    /// key index, and consumers keep it current through deltas
    /// (`TypeView::index`). `T` must be registered too; an unknown field,
    /// a field that cannot be indexed or a name used twice on the type is
    /// an [`Error::Config`] at [`Self::build`].
    pub fn index<T: RecordType>(self, name: &str, fields: &[&str]) -> Self {
        self.declare_index::<T>(IndexDef::new(name, fields, false))
    }

    /// As [`Self::index`], for an index with at most one record per value:
    /// a cycle whose records share a value fails, naming the index and
    /// both records' ordinals.
    pub fn unique_index<T: RecordType>(self, name: &str, fields: &[&str]) -> Self {
        self.declare_index::<T>(IndexDef::new(name, fields, true))
    }

    fn declare_index<T: RecordType>(mut self, def: IndexDef) -> Self {
        let info = TypeInfo::of::<T>();
        self.indexes.push((info.type_id, info.name, def));
        self
    }

    /// Registers record type `T` without a primary key: records are
    /// identified by their content, and identical records are one record.
    pub fn record_type<T: RecordType>(mut self) -> Self {
        self.types.push(Ok(RegisteredType {
            info: TypeInfo::of::<T>(),
            rust_type: Some(TypeId::of::<T>()),
            key: None,
            key_fields: Vec::new(),
            key_of: key_of::<T>,
            indexes: Vec::new(),
        }));
        self
    }

    /// The dataset this producer publishes. A new dataset (an empty log)
    /// gets this id at its first cycle instead of a freshly minted one, and
    /// [`Producer::restore`] refuses a log of another dataset. Without it,
    /// the first cycle mints an id and restore takes whatever the log says.
    ///
    /// Two datasets must never share an id: give one only to pin a producer
    /// to its dataset, or for reproducible blobs (tests, golden files).
    pub fn dataset_id(mut self, id: DatasetId) -> Self {
        self.dataset_id = Some(id);
        self
    }

    /// The clock whose wall time stamps each cycle's blobs and announcement
    /// (default: the system clock). A manual clock makes a producer's blobs
    /// the same bytes on every run (golden files).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How old a leftover of an interrupted write (a killed producer's
    /// partial snapshot, a temporary upload) must be before
    /// [`Producer::restore`] deletes it (default
    /// [`crate::gc::DEFAULT_LEFTOVER_GRACE`], far longer than any blob
    /// write, so a restore never deletes another writer's upload in
    /// progress). See [`crate::gc`].
    pub fn leftover_grace(mut self, grace: std::time::Duration) -> Self {
        self.leftover_grace = grace;
        self
    }

    /// The dataset's retention policy, applied by a background run after
    /// each announcement (see [`crate::gc`]); `None` turns the step off
    /// (retention is then left to `burrow gc`). Default:
    /// [`RetentionPolicy::default`], the newest
    /// [`crate::gc::DEFAULT_KEEP_VERSIONS`] versions kept reachable, a grace
    /// of [`crate::gc::DEFAULT_RETENTION_GRACE`], no snapshot archive.
    pub fn retention(mut self, policy: Option<RetentionPolicy>) -> Self {
        self.retention = policy;
        self
    }

    /// Adds a type registered by other means than generated code (see
    /// [`ProducerBuilder::node_type`]).
    pub(super) fn push_type(mut self, registered: Result<RegisteredType, Error>) -> Self {
        self.types.push(registered);
        self
    }

    /// Adds a header tag written into every blob.
    pub fn header_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Adds a validator; validators run in the order added.
    pub fn validator(mut self, validator: impl Validator + 'static) -> Self {
        self.validators.push(Arc::new(validator));
        self
    }

    /// Adds a validator that sees the cycle's records; these run after
    /// the [`Self::validator`]s, in the order added.
    pub fn record_validator(mut self, validator: impl RecordValidator + 'static) -> Self {
        self.record_validators.push(Arc::new(validator));
        self
    }

    /// The producer. Fails with the error of a type that could not be
    /// registered (a primary key that cannot be resolved), or with
    /// [`Error::Config`] if `snapshot_every` is 0, the producer id is
    /// empty, no type is registered or one is registered twice, or the
    /// types' schema cannot be read. Building touches no store: call
    /// [`Producer::restore`] before the first cycle to continue a chain.
    pub fn build(self) -> Result<Producer, Error> {
        let config = |what: &str, reason: String| Error::Config {
            what: what.to_string(),
            reason,
        };
        if self.snapshot_every == 0 {
            return Err(config("snapshot_every", "must be at least 1".into()));
        }
        self.compression
            .check()
            .map_err(|reason| config("compression", reason))?;
        if let Some(policy) = &self.retention {
            policy
                .check()
                .map_err(|e| config("retention", e.to_string()))?;
        }
        if self.producer_id.is_empty() {
            return Err(config("producer_id", "must not be empty".into()));
        }
        if !crate::schema::envelope::WRITABLE_VERSIONS.contains(&self.format_version) {
            return Err(config(
                "format_version",
                format!(
                    "this build writes format versions {:?}, not {}",
                    crate::schema::envelope::WRITABLE_VERSIONS,
                    self.format_version
                ),
            ));
        }
        let mut types = Vec::new();
        for t in self.types {
            let t = t?;
            if types
                .iter()
                .any(|x: &RegisteredType| x.info.type_id == t.info.type_id)
            {
                return Err(config(
                    "record types",
                    format!("{} is registered twice", t.info.name),
                ));
            }
            types.push(t);
        }
        for (type_id, type_name, def) in self.indexes {
            let t = types
                .iter_mut()
                .find(|t| t.info.type_id == type_id)
                .ok_or_else(|| {
                    config(
                        "indexes",
                        format!(
                            "index {} is on {type_name}, which is not registered",
                            def.name
                        ),
                    )
                })?;
            if t.indexes.iter().any(|(d, _)| d.name == def.name) {
                return Err(config(
                    "indexes",
                    format!("{type_name} has two indexes named {}", def.name),
                ));
            }
            let node = t
                .info
                .with_node(|node| NodeIndex::resolve(node, &def))
                .map_err(|e| config("indexes", format!("{type_name}: {e}")))?
                .map_err(|reason| config("indexes", format!("{type_name}: {reason}")))?;
            t.indexes.push((def, node));
        }
        if types.is_empty() {
            return Err(config(
                "record types",
                "register at least one with primary_key::<T>() or record_type::<T>()".into(),
            ));
        }
        let work_dir = super::workdir::WorkDir::new(self.work_dir)?;
        let infos: Vec<TypeInfo> = types.iter().map(|t| t.info.clone()).collect();
        let schema = DatasetSchema::of(&infos)
            .map_err(|e| config("record types", format!("cannot read their schema: {e}")))?;
        Ok(Producer {
            config: Arc::new(Config {
                log: AnnouncementLog::new(self.store.clone()),
                store: self.store,
                producer_id: self.producer_id,
                snapshot_every: self.snapshot_every,
                max_record_bytes: self.max_record_bytes,
                types,
                validators: self.validators,
                record_validators: self.record_validators,
                listeners: self.listeners,
                tags: self.tags,
                dataset_id: self.dataset_id,
                clock: self.clock,
                leftover_grace: self.leftover_grace,
                retention: self.retention,
                max_list_shift: self.max_list_shift,
                compression: self.compression,
                work_dir: Arc::new(work_dir),
                schema,
            }),
            announced: tokio::sync::Mutex::new(None),
            retention: Default::default(),
        })
    }
}

/// What a built producer is configured with; shared by every cycle.
pub(super) struct Config {
    pub(super) store: BlobStore,
    pub(super) log: AnnouncementLog,
    pub(super) producer_id: String,
    pub(super) snapshot_every: u32,
    pub(super) max_record_bytes: u64,
    pub(super) types: Vec<RegisteredType>,
    pub(super) validators: Vec<Arc<dyn Validator>>,
    pub(super) record_validators: Vec<Arc<dyn RecordValidator>>,
    pub(super) listeners: Vec<Arc<dyn CycleListener>>,
    pub(super) tags: Vec<(String, String)>,
    pub(super) schema: DatasetSchema,
    /// The dataset id given to the builder, if any.
    pub(super) dataset_id: Option<DatasetId>,
    /// Stamps cycles and announcements with wall time.
    pub(super) clock: Arc<dyn Clock>,
    /// Leftovers older than this are swept by restore.
    pub(super) leftover_grace: std::time::Duration,
    /// Applied in the background after each announcement; `None`: off.
    pub(super) retention: Option<RetentionPolicy>,
    /// The largest `listShift` the blob writer uses.
    pub(super) max_list_shift: u8,
    /// How each blob is stored.
    pub(super) compression: Compression,
    /// Where scratch files go (shared with the record arenas made in it).
    pub(super) work_dir: Arc<super::workdir::WorkDir>,
}

impl Config {
    /// Tells every listener about `event`, in the order they were added.
    pub(super) fn emit(&self, event: CycleEvent<'_>) {
        for l in &self.listeners {
            l.on_event(&event);
        }
    }
}
