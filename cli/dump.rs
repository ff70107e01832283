//! `burrow dump`: a version's records as JSON lines, read through the
//! schema nodes its blobs carry ([`burrow::explore`]). Each line is the
//! record (or, with `--field`, the value of that field); with `--json`,
//! an object holding the version, type, ordinal, key and the record (or
//! `value`). The JSON mapping is [`burrow::schema::dynamic`]'s.

use crate::config::{DumpConfig, DumpSelect};
use crate::output::Out;
use anyhow::Result;
use burrow::blobstore::BlobStore;
use burrow::consumer::TypeData;
use burrow::explore::{ExploreError, Explorer, VersionView};
use serde_json::{json, Value};

pub async fn run(cfg: &DumpConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let explorer = Explorer::open(store, &cfg.cache).await?;
    let view = explorer.version(cfg.version).await?;
    let t = view.type_named(cfg.type_name.as_deref())?;
    let not_found = |what: String| ExploreError::NoRecord {
        type_name: t.name().to_string(),
        version: view.version(),
        what,
    };
    let limit = cfg.limit.unwrap_or(u64::MAX);
    match &cfg.select {
        DumpSelect::Key(key) => {
            let bytes = view.key_bytes(t, key)?;
            let o = view
                .find_key(t, &bytes)?
                .ok_or_else(|| not_found(format!("key {key:?}")))?;
            print(cfg, &view, t, o, out)?;
        }
        DumpSelect::Ordinal(o) => {
            if !print(cfg, &view, t, *o, out)? {
                return Err(not_found(format!("ordinal {o}")).into());
            }
        }
        DumpSelect::All => {
            let mut printed = 0;
            for o in 0..t.ordinal_limit() {
                if printed >= limit {
                    break;
                }
                if print(cfg, &view, t, o, out)? {
                    printed += 1;
                }
            }
        }
    }
    explorer.trim_cache();
    Ok(())
}

/// Prints the record at `o`; `false` for a hole.
fn print(
    cfg: &DumpConfig,
    view: &VersionView,
    t: &TypeData,
    o: u32,
    out: &mut Out,
) -> Result<bool> {
    let Some(record) = view.record(t, o)? else {
        return Ok(false);
    };
    let value = match &cfg.field {
        Some(path) => Some(view.record_path(t, o, path)?.unwrap_or(Value::Null)),
        None => None,
    };
    if out.json {
        let mut line = json!({
            "version": view.version(),
            "type": t.name(),
            "ordinal": o,
            "key": view.key_text(t, &record),
        });
        match value {
            Some(v) => line["value"] = v,
            None => line["record"] = record,
        }
        out.json(&line)?;
    } else {
        out.json(&value.unwrap_or(record))?;
    }
    Ok(true)
}
