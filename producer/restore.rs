//! Restore: rebuilding the producer's last announced state from the store,
//! so that a restarted producer's next cycle is a delta on the chain.
//!
//! The state is read back from the blobs that a consumer would load for
//! the newest announced version, and each type's records get back the
//! ordinals they had, so the next delta names the same ordinals a
//! consumer holds.

use super::builder::RegisteredType;
use super::state::{Batch, TypeState};
use super::{Announced, Producer, ProducerError};
use crate::announcer::Announcement;
use crate::blobstore::BlobName;
use crate::error::{Error, FormatError};
use crate::schema::blob::OpenBlob;
use crate::schema::record::KeyBuf;
use std::sync::Arc;

impl Producer {
    /// Rebuilds the last announced state from the store so that the next
    /// cycle is a delta on the chain. Returns the restored version, or
    /// `None` if nothing was announced yet (the next cycle then starts a
    /// chain with a snapshot).
    pub async fn restore(&self) -> Result<Option<u64>, Error> {
        let mut guard = self.announced.lock().await;
        let config = &*self.config;
        let Some(newest) = config.log.latest().await? else {
            *guard = None;
            return Ok(None);
        };
        // The newest *announce* entry holds the producer's state; pins only
        // move consumers.
        let head = config
            .log
            .find_version(&newest, newest.version)
            .await?
            .ok_or_else(|| ProducerError::Restore {
                reason: format!("no announce entry for version {}", newest.version),
            })?;
        let chain = crate::consumer::chain_to(&config.log, &head, head.snapshot_version).await?;
        let fetch = |name: BlobName| async move {
            let bytes = config.store.get(&name).await?;
            Ok::<_, Error>(Arc::new(OpenBlob::from_bytes(&bytes, &name.to_string())?))
        };
        let snapshot = fetch(BlobName::Snapshot(head.snapshot_version)).await?;
        let mut read = crate::consumer::ReadState::from_snapshot(snapshot, head.snapshot_version)?;
        let mut deltas = 0;
        for link in chain.iter().skip(1) {
            let blob = fetch(BlobName::Delta(link.from_version, link.version)).await?;
            read = read.apply(blob, link.from_version, link.version)?;
            deltas += 1;
        }
        let mut types = Vec::with_capacity(config.types.len());
        for t in &config.types {
            types.push(restore_type(t, &read)?);
        }
        let version = head.version;
        *guard = Some(Announced {
            entry: Announcement {
                seq: newest.seq,
                pinned_version: newest.pinned_version,
                ..head
            },
            cycles_since_snapshot: deltas,
            types,
        });
        tracing::info!(version, "restored");
        Ok(Some(version))
    }
}

fn restore_type(t: &RegisteredType, read: &crate::consumer::ReadState) -> Result<TypeState, Error> {
    let keyed = t.key.is_some();
    let Some(section) = read.raw_type(t.info.type_id) else {
        return Ok(TypeState::empty(keyed));
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
    let mut batch = Batch::new(keyed);
    let mut ordinal_of = Vec::with_capacity(section.record_count() as usize);
    let mut key = KeyBuf::new();
    for o in 0..section.ordinal_limit() {
        let Some(words) = section.record_words(o)? else {
            continue;
        };
        let start = batch.words.len();
        batch.words.extend_from_slice(words);
        key.clear();
        if let Some(spec) = &t.key {
            (t.key_of)(spec, words, &mut key).map_err(|e| {
                FormatError::capnp(&t.info.name, &format!("record at ordinal {o}"), e)
            })?;
        }
        batch.push(start, key.as_bytes());
        ordinal_of.push(o);
    }
    Ok(TypeState::from_ordinals(
        batch,
        ordinal_of,
        section.ordinal_limit(),
    ))
}
