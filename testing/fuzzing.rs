//! The bodies of the fuzz targets in `fuzz/` (feature `fuzzing`).
//!
//! Each target is an ordinary function here, so that the same code runs
//! under libFuzzer (`cargo +nightly fuzz run <target>`) and on stable as a
//! test over the committed seed corpus (`tests/fuzz_seeds.rs`). A function
//! returns normally for any input; a panic is a finding. Besides "no panic,
//! no hang, bounded memory" each target checks an invariant of its own:
//!
//! - [`blob`]: a blob body decoded from arbitrary bytes reads every record
//!   through a view without panicking; every key lookup lands on a record
//!   with that key.
//! - [`delta`]: an arbitrary delta applied to a valid state is refused, or
//!   gives a state whose record count is the number of records it holds.
//! - [`announcement`]: a decoded entry re-encodes to an equal entry.
//! - [`cycles`]: a sequence of producer cycles leaves a delta-following
//!   consumer, a consumer loading from the nearest snapshot and a
//!   `BTreeMap` model holding the same records; at the end the store
//!   verifies clean and the follower walks back through every version and
//!   matches each one's model. Restarts register a second type (Probe) or
//!   not, so types appear and disappear along the way.

use crate::announcer::Announcement;
use crate::blobstore::{BlobName, BlobStore};
use crate::consumer::{ConsumerBuilder, ReadState};
use crate::producer::{Producer, ProducerBuilder};
use crate::schema::blob::OpenBlob;
use crate::schema::envelope::{frame, BlobKind};
use crate::schema::examples::movies_capnp::movie;
use crate::schema::examples::probe_capnp::probe;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Fuzz target `blob`. The first byte picks how the rest is used: as a
/// whole blob (envelope included, so mostly envelope checks), or as the
/// body of a snapshot, delta or reverse delta, framed with a valid
/// envelope so that the body decoder sees it.
pub fn blob(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 4 {
        0 => rest.to_vec(),
        1 => frame(BlobKind::Snapshot, 0, 2, &pad(rest)),
        2 => frame(BlobKind::Delta, BASE_VERSION, BASE_VERSION + 1, &pad(rest)),
        _ => frame(
            BlobKind::Reverse,
            BASE_VERSION,
            BASE_VERSION - 1,
            &pad(rest),
        ),
    };
    let Ok(blob) = OpenBlob::from_bytes(&bytes, "fuzz") else {
        return;
    };
    // The layout proof must refuse, not panic; the Rust reader must be
    // safe on a blob that fails it, so the reads below go on either way.
    let _ = blob.check_layout();
    let blob = Arc::new(blob);
    match blob.envelope().kind {
        BlobKind::Snapshot => {
            let version = blob.envelope().to_version;
            if let Ok(state) = ReadState::from_snapshot(blob, version) {
                read_all(&state);
                check_count(&state);
            }
        }
        BlobKind::Delta | BlobKind::Reverse => {
            if let Ok(state) = base_state() {
                let env = *blob.envelope();
                if let Ok(next) = state.apply(blob.clone(), env.from_version, env.to_version) {
                    read_all(&next);
                    check_count(&next);
                }
            }
            let _ = blob.delta();
        }
        BlobKind::Announcement => {}
    }
}

/// Fuzz target `delta`: `data` is the body of a delta from version 2 to 3,
/// applied to a valid state at version 2 (ten movies, one hole).
pub fn delta(data: &[u8]) {
    let Ok(state) = base_state() else {
        panic!("the base state builds");
    };
    let (from, to) = (BASE_VERSION, BASE_VERSION + 1);
    let bytes = frame(BlobKind::Delta, from, to, &pad(data));
    let Ok(blob) = OpenBlob::from_bytes(&bytes, "fuzz-delta") else {
        return;
    };
    let _ = blob.check_layout();
    if let Ok(next) = state.apply(Arc::new(blob), from, to) {
        read_all(&next);
        check_count(&next);
    }
}

