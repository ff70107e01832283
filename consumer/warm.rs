//! Warm-up: bringing a new state's freshly mapped blobs into the process's
//! page tables before the state is swapped in, so that the first reads
//! after a swap (or a cold start) do not each pay a page fault.
//!
//! A blob a refresh maps is a new mapping: even when the file is in the
//! page cache (it was just fetched, or the cache kept it), every page's
//! first touch through the new mapping is a fault. Without warm-up the
//! first readers of the new state pay those faults; with it the refresh
//! does, before the swap, off the async workers. Only the blobs mapped by
//! the refresh are warmed: a delta refresh keeps the snapshot's mapping
//! (and the pages readers already touched) from the state before.
//!
//! The measured effect (`burrow bench`, figures `lookup_p99_after_swap_*`,
//! and `BENCHMARKS.md`) chose the default.

use crate::schema::blob::OpenBlob;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a refresh warms the blobs it maps before the swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WarmUp {
    /// Nothing: the first reads of each page fault it in.
    Off,
    /// `madvise(MADV_WILLNEED)`: the kernel reads the file ahead into the
    /// page cache, asynchronously; the page tables stay empty, so reads
    /// still take (minor) faults. Helps only a file not in the page cache.
    WillNeed,
    /// Fills the page tables before the swap: `madvise(MADV_POPULATE_READ)`
    /// (Linux 5.14), or, where the kernel refuses it, a read of one byte
    /// per page. The refresh takes longer by about a fault per page of the
    /// new blobs (the whole snapshot on a snapshot load, only the delta on
    /// a delta refresh), and the new blobs count as resident at once.
    #[default]
    Populate,
}

impl WarmUp {
    /// Warms `blobs` (blobs not mapped from a file are skipped) and returns
    /// the time it took. Never fails: advice the kernel refuses falls back
    /// to reading the pages, which is what the advice would have done.
    pub(super) fn warm(self, blobs: &[Arc<OpenBlob>]) -> Duration {
        let started = Instant::now();
        for map in blobs.iter().filter_map(|b| b.mapping()) {
            match self {
                WarmUp::Off => {}
                WarmUp::WillNeed => {
                    if let Err(e) = map.advise(memmap2::Advice::WillNeed) {
                        tracing::debug!(error = %e, "MADV_WILLNEED refused; touching the pages instead");
                        touch(map);
                    }
                }
                WarmUp::Populate => populate(map),
            }
        }
        started.elapsed()
    }
}

#[cfg(target_os = "linux")]
fn populate(map: &memmap2::Mmap) {
    if let Err(e) = map.advise(memmap2::Advice::PopulateRead) {
        tracing::debug!(error = %e, "MADV_POPULATE_READ refused; touching the pages instead");
        touch(map);
    }
}

#[cfg(not(target_os = "linux"))]
fn populate(map: &memmap2::Mmap) {
    touch(map);
}

/// Reads one byte of every page (4 KiB steps: at least one read per page
/// on every platform burrow runs on).
fn touch(bytes: &[u8]) {
    let mut sum = 0u8;
    for at in (0..bytes.len()).step_by(4096) {
        sum = sum.wrapping_add(bytes[at]);
    }
    std::hint::black_box(sum);
}
