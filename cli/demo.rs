//! `burrow demo`: publishes the Movie workload of `WORKLOAD.md` and follows
//! it with a consumer, one table row (or JSON line) per cycle.
//!
//! - Cycle 1 of a new dataset publishes ids `0..N`, all at generation 0.
//! - Every later cycle picks, with a generator seeded by the cycle number,
//!   `round(n × change)` records to set to generation = cycle number, and
//!   `round(n × churn)` other records to remove, then adds as many new ids
//!   above the highest one (n is the record count before the cycle).
//! - The cycle number of a version is the version itself, so a second run on
//!   the same store restores the producer from the log and chains on: its
//!   cycles are deltas, and its generations keep rising.
//!
//! After the cycles, a key-lookup check reads a sample of ids through the
//! consumer and compares them with the model the producer was given.

use crate::config::DemoConfig;
use crate::output::{self, Out, Progress};
use anyhow::{bail, Context, Result};
use burrow::blobstore::{BlobCache, BlobName, BlobStore};
use burrow::consumer::{Consumer, ConsumerBuilder, RefreshReport, Step};
use burrow::producer::{CycleReport, Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::record::TypeInfo;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const TAGS: [&str; 8] = [
    "action", "drama", "comedy", "horror", "doc", "kids", "anime", "thriller",
];

/// The dataset as the producer is given it: id → generation.
type Model = BTreeMap<u64, u64>;

fn title(id: u64, generation: u64, out: &mut String) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(out, "Title number {id}");
    if generation > 0 {
        let _ = write!(out, " v{generation}");
    }
}

fn year(id: u64) -> u32 {
    1950 + (id % 70) as u32
}

/// Reads a title back into its generation; `None` if it does not follow
/// the workload's formula for `id`.
fn generation_of(id: u64, title: &str) -> Option<u64> {
    let rest = title.strip_prefix("Title number ")?;
    let rest = rest.strip_prefix(id.to_string().as_str())?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(" v")?.parse().ok().filter(|&g| g > 0)
}

/// SplitMix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6275_7272_6f77_0001)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// `k` distinct indices of `0..n`, in random order.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        if k * 4 >= n {
            // Dense: a partial Fisher-Yates shuffle.
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + self.below(n - i);
                all.swap(i, j);
            }
            all.truncate(k);
            return all;
        }
        let mut seen = std::collections::HashSet::with_capacity(k);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let i = self.below(n);
            if seen.insert(i) {
                out.push(i);
            }
        }
        out
    }
}

/// One cycle's edits of the model.
#[derive(Default)]
struct Edits {
    removed: Vec<u64>,
}

/// Applies cycle `cycle`'s changes and churn to the model.
fn edit(model: &mut Model, cycle: u64, change: f64, churn: f64) -> Edits {
    let n = model.len();
    let changes = (n as f64 * change).round() as usize;
    let churns = (n as f64 * churn).round() as usize;
    let mut rng = Rng::new(cycle);
    let keys: Vec<u64> = model.keys().copied().collect();
    let picked = rng.sample(n, changes + churns);
    let (removed, changed) = picked.split_at(churns.min(picked.len()));
    for &i in changed {
        model.insert(keys[i], cycle);
    }
    let mut edits = Edits::default();
    for &i in removed {
        model.remove(&keys[i]);
        edits.removed.push(keys[i]);
    }
    let next = keys.last().map_or(0, |&k| k + 1);
    for id in next..next + churns as u64 {
        model.insert(id, 0);
    }
    edits
}

/// Clears cached blobs of a dataset that no longer exists: the cache knows
/// blobs by name only, so a store that was deleted and published again would
/// otherwise be read through its predecessor's `snapshot/1`.
fn clear_stale_cache(cache: &BlobCache) -> Result<usize> {
    let dir = cache.dir();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read cache directory {}", dir.display()))?;
    let mut cleared = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let file = entry.file_name();
        let Some(name) = file
            .to_str()
            .and_then(|f| f.split_once('-'))
            .and_then(|(dir, rest)| BlobName::parse(&format!("{dir}/{rest}")))
        else {
            continue;
        };
        if cache.path(&name) == entry.path() {
            cache.evict(&name)?;
            cleared += 1;
        }
    }
    Ok(cleared)
}

