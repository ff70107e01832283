//! Invariant: inputs beyond a configured limit (blob size at the consumer,
//! record size at the producer, words one record read may traverse) are
//! refused with an error that names the limit, and refusing leaves nothing
//! behind: the consumer keeps its state, the producer its version.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;

#[tokio::test]
async fn a_blob_over_max_blob_bytes_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = producer(&store, "p");
    let mut model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&p, &model).await.unwrap().version;
    let cache = dir.path().join("cache");
    let c = ConsumerBuilder::new(store.clone())
        .cache_dir(&cache)
        .max_blob_bytes(64 << 10)
        .build()
        .unwrap();
    c.refresh().await.unwrap();
    // Version 2 adds enough records that its blobs pass 64 KiB.
    for i in 5..2000 {
        model.insert(i, movie_value(i, 0));
    }
    publish(&p, &model).await.unwrap();
    let err = c.refresh().await.expect_err("over the limit").to_string();
    assert!(
        err.contains("blob size") && err.contains("over the limit of 65536"),
        "{err}"
    );
    assert!(
        err.contains("delta/") || err.contains("snapshot/"),
        "names the blob: {err}"
    );
    assert_eq!(c.version(), Some(v1));
    assert_eq!(snapshot_of(&c).len(), 5);
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != burrow::blobstore::cache::LOCK_FILE)
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    assert_eq!(
        names.len(),
        1,
        "only the snapshot of v1 is cached: {names:?}"
    );
}

#[tokio::test]
async fn a_record_over_max_record_bytes_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = ProducerBuilder::new(store.clone())
        .max_record_bytes(256)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let long = "x".repeat(300);
    let err = p
        .run_cycle(|pop| {
            pop.add::<movie::Owned>(|mut m| {
                m.set_id(1);
                m.set_title(long.as_str());
                Ok(())
            })
        })
        .await
        .expect_err("too large")
        .to_string();
    assert!(err.contains("over the limit of 256 bytes"), "{err}");
    assert!(err.contains("Movie"), "names the type: {err}");
    assert_eq!(p.version().await, None, "nothing was published");
}

/// An announcement entry far larger than any real one is refused by size
/// (naming the limit) before it is read into memory; the consumer keeps
/// serving.
#[tokio::test]
async fn an_oversized_announcement_entry_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let p = producer(&store, "p");
    let model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    publish(&p, &model).await.unwrap();
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    let name = burrow::blobstore::BlobName::Announce(2).to_string();
    std::fs::write(store_dir.join(&name), vec![0u8; 1 << 20]).unwrap();
    let err = c.refresh().await.expect_err("refused").to_string();
    assert!(
        err.contains(&name) && err.contains("over the limit of 65536"),
        "{err}"
    );
    assert_eq!(snapshot_of(&c), model);
}

/// A blob with more types than any dataset has is refused by count,
/// naming the limit, before a section is built for any of them.
#[test]
fn a_blob_with_too_many_types_is_refused_by_name() {
    use burrow::schema::blob::{OpenBlob, MAX_TYPES};
    use burrow::schema::burrow_capnp::snapshot;
    use burrow::schema::envelope::{frame, BlobKind};
    // One segment, as every v2 body is.
    let allocator = capnp::message::HeapAllocator::new().first_segment_words(1 << 20);
    let mut message = capnp::message::Builder::new(allocator);
    {
        let mut root = message.init_root::<snapshot::Builder>();
        // A header with a dataset id, so that the reader gets to the types.
        root.reborrow().init_header().set_dataset_id_lo(1);
        root.init_types(MAX_TYPES + 1);
    }
    let body = capnp::serialize::write_message_to_words(&message);
    let bytes = frame(BlobKind::Snapshot, 0, 1, &body);
    let blob = std::sync::Arc::new(OpenBlob::from_bytes(&bytes, "snapshot/1").unwrap());
    let err = blob.snapshot().err().map(|e| e.to_string());
    let err = err.expect("too many types");
    assert!(
        err.contains("number of types is 4097, over the limit of 4096"),
        "{err}"
    );
}
