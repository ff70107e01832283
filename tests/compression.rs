//! Invariant: blobs stored as zstd frames read exactly as raw blobs do (the
//! cache holds the raw, verified blob), a chain may switch compression
//! between cycles, and a hostile frame (one that expands past its bound,
//! truncates, lies about its size or holds no burrow blob) is a named
//! error: the consumer keeps serving its state and nothing partial stays
//! in the cache.

use crate::common::*;
use burrow::blobstore::compress::{CompressionFault, ZSTD_MAGIC};
use burrow::blobstore::{BlobCache, BlobName, BlobStore, Compression};
use burrow::error::{Error, FormatError};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::envelope::MAGIC;
use burrow::schema::examples::movies_capnp::movie;
use std::io::Write;
use std::path::{Path, PathBuf};

fn producer_with(store: &BlobStore, compression: Compression) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("p")
        .primary_key::<movie::Owned>(&["id"])
        .compression(compression)
        .build()
        .expect("producer builds")
}

fn model(n: u64, generation: u64) -> Model {
    (0..n).map(|i| (i, movie_value(i, generation))).collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn assert_no_temp_files(cache: &Path) {
    for path in files(cache) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.contains(".tmp-"),
            "temp file {} left in the cache",
            path.display()
        );
    }
}

/// The blob files (not the lock) in a cache directory.
fn cached_blobs(cache: &Path) -> Vec<PathBuf> {
    files(cache)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

/// One zstd frame of `content` at level 3, with its content size.
fn frame(content: &[u8]) -> Vec<u8> {
    Compression::Zstd { level: 3 }
        .compress(bytes::Bytes::copy_from_slice(content))
        .unwrap()
        .to_vec()
}

/// Rewrites the content size a frame declares (RFC 8878 3.1.1.1); the new
/// value must fit the frame's field.
fn set_content_size(frame: &mut [u8], size: u64) {
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let dict_id = [0usize, 1, 2, 4][usize::from(fhd & 0x03)];
    let at = 5 + usize::from(!single_segment) + dict_id;
    match fhd >> 6 {
        0 => {
            assert!(single_segment && size < 256);
            frame[at] = size as u8;
        }
        1 => frame[at..at + 2].copy_from_slice(&u16::try_from(size - 256).unwrap().to_le_bytes()),
        2 => frame[at..at + 4].copy_from_slice(&u32::try_from(size).unwrap().to_le_bytes()),
        _ => frame[at..at + 8].copy_from_slice(&size.to_le_bytes()),
    }
}

fn stored(store_dir: &Path, name: BlobName) -> Vec<u8> {
    std::fs::read(store_dir.join(name.to_string())).unwrap()
}

#[tokio::test]
async fn compressed_dataset_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let producer = producer_with(&store, Compression::default());
    let mut data = model(300, 0);
    let r1 = publish(&producer, &data).await.unwrap();
    data.insert(7, movie_value(7, 1));
    data.remove(&8);
    let r2 = publish(&producer, &data).await.unwrap();
    let (v1, v2) = (r1.version, r2.version);
    for name in [
        BlobName::Snapshot(v1),
        BlobName::Snapshot(v2),
        BlobName::Delta(v1, v2),
        BlobName::Reverse(v2, v1),
    ] {
        let bytes = stored(&store_dir, name);
        assert_eq!(bytes[..4], ZSTD_MAGIC, "{name} is stored as a zstd frame");
        let reported = r2
            .stored_blobs
            .iter()
            .chain(&r1.stored_blobs)
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b);
        assert_eq!(reported, Some(bytes.len() as u64), "{name}");
    }
    // The snapshot compresses (the workload's titles repeat).
    let raw = r1.blobs[0].1;
    let packed = r1.stored_blobs[0].1;
    assert!(packed < raw / 2, "{packed} of {raw}");
    // The announcement's sizes are the stored ones.
    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    let entry = log.latest().await.unwrap().unwrap();
    assert_eq!(
        entry.snapshot_bytes,
        stored(&store_dir, BlobName::Snapshot(v2)).len() as u64
    );
    assert_eq!(
        entry.delta_bytes,
        stored(&store_dir, BlobName::Delta(v1, v2)).len() as u64
    );

    // A consumer from scratch, and one that follows the delta.
    let cache = dir.path().join("cache");
    let fresh = consumer(&store, &cache);
    fresh.refresh().await.unwrap();
    assert_eq!(fresh.version(), Some(v2));
    assert_eq!(snapshot_of(&fresh), data);
    drop(fresh);
    let follower_cache = dir.path().join("follower");
    let follower = consumer(&store, &follower_cache);
    follower.refresh_to(v1).await.unwrap();
    follower.refresh().await.unwrap();
    assert_eq!(snapshot_of(&follower), data);
    for cache in [&cache, &follower_cache] {
        let blobs = cached_blobs(cache);
        assert!(!blobs.is_empty());
        for path in blobs {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes[..8], MAGIC, "{} is a raw blob", path.display());
        }
    }
    // Whole-blob readers decompress too.
    let report = burrow::verify::verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.bytes_stored < report.bytes_decompressed,
        "{report:?}"
    );
}

