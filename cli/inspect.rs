//! `burrow inspect <VERSION>`: one blob of an announced version, read the
//! way a consumer reads it (envelope and checksum first), shown as its
//! envelope, header and per-type counts (for a delta, whether it drops
//! the type). A snapshot's key indexes are
//! checked against their types' offsets ([`KeyIndex::check`]) on the way,
//! and the blob's dataset id against the announcement's (a blob of another
//! dataset is an error naming both ids). A blob stored as a zstd frame is
//! decompressed first; both sizes are shown (`stored_bytes`, `bytes`).

use crate::args::BlobArg;
use crate::config::InspectConfig;
use crate::output::{self, Align, Out, Table};
use anyhow::{anyhow, bail, Context, Result};
use burrow::announcer::AnnouncementLog;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::schema::blob::OpenBlob;
use burrow::schema::key_index::KeyIndex;
use serde_json::{json, Value};
use std::sync::Arc;

/// Which blob of `version` to show, checked against its announcement.
fn pick(cfg: &InspectConfig, version: u64, from: u64, has_snapshot: bool) -> Result<BlobName> {
    let blob = cfg.blob.unwrap_or(if has_snapshot {
        BlobArg::Snapshot
    } else {
        BlobArg::Delta
    });
    Ok(match blob {
        BlobArg::Snapshot if !has_snapshot => {
            bail!("version {version} has no snapshot; try --blob delta")
        }
        BlobArg::Snapshot => BlobName::Snapshot(version),
        BlobArg::Delta | BlobArg::Reverse if from == 0 => bail!(
            "version {version} starts its chain, so it has no delta or reverse delta; try \
             --blob snapshot"
        ),
        BlobArg::Delta => BlobName::Delta(from, version),
        BlobArg::Reverse => BlobName::Reverse(version, from),
    })
}

