//! `burrow demo`: publishes the Movie workload of `WORKLOAD.md` and follows
//! it with a consumer, one table row (or JSON line) per cycle.
//!
//! - Cycle 1 of a new dataset publishes ids `0..N`, all at generation 0.
//! - Every later cycle picks, with a generator seeded by the cycle number,
//!   `round(n × change)` records to set to generation = cycle number, and
//!   `round(n × churn)` other records to remove, then adds as many new ids
//!   above the highest one (n is the record count before the cycle). The
//!   records and the edits are the workload generator's
//!   (`burrow::testing::workload`), shared with `bench`, the benches and the
//!   tests.
//! - The cycle number of a version is the version itself, so a second run on
//!   the same store restores the producer from the log and chains on: its
//!   cycles are deltas, and its generations keep rising.
//!
//! After the cycles, a key-lookup check reads a sample of ids through the
//! consumer and compares them with the model the producer was given.
//!
//! The consumer reads movies only (a type filter, `ConsumerBuilder::types`)
//! and has a refresh listener: after every refresh, the keys it was told
//! were added, changed and removed must be the counts the producer
//! reported for that cycle, or the demo fails.

use crate::config::DemoConfig;
use crate::output::{self, Out, Progress};
use anyhow::{bail, Context, Result};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::{
    ChangeSource, Consumer, ConsumerBuilder, RefreshEvent, RefreshListener, RefreshReport, Step,
};
use burrow::notify::{Publisher, PublisherConfig};
use burrow::producer::{CycleReport, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::record::TypeInfo;
use burrow::testing::workload::{generation_of, Dataset, Rng};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// The seed of the demo's edits (`Dataset::advance` mixes in the cycle).
const SEED: u64 = 0x6275_7272_6f77_0001;

/// Reads the consumer's state back into a model (to chain on a store that
/// already holds the demo's dataset).
fn model_of(consumer: &Consumer, store: &str) -> Result<Dataset> {
    let state = consumer.state()?;
    let info = TypeInfo::of::<movie::Owned>();
    if state.raw_type(info.type_id).is_none() && !state.types().is_empty() {
        bail!(
            "store {store} holds a dataset without {} records; the demo needs an empty store \
             or one it made",
            info.name
        );
    }
    let mut model = Vec::new();
    if state.raw_type(info.type_id).is_none() {
        return Ok(Dataset::from_records(model, SEED));
    }
    let view = state.view::<movie::Owned>()?;
    for (_, m) in view.iter() {
        let id = m.get_id();
        let text = m
            .get_title()
            .ok()
            .and_then(|t| t.to_str().ok())
            .unwrap_or("");
        let generation = generation_of(id, text).with_context(|| {
            format!(
                "store {store}: movie {id} has title {text:?}, which the demo's workload \
                 never writes; use an empty store"
            )
        })?;
        model.push((id, generation));
    }
    Ok(Dataset::from_records(model, SEED))
}

fn blob_size(report: &CycleReport, pick: fn(&BlobName) -> bool) -> Option<u64> {
    report
        .blobs
        .iter()
        .find(|(n, _)| pick(n))
        .map(|&(_, size)| size)
}

fn steps(report: Option<&RefreshReport>) -> String {
    let Some(report) = report else {
        return "(no change)".to_string();
    };
    report
        .steps
        .iter()
        .map(|s| match s {
            Step::Snapshot(_) => "snapshot",
            Step::Delta(..) => "delta",
            Step::Reverse(..) => "reverse",
        })
        .collect::<Vec<_>>()
        .join("+")
}

const COLUMNS: [(&str, usize); 11] = [
    ("CYCLE", 5),
    ("VERSION", 7),
    ("RECORDS", 9),
    ("ADDED", 7),
    ("CHANGED", 7),
    ("REMOVED", 7),
    ("SNAPSHOT", 10),
    ("DELTA", 10),
    ("REVERSE", 10),
    ("PRODUCER", 9),
    ("CONSUMER", 9),
];

fn row(cells: &[String]) -> String {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
        if !line.is_empty() {
            line.push_str("  ");
        }
        let _ = write!(line, "{cell:>width$}");
    }
    line.push_str("  ");
    line.push_str(cells.get(COLUMNS.len()).map_or("", String::as_str));
    line
}

