//! Restore: rebuilding the producer's last announced state from the store,
//! so that a restarted producer's next cycle is a delta on the chain.
//!
//! The state is read back from the blobs that a consumer would load for
//! the newest announced version, and each type's records get back the
//! ordinals they had, so the next delta names the same ordinals a
//! consumer holds.
//!
//! The blobs are chosen by the consumer's planning ([`plan::plan`]) and
//! the state is built with the consumer's [`ReadState`], so restore reaches
//! every version a consumer reaches: a snapshot that is corrupt or missing
//! is added to a failed set and the plan is made again, going through an
//! older snapshot and the deltas after it. A restore that had to go around
//! a bad snapshot makes the next cycle write a fresh one.
//!
//! Before it reads the log, restore sweeps the leftovers of interrupted
//! writes older than the producer's grace period ([`crate::gc`]).
//!
//! The restored producer keeps the log's dataset id. Every blob is checked
//! against it before it is used: a blob of another dataset (a name that a
//! recreated store's old dataset left behind) is bad, and planned around
//! like a corrupt one.

use super::blocking::blocking;
use super::builder::Config;
use super::builder::RegisteredType;
use super::state::{Batch, TypeState, UnregisteredType};
use super::{Announced, CycleStamp, Producer, ProducerError};
use crate::announcer::Announcement;
use crate::blobstore::BlobName;
use crate::consumer::{plan, Plan, ReadState, Step, TypeData};
use crate::error::{Error, FormatError};
use crate::schema::blob::{check_dataset, OpenBlob};
use crate::schema::checksum;
use crate::schema::dataset_id::check_same;
use crate::schema::evolve;
use crate::schema::record::KeyBuf;
use crate::schema::DatasetId;
use std::collections::HashSet;
use std::sync::Arc;

impl Producer {
    /// Rebuilds the last announced state from the store so that the next
    /// cycle is a delta on the chain. Returns the restored version, or
    /// `None` if nothing was announced yet (the next cycle then starts a
    /// chain with a snapshot).
    pub async fn restore(&self) -> Result<Option<u64>, Error> {
        let mut guard = self.announced.lock().await;
        let config = &*self.config;
        sweep_leftovers(config).await;
        let Some(newest) = config.log.latest().await? else {
            *guard = None;
            return Ok(None);
        };
        // A producer given its dataset's id restores only that dataset.
        if let Some(expected) = config.dataset_id {
            check_same(
                &BlobName::Announce(newest.seq).to_string(),
                expected,
                newest.dataset_id,
            )?;
        }
        // The newest *announce* entry holds the producer's state; pins only
        // move consumers.
        let head = config
            .log
            .find_version(&newest, newest.version)
            .await?
            .ok_or_else(|| ProducerError::Restore {
                reason: format!("no announce entry for version {}", newest.version),
            })?;
        let (read, restored) = load(config, &newest, &head).await?;
        let (types, unregistered) = blocking(|| {
            let types = config
                .types
                .iter()
                .map(|t| restore_type(config, t, &read))
                .collect::<Result<Vec<_>, Error>>()?;
            let unregistered = read
                .types()
                .iter()
                .filter(|d| !config.types.iter().any(|t| t.info.type_id == d.type_id()))
                .map(|d| restore_unregistered(config, d, &restored.last_blob))
                .collect::<Result<Vec<_>, Error>>()?;
            check_restored(
                config,
                &read,
                restored.last_blob.name(),
                &types,
                &unregistered,
            )?;
            Ok::<_, Error>((types, unregistered))
        })?;
        let version = head.version;
        // The state's own cycle, from the header of the (snapshot or
        // forward delta) blob that made it.
        let header = read.header();
        let cycle = CycleStamp {
            start_micros: header.cycle_start_micros,
            tags: header.tags.clone(),
        };
        *guard = Some(Announced {
            entry: Announcement {
                seq: newest.seq,
                pinned_version: newest.pinned_version,
                ..head
            },
            cycles_since_snapshot: restored.cycles_since_snapshot(config),
            types,
            unregistered,
            cycle,
        });
        tracing::info!(
            version,
            snapshot = restored.snapshot,
            deltas = restored.deltas,
            "restored"
        );
        Ok(Some(version))
    }
}

/// Deletes the leftovers of interrupted writes older than the configured
/// grace (a producer killed mid-write leaves them; a restart is when they
/// are found). Housekeeping: a failure is logged and counted
/// (`burrow_producer_sweep_failures_total`), never a failed restore, and
/// `burrow verify` lists what is left.
async fn sweep_leftovers(config: &Config) {
    match crate::gc::sweep_leftovers(&config.store, config.leftover_grace).await {
        Ok(deleted) if !deleted.is_empty() => {
            tracing::info!(
                deleted = deleted.len(),
                "restore swept leftovers of interrupted writes"
            );
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "could not sweep leftovers of interrupted writes");
            metrics::counter!("burrow_producer_sweep_failures_total").increment(1);
        }
    }
}

