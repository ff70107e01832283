//! Invariant: every fuzz target's body accepts every input of its committed
//! seed corpus (`fuzz/corpus/<target>/`, which includes every crash the
//! fuzzers found) without panicking, on stable, in the ordinary test run.
//! The targets' own checks (records readable, counts right, consumers and
//! model agreeing) run on each input; see `burrow::testing::fuzzing`.

use burrow::testing::fuzzing;
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str, body: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= 5,
        "{target}: the seed corpus has only {} inputs",
        files.len()
    );
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target}: {} panicked", file.display());
    }
}

#[test]
fn blob_corpus() {
    run_corpus("blob", fuzzing::blob);
}

#[test]
fn delta_corpus() {
    run_corpus("delta", fuzzing::delta);
}

#[test]
fn announcement_corpus() {
    run_corpus("announcement", fuzzing::announcement);
}

#[test]
fn cycles_corpus() {
    run_corpus("cycles", fuzzing::cycles);
}

/// The seeds the corpus started from are real blobs: the targets must
/// accept them all the way through (not stop at the envelope), or the
/// fuzzers would explore nothing.
#[test]
fn real_blobs_decode_through_the_targets() {
    let (snapshot, delta, reverse) = fuzzing::base_blobs();
    let state = fuzzing::base_state().expect("base state");
    assert_eq!(state.types()[0].record_count(), 10);
    let body = |b: &[u8]| b[burrow::schema::envelope::ENVELOPE_LEN..].to_vec();
    let blob = burrow::schema::blob::OpenBlob::from_bytes(&delta, "d").unwrap();
    let next = state
        .apply(
            std::sync::Arc::new(blob),
            fuzzing::BASE_VERSION,
            fuzzing::BASE_VERSION + 1,
        )
        .expect("the seed delta applies to the base state");
    assert_eq!(next.types()[0].record_count(), 10);
    fuzzing::delta(&body(&delta));
    fuzzing::blob(&[&[1u8][..], &body(&snapshot)].concat());
    fuzzing::blob(&[&[3u8][..], &body(&reverse)].concat());
}

/// Regenerates the real-blob seeds of the corpus:
/// `cargo test --all-features --test integration write_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus: run on purpose, with -- --ignored"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let (snapshot, delta, reverse) = fuzzing::base_blobs();
    let body = |b: &[u8]| b[burrow::schema::envelope::ENVELOPE_LEN..].to_vec();
    write(
        "blob",
        "seed-whole-snapshot",
        &[&[0u8][..], &snapshot].concat(),
    );
    write("blob", "seed-whole-delta", &[&[0u8][..], &delta].concat());
    write(
        "blob",
        "seed-snapshot-body",
        &[&[1u8][..], &body(&snapshot)].concat(),
    );
    write(
        "blob",
        "seed-delta-body",
        &[&[2u8][..], &body(&delta)].concat(),
    );
    write(
        "blob",
        "seed-reverse-body",
        &[&[3u8][..], &body(&reverse)].concat(),
    );
    write("blob", "seed-empty-snapshot", &[1u8]);
    write("delta", "seed-delta", &body(&delta));
    write("delta", "seed-reverse-as-delta", &body(&reverse));
    write(
        "delta",
        "seed-half-delta",
        &body(&delta)[..body(&delta).len() / 2],
    );
    write("delta", "seed-empty", &[]);
    write("delta", "seed-snapshot-as-delta", &body(&snapshot));
    let entry = burrow::announcer::Announcement {
        dataset_id: burrow::schema::DatasetId::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0007)
            .unwrap(),
        seq: 7,
        kind: burrow::announcer::AnnounceKind::Announce,
        version: 70,
        from_version: 60,
        snapshot_version: 50,
        has_snapshot: false,
        pinned_version: None,
        producer_id: "p1".into(),
        timestamp_micros: 123,
        snapshot_bytes: 1,
        delta_bytes: 2,
        reverse_bytes: 3,
    };
    let bytes = entry.encode();
    write("announcement", "seed-whole", &[&[0u8][..], &bytes].concat());
    write(
        "announcement",
        "seed-body-seq7",
        &[&[7u8][..], &body(&bytes)].concat(),
    );
    let pin = entry.follow_up(burrow::announcer::AnnounceKind::Pin, Some(60), "op");
    write(
        "announcement",
        "seed-pin",
        &[&[0u8][..], &pin.encode()].concat(),
    );
    write(
        "announcement",
        "seed-pin-body",
        &[&[9u8][..], &body(&pin.encode())[..]].concat(),
    );
    write("announcement", "seed-short", &[0u8, 1, 2, 3]);
    for (name, ops) in [
        ("seed-adds", &[0u8, 1, 2, 3, 4, 5][..]),
        ("seed-add-remove", &[1, 1, 2, 3, 0x61, 0x62, 4][..]),
        ("seed-batch-restart", &[2, 0xa3, 0xc0, 0xe0, 0x05, 0x65][..]),
        ("seed-no-change", &[3, 9, 0xc0, 0xc0, 9, 0x69][..]),
        (
            "seed-churn",
            &[0, 1, 0x21, 0x41, 0x61, 0x81, 0xa1, 0xe1, 1][..],
        ),
        ("seed-remove-all", &[1, 4, 0x64, 5, 0x65, 0xe0, 6][..]),
        // Restarts that register Probe (odd) or not (even): the type is
        // created, filled, dropped and created again.
        (
            "seed-types-come-and-go",
            &[1, 1, 0xe1, 2, 0xc0, 0xe0, 0xc0, 3, 0xe1, 0xc0, 0x05, 0x62][..],
        ),
    ] {
        write("cycles", name, ops);
    }
}
