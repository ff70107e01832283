//! Invariant: the format does not change by accident. `tests/data/v<N>/`
//! holds a snapshot, a delta, a reverse delta and an announcement entry of
//! format version N, written by a producer whose every input is fixed
//! (producer id, dataset id, header tag, a manual clock). This build must
//! read the files of every version from `OLDEST_READABLE_VERSION` to
//! `FORMAT_VERSION` back to exactly the content they were written with,
//! and must write the very same bytes from the same inputs for every
//! version it can write (`WRITABLE_VERSIONS`). A deliberate format change
//! bumps `FORMAT_VERSION` and adds `tests/data/v<N>/` beside the others,
//! which stay: released versions are read forever (`schema/FORMAT.md`,
//! "Format versions"). Format v1 was never released; its files are gone.
//! To write the files of the newest version on purpose (never those of a
//! released one): `cargo test --all-features golden -- --ignored`.

use crate::common::*;
use burrow::announcer::{AnnounceKind, Announcement};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::ReadState;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::blob::OpenBlob;
use burrow::schema::envelope::{
    BlobKind, Envelope, FORMAT_VERSION, OLDEST_READABLE_VERSION, WRITABLE_VERSIONS,
};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::DatasetId;
use burrow::testing::ManualClock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The golden dataset's id.
const DATASET: (u64, u64) = (0x601d_e4f1_1e5b_0001, 0x0000_0000_0000_0042);

/// The golden files: (file under tests/data/v<N>, the blob it is a copy of).
const FILES: [(&str, BlobName); 4] = [
    ("snapshot-1.blob", BlobName::Snapshot(1)),
    ("delta-1-2.blob", BlobName::Delta(1, 2)),
    ("reverse-2-1.blob", BlobName::Reverse(2, 1)),
    ("announce-2.blob", BlobName::Announce(2)),
];

fn dataset_id() -> DatasetId {
    DatasetId::from_parts(DATASET.0, DATASET.1).expect("not zero")
}

fn data_dir(format: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/v{format}"))
}

/// Version 1: five movies at generation 0.
fn model_v1() -> Model {
    (0..5).map(|i| (i, movie_value(i, 0))).collect()
}

/// Version 2: movie 1 changed, movie 3 removed, movie 7 added.
fn model_v2() -> Model {
    let mut m = model_v1();
    m.insert(1, movie_value(1, 2));
    m.remove(&3);
    m.insert(7, movie_value(7, 0));
    m
}

fn golden_producer(store: &BlobStore, format: u16) -> Producer {
    ProducerBuilder::new(store.clone())
        .format_version(format)
        .producer_id("golden")
        .dataset_id(dataset_id())
        .clock(Arc::new(ManualClock::new()))
        .header_tag("source", "tests/golden.rs")
        // The golden files are the raw blobs, as a consumer's cache holds them.
        .compression(burrow::blobstore::Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

/// Publishes the golden dataset in format version `format` into a fresh
/// local store at `dir` and returns the bytes of each golden blob, in the
/// order of [`FILES`].
async fn write_golden_dataset(dir: &Path, format: u16) -> Vec<Vec<u8>> {
    let store = BlobStore::local(dir).unwrap();
    let producer = golden_producer(&store, format);
    assert_eq!(publish(&producer, &model_v1()).await.unwrap().version, 1);
    assert_eq!(publish(&producer, &model_v2()).await.unwrap().version, 2);
    FILES
        .iter()
        .map(|(_, name)| std::fs::read(dir.join(name.to_string())).unwrap())
        .collect()
}

fn read_golden(format: u16, file: &str) -> Vec<u8> {
    let path = data_dir(format).join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the golden files of every readable format version are committed \
             under tests/data/v<N>",
            path.display()
        )
    })
}

fn open(format: u16, file: &str, name: BlobName) -> Arc<OpenBlob> {
    Arc::new(OpenBlob::from_bytes(&read_golden(format, file), &name.to_string()).unwrap())
}

// Format v1 was never released: every build reads from v2 on.
const _: () = assert!(OLDEST_READABLE_VERSION >= 2 && OLDEST_READABLE_VERSION <= FORMAT_VERSION);

#[test]
fn golden_files_read_back_to_exactly_what_was_written() {
    for format in OLDEST_READABLE_VERSION..=FORMAT_VERSION {
        read_back(format);
    }
}

