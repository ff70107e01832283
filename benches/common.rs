//! The anchor workload's `Movie` records (`../shared/WORKLOAD.md`) for the
//! criterion benches: publishing them through the real producer, and the
//! owned-struct baseline.
#![allow(dead_code)]

use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder};
use burrow::producer::{Populate, Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Records in the bench dataset: moderate, so `cargo bench` stays short.
pub const N: u64 = 100_000;

pub const TAGS: [&str; 8] = [
    "action", "drama", "comedy", "horror", "doc", "kids", "anime", "thriller",
];

/// A Movie as owned Rust values: the in-heap baseline.
#[derive(Debug, Clone)]
pub struct Movie {
    pub id: u64,
    pub title: String,
    pub year: u32,
    pub tags: Vec<String>,
}

impl Movie {
    pub fn new(i: u64, generation: u32) -> Movie {
        let mut title = String::new();
        write_title(&mut title, i, generation);
        Movie {
            id: i,
            title,
            year: 1950 + (i % 70) as u32,
            tags: vec![
                TAGS[(i % 8) as usize].to_string(),
                TAGS[((i / 8) % 8) as usize].to_string(),
            ],
        }
    }

    pub fn decode(m: movie::Reader<'_>) -> capnp::Result<Movie> {
        let mut tags = Vec::with_capacity(2);
        for t in m.get_tags()? {
            tags.push(t?.to_string()?);
        }
        Ok(Movie {
            id: m.get_id(),
            title: m.get_title()?.to_string()?,
            year: m.get_year(),
            tags,
        })
    }

    /// Fills a generated builder with this movie.
    pub fn fill(&self, mut m: movie::Builder<'_>) {
        m.set_id(self.id);
        m.set_title(self.title.as_str());
        m.set_year(self.year);
        let mut t = m.reborrow().init_tags(self.tags.len() as u32);
        for (i, tag) in self.tags.iter().enumerate() {
            t.set(i as u32, tag.as_str());
        }
    }
}

pub fn write_title(out: &mut String, i: u64, g: u32) {
    out.clear();
    let _ = if g > 0 {
        write!(out, "Title number {i} v{g}")
    } else {
        write!(out, "Title number {i}")
    };
}

/// SplitMix64, seeded.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (((z ^ (z >> 31)) as u128 * n as u128) >> 64) as u64
    }
}

/// Generation of each record: cycle 1 all 0, then 1% set to the cycle.
pub fn generations(cycle: u32) -> Vec<u32> {
    let mut g = vec![0u32; N as usize];
    let mut rng = Rng(7);
    for c in 2..=cycle {
        for _ in 0..N / 100 {
            g[rng.below(N) as usize] = c;
        }
    }
    g
}

pub fn populate(p: &mut Populate<'_>, generations: &[u32]) -> burrow::Result<()> {
    let mut title = String::new();
    for (i, &g) in generations.iter().enumerate() {
        let i = i as u64;
        write_title(&mut title, i, g);
        p.add::<movie::Owned>(|mut m| {
            m.set_id(i);
            m.set_title(title.as_str());
            m.set_year(1950 + (i % 70) as u32);
            let mut t = m.init_tags(2);
            t.set(0, TAGS[(i % 8) as usize]);
            t.set(1, TAGS[((i / 8) % 8) as usize]);
            Ok(())
        })?;
    }
    Ok(())
}

pub fn producer(store: &BlobStore, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("bench")
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .expect("producer builds")
}

pub fn consumer(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .build()
        .expect("consumer builds")
}

/// A published dataset: cycle 1 (snapshot) and cycle 2 (a 1% delta), and a
/// consumer at cycle 1 whose cache holds both blobs.
pub struct Published {
    pub dir: tempfile::TempDir,
    pub store: BlobStore,
    pub consumer: Consumer,
    pub v1: u64,
    pub v2: u64,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn publish(rt: &tokio::runtime::Runtime) -> Published {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = BlobStore::local(dir.path().join("store")).expect("store");
    let producer = producer(&store, u32::MAX);
    let consumer = consumer(&store, &dir.path().join("cache"));
    rt.block_on(async {
        let g1 = generations(1);
        let v1 = producer
            .run_cycle(|p| populate(p, &g1))
            .await
            .expect("cycle 1")
            .version;
        let g2 = generations(2);
        let v2 = producer
            .run_cycle(|p| populate(p, &g2))
            .await
            .expect("cycle 2")
            .version;
        consumer.refresh_to(v2).await.expect("refresh to v2");
        consumer.refresh_to(v1).await.expect("back to v1");
        Published {
            dir,
            store,
            consumer,
            v1,
            v2,
        }
    })
}

/// The baseline map, decoded from a consumer's state.
pub fn hashmap_of(consumer: &Consumer) -> HashMap<u64, Movie> {
    let state = consumer.state().expect("state");
    let view = state.view::<movie::Owned>().expect("view");
    view.iter()
        .map(|item| {
            let (_, r) = item.expect("record");
            let m = Movie::decode(r.get().expect("movie")).expect("decode");
            (m.id, m)
        })
        .collect()
}
