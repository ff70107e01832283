//! Types appearing and disappearing: a producer that stops registering a
//! type drops it for every consumer, by delta or by snapshot, and the
//! reverse delta brings it back whole.

use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerError;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::schema::examples::probe_capnp::probe;
use burrow::Error;

/// A producer of Movie and Probe (Probe keyed by a text and an integer
/// field, so that its key is not a plain integer).
fn both(store: &BlobStore, id: &str, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id(id)
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .primary_key::<probe::Owned>(&["name", "small"])
        .build()
        .unwrap()
}

fn movies_only(store: &BlobStore, id: &str, snapshot_every: u32) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id(id)
        .snapshot_every(snapshot_every)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

/// Publishes `model` and, when `probes` is given, that many Probe records.
async fn publish_with(
    producer: &Producer,
    model: &Model,
    probes: Option<u32>,
) -> burrow::Result<burrow::producer::CycleReport> {
    publish_probes(producer, model, 0..probes.unwrap_or(0)).await
}

/// Publishes `model` and Probe records `probe-<i>` for each `i`.
async fn publish_probes(
    producer: &Producer,
    model: &Model,
    probes: impl IntoIterator<Item = u32>,
) -> burrow::Result<burrow::producer::CycleReport> {
    let probes: Vec<u32> = probes.into_iter().collect();
    producer
        .run_cycle(|p| {
            for (id, (title, year, _)) in model {
                p.add::<movie::Owned>(|mut m| {
                    m.set_id(*id);
                    m.set_title(title.as_str());
                    m.set_year(*year);
                    Ok(())
                })?;
            }
            for &i in &probes {
                p.add::<probe::Owned>(|mut r| {
                    r.set_name(format!("probe-{i}").as_str());
                    r.set_small(i as i16);
                    r.set_big(i64::from(i) * 1000);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
}

fn type_names(state: &burrow::consumer::ReadState) -> Vec<String> {
    let mut names: Vec<String> = state.types().iter().map(|t| t.name().to_string()).collect();
    names.sort();
    names
}

fn assert_no_probe(state: &burrow::consumer::ReadState, who: &str) {
    match state.view::<probe::Owned>() {
        Err(Error::Consumer(ConsumerError::UnknownType { .. })) => {}
        Err(e) => panic!("{who}: expected UnknownType, got {e}"),
        Ok(v) => panic!(
            "{who}: the dropped type is still there with {} records",
            v.len()
        ),
    }
    assert_eq!(type_names(state).len(), 1, "{who}: {:?}", type_names(state));
}

/// Probe records `0..count` are in the state, each found by its key.
fn assert_probes(state: &burrow::consumer::ReadState, count: u32, who: &str) {
    assert_probe_set(state, 0..count, who)
}

/// Exactly the Probe records `ids` are in the state, each found by its key.
fn assert_probe_set(
    state: &burrow::consumer::ReadState,
    ids: impl IntoIterator<Item = u32>,
    who: &str,
) {
    let ids: Vec<u32> = ids.into_iter().collect();
    let view = state.view::<probe::Owned>().unwrap();
    assert_eq!(view.len() as usize, ids.len(), "{who}");
    for i in ids {
        let name = format!("probe-{i}");
        let (_, r) = view
            .find(&(name.as_str(), i as i16))
            .unwrap()
            .unwrap_or_else(|| panic!("{who}: {name} not found by key"));
        assert_eq!(r.get_big(), i64::from(i) * 1000, "{who}");
    }
}

// Invariant: a type the producer no longer registers leaves delta
// followers as it leaves snapshot consumers, and a reverse delta brings it
// back with its records.
#[tokio::test]
async fn dropped_type_leaves_delta_consumers_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let model: Model = (0..20).map(|i| (i, movie_value(i, 0))).collect();
    let a = both(&store, "a", 100);
    publish_with(&a, &model, Some(70)).await.unwrap();
    // Holes in the middle and at the end of Probe's ordinal space: the
    // reverse delta must re-create them as holes.
    let kept = || (0..10).chain(20..60);
    let v1 = publish_probes(&a, &model, kept()).await.unwrap().version;
    let follower = consumer(&store, &dir.path().join("follower"));
    follower.refresh().await.unwrap();
    assert_probe_set(&follower.state().unwrap(), kept(), "follower at v1");
    drop(a);

    // B registers only Movie; its cycle changes nothing in Movie, so its
    // only change is the dropped type: still a new version.
    let b = movies_only(&store, "b", 100);
    assert_eq!(b.restore().await.unwrap(), Some(v1));
    let report = publish_with(&b, &model, None).await.unwrap();
    assert!(report.published, "dropping a type is a change");
    let v2 = report.version;
    assert!(v2 > v1);
    let refreshed = follower.refresh().await.unwrap().expect("moves to v2");
    assert!(
        refreshed
            .steps
            .iter()
            .all(|s| matches!(s, burrow::consumer::Step::Delta(..))),
        "followed by delta: {:?}",
        refreshed.steps
    );
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    for (who, c) in [("delta follower", &follower), ("snapshot consumer", &fresh)] {
        let state = c.state().unwrap();
        assert_eq!(state.version(), v2, "{who}");
        assert_no_probe(&state, who);
        assert_eq!(state_model(&state), snapshot_of(&fresh), "{who}");
    }

    // Back to v1 by the reverse delta: Probe is back, whole, found by key.
    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    log.pin(v1, "operator").await.unwrap();
    let back = follower.refresh().await.unwrap().expect("moves to the pin");
    assert!(
        back.steps
            .iter()
            .all(|s| matches!(s, burrow::consumer::Step::Reverse(..))),
        "walked back by the reverse delta: {:?}",
        back.steps
    );
    let state = follower.state().unwrap();
    assert_eq!(state.version(), v1);
    assert_eq!(type_names(&state).len(), 2);
    assert_probe_set(&state, kept(), "follower pinned back to v1");
    let probe_limit = state.view::<probe::Owned>().unwrap().ordinal_limit();
    assert_eq!(
        probe_limit, 70,
        "the ordinal space, holes included, is back"
    );
    log.unpin("operator").await.unwrap();
    follower.refresh().await.unwrap();
    assert_no_probe(&follower.state().unwrap(), "follower unpinned");
}

// Invariant: a type that appears is created by the delta (even with no
// records), and its reverse delta drops it again.
#[tokio::test]
async fn appearing_type_is_created_by_delta_and_dropped_by_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let model: Model = (0..5).map(|i| (i, movie_value(i, 0))).collect();
    let a = movies_only(&store, "a", 100);
    let v1 = publish_with(&a, &model, None).await.unwrap().version;
    let follower = consumer(&store, &dir.path().join("follower"));
    follower.refresh().await.unwrap();
    drop(a);

    // B registers Probe too but adds none: the type exists, empty.
    let b = both(&store, "b", 100);
    b.restore().await.unwrap();
    let report = publish_with(&b, &model, Some(0)).await.unwrap();
    assert!(report.published, "a new type is a change");
    let v2 = report.version;
    follower.refresh().await.unwrap();
    let fresh = consumer(&store, &dir.path().join("fresh"));
    fresh.refresh().await.unwrap();
    for (who, c) in [("delta follower", &follower), ("snapshot consumer", &fresh)] {
        let state = c.state().unwrap();
        assert_eq!(state.version(), v2, "{who}");
        assert_eq!(type_names(&state).len(), 2, "{who}");
        assert_probes(&state, 0, who);
    }
    let v3 = publish_with(&b, &model, Some(3)).await.unwrap().version;
    follower.refresh().await.unwrap();
    assert_probes(&follower.state().unwrap(), 3, "follower at v3");
    assert!(v3 > v2);

    let log = burrow::announcer::AnnouncementLog::new(store.clone());
    log.pin(v1, "operator").await.unwrap();
    follower.refresh().await.unwrap();
    let state = follower.state().unwrap();
    assert_eq!(state.version(), v1);
    assert_no_probe(&state, "follower pinned back before the type appeared");
}

/// The dataset of the hand-made blobs (high and low halves of its id).
const HOSTILE_DATASET: (u64, u64) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);

/// A delta 1 -> 2 by hand: one entry per `(dropped, sets ordinal 0)` for
/// the Movie type.
fn hand_delta(entries: &[(bool, bool)]) -> Vec<u8> {
    hand_delta_holes(entries, 0)
}

/// As [`hand_delta`], with `holes` free ordinals past the records set.
/// Entries the library's writer would refuse (a drop that also sets a
/// record) are written as a bare skeleton with Cap'n Proto's builder; the
/// reader refuses them before it looks for their records.
fn hand_delta_holes(entries: &[(bool, bool)], holes: u32) -> Vec<u8> {
    use burrow::schema::blob::{write_delta, DatasetSchema, DeltaTypeSource, HeaderInfo};
    use burrow::schema::burrow_capnp::delta;
    let info = burrow::schema::record::TypeInfo::of::<movie::Owned>();
    let dataset =
        burrow::schema::DatasetId::from_parts(HOSTILE_DATASET.0, HOSTILE_DATASET.1).unwrap();
    if entries.iter().any(|&(dropped, sets)| dropped && sets) {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut root = message.init_root::<delta::Builder>();
            let mut h = root.reborrow().init_header();
            h.set_from_version(1);
            h.set_to_version(2);
            h.set_producer_id("hostile");
            h.set_dataset_id_hi(HOSTILE_DATASET.0);
            h.set_dataset_id_lo(HOSTILE_DATASET.1);
            let mut types = root.init_types(entries.len() as u32);
            for (i, &(dropped, sets)) in entries.iter().enumerate() {
                let mut t = types.reborrow().get(i as u32);
                t.set_type_id(info.type_id);
                t.set_name(info.name.as_str());
                t.reborrow().init_key_fields(1).set(0, "id");
                t.set_dropped(dropped);
                let n = u32::from(sets);
                t.reborrow().init_ordinals(n);
                t.reborrow().init_key_hashes(n);
                t.set_record_count_after(n);
                t.set_ordinal_limit_after(n + holes);
            }
        }
        return burrow::schema::envelope::frame(
            burrow::schema::envelope::BlobKind::Delta,
            1,
            2,
            &capnp::serialize::write_message_to_words(&message),
        );
    }
    let record = movie_record(0);
    let set = [(0u32, record.as_slice(), 7u64)];
    let key_fields = vec!["id".to_string()];
    let sources: Vec<DeltaTypeSource<'_>> = entries
        .iter()
        .enumerate()
        .map(|(i, &(dropped, sets))| DeltaTypeSource {
            type_id: info.type_id,
            name: &info.name,
            key_fields: &key_fields,
            removed: &[],
            set: if sets { &set } else { &[] },
            record_count_after: u32::from(sets),
            ordinal_limit_after: if dropped { 0 } else { u32::from(sets) + holes },
            dropped,
            slot: i as u16,
        })
        .collect();
    let schema = DatasetSchema::default();
    let head = HeaderInfo {
        dataset_id: dataset,
        from_version: 1,
        to_version: 2,
        producer_id: "hostile",
        cycle_start_micros: 0,
        schema: &schema,
        tags: &[],
        type_checksums: &[],
        max_list_shift: burrow::schema::blob::MAX_LIST_SHIFT,
    };
    write_delta(burrow::schema::envelope::BlobKind::Delta, &head, &sources).unwrap()
}

/// The canonical message of movie `id` (as a producer keeps it).
fn movie_record(id: u64) -> Vec<u64> {
    let mut message = capnp::message::Builder::new_default();
    let mut m = message.init_root::<movie::Builder>();
    m.set_id(id);
    m.set_title("hand-made");
    let mut out = Vec::new();
    burrow::schema::record::append_canonical(
        message.get_root_as_reader().unwrap(),
        None,
        &mut Vec::new(),
        &mut out,
    )
    .unwrap();
    out
}

// Invariant: a delta that drops a type the state does not hold, drops and
// changes the same type, or names a type twice is a corrupt blob named in
// the error, never a panic or a silently wrong state.
#[test]
fn hostile_type_drops_are_named_errors() {
    use burrow::schema::blob::{write_snapshot, DatasetSchema, HeaderInfo, OpenBlob};
    use std::sync::Arc;
    let schema = DatasetSchema::default();
    let head = HeaderInfo {
        dataset_id: burrow::schema::DatasetId::from_parts(HOSTILE_DATASET.0, HOSTILE_DATASET.1)
            .unwrap(),
        from_version: 0,
        to_version: 1,
        producer_id: "hostile",
        cycle_start_micros: 0,
        schema: &schema,
        tags: &[],
        type_checksums: &[],
        max_list_shift: burrow::schema::blob::MAX_LIST_SHIFT,
    };
    let snapshot = write_snapshot(&head, &[]).unwrap();
    let state = burrow::consumer::ReadState::from_snapshot(
        Arc::new(OpenBlob::from_bytes(&snapshot, "snapshot/1").unwrap()),
        1,
    )
    .unwrap();
    let apply = |bytes: Vec<u8>| {
        let blob = Arc::new(OpenBlob::from_bytes(&bytes, "delta/1-2").unwrap());
        state.apply(blob, 1, 2).map(|_| ()).unwrap_err().to_string()
    };
    let err = apply(hand_delta(&[(true, false)]));
    assert!(
        err.contains("delta/1-2") && err.contains("does not hold"),
        "{err}"
    );
    let err = apply(hand_delta(&[(true, true)]));
    assert!(
        err.contains("delta/1-2") && err.contains("drops the type and also changes"),
        "{err}"
    );
    let err = apply(hand_delta(&[(false, true), (true, false)]));
    assert!(
        err.contains("delta/1-2") && err.contains("appears twice"),
        "{err}"
    );
    // A created type may bring back its holes, within a bound.
    let err = apply(hand_delta_holes(&[(false, false)], u32::MAX));
    assert!(
        err.contains("delta/1-2") && err.contains("ordinal limit grows"),
        "{err}"
    );
    let blob = Arc::new(
        OpenBlob::from_bytes(&hand_delta_holes(&[(false, true)], 1000), "delta/1-2").unwrap(),
    );
    let next = state.apply(blob, 1, 2).unwrap();
    assert_eq!(next.types()[0].ordinal_limit(), 1001);
    // The well-formed creation applies.
    let blob = Arc::new(OpenBlob::from_bytes(&hand_delta(&[(false, false)]), "delta/1-2").unwrap());
    let next = state.apply(blob, 1, 2).unwrap();
    assert_eq!(next.types().len(), 1);
}

// Invariant: a store whose chain drops a type and creates it again verifies
// clean: at every version the delta chain, the snapshot and the reverse
// delta agree on which types there are and what they hold.
#[tokio::test]
async fn a_chain_across_a_dropped_type_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("store")).unwrap();
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    // Every version has a snapshot and a delta, so verify compares them.
    let a = both(&store, "a", 1);
    publish_with(&a, &model, Some(12)).await.unwrap();
    drop(a);
    let b = movies_only(&store, "b", 1);
    b.restore().await.unwrap();
    assert!(publish_with(&b, &model, None).await.unwrap().published);
    drop(b);
    let c = both(&store, "c", 1);
    c.restore().await.unwrap();
    assert!(publish_with(&c, &model, Some(0)).await.unwrap().published);
    assert!(publish_with(&c, &model, Some(4)).await.unwrap().published);
    let report = burrow::verify::verify_store(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.versions_reachable, 4, "{report:?}");
    // 4 snapshots, 3 deltas, 3 reverse deltas.
    assert_eq!(report.blobs_checked, 10, "{report:?}");
}
