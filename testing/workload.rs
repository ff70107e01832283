//! The anchor workload (`../shared/WORKLOAD.md`): the `Movie` records, the
//! seeded choice of which records change, leave and arrive each cycle, and
//! publishing them. The one generator used by `burrow demo`, `burrow bench`,
//! the criterion benches, the crash-test process and the tests (feature
//! `workload`, on with `cli` and `testing`).
//!
//! Invariants:
//!
//! - Record `i` at generation `g` is a pure function of `(i, g)`
//!   ([`Movie::new`]), and its title names `g` ([`generation_of`] reads it
//!   back), so a published state can be turned back into a [`Dataset`].
//! - A cycle's edits ([`Dataset::advance`]) depend only on the dataset's
//!   ids, its seed and the cycle number, not on earlier cycles' random
//!   draws: a process that rebuilds the dataset from a published state
//!   (the demo, continuing a store) makes the same edits as one that never
//!   stopped.

use crate::producer::Populate;
use crate::schema::examples::movies_capnp::movie;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The tags `T` of the workload.
pub const TAGS: [&str; 8] = [
    "action", "drama", "comedy", "horror", "doc", "kids", "anime", "thriller",
];

/// A Movie as owned Rust values: the in-heap baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    /// The primary key, `i`.
    pub id: u64,
    /// `"Title number {i}"`, followed by `" v{g}"` when `g > 0`.
    pub title: String,
    /// `1950 + i % 70`.
    pub year: u32,
    /// `[T[i % 8], T[(i / 8) % 8]]`.
    pub tags: Vec<String>,
}

impl Movie {
    /// Record `i` at generation `generation`, as the workload defines it.
    pub fn new(i: u64, generation: u64) -> Movie {
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
    pub fn fill(&self, m: movie::Builder<'_>) {
        let tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        fill(m, self.id, &self.title, self.year, &tags);
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

fn fill(mut m: movie::Builder<'_>, id: u64, title: &str, year: u32, tags: &[&str]) {
    m.set_id(id);
    m.set_title(title);
    m.set_year(year);
    let mut t = m.init_tags(tags.len() as u32);
    for (i, tag) in tags.iter().enumerate() {
        t.set(i as u32, tag);
    }
}

/// Writes the title of record `i` at generation `g` into `out` (cleared
/// first), so a loop can reuse one buffer.
pub fn write_title(out: &mut String, i: u64, g: u64) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = if g > 0 {
        write!(out, "Title number {i} v{g}")
    } else {
        write!(out, "Title number {i}")
    };
}

/// Reads a title back into its generation; `None` if it is not what
/// [`write_title`] writes for `id`.
pub fn generation_of(id: u64, title: &str) -> Option<u64> {
    let rest = title.strip_prefix("Title number ")?;
    let rest = rest.strip_prefix(id.to_string().as_str())?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(" v")?.parse().ok().filter(|&g| g > 0)
}

/// The year of record `i`.
pub fn year(i: u64) -> u32 {
    1950 + (i % 70) as u32
}

/// The tags of record `i`.
pub fn tags(i: u64) -> [&'static str; 2] {
    [TAGS[(i % 8) as usize], TAGS[((i / 8) % 8) as usize]]
}

/// SplitMix64: a small seeded generator, the same on every platform, so
/// every run picks the same records.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The same sequence for the same seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
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

    /// `k` distinct indices of `0..n` (at most `n`), in random order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        if k * 4 >= n {
            // Dense: a partial Fisher-Yates shuffle.
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + self.below((n - i) as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(k);
            return all;
        }
        let mut seen = std::collections::HashSet::with_capacity(k);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let i = self.below(n as u64) as usize;
            if seen.insert(i) {
                out.push(i);
            }
        }
        out
    }
}

/// What one [`Dataset::advance`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// Ids whose generation became the cycle number.
    pub changed: Vec<u64>,
    /// Ids removed.
    pub removed: Vec<u64>,
    /// New ids (at generation 0), above every id the dataset had.
    pub added: Vec<u64>,
}

/// The dataset the producer is handed each cycle: live ids and their
/// generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    records: BTreeMap<u64, u64>,
    seed: u64,
}

impl Dataset {
    /// Cycle 1: records `0..n`, all at generation 0; `seed` picks every
    /// later cycle's edits.
    pub fn new(n: u64, seed: u64) -> Self {
        Dataset::from_records((0..n).map(|i| (i, 0)), seed)
    }

