//! Invariant: a blob whose checksum matches but whose Cap'n Proto content
//! is malicious (pointers out of bounds, deep nesting, huge list lengths,
//! amplification through shared pointers or zero-sized elements, offsets out
//! of range, a key index with no empty slot, a key field of the wrong
//! pointer type) is bounds-checked and bounded: a bad record is an error on
//! that read, never a panic, a hang or unbounded memory.

use burrow::announcer::{AnnounceKind, Announcement};
use burrow::blobstore::{BlobName, BlobStore};
use burrow::consumer::{ConsumerBuilder, ReadState};
use burrow::schema::blob::OpenBlob;
use burrow::schema::burrow_capnp::snapshot;
use burrow::schema::envelope::{frame, BlobKind};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::record::TypeInfo;
use burrow::schema::DatasetId;
use bytes::Bytes;
use std::sync::Arc;

/// The dataset of the hand-built snapshots and their announcement.
fn hostile_dataset() -> DatasetId {
    DatasetId::from_u128(0x4057_11e0_0000_0000_0000_0000_0000_0001).unwrap()
}

/// One type section of a hand-built snapshot of Movies.
#[derive(Default)]
struct Section {
    key_fields: Vec<&'static str>,
    record_count: u32,
    offsets: Vec<u32>,
    words: Vec<u64>,
    key_index: Vec<u64>,
}

impl Section {
    /// A section holding `records`, one per ordinal.
    fn of(records: &[Vec<u64>], key_fields: Vec<&'static str>) -> Self {
        let mut s = Section {
            key_fields,
            record_count: records.len() as u32,
            offsets: vec![0],
            ..Section::default()
        };
        for r in records {
            s.words.extend_from_slice(r);
            s.offsets.push(s.words.len() as u32);
        }
        s
    }
}

/// A whole snapshot blob of version 1 with the Movie type's id.
fn snapshot_blob(section: &Section) -> Vec<u8> {
    let info = TypeInfo::of::<movie::Owned>();
    let mut message = capnp::message::Builder::new_default();
    {
        let mut root = message.init_root::<snapshot::Builder>();
        let mut h = root.reborrow().init_header();
        h.set_to_version(1);
        h.set_producer_id("hostile");
        h.set_dataset_id_hi(hostile_dataset().hi());
        h.set_dataset_id_lo(hostile_dataset().lo());
        let mut t = root.init_types(1).get(0);
        t.set_type_id(info.type_id);
        t.set_name(info.name.as_str());
        let mut keys = t
            .reborrow()
            .init_key_fields(section.key_fields.len() as u32);
        for (i, k) in section.key_fields.iter().enumerate() {
            keys.set(i as u32, *k);
        }
        t.set_record_count(section.record_count);
        let mut offsets = t.reborrow().init_offsets(section.offsets.len() as u32);
        for (i, o) in section.offsets.iter().enumerate() {
            offsets.set(i as u32, *o);
        }
        let mut words = t.reborrow().init_words(section.words.len() as u32);
        for (i, w) in section.words.iter().enumerate() {
            words.set(i as u32, *w);
        }
        let mut index = t.init_key_index(section.key_index.len() as u32);
        for (i, w) in section.key_index.iter().enumerate() {
            index.set(i as u32, *w);
        }
    }
    frame(
        BlobKind::Snapshot,
        0,
        1,
        &capnp::serialize::write_message_to_words(&message),
    )
}

fn open(bytes: &[u8]) -> Result<ReadState, burrow::Error> {
    ReadState::from_snapshot(Arc::new(OpenBlob::from_bytes(bytes, "snapshot/1")?), 1)
}

/// A struct pointer (kind 0) at `offset` words past the pointer.
fn struct_ptr(offset: i32, data_words: u16, pointers: u16) -> u64 {
    (((offset as u32) << 2) as u64) | u64::from(data_words) << 32 | u64::from(pointers) << 48
}

/// A list pointer (kind 1): `size` is the element size code (2 = bytes,
/// 6 = pointers, 7 = inline composite, whose count is then in words).
fn list_ptr(offset: i32, size: u8, count: u32) -> u64 {
    1 | (((offset as u32) << 2) as u64) | u64::from(size) << 32 | u64::from(count) << 35
}

