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
//! With `--incremental`, step 3 is an incremental cycle on the last
//! announced version (`Producer::run_incremental_cycle`): the file's
//! records are upserts (records not in it stay), and `--deletes FILE`
//! names keys to delete (only each line's key fields are read). A key both
//! upserted and deleted is refused, and a store with nothing published
//! yet is refused: the first version is a whole dataset.
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
    /// Each key's encoded bytes and the line it is on.
    seen: HashMap<Vec<u8>, u64>,
}

impl Records {
    fn each(&self) -> impl Iterator<Item = &[u64]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.words[s..e])
    }
}

/// Reads and checks every record of `path` (of `format`); with
/// `keys_only`, only the key fields of each line are read (a deletes
/// file).
fn read_records(
    cfg: &PublishConfig,
    loaded: &schema::RecordSchema,
    path: &std::path::Path,
    format: crate::config::InputFormat,
    keys_only: bool,
) -> Result<Records> {
    let name = path.display().to_string();
    let type_id = loaded.info.type_id;
    let builder = RecordBuilder::new(
        &loaded.dynamic,
        type_id,
        BuildOptions {
            ignore_unknown_fields: cfg.ignore_unknown_fields,
            scalars_from_strings: format == crate::config::InputFormat::Csv,
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
        seen: HashMap::new(),
    };
    let mut key = Vec::new();
    let mut reader = input::open(path)?;
    input::read(&name, &mut *reader, format, &mut |mut line| {
        let number = line.number;
        if keys_only {
            if let Some(object) = line.value.as_object_mut() {
                object.retain(|field, _| cfg.key.contains(field));
            }
        }
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
    records.seen = seen;
    Ok(records)
}

pub async fn run(cfg: &PublishConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let where_ = store.description().to_string();
    let progress = Progress::new();
    progress.set(&format!("loading schema {}...", cfg.schema.display()));
    let loaded = schema::load(cfg)?;
    progress.set(&format!("reading {}...", cfg.input.display()));
    let records = read_records(cfg, &loaded, &cfg.input, cfg.format, false)?;
    let count = records.ends.len();
    let deletes = match &cfg.deletes {
        Some((path, format)) => {
            progress.set(&format!("reading {}...", path.display()));
            let deletes = read_records(cfg, &loaded, path, *format, true)?;
            // A key both upserted and deleted is ambiguous: refused.
            for (key, line) in &deletes.seen {
                if let Some(upsert_line) = records.seen.get(key) {
                    bail!(
                        "{}:{line}: deletes a key that {}:{upsert_line} upserts; give each \
                         key once",
                        path.display(),
                        cfg.input.display()
                    );
                }
            }
            Some(deletes)
        }
        None => None,
    };

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
    let report = if cfg.incremental {
        if restored.is_none() {
            bail!(
                "--incremental needs a published version to change, and store {where_} has \
                 none: publish the whole dataset first (without --incremental)"
            );
        }
        progress.set(&format!("publishing {count} upserts..."));
        producer
            .run_incremental_cycle(|inc| {
                for words in records.each() {
                    inc.upsert_canonical(type_id, words)?;
                }
                for words in deletes.iter().flat_map(Records::each) {
                    inc.delete_canonical(type_id, words)?;
                }
                Ok(())
            })
            .await
            .context("the incremental cycle failed; nothing was announced")?
    } else {
        progress.set(&format!("publishing {count} records..."));
        producer
            .run_cycle(|p| {
                for words in records.each() {
                    p.add_canonical(type_id, words)?;
                }
                Ok(())
            })
            .await
            .context("the cycle failed; nothing was announced")?
    };
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
            "incremental": cfg.incremental,
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
        let what = match &deletes {
            _ if !cfg.incremental => "records".to_string(),
            Some(d) => format!("upserts and {} deletes", d.ends.len()),
            None => "upserts".to_string(),
        };
        out.line(&format!(
            "published version {} of {where_}: {count} {type_name} {what} ({added} added, \
             {changed} changed, {removed} removed); {blobs}; {}",
            report.version,
            output::duration(report.total_time)
        ))?;
    } else {
        out.line(&format!(
            "no change: version {} of {where_} already holds these {count} records{}",
            report.version,
            if cfg.incremental {
                " (and not the deleted keys)"
            } else {
                ""
            }
        ))?;
    }
    Ok(())
}
