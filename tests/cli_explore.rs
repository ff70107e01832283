//! `burrow dump`, `diff`, `history` and `schema` run for real on the demo
//! dataset: on a local store and on S3 (moto), each through a cache of its
//! own; bad input (unknown version, type or key, a malformed key) is one
//! line naming the problem.

use crate::common::cli::*;
use serde_json::Value;

fn one_json(out: &std::process::Output) -> Value {
    let lines = json_lines(out);
    assert_eq!(lines.len(), 1, "one JSON object: {}", text(&out.stdout));
    lines.into_iter().next().unwrap()
}

fn ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    out
}

fn keys(list: &Value) -> Vec<String> {
    let mut k: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

#[test]
fn dump_diff_history_and_schema_on_the_demo_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(
        burrow(
            &store,
            &[
                "demo",
                "--records",
                "500",
                "--cycles",
                "4",
                "--compression",
                "none",
            ],
        ),
        "demo",
    );

    // dump: JSON lines; the newest version by default, one type implied.
    let out = ok(burrow(&store, &["dump", "--limit", "3"]), "dump");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], 0);
    assert!(lines[0]["title"]
        .as_str()
        .unwrap()
        .starts_with("Title number 0"));
    let all = json_lines(&ok(burrow(&store, &["dump"]), "dump all"));
    let inspect = one_json(&ok(burrow(&store, &["--json", "inspect", "4"]), "inspect"));
    assert_eq!(
        all.len() as u64,
        inspect["types"][0]["records"].as_u64().unwrap()
    );
    assert!(
        dir.path().join("burrow-cache/store-explore").is_dir(),
        "a cache of its own beside the store"
    );
    let line = one_json(&ok(
        burrow(
            &store,
            &["--json", "dump", "--key", "id=42", "--type", "Movie"],
        ),
        "dump --key",
    ));
    assert_eq!(line["version"], 4);
    assert_eq!(line["key"], "42");
    assert_eq!(line["record"]["id"], 42);
    assert_eq!(line["type"], "examples/movies.capnp:Movie");
    // A cached copy that a disk changed is evicted and fetched again.
    let cached = std::fs::read_dir(dir.path().join("burrow-cache/store-explore"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the dataset's directory in the cache")
        .join("snapshot-00000000000000000004");
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    let again = one_json(&ok(
        burrow(&store, &["dump", "--key", "42"]),
        "dump after a bad cache file",
    ));
    assert_eq!(again["id"], 42);
    assert_ne!(std::fs::read(&cached).unwrap(), bytes, "fetched again");
    let title = one_json(&ok(
        burrow(
            &store,
            &["dump", "--version", "1", "--key", "42", "--field", "title"],
        ),
        "dump --field",
    ));
    assert_eq!(title, "Title number 42");
    let tag = one_json(&ok(
        burrow(&store, &["dump", "--ordinal", "3", "--field", "tags.1"]),
        "dump --ordinal",
    ));
    assert!(tag.is_string(), "{tag}");

    // diff 3 -> 4 by its delta: what the delta removed and set.
    let d = one_json(&ok(burrow(&store, &["--json", "diff", "3", "4"]), "diff"));
    assert_eq!(d["method"], "deltas");
    assert_eq!(d["deltas_read"], 1);
    let t = &d["types"][0];
    let delta = one_json(&ok(
        burrow(&store, &["--json", "inspect", "4", "--blob", "delta"]),
        "inspect delta",
    ));
    let (added, removed, changed) = (
        t["added"].as_array().unwrap().len(),
        t["removed"].as_array().unwrap().len(),
        t["changed"].as_array().unwrap().len(),
    );
    assert_eq!(
        removed as u64,
        delta["types"][0]["removed"].as_u64().unwrap()
    );
    assert_eq!(
        (added + changed) as u64,
        delta["types"][0]["set"].as_u64().unwrap()
    );
    assert!(changed > 0 && added > 0 && removed > 0, "{d}");
    let changed_key = t["changed"][0]["key"].as_str().unwrap().to_string();
    assert_eq!(t["changed"][0]["fields"][0]["path"], "$.title");
    let table = text(
        &ok(
            burrow(&store, &["diff", "3", "4", "--limit", "2"]),
            "diff table",
        )
        .stdout,
    );
    assert!(table.contains("read from 1 delta(s)"), "{table}");
    assert!(
        table.contains("$.title") && table.contains("more records not listed"),
        "{table}"
    );

    // history: the oldest version, then the change in version 4.
    let h = one_json(&ok(
        burrow(
            &store,
            &[
                "--json",
                "history",
                "--type",
                "Movie",
                "--key",
                &changed_key,
            ],
        ),
        "history",
    ));
    let entries = h["entries"].as_array().unwrap();
    assert_eq!(entries[0]["version"], 1);
    assert_eq!(entries[0]["change"], "oldest");
    let last = entries.last().unwrap();
    assert_eq!(
        (last["version"].as_u64(), last["change"].as_str()),
        (Some(4), Some("changed"))
    );
    let table = text(
        &ok(
            burrow(&store, &["history", "--key", &changed_key]),
            "history table",
        )
        .stdout,
    );
    assert!(
        table.contains("oldest") && table.contains("$.title:"),
        "{table}"
    );

    // schema: the dataset's own types; --capnp: the decoding file.
    let schema = text(&ok(burrow(&store, &["schema"]), "schema").stdout);
    assert!(
        schema.contains("struct Movie @0x") && schema.contains("primary key (id)"),
        "{schema}"
    );
    assert!(!schema.contains("struct Snapshot"), "{schema}");
    let capnp = text(&ok(burrow(&store, &["schema", "--capnp"]), "schema --capnp").stdout);
    assert!(capnp.contains("struct Snapshot"), "{capnp}");

    // A delta no longer retained (and not in the cache either): the same
    // diff by comparing every record.
    std::fs::remove_file(store.join("delta/00000000000000000003-00000000000000000004")).unwrap();
    std::fs::remove_dir_all(dir.path().join("burrow-cache/store-explore")).unwrap();
    let full = one_json(&ok(
        burrow(&store, &["--json", "diff", "4", "3"]),
        "full diff",
    ));
    assert_eq!(full["method"], "full");
    let ft = &full["types"][0];
    assert_eq!(
        keys(&ft["added"]),
        keys(&t["removed"]),
        "reversed: added is removed"
    );
    assert_eq!(keys(&ft["removed"]), keys(&t["added"]));
    assert_eq!(keys(&ft["changed"]), keys(&t["changed"]));
    let h2 = one_json(&ok(
        burrow(&store, &["--json", "history", "--key", &changed_key]),
        "history without the delta",
    ));
    assert_eq!(h2["entries"], h["entries"], "the snapshot of 4 stands in");

    // Bad input: one line naming the problem.
    std::fs::remove_file(store.join("snapshot/00000000000000000001")).unwrap();
    std::fs::remove_dir_all(dir.path().join("burrow-cache/store-explore")).unwrap();
    for (args, names) in [
        (
            &["dump", "--version", "99"][..],
            "version 99 was never announced",
        ),
        (
            &["dump", "--version", "1"],
            "version 1 is no longer retained",
        ),
        (&["dump", "--version", "x"], "invalid --version \"x\""),
        (&["dump", "--type", "Nope"], "has no type \"Nope\""),
        (&["dump", "--key", "abc"], "bad key \"abc\""),
        (&["dump", "--key", "id=1,x=2"], "x is not a key field"),
        (
            &["dump", "--key", "123456789"],
            "has no record with key \"123456789\"",
        ),
        (&["dump", "--ordinal", "abc"], "invalid --ordinal"),
        (
            &["dump", "--ordinal", "100000"],
            "has no record with ordinal 100000",
        ),
        (&["dump", "--limit", "0"], "invalid --limit"),
        (&["dump", "--field", "nope"], "has no field \"nope\""),
        (&["diff", "2", "99"], "version 99 was never announced"),
        (&["diff", "x", "2"], "invalid A \"x\""),
        (
            &["diff", "2", "3", "--type", "Nope"],
            "has no type \"Nope\"",
        ),
        (&["history", "--key", "-1"], "bad key \"-1\""),
        (
            &["history", "--key", "99999999"],
            "no retained version holds",
        ),
        (
            &["history", "--type", "Nope", "--key", "1"],
            "no retained version holds",
        ),
    ] {
        assert_refused(&burrow(&store, args), names);
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_refused(&burrow(&empty, &["dump"]), "nothing has been announced");
    assert_refused(
        &burrow(&dir.path().join("missing"), &["diff", "1", "2"]),
        "does not exist",
    );
}

/// The explorer's cache is its own: a second explorer on the same
/// directory is refused by name, and `--cache` picks another.
#[test]
fn an_explorer_cache_in_use_is_refused_and_another_can_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(
        burrow(&store, &["demo", "--records", "200", "--cycles", "2"]),
        "demo",
    );
    let cache = dir.path().join("mine");
    let held = burrow::blobstore::BlobCache::open(&cache).unwrap();
    let cache_arg = cache.to_str().unwrap();
    assert_refused(&burrow(&store, &["dump", "--cache", cache_arg]), "in use");
    drop(held);
    let out = ok(
        burrow(&store, &["dump", "--cache", cache_arg, "--key", "7"]),
        "dump",
    );
    assert_eq!(one_json(&out)["id"], 7);
    assert_refused(
        &burrow(&store, &["dump", "--cache", store.to_str().unwrap()]),
        "must not be the store's own directory",
    );
}

/// The same commands on an S3 store (moto), with the CLI's settings from
/// the AWS_* variables and its default cache under the working directory.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_diff_and_history_on_s3() {
    use crate::conformance::moto::plain_endpoint;
    use crate::conformance::support::{random_prefix, s3};
    let endpoint = plain_endpoint();
    s3::create_bucket(&endpoint, s3::BUCKET).await;
    let url = format!("s3://{}/{}", s3::BUCKET, random_prefix());
    let store =
        burrow::blobstore::BlobStore::from_url(&url, &s3::options(&endpoint, "test", "test"))
            .unwrap();
    let producer = crate::common::producer(&store, "explore-s3");
    let mut data = burrow::testing::workload::Dataset::new(300, 5);
    for cycle in 1..=3u64 {
        if cycle > 1 {
            data.advance(cycle, 0.05, 0.01);
        }
        producer.run_cycle(|p| data.populate(p)).await.unwrap();
    }
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .current_dir(cwd.path())
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .arg("--store")
            .arg(&url)
            .args(args)
            .output()
            .unwrap()
    };
    let (id, generation) = data.records().iter().find(|(_, g)| **g == 3).unwrap();
    let line = one_json(&ok(run(&["dump", "--key", &id.to_string()]), "dump on S3"));
    assert_eq!(line["title"], data.movie(*id).unwrap().title);
    assert_eq!(*generation, 3);
    let d = one_json(&ok(run(&["--json", "diff", "2", "3"]), "diff on S3"));
    assert_eq!(d["method"], "deltas");
    assert!(keys(&d["types"][0]["changed"]).contains(&id.to_string()));
    let h = one_json(&ok(
        run(&["--json", "history", "--key", &id.to_string()]),
        "history on S3",
    ));
    assert_eq!(
        h["entries"].as_array().unwrap().last().unwrap()["version"],
        3
    );
    let schema = text(&ok(run(&["schema"]), "schema on S3").stdout);
    assert!(schema.contains("struct Movie"), "{schema}");
    assert_refused(
        &run(&["dump", "--version", "9"]),
        "version 9 was never announced",
    );
    let cache: Vec<_> = std::fs::read_dir(cwd.path().join("burrow-cache").join(s3::BUCKET))
        .unwrap()
        .collect();
    assert_eq!(cache.len(), 1, "one cache, under the bucket");
}