/// A Movie record: id, year, and the given title and tags pointers
/// followed by `tail` words.
fn movie_record(id: u64, title: u64, tags: u64, tail: &[u64]) -> Vec<u64> {
    let mut r = vec![struct_ptr(0, 2, 2), id, 1999, title, tags];
    r.extend_from_slice(tail);
    r
}

/// Text "abc" right after the record's pointers: pointer at word 3 (of
/// the record), text at word 5.
fn text_abc() -> (u64, Vec<u64>) {
    (
        list_ptr(1, 2, 4),
        vec![u64::from_le_bytes(*b"abc\0\0\0\0\0")],
    )
}

fn read_every_field(state: &ReadState) -> Vec<String> {
    let view = state.view::<movie::Owned>().unwrap();
    let mut errors = Vec::new();
    for item in view.iter() {
        match item {
            Ok((_, record)) => match record.get() {
                Ok(m) => {
                    let _ = m.get_id();
                    if let Err(e) = m.get_title() {
                        errors.push(e.to_string());
                    }
                    match m.get_tags() {
                        Ok(tags) => {
                            for t in tags.iter() {
                                if let Err(e) = t {
                                    errors.push(e.to_string());
                                }
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors
}

#[test]
fn pointers_out_of_bounds_are_errors_on_read() {
    let (_, abc) = text_abc();
    let records = vec![
        // Root pointer far past the record.
        vec![struct_ptr(1000, 2, 2), 0, 0, 0, 0],
        // Title pointer past the record.
        movie_record(2, list_ptr(50, 2, 8), 0, &abc),
        // Negative offset, before the record.
        movie_record(3, list_ptr(-20, 2, 8), 0, &abc),
    ];
    let state = open(&snapshot_blob(&Section::of(&records, vec![]))).unwrap();
    let errors = read_every_field(&state);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("out of bounds") || e.contains("bounds")),
        "{errors:?}"
    );
}

#[test]
fn huge_list_lengths_are_refused() {
    // A title claiming 2^29 - 1 bytes, and tags claiming 2^29 - 1 pointers.
    let records = vec![movie_record(
        1,
        list_ptr(0, 2, (1 << 29) - 1),
        list_ptr(0, 6, (1 << 29) - 1),
        &[],
    )];
    let state = open(&snapshot_blob(&Section::of(&records, vec![]))).unwrap();
    let errors = read_every_field(&state);
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn offsets_out_of_range_are_errors_on_read() {
    let (title, abc) = text_abc();
    let good = movie_record(1, title, 0, &abc);
    let mut s = Section::of(&[good.clone(), good], vec![]);
    // Ordinal 1 ends far past the words; ordinal 2 runs backwards.
    s.offsets = vec![0, 6, 1 << 30, 3];
    s.record_count = 3;
    let state = open(&snapshot_blob(&s)).unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    assert!(view.get(0).unwrap().is_some());
    let err = view
        .get(1)
        .err()
        .expect("ordinal 1 is out of range")
        .to_string();
    assert!(err.contains("outside"), "{err}");
    assert!(view.get(2).is_err(), "a backwards range is an error");
    assert_eq!(view.iter().filter(|r| r.is_err()).count(), 2);
}

#[test]
fn deep_nesting_is_bounded() {
    // The title is a struct pointer into a chain of 200 structs, each
    // pointing at the next: reading it as text fails at once, and walking
    // the whole record (as `burrow verify` does) stops at the nesting
    // limit.
    let mut tail = Vec::new();
    for _ in 0..200 {
        tail.push(struct_ptr(0, 0, 1));
    }
    tail.push(0);
    let records = vec![movie_record(1, struct_ptr(1, 0, 1), 0, &tail)];
    let state = open(&snapshot_blob(&Section::of(&records, vec![]))).unwrap();
    let errors = read_every_field(&state);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let words = state.types()[0].record_words(0).unwrap().unwrap();
    let message = burrow::schema::record::record_message(words, 1 << 20);
    let err = message
        .get_root::<capnp::any_pointer::Reader>()
        .and_then(|r| r.target_size())
        .expect_err("nesting is limited");
    assert!(err.to_string().contains("nested"), "{err}");
}

#[test]
fn shared_pointer_amplification_is_bounded_by_the_traversal_limit() {
    // 512 tags, every one pointing at the same 512-word text: 1 KiB of
    // pointers that read as 2 MiB. A consumer with a record traversal
    // limit of 64 Ki words stops partway with an error.
    let n = 512usize;
    let text_words = 512usize;
    let mut tail = Vec::new();
    for i in 0..n {
        // Tag pointer i sits at word 6 + i of the record; the text starts
        // at word 6 + n.
        let offset = (n - i - 1) as i32;
        tail.push(list_ptr(offset, 2, (text_words * 8) as u32));
    }
    tail.extend(std::iter::repeat_n(
        u64::from_le_bytes(*b"xxxxxxxx"),
        text_words - 1,
    ));
    tail.push(u64::from_le_bytes(*b"xxxxxxx\0"));
    let record = movie_record(1, 0, list_ptr(0, 6, n as u32), &tail);
    let blob = snapshot_blob(&Section::of(&[record], vec![]));
    let (dir, store) = serve(blob);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(dir.path().join("cache"))
        .record_traversal_words(64 << 10)
        .build()
        .unwrap();
    rt.block_on(consumer.refresh()).unwrap();
    let state = consumer.state().unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    let record = view.get(0).unwrap().unwrap();
    let m = record.get().unwrap();
    let mut read = 0;
    let mut error = None;
    for t in m.get_tags().unwrap().iter() {
        match t {
            Ok(t) => read += t.as_bytes().len(),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let error = error.expect("the traversal limit stops the amplification");
    assert!(error.contains("limit"), "{error}");
    assert!(read <= 64 << 13, "read {read} bytes past the limit");
}

/// A list of 2^28 zero-sized structs claims to be huge in no space: the
/// blob reader must refuse it rather than allocate a section per element.
#[test]
fn zero_sized_struct_lists_cannot_amplify_a_blob() {
    for kind in [BlobKind::Snapshot, BlobKind::Delta] {
        let words: [u64; 10] = [
            struct_ptr(0, 0, 2),       // root: Snapshot or Delta, 2 pointers
            struct_ptr(2, 6, 0),       // header: the 6 data words at word 4
            list_ptr(0, 7, 0),         // types: inline composite, 0 words
            struct_ptr(1 << 28, 0, 0), // tag: 2^28 elements of 0 words
            0,                         // header: versions, time, schema hash
            0,
            0,
            0,
            0, // datasetIdHi
            1, // datasetIdLo: a dataset id, so the reader gets to the types
        ];
        let mut body = vec![0u8, 0, 0, 0, 10, 0, 0, 0];
        for w in words {
            body.extend_from_slice(&w.to_le_bytes());
        }
        let (from, to) = if kind == BlobKind::Snapshot {
            (0, 0)
        } else {
            (0, 1)
        };
        let bytes = frame(kind, from, to, &body);
        let blob = Arc::new(OpenBlob::from_bytes(&bytes, "hostile").unwrap());
        let started = std::time::Instant::now();
        let err = if kind == BlobKind::Snapshot {
            blob.snapshot().err().expect("refused").to_string()
        } else {
            blob.delta().err().expect("refused").to_string()
        };
        assert!(err.contains("limit"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}

fn id_key_hash(id: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes())
}

#[test]
fn a_key_index_with_no_empty_slot_cannot_hang_a_lookup() {
    let (title, abc) = text_abc();
    let records: Vec<Vec<u64>> = (0..4).map(|i| movie_record(i, title, 0, &abc)).collect();
    let mut s = Section::of(&records, vec!["id"]);
    // Every slot full, every slot claiming the hash of the key looked up
    // (id 99), every one naming ordinal 0, whose id is 0.
    let h = id_key_hash(99);
    // Slots are two words: the entry, and the record's place in `words`
    // (ordinal 0: words 0..6).
    s.key_index = [(h >> 32) << 32 | 1, 6 << 32].repeat(1 << 12);
    let state = open(&snapshot_blob(&s)).unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    let started = std::time::Instant::now();
    assert!(view.find(&99u64).unwrap().is_none());
    assert!(
        view.find(&1u64).unwrap().is_none(),
        "not in the (hostile) index"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_key_index_slot_placing_a_record_elsewhere_is_caught() {
    let (title, abc) = text_abc();
    let records: Vec<Vec<u64>> = (0..2).map(|i| movie_record(i, title, 0, &abc)).collect();
    let h = id_key_hash(1);
    let slot = (h & 3) as usize;
    // Out of bounds: a lookup is an error naming the slot.
    let mut s = Section::of(&records, vec!["id"]);
    s.key_index = vec![0; 8];
    s.key_index[2 * slot] = (h >> 32) << 32 | 2;
    s.key_index[2 * slot + 1] = 1000 | 6 << 32;
    let state = open(&snapshot_blob(&s)).unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    let err = view.find(&1u64).err().map(|e| e.to_string());
    let err = err.expect("out of bounds");
    assert!(err.contains("outside"), "{err}");
    // In bounds but pointing at ordinal 0's words for ordinal 1: verify
    // names the slot.
    s.key_index[2 * slot + 1] = 6 << 32;
    let err = burrow::verify::check_blob(BlobName::Snapshot(1), &snapshot_blob(&s), "snapshot/1")
        .err()
        .map(|e| e.to_string());
    let err = err.expect("misplaced");
    assert!(err.contains("places ordinal 1 at words 0+6"), "{err}");
}

#[test]
fn a_key_field_of_the_wrong_pointer_type_is_an_error_on_lookup() {
    // Keyed by title; ordinal 0's title is a struct, not text.
    let record = movie_record(1, struct_ptr(1, 1, 0), 0, &[7]);
    let mut s = Section::of(&[record], vec!["title"]);
    let mut key = Vec::new();
    key.extend_from_slice(&3u32.to_le_bytes());
    key.extend_from_slice(b"abc");
    let h = xxhash_rust::xxh3::xxh3_64(&key);
    s.key_index = vec![0; 4];
    s.key_index[2 * (h & 1) as usize] = (h >> 32) << 32 | 1;
    s.key_index[2 * (h & 1) as usize + 1] = 6 << 32;
    let state = open(&snapshot_blob(&s)).unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    let err = view
        .find("abc")
        .err()
        .expect("the bad key field is an error")
        .to_string();
    assert!(err.contains("key of ordinal 0"), "{err}");
}

#[test]
fn a_record_count_that_lies_is_caught_by_verify() {
    let (title, abc) = text_abc();
    let records: Vec<Vec<u64>> = (0..3).map(|i| movie_record(i, title, 0, &abc)).collect();
    let mut s = Section::of(&records, vec![]);
    s.record_count = 7;
    let bytes = snapshot_blob(&s);
    let err = burrow::verify::check_blob(BlobName::Snapshot(1), &bytes, "snapshot/1")
        .expect_err("the count is wrong")
        .to_string();
    assert!(err.contains("says 7 records, holds 3"), "{err}");
}

/// A local store holding `snapshot` as version 1, announced.
fn serve(snapshot: Vec<u8>) -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let entry = Announcement {
        dataset_id: hostile_dataset(),
        seq: 1,
        kind: AnnounceKind::Announce,
        version: 1,
        from_version: 0,
        snapshot_version: 1,
        has_snapshot: true,
        pinned_version: None,
        producer_id: "hostile".into(),
        timestamp_micros: 0,
        snapshot_bytes: snapshot.len() as u64,
        delta_bytes: 0,
        reverse_bytes: 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .create(&BlobName::Snapshot(1), vec![Bytes::from(snapshot)])
            .await
            .unwrap();
        burrow::announcer::AnnouncementLog::new(store.clone())
            .append(&entry)
            .await
            .unwrap();
    });
    (dir, store)
}

/// Regression: an announcement entry stored under another seq (a copied
/// file) sent a watcher probing `seq + 1` round in a circle forever; it is
/// now refused as corrupt, naming the entry.
#[tokio::test]
async fn an_entry_under_the_wrong_seq_is_refused_not_looped_on() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let p = crate::common::producer(&store, "p");
    let mut model: crate::common::Model = (0..5)
        .map(|i| (i, crate::common::movie_value(i, 0)))
        .collect();
    crate::common::publish(&p, &model).await.unwrap();
    model.insert(1, crate::common::movie_value(1, 1));
    crate::common::publish(&p, &model).await.unwrap();
    let c = crate::common::consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    // announce/3 is a copy of announce/1.
    std::fs::copy(
        store_dir.join(BlobName::Announce(1).to_string()),
        store_dir.join(BlobName::Announce(3).to_string()),
    )
    .unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), c.refresh())
        .await
        .expect("the refresh ends")
        .expect_err("the copied entry is refused")
        .to_string();
    assert!(
        err.contains(&BlobName::Announce(3).to_string()) && err.contains("seq 1"),
        "{err}"
    );
    assert_eq!(
        crate::common::snapshot_of(&c),
        model,
        "the consumer keeps serving"
    );
}
