//! `burrow verify`: checks every blob in the store and the announcement log
//! (see `burrow::verify`), prints each problem with the name of the blob it
//! is in (or one JSON object with `--json`), and fails if there is any. The
//! summary names the dataset verified (the log's; `none` for an empty or
//! unreadable log, `null` in JSON). Sizes are given as stored and
//! decompressed (blobs may be stored as zstd frames). Versions retention
//! retired (their blobs deleted, nothing needing them) are counted, not
//! problems.

use crate::output::Out;
use anyhow::Result;
use burrow::blobstore::BlobStore;
use burrow::verify::{verify_store, VerifyReport};

/// Arguments of `burrow verify`: the store and `--json` are the global
/// options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyArgs {}

/// The store has problems; they have been printed.
#[derive(Debug, thiserror::Error)]
#[error("the store has {0} problem(s)")]
pub struct ProblemsFound(pub usize);

/// Verifies `store`, prints the report, and returns [`ProblemsFound`] if
/// there is any problem.
pub async fn run(store: BlobStore, out: &mut Out) -> Result<()> {
    let report = verify_store(&store).await?;
    if out.json {
        out.json(&json(store.description(), &report))?;
    } else {
        for p in &report.problems {
            out.line(&format!("PROBLEM {}: {}", p.blob, p.reason))?;
        }
        for leftover in &report.leftovers {
            out.line(&format!("LEFTOVER {leftover}"))?;
        }
        out.line(&format!(
            "{}: dataset {}, {} blobs ({} records; {} stored, {} decompressed), \
             {} announcement entries, \
             {} versions reachable, {} retired, {} orphan blobs, {} leftovers of interrupted writes: {}",
            store.description(),
            report
                .dataset_id
                .map_or_else(|| "none".to_string(), |id| id.to_string()),
            report.blobs_checked,
            report.records_checked,
            crate::output::bytes(report.bytes_stored),
            crate::output::bytes(report.bytes_decompressed),
            report.entries_checked,
            report.versions_reachable,
            report.retired.len(),
            report.orphans.len(),
            report.leftovers.len(),
            if report.is_clean() { "OK" } else { "PROBLEMS" }
        ))?;
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(ProblemsFound(report.problems.len()).into())
    }
}

fn json(store: &str, r: &VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "store": store,
        "ok": r.is_clean(),
        "dataset_id": r.dataset_id.map(|id| id.to_string()),
        "blobs_checked": r.blobs_checked,
        "records_checked": r.records_checked,
        "bytes_stored": r.bytes_stored,
        "bytes_decompressed": r.bytes_decompressed,
        "entries_checked": r.entries_checked,
        "versions_reachable": r.versions_reachable,
        "versions_retired": r.retired,
        "orphans": r.orphans,
        "leftovers": r.leftovers.iter().map(|l| serde_json::json!({
            "name": l.name,
            "kind": l.kind.to_string(),
            "bytes": l.size,
            "age_seconds": l.age.as_secs(),
        })).collect::<Vec<_>>(),
        "problems": r.problems.iter().map(|p| serde_json::json!({
            "blob": p.blob,
            "reason": p.reason,
        })).collect::<Vec<_>>(),
    })
}
