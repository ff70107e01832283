//! Populate: how the caller hands a cycle every current record.
//!
//! Records are built with the generated builders ([`Populate::add`]) or
//! copied from existing readers ([`Populate::add_reader`]), then
//! canonicalized once into the type's [`Batch`] arena together with their
//! primary key bytes ([`push_record`]). A record over the configured size
//! limit, a record that does not read back, or a record of a type the
//! builder did not register is an error naming the type.
//!
//! The batches' arenas are in the producer's work directory
//! (`producer/arena.rs`): a scratch file that cannot grow fails the `add`
//! with [`ProducerError::WorkDir`], and fails the cycle even if the
//! closure drops that error (the record is not in the batch, so the cycle
//! would otherwise publish a dataset without it).

use super::arena::ArenaError;
use super::builder::Config;
use super::state::{Batch, TypeState};
use super::ProducerError;
use crate::error::Error;
use crate::schema::record::{with_canonical, KeyBuf, KeySpec, RecordType, ResolvedKey, TypeInfo};
use std::any::TypeId;

/// Buffers reused for every record of a populate.
#[derive(Default)]
struct RecordWork {
    /// Where records are canonicalized.
    canon: Vec<capnp::Word>,
    key: KeyBuf,
    /// The first scratch file failure, which fails the cycle whatever the
    /// closure does with the error it got.
    failure: Option<ArenaError>,
}

/// Largest scratch buffer a populate reuses for building records (64 KiB).
const MAX_SCRATCH_WORDS: usize = 8192;

/// Adds the records of one cycle. Every record of the dataset must be
/// added every cycle; a record not added is removed.
pub struct Populate<'a> {
    config: &'a Config,
    batches: Vec<Batch>,
    build_scratch: Vec<capnp::Word>,
    /// Size the build scratch should have: about twice the largest record.
    scratch_words: usize,
    work: RecordWork,
    /// Key fields resolved once per cycle, for keys read by reflection.
    resolved: Vec<Option<ResolvedKey>>,
    /// This cycle's header tags ([`Populate::tag`]).
    tags: Vec<(String, String)>,
}

impl<'a> Populate<'a> {
    /// A populate for one cycle, its batches in the work directory.
    pub(super) fn new(config: &'a Config) -> Self {
        Populate {
            config,
            batches: config
                .types
                .iter()
                .map(|t| Batch::in_dir(t.key.is_some(), &config.work_dir))
                .collect(),
            build_scratch: Vec::new(),
            scratch_words: 64,
            work: RecordWork::default(),
            resolved: config.types.iter().map(|_| None).collect(),
            tags: Vec::new(),
        }
    }

    /// Sizes each type's arenas for its last announced state (`prev`) and
    /// an eighth more, so that they rarely grow during the cycle.
    pub(super) fn reserve_like(&mut self, prev: &[TypeState]) -> Result<(), ArenaError> {
        for (batch, p) in self.batches.iter_mut().zip(prev) {
            batch.reserve(p.total_words + p.total_words / 8, p.count as usize)?;
        }
        Ok(())
    }

    /// Sets a header tag for this cycle's blobs only (a `source` batch, an
    /// input's date), over the producer's own tags of the same key.
    /// Consumers read it from their state (`ReadState::tags`).
    pub fn tag(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.tags.push((key.into(), value.into()));
    }

