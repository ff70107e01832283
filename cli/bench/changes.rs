//! The change-notification and type-filtering figures (issue 11).
//!
//! They publish a dataset of their own with two types, so that the anchor
//! figures' blobs stay as they are: the workload's movies and half as many
//! shelves (`schema/examples/library.capnp`, two books each), a snapshot,
//! then a cycle that changes `change` of the movies (a delta; the producer
//! writes a snapshot of it too).
//!
//! - `refresh_listening` is the delta refresh of a consumer with a refresh
//!   listener that reads the id of every added, removed and changed movie
//!   (old and new), beside `refresh_plain`, the same refresh without one.
//! - `changes_compared` is what a snapshot load or a jump costs the
//!   listener instead: the changes between the two versions' states, each
//!   loaded from its own snapshot, found by comparing them record by
//!   record.
//! - `snapshot_checksum_check` is what checking a snapshot's state
//!   checksums costs (`ReadState::check_checksums`: every record
//!   canonicalized and hashed), paid before a snapshot is swapped in where
//!   warm-up reads its pages anyway.
//! - `open_filtered` is a consumer that reads movies only opening over a
//!   warm cache (to its first lookup), beside `open_unfiltered`, which
//!   builds read state for both types.

use super::report::{Figure, Unit};
use anyhow::{anyhow, bail};
use burrow::blobstore::BlobStore;
use burrow::consumer::{ConsumerBuilder, RefreshEvent, RefreshListener, Step};
use burrow::producer::{Populate, ProducerBuilder};
use burrow::schema::examples::library_capnp::shelf;
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::record::TypeInfo;
use burrow::testing::workload::Dataset;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counts what it is told and reads every movie it is told of.
#[derive(Default)]
struct ReadEveryChange {
    changes: AtomicU64,
    id_sum: AtomicU64,
}

impl RefreshListener for ReadEveryChange {
    fn refreshed(&self, event: &RefreshEvent) {
        let Ok(Some(movies)) = event.typed::<movie::Owned>() else {
            return;
        };
        let (mut n, mut sum) = (0u64, 0u64);
        for m in movies.added().chain(movies.removed()) {
            sum = sum.wrapping_add(m.get_id());
            n += 1;
        }
        for (old, new) in movies.changed() {
            sum = sum.wrapping_add(old.get_id() ^ new.get_id());
            n += 1;
        }
        self.changes.fetch_add(n, Ordering::Relaxed);
        self.id_sum.fetch_add(sum, Ordering::Relaxed);
    }
}

fn add_shelves(p: &mut Populate<'_>, n: u64) -> burrow::Result<()> {
    for i in 0..n {
        p.add::<shelf::Owned>(|mut s| {
            s.set_id(i);
            s.set_label(format!("shelf {i}").as_str());
            let mut books = s.reborrow().init_books(2);
            books.reborrow().get(0).set_title("Dune");
            books.reborrow().get(0).set_pages(412);
            books.get(1).set_title("Emma");
            Ok(())
        })?;
    }
    Ok(())
}

