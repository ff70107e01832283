//! Schema evolution across a dataset's life (`schema::evolve`): a chain
//! published with `evolve_v1` is continued by a producer built with
//! `evolve_v2` (a rename, fields with and without defaults, an enumerant
//! and types added), and consumers built with either version follow it,
//! by deltas that cross the change and by snapshots, against the model;
//! incompatible versions (`evolve_bad_type`, `evolve_bad_key`) and an
//! older producer are refused by name. Golden blobs under
//! `tests/data/evolve/` written by each version are read by the other.

use burrow::blobstore::{BlobStore, Compression};
use burrow::consumer::{Consumer, ConsumerBuilder, ReadState, RefreshEvent, RefreshListener};
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::blob::OpenBlob;
use burrow::schema::evolve_bad_key::evolve_capnp as bad_key;
use burrow::schema::evolve_bad_type::evolve_capnp as bad_type;
use burrow::schema::evolve_v1::evolve_capnp as v1;
use burrow::schema::evolve_v2::evolve_capnp as v2;
use burrow::schema::DatasetId;
use burrow::testing::ManualClock;
use burrow::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One item as version 2 sees it; version 1 sees `name`, `count`,
/// `kind` and `tags` only.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    name: String,
    count: u32,
    /// The enumerant's number (2, `rare`, is new in v2).
    kind: u16,
    tags: Vec<String>,
    rating: f32,
    note: String,
    detail: Option<(String, u16)>,
}

type Items = BTreeMap<u64, Item>;
/// What a v1 reader sees of an item.
type V1Item = (String, u32, u16, Vec<String>);

fn item(id: u64, generation: u32) -> Item {
    Item {
        name: format!("item {id} gen {generation}"),
        count: (id as u32) * 10 + generation,
        kind: (id % 2) as u16,
        tags: (0..id % 3).map(|t| format!("tag{t}")).collect(),
        // What a v1 record reads as in v2: the fields' defaults.
        rating: 2.5,
        note: String::new(),
        detail: None,
    }
}

fn v1_view(items: &Items) -> BTreeMap<u64, V1Item> {
    items
        .iter()
        .map(|(id, i)| (*id, (i.name.clone(), i.count, i.kind, i.tags.clone())))
        .collect()
}

fn builder(store: &BlobStore, id: &str) -> ProducerBuilder {
    ProducerBuilder::new(store.clone())
        .producer_id(id)
        .compression(Compression::None)
}

fn producer_v1(store: &BlobStore) -> Producer {
    builder(store, "v1")
        .primary_key::<v1::item::Owned>(&["id"])
        .build()
        .unwrap()
}

fn producer_v2(store: &BlobStore, with_extra: bool) -> Producer {
    let b = builder(store, "v2").primary_key::<v2::item::Owned>(&["id"]);
    let b = if with_extra {
        b.primary_key::<v2::extra::Owned>(&["id"])
    } else {
        b
    };
    b.build().unwrap()
}

async fn publish_v1(p: &Producer, items: &Items) -> burrow::Result<burrow::producer::CycleReport> {
    p.run_cycle(|c| {
        for (id, i) in items {
            assert!(i.kind < 2 && i.rating == 2.5 && i.note.is_empty() && i.detail.is_none());
            c.add::<v1::item::Owned>(|mut m| {
                m.set_id(*id);
                m.set_name(i.name.as_str());
                m.set_count(i.count);
                m.set_kind(if i.kind == 0 {
                    v1::Kind::Plain
                } else {
                    v1::Kind::Special
                });
                let mut t = m.init_tags(i.tags.len() as u32);
                for (k, tag) in i.tags.iter().enumerate() {
                    t.set(k as u32, tag.as_str());
                }
                Ok(())
            })?;
        }
        Ok(())
    })
    .await
}

