//! Invariant: the schema `burrow schema --capnp` prints lets the reference
//! Cap'n Proto tool (`capnp decode`) print every record of a snapshot or a
//! delta body, from a consumer's cache (the raw blob minus its 64-byte
//! envelope) or from the store (the zstd frame decompressed, then the
//! envelope cut), and lays every record struct out exactly as the
//! producer's compiler did. Needs Debian's `capnproto` (provided by
//! `tools::require_capnp`; a failure naming it when it cannot be had).

use crate::common::*;
use burrow::blobstore::compress::ZSTD_MAGIC;
use burrow::blobstore::{BlobName, BlobStore, Compression};
use burrow::producer::{Populate, Producer, ProducerBuilder};
use burrow::schema::blob::OpenBlob;
use burrow::schema::capnp_text::{blob_schema, CapnpTextError};
use burrow::schema::envelope::ENVELOPE_LEN;
use burrow::schema::examples::library_capnp::{shelf, Genre};
use burrow::schema::examples::movies_capnp::movie;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

fn require_capnp() {
    if let Err(missing) = crate::common::tools::require_capnp() {
        panic!("{missing}");
    }
}

/// `capnp decode --short` of `body` (a blob without its envelope) with
/// root `root` of `schema`: one line per message.
fn decode(schema: &Path, root: &str, body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("body");
    std::fs::write(&input, body).unwrap();
    let out = Command::new("capnp")
        .args(["decode", "--short", "-I", "/usr/include"])
        .arg(schema)
        .arg(root)
        .stdin(std::fs::File::open(&input).unwrap())
        .stderr(Stdio::piped())
        .output()
        .expect("capnp runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("ERROR"),
        "capnp decode {root} failed: {stderr}"
    );
    text
}

/// `capnp compile -ocapnp` of `schema`: the schema as the compiler laid
/// it out (offsets in comments).
fn compiled(schema: &Path) -> String {
    let out = Command::new("capnp")
        .args(["compile", "-ocapnp", "-I", "/usr/include"])
        .arg(schema)
        .output()
        .expect("capnp runs");
    assert!(
        out.status.success(),
        "capnp compile {} failed: {}",
        schema.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The top-level declaration starting with `start` in `-ocapnp` output,
/// through its closing brace.
fn declaration<'a>(text: &'a str, start: &str) -> &'a str {
    let at = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in:\n{text}"));
    let end = text[at..].find("\n}").expect("closing brace") + at + 2;
    &text[at..end]
}

/// Movie `i` at `generation` as `capnp decode --short` prints it.
fn movie_text(i: u64, generation: u64) -> String {
    let (title, year, tags) = movie_value(i, generation);
    let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "(id = {i}, title = {title:?}, year = {year}, tags = [{}])",
        tags.join(", ")
    )
}

/// A body as a consumer's cache holds it: the raw blob minus the envelope.
fn cache_body(cache: &Path, name: &BlobName) -> Vec<u8> {
    let raw = std::fs::read(cached_blob(cache, name)).unwrap();
    raw[ENVELOPE_LEN..].to_vec()
}

/// A body as the store holds it: one zstd frame around the whole raw blob.
fn store_body(store: &Path, name: &BlobName) -> Vec<u8> {
    let stored = std::fs::read(store.join(name.to_string())).unwrap();
    assert_eq!(stored[..4], ZSTD_MAGIC, "{name} is stored compressed");
    let raw = zstd::stream::decode_all(&stored[..]).unwrap();
    raw[ENVELOPE_LEN..].to_vec()
}

#[cfg(feature = "cli")]
mod workload {
    use super::*;
    use crate::common::cli::{assert_refused, burrow, text};

    fn zstd_producer(store: &BlobStore) -> Producer {
        ProducerBuilder::new(store.clone())
            .producer_id("p")
            .compression(Compression::Zstd { level: 3 })
            // Lists of 8 records: each type's records span several lists.
            .max_list_shift(3)
            .primary_key::<movie::Owned>(&["id"])
            .build()
            .unwrap()
    }

