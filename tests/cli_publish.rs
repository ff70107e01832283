//! `burrow publish` (the real binary): records published from a file with
//! no code are what a Rust producer of generated code publishes from the
//! same values, blob for blob; a changed file publishes a delta that a
//! consumer follows; CSV and gzip- or zstd-compressed input give the same
//! records; and every kind of bad input is refused with the file, line and
//! field, announcing nothing.

use crate::common::cli::*;
use crate::common::{add_model, consumer, movie_value, snapshot_of, Model};
use burrow::blobstore::{BlobName, BlobStore, Compression};
use burrow::consumer::Step;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use burrow::testing::ManualClock;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The built-in Movie schema, as the build compiles it (`src_prefix`
/// `schema`, so its nodes are named `examples/movies.capnp:...` both ways).
fn movies_capnp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples/movies.capnp")
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// `burrow publish` of the Movie schema, with `extra` arguments.
fn publish(store: &Path, input: &Path, extra: &[&str]) -> std::process::Output {
    let schema = movies_capnp();
    let prefix = schema_dir();
    let mut args = vec![
        "publish",
        "--schema",
        schema.to_str().unwrap(),
        "--src-prefix",
        prefix.to_str().unwrap(),
        "--type",
        "Movie",
        "--key",
        "id",
        "--input",
        input.to_str().unwrap(),
        "--compression",
        "none",
        "--no-gc",
    ];
    args.extend_from_slice(extra);
    burrow(store, &args)
}

fn jsonl(model: &Model) -> String {
    let mut out = String::new();
    for (id, (title, year, tags)) in model {
        out.push_str(&json!({"id": id, "title": title, "year": year, "tags": tags}).to_string());
        out.push('\n');
    }
    out
}

fn model(ids: std::ops::Range<u64>, generation: u64) -> Model {
    ids.map(|i| (i, movie_value(i, generation))).collect()
}

async fn blob(store: &BlobStore, name: &BlobName) -> Vec<u8> {
    store.get_blob(name).await.unwrap().to_vec()
}

/// Publishes `model` to `rust_store` with a Rust producer of generated
/// code that takes the CLI's last blob's producer id, dataset id and time
/// (the only inputs of a blob besides the records), restoring first as
/// the CLI does.
async fn rust_cycle(rust_store: &BlobStore, cli_store: &BlobStore, version: u64, model: &Model) {
    let cli_blob = burrow::schema::blob::read::OpenBlob::from_bytes(
        &blob(cli_store, &BlobName::Snapshot(version)).await,
        "snapshot",
    )
    .unwrap();
    let header = cli_blob.header().unwrap();
    let clock = ManualClock::new();
    let ahead = header.cycle_start_micros - ManualClock::UNIX_START_MICROS;
    clock.advance(Duration::from_micros(ahead as u64));
    let producer = ProducerBuilder::new(rust_store.clone())
        .producer_id(header.producer_id)
        .dataset_id(header.dataset_id)
        .clock(Arc::new(clock))
        .retention(None)
        .compression(Compression::None)
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap();
    producer.restore().await.unwrap();
    let report = producer.run_cycle(|p| add_model(p, model)).await.unwrap();
    assert_eq!(report.version, version);
}

/// Invariant: `burrow publish` of a JSONL file and a Rust producer of the
/// same records write the same blobs byte for byte (snapshots, deltas and
/// reverse deltas, headers included once the producer id, dataset id and
/// time are the same), so ordinals, keys, the key index and record lists
/// are a Rust producer's; a second file publishes a delta a consumer
/// follows to the new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_what_a_rust_producer_writes_and_chains_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let (cli_dir, rust_dir) = (dir.path().join("cli"), dir.path().join("rust"));
    let input = dir.path().join("movies.jsonl");

    let first = model(0..500, 0);
    std::fs::write(&input, jsonl(&first)).unwrap();
    let out = publish(&cli_dir, &input, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = &json_lines(&out)[0];
    assert_eq!(report["version"], 1);
    assert_eq!(report["added"], 500);
    assert_eq!(report["type"], "examples/movies.capnp:Movie");

    // The second file: some records changed, some removed, some added.
    let mut second = first.clone();
    for id in (0..500).step_by(7) {
        second.insert(id, movie_value(id, 2));
    }
    for id in (1..500).step_by(50) {
        second.remove(&id);
    }
    second.extend(model(500..520, 2));
    std::fs::write(&input, jsonl(&second)).unwrap();

    let cli_store = BlobStore::local(&cli_dir).unwrap();
    let rust_store = BlobStore::local(&rust_dir).unwrap();
    let cli_consumer = consumer(&cli_store, &dir.path().join("cache-cli"));
    cli_consumer.refresh().await.unwrap();
    assert_eq!(snapshot_of(&cli_consumer), first);

    let out = publish(&cli_dir, &input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(
        line.contains("published version 2") && line.contains("20 added"),
        "{line}"
    );

    rust_cycle(&rust_store, &cli_store, 1, &first).await;
    rust_cycle(&rust_store, &cli_store, 2, &second).await;
    for name in [
        BlobName::Snapshot(1),
        BlobName::Snapshot(2),
        BlobName::Delta(1, 2),
        BlobName::Reverse(2, 1),
    ] {
        let (a, b) = (
            blob(&cli_store, &name).await,
            blob(&rust_store, &name).await,
        );
        assert!(a == b, "{name}: the CLI's and the Rust producer's differ");
    }

    // The consumer that held version 1 follows the delta.
    let report = cli_consumer.refresh().await.unwrap().unwrap();
    assert!(
        matches!(report.steps.as_slice(), [Step::Delta(..)]),
        "{:?}",
        report.steps
    );
    assert_eq!(snapshot_of(&cli_consumer), second);
    let rust_consumer = consumer(&rust_store, &dir.path().join("cache-rust"));
    rust_consumer.refresh().await.unwrap();
    assert_eq!(snapshot_of(&rust_consumer), second);

    // The same file again: nothing to publish.
    let out = publish(&cli_dir, &input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no change: version 2"),
        "{}",
        text(&out.stdout)
    );
}

fn csv(model: &Model) -> String {
    // Tags are a list: CSV cannot hold them, so this CSV leaves them out.
    let mut out = String::from("id,title,year\n");
    for (id, (title, year, _)) in model {
        out.push_str(&format!("{id},\"{}\",{year}\n", title.replace('"', "\"\"")));
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn dump(store: &Path, cache: &Path) -> String {
    let out = burrow(store, &["dump", "--cache", cache.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Invariant: CSV, gzip-compressed and zstd-compressed inputs (told by
/// their magic bytes, whatever their names) publish the same records as
/// the plain JSONL file.
#[test]
fn csv_gzip_and_zstd_inputs_publish_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = model(0..40, 1);
    for v in records.values_mut() {
        v.2.clear();
        v.0.push_str(", \"quoted\"");
    }
    let plain_json = jsonl(&records).replace(",\"tags\":[]", "");
    let plain_csv = csv(&records);
    let inputs: [(&str, Vec<u8>); 5] = [
        ("a.jsonl", plain_json.clone().into_bytes()),
        ("b.csv", plain_csv.clone().into_bytes()),
        ("c.jsonl.gz", gzip(plain_json.as_bytes())),
        (
            "d.csv.zst",
            zstd::encode_all(plain_csv.as_bytes(), 3).unwrap(),
        ),
        // Named as if plain: the magic bytes tell.
        ("e.csv", gzip(plain_csv.as_bytes())),
    ];
    let mut dumps = Vec::new();
    for (name, bytes) in inputs {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let store = dir.path().join(format!("store-{name}"));
        let out = publish(&store, &input, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        dumps.push((
            name,
            dump(&store, &dir.path().join(format!("cache-{name}"))),
        ));
    }
    assert_eq!(dumps[0].1.lines().count(), 40);
    assert!(dumps[0].1.contains("\\\"quoted\\\""), "{}", dumps[0].1);
    for (name, d) in &dumps[1..] {
        assert_eq!(d, &dumps[0].1, "{name}");
    }
}

/// Invariant: a file with any bad record is refused with one line naming
/// the file, the line and the field, and nothing is announced (the store
/// keeps its last version).
#[test]
fn bad_input_is_named_and_nothing_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, jsonl(&model(0..3, 0))).unwrap();
    let out = publish(&store, &good, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ok = r#"{"id": 1, "title": "One", "year": 1990}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing.jsonl",
            format!("{ok}\n{{\"title\": \"no id\"}}\n"),
            "missing.jsonl:2: missing key field id",
        ),
        (
            "dup.jsonl",
            format!("{ok}\n{{\"id\": 2}}\n{ok}\n"),
            "dup.jsonl:3: duplicate key id=1 (first on line 1)",
        ),
        (
            "range.jsonl",
            // `year` is a UInt32: 2^32 does not fit.
            format!("{ok}\n{{\"id\": 2, \"year\": 4294967296}}\n"),
            "range.jsonl:2: field year: 4294967296 is out of range for UInt32 (0 to 4294967295)",
        ),
        (
            "type.jsonl",
            format!("{ok}\n{{\"id\": 2, \"title\": 7}}\n"),
            "type.jsonl:2: field title: expected a string for Text, got 7",
        ),
        (
            "negative.jsonl",
            "{\"id\": -1}\n".to_string(),
            "negative.jsonl:1: field id: -1 is out of range for UInt64",
        ),
        (
            "unknown.jsonl",
            format!("{ok}\n{{\"id\": 2, \"rating\": 5}}\n"),
            "unknown.jsonl:2: field rating: no such field in examples/movies.capnp:Movie \
             (fields: id, title, year, tags)",
        ),
        (
            "broken.jsonl",
            format!("{ok}\n{{\"id\": 2,\n"),
            "broken.jsonl:2: column 9: broken JSON: EOF while parsing a value",
        ),
        (
            "list.jsonl",
            "{\"id\": 2, \"tags\": [\"a\", 3]}\n".to_string(),
            "list.jsonl:1: field tags[1]: expected a string for Text, got 3",
        ),
        (
            "cells.csv",
            "id,title\n1,One\n2,Two,extra\n".to_string(),
            "cells.csv:3: 3 cells, but the header names 2 fields",
        ),
        (
            "quote.csv",
            "id,title\n1,\"One\n".to_string(),
            "quote.csv:2: broken CSV: a quoted cell is never closed",
        ),
        (
            "year.csv",
            "id,year\n1,1990\n2,soon\n".to_string(),
            "year.csv:3: field year: \"soon\" is not an integer, and UInt32 is",
        ),
        (
            "tags.csv",
            "id,tags\n1,a\n".to_string(),
            "tags.csv:2: field tags: is a List(Text), which a CSV cell cannot hold; use JSONL",
        ),
        (
            "nokey.csv",
            "id,title\n1,One\n,Two\n".to_string(),
            "nokey.csv:3: missing key field id",
        ),
    ];
    for (name, content, expected) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, content).unwrap();
        let out = publish(&store, &input, &[]);
        assert_refused(&out, expected);
        assert!(
            text(&out.stderr).contains(input.to_str().unwrap()),
            "the file is named by its path: {}",
            text(&out.stderr)
        );
    }
    let out = burrow(&store, &["--json", "versions"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        json_lines(&out).len(),
        1,
        "nothing announced after version 1"
    );

    // An unknown field is skipped when asked, and a bad enumerant or a bad
    // --type / --key is named (the probe schema has an enum key field).
    let input = dir.path().join("rating.jsonl");
    std::fs::write(&input, format!("{ok}\n{{\"id\": 2, \"rating\": 5}}\n")).unwrap();
    let out = publish(&store, &input, &["--ignore-unknown-fields"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("published version 2"));

    let out = burrow(
        &store,
        &[
            "publish",
            "--schema",
            movies_capnp().to_str().unwrap(),
            "--type",
            "Film",
            "--key",
            "id",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert_refused(&out, "has no struct Film (its structs: Movie)");
    let out = burrow(
        &store,
        &[
            "publish",
            "--schema",
            movies_capnp().to_str().unwrap(),
            "--type",
            "Movie",
            "--key",
            "tags",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert_refused(
        &out,
        "invalid --key tags: movies.capnp:Movie: primary key field \"tags\" is not an \
         integer, bool, enum, text or data field",
    );
}

/// Invariant: enumerants are given by name and a name the enum does not
/// have is refused with the ones it has; a key of several fields (one an
/// enum) is resolved as the Rust key spec resolves it; a union, a group
/// and a nested struct list are built from JSON.
#[test]
fn enums_compound_keys_unions_and_nested_structs() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("shop.capnp");
    std::fs::write(
        &schema,
        "@0xb3e5f0c1d2a39471;\n\
         struct Item {\n  shop @0 :Text;\n  kind @1 :Kind;\n  price @2 :Float64;\n\
         \n  parts @3 :List(Part);\n  union {\n    none @4 :Void;\n    note @5 :Text;\n  }\n\
         \n  size :group {\n    w @6 :UInt8;\n    h @7 :UInt8;\n  }\n\
         \n  enum Kind {\n    book @0;\n    game @1;\n  }\n\
         \n  struct Part {\n    name @0 :Text;\n    count @1 :Int16;\n  }\n}\n",
    )
    .unwrap();
    let input = dir.path().join("items.jsonl");
    std::fs::write(
        &input,
        "{\"shop\": \"a\", \"kind\": \"book\", \"price\": 9.5, \"note\": \"used\", \
         \"size\": {\"w\": 3, \"h\": 4}, \"parts\": [{\"name\": \"cover\", \"count\": -2}]}\n\
         {\"shop\": \"a\", \"kind\": \"game\", \"none\": null}\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let args = |input: &Path| {
        vec![
            "publish".to_string(),
            "--schema".into(),
            schema.to_str().unwrap().into(),
            "--type".into(),
            "Item".into(),
            "--key".into(),
            "shop,kind".into(),
            "--input".into(),
            input.to_str().unwrap().into(),
        ]
    };
    let run = |input: &Path| {
        let a = args(input);
        burrow(&store, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run(&input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Again: the restored producer reads the text and enum key of each
    // record back by the schema node, and finds nothing changed.
    let out = run(&input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no change: version 1"),
        "{}",
        text(&out.stdout)
    );
    let dumped = dump(&store, &dir.path().join("cache"));
    let lines: Vec<serde_json::Value> = dumped
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"shop": "a", "kind": "book", "price": 9.5,
               "parts": [{"name": "cover", "count": -2}], "note": "used",
               "size": {"w": 3, "h": 4}})
    );
    assert_eq!(lines[1]["none"], serde_json::Value::Null);
    assert_eq!(lines[1]["kind"], "game");
    let out = burrow(
        &store,
        &[
            "dump",
            "--cache",
            dir.path().join("cache").to_str().unwrap(),
            "--key",
            "shop=a,kind=game",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"shop\": \"a\", \"kind\": \"film\"}\n").unwrap();
    assert_refused(
        &run(&bad),
        "bad.jsonl:1: field kind: \"film\" is not an enumerant of Item.Kind (expected one of: \
         book, game)",
    );
    std::fs::write(
        &bad,
        "{\"shop\": \"a\", \"kind\": \"book\", \"none\": null, \"note\": \"x\"}\n",
    )
    .unwrap();
    assert_refused(
        &run(&bad),
        "bad.jsonl:1: field note: none and note are members of one union; give only one",
    );
    std::fs::write(
        &bad,
        "{\"shop\": \"a\", \"kind\": \"book\", \"size\": {\"w\": 300}}\n",
    )
    .unwrap();
    assert_refused(
        &run(&bad),
        "bad.jsonl:1: field size.w: 300 is out of range for UInt8 (0 to 255)",
    );
    std::fs::write(&bad, "{\"shop\": \"a\"}\n").unwrap();
    assert_refused(&run(&bad), "bad.jsonl:1: missing key field kind");
}

/// Invariant: a compiled schema (the compiler's CodeGeneratorRequest)
/// publishes as its source does, and a later file under an incompatible
/// change of the schema is refused at restore, naming the field, with
/// nothing announced.
#[test]
fn a_compiled_schema_and_an_incompatible_change() {
    let dir = tempfile::tempdir().unwrap();
    let request = capnpc_embedded::CompileCommand::new()
        .file(movies_capnp())
        .src_prefix(schema_dir())
        .compile()
        .unwrap();
    let compiled = dir.path().join("movies.request");
    std::fs::write(&compiled, request).unwrap();
    let input = dir.path().join("movies.jsonl");
    std::fs::write(&input, jsonl(&model(0..5, 0))).unwrap();
    let (by_source, by_request) = (dir.path().join("a"), dir.path().join("b"));
    let out = publish(&by_source, &input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = burrow(
        &by_request,
        &[
            "publish",
            "--schema",
            compiled.to_str().unwrap(),
            "--type",
            "examples/movies.capnp:Movie",
            "--key",
            "id",
            "--input",
            input.to_str().unwrap(),
            "--compression",
            "none",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        dump(&by_source, &dir.path().join("cache-a")),
        dump(&by_request, &dir.path().join("cache-b"))
    );

    // `year` becomes Text: the chain's records cannot be continued.
    let changed_dir = dir.path().join("changed/examples");
    std::fs::create_dir_all(&changed_dir).unwrap();
    let source = std::fs::read_to_string(movies_capnp()).unwrap();
    assert!(source.contains("year @2 :UInt32;"));
    let changed = changed_dir.join("movies.capnp");
    std::fs::write(
        &changed,
        source.replace("year @2 :UInt32;", "year @2 :Text;"),
    )
    .unwrap();
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{\"id\": 1, \"year\": \"1990\"}\n").unwrap();
    let out = burrow(
        &by_source,
        &[
            "publish",
            "--schema",
            changed.to_str().unwrap(),
            "--src-prefix",
            dir.path().join("changed").to_str().unwrap(),
            "--type",
            "Movie",
            "--key",
            "id",
            "--input",
            other.to_str().unwrap(),
        ],
    );
    assert_refused(
        &out,
        "field `year`: type changed: UInt32 in the blob, Text in this build",
    );
    let out = burrow(&by_source, &["--json", "versions"]);
    assert_eq!(json_lines(&out).len(), 1, "nothing announced");
}

/// Invariant: `--incremental` publishes the file's records as upserts and
/// `--deletes` as deletes on the last announced version (records in
/// neither stay), as a delta a consumer follows to the same records as a
/// whole-dataset publish of the result; a key both upserted and deleted,
/// and an incremental publish on an empty store, are refused with nothing
/// announced.
#[test]
fn incremental_publish_upserts_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let first = write("first.jsonl", &jsonl(&model(0..30, 0)));
    let upserts = write(
        "upserts.jsonl",
        &jsonl(&model(25..35, 1)), // 25..30 changed, 30..35 new
    );
    let deletes = write(
        "deletes.jsonl",
        "{\"id\": 3}\n{\"id\": 4, \"title\": \"ignored\"}\n{\"id\": 99}\n",
    );

    // Nothing published yet: refused.
    let out = publish(&store, &upserts, &["--incremental"]);
    assert_fails(&out, "publish the whole dataset first");

    let out = publish(&store, &first, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deletes_arg = deletes.to_str().unwrap();
    let out = publish(
        &store,
        &upserts,
        &["--incremental", "--deletes", deletes_arg],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("version 2") && said.contains("(5 added, 5 changed, 2 removed)"),
        "{said}"
    );

    // The same records as a whole-dataset publish of the expected model.
    let mut expected = model(0..30, 0);
    expected.extend(model(25..35, 1));
    expected.remove(&3);
    expected.remove(&4);
    let whole_store = dir.path().join("whole");
    let whole = write("whole.jsonl", &jsonl(&expected));
    assert!(publish(&whole_store, &whole, &[]).status.success());
    assert_eq!(
        dump(&store, &dir.path().join("cache")),
        dump(&whole_store, &dir.path().join("cache-whole"))
    );

    // A key both upserted and deleted: refused, nothing announced.
    let both = write("both.jsonl", "{\"id\": 26}\n");
    let out = publish(
        &store,
        &upserts,
        &["--incremental", "--deletes", both.to_str().unwrap()],
    );
    assert_fails(&out, "both.jsonl:1: deletes a key that");
    let versions = burrow(&store, &["versions", "--json"]);
    assert_eq!(json_lines(&versions).len(), 2, "{}", text(&versions.stdout));
}
