//! Secondary indexes (`ProducerBuilder::index`, `TypeView::index`,
//! `Consumer::build_index`): every lookup equals the model's answer
//! through snapshots, deltas, jumps by reverse deltas and pins, for a
//! unique index, a non-unique one and one over a list field, shipped by
//! the producer or built by the consumer; and a snapshot whose index does
//! not match its records is refused by name.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder, ReadState};
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use std::collections::{BTreeMap, BTreeSet};

/// A deterministic random sequence (xorshift), so that a failure repeats.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn ids<'a>(it: impl Iterator<Item = burrow::Result<(u32, movie::Reader<'a>)>>) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for r in it {
        let (_, m) = r.expect("index lookup reads its records");
        assert!(
            out.insert(m.get_id()),
            "record {} returned twice",
            m.get_id()
        );
    }
    out
}

/// Checks every index of `state` against `model`: each year and tag the
/// model holds (and one it does not) gives exactly the model's records,
/// and each title gives its one record.
fn check_state(state: &ReadState, model: &Model, consumer_built: bool) {
    let view = state.view::<movie::Owned>().unwrap();
    let by_year = view.index("by_year").unwrap();
    let by_tag = view.index("by_tag").unwrap();
    let by_title = view.index("by_title").unwrap();
    let mut years: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut tags: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (id, (_, year, ts)) in model {
        years.entry(*year).or_default().insert(*id);
        for t in ts {
            tags.entry(t.as_str()).or_default().insert(*id);
        }
    }
    let v = state.version();
    for (year, want) in &years {
        assert_eq!(
            &ids(by_year.find(year).unwrap()),
            want,
            "by_year {year} at {v}"
        );
    }
    assert!(ids(by_year.find(&7u32).unwrap()).is_empty());
    for (tag, want) in &tags {
        assert_eq!(
            &ids(by_tag.find(*tag).unwrap()),
            want,
            "by_tag {tag} at {v}"
        );
    }
    assert!(ids(by_tag.find("no such tag").unwrap()).is_empty());
    for (id, (title, _, _)) in model {
        let found = by_title
            .get(title.as_str())
            .unwrap()
            .map(|(_, m)| m.get_id());
        assert_eq!(found, Some(*id), "by_title {title} at {v}");
        assert_eq!(by_title.find(title.as_str()).unwrap().count(), 1);
    }
    if consumer_built {
        let mine = view.index("mine_by_year").unwrap();
        for (year, want) in &years {
            assert_eq!(
                &ids(mine.find(year).unwrap()),
                want,
                "mine_by_year {year} at {v}"
            );
        }
    }
}

fn consumer_at(
    store: &BlobStore,
    dir: &std::path::Path,
    name: &str,
    depth: Option<usize>,
) -> Consumer {
    let b = ConsumerBuilder::new(store.clone()).cache_dir(dir.join(name));
    match depth {
        Some(d) => b.max_delta_depth(d),
        None => b,
    }
    .build()
    .unwrap()
}