/// Reads the golden files of format version `format` back to their content.
fn read_back(format: u16) {
    let read_golden = |file: &str| read_golden(format, file);
    let open = |file: &str, name: BlobName| open(format, file, name);
    // Envelopes: format version, kind and versions.
    for (file, name) in FILES {
        let bytes = read_golden(file);
        let (envelope, _) = Envelope::open(&bytes, &name.to_string()).unwrap();
        let (kind, from, to) = match name {
            BlobName::Snapshot(v) => (BlobKind::Snapshot, 0, v),
            BlobName::Delta(a, b) | BlobName::Reverse(a, b) => (
                if matches!(name, BlobName::Delta(..)) {
                    BlobKind::Delta
                } else {
                    BlobKind::Reverse
                },
                a,
                b,
            ),
            // An announcement's envelope carries the version it announces.
            _ => (BlobKind::Announcement, 0, 2),
        };
        assert_eq!(
            (envelope.kind, envelope.from_version, envelope.to_version),
            (kind, from, to),
            "{file}"
        );
        // The envelope's format version (bytes 8..10, little-endian).
        let written = u16::from_le_bytes([bytes[8], bytes[9]]);
        assert_eq!(written, format, "v{format}/{file}");
    }

    // The snapshot: its header and exactly the records of version 1.
    let snapshot = open("snapshot-1.blob", BlobName::Snapshot(1));
    let header = snapshot.header().unwrap();
    assert_eq!(header.dataset_id, dataset_id());
    assert_eq!((header.from_version, header.to_version), (0, 1));
    assert_eq!(header.producer_id, "golden");
    assert_eq!(header.cycle_start_micros, ManualClock::UNIX_START_MICROS);
    assert_eq!(
        header.tags,
        vec![("source".to_string(), "tests/golden.rs".to_string())]
    );
    let v1 = ReadState::from_snapshot(snapshot, 1).unwrap();
    assert_eq!(state_model(&v1), model_v1());
    let types = v1.types();
    assert_eq!(types.len(), 1);
    assert_eq!(types[0].name(), "examples/movies.capnp:Movie");
    assert_eq!(types[0].key_fields(), ["id".to_string()]);
    assert_eq!((types[0].record_count(), types[0].ordinal_limit()), (5, 5));
    let movies = v1.view::<movie::Owned>().unwrap();
    let (ordinal, record) = movies.find(&4u64).unwrap().expect("id 4 is in v1");
    assert_eq!(ordinal, 4);
    assert_eq!(record.get_title().unwrap(), "Title number 4");

    // The delta takes it to exactly version 2; the new key takes the next
    // ordinal (an ordinal freed in a cycle is reused from the next one on).
    let delta = open("delta-1-2.blob", BlobName::Delta(1, 2));
    assert_eq!(delta.header().unwrap().dataset_id, dataset_id());
    let v2 = v1.apply(delta, 1, 2).unwrap();
    assert_eq!(state_model(&v2), model_v2());
    let movies = v2.view::<movie::Owned>().unwrap();
    assert_eq!(movies.find(&7u64).unwrap().expect("id 7 is in v2").0, 5);
    assert!(movies.find(&3u64).unwrap().is_none());

    // The reverse delta takes version 2 back to exactly version 1.
    let reverse = open("reverse-2-1.blob", BlobName::Reverse(2, 1));
    let back = v2.apply(reverse, 2, 1).unwrap();
    assert_eq!(state_model(&back), model_v1());

    // The announcement of version 2.
    let entry = Announcement::decode(&read_golden("announce-2.blob"), "announce/2").unwrap();
    assert_eq!(entry.dataset_id, dataset_id());
    assert_eq!(entry.seq, 2);
    assert_eq!(entry.kind, AnnounceKind::Announce);
    assert_eq!((entry.version, entry.from_version), (2, 1));
    assert_eq!((entry.snapshot_version, entry.has_snapshot), (2, true));
    assert_eq!(entry.pinned_version, None);
    assert_eq!(entry.producer_id, "golden");
    assert_eq!(entry.timestamp_micros, ManualClock::UNIX_START_MICROS);
    let size = |file: &str| read_golden(file).len() as u64;
    assert_eq!(entry.delta_bytes, size("delta-1-2.blob"));
    assert_eq!(entry.reverse_bytes, size("reverse-2-1.blob"));
    assert!(entry.snapshot_bytes > 0);
}

#[tokio::test]
async fn this_build_writes_the_golden_bytes() {
    for &format in WRITABLE_VERSIONS {
        writes_the_golden_bytes(format).await;
    }
}

async fn writes_the_golden_bytes(format: u16) {
    let dir = tempfile::tempdir().unwrap();
    let written = write_golden_dataset(dir.path(), format).await;
    for ((file, name), bytes) in FILES.iter().zip(written) {
        let golden = read_golden(format, file);
        if golden != bytes {
            let first = golden
                .iter()
                .zip(&bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(golden.len().min(bytes.len()));
            panic!(
                "{name} is no longer written as tests/data/v{format}/{file} (they differ \
                 from byte {first}; {} bytes against {}). If the format changed on \
                 purpose, bump FORMAT_VERSION and add golden files for the new version \
                 beside these.",
                bytes.len(),
                golden.len()
            );
        }
    }
}

/// Writes `tests/data/v<FORMAT_VERSION>/` from this build: only while that
/// version is being made (a released version's files never change).
#[tokio::test]
#[ignore = "rewrites the newest version's golden files: run on purpose, with -- --ignored"]
async fn write_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_golden_dataset(dir.path(), FORMAT_VERSION).await;
    let out = data_dir(FORMAT_VERSION);
    std::fs::create_dir_all(&out).unwrap();
    for ((file, _), bytes) in FILES.iter().zip(written) {
        std::fs::write(out.join(file), bytes).unwrap();
    }
}
