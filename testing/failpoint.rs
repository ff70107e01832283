//! Failpoints: named points in a producer cycle and a consumer fetch where a
//! test can have the process killed, to check that a crash at any step
//! leaves nothing inconsistent behind.
//!
//! With the `failpoints` cargo feature, [`hit`] reads the environment
//! variable `BURROW_FAILPOINT` (once per process): a comma-separated list of
//! `name` or `name@n` (default `n` = 1). The `n`-th time the process reaches
//! a listed point it sends itself `SIGKILL`: no destructor, no flush, no
//! `atexit`, exactly what an out-of-memory kill or a power cut does to the
//! process. `BURROW_FAILPOINT=any@n` kills at the `n`-th failpoint of any
//! name. Without the feature, [`hit`] is an empty inline function and the
//! points cost nothing.
//!
//! The points, in the order a cycle or a fetch reaches them:
//!
//! | name | where |
//! | --- | --- |
//! | `before-publish` | blobs written in memory, nothing put yet |
//! | `after-delta-put` | the delta is in the store |
//! | `after-reverse-put` | the reverse delta is in the store |
//! | `after-snapshot-put` | the snapshot is in the store |
//! | `before-announce` | every blob is in the store, nothing announced |
//! | `after-announce-entry` | `announce/<seq>` is written, the hint is not |
//! | `after-announce-hint` | `announce/latest` is written |
//! | `fetch-mid-write` | a cache temp file holds part of a blob |
//! | `fetch-before-rename` | a temp file is whole, fsynced and verified |
//! | `fetch-after-rename` | the blob has its final name; directory not fsynced |

/// How many of [`NAMES`], from the first, are the producer's (the rest
/// are the consumer's).
pub const PRODUCER_POINTS: usize = 9;

/// Every failpoint name, for tests that run each one.
pub const NAMES: [&str; 12] = [
    "mid-blob-write",
    "before-publish",
    "after-upload-part",
    "after-delta-put",
    "after-reverse-put",
    "after-snapshot-put",
    "before-announce",
    "after-announce-entry",
    "after-announce-hint",
    "fetch-mid-write",
    "fetch-before-rename",
    "fetch-after-rename",
];

/// Marks failpoint `name`: kills the process here if `BURROW_FAILPOINT`
/// selects it (only with the `failpoints` feature).
#[inline(always)]
pub fn hit(name: &'static str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    /// `(name, n)` pairs from the environment, and hit counts per name.
    struct Armed {
        points: Vec<(String, u64)>,
        counts: Mutex<std::collections::HashMap<&'static str, u64>>,
        any: AtomicU64,
    }

    fn armed() -> &'static Armed {
        static ARMED: OnceLock<Armed> = OnceLock::new();
        ARMED.get_or_init(|| {
            let spec = std::env::var("BURROW_FAILPOINT").unwrap_or_default();
            let points = spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.split_once('@') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                    None => (s.to_string(), 1),
                })
                .collect();
            Armed {
                points,
                counts: Mutex::default(),
                any: AtomicU64::new(0),
            }
        })
    }

    pub(super) fn hit(name: &'static str) {
        let armed = armed();
        if armed.points.is_empty() {
            return;
        }
        let any = armed.any.fetch_add(1, Ordering::SeqCst) + 1;
        let count = {
            let mut counts = armed.counts.lock().unwrap_or_else(|e| e.into_inner());
            let c = counts.entry(name).or_insert(0);
            *c += 1;
            *c
        };
        let fire = armed
            .points
            .iter()
            .any(|(p, n)| (p == name && *n == count) || (p == "any" && *n == any));
        if fire {
            eprintln!("failpoint {name}: killing process {}", std::process::id());
            // SAFETY: kill(2) with our own pid and a valid signal number has
            // no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort();
        }
    }
}
