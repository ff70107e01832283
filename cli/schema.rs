//! `burrow schema --capnp [BLOB_FILE]`: the dataset's record types as a
//! Cap'n Proto schema file ([`burrow::schema::capnp_text`]), read from the
//! store's latest snapshot (the nearest snapshot at or below the newest
//! announced version) or from one blob file: a consumer's cache file or a
//! stored object, decompressed first if it is a zstd frame. The blob is
//! checked (envelope and checksum) before its header is read. With
//! `--json`, one object holding the blob's name and the file's text.

use crate::output::Out;
use anyhow::{bail, Context, Result};
use burrow::announcer::AnnouncementLog;
use burrow::blobstore::compress::decode_stored;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::schema::blob::OpenBlob;
use burrow::schema::capnp_text::blob_schema;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

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
    print(&blob, out)
}

/// Prints the schema of the blob in `path`.
pub async fn from_file(path: &Path, out: &mut Out) -> Result<()> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let blob = open(Bytes::from(bytes), &path.display().to_string())?;
    print(&blob, out)
}

/// The blob in `stored` (decompressed if it is a zstd frame), checked.
fn open(stored: Bytes, name: &str) -> Result<Arc<OpenBlob>> {
    let bytes = decode_stored(stored, name, u64::MAX)
        .with_context(|| format!("{name} is not a readable blob"))?;
    let blob = OpenBlob::from_bytes(&bytes, name)
        .with_context(|| format!("{name} is not a readable blob"))?;
    Ok(Arc::new(blob))
}

fn print(blob: &Arc<OpenBlob>, out: &mut Out) -> Result<()> {
    let text = blob_schema(blob)?;
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
