//! `burrow diff A B [--type T]`: the records added, removed and changed
//! from version A to version B, matched by primary key, with the fields
//! that changed ([`burrow::explore::diff`]): read from the deltas between
//! them when one is reached from the other by announced deltas, else by
//! comparing every record. A table of counts, then the changes (at most
//! `--limit` per type and kind); with `--json`, one object with them all.

use crate::config::DiffConfig;
use crate::output::{Align, Out, Table};
use anyhow::Result;
use burrow::blobstore::BlobStore;
use burrow::explore::{diff, DiffMethod, Explorer, RecordChange};
use serde_json::Value;

pub async fn run(cfg: &DiffConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let explorer = Explorer::open(store, &cfg.cache).await?;
    let d = diff(&explorer, cfg.from, cfg.to, cfg.type_name.as_deref()).await?;
    explorer.trim_cache();
    if out.json {
        out.json(&d.to_json())?;
        return Ok(());
    }
    out.line(&format!(
        "diff {} -> {} ({})",
        d.from,
        d.to,
        match d.method {
            DiffMethod::Deltas { deltas } => format!("read from {deltas} delta(s)"),
            DiffMethod::Full =>
                "every record compared: the versions are not on one delta chain".into(),
        }
    ))?;
    let mut counts = Table::new(&[
        ("TYPE", Align::Left),
        ("ADDED", Align::Right),
        ("REMOVED", Align::Right),
        ("CHANGED", Align::Right),
    ]);
    for t in &d.types {
        counts.row(vec![
            t.name.clone(),
            t.added.len().to_string(),
            t.removed.len().to_string(),
            t.changed.len().to_string(),
        ]);
    }
    counts.write(out)?;
    let mut rows = Table::new(&[
        ("", Align::Left),
        ("TYPE", Align::Left),
        ("KEY", Align::Left),
        ("FIELD", Align::Left),
        ("BEFORE", Align::Left),
        ("AFTER", Align::Left),
    ]);
    let mut left_out = 0;
    for t in &d.types {
        let short = t
            .name
            .rsplit([':', '.'])
            .next()
            .unwrap_or(&t.name)
            .to_string();
        let key = |c: &RecordChange| c.key.clone().unwrap_or_else(|| "-".into());
        for (mark, list) in [("+", &t.added), ("-", &t.removed)] {
            for c in list.iter().take(cfg.limit) {
                let (before, after) = (show(c.before.as_ref()), show(c.after.as_ref()));
                rows.row(vec![
                    mark.into(),
                    short.clone(),
                    key(c),
                    "$".into(),
                    before,
                    after,
                ]);
            }
            left_out += list.len().saturating_sub(cfg.limit);
        }
        for c in t.changed.iter().take(cfg.limit) {
            for f in &c.fields {
                rows.row(vec![
                    "~".into(),
                    short.clone(),
                    key(c),
                    f.path.clone(),
                    show(f.before.as_ref()),
                    show(f.after.as_ref()),
                ]);
            }
        }
        left_out += t.changed.len().saturating_sub(cfg.limit);
    }
    out.line("")?;
    rows.write(out)?;
    if left_out > 0 {
        out.line(&format!(
            "({left_out} more records not listed; raise --limit or use --json)"
        ))?;
    }
    Ok(())
}

/// A value in a table cell: its JSON, `-` when absent.
fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "-".into(), Value::to_string)
}
