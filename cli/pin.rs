//! `burrow pin <VERSION>` and `burrow unpin`: an operator holds consumers at
//! an older announced version, or releases them, by appending a pin or unpin
//! entry to the announcement log (`AnnouncementLog::pin` / `unpin`).
//!
//! Invariants: a pin names a version the log announced (the library refuses
//! others) and whose snapshot path is still in the store (not retired by
//! retention, see `burrow::gc`); `unpin` refuses a log with no pin in effect, so an operator's
//! typo never writes an entry that changes nothing. An entry is appended
//! with a create-only put, so a pin racing a producer's announcement takes
//! the next free seq: the race is retried a bounded number of times, and
//! the entry written is what the command prints.

use crate::output::{self, Align, Out, Table};
use anyhow::{bail, Context, Result};
use burrow::announcer::{AnnounceError, Announcement, AnnouncementLog};
use burrow::blobstore::{BlobName, BlobStore, StoreError};
use burrow::notify::{Message, Notification, NotifyChannel};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How often an append that lost a race for its seq is tried again.
const ATTEMPTS: usize = 5;

/// Pins consumers to `version`.
pub async fn pin(
    version: u64,
    store: BlobStore,
    notify: Option<Arc<dyn NotifyChannel>>,
    out: &mut Out,
) -> Result<()> {
    let log = AnnouncementLog::new(store.clone());
    let newest = newest(&log, &store).await?;
    if newest.pinned_version == Some(version) {
        bail!(
            "version {version} is already pinned (announcement {}); nothing written",
            newest.seq
        );
    }
    check_not_retired(&log, &newest, version).await?;
    let writer = writer_id();
    let entry = append(|| log.pin(version, &writer))
        .await
        .with_context(|| format!("cannot pin version {version} (see `burrow versions`)"))?;
    print(&entry, out)?;
    notify_once(notify, &entry).await;
    Ok(())
}

/// Lifts the pin in effect.
pub async fn unpin(
    store: BlobStore,
    notify: Option<Arc<dyn NotifyChannel>>,
    out: &mut Out,
) -> Result<()> {
    let log = AnnouncementLog::new(store.clone());
    let newest = newest(&log, &store).await?;
    if newest.pinned_version.is_none() {
        bail!(
            "nothing is pinned in store {} (announcement {} pins no version); nothing written",
            store.description(),
            newest.seq
        );
    }
    let writer = writer_id();
    let entry = append(|| log.unpin(&writer))
        .await
        .context("cannot unpin")?;
    print(&entry, out)?;
    notify_once(notify, &entry).await;
    Ok(())
}

/// Publishes the notification of `entry`: three attempts of at most 2 s.
/// A failure is a warning, not a failed command: the entry is in the log,
/// and consumers see it at their next poll.
async fn notify_once(channel: Option<Arc<dyn NotifyChannel>>, entry: &Announcement) {
    let Some(channel) = channel else { return };
    let message = Message::Notify(Notification::of(entry)).encode();
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
        }
        match tokio::time::timeout(Duration::from_secs(2), channel.publish(message.clone())).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("{channel:?}: publish timed out"),
        }
    }
    output::note(&format!(
        "warning: could not notify consumers of announcement {} ({last}); they will see it at their next poll",
        entry.seq
    ));
}

/// Refuses to pin a version whose snapshot path retention deleted
/// (consumers could not reach it). A version never announced is left to
/// the library's own refusal.
async fn check_not_retired(
    log: &AnnouncementLog,
    newest: &Announcement,
    version: u64,
) -> Result<()> {
    let Some(entry) = log.find_version(newest, version).await? else {
        return Ok(());
    };
    let path = burrow::announcer::chain_to(log, &entry, entry.snapshot_version).await?;
    let mut blobs = vec![BlobName::Snapshot(path[0].version)];
    blobs.extend(
        path.windows(2)
            .map(|w| BlobName::Delta(w[0].version, w[1].version)),
    );
    for blob in blobs {
        match log.store().size(&blob).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => bail!(
                "cannot pin version {version}: retention retired it ({blob} is gone); pin a \
                 version `burrow gc --dry-run` lists as retained"
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn newest(log: &AnnouncementLog, store: &BlobStore) -> Result<Announcement> {
    match log.latest().await? {
        Some(entry) => Ok(entry),
        None => bail!(
            "nothing has been announced in store {} (run `burrow demo` to publish)",
            store.description()
        ),
    }
}

/// Runs `write` until it appends, retrying a lost race for the seq.
async fn append<F, Fut>(write: F) -> Result<Announcement, AnnounceError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Announcement, AnnounceError>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(AnnounceError::NotPrimary { .. }) if attempt < ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

/// Who wrote the entry, as the log's producer column shows it.
fn writer_id() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    format!("burrow-cli:{user}")
}

fn print(e: &Announcement, out: &mut Out) -> Result<()> {
    if out.json {
        out.json(&json!({
            "seq": e.seq,
            "kind": e.kind.as_str(),
            "pinned_version": e.pinned_version,
            "version": e.version,
            "target": e.target(),
            "producer": e.producer_id,
            "timestamp_micros": e.timestamp_micros,
            "time": output::utc(e.timestamp_micros),
        }))?;
        return Ok(());
    }
    let mut table = Table::new(&[
        ("SEQ", Align::Right),
        ("KIND", Align::Left),
        ("PINNED", Align::Right),
        ("NEWEST", Align::Right),
        ("CONSUMERS_AT", Align::Right),
        ("TIME", Align::Left),
        ("WRITER", Align::Left),
    ]);
    table.row(vec![
        e.seq.to_string(),
        e.kind.as_str().to_string(),
        e.pinned_version
            .map_or_else(|| "-".to_string(), |v| v.to_string()),
        e.version.to_string(),
        e.target().to_string(),
        output::utc(e.timestamp_micros),
        e.producer_id.clone(),
    ]);
    table.write(out)?;
    Ok(())
}
