//! The cycle, one small function per step (see the module doc of
//! [`crate::producer`] for the steps and their guarantees).
//!
//! [`Producer::cycle`] holds the producer's mutex for the whole cycle and
//! only replaces the last announced state after the announce step
//! succeeded; every step before that returns an error naming itself
//! ([`ProducerError::Cycle`]) and leaves the state untouched.
//!
//! The write step spools each blob and its compressed object into files
//! of the work directory (`spool.rs`); the publish step uploads from those
//! files, a part at a time above the store's part size, so the cycle's
//! memory does not grow with its blobs.

use super::blocking::blocking;
use super::builder::Config;
use super::populate::Populate;
use super::spool::Spool;
use super::state::Changed;
use super::state::{self, Batch, IdentifyError, TypeDiff, TypeState, UnregisteredType};
use super::validate::CycleDiff;
use super::write::{full_changes, write_blobs, WriteRequest};
use super::{
    Announced, CycleEvent, CycleReport, CycleStamp, CycleStep, Producer, ProducerError, Tags,
    TypeChange,
};
use crate::announcer::{AnnounceError, AnnounceKind, Announcement};
use crate::blobstore::{BlobName, BlobStore, StoreError};
use crate::error::{Error, FormatError};
use crate::schema::checksum::TypeChecksum;
use crate::schema::DatasetId;
use std::time::Instant;
use tracing::Instrument;

/// Wraps an error of `step` into [`ProducerError::Cycle`].
pub(super) fn cycle_err(step: CycleStep, version: u64) -> impl FnOnce(Error) -> Error {
    move |source| {
        ProducerError::Cycle {
            step,
            version,
            source: Box::new(source),
        }
        .into()
    }
}

/// Times the steps of one cycle and reports each to the listeners.
pub(super) struct StepTimer<'a> {
    config: &'a Config,
    since: Instant,
}

impl<'a> StepTimer<'a> {
    pub(super) fn new(config: &'a Config) -> Self {
        StepTimer {
            config,
            since: Instant::now(),
        }
    }

    pub(super) fn done(&mut self, step: CycleStep) {
        let duration = self.since.elapsed();
        self.since = Instant::now();
        tracing::debug!(%step, ?duration, "cycle step done");
        self.config.emit(CycleEvent::StepDone { step, duration });
    }
}

impl Producer {
    /// Runs one cycle. `populate` must add every record of the dataset.
    pub async fn run_cycle<F>(&self, populate: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Populate<'_>) -> Result<(), Error>,
    {
        let span = tracing::info_span!("cycle", producer = %self.config.producer_id);
        self.observed(self.cycle(populate).instrument(span)).await
    }

    /// Runs a cycle (full or incremental) and reports it: metrics, the
    /// listeners' outcome event, and the retention run after an
    /// announcement.
    pub(super) async fn observed(
        &self,
        cycle: impl std::future::Future<Output = Result<CycleReport, Error>>,
    ) -> Result<CycleReport, Error> {
        let started = Instant::now();
        let mut result = cycle.await;
        let config = &*self.config;
        if let Ok(report) = &mut result {
            // The outcome known before this cycle's own run starts.
            report.last_gc = self.retention.last();
            if report.published {
                if let Some(policy) = config.retention {
                    self.retention.start(&config.log, policy, report.version);
                }
            }
        }
        metrics::histogram!("burrow_producer_cycle_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(report) if report.published => {
                metrics::counter!("burrow_producer_cycles_total").increment(1);
                metrics::gauge!("burrow_producer_version").set(report.version as f64);
                config.emit(CycleEvent::Announced { report });
            }
            Ok(report) => config.emit(CycleEvent::NoChange {
                version: report.version,
            }),
            Err(error) => {
                metrics::counter!("burrow_producer_cycle_failures_total").increment(1);
                let step = match error {
                    Error::Producer(ProducerError::Cycle { step, .. }) => *step,
                    _ => CycleStep::Mint,
                };
                tracing::warn!(%error, %step, "cycle failed");
                config.emit(CycleEvent::Failed { step, error });
            }
        }
        result
    }

