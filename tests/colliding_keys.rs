//! Invariant: keys chosen so that the format's key hash (xxh3-64 of the
//! key bytes, which anyone can compute) puts them all in one corner of a
//! hash table are published, changed, deleted, restored and found like
//! any others. The producer's in-memory tables hash keys with a seed of
//! their own (`producer/state.rs`, `seeded_hash`; its unit test checks that
//! these keys spread there), so such keys cost a cycle no more than any.

use crate::common::*;
use burrow::blobstore::BlobStore;

/// Movie ids whose key hash (xxh3-64 of the id's 8 little-endian bytes,
/// the format's key encoding of a u64) has the low `bits` bits of the
/// first one's: a table indexed by those bits sees them all in one
/// bucket.
fn colliding_ids(count: usize, bits: u32) -> Vec<u64> {
    let mask = (1u64 << bits) - 1;
    let hash = |id: u64| xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes());
    let target = hash(1) & mask;
    let ids: Vec<u64> = (1u64..)
        .filter(|&id| hash(id) & mask == target)
        .take(count)
        .collect();
    assert!(ids.iter().all(|&id| hash(id) & mask == target));
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_collide_under_the_format_hash_publish_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let ids = colliding_ids(1200, 14);
    let mut model: Model = ids.iter().map(|&id| (id, movie_value(id, 0))).collect();
    // Ordinary keys beside them.
    model.extend((0..300u64).map(|i| (1 << 40 | i, movie_value(i, 0))));
    let producer = producer(&store, "collide");
    publish(&producer, &model).await.unwrap();
    let follower = consumer(&store, &dir.path().join("follower"));
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), model);

    // An incremental cycle changes and deletes colliding keys.
    let mut next = model.clone();
    for &id in ids.iter().step_by(3) {
        next.insert(id, movie_value(id, 1));
    }
    for &id in ids.iter().skip(1).step_by(7) {
        next.remove(&id);
    }
    publish_incremental(&producer, &model, &next).await.unwrap();
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), next);

    // A restarted producer restores them from the blobs and a full cycle
    // brings the deleted ones back at free ordinals.
    drop(producer);
    let restarted = crate::common::producer(&store, "collide");
    restarted.restore().await.unwrap();
    publish(&restarted, &model).await.unwrap();
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), model);
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), model);
}
