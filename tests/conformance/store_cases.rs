//! The blob store's behaviours, one function each, run on every backend.

use super::support::Backend;
use burrow::blobstore::{BlobCache, BlobName, StoreError};
use burrow::{Error, FormatError};
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};

/// A snapshot of `version` holding no types, of a little over
/// `body_words` words: its header carries a tag that long. A real blob,
/// as a cache proves a blob's contents before taking it.
fn blob(version: u64, body_words: usize) -> Vec<u8> {
    use burrow::schema::blob::{write_snapshot, DatasetSchema, HeaderInfo, MAX_LIST_SHIFT};
    let schema = DatasetSchema::default();
    let tags = [("pad".to_string(), "x".repeat(body_words * 8))];
    let head = HeaderInfo {
        dataset_id: burrow::schema::DatasetId::mint(),
        from_version: 0,
        to_version: version,
        producer_id: "conformance",
        cycle_start_micros: 0,
        schema: &schema,
        tags: &tags,
        type_checksums: &[],
        max_list_shift: MAX_LIST_SHIFT,
    };
    write_snapshot(&head, &[]).unwrap()
}

/// Blobs read back as written; a LIST shows burrow's names, in version
/// order, with their sizes, and skips objects that are not burrow's.
pub async fn put_get_list(b: &Backend) {
    let s = &b.store;
    s.create(&BlobName::Snapshot(10), vec![Bytes::from_static(b"ten")])
        .await
        .unwrap();
    s.create(
        &BlobName::Snapshot(9),
        vec![Bytes::from_static(b"ni"), Bytes::from_static(b"ne")],
    )
    .await
    .unwrap();
    s.create(&BlobName::Delta(9, 10), vec![Bytes::from_static(b"d")])
        .await
        .unwrap();
    b.raw()
        .put(
            &b.path("snapshot/not-a-version"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap();

    assert_eq!(s.get(&BlobName::Snapshot(9)).await.unwrap(), "nine");
    assert_eq!(s.size(&BlobName::Snapshot(10)).await.unwrap(), 3);
    let listed = s.list("snapshot").await.unwrap();
    let names: Vec<_> = listed.iter().map(|m| (m.name, m.size)).collect();
    assert_eq!(
        names,
        [(BlobName::Snapshot(9), 4), (BlobName::Snapshot(10), 3)],
        "{}",
        b.name
    );
    assert_eq!(s.list("delta").await.unwrap().len(), 1);
    assert!(s.list("reverse").await.unwrap().is_empty());
}

/// A blob is never overwritten: the second create is `AlreadyExists` and
/// the first bytes stay.
pub async fn create_refuses_to_overwrite(b: &Backend) {
    let name = BlobName::Delta(1, 2);
    b.store
        .create(&name, vec![Bytes::from_static(b"first")])
        .await
        .unwrap();
    let err = b
        .store
        .create(&name, vec![Bytes::from_static(b"second")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { .. }),
        "{}: {err:?}",
        b.name
    );
    assert!(!err.is_retryable());
    assert_eq!(b.store.get(&name).await.unwrap(), "first");
}

/// A missing blob is `NotFound` everywhere, never an empty body.
pub async fn missing_blob_is_not_found(b: &Backend) {
    let name = BlobName::Snapshot(404);
    let err = b.store.get(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = b.store.size(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let cache = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(cache.path()).unwrap();
    let err = cache.fetch(&b.store, &name).await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NotFound { .. })),
        "{err:?}"
    );
}

/// A blob larger than a part goes up as a multipart upload, in bounded
/// pieces, and reads back whole; it leaves no temporary object behind.
pub async fn large_blob_round_trips_through_multipart(b: &Backend) {
    let name = BlobName::Snapshot(7);
    let bytes = Bytes::from(blob(7, (12 << 20) / 8 + 3));
    let before = b.counts.seen();
    let mut writer = b.store.writer(&name);
    for chunk in bytes.chunks(1 << 20) {
        writer.write(bytes.slice_ref(chunk)).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);
    let seen = b.counts.seen().since(before);
    assert_eq!(seen.multipart_uploads, 1, "{}: {seen:?}", b.name);
    assert_eq!(seen.puts, 0, "{}: no single put for a large blob", b.name);

    let back = b.store.get(&name).await.unwrap();
    assert!(back == bytes, "{}: the blob read back differs", b.name);

    // It is also a valid blob: the cache accepts it.
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path()).unwrap();
    let path = cache.fetch(&b.store, &name).await.unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), bytes.len() as u64);

    assert_eq!(
        burrow::gc::sweep_leftovers(&b.store, std::time::Duration::ZERO)
            .await
            .unwrap(),
        vec![]
    );
}