/// What the consumer's refresh listener was told of movies by the last
/// refresh: (added, changed, removed) keys and how they were found.
#[derive(Default)]
struct Told(Mutex<Option<([usize; 3], ChangeSource)>>);

impl RefreshListener for Told {
    fn refreshed(&self, event: &RefreshEvent) {
        let told = match event.typed::<movie::Owned>() {
            Ok(Some(movies)) => {
                let c = movies.ordinals();
                Some(([c.added.len(), c.changed.len(), c.removed.len()], c.source))
            }
            Ok(None) => Some(([0; 3], ChangeSource::Deltas)),
            // The demo then fails: told nothing where the producer changed something.
            Err(_) => None,
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = told;
    }
}

impl Told {
    fn take(&self) -> Option<([usize; 3], ChangeSource)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

pub async fn run(cfg: &DemoConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let where_ = store.description().to_string();
    let progress = Progress::new();
    // With --notify, every announcement is also pushed to the channel.
    let publisher = cfg
        .notify
        .clone()
        .map(|channel| Arc::new(Publisher::start(channel, PublisherConfig::default())));
    let mut builder = ProducerBuilder::new(store.clone())
        .producer_id(format!("burrow-demo-{}", std::process::id()))
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("by_year", &["year"])
        .header_tag("workload", "movies")
        .compression(cfg.compression)
        .retention(cfg.gc.then(burrow::gc::RetentionPolicy::default));
    if let Some(publisher) = &publisher {
        builder = builder.listener(Arc::clone(publisher));
    }
    let producer = builder.build()?;
    let told = Arc::new(Told::default());
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(&cfg.cache)
        .types(&[TypeInfo::of::<movie::Owned>()])
        .refresh_listener(Arc::clone(&told))
        .build()
        .with_context(|| format!("cannot open cache {}", cfg.cache.display()))?;

    progress.set("restoring the producer from the announcement log...");
    let restored = producer
        .restore()
        .await
        .with_context(|| format!("cannot restore the producer from store {where_}"))?;
    let mut model = match restored {
        Some(version) => {
            consumer.refresh_to(version).await?;
            let model = model_of(&consumer, &where_)?;
            progress.clear();
            output::note(&format!(
                "store {where_} already holds version {version} ({} records); continuing it \
                 (--records applies to new stores only)",
                model.len()
            ));
            model
        }
        None => Dataset::new(0, SEED),
    };

    if !out.json {
        let mut head: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
        head.push("PLAN".into());
        progress.clear();
        out.line(&row(&head))?;
    }
    let mut removed_ids = Vec::new();
    let mut told_by = [0usize; 2]; // refreshes whose changes came from deltas, from comparing
    for i in 1..=cfg.cycles {
        let last = producer.version().await.unwrap_or(0);
        let cycle = last + 1;
        if last == 0 {
            model = Dataset::new(cfg.records, SEED);
        } else {
            let edits = model.advance(cycle, cfg.change, cfg.churn);
            removed_ids.extend(edits.removed);
        }
        progress.set(&format!(
            "cycle {i}/{}: publishing {} records...",
            cfg.cycles,
            model.len()
        ));
        let report = producer
            .run_cycle(|p| model.populate(p))
            .await
            .with_context(|| format!("cycle {i} failed"))?;
        progress.set(&format!(
            "cycle {i}/{}: consumer refreshing to version {}...",
            cfg.cycles, report.version
        ));
        let refresh = if consumer.version() == Some(report.version) {
            None
        } else {
            consumer
                .refresh_to(report.version)
                .await
                .with_context(|| format!("the consumer could not follow cycle {i}"))?
        };
        progress.clear();
        let (added, changed, removed) = report.changes.iter().fold((0, 0, 0), |acc, c| {
            (acc.0 + c.added, acc.1 + c.changed, acc.2 + c.removed)
        });
        let listened = told.take();
        if refresh.is_some() {
            match listened {
                Some((counts, source))
                    if counts == [added as usize, changed as usize, removed as usize] =>
                {
                    told_by[usize::from(source == ChangeSource::Compared)] += 1;
                }
                _ => bail!(
                    "change notification check failed at version {}: the consumer's refresh \
                     listener was told {listened:?} (added, changed, removed), the producer \
                     reported [{added}, {changed}, {removed}]",
                    report.version
                ),
            }
        }
        let snapshot = blob_size(&report, |n| matches!(n, BlobName::Snapshot(_)));
        let delta = blob_size(&report, |n| matches!(n, BlobName::Delta(..)));
        let reverse = blob_size(&report, |n| matches!(n, BlobName::Reverse(..)));
        let consumer_time = refresh.as_ref().map(|r| r.duration);
        if out.json {
            out.json(&json!({
                "event": "cycle",
                "cycle": i,
                "version": report.version,
                "published": report.published,
                "records": model.len(),
                "added": added,
                "changed": changed,
                "removed": removed,
                "snapshot_bytes": snapshot,
                "delta_bytes": delta,
                "reverse_bytes": reverse,
                "producer_ms": output::millis(report.total_time),
                "populate_ms": output::millis(report.populate_time),
                "consumer_ms": consumer_time.map(output::millis),
                "consumer_fetched_bytes": refresh.as_ref().map(|r| r.fetched_bytes),
                "consumer_plan": steps(refresh.as_ref()),
                "consumer_told": listened.map(|(c, source)| json!({
                    "added": c[0], "changed": c[1], "removed": c[2],
                    "source": format!("{source:?}").to_lowercase(),
                })),
                // The last finished background retention run (`--no-gc`: null).
                "gc_deleted_blobs": report.last_gc.as_ref().map(|g| match &g.result {
                    Ok(r) => json!(r.deleted.len()),
                    Err(e) => json!({ "error": e.to_string() }),
                }),
            }))?;
        } else {
            let size = |s: Option<u64>| s.map_or_else(|| "-".to_string(), output::bytes);
            out.line(&row(&[
                i.to_string(),
                report.version.to_string(),
                model.len().to_string(),
                added.to_string(),
                changed.to_string(),
                removed.to_string(),
                size(snapshot),
                size(delta),
                size(reverse),
                output::duration(report.total_time),
                consumer_time.map_or_else(|| "-".to_string(), output::duration),
                steps(refresh.as_ref()),
            ]))?;
        }
    }
    // The last announcement's retention run finishes before the process
    // exits (its outcome is logged; it never fails the demo).
    producer.wait_for_gc().await;
    if let Some(publisher) = &publisher {
        if !publisher.drain(NOTIFY_DRAIN).await {
            let health = publisher.health();
            output::note(&format!(
                "warning: {} notification(s) not delivered ({}); consumers see the versions at their next poll",
                health.queue_depth,
                health.last_error.as_deref().unwrap_or("the channel did not take them in time"),
            ));
        }
    }
    lookup_check(&consumer, &model, &removed_ids, out)?;
    if !out.json {
        out.line(&format!(
            "change notifications: the consumer (reading Movie only) was told each refresh's \
             added, changed and removed keys, equal to the producer's counts ({} found from the \
             deltas applied, {} by comparing states)",
            told_by[0], told_by[1]
        ))?;
    }
    Ok(())
}

/// How long the demo waits, before it exits, for its last notifications.
const NOTIFY_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Looks up a few ids through the consumer, prints them, and checks a
/// larger seeded sample and the record count against the model.
fn lookup_check(
    consumer: &Consumer,
    model: &Dataset,
    removed: &[u64],
    out: &mut Out,
) -> Result<()> {
    let state = consumer.state()?;
    let view = state.view::<movie::Owned>()?;
    if view.len() as usize != model.len() {
        bail!(
            "lookup check failed: the consumer holds {} records at version {}, the producer \
             published {}",
            view.len(),
            state.version(),
            model.len()
        );
    }
    let keys: Vec<u64> = model.records().keys().copied().collect();
    let mut shown: Vec<u64> = Vec::new();
    if let (Some(&first), Some(&last)) = (keys.first(), keys.last()) {
        shown.extend([first, keys[keys.len() / 2], last]);
    }
    if let Some((&id, _)) = model.records().iter().find(|(_, &g)| g > 0) {
        shown.push(id);
    }
    shown.push(removed.last().copied().unwrap_or(u64::MAX));
    let mut seen = std::collections::HashSet::new();
    shown.retain(|id| seen.insert(*id));
    let mut rng = Rng::new(SEED ^ u64::from(view.len()));
    let sample: Vec<u64> = (0..keys.len().min(1000))
        .map(|_| keys[rng.below(keys.len() as u64) as usize])
        .collect();

    let mut table = output::Table::new(&[
        ("ID", output::Align::Right),
        ("FOUND", output::Align::Left),
        ("YEAR", output::Align::Right),
        ("TITLE", output::Align::Left),
    ]);
    let mut rows = Vec::new();
    for (n, &id) in shown.iter().chain(&sample).enumerate() {
        let found = match view.find(&id)? {
            Some((_, m)) => {
                let t = m
                    .get_title()
                    .ok()
                    .and_then(|t| t.to_str().ok())
                    .map(str::to_string)
                    .with_context(|| format!("movie {id} has an unreadable title"))?;
                Some((t, m.get_year()))
            }
            None => None,
        };
        let expected = model.movie(id).map(|m| (m.title, m.year));
        if found != expected {
            bail!(
                "lookup check failed for id {id} at version {}: the consumer has {found:?}, the \
                 producer published {expected:?}",
                state.version()
            );
        }
        if n < shown.len() {
            rows.push((id, found));
        }
    }
    // A secondary index lookup: every movie of one year, through the
    // producer's by_year index, checked against the model.
    let year = BY_YEAR;
    let mut by_year: Vec<u64> = Vec::new();
    for found in view.index("by_year")?.find(&year)? {
        by_year.push(found?.1.get_id());
    }
    by_year.sort_unstable();
    let expected: Vec<u64> = keys
        .iter()
        .copied()
        .filter(|&id| burrow::testing::workload::year(id) == year)
        .collect();
    if by_year != expected {
        bail!(
            "index check failed at version {}: by_year {year} gives {} records, the producer published {}",
            state.version(),
            by_year.len(),
            expected.len()
        );
    }
    if out.json {
        let lookups: Vec<_> = rows
            .iter()
            .map(|(id, found)| match found {
                Some((t, y)) => json!({"id": id, "found": true, "title": t, "year": y}),
                None => json!({"id": id, "found": false}),
            })
            .collect();
        out.json(&json!({
            "event": "lookup",
            "version": state.version(),
            "records": view.len(),
            "checked": shown.len() + sample.len(),
            "ok": true,
            "lookups": lookups,
            "by_year": {"year": year, "records": by_year.len(), "ok": true},
        }))?;
    } else {
        out.line("")?;
        out.line(&format!(
            "key lookups at version {} ({} records; {} lookups checked against the producer's \
             model):",
            state.version(),
            view.len(),
            shown.len() + sample.len()
        ))?;
        for (id, found) in rows {
            match found {
                Some((t, y)) => table.row(vec![id.to_string(), "yes".into(), y.to_string(), t]),
                None => table.row(vec![id.to_string(), "no".into(), "-".into(), "-".into()]),
            }
        }
        table.write(out)?;
        let first: Vec<String> = by_year.iter().take(5).map(u64::to_string).collect();
        out.line(&format!(
            "index lookup by_year {year}: {} records (checked against the producer's model), ids {}{}",
            by_year.len(),
            first.join(", "),
            if by_year.len() > first.len() { ", ..." } else { "" }
        ))?;
    }
    Ok(())
}

/// The year the demo looks up through its `by_year` index.
const BY_YEAR: u32 = 1999;
