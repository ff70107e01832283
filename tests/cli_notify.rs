//! `burrow demo --notify` and `burrow follow --notify` as processes through
//! a real Redis server: versions reach the follower by push while its poll
//! interval is an hour; when Redis goes away the follower reports polling
//! and still reaches new versions at the fallback interval; when Redis is
//! back it reports push again. Bad `--notify` values are refused by name.

use crate::common::cli::{assert_fails, burrow};
use crate::common::servers::{Kind, Server};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `follow --json` events until one satisfies `want` (at most 30 s).
fn wait_for(
    events: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let event = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no {what} from follow within 30 s ({e})"));
        if want(&event) {
            return event;
        }
    }
}

fn demo(store: &std::path::Path, cache: &std::path::Path, url: &str, cycles: &str) -> u64 {
    let out = burrow(
        store,
        &[
            "--json",
            "demo",
            "--records",
            "500",
            "--cycles",
            cycles,
            "--cache",
            cache.to_str().unwrap(),
            "--notify",
            url,
        ],
    );
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::common::cli::json_lines(&out)
        .iter()
        .filter(|e| e["event"] == "cycle")
        .filter_map(|e| e["version"].as_u64())
        .max()
        .expect("the demo printed its cycles")
}

#[test]
fn demo_and_follow_through_redis_and_without_it() {
    let mut redis = Server::start(Kind::Redis);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let demo_cache = dir.path().join("demo-cache");
    let first = demo(&store, &demo_cache, &url, "1");

    let mut follow = Running(
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--store")
            .arg(&store)
            .args(["--json", "follow", "--interval-ms", "3600000"])
            .args(["--notify", &url, "--fallback-interval-ms", "200", "--cache"])
            .arg(dir.path().join("follow-cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    wait_for(&events, "the first version", |e| {
        e["event"] == "version" && e["version"] == first
    });
    wait_for(&events, "push mode", |e| {
        e["event"] == "mode" && e["mode"] == "push"
    });

    // By push: the follower polls once an hour.
    let pushed = demo(&store, &demo_cache, &url, "2");
    wait_for(&events, "the pushed version", |e| {
        e["event"] == "version" && e["version"] == pushed
    });

    // Redis goes away: the follower says so and polls.
    redis.kill();
    wait_for(&events, "polling mode", |e| {
        e["event"] == "mode" && e["mode"] == "polling"
    });
    let out = burrow(
        &store,
        &[
            "demo",
            "--records",
            "500",
            "--cycles",
            "1",
            "--cache",
            demo_cache.to_str().unwrap(),
            "--notify",
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "a demo whose channel is down still publishes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not delivered"),
        "the demo warns of the undelivered notification: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let polled = pushed + 1;
    wait_for(&events, "the version found by polling", |e| {
        e["event"] == "version" && e["version"] == polled
    });

    // Redis is back: push again.
    redis.restart();
    wait_for(&events, "push mode again", |e| {
        e["event"] == "mode" && e["mode"] == "push"
    });
}

#[test]
fn bad_notify_urls_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (args, names) in [
        (vec!["follow", "--notify", "http://x"], "--notify"),
        (
            vec!["follow", "--notify", "redis://h:1?channel=a*b"],
            "channel",
        ),
        (vec!["demo", "--notify", "ftp://x"], "--notify"),
        (vec!["follow", "--fallback-interval-ms", "10"], "--notify"),
        (
            vec![
                "follow",
                "--notify",
                "redis://h:1",
                "--fallback-interval-ms",
                "0",
            ],
            "--fallback-interval-ms",
        ),
    ] {
        let out = burrow(&store, &args);
        assert_fails(&out, names);
    }
}
