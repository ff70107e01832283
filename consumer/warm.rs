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
///
/// Measured at 1M records (`BENCHMARKS.md`, "Read services under load"):
/// after a snapshot load (a fresh mapping of the whole snapshot) the p99
/// of the readers' next lookups is 3.7x lower populated than not (1.7 µs
/// against 6.4 µs), for about 13 ms more refresh, off the readers' path;
/// `MADV_WILLNEED` changes nothing when the file is in the page cache
/// (it always is after a fetch); after a delta swap no mode changes the
/// p99 measurably, and populating the delta costs about 65 µs. Populating
/// the first state instead makes the open to the first lookup 6.5x longer
/// (3.5 ms to 22.6 ms) and the whole snapshot resident at once (10 MiB to
/// 74 MiB). Hence the default, [`WarmUp::PopulateSwaps`]; a service that
/// waits for [`Consumer::ready`](super::Consumer::ready) before taking
/// traffic and wants its very first requests fast chooses
/// [`WarmUp::Populate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WarmUp {
    /// Nothing: the first reads of each page fault it in.
    Off,
    /// `madvise(MADV_WILLNEED)`: the kernel reads the file ahead into the
    /// page cache, asynchronously; the page tables stay empty, so reads
    /// still take (minor) faults. Helps only a file not in the page cache.
    WillNeed,
    /// [`WarmUp::Populate`] for a state that replaces a serving one; the
    /// first state is swapped in cold, so that opening stays instant and
    /// memory is what reads touch.
    #[default]
    PopulateSwaps,
    /// Fills the page tables before the swap: `madvise(MADV_POPULATE_READ)`
    /// (Linux 5.14), or, where the kernel refuses it, a read of one byte
    /// per page. The refresh takes longer by about a fault per page of the
    /// new blobs (the whole snapshot on a snapshot load, only the delta on
    /// a delta refresh), and the new blobs count as resident at once.
    Populate,
}

impl WarmUp {
    /// Warms `blobs` (blobs not mapped from a file are skipped) for a
    /// state that replaces a serving one (`replaces`) or the first, and
    /// returns the time it took. Never fails: advice the kernel refuses
    /// falls back to reading the pages, which is what the advice would
    /// have done.
    pub(super) fn warm(self, blobs: &[Arc<OpenBlob>], replaces: bool) -> Duration {
        let started = Instant::now();
        for map in blobs.iter().filter_map(|b| b.mapping()) {
            match self {
                WarmUp::Off => {}
                WarmUp::PopulateSwaps if !replaces => {}
                WarmUp::PopulateSwaps => populate(map),
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
