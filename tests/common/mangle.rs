//! Damaging a store's blobs under a running consumer: two versions
//! published, a consumer serving the first, the second's blobs replaced by
//! mangled bytes, and the consumer's refusals collected. Shared by
//! tests/hostile.rs (damage to the envelope and checksum) and
//! tests/hostile_v2.rs (damage to the v2 body's structure).

use super::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::error::Error;
use burrow::schema::envelope::ENVELOPE_LEN;

/// The two versions a mangling test publishes.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Version 1's records.
    pub v1: Model,
    /// Version 2's records.
    pub v2: Model,
    /// The producer's largest list shift: lower it to split a type's
    /// records into several lists (`1 << shift` records each).
    pub max_list_shift: u8,
}

impl Default for Scenario {
    /// [`Scenario::new`] of 50 records.
    fn default() -> Self {
        Scenario::new(50)
    }
}

impl Scenario {
    /// Version 1: ids `0..records`. Version 2: records 3 and 4 changed,
    /// 7, 9 and 11 removed (the snapshot has holes), one record added; the
    /// delta 1 -> 2 sets three records and removes three.
    pub fn new(records: u64) -> Self {
        let v1: Model = (0..records).map(|i| (i, movie_value(i, 0))).collect();
        let mut v2 = v1.clone();
        for i in [3, 4] {
            v2.insert(i, movie_value(i, 1));
        }
        for i in [7, 9, 11] {
            v2.remove(&i);
        }
        v2.insert(records, movie_value(records, 0));
        Scenario {
            v1,
            v2,
            max_list_shift: burrow::schema::blob::MAX_LIST_SHIFT,
        }
    }

    /// The producer of both versions (raw blobs, as every mangling test
    /// needs: see [`super::producer`]).
    pub fn producer(&self, store: &BlobStore) -> burrow::producer::Producer {
        burrow::producer::ProducerBuilder::new(store.clone())
            .producer_id("p")
            .compression(burrow::blobstore::Compression::None)
            .max_list_shift(self.max_list_shift)
            .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(&["id"])
            .build()
            .expect("producer builds")
    }
}

/// One refresh that failed: the blob it failed at and the whole error.
#[derive(Debug)]
pub struct Refusal {
    /// The blob's name, as errors print it.
    pub blob: String,
    /// The error's text.
    pub error: String,
}

/// What a consumer at version 1 said of version 2's mangled blobs.
pub struct Refused {
    /// The store and cache live here.
    pub dir: tempfile::TempDir,
    /// The version the consumer serves.
    pub v1: u64,
    /// The version it was refused.
    pub v2: u64,
    /// Each refresh's failure, in order (two refreshes: the second plans
    /// around the blob the first found bad; a refresh that finds a removed
    /// blob gone plans around it at once, and then the second finds no
    /// path left and is not listed).
    pub refusals: Vec<Refusal>,
}

impl Refused {
    /// The error of the refresh that failed at `blob`; panics, listing the
    /// refusals, if none did.
    pub fn at(&self, blob: &BlobName) -> &str {
        let name = blob.to_string();
        self.refusals
            .iter()
            .find(|r| r.blob == name)
            .map(|r| r.error.as_str())
            .unwrap_or_else(|| panic!("no refresh failed at {name}: {:?}", self.refusals))
    }

    /// Every refusal's text, joined.
    pub fn all(&self) -> String {
        let texts: Vec<&str> = self.refusals.iter().map(|r| r.error.as_str()).collect();
        texts.join(" / ")
    }
}

/// Publishes `scenario`'s two versions into a local store, has a consumer
/// at version 1, then hands the store's delta 1 -> 2 and snapshot 2 to
/// `mangle`, which returns each blob's new bytes (`None` removes the blob
/// from the store). Two refreshes must fail; after each the consumer still
/// serves version 1, every record of it found by key, and its cache holds
/// no temp file.
pub async fn refuse_v2(
    scenario: Scenario,
    mangle: impl Fn(&BlobName, Vec<u8>) -> Option<Vec<u8>>,
) -> Refused {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let cache = dir.path().join("cache");
    let store = BlobStore::local(&store_dir).unwrap();
    let producer = scenario.producer(&store);
    let v1 = publish(&producer, &scenario.v1).await.unwrap().version;
    let consumer = consumer(&store, &cache);
    consumer.refresh().await.unwrap();
    let v2 = publish(&producer, &scenario.v2).await.unwrap().version;
    for name in [BlobName::Delta(v1, v2), BlobName::Snapshot(v2)] {
        let path = store_dir.join(name.to_string());
        match mangle(&name, std::fs::read(&path).unwrap()) {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    let mut refusals = Vec::new();
    for attempt in 0..2 {
        let err = consumer
            .refresh()
            .await
            .expect_err("a mangled version is refused");
        let blob = match &err {
            Error::Consumer(burrow::consumer::ConsumerError::Refresh { blob, .. }) => blob.clone(),
            // A refresh that found a removed blob gone planned around it at
            // once (and failed at the other): nothing is left to try.
            Error::Consumer(burrow::consumer::ConsumerError::NoPath { .. })
                if attempt > 0 && !refusals.is_empty() =>
            {
                break;
            }
            other => panic!("refresh {attempt} failed outside any blob: {other}"),
        };
        assert_eq!(consumer.version(), Some(v1), "the consumer keeps its state");
        assert_eq!(snapshot_of(&consumer), scenario.v1, "and serves it whole");
        assert_no_temp_files(&cache);
        refusals.push(Refusal {
            blob,
            error: err.to_string(),
        });
    }
    Refused {
        dir,
        v1,
        v2,
        refusals,
    }
}

/// [`refuse_v2`] with the default scenario, both blobs mangled alike, and
/// every refusal's text joined.
pub async fn with_mangled_v2(mangle: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, String) {
    let refused = refuse_v2(Scenario::default(), |_, mut bytes| {
        mangle(&mut bytes);
        Some(bytes)
    })
    .await;
    let all = refused.all();
    (refused.dir, all)
}

/// Recomputes the envelope's own checksum (bytes 56..64).
pub fn reseal_envelope(b: &mut [u8]) {
    let own = xxhash_rust::xxh3::xxh3_64(&b[0..56]).to_le_bytes();
    b[56..64].copy_from_slice(&own);
}

/// Recomputes the body checksum, then the envelope's own: the bytes pass
/// every envelope check, whatever the body now holds.
pub fn reseal_body(b: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_128(&b[ENVELOPE_LEN..]).to_le_bytes();
    b[40..56].copy_from_slice(&sum);
    reseal_envelope(b);
}

/// Fails if a temp file of an interrupted fetch is left anywhere in the
/// cache (the cache keeps one directory per dataset).
pub fn assert_no_temp_files(cache: &Path) {
    for entry in std::fs::read_dir(cache).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            assert_no_temp_files(&entry.path());
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(
            !name.contains(".tmp-"),
            "temp file {name} left in {}",
            cache.display()
        );
    }
}
