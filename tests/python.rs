//! Invariant: the Python reader (`python/`) reads every record the Rust
//! consumer reads. Runs its pytest suite (python/tests) with the venv's
//! python, the burrow binary cargo built named by `BURROW_BIN`: the suite
//! writes its Movie stores with that binary and compares what Python reads
//! with `burrow dump --json`, at a snapshot, after deltas and reverse
//! deltas, on S3 (moto) and against hostile store content. This test first
//! writes one more store, `BURROW_KINDS_STORE`, that no CLI command
//! makes: every kind of Cap'n Proto field (`Every`), nested structs,
//! unions and groups (`Shelf`), a composite key of text and a signed
//! integer (`Probe`), in lists of 8 records, versions 2 to 4 only as
//! deltas, `Shelf` dropped at version 4.

use super::explore::{fill_every, fill_shelf};
use burrow::blobstore::BlobStore;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::every_capnp::every;
use burrow::schema::examples::library_capnp::shelf;
use burrow::schema::examples::probe_capnp::probe;
use std::path::Path;
use std::process::Command;

fn fill_probe(mut r: probe::Builder<'_>, i: u64, generation: u64) {
    r.set_name(format!("probe-{}", i % 7).as_str());
    r.set_small(i as i16 - 10);
    r.set_count((i * 1000 + generation) as u32);
    r.set_big(-(1i64 << 62) + i as i64);
    r.set_color(match i % 3 {
        0 => probe::Color::Red,
        1 => probe::Color::Green,
        _ => probe::Color::Blue,
    });
    r.set_blob(&[i as u8, generation as u8][..]);
    r.set_flag(i % 2 == 1);
    r.set_ratio(i as f64 / 7.0);
    if i.is_multiple_of(2) {
        r.set_some(i as u8);
    }
}

/// Four versions of the kinds store at `path`.
async fn write_kinds(path: &Path) {
    let store = BlobStore::local(path).unwrap();
    let producer = ProducerBuilder::new(store)
        .producer_id("python-kinds")
        .retention(None)
        .primary_key::<every::Owned>(&["id"])
        .primary_key::<shelf::Owned>(&["id"])
        .primary_key::<probe::Owned>(&["name", "small"])
        .snapshot_every(100)
        .max_list_shift(3)
        .build()
        .unwrap();
    for cycle in 0..3u64 {
        producer
            .run_cycle(|p| {
                for i in cycle * 10..40 + cycle * 5 {
                    // Odd ids change content each cycle; the key stays.
                    p.add::<every::Owned>(|mut e| {
                        fill_every(e.reborrow(), i + 100 * cycle * (i % 2))?;
                        e.set_id(i);
                        Ok(())
                    })?;
                }
                {
                    for i in cycle..12 + cycle {
                        p.add::<shelf::Owned>(|s| {
                            fill_shelf(s, i + cycle);
                            Ok(())
                        })?;
                    }
                }
                for i in cycle * 3..30 + cycle * 2 {
                    p.add::<probe::Owned>(|r| {
                        fill_probe(r, i, cycle * (i % 3 / 2));
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    // Version 4: a producer that no longer registers Shelf drops it (the
    // reverse delta 4 -> 3 re-creates it, records and all).
    let producer = ProducerBuilder::new(BlobStore::local(path).unwrap())
        .producer_id("python-kinds")
        .retention(None)
        .primary_key::<every::Owned>(&["id"])
        .primary_key::<probe::Owned>(&["name", "small"])
        .snapshot_every(100)
        .max_list_shift(3)
        .build()
        .unwrap();
    producer.restore().await.unwrap();
    producer
        .run_cycle(|p| {
            for i in 0..30 {
                p.add::<every::Owned>(|e| fill_every(e, i))?;
            }
            for i in 0..30 {
                p.add::<probe::Owned>(|r| {
                    fill_probe(r, i, 4);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reader_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".ci/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/s3.sh venv (it installs pycapnp, xxhash, zstandard, boto3, pytest)",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import capnp, xxhash, zstandard, boto3, pytest"])
        .output()
        .expect("run the venv's python");
    assert!(
        probe.status.success(),
        "the venv lacks a package the Python reader needs: run .ci/s3.sh venv\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let kinds = dir.path().join("kinds");
    write_kinds(&kinds).await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([
                "-m",
                "pytest",
                "python/tests",
                "-q",
                "-p",
                "no:cacheprovider",
            ])
            .current_dir(root)
            .env("BURROW_BIN", env!("CARGO_BIN_EXE_burrow"))
            .env("BURROW_KINDS_STORE", &kinds)
            .output()
            .expect("run pytest")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python/tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