pub async fn run(cfg: &InspectConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let log = AnnouncementLog::new(store.clone());
    let Some(newest) = log.latest().await? else {
        bail!(
            "nothing has been announced in store {}, so there is no version {}",
            store.description(),
            cfg.version
        );
    };
    let Some(entry) = log.find_version(&newest, cfg.version).await? else {
        bail!(
            "version {} was never announced in store {} (newest is {}; see `burrow versions`)",
            cfg.version,
            store.description(),
            newest.version
        );
    };
    let name = pick(cfg, entry.version, entry.from_version, entry.has_snapshot)?;
    let stored = store.get(&name).await?;
    let stored_len = stored.len() as u64;
    let compressed = burrow::blobstore::compress::is_compressed(&stored);
    let bytes = burrow::blobstore::compress::decode_stored(stored, &name.to_string(), u64::MAX)
        .with_context(|| format!("{name} failed its checks"))?;
    let blob = Arc::new(
        OpenBlob::from_bytes(&bytes, &name.to_string())
            .with_context(|| format!("{name} failed its checks"))?,
    );
    burrow::schema::blob::check_dataset(&blob, entry.dataset_id)
        .with_context(|| format!("{name} does not belong to the log's dataset"))?;
    let env = *blob.envelope();
    let envelope = json!({
        "kind": env.kind.as_str(),
        "from_version": env.from_version,
        "to_version": env.to_version,
        "body_bytes": env.body_len,
        "checksum_xxh3_128": format!("{:032x}", env.checksum),
    });
    let (header, types, table) = match name {
        BlobName::Snapshot(_) => {
            let (header, sections) = blob.snapshot()?;
            let mut table = Table::new(&[
                ("TYPE", Align::Left),
                ("RECORDS", Align::Right),
                ("ORDINAL_LIMIT", Align::Right),
                ("RECORD_BYTES", Align::Right),
                ("KEY_SLOTS", Align::Right),
                ("KEY", Align::Left),
            ]);
            let types = sections
                .iter()
                .map(|s| {
                    let index = KeyIndex::new(s.key_index.get());
                    let entries = if s.key_fields.is_empty() {
                        0
                    } else {
                        index
                            .check(s.ordinal_limit, |o| s.is_present(o), s.record_count)
                            .map_err(|reason| anyhow!("{name}: {}: {reason}", s.name))?
                    };
                    table.row(vec![
                        s.name.clone(),
                        s.record_count.to_string(),
                        s.ordinal_limit.to_string(),
                        output::bytes(struct_bytes(s)),
                        index.slots().to_string(),
                        s.key_fields.join(", "),
                    ]);
                    Ok(json!({
                        "name": s.name,
                        "type_id": format!("{:#018x}", s.type_id),
                        "records": s.record_count,
                        "ordinal_limit": s.ordinal_limit,
                        "record_bytes": struct_bytes(s),
                        "key_index_slots": index.slots(),
                        "key_index_entries": entries,
                        "key_fields": s.key_fields,
                    }))
                })
                .collect::<Result<Vec<Value>>>()?;
            (header, types, table)
        }
        _ => {
            let (header, sections) = blob.delta()?;
            let mut table = Table::new(&[
                ("TYPE", Align::Left),
                ("REMOVED", Align::Right),
                ("SET", Align::Right),
                ("SET_BYTES", Align::Right),
                ("RECORDS_AFTER", Align::Right),
                ("ORDINAL_LIMIT_AFTER", Align::Right),
                ("DROPPED", Align::Left),
                ("KEY", Align::Left),
            ]);
            let types: Vec<Value> = sections
                .iter()
                .map(|s| {
                    table.row(vec![
                        s.name.clone(),
                        s.removed.get().len().to_string(),
                        s.ordinals.get().len().to_string(),
                        output::bytes(lists_bytes(&s.lists)),
                        s.record_count_after.to_string(),
                        s.ordinal_limit_after.to_string(),
                        if s.dropped { "yes" } else { "no" }.to_string(),
                        s.key_fields.join(", "),
                    ]);
                    json!({
                        "name": s.name,
                        "type_id": format!("{:#018x}", s.type_id),
                        "removed": s.removed.get().len(),
                        "set": s.ordinals.get().len(),
                        "set_bytes": lists_bytes(&s.lists),
                        "records_after": s.record_count_after,
                        "ordinal_limit_after": s.ordinal_limit_after,
                        "dropped": s.dropped,
                        "key_fields": s.key_fields,
                    })
                })
                .collect();
            (header, types, table)
        }
    };
    if out.json {
        let tags: serde_json::Map<String, Value> = header
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        return Ok(out.json(&json!({
            "blob": name.to_string(),
            "bytes": blob.len(),
            "stored_bytes": stored_len,
            "stored_as": if compressed { "zstd" } else { "raw" },
            "envelope": envelope,
            "header": {
                "dataset_id": header.dataset_id.to_string(),
                "from_version": header.from_version,
                "to_version": header.to_version,
                "producer": header.producer_id,
                "cycle_start_micros": header.cycle_start_micros,
                "cycle_start": output::utc(header.cycle_start_micros),
                "schema_hash": format!("{:016x}", header.schema_hash),
                "schema_nodes": header.node_count,
                "tags": tags,
            },
            "types": types,
        }))?);
    }
    let tags = if header.tags.is_empty() {
        "-".to_string()
    } else {
        header
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut head = Table::new(&[("FIELD", Align::Left), ("VALUE", Align::Left)]);
    for (field, value) in [
        ("blob", format!("{name} ({})", output::bytes(blob.len()))),
        (
            "stored",
            format!(
                "{} ({})",
                output::bytes(stored_len),
                if compressed { "zstd frame" } else { "raw" }
            ),
        ),
        ("kind", env.kind.as_str().to_string()),
        (
            "versions",
            format!("{} -> {}", env.from_version, env.to_version),
        ),
        ("body length", format!("{} bytes", env.body_len)),
        (
            "checksum",
            format!("xxh3-128 {:032x} (verified)", env.checksum),
        ),
        ("dataset", header.dataset_id.to_string()),
        ("producer", header.producer_id.clone()),
        ("cycle start", output::utc(header.cycle_start_micros)),
        (
            "schema",
            format!(
                "hash {:016x}, {} nodes",
                header.schema_hash, header.node_count
            ),
        ),
        ("tags", tags),
    ] {
        head.row(vec![field.to_string(), value]);
    }
    head.write(out)?;
    out.line("")?;
    table.write(out)?;
    Ok(())
}

/// The bytes of a type's record structs (its struct lists; the texts and
/// lists the records point to are not counted).
fn struct_bytes(s: &burrow::schema::blob::SnapshotSection) -> u64 {
    lists_bytes(&s.lists)
}

/// The bytes of the structs in `lists`.
fn lists_bytes(lists: &burrow::schema::blob::RecordLists) -> u64 {
    (u64::from(lists.data) + u64::from(lists.ptrs)) * 8 * u64::from(lists.len)
}
