//! `burrow verify --store URL [--json]`: checks every blob in a store and
//! the announcement log (see `burrow::verify`), prints each problem with the
//! name of the blob it is in, and exits non-zero if there is any.
//!
//! Self-contained: `main` adds [`VerifyArgs`] as a subcommand and calls
//! [`run`] (or [`run_async`] from inside a runtime).

use burrow::blobstore::{BlobStore, StoreOptions, StoreUrl};
use burrow::verify::{verify_store, VerifyReport};
use std::process::ExitCode;

/// Exit code when the store has problems (1 is left for usage and
/// connection errors).
pub const EXIT_PROBLEMS: u8 = 3;

/// Arguments of `burrow verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The store to check: a directory, file:///path, or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `burrow verify` on a runtime of its own.
pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

/// Runs `burrow verify`: 0 if the store is clean, [`EXIT_PROBLEMS`] if not,
/// an error if the store cannot be read at all.
pub async fn run_async(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    // A local store that does not exist is a typo, not an empty store (and
    // opening it would create it).
    if let StoreUrl::Local(dir) = StoreUrl::parse(&args.store)? {
        if !dir.is_dir() {
            anyhow::bail!("{}: no such store directory", dir.display());
        }
    }
    let store = BlobStore::connect(&args.store, &StoreOptions::default()).await?;
    let report = verify_store(&store).await?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        print_json(&mut out, &args.store, &report)
    } else {
        print_text(&mut out, &args.store, &report)
    };
    match written {
        Ok(()) => {}
        // `burrow verify | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.into()),
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

fn print_text(out: &mut impl std::io::Write, store: &str, r: &VerifyReport) -> std::io::Result<()> {
    for p in &r.problems {
        writeln!(out, "PROBLEM {}: {}", p.blob, p.reason)?;
    }
    writeln!(
        out,
        "{store}: {} blobs ({} records), {} announcement entries, {} versions reachable, {} orphan blobs: {}",
        r.blobs_checked,
        r.records_checked,
        r.entries_checked,
        r.versions_reachable,
        r.orphans.len(),
        if r.is_clean() {
            "OK".to_string()
        } else {
            format!("{} problems", r.problems.len())
        }
    )
}

fn print_json(out: &mut impl std::io::Write, store: &str, r: &VerifyReport) -> std::io::Result<()> {
    let value = serde_json::json!({
        "store": store,
        "ok": r.is_clean(),
        "blobs_checked": r.blobs_checked,
        "records_checked": r.records_checked,
        "entries_checked": r.entries_checked,
        "versions_reachable": r.versions_reachable,
        "orphans": r.orphans,
        "problems": r.problems.iter().map(|p| serde_json::json!({
            "blob": p.blob,
            "reason": p.reason,
        })).collect::<Vec<_>>(),
    });
    writeln!(out, "{value}")
}