async fn publish_v2(
    p: &Producer,
    items: &Items,
    extras: &BTreeMap<u64, String>,
) -> burrow::Result<burrow::producer::CycleReport> {
    p.run_cycle(|c| {
        for (id, i) in items {
            c.add::<v2::item::Owned>(|mut m| {
                m.set_id(*id);
                m.set_title(i.name.as_str());
                m.set_count(i.count);
                m.set_kind(match i.kind {
                    0 => v2::Kind::Plain,
                    1 => v2::Kind::Special,
                    _ => v2::Kind::Rare,
                });
                let mut t = m.reborrow().init_tags(i.tags.len() as u32);
                for (k, tag) in i.tags.iter().enumerate() {
                    t.set(k as u32, tag.as_str());
                }
                // Set even at its default: a default costs no bytes.
                m.set_rating(i.rating);
                if !i.note.is_empty() {
                    m.set_note(i.note.as_str());
                }
                if let Some((origin, weight)) = &i.detail {
                    let mut d = m.init_detail();
                    d.set_origin(origin.as_str());
                    d.set_weight(*weight);
                }
                Ok(())
            })?;
        }
        for (id, info) in extras {
            c.add::<v2::extra::Owned>(|mut e| {
                e.set_id(*id);
                e.set_info(info.as_str());
                Ok(())
            })?;
        }
        Ok(())
    })
    .await
}

/// What a v1 reader holds, each record also found by key at its ordinal.
fn read_v1(state: &ReadState) -> BTreeMap<u64, V1Item> {
    let view = state.view::<v1::item::Owned>().unwrap();
    let mut out = BTreeMap::new();
    for (o, m) in view.iter() {
        let kind = match m.get_kind() {
            Ok(k) => k as u16,
            // An enumerant this (older) build does not know: its number.
            Err(burrow::capnp::NotInSchema(n)) => n,
        };
        let tags = m
            .get_tags()
            .unwrap()
            .iter()
            .map(|t| t.unwrap().to_string().unwrap())
            .collect();
        let name = m.get_name().unwrap().to_string().unwrap();
        out.insert(m.get_id(), (name, m.get_count(), kind, tags));
        assert_eq!(view.find(&m.get_id()).unwrap().unwrap().0, o);
    }
    assert_eq!(view.len() as usize, out.len());
    out
}

/// What a v2 reader holds, each record also found by key at its ordinal.
fn read_v2(state: &ReadState) -> Items {
    let view = state.view::<v2::item::Owned>().unwrap();
    let mut out = Items::new();
    for (o, m) in view.iter() {
        let detail = m.has_detail().then(|| {
            let d = m.get_detail().unwrap();
            (d.get_origin().unwrap().to_string().unwrap(), d.get_weight())
        });
        let item = Item {
            name: m.get_title().unwrap().to_string().unwrap(),
            count: m.get_count(),
            kind: m.get_kind().unwrap() as u16,
            tags: m
                .get_tags()
                .unwrap()
                .iter()
                .map(|t| t.unwrap().to_string().unwrap())
                .collect(),
            rating: m.get_rating(),
            note: m.get_note().unwrap().to_string().unwrap(),
            detail,
        };
        out.insert(m.get_id(), item);
        assert_eq!(view.find(&m.get_id()).unwrap().unwrap().0, o);
    }
    assert_eq!(view.len() as usize, out.len());
    out
}

fn read_extras(state: &ReadState) -> BTreeMap<u64, String> {
    let Ok(view) = state.view::<v2::extra::Owned>() else {
        return BTreeMap::new();
    };
    view.iter()
        .map(|(_, e)| (e.get_id(), e.get_info().unwrap().to_string().unwrap()))
        .collect()
}

fn consumer_v1(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .record_type::<v1::item::Owned>()
        .build()
        .unwrap()
}

fn consumer_v2(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .record_type::<v2::item::Owned>()
        .record_type::<v2::extra::Owned>()
        .build()
        .unwrap()
}

/// Logs, per refresh, the changed items (id: rating before -> after) and
/// how many extras were added.
struct ChangeLog(Arc<Mutex<Vec<String>>>);

impl RefreshListener for ChangeLog {
    fn refreshed(&self, event: &RefreshEvent) {
        let items = event.typed::<v2::item::Owned>().unwrap();
        let changed: Vec<String> = items
            .iter()
            .flat_map(|c| c.changed())
            .map(|(a, b)| format!("{}:{}->{}", a.get_id(), a.get_rating(), b.get_rating()))
            .collect();
        let extras = event
            .typed::<v2::extra::Owned>()
            .unwrap()
            .map_or(0, |c| c.added().count());
        self.0.lock().unwrap().push(format!(
            "{}: items ~[{}] extras +{extras}",
            event.to().version(),
            changed.join(",")
        ));
    }
}