    /// This cycle's header tags, in the order set.
    pub(super) fn take_tags(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.tags)
    }

    /// Adds records from `parts` threads at once, so that building and
    /// canonicalizing a cycle's records uses every core: `fill(i, part)`
    /// runs on a thread of its own for each `i` in `0..parts`, and adds
    /// records to `part`, a populate of its own with every method of this
    /// one (records of any registered type, tags). Each caller splits its
    /// records among the parts (by index range, by key hash, by input
    /// file): every record must be added by exactly one part, as if added
    /// here, and a key added by two parts is the usual duplicate-key error
    /// at identify.
    ///
    /// Once every part returns, their records follow those already added
    /// here in part order, so the order (which decides the ordinals new
    /// keys take) depends only on how the caller split the records, not on
    /// the threads' timing; their tags follow this populate's in the same
    /// order. The first error of a part (lowest `i`) is returned and no
    /// record of any part is added. A panic in a part is resumed here.
    ///
    /// Part 0 runs on this thread and adds to this populate directly; the
    /// other parts' records are copied here once they are done (one bulk
    /// copy of each part's arena). `parts` of 1 is `fill(0, self)`.
    /// `std::thread::available_parallelism` is the usual choice.
    pub fn parallel<F>(&mut self, parts: usize, fill: F) -> Result<(), Error>
    where
        F: Fn(usize, &mut Populate<'_>) -> Result<(), Error> + Sync,
    {
        if parts <= 1 {
            return fill(0, self);
        }
        let config = self.config;
        // A part's key fields resolved by reflection are not `Send`: only
        // its records and tags come back. Part 0 adds to this populate
        // itself, on this thread: its records are never copied.
        type Part = (Vec<Batch>, Vec<(String, String)>);
        let (own, others): (Result<(), Error>, Vec<Result<Part, Error>>) =
            std::thread::scope(|scope| {
                let fill = &fill;
                let threads: Vec<_> = (1..parts)
                    .map(|i| {
                        scope.spawn(move || {
                            let mut part = Populate::new(config);
                            fill(i, &mut part)?;
                            let tags = std::mem::take(&mut part.tags);
                            Ok((part.into_batches()?, tags))
                        })
                    })
                    .collect();
                let own = fill(0, self);
                let others = threads
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect();
                (own, others)
            });
        own?;
        let others = others.into_iter().collect::<Result<Vec<_>, Error>>()?;
        for (batches, tags) in others {
            for (into, from) in self.batches.iter_mut().zip(&batches) {
                into.append(from).map_err(Error::from)?;
            }
            self.tags.extend(tags);
        }
        Ok(())
    }

    /// The records added, one batch per registered type; the first
    /// scratch file failure of an `add`, if any (see the module doc).
    pub(super) fn into_batches(self) -> Result<Vec<Batch>, Error> {
        match self.work.failure {
            Some(e) => Err(e.into()),
            None => Ok(self.batches),
        }
    }

    /// How many records type `t`'s batch holds so far.
    pub(super) fn records_in(&self, t: usize) -> u32 {
        self.batches[t].len()
    }

    pub(super) fn type_index<T: RecordType>(&self) -> Result<usize, Error> {
        let id = TypeId::of::<T>();
        self.config
            .types
            .iter()
            .position(|t| t.rust_type == Some(id))
            .ok_or_else(|| {
                ProducerError::UnknownType {
                    type_name: TypeInfo::of::<T>().name,
                }
                .into()
            })
    }

    /// Adds a record built with `T`'s generated builder.
    pub fn add<T: RecordType>(
        &mut self,
        fill: impl FnOnce(<T as capnp::traits::Owned>::Builder<'_>) -> capnp::Result<()>,
    ) -> Result<(), Error> {
        let t = self.type_index::<T>()?;
        // The builder's first segment is a reused scratch buffer, sized to
        // the records seen so far (capnp zeroes it for each record, so it
        // should not be much larger than a record).
        if self.build_scratch.len() < self.scratch_words {
            self.build_scratch = capnp::Word::allocate_zeroed_vec(self.scratch_words);
        }
        let mut message =
            capnp::message::Builder::new(capnp::message::ScratchSpaceHeapAllocator::new(
                capnp::Word::words_to_bytes_mut(&mut self.build_scratch),
            ));
        let type_name = || self.config.types[t].info.name.clone();
        fill(message.init_root::<<T as capnp::traits::Owned>::Builder<'_>>()).map_err(
            |source| ProducerError::BadRecord {
                type_name: type_name(),
                source,
            },
        )?;
        let root = message
            .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
            .map_err(|source| ProducerError::BadRecord {
                type_name: type_name(),
                source,
            })?;
        let used: usize = message
            .get_segments_for_output()
            .iter()
            .map(|s| s.len() / 8)
            .sum();
        if used * 2 > self.scratch_words && self.scratch_words < MAX_SCRATCH_WORDS {
            self.scratch_words = (used * 2).next_power_of_two().min(MAX_SCRATCH_WORDS);
        }
        push_record(
            self.config,
            t,
            root,
            Some(used),
            &mut self.batches[t],
            &mut self.work,
            reflect_key::<T>(root, &mut self.resolved[t]),
        )
    }

    /// Adds a copy of an existing record (from a consumer's view, say).
    pub fn add_reader<T: RecordType>(
        &mut self,
        record: <T as capnp::traits::Owned>::Reader<'_>,
    ) -> Result<(), Error> {
        let t = self.type_index::<T>()?;
        let mut message = capnp::message::Builder::new_default();
        message
            .set_root::<T>(record)
            .map_err(|source| ProducerError::BadRecord {
                type_name: self.config.types[t].info.name.clone(),
                source,
            })?;
        let root = message
            .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
            .map_err(|source| ProducerError::BadRecord {
                type_name: self.config.types[t].info.name.clone(),
                source,
            })?;
        push_record(
            self.config,
            t,
            root,
            None,
            &mut self.batches[t],
            &mut self.work,
            reflect_key::<T>(root, &mut self.resolved[t]),
        )
    }

    /// Adds a record of the `t`-th registered type from the root of any
    /// message (canonicalized here); its key is read from the canonical
    /// words by the type's `key_of`, with no generated code.
    pub(super) fn add_root(
        &mut self,
        t: usize,
        root: capnp::any_pointer::Reader<'_>,
    ) -> Result<(), Error> {
        let key_of = self.config.types[t].key_of;
        push_record(
            self.config,
            t,
            root,
            None,
            &mut self.batches[t],
            &mut self.work,
            |spec: &KeySpec, words: &[u64], key: &mut KeyBuf| key_of(spec, words, key),
        )
    }

    /// The position of the registered type of node id `type_id`.
    pub(super) fn type_position(&self, type_id: u64) -> Option<usize> {
        self.config
            .types
            .iter()
            .position(|t| t.info.type_id == type_id)
    }
}

/// Reads a key of generated type `T` from the record at `root` by
/// reflection, its fields resolved once per cycle into `resolved`.
fn reflect_key<'r, T: RecordType>(
    root: capnp::any_pointer::Reader<'r>,
    resolved: &'r mut Option<ResolvedKey>,
) -> impl FnOnce(&KeySpec, &[u64], &mut KeyBuf) -> capnp::Result<()> + 'r {
    move |spec, _words, key| {
        let record: <T as capnp::traits::Owned>::Reader<'_> = root.get_as()?;
        if resolved.is_none() {
            *resolved = Some(spec.resolved()?);
        }
        let resolved = resolved.as_ref().expect("just set");
        resolved.encode_record(T::dynamic(record), key)
    }
}