/// Which blobs a restore loaded.
struct Restored {
    /// The snapshot it started from.
    snapshot: u64,
    /// The deltas applied on it.
    deltas: u32,
    /// Whether that snapshot is the one the head entry names.
    named_snapshot: bool,
    /// The blob of the head version (the plan's last): its header's schema
    /// nodes describe every type the state holds.
    last_blob: Arc<OpenBlob>,
}

impl Restored {
    /// Cycles since the last snapshot, as the next cycle counts them: a
    /// restore that went around the named snapshot (it is bad) makes the
    /// next cycle write one, so consumers do not have to go around it too.
    fn cycles_since_snapshot(&self, config: &Config) -> u32 {
        if self.named_snapshot {
            self.deltas
        } else {
            config.snapshot_every.saturating_sub(1)
        }
    }
}

/// Loads the state of `head` (an announce entry) the way a consumer with no
/// state would, planning again around every blob found corrupt or missing
/// until a plan succeeds or none is left.
async fn load(
    config: &Config,
    newest: &Announcement,
    head: &Announcement,
) -> Result<(ReadState, Restored), Error> {
    let mut failed: HashSet<BlobName> = HashSet::new();
    let mut last_error: Option<Error> = None;
    loop {
        let plan = plan::plan(&config.log, newest, head, None, &failed, false).await?;
        let Some(plan) = plan else {
            let mut bad: Vec<String> = failed.iter().map(ToString::to_string).collect();
            bad.sort();
            return Err(ProducerError::Restore {
                reason: format!(
                    "no usable path of blobs reaches version {} (unusable: {}; last error: {})",
                    head.version,
                    bad.join(", "),
                    last_error.map_or_else(|| "none".to_string(), |e| e.to_string()),
                ),
            }
            .into());
        };
        match apply_plan(config, &plan, newest.dataset_id).await {
            Ok((state, last_blob)) => {
                let snapshot = match plan.steps.first() {
                    Some(Step::Snapshot(v)) => *v,
                    _ => 0,
                };
                let restored = Restored {
                    snapshot,
                    deltas: plan.steps.len().saturating_sub(1) as u32,
                    named_snapshot: snapshot == head.snapshot_version,
                    last_blob,
                };
                return Ok((state, restored));
            }
            Err((blob, error)) if crate::consumer::plan::is_bad_blob(&error) => {
                tracing::warn!(%blob, %error, "restore: blob is bad; planning around it");
                failed.insert(blob);
                last_error = Some(error);
            }
            Err((_, error)) => return Err(error),
        }
    }
}

/// Fetches, verifies and applies each blob of `plan` (a plan from no
/// state: a snapshot, then deltas). Returns the state and the last blob.
/// On failure, names the blob.
async fn apply_plan(
    config: &Config,
    plan: &Plan,
    dataset_id: DatasetId,
) -> Result<(ReadState, Arc<OpenBlob>), (BlobName, Error)> {
    let mut state: Option<(ReadState, Arc<OpenBlob>)> = None;
    for step in &plan.steps {
        let name = step.blob();
        let result = async {
            let bytes = config.store.get_blob(&name).await?;
            // Verifying the checksum and applying a delta are CPU work.
            blocking(|| {
                let blob = Arc::new(OpenBlob::from_bytes(&bytes, &name.to_string())?);
                // Restore walks every record: prove the layout first.
                blob.check_contents()?;
                // A blob of another dataset than the log's is bad, whatever
                // its name says: plan around it.
                check_dataset(&blob, dataset_id)?;
                let next = match (*step, &state) {
                    (Step::Snapshot(v), _) => ReadState::from_snapshot(blob.clone(), v),
                    (Step::Delta(a, b), Some((base, _))) => base.apply(blob.clone(), a, b),
                    _ => Err(ProducerError::Restore {
                        reason: format!("the plan applies {name} to no state"),
                    }
                    .into()),
                }?;
                check_schema(config, &blob, &next)?;
                Ok::<_, Error>((next, blob))
            })
        }
        .await;
        match result {
            Ok(next) => state = Some(next),
            Err(e) => return Err((name, e)),
        }
    }
    state.ok_or_else(|| {
        (
            BlobName::Snapshot(0),
            ProducerError::Restore {
                reason: "the plan has no steps".into(),
            }
            .into(),
        )
    })
}