    /// Three versions of the anchor workload: the schema the CLI prints
    /// from the store decodes the cache's snapshot and deltas and the
    /// store's decompressed snapshot, record by record.
    #[tokio::test]
    async fn the_printed_schema_decodes_every_record_from_cache_and_store() {
        require_capnp();
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let cache = dir.path().join("cache");
        let store = BlobStore::local(&store_dir).unwrap();
        let p = zstd_producer(&store);
        let c = consumer(&store, &cache);
        let mut generations: std::collections::BTreeMap<u64, u64> =
            (0..40).map(|i| (i, 0)).collect();
        let model_of = |g: &std::collections::BTreeMap<u64, u64>| -> Model {
            g.iter()
                .map(|(&i, &gen)| (i, movie_value(i, gen)))
                .collect()
        };
        let v1 = publish(&p, &model_of(&generations)).await.unwrap().version;
        c.refresh().await.unwrap();
        generations.insert(3, 2);
        generations.insert(17, 2);
        generations.remove(&9);
        generations.insert(40, 0);
        let v2 = publish(&p, &model_of(&generations)).await.unwrap().version;
        c.refresh().await.unwrap();
        generations.insert(7, 3);
        let v3 = publish(&p, &model_of(&generations)).await.unwrap().version;
        c.refresh().await.unwrap();

        let out = burrow(&store_dir, &["schema", "--capnp"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let schema = dir.path().join("movies.capnp");
        std::fs::write(&schema, &out.stdout).unwrap();
        let printed = text(&out.stdout);
        assert!(
            printed.contains("movie @0 :List(List(Movie));"),
            "{printed}"
        );

        // The cache's snapshot of v1: every record, in ordinal order.
        let decoded = decode(
            &schema,
            "Snapshot",
            &cache_body(&cache, &BlobName::Snapshot(v1)),
        );
        let mut last = 0;
        for i in 0..40 {
            let at = decoded
                .find(&movie_text(i, 0))
                .unwrap_or_else(|| panic!("movie {i}: {decoded}"));
            assert!(at > last, "movie {i} follows movie {}", i.max(1) - 1);
            last = at;
        }
        // Lists of 8 records: a list ends after every eighth.
        assert!(
            decoded.contains(&format!("{}], [{}", movie_text(7, 0), movie_text(8, 0))),
            "{decoded}"
        );
        assert!(decoded.contains("producerId = \"p\""), "{decoded}");

        // The store's snapshot of v3, decompressed: the records of v3 only.
        let decoded = decode(
            &schema,
            "Snapshot",
            &store_body(&store_dir, &BlobName::Snapshot(v3)),
        );
        for (&i, &g) in &generations {
            assert!(decoded.contains(&movie_text(i, g)), "movie {i}: {decoded}");
        }
        assert!(!decoded.contains("title = \"Title number 9\""), "{decoded}");

        // The cache's deltas: the records they set.
        let decoded = decode(
            &schema,
            "Delta",
            &cache_body(&cache, &BlobName::Delta(v1, v2)),
        );
        for i in [3, 17] {
            assert!(decoded.contains(&movie_text(i, 2)), "movie {i}: {decoded}");
        }
        assert!(decoded.contains(&movie_text(40, 0)), "{decoded}");
        assert!(decoded.contains("removed = [9]"), "{decoded}");
        let decoded = decode(
            &schema,
            "Delta",
            &cache_body(&cache, &BlobName::Delta(v2, v3)),
        );
        assert!(decoded.contains(&movie_text(7, 3)), "{decoded}");

        // A schema printed from a cache file is the same file.
        let file = cached_blob(&cache, &BlobName::Snapshot(v1));
        let out = burrow(&store_dir, &["schema", "--capnp", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let from_file = text(&out.stdout);
        let body = |s: &str| s.split_once("\n@0x").map(|(_, rest)| rest.to_string());
        assert_eq!(body(&from_file), body(&printed));
    }

    /// A file that is no blob, and a store with nothing announced, are
    /// refused by name.
    #[test]
    fn bad_input_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a burrow blob, just some text. ".repeat(4)).unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let out = burrow(&store, &["schema", "--capnp", junk.to_str().unwrap()]);
        assert_refused(&out, "not a burrow blob");
        assert!(text(&out.stderr).contains("junk"), "{}", text(&out.stderr));
        let out = burrow(&store, &["schema", "--capnp"]);
        assert_refused(&out, "nothing has been announced");
        let out = burrow(
            &store,
            &[
                "schema",
                "--capnp",
                dir.path().join("missing").to_str().unwrap(),
            ],
        );
        assert_refused(&out, "not a file");
    }
}

/// Adds shelf `id` at `generation`: every field kind of `Shelf` set, but
/// `ratio`, `stamp` and `tilt`, which read as their defaults.
fn add_shelf(p: &mut Populate<'_>, id: u64, generation: u64) -> burrow::Result<()> {
    p.add::<shelf::Owned>(|mut s| {
        s.set_id(id);
        s.set_label(format!("shelf {id} v{generation}").as_str());
        s.set_genre(Genre::Scifi);
        {
            let mut location = s.reborrow().get_location();
            location.set_room(format!("room {}", id % 3).as_str());
            location.set_row(id as u16 * 2);
        }
        if id.is_multiple_of(2) {
            s.reborrow().get_owner().set_person("ann");
            s.set_open(());
        } else {
            s.reborrow().get_owner().set_library(id as u32);
            s.set_closed_since(1_700_000_000 + id as i64);
        }
        let mut books = s.reborrow().init_books(2);
        {
            let mut b = books.reborrow().get(0);
            b.set_title(format!("book {id}.0").as_str());
            let mut genres = b.reborrow().init_genres(2);
            genres.set(0, Genre::Poetry);
            genres.set(1, Genre::History);
            b.set_isbn(&[0x97, 0x80]);
            b.reborrow()
                .get_format()
                .set_ebook(format!("https://example.com/{id}").as_str());
            b.set_condition(shelf::book::Condition::Worn);
        }
        {
            let mut b = books.get(1);
            b.set_title("second");
            b.set_pages(7);
            b.reborrow().get_format().set_hardcover(());
        }
        let mut sizes = s.reborrow().init_sizes(2);
        let mut first = sizes.reborrow().init(0, 2);
        first.set(0, 1);
        first.set(1, 2);
        sizes.init(1, 0);
        s.set_shelved(false);
        s.reborrow().get_old().set_modern("m");
        s.reborrow().init_weights(1).set(0, 2.5);
        Ok(())
    })
}

fn shelf_producer(store: &BlobStore) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("p")
        .compression(Compression::None)
        .max_list_shift(2)
        .primary_key::<movie::Owned>(&["id"])
        .primary_key::<shelf::Owned>(&["id"])
        .build()
        .unwrap()
}

async fn publish_shelves(p: &Producer, movies: &Model, shelves: &[(u64, u64)]) -> u64 {
    p.run_cycle(|populate| {
        add_model(populate, movies)?;
        for &(id, generation) in shelves {
            add_shelf(populate, id, generation)?;
        }
        Ok(())
    })
    .await
    .unwrap()
    .version
}

fn open(store: &Path, name: &BlobName) -> Arc<OpenBlob> {
    let raw = std::fs::read(store.join(name.to_string())).unwrap();
    Arc::new(OpenBlob::from_bytes(&raw, &name.to_string()).unwrap())
}

/// A type with nested structs, enums, groups, unions, lists of structs and
/// lists, and defaults of every kind, in a dataset of two types: the
/// printed declarations compile to the very layout of
/// schema/examples/library.capnp, and the snapshot and a delta decode with
/// every value (defaults included) in place.
#[tokio::test]
async fn nested_structs_enums_groups_and_unions_keep_their_layout() {
    require_capnp();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let p = shelf_producer(&store);
    let movies: Model = (0..3).map(|i| (i, movie_value(i, 0))).collect();
    let shelves: Vec<(u64, u64)> = (0..6).map(|id| (id, 0)).collect();
    let v1 = publish_shelves(&p, &movies, &shelves).await;
    let mut changed = shelves.clone();
    changed[4].1 = 1;
    let v2 = publish_shelves(&p, &movies, &changed).await;

    let schema_text = blob_schema(&open(&store_dir, &BlobName::Snapshot(v1))).unwrap();
    let schema = dir.path().join("library.capnp");
    std::fs::write(&schema, &schema_text).unwrap();
    assert!(
        schema_text.contains("movie @0 :List(List(Movie));")
            && schema_text.contains("shelf @1 :List(List(Shelf));"),
        "{schema_text}"
    );

    let printed = compiled(&schema);
    let original =
        compiled(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples/library.capnp"));
    for start in ["struct Shelf @0x", "enum Genre @0x"] {
        assert_eq!(
            declaration(&printed, start),
            declaration(&original, start),
            "{start} is laid out as in the original"
        );
    }

    // `burrow schema` (no --capnp): the dataset's own types alone, which
    // compile to the same layout.
    let own_text =
        burrow::schema::capnp_text::dataset_schema(&open(&store_dir, &BlobName::Snapshot(v1)))
            .unwrap();
    assert!(
        own_text.contains("# Record type Shelf: primary key (id).")
            && !own_text.contains("struct Snapshot")
            && !own_text.contains("struct Records"),
        "{own_text}"
    );
    let own = dir.path().join("own.capnp");
    std::fs::write(&own, &own_text).unwrap();
    let own = compiled(&own);
    for start in ["struct Shelf @0x", "enum Genre @0x", "struct Movie @0x"] {
        assert_eq!(
            declaration(&own, start),
            declaration(&printed, start),
            "{start}: the dataset's own types as in the decoding file"
        );
    }

    let body = std::fs::read(store_dir.join(BlobName::Snapshot(v1).to_string())).unwrap();
    let decoded = decode(&schema, "Snapshot", &body[ENVELOPE_LEN..]);
    for expected in [
        "label = \"shelf 3 v0\"",
        "genre = scifi",
        "location = (room = \"room 0\", row = 6)",
        "owner = (person = \"ann\")",
        "owner = (library = 5)",
        "closedSince = 1700000005",
        "title = \"book 2.0\"",
        "genres = [poetry, history]",
        "isbn = \"\\227\\200\"",
        "format = (ebook = \"https://example.com/2\")",
        "condition = worn",
        // Fields never set read as their defaults (the pointer defaults
        // are not printed by the tool; the layout comparison above holds
        // them).
        "(title = \"book 2.0\", pages = 100,",
        "(title = \"second\", pages = 7,",
        "format = (hardcover = void)",
        "sizes = [[1, 2], []]",
        "ratio = 0.25",
        "tilt = -3",
        "shelved = false",
        "old = (modern = \"m\")",
        "weights = [2.5]",
        &movie_text(2, 0),
    ] {
        assert!(decoded.contains(expected), "{expected}: {decoded}");
    }

    // The delta sets shelf 4 only: slot 0 (Movie) is untouched.
    let body = std::fs::read(store_dir.join(BlobName::Delta(v1, v2).to_string())).unwrap();
    let decoded = decode(&schema, "Delta", &body[ENVELOPE_LEN..]);
    assert!(decoded.contains("label = \"shelf 4 v1\""), "{decoded}");
    assert!(!decoded.contains("shelf 3"), "{decoded}");
    // Printed from the delta itself, the schema types slot 1 only.
    let delta_text = blob_schema(&open(&store_dir, &BlobName::Delta(v1, v2))).unwrap();
    assert!(
        delta_text.contains("slot0 @0 :AnyPointer;")
            && delta_text.contains("shelf @1 :List(List(Shelf));"),
        "{delta_text}"
    );
    let delta_schema = dir.path().join("delta.capnp");
    std::fs::write(&delta_schema, &delta_text).unwrap();
    let decoded = decode(&delta_schema, "Delta", &body[ENVELOPE_LEN..]);
    assert!(decoded.contains("label = \"shelf 4 v1\""), "{decoded}");
}

/// A blob without types has nothing to type: a named error, not an empty
/// schema.
#[test]
fn a_blob_without_types_is_refused_by_name() {
    use burrow::schema::blob::{write_snapshot, DatasetSchema, HeaderInfo, MAX_LIST_SHIFT};
    let schema = DatasetSchema::default();
    let head = HeaderInfo {
        dataset_id: burrow::schema::DatasetId::mint(),
        from_version: 0,
        to_version: 1,
        producer_id: "p",
        cycle_start_micros: 0,
        schema: &schema,
        tags: &[],
        type_checksums: &[],
        max_list_shift: MAX_LIST_SHIFT,
    };
    let raw = write_snapshot(&head, &[]).unwrap();
    let blob = Arc::new(OpenBlob::from_bytes(&raw, "snapshot/1").unwrap());
    let err = blob_schema(&blob).unwrap_err();
    assert!(matches!(err, CapnpTextError::NoTypes { .. }), "{err}");
    assert!(err.to_string().contains("holds no record types"), "{err}");
}

/// A type the producer stops registering is dropped by the forward delta
/// and re-created by the reverse delta, in the slot past the registered
/// types, with no schema node left in the header: printed from those
/// deltas, that slot is an `AnyPointer` under its own number, and the
/// other types still decode.
#[tokio::test]
async fn a_dropped_type_keeps_its_slot_untyped() {
    use burrow::schema::examples::probe_capnp::probe;
    require_capnp();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let builder = || {
        ProducerBuilder::new(store.clone())
            .producer_id("p")
            .compression(Compression::None)
            .primary_key::<movie::Owned>(&["id"])
    };
    let both = builder()
        .primary_key::<probe::Owned>(&["name", "small"])
        .build()
        .unwrap();
    let movies: Model = (0..3).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = both
        .run_cycle(|p| {
            add_model(p, &movies)?;
            p.add::<probe::Owned>(|mut r| {
                r.set_name("probe-1");
                r.set_small(1);
                Ok(())
            })
        })
        .await
        .unwrap()
        .version;
    drop(both);
    let movies_only = builder().build().unwrap();
    movies_only.restore().await.unwrap();
    let changed: Model = (0..3).map(|i| (i, movie_value(i, 1))).collect();
    let v2 = publish(&movies_only, &changed).await.unwrap().version;

    let forward = open(&store_dir, &BlobName::Delta(v1, v2));
    let text = blob_schema(&forward).unwrap();
    assert!(text.contains("movie @0 :List(List(Movie));"), "{text}");
    assert!(
        text.contains("probe @1 :AnyPointer;  # slot 1: examples/probe.capnp:Probe")
            && text.contains("no schema node in this header"),
        "{text}"
    );
    let schema = dir.path().join("forward.capnp");
    std::fs::write(&schema, &text).unwrap();
    let body = std::fs::read(store_dir.join(BlobName::Delta(v1, v2).to_string())).unwrap();
    let decoded = decode(&schema, "Delta", &body[ENVELOPE_LEN..]);
    assert!(decoded.contains("dropped = true"), "{decoded}");
    assert!(decoded.contains(&movie_text(2, 1)), "{decoded}");

    let reverse = BlobName::Reverse(v2, v1);
    let text = blob_schema(&open(&store_dir, &reverse)).unwrap();
    let schema = dir.path().join("reverse.capnp");
    std::fs::write(&schema, &text).unwrap();
    let body = std::fs::read(store_dir.join(reverse.to_string())).unwrap();
    let decoded = decode(&schema, "Delta", &body[ENVELOPE_LEN..]);
    assert!(decoded.contains(&movie_text(2, 0)), "{decoded}");
    assert!(decoded.contains("probe = <opaque pointer>"), "{decoded}");
}