/// Invariant: shipped and consumer-built indexes answer as the model
/// does after every refresh, whether the consumer follows deltas, jumps
/// (reverse deltas, pins) or loads only snapshots.
#[tokio::test]
async fn index_lookups_equal_the_model_through_deltas_jumps_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("index")
        .snapshot_every(4)
        .retention(None)
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("by_year", &["year"])
        .index::<movie::Owned>("by_tag", &["tags"])
        .unique_index::<movie::Owned>("by_title", &["title"])
        .build()
        .unwrap();
    let follower = consumer_at(&store, dir.path(), "follower", None);
    let jumper = consumer_at(&store, dir.path(), "jumper", None);
    let snapshots = consumer_at(&store, dir.path(), "snapshots", Some(0));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::new();
    let mut versions: BTreeMap<u64, Model> = BTreeMap::new();
    for cycle in 0..12u64 {
        for _ in 0..1 + rng.below(8) {
            let id = rng.below(40);
            model.insert(id, movie_value(id, cycle));
        }
        for _ in 0..rng.below(5) {
            model.remove(&rng.below(40));
        }
        // A year changes under the same key: the record leaves one group.
        for _ in 0..rng.below(3) {
            let id = rng.below(40);
            if let Some(m) = model.get_mut(&id) {
                m.1 = 1990 + rng.below(3) as u32;
                m.2.push(format!("retagged{}", rng.below(2)));
            }
        }
        let report = publish(&producer, &model).await.unwrap();
        versions.insert(report.version, model.clone());
        for c in [&follower, &snapshots] {
            c.refresh().await.unwrap();
        }
        if cycle == 0 {
            for c in [&follower, &jumper, &snapshots] {
                if c.current().is_none() {
                    c.refresh().await.unwrap();
                }
                let built = c
                    .build_index::<movie::Owned>("mine_by_year", &["year"], false)
                    .await
                    .unwrap();
                assert_eq!(built.records, model.len() as u64);
            }
        }
        if cycle % 3 == 2 {
            let known: Vec<u64> = versions.keys().copied().collect();
            let target = known[rng.below(known.len() as u64) as usize];
            jumper.refresh_to(target).await.unwrap();
        }
        for c in [&follower, &jumper, &snapshots] {
            let state = c.current().unwrap();
            check_state(&state, &versions[&state.version()], true);
        }
    }
    assert!(
        follower.current().unwrap().delta_depth() > 0,
        "deltas were followed"
    );
}

/// Invariant: a consumer-built index costs what its report says, a
/// unique one whose records share a value is refused naming both, and a
/// lookup by an unknown index names the ones the type has.
#[tokio::test]
async fn consumer_built_indexes_report_and_refuse_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = producer(&store, "index");
    let model: Model = (0..50).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let c = consumer(&store, &dir.path().join("cache"));
    c.refresh().await.unwrap();
    let built = c
        .build_index::<movie::Owned>("by_tag", &["tags"], false)
        .await
        .unwrap();
    assert_eq!(built.records, 50);
    let tag_count: usize = model
        .values()
        .map(|m| m.2.iter().collect::<BTreeSet<_>>().len())
        .sum();
    assert_eq!(built.values, tag_count as u64);
    let err = c
        .build_index::<movie::Owned>("by_tag_once", &["tags"], true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unique index by_tag_once: ordinals"), "{err}");
    let err = c
        .build_index::<movie::Owned>("x", &["nope"], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("field nope: no such field"), "{err}");
    let state = c.current().unwrap();
    let view = state.view::<movie::Owned>().unwrap();
    let err = view.index("by_year").err().unwrap().to_string();
    assert!(
        err.contains("no index named \"by_year\" (it has [\"by_tag\"])"),
        "{err}"
    );
}

/// Invariant: a producer refuses an index it cannot build, by name.
#[test]
fn a_producer_refuses_bad_indexes_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path()).unwrap();
    let err = ProducerBuilder::new(store.clone())
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("by_year", &["year"])
        .index::<movie::Owned>("by_year", &["title"])
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("two indexes named by_year"), "{err}");
    let err = ProducerBuilder::new(store)
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("bad", &["tags", "nope"])
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("index bad: field nope: no such field"),
        "{err}"
    );
}