/// The chain's versions 1 and 2, published by v1.
fn models_v1() -> (Items, Items) {
    let one: Items = (0..20).map(|id| (id, item(id, 0))).collect();
    let mut two = one.clone();
    two.insert(3, item(3, 1));
    two.remove(&1);
    two.insert(25, item(25, 0));
    (one, two)
}

/// Invariant: a chain that crosses a schema change reads the same through
/// deltas and snapshots, with either version's code, as the model says:
/// new fields at their defaults for records written before, invisible to
/// the older reader; a cycle that only changes the schema publishes
/// nothing, and one that sets new fields on a few records is a delta of
/// exactly those.
#[tokio::test]
async fn a_chain_crosses_a_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let (one, two) = models_v1();
    let p1 = producer_v1(&store);
    assert_eq!(publish_v1(&p1, &one).await.unwrap().version, 1);

    // Delta followers of each version, from version 1.
    let old_reader = consumer_v1(&store, &dir.path().join("c1"));
    let changes: Arc<Mutex<Vec<String>>> = Arc::default();
    let new_reader = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("c2"))
        .record_type::<v2::item::Owned>()
        .record_type::<v2::extra::Owned>()
        .refresh_listener(ChangeLog(Arc::clone(&changes)))
        .build()
        .unwrap();
    for c in [&old_reader, &new_reader] {
        c.refresh().await.unwrap();
    }
    assert_eq!(read_v2(&new_reader.state().unwrap()), one);
    assert_eq!(publish_v1(&p1, &two).await.unwrap().version, 2);
    for c in [&old_reader, &new_reader] {
        c.refresh().await.unwrap();
    }
    assert_eq!(read_v1(&old_reader.state().unwrap()), v1_view(&two));
    assert_eq!(read_v2(&new_reader.state().unwrap()), two);

    // A v2 producer continues the chain: the same data under the new
    // schema is no change (new fields at their defaults keep each
    // record's canonical bytes), so no version.
    let p2 = producer_v2(&store, false);
    assert_eq!(p2.restore().await.unwrap(), Some(2));
    let report = publish_v2(&p2, &two, &BTreeMap::new()).await.unwrap();
    assert!(!report.published, "{:?}", report.changes);
    assert_eq!(report.version, 2);

    // New fields set on three records, one with the new enumerant, and a
    // new type: a delta of exactly those.
    let p2 = producer_v2(&store, true);
    assert_eq!(p2.restore().await.unwrap(), Some(2));
    let mut three = two.clone();
    three.get_mut(&0).unwrap().rating = 4.5;
    three.get_mut(&2).unwrap().note = "a note".into();
    three.get_mut(&4).unwrap().detail = Some(("lab".into(), 7));
    three.get_mut(&5).unwrap().kind = 2;
    let extras: BTreeMap<u64, String> = (0..3).map(|i| (i, format!("extra {i}"))).collect();
    let report = publish_v2(&p2, &three, &extras).await.unwrap();
    assert_eq!(report.version, 3);
    let item_change = report
        .changes
        .iter()
        .find(|c| c.type_name == "evolve.capnp:Item")
        .unwrap();
    assert_eq!(
        (item_change.added, item_change.changed, item_change.removed),
        (0, 4, 0)
    );
    let extra_change = report
        .changes
        .iter()
        .find(|c| c.type_name == "evolve.capnp:Extra")
        .unwrap();
    assert_eq!(extra_change.added, 3);

    // The followers cross the change by delta.
    for c in [&old_reader, &new_reader] {
        let r = c.refresh().await.unwrap().unwrap();
        assert!(matches!(r.steps[..], [burrow::consumer::Step::Delta(2, 3)]));
    }
    // The listener of the newer reader saw the delta across the change:
    // old records read with new fields at their defaults.
    assert_eq!(
        changes.lock().unwrap().last().unwrap(),
        "3: items ~[0:2.5->4.5,2:2.5->2.5,4:2.5->2.5,5:2.5->2.5] extras +3"
    );
    let check =
        |old: &ReadState, new: &ReadState, model: &Items, extras: &BTreeMap<u64, String>| {
            assert_eq!(read_v1(old), v1_view(model));
            assert_eq!(read_v2(new), *model);
            assert_eq!(read_extras(new), *extras);
        };
    check(
        &old_reader.state().unwrap(),
        &new_reader.state().unwrap(),
        &three,
        &extras,
    );
    // Snapshot consumers of both versions agree.
    let old_fresh = consumer_v1(&store, &dir.path().join("c3"));
    let new_fresh = consumer_v2(&store, &dir.path().join("c4"));
    for c in [&old_fresh, &new_fresh] {
        let r = c.refresh().await.unwrap().unwrap();
        assert!(matches!(r.steps[..], [burrow::consumer::Step::Snapshot(3)]));
    }
    check(
        &old_fresh.state().unwrap(),
        &new_fresh.state().unwrap(),
        &three,
        &extras,
    );

    // One more cycle, then back across the change (by the cheapest path).
    let mut four = three.clone();
    four.remove(&0);
    four.insert(
        30,
        Item {
            rating: 1.0,
            ..item(30, 0)
        },
    );
    publish_v2(&p2, &four, &extras).await.unwrap();
    for c in [&old_reader, &new_reader] {
        c.refresh().await.unwrap();
    }
    check(
        &old_reader.state().unwrap(),
        &new_reader.state().unwrap(),
        &four,
        &extras,
    );
    for c in [&old_reader, &new_reader] {
        c.refresh_to(1).await.unwrap().unwrap();
    }
    check(
        &old_reader.state().unwrap(),
        &new_reader.state().unwrap(),
        &one,
        &BTreeMap::new(),
    );

    // The older producer cannot continue the newer chain.
    let err = producer_v1(&store).restore().await.unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err}");
    assert!(
        err.to_string().contains(
            "snapshot/00000000000000000004: type evolve.capnp:Item, field `rating`: field removed: the blob's struct has 8 \
             fields, this build's 5; fields may only be added"
        ),
        "{err}"
    );
}