/// A large blob stays create-only: a writer for a taken name fails before
/// uploading, and one that loses the name during its upload fails at the
/// end without replacing the winner.
pub async fn large_blob_is_create_only(b: &Backend) {
    let name = BlobName::Snapshot(8);
    let big = Bytes::from(vec![7u8; 6 << 20]);

    b.store
        .create(&name, vec![Bytes::from_static(b"winner")])
        .await
        .unwrap();
    let before = b.counts.seen();
    let mut writer = b.store.writer(&name);
    let err = writer.write(big.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(b.counts.seen().since(before).multipart_uploads, 0);

    let name = BlobName::Snapshot(9);
    let mut writer = b.store.writer(&name);
    writer.write(big.clone()).await.unwrap();
    writer.write(big).await.unwrap();
    b.store
        .create(&name, vec![Bytes::from_static(b"winner")])
        .await
        .unwrap();
    let err = writer.finish().await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { .. }),
        "{}: {err:?}",
        b.name
    );
    assert_eq!(b.store.get(&name).await.unwrap(), "winner");
    assert_eq!(
        burrow::gc::sweep_leftovers(&b.store, std::time::Duration::ZERO)
            .await
            .unwrap(),
        vec![]
    );
}

/// A blob that fits in one part is a single create-only put.
pub async fn small_blob_through_writer_is_one_put(b: &Backend) {
    let name = BlobName::Reverse(3, 2);
    let before = b.counts.seen();
    let mut writer = b.store.writer(&name);
    writer.write(Bytes::from_static(b"ab")).await.unwrap();
    writer.write(Bytes::from_static(b"cd")).await.unwrap();
    assert_eq!(writer.finish().await.unwrap(), 4);
    let seen = b.counts.seen().since(before);
    assert_eq!((seen.puts, seen.multipart_uploads), (1, 0), "{seen:?}");
    assert_eq!(b.store.get(&name).await.unwrap(), "abcd");

    let err = b.store.writer(&name).finish().await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
}