/// Invariant: a snapshot whose index lists differ from what its records
/// give is refused when it enters a cache, naming the type and index.
#[tokio::test]
async fn a_snapshot_with_a_damaged_index_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("index")
        .retention(None)
        .compression(burrow::blobstore::Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .index::<movie::Owned>("by_year", &["year"])
        .build()
        .unwrap();
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer, &model).await.unwrap();
    let path = dir.path().join("store/snapshot").join(format!("{:020}", 1));
    let bytes = std::fs::read(&path).unwrap();
    let blob =
        std::sync::Arc::new(burrow::schema::blob::OpenBlob::from_bytes(&bytes, "s").unwrap());
    let (_, sections) = blob.snapshot().unwrap();
    let postings = sections[0].indexes[0].postings.get();
    assert_eq!(postings.len(), 20);
    // Swap two postings of different groups: the words stay a valid list.
    let seg = blob.segment().as_ptr() as usize;
    let at = postings.as_ptr() as usize - seg + 64 + 8;
    drop(sections);
    let mut damaged = bytes.clone();
    let (a, b) = (at, at + 4 * 19);
    let (x, y) = (damaged[a], damaged[b]);
    damaged[a] = y;
    damaged[b] = x;
    crate::common::mangle::reseal_body(&mut damaged);
    let blob = burrow::schema::blob::OpenBlob::from_bytes(&damaged, "snapshot/1").unwrap();
    let err = blob.verify().unwrap_err().to_string();
    assert!(err.contains("index by_year: posting"), "{err}");
    // An index over a field the type does not have (the last "year" in
    // the blob is the index's field name; the schema node's comes first).
    let mut renamed = bytes.clone();
    let at = renamed.windows(5).rposition(|w| w == b"year\0").unwrap();
    renamed[at + 3] = b'x';
    crate::common::mangle::reseal_body(&mut renamed);
    let blob = burrow::schema::blob::OpenBlob::from_bytes(&renamed, "snapshot/1").unwrap();
    let err = blob.verify().unwrap_err().to_string();
    assert!(
        err.contains("index by_year: field yeax: no such field"),
        "{err}"
    );
    // A table slot moved: the table no longer is what the records give.
    let (_, sections) =
        std::sync::Arc::new(burrow::schema::blob::OpenBlob::from_bytes(&bytes, "s").unwrap())
            .snapshot()
            .unwrap();
    let table = sections[0].indexes[0].table.get();
    let used = table.iter().position(|&w| w != 0).unwrap();
    let free = table.iter().position(|&w| w == 0).unwrap();
    let base = table.as_ptr() as usize - seg_of(&sections[0]) + 64 + 8;
    drop(sections);
    let mut moved = bytes.clone();
    for k in 0..8 {
        moved.swap(base + used * 8 + k, base + free * 8 + k);
    }
    crate::common::mangle::reseal_body(&mut moved);
    let blob = burrow::schema::blob::OpenBlob::from_bytes(&moved, "snapshot/1").unwrap();
    let err = blob.verify().unwrap_err().to_string();
    assert!(err.contains("index by_year: table slot"), "{err}");
    // A consumer refuses it too.
    std::fs::write(&path, &damaged).unwrap();
    let c = consumer(&store, &dir.path().join("cache"));
    let err = c.refresh().await.unwrap_err().to_string();
    assert!(err.contains("index by_year"), "{err}");
}

/// Where a section's blob's segment starts in memory.
fn seg_of(s: &burrow::schema::blob::SnapshotSection) -> usize {
    s.blob.segment().as_ptr() as usize
}

/// Invariant: a v2 snapshot written before `TypeSnapshot.indexes` existed
/// (its type entries one pointer shorter; kept from the golden files as
/// they were) still passes every check and reads, with no index.
#[test]
fn a_snapshot_from_before_indexes_still_reads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/v2/snapshot-1-before-indexes.blob");
    let bytes = std::fs::read(path).unwrap();
    let blob = std::sync::Arc::new(
        burrow::schema::blob::OpenBlob::from_bytes(&bytes, "snapshot/1").unwrap(),
    );
    blob.verify().unwrap();
    let state = ReadState::from_snapshot(blob, 1).unwrap();
    let model = state_model(&state);
    assert!(!model.is_empty());
    let view = state.view::<movie::Owned>().unwrap();
    let err = view.index("by_year").err().unwrap().to_string();
    assert!(
        err.contains("no index named \"by_year\" (it has [])"),
        "{err}"
    );
}
