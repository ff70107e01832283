//! A latency histogram: per-lookup times in nanoseconds, recorded without
//! allocating (so that a reader thread can time millions of lookups), read
//! back as percentiles within about 3%.
//!
//! Values below 64 ns have a bucket each; above, each power of two is cut
//! into 32 buckets, so a bucket's width is at most 1/32 of its values.

/// Buckets: 64 exact ones, then 32 per power of two from 2^6 to 2^63.
const BUCKETS: usize = 64 + 58 * 32;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < 64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as usize; // >= 6
    let m = (v >> (e - 5)) as usize; // in 32..64
    64 + (e - 6) * 32 + (m - 32)
}

/// The highest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    if i < 64 {
        return i as u64;
    }
    let (e, m) = ((i - 64) / 32 + 6, (i - 64) % 32 + 32);
    // The last bucket's end shifts out of range: it ends at u64::MAX.
    (((m as u64) + 1) << (e - 5)).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the upper end of the bucket that
    /// holds it, never above the largest value recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_a_32nd() {
        let mut last = 0;
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS, "{v}");
            assert!(upper(b) >= v, "{v}");
            assert!(upper(b) - v <= v / 32, "{v}: upper {}", upper(b));
            last = b;
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((500..=516).contains(&p50), "{p50}");
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.max(), 1000);
        let mut other = Histogram::default();
        other.record(5000);
        h.merge(&other);
        assert_eq!((h.count(), h.max()), (1001, 5000));
    }
}