/// Checks that this producer's schema (generated code, or nodes given at
/// run time) continues the schema of
/// each registered type `blob` carries ([`evolve::Rule::Continue`]: the
/// same schema or a compatible evolution of it), with the key the chain
/// names. An incompatible change fails the restore with
/// [`crate::Error::Schema`], naming the type, the field and the change.
fn check_schema(config: &Config, blob: &OpenBlob, state: &ReadState) -> Result<(), Error> {
    // The nodes every blob of this producer carries: its types' generated
    // nodes, or the nodes a type registered at run time was given.
    let messages = config.schema.node_messages();
    let ours = evolve::node_map(&messages);
    let types: Vec<(u64, Vec<String>)> = config
        .types
        .iter()
        .filter_map(|t| {
            let data = state.raw_type(t.info.type_id)?;
            Some((t.info.type_id, data.key_fields().to_vec()))
        })
        .collect();
    evolve::check_blob(blob, &ours, &types, evolve::Rule::Continue)
}

/// Checks each restored type's records against the state checksum the
/// last blob's header claims for it (blobs written before state checksums
/// claim none).
fn check_restored(
    config: &Config,
    read: &ReadState,
    blob: &str,
    types: &[TypeState],
    unregistered: &[UnregisteredType],
) -> Result<(), Error> {
    let registered = types
        .iter()
        .zip(&config.types)
        .filter(|(s, _)| s.present)
        .map(|(s, t)| (t.info.type_id, t.info.name.as_str(), s.checksum));
    let others = unregistered
        .iter()
        .map(|u| (u.type_id, u.name.as_str(), u.state.checksum));
    for (type_id, name, sum) in registered.chain(others) {
        if let Some(claimed) = read.header().type_checksum(type_id, blob)? {
            if claimed != sum {
                return Err(checksum::mismatch(
                    blob,
                    name,
                    claimed,
                    sum,
                    "the restored records' sum",
                )
                .into());
            }
        }
    }
    Ok(())
}

/// The state of a type this producer does not register, so that its next
/// cycle can drop it and write the reverse delta that re-creates it. Keys
/// are read by the schema node `blob`'s header carries (there is no
/// generated code for the type here).
fn restore_unregistered(
    config: &Config,
    data: &TypeData,
    blob: &Arc<OpenBlob>,
) -> Result<UnregisteredType, Error> {
    let keyed = !data.key_fields().is_empty();
    let node_key = if keyed {
        Some(blob.node_key(data.type_id(), data.key_fields())?)
    } else {
        None
    };
    let state = read_back(config, data, keyed, |o, words, key| match &node_key {
        Some(node_key) => node_key.encode(words, key).map_err(|reason| {
            FormatError::Corrupt {
                blob: blob.name().to_string(),
                reason: format!("{}: key of ordinal {o}: {reason}", data.name()),
            }
            .into()
        }),
        None => Ok(()),
    })?;
    Ok(UnregisteredType {
        type_id: data.type_id(),
        name: data.name().to_string(),
        key_fields: data.key_fields().to_vec(),
        state,
    })
}

fn restore_type(config: &Config, t: &RegisteredType, read: &ReadState) -> Result<TypeState, Error> {
    let keyed = t.key.is_some();
    let Some(section) = read.raw_type(t.info.type_id) else {
        // An incremental cycle may create it: its arenas go to the work
        // directory too.
        return Ok(TypeState::empty_in(keyed, &config.work_dir));
    };
    if section.key_fields() != t.key_fields.as_slice() {
        return Err(ProducerError::Restore {
            reason: format!(
                "{}: the store's key is {:?}, this producer's is {:?}",
                t.info.name,
                section.key_fields(),
                t.key_fields
            ),
        }
        .into());
    }
    let mut buf = KeyBuf::new();
    read_back(config, section, keyed, |o, words, key| {
        if let Some(spec) = &t.key {
            buf.clear();
            (t.key_of)(spec, words, &mut buf).map_err(|e| {
                FormatError::capnp(&t.info.name, &format!("record at ordinal {o}"), e)
            })?;
            key.extend_from_slice(buf.as_bytes());
        }
        Ok(())
    })
}

/// Reads every record of a type back with its ordinal, its key encoded by
/// `encode_key` (which appends it to the buffer it is given; it is called
/// only for a keyed type), into arenas in the work directory.
fn read_back(
    config: &Config,
    data: &TypeData,
    keyed: bool,
    mut encode_key: impl FnMut(u32, &[u64], &mut Vec<u8>) -> Result<(), Error>,
) -> Result<TypeState, Error> {
    let mut batch = Batch::in_dir(keyed, &config.work_dir);
    let mut ordinal_of = batch.arena("record ordinals");
    ordinal_of.reserve_exact(data.record_count() as usize)?;
    let mut words = Vec::new();
    let mut key = Vec::new();
    for o in 0..data.ordinal_limit() {
        words.clear();
        if !data.canonical_record(o, &mut words)? {
            continue;
        }
        key.clear();
        if keyed {
            encode_key(o, &words, &mut key)?;
        }
        let start = batch.words.len();
        batch.words.extend_from_slice(&words)?;
        batch.push(start, &key)?;
        ordinal_of.push(o)?;
    }
    Ok(TypeState::from_ordinals(
        data.type_id(),
        batch,
        ordinal_of,
        data.ordinal_limit(),
    )?)
}
