//! `burrow versions`: the announcement log, one row (or JSON line) per entry,
//! oldest first: the newest 100 (`--last N`), read back from the newest
//! entry so that a log of a million entries costs as much as a short one,
//! or with `--all` every entry.
//! The text form names the log's dataset once, above the table (every
//! entry of one log carries the same id: reading refuses a log that mixes
//! two); each JSON line carries it as `dataset_id`.

use crate::output::{self, Align, Out, Table};
use anyhow::{bail, Result};
use burrow::announcer::{AnnounceKind, AnnouncementLog};
use burrow::blobstore::BlobStore;
use serde_json::json;

pub async fn run(last: Option<u64>, store: BlobStore, out: &mut Out) -> Result<()> {
    let log = AnnouncementLog::new(store.clone());
    let Some(newest) = log.latest().await? else {
        bail!(
            "nothing has been announced in store {} (run `burrow demo` to publish)",
            store.description()
        );
    };
    let entries = match last {
        None => log.entries_from(1).await?,
        Some(n) => {
            let mut entries = vec![newest];
            loop {
                let oldest = entries.last().expect("not empty");
                if entries.len() as u64 >= n || oldest.seq <= 1 {
                    break;
                }
                match log.read_before(oldest).await? {
                    Some(prev) => entries.push(prev),
                    None => break,
                }
            }
            entries.reverse();
            entries
        }
    };
    let mut table = Table::new(&[
        ("SEQ", Align::Right),
        ("KIND", Align::Left),
        ("VERSION", Align::Right),
        ("FROM", Align::Right),
        ("SNAPSHOT", Align::Left),
        ("PINNED", Align::Right),
        ("SNAPSHOT_SIZE", Align::Right),
        ("DELTA_SIZE", Align::Right),
        ("REVERSE_SIZE", Align::Right),
        ("TIME", Align::Left),
        ("PRODUCER", Align::Left),
    ]);
    for e in &entries {
        if out.json {
            out.json(&json!({
                "dataset_id": e.dataset_id.to_string(),
                "seq": e.seq,
                "kind": e.kind.as_str(),
                "version": e.version,
                "from_version": (e.from_version != 0).then_some(e.from_version),
                "has_snapshot": e.has_snapshot,
                "snapshot_version": e.snapshot_version,
                "pinned_version": e.pinned_version,
                "producer": e.producer_id,
                "timestamp_micros": e.timestamp_micros,
                "time": output::utc(e.timestamp_micros),
                "snapshot_bytes": e.snapshot_bytes,
                "delta_bytes": e.delta_bytes,
                "reverse_bytes": e.reverse_bytes,
            }))?;
            continue;
        }
        let size = |announce: bool, n: u64| {
            if announce && n > 0 {
                output::bytes(n)
            } else {
                "-".to_string()
            }
        };
        let announce = e.kind == AnnounceKind::Announce;
        table.row(vec![
            e.seq.to_string(),
            e.kind.as_str().to_string(),
            e.version.to_string(),
            if e.from_version == 0 {
                "-".to_string()
            } else {
                e.from_version.to_string()
            },
            if e.has_snapshot {
                "yes".to_string()
            } else {
                format!("no (at {})", e.snapshot_version)
            },
            e.pinned_version
                .map_or_else(|| "-".to_string(), |v| v.to_string()),
            size(announce && e.has_snapshot, e.snapshot_bytes),
            size(announce, e.delta_bytes),
            size(announce, e.reverse_bytes),
            output::utc(e.timestamp_micros),
            e.producer_id.clone(),
        ]);
    }
    if !out.json {
        if let Some(first) = entries.first() {
            out.line(&format!("dataset {}", first.dataset_id))?;
        }
        table.write(out)?;
    }
    Ok(())
}
