//! The secondary index figure: `index_lookup`, ns per matched record of a
//! lookup by `year` through the producer's `by_year` index, reading each
//! match's `id`, beside a baseline with the same indirection (a
//! `HashMap<u32, Vec<u32>>` of positions into a `Vec<Movie>`).
//!
//! It publishes its own one-snapshot dataset (the workload's records, with
//! the index declared) so that the anchor figures' blobs stay as they are.

use super::report::{Figure, Unit};
use anyhow::anyhow;
use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::{Dataset, Movie, Rng};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// Lookups per run: each matches about records / 70 records.
const QUERIES: usize = 64;

/// Measures `index_lookup` and its baseline over `records` workload
/// records, `runs` times each, interleaved.
pub(super) async fn figures(
    records: u64,
    seed: u64,
    runs: usize,
    work: &Path,
) -> anyhow::Result<Vec<Figure>> {
    eprintln!("bench: index lookups: publishing {records} records with a by_year index");
    let dir = work.join("index");
    let store = BlobStore::local(dir.join("store"))?;
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("bench-index")
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("by_year", &["year"])
        .build()?;
    let data = Dataset::new(records, seed);
    producer.run_cycle(|p| data.populate(p)).await?;
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(dir.join("cache"))
        .build()?;
    consumer.refresh().await?;
    let state = consumer.state()?;
    let view = state.view::<movie::Owned>()?;
    let by_year = view.index("by_year")?;

    let mut movies = Vec::with_capacity(view.len() as usize);
    let mut positions: HashMap<u32, Vec<u32>> = HashMap::new();
    for (_, record) in view.iter() {
        let m = Movie::decode(record)?;
        positions
            .entry(m.year)
            .or_default()
            .push(movies.len() as u32);
        movies.push(m);
    }
    let years: Vec<u32> = positions.keys().copied().collect();
    if years.is_empty() {
        return Err(anyhow!("the index bench has no records"));
    }
    let mut rng = Rng::new(seed ^ 0x1de5);
    let queries: Vec<u32> = (0..QUERIES)
        .map(|_| years[rng.below(years.len() as u64) as usize])
        .collect();

    let (mut through_index, mut baseline) = (Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!("bench: index lookups {}/{runs}", r + 1);
        let t = Instant::now();
        let (mut sum, mut n) = (0u64, 0u64);
        for year in &queries {
            for found in by_year.find(black_box(year))? {
                let (_, record) = found?;
                sum = sum.wrapping_add(record.get_id());
                n += 1;
            }
        }
        through_index.push(t.elapsed().as_nanos() as f64 / n.max(1) as f64);
        black_box(sum);

        let t = Instant::now();
        let (mut sum, mut n) = (0u64, 0u64);
        for year in &queries {
            let at = positions
                .get(black_box(year))
                .ok_or_else(|| anyhow!("year {year} not found"))?;
            for &p in at {
                sum = sum.wrapping_add(movies[p as usize].id);
                n += 1;
            }
        }
        baseline.push(t.elapsed().as_nanos() as f64 / n.max(1) as f64);
        black_box(sum);
    }
    Ok(vec![
        Figure::new(
            "hashmap_index_lookup",
            "BASELINE HashMap<year, positions> into Vec<Movie>, id per match",
            Unit::NsPerOp,
            baseline,
        ),
        Figure::new(
            "index_lookup",
            "secondary index lookup by year, id per match (ns per match)",
            Unit::NsPerOp,
            through_index,
        )
        .vs("hashmap_index_lookup")
        .target("<= 1.0x the HashMap", Some(1.0), None),
    ])
}
