//! The `burrow` binary, run for real on a temporary store: the demo
//! publishes and follows, `versions` and `inspect` read what it wrote, and
//! bad arguments fail with one line that names the problem, never a panic.

use crate::common::cli::*;
use std::path::Path;
use std::process::Command;

#[test]
fn demo_versions_and_inspect_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    let out = burrow(&store, &["demo", "--records", "2000", "--cycles", "3"]);
    assert!(out.status.success(), "demo: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("CYCLE"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "one row per cycle:\n{stdout}");
    assert!(rows[0].contains("snapshot") && rows[2].contains("delta"));
    assert!(
        stdout.contains("Title number 0"),
        "lookups shown:\n{stdout}"
    );
    assert!(
        dir.path().join("burrow-cache/store").is_dir(),
        "the default cache is beside the store"
    );

    let out = burrow(&store, &["--json", "versions"]);
    assert!(out.status.success(), "versions: {}", text(&out.stderr));
    let entries = json_lines(&out);
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["kind"], "announce");
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["version"], i as u64 + 1);
    }
    assert_eq!(entries[1]["from_version"], 1);
    // The dataset id: 32 lowercase hex digits, the same on every entry.
    let dataset = entries[0]["dataset_id"]
        .as_str()
        .expect("dataset_id")
        .to_string();
    assert!(
        dataset.len() == 32
            && dataset
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{dataset}"
    );
    assert!(entries.iter().all(|e| e["dataset_id"] == dataset.as_str()));
    let out = burrow(&store, &["versions"]);
    assert!(
        text(&out.stdout).contains(&format!("dataset {dataset}")),
        "{}",
        text(&out.stdout)
    );

    let out = burrow(&store, &["inspect", "2", "--json"]);
    assert!(out.status.success(), "inspect: {}", text(&out.stderr));
    let blob = &json_lines(&out)[0];
    assert_eq!(blob["envelope"]["kind"], "snapshot");
    assert_eq!(blob["envelope"]["to_version"], 2);
    assert_eq!(blob["types"][0]["records"], 2000);
    // The key index keeps its load factor at or under LOAD_PERCENT.
    let slots = blob["types"][0]["key_index_slots"].as_u64().unwrap();
    let load = burrow::schema::key_index::LOAD_PERCENT as u64;
    assert!(
        slots * load >= 2000 * 100 && slots < 2000 * 2,
        "{slots} slots"
    );
    // inspect checks the index (schema::key_index): one entry per record.
    assert_eq!(blob["types"][0]["key_index_entries"], 2000);
    assert_eq!(blob["types"][0]["key_fields"][0], "id");
    assert_eq!(blob["header"]["tags"]["workload"], "movies");
    assert_eq!(blob["header"]["dataset_id"], dataset.as_str());
    let out = burrow(&store, &["inspect", "2"]);
    assert!(
        text(&out.stdout).contains(&dataset),
        "{}",
        text(&out.stdout)
    );

    let out = burrow(&store, &["inspect", "3", "--blob", "delta", "--json"]);
    assert!(out.status.success(), "inspect delta: {}", text(&out.stderr));
    let delta = &json_lines(&out)[0];
    assert_eq!(delta["envelope"]["kind"], "delta");
    assert_eq!(delta["envelope"]["from_version"], 2);
    // 1% of 2000 changed, 0.1% removed and as many added.
    assert_eq!(delta["types"][0]["removed"], 2);
    assert_eq!(delta["types"][0]["set"], 22);
    assert_eq!(delta["types"][0]["dropped"], false);

    // A second run chains on: its first cycle is a delta to version 4.
    let out = burrow(&store, &["--json", "demo", "--cycles", "1"]);
    assert!(out.status.success(), "second demo: {}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["version"], 4);
    assert_eq!(lines[0]["consumer_plan"], "delta");
    assert_eq!(lines[1]["event"], "lookup");
    assert_eq!(lines[1]["ok"], true);
    // ... of the same dataset: a restarted producer keeps the id.
    let out = burrow(&store, &["--json", "versions"]);
    let entries = json_lines(&out);
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e["dataset_id"] == dataset.as_str()));
}

#[test]
fn bad_arguments_fail_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let missing = dir.path().join("no-such-store");

    assert_fails(&burrow(&missing, &["versions"]), "does not exist");
    assert_fails(&burrow(&store, &["demo", "--change", "2"]), "--change");
    assert_fails(&burrow(&store, &["demo", "--churn", "-1"]), "--churn");
    assert_fails(&burrow(&store, &["demo", "--records", "0"]), "--records");
    assert_fails(&burrow(&store, &["demo", "--cycles", "x"]), "--cycles");
    assert_fails(&burrow(&store, &["inspect", "abc"]), "VERSION");
    assert_fails(&burrow(Path::new("ftp://host/x"), &["versions"]), "--store");

    let out = burrow(&store, &["demo", "--records", "100", "--cycles", "1"]);
    assert!(out.status.success(), "demo: {}", text(&out.stderr));
    assert_fails(&burrow(&store, &["inspect", "42"]), "version 42");
    assert_fails(
        &burrow(&store, &["inspect", "1", "--blob", "delta"]),
        "no delta",
    );
}

