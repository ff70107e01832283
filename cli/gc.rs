//! `burrow gc`: applies a retention policy to the store (see `burrow::gc`)
//! and prints each blob it deletes, or with `--dry-run` would delete, and
//! why; then a summary of what stays. `--json` prints one object with the
//! same. Announcement entries are never deleted.

use crate::output::{self, Out};
use anyhow::Result;
use burrow::blobstore::BlobStore;
use burrow::gc::{collect_garbage, Deletion, GcReport, RetentionPolicy};
use std::time::SystemTime;

/// `burrow gc`'s validated settings.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub policy: RetentionPolicy,
    pub dry_run: bool,
}

/// Runs retention on `store` and prints what went (or would go).
pub async fn run(cfg: &GcConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let report = collect_garbage(&store, &cfg.policy, SystemTime::now(), cfg.dry_run).await?;
    if out.json {
        return Ok(out.json(&json(store.description(), cfg, &report))?);
    }
    let verb = if cfg.dry_run {
        "WOULD DELETE"
    } else {
        "DELETE"
    };
    for d in &report.deleted {
        out.line(&format!(
            "{verb} {} ({}, written {} ago): {}",
            d.name,
            output::bytes(d.size),
            output::duration(d.age),
            d.reason
        ))?;
    }
    let retained = report
        .retained_versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    out.line(&format!(
        "{}: newest version {}, retained versions [{retained}] (keep {}, grace {}); \
         kept {} blobs needed and {} younger than the grace period ({}); {} {} blobs ({}){}",
        store.description(),
        report
            .newest_version
            .map_or_else(|| "none".to_string(), |v| v.to_string()),
        cfg.policy.keep,
        output::duration(cfg.policy.grace),
        report.needed,
        report.young,
        output::bytes(report.kept_bytes),
        if cfg.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.deleted.len(),
        output::bytes(report.deleted_bytes()),
        if cfg.dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        }
    ))?;
    Ok(())
}

fn json(store: &str, cfg: &GcConfig, r: &GcReport) -> serde_json::Value {
    let deletion = |d: &Deletion| {
        serde_json::json!({
            "name": d.name,
            "bytes": d.size,
            "age_seconds": d.age.as_secs(),
            "reason": d.reason.to_string(),
        })
    };
    serde_json::json!({
        "store": store,
        "dry_run": r.dry_run,
        "keep": cfg.policy.keep,
        "grace_seconds": cfg.policy.grace.as_secs(),
        "snapshot_spacing": cfg.policy.snapshot_spacing,
        "newest_version": r.newest_version,
        "retained_versions": r.retained_versions,
        "entries_read": r.entries_read,
        "kept_needed": r.needed,
        "kept_young": r.young,
        "kept_bytes": r.kept_bytes,
        "deleted_bytes": r.deleted_bytes(),
        "deleted": r.deleted.iter().map(deletion).collect::<Vec<_>>(),
    })
}