async fn publish(producer: &Producer, model: &Model) -> burrow::Result<CycleReport> {
    producer
        .run_cycle(|p| {
            let mut text = String::new();
            for (&id, &generation) in model {
                title(id, generation, &mut text);
                p.add::<movie::Owned>(|mut m| {
                    m.set_id(id);
                    m.set_title(text.as_str());
                    m.set_year(year(id));
                    let mut tags = m.init_tags(2);
                    tags.set(0, TAGS[(id % 8) as usize]);
                    tags.set(1, TAGS[((id / 8) % 8) as usize]);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
}

/// Reads the consumer's state back into a model (to chain on a store that
/// already holds the demo's dataset).
fn model_of(consumer: &Consumer, store: &str) -> Result<Model> {
    let state = consumer.state()?;
    let info = TypeInfo::of::<movie::Owned>();
    if state.raw_type(info.type_id).is_none() && !state.types().is_empty() {
        bail!(
            "store {store} holds a dataset without {} records; the demo needs an empty store \
             or one it made",
            info.name
        );
    }
    let mut model = Model::new();
    if state.raw_type(info.type_id).is_none() {
        return Ok(model);
    }
    let view = state.view::<movie::Owned>()?;
    for item in view.iter() {
        let (ordinal, record) = item?;
        let m = record
            .get()
            .with_context(|| format!("cannot read the Movie at ordinal {ordinal}"))?;
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
        model.insert(id, generation);
    }
    Ok(model)
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

pub async fn run(cfg: &DemoConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let where_ = store.description().to_string();
    let progress = Progress::new();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id(format!("burrow-demo-{}", std::process::id()))
        .primary_key::<movie::Owned>(&["id"])
        .header_tag("workload", "movies")
        .build()?;
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(&cfg.cache)
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
        None => {
            let cleared = clear_stale_cache(consumer.cache())?;
            if cleared > 0 {
                progress.clear();
                output::note(&format!(
                    "the store is new, so {cleared} blobs cached from an earlier dataset were \
                     removed from {}",
                    cfg.cache.display()
                ));
            }
            Model::new()
        }
    };

    if !out.json {
        let mut head: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
        head.push("PLAN".into());
        progress.clear();
        out.line(&row(&head))?;
    }
    let mut removed_ids = Vec::new();
    for i in 1..=cfg.cycles {
        let last = producer.version().await.unwrap_or(0);
        let cycle = last + 1;
        if last == 0 {
            model = (0..cfg.records).map(|id| (id, 0)).collect();
        } else {
            let edits = edit(&mut model, cycle, cfg.change, cfg.churn);
            removed_ids.extend(edits.removed);
        }
        progress.set(&format!(
            "cycle {i}/{}: publishing {} records...",
            cfg.cycles,
            model.len()
        ));
        let report = publish(&producer, &model)
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
    lookup_check(&consumer, &model, &removed_ids, out)
}

/// Looks up a few ids through the consumer, prints them, and checks a
/// larger seeded sample and the record count against the model.
fn lookup_check(consumer: &Consumer, model: &Model, removed: &[u64], out: &mut Out) -> Result<()> {
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
    let keys: Vec<u64> = model.keys().copied().collect();
    let mut shown: Vec<u64> = Vec::new();
    if let (Some(&first), Some(&last)) = (keys.first(), keys.last()) {
        shown.extend([first, keys[keys.len() / 2], last]);
    }
    if let Some((&id, _)) = model.iter().find(|(_, &g)| g > 0) {
        shown.push(id);
    }
    shown.push(removed.last().copied().unwrap_or(u64::MAX));
    let mut seen = std::collections::HashSet::new();
    shown.retain(|id| seen.insert(*id));
    let mut rng = Rng::new(u64::from(view.len()));
    let sample: Vec<u64> = (0..keys.len().min(1000))
        .map(|_| keys[rng.below(keys.len())])
        .collect();

    let mut text = String::new();
    let mut table = output::Table::new(&[
        ("ID", output::Align::Right),
        ("FOUND", output::Align::Left),
        ("YEAR", output::Align::Right),
        ("TITLE", output::Align::Left),
    ]);
    let mut rows = Vec::new();
    for (n, &id) in shown.iter().chain(&sample).enumerate() {
        let found = match view.find(&id)? {
            Some((_, record)) => {
                let m = record
                    .get()
                    .with_context(|| format!("cannot read movie {id}"))?;
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
        let expected = model.get(&id).map(|&g| {
            title(id, g, &mut text);
            (text.clone(), year(id))
        });
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_round_trip() {
        let mut t = String::new();
        title(42, 0, &mut t);
        assert_eq!(t, "Title number 42");
        assert_eq!(generation_of(42, &t), Some(0));
        title(42, 7, &mut t);
        assert_eq!(t, "Title number 42 v7");
        assert_eq!(generation_of(42, &t), Some(7));
        assert_eq!(generation_of(4, &t), None);
        assert_eq!(generation_of(42, "Title number 42 v0"), None);
    }

    #[test]
    fn edits_follow_the_workload() {
        let mut model: Model = (0..10_000).map(|i| (i, 0)).collect();
        let edits = edit(&mut model, 2, 0.01, 0.001);
        assert_eq!(edits.removed.len(), 10);
        assert_eq!(model.len(), 10_000);
        assert_eq!(model.values().filter(|&&g| g == 2).count(), 100);
        assert!(model.contains_key(&10_009) && !model.contains_key(&10_010));
        // Seeded: the same cycle makes the same edits.
        let mut again: Model = (0..10_000).map(|i| (i, 0)).collect();
        edit(&mut again, 2, 0.01, 0.001);
        assert_eq!(model, again);
    }

    #[test]
    fn samples_are_distinct() {
        let mut rng = Rng::new(1);
        for (n, k) in [(10, 10), (100, 3), (1000, 999)] {
            let mut s = rng.sample(n, k);
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), k);
        }
    }
}
