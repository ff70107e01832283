//! `burrow history --type T --key K`: one record at every retained
//! version where it changed ([`burrow::explore::history`]): the oldest
//! retained version that holds it, then each version that added, changed
//! or removed it, with the fields that changed. A table; with `--json`,
//! one object.

use crate::config::HistoryConfig;
use crate::output::{Align, Out, Table};
use anyhow::Result;
use burrow::blobstore::BlobStore;
use burrow::explore::{history, Change, Explorer};

pub async fn run(cfg: &HistoryConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let explorer = Explorer::open(store, &cfg.cache).await?;
    let report = history(&explorer, cfg.type_name.as_deref(), &cfg.key).await?;
    explorer.trim_cache();
    if out.json {
        out.json(&report.to_json())?;
        return Ok(());
    }
    out.line(&format!(
        "{} key {}: {} change(s) in {} retained version(s){}",
        report.type_name,
        cfg.key,
        report.entries.len(),
        report.versions_read,
        if report.versions_skipped.is_empty() {
            String::new()
        } else {
            format!(", {} no longer retained", report.versions_skipped.len())
        }
    ))?;
    let mut table = Table::new(&[
        ("VERSION", Align::Right),
        ("CHANGE", Align::Left),
        ("ORDINAL", Align::Right),
        ("RECORD", Align::Left),
    ]);
    for e in &report.entries {
        let detail = match e.change {
            Change::Changed => e
                .fields
                .iter()
                .map(|f| {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref().map_or_else(|| "-".into(), |v| v.to_string())
                    };
                    format!("{}: {} -> {}", f.path, show(&f.before), show(&f.after))
                })
                .collect::<Vec<_>>()
                .join("; "),
            Change::Removed => "-".into(),
            Change::Oldest | Change::Added => e
                .record
                .as_ref()
                .map_or_else(|| "-".into(), |r| r.to_string()),
        };
        table.row(vec![
            e.version.to_string(),
            e.change.as_str().into(),
            e.ordinal.map_or_else(|| "-".into(), |o| o.to_string()),
            detail,
        ]);
    }
    table.write(out)?;
    Ok(())
}