    async fn cycle<F>(&self, populate: F) -> Result<CycleReport, Error>
    where
        F: FnOnce(&mut Populate<'_>) -> Result<(), Error>,
    {
        let config = &*self.config;
        let started = Instant::now();
        let mut timer = StepTimer::new(config);
        let cycle_start_micros = config.clock.unix_micros();
        let mut guard = self.announced.lock().await;
        let last = guard.as_ref();
        let last_version = last.map_or(0, |a| a.entry.version);

        // 1. Mint.
        let newest = mint(config, last).await?;
        let version = last_version + 1;
        // The dataset's identity: kept from the last announced state
        // (restored from the log), or, on the first cycle of a new dataset,
        // the builder's or a freshly minted one.
        let dataset_id = match last {
            Some(a) => a.entry.dataset_id,
            None => config.dataset_id.unwrap_or_else(DatasetId::mint),
        };
        config.emit(CycleEvent::Started { version });
        timer.done(CycleStep::Mint);

        // 2. Populate.
        let (batches, tags) =
            blocking(|| run_populate(config, last.map(|a| a.types.as_slice()), version, populate))?;
        let stamp = CycleStamp::new(cycle_start_micros, &config.tags, tags);
        let populate_time = started.elapsed();
        timer.done(CycleStep::Populate);

        // 3. Identify.
        let empty: Vec<TypeState>;
        let prev_types: &[TypeState] = match last {
            Some(a) => &a.types,
            None => {
                empty = config
                    .types
                    .iter()
                    .map(|t| TypeState::empty(t.key.is_some()))
                    .collect();
                &empty
            }
        };
        let diffs = blocking(|| identify(config, prev_types, batches, version))?;
        let unregistered = last.map_or(&[][..], |a| a.unregistered.as_slice());
        let changes = changes(config, prev_types, &diffs, unregistered);
        timer.done(CycleStep::Identify);

        // 4. No change: no version. (A type created or dropped is a change.)
        if last.is_some() && diffs.iter().all(TypeDiff::is_empty) && unregistered.is_empty() {
            return Ok(unchanged_report(
                last_version,
                changes,
                populate_time,
                started,
            ));
        }

        // 5. Validate.
        let changed: Vec<_> = diffs
            .iter()
            .zip(prev_types)
            .map(|(d, prev)| full_changes(d, prev))
            .collect();
        validate(config, version, &changes, &changed)?;
        timer.done(CycleStep::Validate);

        // 6. Write and publish; bump past names taken by orphans.
        let prev_entry = last.map(|a| &a.entry);
        let cycles_since = last.map_or(0, |a| a.cycles_since_snapshot + 1);
        let with_snapshot = prev_entry.is_none() || cycles_since >= config.snapshot_every;
        // The first cycle of a chain writes no delta.
        let deltas: Vec<_> = match prev_entry {
            Some(_) => changed.iter().map(|c| c.deltas()).collect(),
            None => Vec::new(),
        };
        let next: Vec<&TypeState> = diffs.iter().map(|d| &d.next).collect();
        // Every registered type is in the new state.
        let next_sums: Vec<TypeChecksum> = config
            .types
            .iter()
            .zip(&diffs)
            .map(|(t, d)| TypeChecksum {
                type_id: t.info.type_id,
                checksum: d.next.checksum,
            })
            .collect();
        let (version, blobs) = write_and_publish(
            config,
            WriteRequest {
                dataset_id,
                version,
                prev_version: prev_entry.map(|e| e.version),
                types: &deltas,
                unregistered,
                snapshot: with_snapshot.then_some(next.as_slice()),
                cycle: &stamp,
                prev_cycle: last.map(|a| &a.cycle),
                prev_types,
                next_sums: &next_sums,
            },
        )
        .await?;
        drop((deltas, changed));
        timer.done(CycleStep::Publish);

        // 7. Announce.
        let entry = announce(
            config,
            dataset_id,
            newest.as_ref(),
            prev_entry,
            version,
            with_snapshot,
            &blobs,
        )
        .await?;
        timer.done(CycleStep::Announce);
        *guard = Some(Announced {
            entry: entry.clone(),
            cycles_since_snapshot: if with_snapshot { 0 } else { cycles_since },
            types: diffs.into_iter().map(|d| d.next).collect(),
            // Dropped by this cycle.
            unregistered: Vec::new(),
            cycle: stamp,
        });
        Ok(published_report(
            entry,
            changes,
            &blobs,
            populate_time,
            started,
        ))
    }
}

/// The report of a cycle that announced `entry`.
pub(super) fn published_report(
    entry: Announcement,
    changes: Vec<TypeChange>,
    blobs: &[Stored],
    populate_time: std::time::Duration,
    started: Instant,
) -> CycleReport {
    CycleReport {
        version: entry.version,
        published: true,
        changes,
        blobs: blobs.iter().map(|b| (b.name, b.raw_bytes)).collect(),
        stored_blobs: blobs.iter().map(|b| (b.name, b.object.len())).collect(),
        populate_time,
        total_time: started.elapsed(),
        announcement: Some(entry),
        last_gc: None,
    }
}

/// The report of a cycle that changed nothing: `version` stays current.
pub(super) fn unchanged_report(
    version: u64,
    changes: Vec<TypeChange>,
    populate_time: std::time::Duration,
    started: Instant,
) -> CycleReport {
    CycleReport {
        version,
        published: false,
        changes,
        blobs: Vec::new(),
        stored_blobs: Vec::new(),
        populate_time,
        total_time: started.elapsed(),
        announcement: None,
        last_gc: None,
    }
}

/// Step 1: reads the log's newest entry and checks that this producer is
/// still the primary one. Returns the newest entry (the announce step
/// appends after it).
pub(super) async fn mint(
    config: &Config,
    last: Option<&Announced>,
) -> Result<Option<Announcement>, Error> {
    let last_version = last.map_or(0, |a| a.entry.version);
    let newest = config
        .log
        .latest()
        .await
        .map_err(|e| cycle_err(CycleStep::Mint, last_version + 1)(e.into()))?;
    match (last, &newest) {
        (None, Some(n)) => Err(cycle_err(CycleStep::Mint, n.version + 1)(
            ProducerError::NeedsRestore { version: n.version }.into(),
        )),
        // A log of another dataset (the store was recreated and another
        // producer started a new dataset in it): ours is gone; nothing of
        // ours may be appended to it.
        (Some(a), Some(n)) if n.dataset_id != a.entry.dataset_id => {
            Err(cycle_err(CycleStep::Mint, last_version + 1)(
                FormatError::DatasetMismatch {
                    blob: BlobName::Announce(n.seq).to_string(),
                    expected: a.entry.dataset_id,
                    found: n.dataset_id,
                }
                .into(),
            ))
        }
        // Entries after ours that are pins and unpins (an operator's) leave
        // us the primary producer; an announcement is another producer's.
        (Some(a), Some(n)) if n.seq > a.entry.seq => {
            pins_since(config, a.entry.seq)
                .await
                .map_err(|e| cycle_err(CycleStep::Mint, last_version + 1)(e.into()))?;
            Ok(newest)
        }
        // A log behind our own last entry was rewritten under us.
        (Some(a), Some(n)) if n.seq != a.entry.seq => {
            Err(cycle_err(CycleStep::Mint, last_version + 1)(
                AnnounceError::NotPrimary { seq: n.seq }.into(),
            ))
        }
        (Some(_), None) => Err(cycle_err(CycleStep::Mint, last_version + 1)(
            ProducerError::Restore {
                reason: "this producer announced before, but the store's log is empty".into(),
            }
            .into(),
        )),
        _ => Ok(newest),
    }
}

/// Step 2: hands the caller a [`Populate`] and returns the records it added,
/// one batch per type, in arenas in the work directory sized like the last
/// state's. (The populate state is not `Send`: it lives only inside this
/// synchronous function, never across an await.)
fn run_populate<F>(
    config: &Config,
    prev: Option<&[TypeState]>,
    version: u64,
    populate: F,
) -> Result<(Vec<Batch>, Tags), Error>
where
    F: FnOnce(&mut Populate<'_>) -> Result<(), Error>,
{
    let failed = cycle_err(CycleStep::Populate, version);
    let mut pop = Populate::new(config);
    if let Some(prev) = prev {
        pop.reserve_like(prev).map_err(|e| failed(e.into()))?;
    }
    populate(&mut pop).map_err(cycle_err(CycleStep::Populate, version))?;
    let tags = pop.take_tags();
    let batches = pop
        .into_batches()
        .map_err(cycle_err(CycleStep::Populate, version))?;
    Ok((batches, tags))
}

/// Step 3: identifies each type's records against its last announced
/// state; a duplicate primary key is an error naming the key.
fn identify(
    config: &Config,
    prev_types: &[TypeState],
    batches: Vec<Batch>,
    version: u64,
) -> Result<Vec<TypeDiff>, Error> {
    let mut diffs = Vec::with_capacity(config.types.len());
    for ((t, batch), prev) in config.types.iter().zip(batches).zip(prev_types) {
        let diff = state::identify(t.info.type_id, prev, batch, t.key.is_some()).map_err(|e| {
            cycle_err(CycleStep::Identify, version)(match e {
                IdentifyError::Duplicate(key) => ProducerError::DuplicateKey {
                    type_name: t.info.name.clone(),
                    key: state::render_key(t.key.as_ref(), &key),
                }
                .into(),
                IdentifyError::Scratch(e) => e.into(),
            })
        })?;
        diffs.push(diff);
    }
    Ok(diffs)
}

/// What each type's diff changed, as validators and reports see it; a
/// type the cycle drops appears with all its records removed.
fn changes(
    config: &Config,
    prev_types: &[TypeState],
    diffs: &[TypeDiff],
    unregistered: &[UnregisteredType],
) -> Vec<TypeChange> {
    config
        .types
        .iter()
        .zip(diffs)
        .zip(prev_types)
        .map(|((t, d), prev)| TypeChange {
            type_name: t.info.name.clone(),
            records_before: prev.count,
            records_after: d.next.count,
            added: d.added.len() as u32,
            changed: d.changed.len() as u32,
            removed: d.removed.len() as u32,
        })
        .chain(unregistered.iter().map(|u| TypeChange {
            type_name: u.name.clone(),
            records_before: u.state.count,
            records_after: 0,
            added: 0,
            changed: 0,
            removed: u.state.count,
        }))
        .collect()
}

/// Step 5: runs the count validators, then the record validators, each in
/// order; the first refusal stops the cycle.
pub(super) fn validate(
    config: &Config,
    version: u64,
    changes: &[TypeChange],
    diffs: &[Changed<'_>],
) -> Result<(), Error> {
    let refused = |validator: &str, reason| {
        cycle_err(CycleStep::Validate, version)(
            ProducerError::Validation {
                validator: validator.to_string(),
                version,
                reason,
            }
            .into(),
        )
    };
    for v in &config.validators {
        v.validate(version, changes)
            .map_err(|reason| refused(v.name(), reason))?;
    }
    if config.record_validators.is_empty() {
        return Ok(());
    }
    let cycle = CycleDiff {
        version,
        changes,
        types: &config.types,
        diffs,
    };
    blocking(|| {
        for v in &config.record_validators {
            v.validate(&cycle)
                .map_err(|reason| refused(v.name(), reason))?;
        }
        Ok(())
    })
}

/// A blob of the cycle as stored (compressed or not), spooled.
pub(super) struct Stored {
    name: BlobName,
    /// Its size as mapped (decompressed).
    raw_bytes: u64,
    /// The object to put in the store, in its spool file.
    object: Spool,
}

/// Step 6: writes the blobs and publishes them. A name already taken is
/// an orphan of a cycle that died before announcing: the version is bumped
/// past it and the blobs rewritten (at most 16 times). Returns the version
/// published and its blobs.
pub(super) async fn write_and_publish(
    config: &Config,
    mut req: WriteRequest<'_>,
) -> Result<(u64, Vec<Stored>), Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let version = req.version;
        // Each blob is compressed here, spool to spool, so the puts, the
        // announcement's byte counts and the report all see the stored
        // objects. A raw spool is dropped (freed) once compressed.
        let written = blocking(|| {
            write_blobs(config, &req)?
                .into_iter()
                .map(|(name, raw)| {
                    Ok(Stored {
                        name,
                        raw_bytes: raw.len(),
                        object: raw.compressed(config.compression, &config.work_dir)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .map_err(cycle_err(CycleStep::WriteBlobs, version))?;
        match publish(config, &written).await {
            Ok(()) => return Ok((version, written)),
            Err(Error::Store(StoreError::AlreadyExists { name })) if attempts < 16 => {
                tracing::warn!(
                    version,
                    blob = %name,
                    "blob name already taken (an orphan of an unannounced cycle); bumping the version"
                );
                req.version += 1;
            }
            Err(e) => return Err(cycle_err(CycleStep::Publish, version)(e)),
        }
    }
}

/// Puts each blob create-only, deltas first. (On a local store, the file
/// writes and fsyncs run on tokio's blocking pool: see `blocking`.)
async fn publish(config: &Config, blobs: &[Stored]) -> Result<(), Error> {
    crate::failpoint::hit("before-publish");
    for Stored { name, object, .. } in blobs {
        put(&config.store, name, object).await?;
        crate::failpoint::hit(match name {
            BlobName::Delta(..) => "after-delta-put",
            BlobName::Reverse(..) => "after-reverse-put",
            _ => "after-snapshot-put",
        });
    }
    Ok(())
}

/// Puts one blob create-only from its spool: up to the store's part size
/// read into memory and sent as one put, above it as a multipart upload
/// fed one part at a time from the file and moved into place create-only
/// (`blobstore/upload.rs`), so that a blob of any size the store takes
/// goes up in bounded memory and a racing writer can never replace it.
async fn put(store: &BlobStore, name: &BlobName, object: &Spool) -> Result<(), Error> {
    let part = store.upload_options().part_size.max(1);
    let len = object.len();
    if len <= part as u64 {
        let bytes = blocking(|| object.read_chunk(0, len as usize))?;
        return Ok(store.create(name, vec![bytes]).await?);
    }
    let mut writer = store.writer(name);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(part as u64) as usize;
        let sent = match blocking(|| object.read_chunk(at, n)) {
            Ok(chunk) => writer.write(chunk).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(blob = %name, error = %abort, "cannot abort the upload; gc sweeps it");
            }
            return Err(e);
        }
        at += n as u64;
        crate::failpoint::hit("after-upload-part");
    }
    writer.finish().await?;
    Ok(())
}

/// Step 7: appends the announce entry of `version` after `newest`.
pub(super) async fn announce(
    config: &Config,
    dataset_id: DatasetId,
    newest: Option<&Announcement>,
    prev_entry: Option<&Announcement>,
    version: u64,
    with_snapshot: bool,
    blobs: &[Stored],
) -> Result<Announcement, Error> {
    // The stored sizes: what a consumer's plan fetches.
    let size_of = |kind: fn(&BlobName) -> bool| {
        blobs
            .iter()
            .find(|b| kind(&b.name))
            .map_or(0, |b| b.object.len())
    };
    let entry = Announcement {
        dataset_id,
        seq: newest.map_or(1, |n| n.seq + 1),
        kind: AnnounceKind::Announce,
        version,
        from_version: prev_entry.map_or(0, |e| e.version),
        snapshot_version: if with_snapshot {
            version
        } else {
            prev_entry.map_or(0, |e| e.snapshot_version)
        },
        has_snapshot: with_snapshot,
        pinned_version: newest.and_then(|n| n.pinned_version),
        producer_id: config.producer_id.clone(),
        timestamp_micros: config.clock.unix_micros(),
        snapshot_bytes: size_of(|n| matches!(n, BlobName::Snapshot(_))),
        delta_bytes: size_of(|n| matches!(n, BlobName::Delta(..))),
        reverse_bytes: size_of(|n| matches!(n, BlobName::Reverse(..))),
    };
    crate::failpoint::hit("before-announce");
    let mut entry = entry;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match config.log.append(&entry).await {
            Ok(()) => break,
            // The seq was taken: by an operator's pin or unpin, written
            // during this cycle, we announce after it and keep the pin; by
            // another producer's announcement, we are not the primary.
            Err(AnnounceError::NotPrimary { seq }) if attempts < MAX_ANNOUNCE_ATTEMPTS => {
                let pins = pins_since(config, seq - 1)
                    .await
                    .map_err(|e| cycle_err(CycleStep::Announce, version)(e.into()))?;
                let Some(last) = pins.last() else {
                    return Err(cycle_err(CycleStep::Announce, version)(
                        AnnounceError::NotPrimary { seq }.into(),
                    ));
                };
                tracing::info!(
                    version,
                    seq = last.seq,
                    kind = last.kind.as_str(),
                    "an operator's entry was written during the cycle; announcing after it"
                );
                entry.seq = last.seq + 1;
                entry.pinned_version = last.pinned_version;
            }
            Err(e) => return Err(cycle_err(CycleStep::Announce, version)(e.into())),
        }
    }
    tracing::info!(version, seq = entry.seq, "announced");
    Ok(entry)
}

/// How many times the announce step appends after operators' entries
/// before it gives up (each retry needs another pin or unpin written
/// during the previous attempt).
const MAX_ANNOUNCE_ATTEMPTS: u32 = 16;

/// The log's entries after `seq`, provided they are all pins and unpins (an
/// operator's entries); [`AnnounceError::NotPrimary`] naming the first
/// announcement among them otherwise, whoever wrote it: every announcement
/// after this producer's own is another producer's.
async fn pins_since(config: &Config, seq: u64) -> Result<Vec<Announcement>, AnnounceError> {
    let entries = config.log.entries_from(seq + 1).await?;
    if let Some(other) = entries.iter().find(|e| e.kind == AnnounceKind::Announce) {
        return Err(AnnounceError::NotPrimary { seq: other.seq });
    }
    Ok(entries)
}