/// Measures the figures above over `records` movies, `runs` times each,
/// each beside its baseline.
pub(super) async fn figures(
    records: u64,
    change: f64,
    seed: u64,
    runs: usize,
    work: &Path,
) -> anyhow::Result<Vec<Figure>> {
    let shelves = (records / 2).max(1);
    eprintln!("bench: change notifications: publishing {records} movies and {shelves} shelves");
    let dir = work.join("changes");
    let store = BlobStore::local(dir.join("store"))?;
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("bench-changes")
        .primary_key::<movie::Owned>(&["id"])
        .primary_key::<shelf::Owned>(&["id"])
        .retention(None)
        .build()?;
    let mut data = Dataset::new(records, seed);
    let mut versions = [0; 2];
    for (cycle, version) in versions.iter_mut().enumerate() {
        if cycle > 0 {
            data.advance(cycle as u64 + 1, change, 0.0);
        }
        let data = &data;
        *version = producer
            .run_cycle(|p| {
                data.populate(p)?;
                add_shelves(p, shelves)
            })
            .await?
            .version;
    }
    let [v1, v2] = versions;
    if v2 == v1 {
        bail!("the change-notification bench's second cycle changed nothing (change {change})");
    }

    // The delta refresh, with and without a listener, interleaved.
    let listener = Arc::new(ReadEveryChange::default());
    let plain = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.join("cache-plain"))
        .build()?;
    let listening = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.join("cache-listening"))
        .refresh_listener(Arc::clone(&listener))
        .build()?;
    let (mut plain_s, mut listening_s) = (Vec::new(), Vec::new());
    let mut told = 0;
    for r in 0..runs {
        eprintln!("bench: change notifications {}/{runs}", r + 1);
        for (consumer, out) in [(&plain, &mut plain_s), (&listening, &mut listening_s)] {
            consumer.refresh_to(v1).await?;
            let before = listener.changes.load(Ordering::Relaxed);
            let t = Instant::now();
            let report = consumer
                .refresh_to(v2)
                .await?
                .ok_or_else(|| anyhow!("the consumer was already at version {v2}"))?;
            out.push(t.elapsed().as_secs_f64());
            if report.steps.iter().any(|s| matches!(s, Step::Snapshot(_))) {
                bail!("the refresh from {v1} to {v2} loaded a snapshot; the bench times deltas");
            }
            told = listener.changes.load(Ordering::Relaxed) - before;
        }
    }
    if told == 0 {
        bail!("the refresh listener was told of no change from {v1} to {v2}");
    }
    black_box(listener.id_sum.load(Ordering::Relaxed));
    drop((plain, listening));

    // The changes found by comparing two states loaded from snapshots.
    let at = |version: u64, cache: &str| {
        let store = store.clone();
        let cache = dir.join(cache);
        async move {
            let consumer = ConsumerBuilder::new(store).cache_dir(cache).build()?;
            consumer.refresh_to(version).await?;
            anyhow::Ok(consumer.state()?)
        }
    };
    let (old, new) = (at(v1, "cache-old").await?, at(v2, "cache-new").await?);
    // What a consumer pays to check a snapshot's state checksums before it
    // swaps the snapshot in (every record canonicalized and hashed).
    let mut checked = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        new.check_checksums()?;
        checked.push(t.elapsed().as_secs_f64());
    }
    let mut compared = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let event = RefreshEvent::compute(Some(Arc::clone(&old)), Arc::clone(&new));
        let changes = event
            .changes()
            .map_err(|e| anyhow!("comparing states: {e}"))?;
        compared.push(t.elapsed().as_secs_f64());
        let n: usize = changes
            .iter()
            .map(|c| c.added.len() + c.removed.len() + c.changed.len())
            .sum();
        if n as u64 != told {
            bail!("comparing states found {n} changes; the deltas told the listener {told}");
        }
    }
    drop((old, new));

    // Opening over a warm cache, filtered to movies and not.
    let cache = dir.join("cache-open");
    at(v2, "cache-open").await?;
    let (mut unfiltered, mut filtered) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (only_movies, out) in [(false, &mut unfiltered), (true, &mut filtered)] {
            let t = Instant::now();
            let mut builder = ConsumerBuilder::new(store.clone()).cache_dir(&cache);
            if only_movies {
                builder = builder.types(&[TypeInfo::of::<movie::Owned>()]);
            }
            let consumer = builder.build()?;
            consumer.refresh_to(v2).await?;
            let state = consumer.state()?;
            let found = state.view::<movie::Owned>()?.find(&0u64)?.is_some();
            out.push(t.elapsed().as_secs_f64());
            if !found {
                bail!("movie 0 is missing at version {v2}");
            }
            let shelves_readable = state.view::<shelf::Owned>().is_ok();
            if shelves_readable == only_movies {
                bail!(
                    "a consumer filtered to movies={only_movies} read shelves={shelves_readable}"
                );
            }
        }
    }

    Ok(vec![
        Figure::new(
            "refresh_plain",
            "BASELINE delta refresh, no listener",
            Unit::Seconds,
            plain_s,
        ),
        Figure::new(
            "refresh_listening",
            "delta refresh, a listener reading every changed movie",
            Unit::Seconds,
            listening_s,
        )
        .vs("refresh_plain"),
        Figure::new(
            "changes_told",
            "changes the listener was told of per delta refresh",
            Unit::Count,
            vec![told as f64],
        ),
        Figure::new(
            "changes_compared",
            "changes between two snapshot-loaded states, compared",
            Unit::Seconds,
            compared,
        ),
        Figure::new(
            "snapshot_checksum_check",
            "state checksums of a snapshot summed over every record",
            Unit::Seconds,
            checked,
        ),
        Figure::new(
            "open_unfiltered",
            "BASELINE open over a warm cache, movies and shelves",
            Unit::Seconds,
            unfiltered,
        ),
        Figure::new(
            "open_filtered",
            "open over a warm cache, movies only",
            Unit::Seconds,
            filtered,
        )
        .vs("open_unfiltered"),
    ])
}