#[tokio::test]
async fn switching_compression_mid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let follower = consumer(&store, &dir.path().join("follower"));
    let mut data = model(100, 0);
    let mut versions = Vec::new();
    for (step, compression) in [
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Zstd { level: 9 },
        Compression::None,
    ]
    .into_iter()
    .enumerate()
    {
        // A new producer each time: restore reads the previous blobs,
        // whatever they were stored as.
        let producer = producer_with(&store, compression);
        producer.restore().await.unwrap();
        data.insert(step as u64, movie_value(step as u64, 1 + step as u64));
        let v = publish(&producer, &data).await.unwrap().version;
        let head = stored(&store_dir, BlobName::Snapshot(v));
        assert_eq!(
            head[..4] == ZSTD_MAGIC,
            compression != Compression::None,
            "snapshot {v} stored as {compression}"
        );
        follower.refresh().await.unwrap();
        assert_eq!(follower.version(), Some(v));
        assert_eq!(snapshot_of(&follower), data);
        versions.push(v);
    }
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    assert_eq!(snapshot_of(&fresh), data);
    let report = burrow::verify::verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// Publishes v1 and v2 compressed, has a consumer at v1, then replaces
/// v2's snapshot and delta by `hostile(raw blob)`; the consumer must
/// refuse them, keep v1, and leave no file of v2 in its cache. Returns the
/// first refusal.
async fn refuse_v2(max_blob_bytes: u64, hostile: impl Fn(&[u8]) -> Vec<u8>) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let producer = producer_with(&store, Compression::default());
    let mut data = model(50, 0);
    let v1 = publish(&producer, &data).await.unwrap().version;
    let cache = dir.path().join("cache");
    let consumer = burrow::consumer::ConsumerBuilder::new(store.clone())
        .cache_dir(&cache)
        .max_blob_bytes(max_blob_bytes)
        .build()
        .unwrap();
    consumer.refresh().await.unwrap();
    let cached_before = cached_blobs(&cache);
    data.insert(3, movie_value(3, 1));
    let v2 = publish(&producer, &data).await.unwrap().version;
    for name in [BlobName::Delta(v1, v2), BlobName::Snapshot(v2)] {
        let raw = burrow::blobstore::compress::decode_stored(
            stored(&store_dir, name).into(),
            "test",
            u64::MAX,
        )
        .unwrap();
        std::fs::write(store_dir.join(name.to_string()), hostile(&raw)).unwrap();
    }
    let err = consumer
        .refresh()
        .await
        .expect_err("a hostile frame is refused");
    assert_eq!(consumer.version(), Some(v1), "the consumer keeps its state");
    assert_eq!(snapshot_of(&consumer), model(50, 0));
    consumer.refresh().await.expect_err("still refused");
    assert_eq!(consumer.version(), Some(v1));
    assert_no_temp_files(&cache);
    assert_eq!(cached_blobs(&cache), cached_before, "nothing of v2 cached");
    // The refresh names the blob it failed at; its source is the refusal.
    match err {
        Error::Consumer(burrow::consumer::ConsumerError::Refresh { source, .. }) => *source,
        other => other,
    }
}

fn fault_of(err: &Error) -> &CompressionFault {
    match err {
        Error::Format(FormatError::Compression { fault, .. }) => fault,
        other => panic!("expected a compression fault, got {other:?}"),
    }
}