/// `burrow follow` is a real consumer process: it reaches each version the
/// producer announces, printing one JSON line per version, and stops
/// cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reaches_each_announced_version() {
    use crate::common::*;
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = burrow::blobstore::BlobStore::local(&store_dir).unwrap();
    let producer = producer(&store, "p");
    let mut model: Model = (0..200).map(|i| (i, movie_value(i, 0))).collect();
    let v1 = publish(&producer, &model).await.unwrap().version;

    let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--store")
        .arg(&store_dir)
        .args(["--json", "follow", "--interval-ms", "20", "--cache"])
        .arg(dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Waits (bounded) for the follower to print that it reached `version`.
    let reach = |version: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("follow never reached {version}"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "version" && v["version"] == version {
                return;
            }
        }
    };
    reach(v1);
    model.insert(3, movie_value(3, 3));
    let v2 = publish(&producer, &model).await.unwrap().version;
    reach(v2);
    // SIGTERM: a clean exit.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "follow exits cleanly on SIGTERM: {status:?}"
    );
}

/// `burrow bench` validates its arguments in the CLI's one conversion
/// (args -> config) like every command: a bad one fails at once, with one
/// line naming it, before any working directory is made or child started.
#[test]
fn bench_bad_arguments_fail_naming_the_argument_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let work = dir.path().join("work");
    let work_arg = work.to_str().unwrap();
    for (args, names) in [
        (&["--records", "0"][..], "invalid --records 0"),
        (&["--records", "99"][..], "invalid --records 99"),
        (&["--change", "0"][..], "invalid --change 0"),
        (&["--change", "1.5"][..], "invalid --change 1.5"),
        (&["--change", "NaN"][..], "invalid --change NaN"),
        (&["--churn=-0.1"][..], "invalid --churn -0.1"),
        (&["--churn=0.6"][..], "invalid --churn 0.6"),
        (&["--change", "0.9", "--churn=0.2"][..], "--churn 0.2"),
        (&["--runs", "0"][..], "invalid --runs 0"),
        (&["--process-runs", "0"][..], "invalid --process-runs 0"),
        (&["--lookups", "0"][..], "invalid --lookups 0"),
        (&["--runs", "x"][..], "--runs"),
        (&["--child", "decode"][..], "--blob"),
        (&["--load-seconds", "0"][..], "invalid --load-seconds 0"),
        (&["--refreshes", "10"][..], "invalid --refreshes 10"),
        (&["--suite", "nope"][..], "--suite"),
    ] {
        let mut full = vec!["bench", "--dir", work_arg];
        full.extend_from_slice(args);
        assert_fails(&burrow(&store, &full), names);
        assert!(!work.exists(), "bench {args:?} made its working directory");
    }
}

// Invariant: `burrow inspect` of a delta says which types it drops (a
// producer that stops registering a type), in the table and in `--json`,
// and of the other types that they stay.
#[tokio::test]
async fn inspect_shows_a_dropped_type() {
    use burrow::blobstore::BlobStore;
    use burrow::producer::ProducerBuilder;
    use burrow::schema::examples::movies_capnp::movie;
    use burrow::schema::examples::probe_capnp::probe;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = BlobStore::local(&path).unwrap();
    let publish = |with_probe: bool| {
        let mut builder = ProducerBuilder::new(store.clone())
            .producer_id("cli")
            .primary_key::<movie::Owned>(&["id"]);
        if with_probe {
            builder = builder.primary_key::<probe::Owned>(&["name", "small"]);
        }
        let producer = builder.build().unwrap();
        async move {
            producer.restore().await.unwrap();
            producer
                .run_cycle(|p| {
                    p.add::<movie::Owned>(|mut m| {
                        m.set_id(1);
                        m.set_title("One");
                        m.set_year(2001);
                        Ok(())
                    })?;
                    if with_probe {
                        p.add::<probe::Owned>(|mut r| {
                            r.set_name("probe-1");
                            r.set_small(1);
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
                .await
                .unwrap()
                .version
        }
    };
    let v1 = publish(true).await;
    let v2 = publish(false).await;
    assert!(v2 > v1);

    let version = v2.to_string();
    let out = burrow(&path, &["inspect", &version, "--blob", "delta", "--json"]);
    assert!(out.status.success(), "inspect delta: {}", text(&out.stderr));
    let delta = &json_lines(&out)[0];
    let types = delta["types"].as_array().unwrap();
    let probe = types
        .iter()
        .find(|t| t["name"].as_str().unwrap().ends_with(":Probe"))
        .unwrap_or_else(|| panic!("the delta has a Probe entry: {delta}"));
    assert_eq!(probe["dropped"], true, "{delta}");
    assert_eq!(probe["records_after"], 0, "{delta}");
    assert!(
        types
            .iter()
            .filter(|t| *t != probe)
            .all(|t| t["dropped"] == false),
        "{delta}"
    );

    let out = burrow(&path, &["inspect", &version, "--blob", "delta"]);
    assert!(out.status.success(), "inspect delta: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DROPPED"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains(":Probe"))
        .unwrap_or_else(|| panic!("a Probe row: {stdout}"));
    assert!(row.split_whitespace().any(|w| w == "yes"), "{row}");

    // The reverse delta brings the type back: it is not dropped there.
    let out = burrow(&path, &["inspect", &version, "--blob", "reverse", "--json"]);
    assert!(
        out.status.success(),
        "inspect reverse: {}",
        text(&out.stderr)
    );
    let reverse = &json_lines(&out)[0];
    assert!(
        reverse["types"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["dropped"] == false),
        "{reverse}"
    );
}
