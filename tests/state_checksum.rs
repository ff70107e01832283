//! State checksums (`schema/checksum.rs`): every header claims the
//! checksum of each type of the state its blob makes; producers and
//! consumers check the claims.

use crate::common::mangle::reseal_body;
use crate::common::*;
use burrow::blobstore::BlobName;
use burrow::consumer::{ConsumerBuilder, ReadState};
use burrow::schema::blob::OpenBlob;
use burrow::schema::checksum;
use std::path::Path;
use std::sync::Arc;

/// The model at cycle `c`: ids 0..200, a few changed per cycle, one new.
fn model_at(c: u64) -> Model {
    let mut m: Model = (0..200).map(|i| (i, movie_value(i, 0))).collect();
    for i in 0..c * 7 {
        m.insert(i * 3 % 200, movie_value(i * 3 % 200, c));
    }
    m.insert(1000 + c, movie_value(1000 + c, 0));
    if c > 0 {
        m.remove(&(1000 + c - 1));
    }
    m
}

/// The sum of a state's records, recomputed from the records alone.
fn recomputed(state: &ReadState) -> Vec<checksum::TypeChecksum> {
    let mut words = Vec::new();
    state
        .types()
        .iter()
        .map(|t| {
            let mut sum = 0u64;
            for o in 0..t.ordinal_limit() {
                words.clear();
                if t.canonical_record(o, &mut words).unwrap() {
                    sum = sum.wrapping_add(checksum::entry(
                        t.type_id(),
                        o,
                        checksum::record_hash(&words),
                    ));
                }
            }
            checksum::TypeChecksum {
                type_id: t.type_id(),
                checksum: sum,
            }
        })
        .collect()
}

/// The store's file holding `name` (the tests' producer stores raw blobs).
fn store_file(store_dir: &Path, name: &BlobName) -> std::path::PathBuf {
    let wanted = name.to_string();
    let mut stack = vec![store_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(&wanted) {
                return path;
            }
        }
    }
    panic!("{wanted} is not in {}", store_dir.display());
}

/// Changes the first claimed checksum in a raw blob's header by one bit
/// and reseals it, so that only the claim is wrong.
fn tamper_claim(bytes: &mut [u8], claimed: u64) {
    let needle = claimed.to_le_bytes();
    let at = bytes
        .windows(8)
        .position(|w| w == needle)
        .expect("the claim is in the blob");
    bytes[at] ^= 1;
    reseal_body(bytes);
}

/// Invariant: the claims of every blob a producer writes are the sums of
/// the records of the state the blob makes, through snapshots, deltas and
/// reverse deltas, and a consumer that checks every snapshot (and every
/// delta, always) follows the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_claim_is_the_sum_of_the_state_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "p");
    let mut versions = Vec::new();
    for c in 0..4 {
        versions.push(publish(&producer, &model_at(c)).await.unwrap().version);
    }
    let following = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("following"))
        .check_snapshots(true)
        .build()
        .unwrap();
    for (c, &v) in versions.iter().enumerate() {
        following.refresh_to(v).await.unwrap();
        let state = following.state().unwrap();
        assert_eq!(state_model(&state), model_at(c as u64));
        assert!(!state.header().type_checksums.is_empty(), "v{v} claims");
        assert_eq!(state.header().type_checksums, recomputed(&state), "v{v}");
        state.check_checksums().unwrap();
    }
    // Back by reverse deltas: each reverse delta claims the older state.
    for (c, &v) in versions.iter().enumerate().rev() {
        following.refresh_to(v).await.unwrap();
        let state = following.state().unwrap();
        assert_eq!(state_model(&state), model_at(c as u64));
        assert_eq!(state.header().type_checksums, recomputed(&state), "v{v}");
    }
}

/// Invariant: a delta whose claim is not where the state it applies to
/// plus its records lead is refused by name, and a consumer refreshing
/// through it keeps serving the state it had; a snapshot whose claim is
/// wrong fails its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = burrow::blobstore::BlobStore::local(&store_dir).unwrap();
    let producer = producer(&store, "p");
    let v1 = publish(&producer, &model_at(0)).await.unwrap().version;
    let v2 = publish(&producer, &model_at(1)).await.unwrap().version;

    // The state at v1, and the delta to v2 with its claim off by a bit.
    let snapshot = std::fs::read(store_file(&store_dir, &BlobName::Snapshot(v1))).unwrap();
    let state = ReadState::from_snapshot(
        Arc::new(OpenBlob::from_bytes(&snapshot, "snapshot/1").unwrap()),
        v1,
    )
    .unwrap();
    let delta_path = store_file(&store_dir, &BlobName::Delta(v1, v2));
    let mut delta = std::fs::read(&delta_path).unwrap();
    let good = Arc::new(OpenBlob::from_bytes(&delta, "delta/1-2").unwrap());
    let claimed = good.header().unwrap().type_checksums[0].checksum;
    state.apply(good, v1, v2).unwrap();
    tamper_claim(&mut delta, claimed);
    let bad = Arc::new(OpenBlob::from_bytes(&delta, "delta/1-2").unwrap());
    let err = state.apply(bad, v1, v2).unwrap_err().to_string();
    assert!(
        err.contains("delta/1-2")
            && err.contains("Movie")
            && err.contains("state checksum mismatch"),
        "{err}"
    );

    // Through a real refresh: the consumer stays at v1.
    let consumer = consumer(&store, &dir.path().join("cache"));
    consumer.refresh_to(v1).await.unwrap();
    std::fs::write(&delta_path, &delta).unwrap();
    let err = consumer.refresh_to(v2).await.unwrap_err().to_string();
    assert!(err.contains("state checksum mismatch"), "{err}");
    assert_eq!(consumer.version(), Some(v1));
    assert_eq!(snapshot_of(&consumer), model_at(0));

    // A snapshot whose claim is wrong.
    let mut snapshot = snapshot;
    let claimed = state.header().type_checksums[0].checksum;
    tamper_claim(&mut snapshot, claimed);
    let state = ReadState::from_snapshot(
        Arc::new(OpenBlob::from_bytes(&snapshot, "snapshot/1").unwrap()),
        v1,
    )
    .unwrap();
    let err = state.check_checksums().unwrap_err().to_string();
    assert!(
        err.contains("snapshot/1") && err.contains("state checksum mismatch"),
        "{err}"
    );
}
