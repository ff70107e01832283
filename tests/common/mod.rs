//! Shared helpers: the Movie workload and a model of what consumers should hold.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod mangle;
#[cfg(any(feature = "redis", feature = "nats"))]
pub mod servers;
pub mod tools;

use burrow::blobstore::BlobStore;
use burrow::consumer::{Consumer, ConsumerBuilder};
use burrow::producer::{Incremental, Populate, Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::workload::Movie;
use std::collections::BTreeMap;
use std::path::Path;

/// The model: id → (title, year, tags).
pub type Model = BTreeMap<u64, (String, u32, Vec<String>)>;

/// Record `i` at `generation`, as the workload generator defines it.
pub fn movie_value(i: u64, generation: u64) -> (String, u32, Vec<String>) {
    let m = Movie::new(i, generation);
    (m.title, m.year, m.tags)
}

/// A producer of the Movie workload. It stores raw blobs
/// (`Compression::None`): the tests that mangle or read a store's bytes
/// work on the blob format itself; tests/compression.rs covers zstd.
/// Its background retention is off: tests that count or fail a store's
/// requests see the cycle's alone (tests/gc_retention.rs covers it).
pub fn producer(store: &BlobStore, id: &str) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id(id)
        .retention(None)
        .compression(burrow::blobstore::Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .expect("producer builds")
}

pub fn consumer(store: &BlobStore, cache: &Path) -> Consumer {
    ConsumerBuilder::new(store.clone())
        .cache_dir(cache)
        .build()
        .expect("consumer builds")
}

/// Adds every record of `model` to the cycle being populated.
pub fn add_model(p: &mut Populate<'_>, model: &Model) -> burrow::Result<()> {
    for (id, (title, year, tags)) in model {
        p.add::<movie::Owned>(|mut m| {
            m.set_id(*id);
            m.set_title(title.as_str());
            m.set_year(*year);
            let mut t = m.init_tags(tags.len() as u32);
            for (i, tag) in tags.iter().enumerate() {
                t.set(i as u32, tag.as_str());
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Publishes the model as one cycle.
pub async fn publish(
    producer: &Producer,
    model: &Model,
) -> burrow::Result<burrow::producer::CycleReport> {
    producer.run_cycle(|p| add_model(p, model)).await
}

/// Upserts one Movie of a model into an incremental cycle.
pub fn upsert_movie(
    inc: &mut Incremental<'_>,
    id: u64,
    (title, year, tags): &(String, u32, Vec<String>),
) -> burrow::Result<()> {
    inc.upsert::<movie::Owned>(|mut m| {
        m.set_id(id);
        m.set_title(title.as_str());
        m.set_year(*year);
        let mut t = m.init_tags(tags.len() as u32);
        for (i, tag) in tags.iter().enumerate() {
            t.set(i as u32, tag.as_str());
        }
        Ok(())
    })
}

/// Adds to an incremental cycle the changes from `from` to `to`: an
/// upsert of each record new or changed, a delete of each one gone.
pub fn add_changes(inc: &mut Incremental<'_>, from: &Model, to: &Model) -> burrow::Result<()> {
    for (id, value) in to {
        if from.get(id) != Some(value) {
            upsert_movie(inc, *id, value)?;
        }
    }
    for id in from.keys().filter(|id| !to.contains_key(id)) {
        inc.delete::<movie::Owned, _>(id)?;
    }
    Ok(())
}

/// Publishes the change from `from` to `to` as one incremental cycle.
pub async fn publish_incremental(
    producer: &Producer,
    from: &Model,
    to: &Model,
) -> burrow::Result<burrow::producer::CycleReport> {
    producer
        .run_incremental_cycle(|inc| add_changes(inc, from, to))
        .await
}

/// Reads every record of a consumer's state into a model, checking that
/// every record is also found by key at the same ordinal.
pub fn snapshot_of(consumer: &Consumer) -> Model {
    state_model(&consumer.state().expect("consumer has a state"))
}

pub fn state_model(state: &burrow::consumer::ReadState) -> Model {
    let view = state.view::<movie::Owned>().expect("Movie view");
    let mut out = Model::new();
    for (ordinal, m) in view.iter() {
        let id = m.get_id();
        let tags = m
            .get_tags()
            .unwrap()
            .iter()
            .map(|t| t.unwrap().to_string().unwrap())
            .collect();
        out.insert(
            id,
            (
                m.get_title().unwrap().to_string().unwrap(),
                m.get_year(),
                tags,
            ),
        );
        let (found, _) = view
            .find(&id)
            .expect("find works")
            .expect("every id is found by key");
        assert_eq!(found, ordinal, "key lookup of id {id} lands on its ordinal");
    }
    assert_eq!(
        view.len() as usize,
        out.len(),
        "record count matches iteration"
    );
    out
}

/// Every file of a consumer's cache directory but its lock, as paths
/// relative to it: the blobs sit in one directory per dataset
/// (`<dataset id>/<blob file>`).
pub fn cache_files_in(cache: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(cache).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.file_type().unwrap().is_dir() {
            for inner in std::fs::read_dir(entry.path()).unwrap() {
                let inner = inner.unwrap().file_name().to_string_lossy().to_string();
                files.push(format!("{name}/{inner}"));
            }
        } else if name != burrow::blobstore::cache::LOCK_FILE {
            files.push(name);
        }
    }
    files.sort();
    files
}

/// Where a consumer's cache keeps blob `name` of the one dataset it has
/// cached (`<cache>/<dataset id>/<blob file>`).
pub fn cached_blob(cache: &Path, name: &burrow::blobstore::BlobName) -> std::path::PathBuf {
    let datasets: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.path())
        .collect();
    assert_eq!(
        datasets.len(),
        1,
        "one dataset in {}: {datasets:?}",
        cache.display()
    );
    datasets[0].join(name.cache_file_name())
}

/// A local store at `<dir>/store` seen two ways: through a
/// [`FaultyStore`] that fails the calls a test chooses, and directly (a
/// clean view of the same files, for consumers and checks).
pub struct FaultyLocal {
    /// The fault injector.
    pub faults: std::sync::Arc<burrow::testing::faults::FaultyStore>,
    /// The store through the faults.
    pub faulty: BlobStore,
    /// The same files without faults.
    pub clean: BlobStore,
}

pub fn faulty_local(dir: &Path) -> FaultyLocal {
    let root = dir.join("store");
    std::fs::create_dir_all(&root).unwrap();
    let local =
        std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root).unwrap());
    let faults = std::sync::Arc::new(burrow::testing::faults::FaultyStore::new(local.clone()));
    FaultyLocal {
        faulty: BlobStore::new(faults.clone(), ""),
        clean: BlobStore::new(local, ""),
        faults,
    }
}