fn push_record(
    config: &Config,
    t: usize,
    root: capnp::any_pointer::Reader<'_>,
    size_bound_words: Option<usize>,
    batch: &mut Batch,
    work: &mut RecordWork,
    key_by_schema: impl FnOnce(&KeySpec, &[u64], &mut KeyBuf) -> capnp::Result<()>,
) -> Result<(), Error> {
    let RecordWork {
        canon: scratch,
        key,
        failure,
    } = work;
    let registered = &config.types[t];
    let bad = |source| ProducerError::BadRecord {
        type_name: registered.info.name.clone(),
        source,
    };
    let start = batch.words.len();
    let mut scratch_failed = |e: ArenaError, batch: &mut Batch| -> Error {
        batch.words.truncate(start);
        failure.get_or_insert_with(|| e.duplicate());
        e.into()
    };
    let added = with_canonical(root, size_bound_words, scratch, |segment| {
        batch.words.extend_from_le_bytes(segment)
    })
    .map_err(bad)?;
    let added = match added {
        Ok(added) => added,
        Err(e) => return Err(scratch_failed(e, batch)),
    };
    let bytes = added as u64 * 8;
    if bytes > config.max_record_bytes {
        batch.words.truncate(start);
        return Err(ProducerError::RecordTooLarge {
            type_name: registered.info.name.clone(),
            bytes,
            limit: config.max_record_bytes,
        }
        .into());
    }
    key.clear();
    if let Some(spec) = &registered.key {
        if !spec.encode_words(&batch.words[start..], key) {
            if let Err(e) = key_by_schema(spec, &batch.words[start..], key) {
                batch.words.truncate(start);
                return Err(bad(e).into());
            }
        }
    }
    batch
        .push(start, key.as_bytes())
        .map_err(|e| scratch_failed(e, batch))
}