/// Fuzz target `announcement`: `data` is a whole entry (envelope
/// included) if its first byte is even, else the body of one, framed.
pub fn announcement(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let seq = u64::from(mode);
        frame(BlobKind::Announcement, 0, seq, &pad(rest))
    };
    if let Ok(entry) = Announcement::decode(&bytes, "fuzz") {
        let again = Announcement::decode(&entry.encode(), "fuzz-again")
            .expect("a decoded entry re-encodes to a valid entry");
        assert_eq!(again, entry, "re-encoding changed the entry");
    }
}

/// Fuzz target `cycles`: bytes become a sequence of producer cycles over a
/// small key space (add, change, remove, no change, restart the producer
/// from the store registering Probe or not: the op's low bit), published
/// to an in-memory store with a snapshot every `1 + data[0] % 4` cycles.
/// While Probe is registered, each add also sets a Probe record. After
/// each cycle a consumer that follows every delta, a fresh consumer
/// (nearest snapshot and deltas from there) and the model must hold the
/// same records and the same types.
pub fn cycles(data: &[u8]) {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let ops = &ops[..ops.len().min(64)];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(run_cycles(u32::from(first % 4) + 1, ops));
}

/// The model of the `cycles` target: id → (title, year).
type Model = BTreeMap<u64, (String, u32)>;

/// The Probe records (name → big); `None` when the type is not there.
type ProbeModel = Option<BTreeMap<String, i64>>;

async fn run_cycles(snapshot_every: u32, ops: &[u8]) {
    let store = BlobStore::memory();
    let dir = TempDir::new();
    let build = |probe: bool| {
        let builder = ProducerBuilder::new(store.clone())
            .producer_id("fuzz")
            .snapshot_every(snapshot_every)
            .primary_key::<movie::Owned>(&["id"]);
        let builder = if probe {
            builder.primary_key::<probe::Owned>(&["name"])
        } else {
            builder
        };
        builder.build().expect("producer builds")
    };
    let mut producer = build(false);
    // What this producer publishes of Probe, and what the last published
    // version holds.
    let mut probes: ProbeModel = None;
    let mut probe_state: ProbeModel = None;
    let follower = ConsumerBuilder::new(store.clone())
        .cache_dir(dir.path.join("follower"))
        .build()
        .expect("consumer builds");
    let mut model = Model::new();
    let mut published = false;
    let mut history: BTreeMap<u64, (Model, ProbeModel)> = BTreeMap::new();
    for (step, &op) in ops.iter().enumerate() {
        let id = u64::from(op & 0x1f);
        match op >> 5 {
            0..=2 => {
                model.insert(
                    id,
                    (format!("movie {id} at step {step}"), 1900 + u32::from(op)),
                );
                if let Some(p) = probes.as_mut() {
                    p.insert(format!("p{}", id % 4), step as i64);
                }
            }
            3 | 4 => {
                model.remove(&id);
            }
            5 => {
                // Several changes in one cycle.
                for k in 0..=id % 8 {
                    model.insert(id + k * 3, (format!("batch {step}"), u32::from(op)));
                }
            }
            6 => {}
            _ => {
                let probe = op & 1 == 1;
                producer = build(probe);
                producer.restore().await.expect("restore");
                // A producer that registers Probe starts from what the
                // state holds; one that does not drops it.
                probes = if probe {
                    probe_state.clone().or_else(|| Some(BTreeMap::new()))
                } else {
                    None
                };
                continue;
            }
        }
        let report = publish(&producer, &model, &probes).await.expect("cycle");
        published |= report.published;
        assert!(
            report.published || probes == probe_state,
            "a Probe change (or the type coming or going) publishes"
        );
        probe_state = probes.clone();
        history.insert(report.version, (model.clone(), probes.clone()));
        if !published {
            continue;
        }
        follower.refresh().await.expect("follower refresh");
        let fresh = ConsumerBuilder::new(store.clone())
            .cache_dir(dir.path.join(format!("fresh-{step}")))
            .build()
            .expect("consumer builds");
        fresh.refresh().await.expect("fresh refresh");
        let by_delta = model_of(&follower.state().expect("state"));
        let by_snapshot = model_of(&fresh.state().expect("state"));
        assert_eq!(by_delta, model, "delta follower at step {step}");
        assert_eq!(by_snapshot, model, "snapshot consumer at step {step}");
        let state = follower.state().expect("state");
        assert_eq!(probes_of(&state), probes, "follower's Probe at {step}");
        let state = fresh.state().expect("state");
        assert_eq!(probes_of(&state), probes, "fresh Probe at {step}");
        assert_eq!(follower.version(), fresh.version());
    }
    // Whatever the sequence, the store verifies clean.
    let report = crate::verify::verify_store(&store).await.expect("verify");
    assert!(report.is_clean(), "verify: {:?}", report.problems);
    // The follower walks back through every version it saw (reverse
    // deltas, or a snapshot when cheaper) and holds each one's model.
    for (version, expected) in history.iter().rev() {
        follower.refresh_to(*version).await.expect("refresh back");
        let state = follower.state().expect("state");
        assert_eq!(&model_of(&state), &expected.0, "moved back to {version}");
        assert_eq!(
            probes_of(&state),
            expected.1,
            "Probe moved back to {version}"
        );
    }
}