/// Invariant: producers whose schema is not a compatible evolution of
/// the chain's are refused at restore, naming the type, field and change.
#[tokio::test]
async fn incompatible_producers_are_refused_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    publish_v1(&producer_v1(&store), &models_v1().0)
        .await
        .unwrap();

    let bad = builder(&store, "bad")
        .primary_key::<bad_type::item::Owned>(&["id"])
        .build()
        .unwrap();
    let err = bad.restore().await.unwrap_err().to_string();
    assert!(
        err.contains(
            "snapshot/00000000000000000001: type evolve.capnp:Item, field `count`: type changed: \
             UInt32 in the blob, Text in this build (an incompatible schema change)"
        ),
        "{err}"
    );

    let bad = builder(&store, "bad")
        .primary_key::<bad_key::item::Owned>(&["ident"])
        .build()
        .unwrap();
    let err = bad.restore().await.unwrap_err().to_string();
    assert!(
        err.contains(
            "snapshot/00000000000000000001: type evolve.capnp:Item, field `ident`: primary key field `id` is renamed `ident` \
             in this build; a key field keeps its name"
        ),
        "{err}"
    );
    // A refused producer publishes nothing.
    assert!(bad.run_cycle(|_| Ok(())).await.is_err());
}

/// Invariant: a consumer refuses, at refresh, a blob whose schema of a
/// type it declared is incompatible, and keeps serving its current state;
/// a type it did not declare is checked when it is viewed.
#[tokio::test]
async fn an_incompatible_blob_is_refused_at_refresh_and_the_state_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let (one, _) = models_v1();
    publish_v1(&producer_v1(&store), &one).await.unwrap();

    // Extra, as bad_type has it, is not in version 1: nothing to refuse.
    let consumer = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("cache"))
        .record_type::<v1::item::Owned>()
        .record_type::<bad_type::extra::Owned>()
        .build()
        .unwrap();
    consumer.refresh().await.unwrap();

    let p2 = producer_v2(&store, true);
    p2.restore().await.unwrap();
    let extras = (0..2).map(|i| (i, format!("extra {i}"))).collect();
    publish_v2(&p2, &one, &extras).await.unwrap();
    let err = consumer.refresh().await.unwrap_err();
    assert!(
        err.to_string().contains(
            "refresh to version 2 failed at delta/00000000000000000001-00000000000000000002: \
             delta/00000000000000000001-00000000000000000002: type evolve.capnp:Extra, field `info`: type changed: Text in the blob, UInt32 in \
             this build (an incompatible schema change)"
        ),
        "{err}"
    );
    assert_eq!(consumer.version(), Some(1));
    assert_eq!(read_v1(&consumer.state().unwrap()), v1_view(&one));
    // Refused again, not planned around: the blob is sound.
    assert!(consumer.refresh().await.is_err());
    assert_eq!(consumer.version(), Some(1));

    // Undeclared: refused when viewed.
    let plain = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path().join("plain"))
        .build()
        .unwrap();
    plain.refresh().await.unwrap();
    let state = plain.state().unwrap();
    let err = state.view::<bad_type::item::Owned>().err().unwrap();
    assert!(
        matches!(err, Error::Schema(ref e) if e.field.as_deref() == Some("count")),
        "{err}"
    );
    // Twice, from the cached verdict.
    assert!(state.view::<bad_type::item::Owned>().is_err());
    assert_eq!(read_v2(&state), one);
    assert_eq!(read_v1(&state), v1_view(&one));
}

