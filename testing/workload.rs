//! The anchor workload (`../shared/WORKLOAD.md`): the `Movie` records, the
//! seeded choice of which records change each cycle, and churn. One copy,
//! used by `burrow bench`, the criterion benches and the tests.

use crate::producer::Populate;
use crate::schema::examples::movies_capnp::movie;
use std::fmt::Write as _;

pub const TAGS: [&str; 8] = [
    "action", "drama", "comedy", "horror", "doc", "kids", "anime", "thriller",
];

/// A Movie as owned Rust values: the in-heap baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    pub id: u64,
    pub title: String,
    pub year: u32,
    pub tags: Vec<String>,
}

impl Movie {
    /// Record `i` at generation `generation`, as the workload defines it.
    pub fn new(i: u64, generation: u32) -> Movie {
        let mut title = String::new();
        write_title(&mut title, i, generation);
        Movie {
            id: i,
            title,
            year: year(i),
            tags: tags(i).iter().map(|t| t.to_string()).collect(),
        }
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

    /// Decodes a record read from a blob.
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
}

/// The title of record `i` at generation `g`.
pub fn write_title(out: &mut String, i: u64, g: u32) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = if g > 0 {
        write!(out, "Title number {i} v{g}")
    } else {
        write!(out, "Title number {i}")
    };
}

pub fn year(i: u64) -> u32 {
    1950 + (i % 70) as u32
}

pub fn tags(i: u64) -> [&'static str; 2] {
    [TAGS[(i % 8) as usize], TAGS[((i / 8) % 8) as usize]]
}

/// SplitMix64: a small seeded generator, so every run picks the same
/// records.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The dataset the producer is handed each cycle: live ids and their
/// generations.
pub struct Dataset {
    ids: Vec<u64>,
    generations: Vec<u32>,
    next_id: u64,
    rng: Rng,
}

impl Dataset {
    /// Cycle 1: records `0..n`, all at generation 0.
    pub fn new(n: u64, seed: u64) -> Self {
        Dataset {
            ids: (0..n).collect(),
            generations: vec![0; n as usize],
            next_id: n,
            rng: Rng::new(seed),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The live ids and their generations.
    pub fn records(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.ids
            .iter()
            .copied()
            .zip(self.generations.iter().copied())
    }

    /// Moves to cycle `cycle` (2, 3, 4): `len × change` distinct records,
    /// picked at random, get generation `cycle`; with churn, 0.1% of the
    /// keys are removed and 0.1% new keys (at generation `cycle`) added
    /// (`churn` is that fraction: 0.001 for the workload's variant).
    pub fn advance(&mut self, cycle: u32, change: f64, churn: Option<f64>) {
        let len = self.ids.len();
        let picks = ((len as f64 * change).round() as usize).min(len);
        let mut picked = vec![false; len];
        let mut done = 0;
        while done < picks {
            let at = self.rng.below(len as u64) as usize;
            if !picked[at] {
                picked[at] = true;
                self.generations[at] = cycle;
                done += 1;
            }
        }
        if let Some(churn) = churn {
            let k = (len as f64 * churn).round() as usize;
            for _ in 0..k.min(self.ids.len()) {
                let at = self.rng.below(self.ids.len() as u64) as usize;
                self.ids.swap_remove(at);
                self.generations.swap_remove(at);
            }
            for _ in 0..k {
                self.ids.push(self.next_id);
                self.generations.push(cycle);
                self.next_id += 1;
            }
        }
    }

    /// Adds every record through the producer's generated-builder path.
    pub fn populate(&self, p: &mut Populate<'_>) -> crate::Result<()> {
        let mut title = String::with_capacity(40);
        for (&i, &g) in self.ids.iter().zip(&self.generations) {
            write_title(&mut title, i, g);
            p.add::<movie::Owned>(|mut m| {
                m.set_id(i);
                m.set_title(title.as_str());
                m.set_year(year(i));
                let [a, b] = tags(i);
                let mut t = m.init_tags(2);
                t.set(0, a);
                t.set(1, b);
                Ok(())
            })?;
        }
        Ok(())
    }
}