async fn publish(
    producer: &Producer,
    model: &Model,
    probes: &ProbeModel,
) -> crate::Result<crate::producer::CycleReport> {
    producer
        .run_cycle(|p| {
            for (id, (title, year)) in model {
                p.add::<movie::Owned>(|mut m| {
                    m.set_id(*id);
                    m.set_title(title.as_str());
                    m.set_year(*year);
                    Ok(())
                })?;
            }
            for (name, big) in probes.iter().flatten() {
                p.add::<probe::Owned>(|mut r| {
                    r.set_name(name.as_str());
                    r.set_big(*big);
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
}

/// The Probe records of a state, each found by its key; `None` when the
/// state has no Probe type.
fn probes_of(state: &ReadState) -> ProbeModel {
    let view = match state.view::<probe::Owned>() {
        Ok(view) => view,
        Err(crate::Error::Consumer(crate::consumer::ConsumerError::UnknownType { .. })) => {
            return None
        }
        Err(e) => panic!("Probe view: {e}"),
    };
    let mut out = BTreeMap::new();
    for (ordinal, r) in view.iter() {
        let name = r.get_name().expect("name").to_string().expect("utf-8");
        let (found, _) = view
            .find(name.as_str())
            .expect("find works")
            .expect("every name is found by key");
        assert_eq!(found, ordinal, "key lookup lands on the record's ordinal");
        out.insert(name, r.get_big());
    }
    assert_eq!(view.len() as usize, out.len(), "record count");
    Some(out)
}

fn model_of(state: &ReadState) -> Model {
    let view = state.view::<movie::Owned>().expect("Movie view");
    let mut out = Model::new();
    for (ordinal, m) in view.iter() {
        let title = m.get_title().expect("title").to_string().expect("utf-8");
        out.insert(m.get_id(), (title, m.get_year()));
        let (found, _) = view
            .find(&m.get_id())
            .expect("find works")
            .expect("every id is found by key");
        assert_eq!(found, ordinal, "key lookup lands on the record's ordinal");
    }
    assert_eq!(view.len() as usize, out.len(), "record count");
    out
}

/// Reads every record of every type through the Movie view (a type of
/// another id is skipped) and looks each id up by key.
fn read_all(state: &ReadState) {
    let Ok(view) = state.view::<movie::Owned>() else {
        return;
    };
    for (ordinal, m) in view.iter().take(1 << 16) {
        let _ = m.get_title().map(|t| t.to_str().map(str::len));
        if let Ok(tags) = m.get_tags() {
            for t in tags.iter().take(1 << 10) {
                let _ = t.map(|t| t.to_str().map(str::len));
            }
        }
        let id = m.get_id();
        if let Ok(Some((found, r))) = view.find(&id) {
            // A lookup may land on another ordinal only if that one holds
            // the same key (a corrupt blob may hold duplicates).
            if found != ordinal {
                let got = r.get_id();
                assert_eq!(got, id, "find({id}) gave id {got}");
            }
        }
    }
    let _ = view.find(&u64::MAX);
}

/// A state built by a delta holds exactly as many records as it says,
/// and every record reads back as a canonical message (garbage on a blob
/// whose layout is not proven, but never a panic).
fn check_count(state: &ReadState) {
    let mut words = Vec::new();
    for t in state.types() {
        let mut present = 0u32;
        let mut readable = true;
        for o in 0..t.ordinal_limit() {
            words.clear();
            match t.canonical_record(o, &mut words) {
                Ok(true) => present += 1,
                Ok(false) => {}
                Err(_) => readable = false,
            }
        }
        if readable {
            assert_eq!(
                present,
                t.record_count(),
                "{}: the state says {} records and holds {present}",
                t.name(),
                t.record_count()
            );
        }
    }
}

/// The dataset of [`base_state`] and of its seed blobs.
pub const BASE_DATASET: crate::schema::DatasetId =
    match crate::schema::DatasetId::from_u128(0xf022_ba5e_0000_0000_0000_0000_0000_0002) {
        Some(id) => id,
        None => panic!("not zero"),
    };

/// The version of [`base_state`].
pub const BASE_VERSION: u64 = 2;

/// The state the `delta` target applies to: version 2 of a producer that
/// published movies 0..11 and then removed movie 4, so ordinal 4 is a hole.
pub fn base_state() -> Result<&'static ReadState, String> {
    static STATE: OnceLock<Result<ReadState, String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let bytes = base_snapshot();
            let blob = OpenBlob::from_bytes(&bytes, "base").map_err(|e| e.to_string())?;
            ReadState::from_snapshot(Arc::new(blob), BASE_VERSION).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The snapshot of [`base_state`], as a whole blob.
pub fn base_snapshot() -> Vec<u8> {
    base_blobs().0
}

/// Blobs of [`base_state`]'s producer, as seed material: the snapshot of
/// version 2, the delta 2 → 3 and the reverse delta 2 → 1.
pub fn base_blobs() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = BlobStore::memory();
        let producer = ProducerBuilder::new(store.clone())
            .producer_id("fuzz-base")
            // A fixed id: the committed delta seeds must belong to the
            // dataset of the base state every run builds.
            .dataset_id(BASE_DATASET)
            .primary_key::<movie::Owned>(&["id"])
            .build()
            .expect("producer builds");
        let mut model: Model = (0..11).map(|i| (i, (format!("base {i}"), 2000))).collect();
        let v1 = publish(&producer, &model, &None)
            .await
            .expect("cycle")
            .version;
        model.remove(&4);
        let v2 = publish(&producer, &model, &None)
            .await
            .expect("cycle")
            .version;
        model.insert(1, ("changed".into(), 1999));
        model.insert(20, ("added".into(), 2001));
        model.remove(&7);
        let v3 = publish(&producer, &model, &None)
            .await
            .expect("cycle")
            .version;
        assert_eq!((v1, v2, v3), (1, BASE_VERSION, BASE_VERSION + 1));
        let get = |name| {
            let store = store.clone();
            async move { store.get_blob(&name).await.expect("blob").to_vec() }
        };
        (
            get(BlobName::Snapshot(v2)).await,
            get(BlobName::Delta(v2, v3)).await,
            get(BlobName::Reverse(v2, v1)).await,
        )
    })
}

/// A body is a whole number of words.
fn pad(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.resize(body.len().div_ceil(8) * 8, 0);
    out
}

/// A directory under the system temp dir, removed on drop (the library
/// does not depend on `tempfile`).
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "burrow-fuzz-{}",
            crate::blobstore::cache::unique_suffix()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