#[tokio::test]
async fn zstd_frame_over_max_blob_bytes() {
    // 64 MiB of zeros, declared honestly, against a 1 MiB limit: refused
    // from the frame header, before anything is decompressed.
    let zeros = vec![0u8; 64 << 20];
    let bomb = frame(&zeros);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let err = refuse_v2(1 << 20, |_| bomb.clone()).await;
    assert!(
        matches!(
            err,
            Error::Format(FormatError::TooLarge { value, limit, .. })
                if value == 64 << 20 && limit == 1 << 20
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("zstd frame"), "{err}");
}

#[tokio::test]
async fn zstd_frame_of_zeros_is_not_a_blob() {
    // Without a limit, the envelope (the first 64 bytes out) stops it.
    let bomb = frame(&vec![0u8; 64 << 20]);
    let err = refuse_v2(u64::MAX, |_| bomb.clone()).await;
    assert!(err.to_string().contains("not a burrow blob"), "{err}");
}

#[tokio::test]
async fn zstd_frame_content_not_a_burrow_blob() {
    let err = refuse_v2(u64::MAX, |raw| {
        let mut other = raw.to_vec();
        other[..8].copy_from_slice(b"NOTBURRO");
        frame(&other)
    })
    .await;
    assert!(
        matches!(err, Error::Format(FormatError::Corrupt { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a burrow blob"), "{err}");
}

#[tokio::test]
async fn truncated_zstd_frame() {
    let err = refuse_v2(u64::MAX, |raw| {
        let mut f = frame(raw);
        f.truncate(f.len() - 5);
        f
    })
    .await;
    assert!(
        matches!(fault_of(&err), CompressionFault::EndsEarly { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("compressed stream ends early"),
        "{err}"
    );
}

#[tokio::test]
async fn zstd_frame_declaring_less_than_it_holds() {
    // The blob followed by 1 MiB of zeros, declaring only the blob's size:
    // cut off at the declared size.
    let err = refuse_v2(u64::MAX, |raw| {
        let mut content = raw.to_vec();
        content.extend(std::iter::repeat_n(0u8, 1 << 20));
        let mut f = frame(&content);
        set_content_size(&mut f, raw.len() as u64);
        f
    })
    .await;
    assert!(
        matches!(
            fault_of(&err),
            CompressionFault::ExpandsPast { .. } | CompressionFault::CorruptFrame { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn zstd_frame_declaring_more_than_its_envelope() {
    let err = refuse_v2(u64::MAX, |raw| {
        let mut content = raw.to_vec();
        content.extend(std::iter::repeat_n(0u8, 1 << 20));
        frame(&content)
    })
    .await;
    assert!(
        matches!(fault_of(&err), CompressionFault::EnvelopeMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn zstd_frame_without_content_size() {
    let err = refuse_v2(u64::MAX, |raw| {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(raw).unwrap();
        enc.finish().unwrap()
    })
    .await;
    assert_eq!(fault_of(&err), &CompressionFault::NoContentSize, "{err:?}");
}

#[tokio::test]
async fn zstd_frame_with_trailing_bytes() {
    let err = refuse_v2(u64::MAX, |raw| {
        let mut f = frame(raw);
        f.extend_from_slice(b"trailing");
        f
    })
    .await;
    assert_eq!(fault_of(&err), &CompressionFault::TrailingBytes, "{err:?}");
}

#[tokio::test]
async fn zstd_bit_flip_is_a_named_error() {
    // A flipped byte inside the compressed data: zstd refuses it or the
    // envelope checksum does; either way a named error, never a panic.
    let err = refuse_v2(u64::MAX, |raw| {
        let mut f = frame(raw);
        let at = f.len() / 2;
        f[at] ^= 0x55;
        f
    })
    .await;
    assert!(
        matches!(
            err,
            Error::Format(FormatError::Compression { .. } | FormatError::Corrupt { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn cache_fetch_of_bomb_leaves_nothing() {
    // The cache alone, with a limit: refused, no file left behind.
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let name = BlobName::Snapshot(1);
    let path = store_dir.join(name.to_string());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, frame(&vec![0u8; 16 << 20])).unwrap();
    let cache = BlobCache::open(dir.path().join("cache"))
        .unwrap()
        .with_max_blob_bytes(1 << 20);
    let err = cache.fetch(&store, &name).await.expect_err("refused");
    assert!(
        matches!(err, Error::Format(FormatError::TooLarge { .. })),
        "{err:?}"
    );
    assert!(cached_blobs(cache.dir()).is_empty());
    assert_no_temp_files(cache.dir());
}

#[test]
fn compression_settings_parse() {
    assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
    assert_eq!("zstd".parse::<Compression>(), Ok(Compression::default()));
    assert_eq!(
        "zstd:9".parse::<Compression>(),
        Ok(Compression::Zstd { level: 9 })
    );
    for bad in ["zstd:0", "zstd:20", "zstd:x", "gzip", "zstd9"] {
        assert!(bad.parse::<Compression>().is_err(), "{bad}");
    }
    let store = BlobStore::memory();
    let err = ProducerBuilder::new(store)
        .primary_key::<movie::Owned>(&["id"])
        .compression(Compression::Zstd { level: 40 })
        .build()
        .err()
        .expect("level 40 is refused");
    assert!(err.to_string().contains("compression"), "{err}");
}

#[tokio::test]
async fn compressed_blobs_stream_from_a_remote_store() {
    // A non-local store hands the body out as a stream of chunks (the
    // local store's path reads a file): the same frames decode.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::memory();
    let producer = producer_with(&store, Compression::Zstd { level: 1 });
    let mut data = model(200, 0);
    publish(&producer, &data).await.unwrap();
    let reader = consumer(&store, &dir.path().join("cache"));
    reader.refresh().await.unwrap();
    data.insert(1, movie_value(1, 5));
    publish(&producer, &data).await.unwrap();
    let report = reader.refresh().await.unwrap().expect("a refresh");
    assert_eq!(snapshot_of(&reader), data);
    let stored = store.get(&BlobName::Delta(1, 2)).await.unwrap();
    assert_eq!(stored[..4], ZSTD_MAGIC);
    assert_eq!(
        report.steps,
        [burrow::consumer::Step::Delta(1, 2)],
        "{report:?}"
    );
}