/// An aborted writer creates nothing.
pub async fn aborted_writer_creates_nothing(b: &Backend) {
    let name = BlobName::Snapshot(11);
    let mut writer = b.store.writer(&name);
    writer.write(Bytes::from(vec![1u8; 6 << 20])).await.unwrap();
    writer.abort().await.unwrap();
    let err = b.store.get(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

/// Fetch-to-cache keeps a verified copy; a corrupt blob (a flipped bit,
/// or a body whose checksum holds but whose structure does not: its root
/// pointer made a list pointer) is refused with a `Corrupt` error naming
/// it, and leaves neither the file nor a temp file.
pub async fn fetch_verifies_and_rejects_corrupt_blobs(b: &Backend) {
    use burrow::schema::envelope::{frame, BlobKind, ENVELOPE_LEN};
    let good = blob(1, 100);
    let mut flipped = blob(2, 100);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    let mut body = blob(3, 100)[ENVELOPE_LEN..].to_vec();
    body[8] |= 1;
    let misshapen = frame(BlobKind::Snapshot, 0, 3, &body);
    for (version, bytes) in [(1, &good), (2, &flipped), (3, &misshapen)] {
        b.store
            .create(
                &BlobName::Snapshot(version),
                vec![Bytes::from(bytes.clone())],
            )
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(dir.path()).unwrap();
    let path = cache.fetch(&b.store, &BlobName::Snapshot(1)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), good);

    for name in [BlobName::Snapshot(2), BlobName::Snapshot(3)] {
        let err = cache.fetch(&b.store, &name).await.unwrap_err();
        match &err {
            Error::Format(FormatError::Corrupt { blob, .. }) => {
                assert_eq!(blob, &name.to_string(), "{}: {err}", b.name)
            }
            other => panic!("{}: expected Corrupt, got {other:?}", b.name),
        }
        assert!(!cache.contains(&name), "{}: {name} cached", b.name);
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f != burrow::blobstore::cache::LOCK_FILE)
        .collect();
    assert_eq!(
        files,
        [BlobName::Snapshot(1).cache_file_name()],
        "{}",
        b.name
    );
}

/// Leftover temporary uploads are swept; blobs are not touched.
pub async fn sweep_removes_only_leftover_uploads(b: &Backend) {
    b.store
        .create(&BlobName::Snapshot(5), vec![Bytes::from_static(b"keep")])
        .await
        .unwrap();
    b.raw()
        .put(
            &b.path("upload/snapshot-1.dead"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap();
    assert_eq!(
        burrow::gc::sweep_leftovers(&b.store, std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        vec![]
    );
    let listed = burrow::gc::find_leftovers(&b.store).await.unwrap();
    assert_eq!(listed.len(), 1, "{}: {listed:?}", b.name);
    assert_eq!(listed[0].name, "upload/snapshot-1.dead");
    assert_eq!(listed[0].kind, burrow::gc::LeftoverKind::TemporaryUpload);
    let swept = burrow::gc::sweep_leftovers(&b.store, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].name, listed[0].name);
    assert_eq!(burrow::gc::find_leftovers(&b.store).await.unwrap(), vec![]);
    assert_eq!(b.store.get(&BlobName::Snapshot(5)).await.unwrap(), "keep");
}

/// The start-up check passes on a working store.
pub async fn check_accepts_a_working_store(b: &Backend) {
    b.store.check().await.unwrap();
}

/// A producer's blob larger than the store's part size goes up as a
/// multipart upload from its spool file, part by part, moved into place
/// create-only, and reads back: a snapshot of 150,000 movies stored raw is
/// about 10 MiB, two 5 MiB parts and a rest.
pub async fn producer_uploads_a_large_snapshot_in_parts(b: &Backend) {
    use burrow::consumer::ConsumerBuilder;
    use burrow::producer::ProducerBuilder;
    use burrow::schema::examples::movies_capnp::movie;
    use burrow::testing::workload::Dataset;
    let producer = ProducerBuilder::new(b.store.clone())
        .producer_id("large")
        .retention(None)
        .compression(burrow::blobstore::Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    let data = Dataset::new(150_000, 7);
    let before = b.counts.seen();
    let report = producer.run_cycle(|p| data.populate(p)).await.unwrap();
    let seen = b.counts.seen().since(before);
    let (_, size) = report.stored_blobs[0];
    assert!(
        size > b.store.upload_options().part_size as u64,
        "{}: a snapshot of {size} bytes spans parts",
        b.name
    );
    assert_eq!(seen.multipart_uploads, 1, "{}: {seen:?}", b.name);

    let dir = tempfile::tempdir().unwrap();
    let consumer = ConsumerBuilder::new(b.store.clone())
        .cache_dir(dir.path())
        .check_snapshots(true)
        .build()
        .unwrap();
    consumer.refresh().await.unwrap();
    let state = consumer.state().unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    assert_eq!(view.len(), 150_000);
    let (_, m) = view.find(&149_999u64).unwrap().unwrap();
    assert_eq!(
        m.get_title().unwrap().to_str().unwrap(),
        "Title number 149999"
    );
    assert_eq!(
        burrow::gc::sweep_leftovers(&b.store, std::time::Duration::ZERO)
            .await
            .unwrap(),
        vec![],
        "{}: no temporary object is left",
        b.name
    );
}

/// Two producers racing to start one dataset, each with a snapshot larger
/// than the part size (so each goes up in parts from its spool, to a
/// temporary name, then is moved into place create-only): exactly one
/// announces, and the blob it announced holds its own bytes (its header
/// names it), never the other's; the loser's blob, if it made one, is
/// under another name and holds the loser's.
pub async fn racing_producers_never_announce_each_others_large_blob(b: &Backend) {
    use burrow::blobstore::compress::decode_stored;
    use burrow::producer::ProducerBuilder;
    use burrow::schema::blob::OpenBlob;
    use burrow::schema::examples::movies_capnp::movie;
    use burrow::testing::workload::Dataset;
    let producer = |id: &str| {
        ProducerBuilder::new(b.store.clone())
            .producer_id(id)
            .retention(None)
            .compression(burrow::blobstore::Compression::None)
            .primary_key::<movie::Owned>(&["id"])
            .build()
            .unwrap()
    };
    let (one, two) = (producer("one"), producer("two"));
    let (d1, d2) = (Dataset::new(150_000, 1), Dataset::new(150_000, 2));
    let (r1, r2) = tokio::join!(
        one.run_cycle(|p| d1.populate(p)),
        two.run_cycle(|p| d2.populate(p))
    );
    assert!(
        r1.is_ok() != r2.is_ok(),
        "{}: exactly one producer announces: {r1:?} {r2:?}",
        b.name
    );
    let log = burrow::announcer::AnnouncementLog::new(b.store.clone());
    let entry = log.latest().await.unwrap().expect("an announcement");
    let winner = if r1.is_ok() { "one" } else { "two" };
    assert_eq!(entry.producer_id, winner, "{}", b.name);
    let max = u64::MAX;
    let header_of = |bytes| {
        let raw = decode_stored(bytes, "snapshot", max).unwrap();
        let blob = OpenBlob::from_bytes(&raw, "snapshot").unwrap();
        blob.header().unwrap().producer_id
    };
    let announced = b
        .store
        .get(&BlobName::Snapshot(entry.version))
        .await
        .unwrap();
    assert!(
        announced.len() > b.store.upload_options().part_size,
        "{}: the snapshot spans parts",
        b.name
    );
    assert_eq!(header_of(announced), winner, "{}", b.name);
    for v in 1..=3u64 {
        if v == entry.version {
            continue;
        }
        if let Ok(other) = b.store.get(&BlobName::Snapshot(v)).await {
            assert_ne!(header_of(other), winner, "{}: snapshot/{v}", b.name);
        }
    }
}
