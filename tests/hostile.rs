//! Invariant: a consumer serves only states built from blobs it verified;
//! bad bytes of any kind give a named error, the consumer keeps serving its
//! current state, and nothing panics.

use crate::common::mangle::{reseal_body, reseal_envelope, with_mangled_v2};
use crate::common::*;
use burrow::blobstore::{BlobName, BlobStore};
use burrow::schema::envelope::ENVELOPE_LEN;

#[tokio::test]
async fn truncated_blob() {
    let (_d, err) = with_mangled_v2(|b| b.truncate(b.len() - 9)).await;
    assert!(
        err.contains("the store says the blob is") || err.contains("body is"),
        "{err}"
    );
}

#[tokio::test]
async fn truncated_inside_envelope() {
    let (_d, err) = with_mangled_v2(|b| b.truncate(20)).await;
    assert!(err.contains("truncated envelope"), "{err}");
}

#[tokio::test]
async fn bit_flipped_body() {
    let (_d, err) = with_mangled_v2(|b| {
        let at = b.len() - 17;
        b[at] ^= 0x10;
    })
    .await;
    assert!(err.contains("body checksum mismatch"), "{err}");
}

#[tokio::test]
async fn wrong_magic() {
    let (_d, err) = with_mangled_v2(|b| b[0..8].copy_from_slice(b"NOTBURRO")).await;
    assert!(err.contains("bad magic"), "{err}");
}

#[tokio::test]
async fn wrong_format_version() {
    let (_d, err) = with_mangled_v2(|b| {
        b[8..10].copy_from_slice(&7u16.to_le_bytes());
        reseal_envelope(b);
    })
    .await;
    assert!(err.contains("format version 7 is not supported"), "{err}");
}

#[tokio::test]
async fn oversized_length() {
    let (_d, err) = with_mangled_v2(|b| {
        b[32..40].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
        reseal_envelope(b);
    })
    .await;
    assert!(err.contains("exceeds the format's limit"), "{err}");
}

/// A checksum that matches but a body that is not a valid message: the
/// Cap'n Proto layer refuses it with a named error.
#[tokio::test]
async fn garbage_body_with_a_valid_checksum() {
    let (_d, err) = with_mangled_v2(|b| {
        for (i, x) in b[ENVELOPE_LEN..].iter_mut().enumerate() {
            *x = (i * 31 % 251) as u8;
        }
        reseal_body(b);
    })
    .await;
    assert!(err.contains("corrupt"), "{err}");
}

/// Invariant: two producers on one store never both win an announcement;
/// the loser's error says it is not the primary producer, and the chain a
/// consumer follows stays consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let a = producer(&store, "a");
    let mut model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    publish(&a, &model).await.unwrap();
    let b = producer(&store, "b");
    // b has no state and the store is not empty: it must restore.
    let err = publish(&b, &model).await.unwrap_err().to_string();
    assert!(err.contains("restore"), "{err}");
    b.restore().await.unwrap();
    for round in 1..6u64 {
        model.insert(round, movie_value(round, round));
        let (ra, rb) = tokio::join!(publish(&a, &model), publish(&b, &model));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert!(winners <= 1, "round {round}: both producers announced");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert!(
                    e.to_string().contains("not the primary producer"),
                    "round {round}: {e}"
                );
            }
        }
        // Whoever lost restores and both carry on.
        a.restore().await.unwrap();
        b.restore().await.unwrap();
        if winners == 0 {
            publish(&a, &model).await.unwrap();
            b.restore().await.unwrap();
        }
    }
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    assert_eq!(snapshot_of(&c), model);
}

#[tokio::test]
async fn duplicate_keys_and_bad_key_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = producer(&store, "p");
    let err = p
        .run_cycle(|pop| {
            for _ in 0..2 {
                pop.add::<burrow::schema::examples::movies_capnp::movie::Owned>(|mut m| {
                    m.set_id(42);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate primary key id=42"), "{err}");
    assert!(err.contains("identify"), "{err}");
    for (field, why) in [
        ("nope", "no such field"),
        ("tags", "not an integer"),
        ("id", "named twice"),
    ] {
        let fields: &[&str] = if why == "named twice" {
            &["id", "id"]
        } else {
            &[field]
        };
        let err = burrow::producer::ProducerBuilder::new(store.clone())
            .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(fields)
            .build()
            .err()
            .expect("bad key is refused")
            .to_string();
        assert!(err.contains(field) && err.contains(why), "{err}");
    }
}

/// The reference `capnp` tool decodes a snapshot body given
/// schema/burrow.capnp. Needs Debian's `capnproto`: provided by
/// `tools::require_capnp` (installed by .ci/run, or here when root), and
/// a failure naming it when it cannot be had, never a skip.
#[tokio::test]
async fn reference_tool_decodes_a_snapshot() {
    if let Err(missing) = crate::common::tools::require_capnp() {
        panic!("{missing}");
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let p = producer(&store, "p");
    let model: Model = (0..3).map(|i| (i, movie_value(i, 0))).collect();
    let v = publish(&p, &model).await.unwrap().version;
    let blob = std::fs::read(store_dir.join(BlobName::Snapshot(v).to_string())).unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, &blob[ENVELOPE_LEN..]).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("capnp")
        .args([
            "decode",
            "-I",
            "/usr/include",
            &format!("{root}/schema/burrow.capnp"),
            "Snapshot",
        ])
        .stdin(std::fs::File::open(&body).unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "capnp decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("producerId = \"p\""), "{text}");
    assert!(
        text.contains("name = \"examples/movies.capnp:Movie\""),
        "{text}"
    );
    assert!(text.contains("recordCount = 3"), "{text}");
}

/// Invariant: a record over the producer's size limit is refused with an
/// error that names the limit, and nothing is published.
#[tokio::test]
async fn oversized_records_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let p = burrow::producer::ProducerBuilder::new(store.clone())
        .primary_key::<burrow::schema::examples::movies_capnp::movie::Owned>(&["id"])
        .max_record_bytes(256)
        .build()
        .unwrap();
    let mut model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&p, &model).await.unwrap().version;
    model.insert(9, ("x".repeat(1000), 2000, vec![]));
    let err = publish(&p, &model).await.unwrap_err().to_string();
    assert!(err.contains("over the limit of 256 bytes"), "{err}");
    assert!(err.contains("populate"), "{err}");
    assert_eq!(p.version().await, Some(v1));
}
