//! Warm-up (issue 17): a refresh populates the page tables of the blobs it
//! maps before the swap, as its `WarmUp` says, and only then.
//!
//! Invariant: with `Populate`, every page of a state's freshly mapped
//! snapshot is resident in this process when the state is swapped in; the
//! default (`PopulateSwaps`) leaves the first state cold and warms a
//! snapshot that replaces a serving state; `Off` warms nothing. Measured
//! from `/proc/self/smaps`, per mapping (so other tests' memory does not
//! count).

use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::{Consumer, ConsumerBuilder, WarmUp};
use std::path::Path;

/// (size, resident) in KiB of this process's mapping of `file`.
fn mapping_of(file: &Path) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let file = file.canonicalize().unwrap().display().to_string();
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        if line.ends_with(&file) {
            let mut field = |name: &str| -> u64 {
                let l = lines.find(|l| l.starts_with(name)).unwrap();
                l[name.len()..]
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap()
            };
            let size = field("Size:");
            let rss = field("Rss:");
            return (size, rss);
        }
    }
    panic!("{file} is not mapped");
}

fn consumer_at(store: &BlobStore, cache: &Path, warm_up: WarmUp) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .warm_up(warm_up)
        // Every refresh loads a snapshot: a fresh mapping of a whole file.
        .max_delta_depth(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_populates_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "p");
    let mut model: Model = (0..30_000).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;

    let caches = ["populate", "swaps", "off"].map(|n| dir.path().join(n));
    let modes = [WarmUp::Populate, WarmUp::PopulateSwaps, WarmUp::Off];
    let mut built = Vec::new();
    for (warm, cache) in modes.into_iter().zip(&caches) {
        let c = consumer_at(&store, cache, warm);
        c.refresh().await.unwrap();
        built.push(c);
    }
    let resident = |cache: &Path, version: u64| {
        let (size, rss) = mapping_of(&cached_blob(cache, &BlobName::Snapshot(version)));
        assert!(size >= 1024, "a snapshot of more than a MiB: {size} KiB");
        (size, rss)
    };
    // The first state: warmed by Populate only.
    let (size, rss) = resident(&caches[0], v1);
    assert_eq!(rss, size, "Populate: the first state is resident");
    for cache in &caches[1..] {
        let (size, rss) = resident(cache, v1);
        assert!(
            rss < size / 2,
            "the first state stays cold: {rss} of {size} KiB"
        );
    }

    // A snapshot that replaces the serving state.
    model.insert(7, movie_value(7, 2));
    let v2 = publish(&producer, &model).await.unwrap().version;
    for c in &built {
        let report = c.refresh().await.unwrap().unwrap();
        assert_eq!(report.steps.len(), 1, "a snapshot load: {:?}", report.steps);
    }
    for cache in &caches[..2] {
        let (size, rss) = resident(cache, v2);
        assert_eq!(rss, size, "{}: the new state is resident", cache.display());
    }
    let (size, rss) = resident(&caches[2], v2);
    assert!(
        rss < size / 2,
        "Off: the new state stays cold: {rss} of {size} KiB"
    );
}