    /// A dataset of the given `(id, generation)` pairs (e.g. read back from
    /// a published state).
    pub fn from_records(records: impl IntoIterator<Item = (u64, u64)>, seed: u64) -> Self {
        Dataset {
            records: records.into_iter().collect(),
            seed,
        }
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is live.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The live ids and their generations, by id.
    pub fn records(&self) -> &BTreeMap<u64, u64> {
        &self.records
    }

    /// The live record `id`, if any.
    pub fn movie(&self, id: u64) -> Option<Movie> {
        self.records.get(&id).map(|&g| Movie::new(id, g))
    }

    /// Moves to cycle `cycle`. With `n` records before the cycle and a
    /// generator seeded by the seed and `cycle`, it picks `round(n ×
    /// churn)` records to remove and `round(n × change)` other records to
    /// set to generation `cycle`, then adds `round(n × churn)` new ids
    /// above the highest one, at generation 0.
    pub fn advance(&mut self, cycle: u64, change: f64, churn: f64) -> Edits {
        let n = self.records.len();
        let changes = (n as f64 * change).round() as usize;
        let churns = (n as f64 * churn).round() as usize;
        let mut rng = Rng::new(self.seed ^ cycle);
        let keys: Vec<u64> = self.records.keys().copied().collect();
        let picked = rng.sample(n, changes + churns);
        let (removed, changed) = picked.split_at(churns.min(picked.len()));
        let mut edits = Edits::default();
        for &i in changed {
            self.records.insert(keys[i], cycle);
            edits.changed.push(keys[i]);
        }
        for &i in removed {
            self.records.remove(&keys[i]);
            edits.removed.push(keys[i]);
        }
        let next = keys.last().map_or(0, |&k| k + 1);
        for id in next..next + churns as u64 {
            self.records.insert(id, 0);
            edits.added.push(id);
        }
        edits
    }

    /// Adds `edits` (what [`Dataset::advance`] did) to an incremental
    /// cycle: an upsert of each changed and added record, a delete of each
    /// removed one.
    pub fn add_edits(
        &self,
        edits: &Edits,
        inc: &mut crate::producer::Incremental<'_>,
    ) -> crate::Result<()> {
        let mut title = String::with_capacity(40);
        for &i in edits.changed.iter().chain(&edits.added) {
            let Some(&g) = self.records.get(&i) else {
                continue;
            };
            write_title(&mut title, i, g);
            inc.upsert::<movie::Owned>(|m| {
                fill(m, i, &title, year(i), &tags(i));
                Ok(())
            })?;
        }
        for i in &edits.removed {
            inc.delete::<movie::Owned, _>(i)?;
        }
        Ok(())
    }

    /// Adds every record through the producer's generated-builder path.
    pub fn populate(&self, p: &mut Populate<'_>) -> crate::Result<()> {
        self.populate_range(p, ..)
    }

    /// [`Dataset::populate`] from `parts` threads ([`Populate::parallel`]),
    /// each adding one contiguous range of ids, in id order: the records
    /// arrive in the same order as [`Dataset::populate`]'s, so the blobs
    /// are the same bytes.
    pub fn populate_parallel(&self, p: &mut Populate<'_>, parts: usize) -> crate::Result<()> {
        let parts = parts.clamp(1, self.records.len().max(1));
        // Part k starts at the (k * len / parts)-th id.
        let mut starts = Vec::with_capacity(parts);
        let mut ids = self.records.keys();
        let mut at = 0;
        for k in 1..parts {
            let want = k * self.records.len() / parts;
            if let Some(&id) = ids.nth(want - at) {
                starts.push(id);
            }
            at = want + 1;
        }
        p.parallel(parts, |k, part| {
            let from = if k == 0 { None } else { starts.get(k - 1) };
            let to = starts.get(k);
            match (from, to) {
                (None, None) => self.populate_range(part, ..),
                (None, Some(&to)) => self.populate_range(part, ..to),
                (Some(&from), None) => self.populate_range(part, from..),
                (Some(&from), Some(&to)) => self.populate_range(part, from..to),
            }
        })
    }

    fn populate_range(
        &self,
        p: &mut Populate<'_>,
        range: impl std::ops::RangeBounds<u64>,
    ) -> crate::Result<()> {
        let mut title = String::with_capacity(40);
        for (&i, &g) in self.records.range(range) {
            write_title(&mut title, i, g);
            p.add::<movie::Owned>(|m| {
                fill(m, i, &title, year(i), &tags(i));
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_titles_round_trip() {
        let mut t = String::new();
        write_title(&mut t, 42, 0);
        assert_eq!(t, "Title number 42");
        assert_eq!(generation_of(42, &t), Some(0));
        write_title(&mut t, 42, 7);
        assert_eq!(t, "Title number 42 v7");
        assert_eq!(generation_of(42, &t), Some(7));
        assert_eq!(generation_of(4, &t), None);
        assert_eq!(generation_of(42, "Title number 42 v0"), None);
        assert_eq!(Movie::new(42, 7).title, t);
    }

    #[test]
    fn workload_edits_follow_the_workload_and_depend_only_on_the_cycle() {
        let mut data = Dataset::new(10_000, 3);
        let edits = data.advance(2, 0.01, 0.001);
        assert_eq!(edits.removed.len(), 10);
        assert_eq!(edits.changed.len(), 100);
        assert_eq!(edits.added, (10_000..10_010).collect::<Vec<_>>());
        assert_eq!(data.len(), 10_000);
        assert_eq!(data.records().values().filter(|&&g| g == 2).count(), 100);
        assert!(edits.removed.iter().all(|id| !edits.changed.contains(id)));
        // Rebuilt from its records, a dataset makes the same edits as the
        // one that made them.
        let mut again = Dataset::from_records(data.records().clone(), 3);
        let e3 = data.advance(3, 0.01, 0.001);
        assert_eq!(again.advance(3, 0.01, 0.001), e3);
        assert_eq!(data, again);
        // Another seed, other picks.
        let mut other = Dataset::new(10_000, 4);
        assert_ne!(other.advance(2, 0.01, 0.001), edits);
    }

    #[test]
    fn workload_samples_are_distinct() {
        let mut rng = Rng::new(1);
        for (n, k) in [(10, 10), (100, 3), (1000, 999), (5, 9)] {
            let mut s = rng.sample(n, k);
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), k.min(n));
            assert!(s.iter().all(|&i| i < n));
        }
    }
}