// ---- golden blobs of each version, read by the other ----

const GOLDEN_DATASET: (u64, u64) = (0x601d_e4f1_1e5b_0002, 0x0000_0000_0000_0077);

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/evolve")
}

fn golden_items_v1() -> Items {
    (0..6).map(|id| (id, item(id, 0))).collect()
}

fn golden_items_v2() -> Items {
    let mut items = golden_items_v1();
    items.get_mut(&1).unwrap().rating = 0.5;
    items.get_mut(&2).unwrap().note = "noted".into();
    items.get_mut(&3).unwrap().detail = Some(("golden".into(), 3));
    items.get_mut(&4).unwrap().kind = 2;
    items
}

/// Writes the golden snapshot of `version` ("v1" or "v2") into a fresh
/// store and returns its bytes.
async fn write_golden(dir: &Path, version: &str) -> Vec<u8> {
    let store = BlobStore::local(dir).unwrap();
    let b = ProducerBuilder::new(store.clone())
        .producer_id(format!("golden-{version}"))
        .dataset_id(DatasetId::from_parts(GOLDEN_DATASET.0, GOLDEN_DATASET.1).unwrap())
        .clock(Arc::new(ManualClock::new()))
        .compression(Compression::None);
    if version == "v1" {
        let p = b.primary_key::<v1::item::Owned>(&["id"]).build().unwrap();
        publish_v1(&p, &golden_items_v1()).await.unwrap();
    } else {
        let p = b.primary_key::<v2::item::Owned>(&["id"]).build().unwrap();
        publish_v2(&p, &golden_items_v2(), &BTreeMap::new())
            .await
            .unwrap();
    }
    std::fs::read(dir.join(burrow::blobstore::BlobName::Snapshot(1).to_string())).unwrap()
}

fn golden_state(version: &str) -> ReadState {
    let path = golden_dir().join(format!("{version}-snapshot-1.blob"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; the golden files are committed", path.display()));
    let blob = OpenBlob::from_bytes(&bytes, &format!("{version}-snapshot-1")).unwrap();
    blob.check_contents().unwrap();
    ReadState::from_snapshot(Arc::new(blob), 1).unwrap()
}

/// Invariant: a snapshot written with the older schema reads with the
/// newer code (new fields at their defaults) and one written with the
/// newer reads with the older (new fields invisible, the new enumerant
/// by its number), and the writer still writes both byte for byte.
#[tokio::test]
async fn golden_blobs_of_each_version_read_with_the_other() {
    let old = golden_state("v1");
    assert_eq!(read_v2(&old), golden_items_v1());
    assert_eq!(read_v1(&old), v1_view(&golden_items_v1()));
    let new = golden_state("v2");
    assert_eq!(read_v1(&new), v1_view(&golden_items_v2()));
    assert_eq!(read_v2(&new), golden_items_v2());
    for version in ["v1", "v2"] {
        let dir = tempfile::tempdir().unwrap();
        let written = write_golden(dir.path(), version).await;
        let golden =
            std::fs::read(golden_dir().join(format!("{version}-snapshot-1.blob"))).unwrap();
        assert!(
            written == golden,
            "{version}: this build writes other bytes than tests/data/evolve holds"
        );
    }
}

/// Writes the golden files (run on purpose, with `--ignored`, only when
/// the evolution schemas change).
#[tokio::test]
#[ignore]
async fn write_evolve_golden_files() {
    std::fs::create_dir_all(golden_dir()).unwrap();
    for version in ["v1", "v2"] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = write_golden(dir.path(), version).await;
        std::fs::write(
            golden_dir().join(format!("{version}-snapshot-1.blob")),
            bytes,
        )
        .unwrap();
    }
}
