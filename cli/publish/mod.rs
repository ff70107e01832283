//! `burrow publish`: one producer cycle from a file, with no code.
//!
//! 1. The record type is loaded by its schema nodes ([`schema`]): a
//!    `.capnp` file compiled at run time, or a compiled schema.
//! 2. The whole file is read and checked before anything is published
//!    ([`input`]): each record built through the schema nodes
//!    (`burrow::schema::dynamic::RecordBuilder`), its key present and
//!    seen once. The first bad record stops the run with the file, line
//!    and field; nothing is announced.
//! 3. The producer (the type registered by its nodes,
//!    `ProducerBuilder::node_type`) restores from the store's log, as
//!    `demo` does, and runs one cycle with the records: the first run
//!    publishes a snapshot, each later run a delta on the same chain (or
//!    nothing, if the file holds the records already published). The
//!    file is the whole dataset: a record left out of it is removed.
//!
//! Records, keys, ordinals, blobs and the announcement are what a Rust
//! producer of generated code makes from the same values (the producer
//! canonicalizes both the same way; tests/cli_publish.rs compares them).

mod input;
mod schema;

use crate::config::PublishConfig;
use crate::output::{self, Out, Progress};
use anyhow::{bail, Context, Result};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::producer::ProducerBuilder;
use burrow::schema::dynamic::{BuildOptions, RecordBuilder};
use burrow::schema::record::KeySpec;
use serde_json::json;
use std::collections::HashMap;

/// The records of the file, checked: each built message and its line.
struct Records {
    /// Every record's message words, one after another.
    words: Vec<u64>,
    /// Per record: where its words end in `words`.
    ends: Vec<usize>,
}

/// Reads and checks every record of the input.
fn read_records(cfg: &PublishConfig, loaded: &schema::RecordSchema) -> Result<Records> {
    let name = cfg.input.display().to_string();
    let type_id = loaded.info.type_id;
    let builder = RecordBuilder::new(
        &loaded.dynamic,
        type_id,
        BuildOptions {
            ignore_unknown_fields: cfg.ignore_unknown_fields,
            scalars_from_strings: cfg.format == crate::config::InputFormat::Csv,
        },
    )?;
    let key_names: Vec<&str> = cfg.key.iter().map(String::as_str).collect();
    let spec = KeySpec::resolve(&loaded.info, &key_names)
        .with_context(|| format!("invalid --key {}", cfg.key.join(",")))?;
    let node_key = loaded
        .info
        .with_node(|node| burrow::schema::node_key::NodeKey::resolve(node, &cfg.key))?
        .map_err(|reason| anyhow::anyhow!("invalid --key {}: {reason}", cfg.key.join(",")))?;
    let mut seen: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut records = Records {
        words: Vec::new(),
        ends: Vec::new(),
    };
    let mut key = Vec::new();
    let mut reader = input::open(&cfg.input)?;
    input::read(&name, &mut *reader, cfg.format, &mut |line| {
        let number = line.number;
        if let Some(object) = line.value.as_object() {
            for field in &cfg.key {
                if object.get(field).is_none_or(serde_json::Value::is_null) {
                    bail!("{name}:{number}: missing key field {field}");
                }
            }
        }
        let words = builder
            .build(&line.value)
            .map_err(|e| anyhow::anyhow!("{name}:{number}: {e}"))?;
        key.clear();
        node_key
            .encode(&words, &mut key)
            .map_err(|reason| anyhow::anyhow!("{name}:{number}: its key: {reason}"))?;
        if let Some(first) = seen.insert(key.clone(), number) {
            bail!(
                "{name}:{number}: duplicate key {} (first on line {first})",
                spec.render(&key)
            );
        }
        records.words.extend_from_slice(&words);
        records.ends.push(records.words.len());
        Ok(())
    })?;
    Ok(records)
}

pub async fn run(cfg: &PublishConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let where_ = store.description().to_string();
    let progress = Progress::new();
    progress.set(&format!("loading schema {}...", cfg.schema.display()));
    let loaded = schema::load(cfg)?;
    progress.set(&format!("reading {}...", cfg.input.display()));
    let records = read_records(cfg, &loaded)?;
    let count = records.ends.len();

    let key_names: Vec<&str> = cfg.key.iter().map(String::as_str).collect();
    let type_id = loaded.info.type_id;
    let type_name = loaded.info.name.clone();
    let producer = ProducerBuilder::new(store)
        .producer_id(format!("burrow-publish-{}", std::process::id()))
        .node_type(loaded.info, &key_names)
        .compression(cfg.compression)
        .retention(cfg.gc.then(burrow::gc::RetentionPolicy::default))
        .build()?;
    progress.set("restoring the producer from the announcement log...");
    let restored = producer
        .restore()
        .await
        .with_context(|| format!("cannot restore the producer from store {where_}"))?;
    progress.set(&format!("publishing {count} records..."));
    let report = producer
        .run_cycle(move |p| {
            let mut start = 0;
            for &end in &records.ends {
                p.add_canonical(type_id, &records.words[start..end])?;
                start = end;
            }
            Ok(())
        })
        .await
        .context("the cycle failed; nothing was announced")?;
    // The announcement's retention run finishes before the process exits.
    producer.wait_for_gc().await;
    progress.clear();

    let (added, changed, removed) = report.changes.iter().fold((0, 0, 0), |acc, c| {
        (acc.0 + c.added, acc.1 + c.changed, acc.2 + c.removed)
    });
    // Sizes as mapped (decompressed), as `demo` reports them.
    let size =
        |pick: fn(&BlobName) -> bool| report.blobs.iter().find(|(n, _)| pick(n)).map(|&(_, s)| s);
    let snapshot = size(|n| matches!(n, BlobName::Snapshot(_)));
    let delta = size(|n| matches!(n, BlobName::Delta(..)));
    if out.json {
        out.json(&json!({
            "event": "publish",
            "type": type_name,
            "input": cfg.input.display().to_string(),
            "records": count,
            "version": report.version,
            "previous_version": restored,
            "published": report.published,
            "added": added,
            "changed": changed,
            "removed": removed,
            "snapshot_bytes": snapshot,
            "delta_bytes": delta,
            "producer_ms": output::millis(report.total_time),
        }))?;
    } else if report.published {
        let blobs = [("snapshot", snapshot), ("delta", delta)]
            .iter()
            .filter_map(|(what, s)| s.map(|s| format!("{what} {}", output::bytes(s))))
            .collect::<Vec<_>>()
            .join(", ");
        out.line(&format!(
            "published version {} of {where_}: {count} {type_name} records ({added} added, \
             {changed} changed, {removed} removed); {blobs}; {}",
            report.version,
            output::duration(report.total_time)
        ))?;
    } else {
        out.line(&format!(
            "no change: version {} of {where_} already holds these {count} records",
            report.version
        ))?;
    }
    Ok(())
}
