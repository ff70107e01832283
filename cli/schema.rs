//! `burrow schema [--capnp] [BLOB_FILE]`: the dataset's record types as
//! Cap'n Proto source ([`burrow::schema::capnp_text`]): alone, as their
//! authors wrote them ([`dataset_schema`]), or with `--capnp` inside the
//! file that decodes whole blob bodies ([`blob_schema`]). Read from the
//! store's latest snapshot (the nearest snapshot at or below the newest
//! announced version) or from one blob file: a consumer's cache file or a
//! stored object, decompressed first if it is a zstd frame. The blob is
//! checked (envelope and checksum) before its header is read; without
//! `--capnp` the store's snapshot comes through the explorer's own cache
//! ([`burrow::explore::Explorer`]). With `--json`, one object holding the
//! blob's name and the file's text.

use crate::output::Out;
use anyhow::{bail, Context, Result};
use burrow::announcer::AnnouncementLog;
use burrow::blobstore::compress::decode_stored;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::schema::blob::OpenBlob;
use burrow::schema::capnp_text::{blob_schema, dataset_schema};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

/// Prints the dataset's own types, from the newest version's snapshot
/// fetched through the explorer's cache.
pub async fn dataset_from_store(store: BlobStore, cache: &Path, out: &mut Out) -> Result<()> {
    let explorer = burrow::explore::Explorer::open(store, cache).await?;
    let blob = explorer.latest_snapshot().await?;
    explorer.trim_cache();
    print(&blob, false, out)
}

/// Prints the schema of the store's latest snapshot.
pub async fn from_store(store: BlobStore, out: &mut Out) -> Result<()> {
    let log = AnnouncementLog::new(store.clone());
    let Some(latest) = log.latest().await? else {
        bail!(
            "nothing has been announced in store {}, so there is no snapshot to read types from",
            store.description()
        );
    };
    if latest.snapshot_version == 0 {
        bail!(
            "store {}: the newest announcement (version {}) names no snapshot",
            store.description(),
            latest.version
        );
    }
    let name = BlobName::Snapshot(latest.snapshot_version);
    let stored = store
        .get(&name)
        .await
        .with_context(|| format!("cannot read {name} from store {}", store.description()))?;
    let blob = open(stored, &name.to_string())?;
    burrow::schema::blob::check_dataset(&blob, latest.dataset_id)
        .with_context(|| format!("{name} does not belong to the log's dataset"))?;
    print(&blob, true, out)
}

/// Prints the schema of the blob in `path`: with `capnp`, the file that
/// decodes it.
pub async fn from_file(path: &Path, capnp: bool, out: &mut Out) -> Result<()> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let blob = open(Bytes::from(bytes), &path.display().to_string())?;
    print(&blob, capnp, out)
}

/// The blob in `stored` (decompressed if it is a zstd frame), checked.
fn open(stored: Bytes, name: &str) -> Result<Arc<OpenBlob>> {
    let bytes = decode_stored(stored, name, u64::MAX)
        .with_context(|| format!("{name} is not a readable blob"))?;
    let blob = OpenBlob::from_bytes(&bytes, name)
        .with_context(|| format!("{name} is not a readable blob"))?;
    Ok(Arc::new(blob))
}

fn print(blob: &Arc<OpenBlob>, capnp: bool, out: &mut Out) -> Result<()> {
    let text = if capnp {
        blob_schema(blob)?
    } else {
        dataset_schema(blob)?
    };
    if out.json {
        let header = blob.header()?;
        out.json(&serde_json::json!({
            "blob": blob.name(),
            "kind": blob.envelope().kind.as_str(),
            "dataset_id": header.dataset_id.to_string(),
            "schema_hash": format!("{:016x}", header.schema_hash),
            "capnp": text,
        }))?;
    } else {
        out.line(text.trim_end_matches('\n'))?;
    }
    Ok(())
}
