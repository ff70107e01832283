//! Two `burrow follow` processes on one cache directory: the second is
//! refused with a message naming the directory, and exits with 1.

use std::io::BufRead;
use std::process::{Command, Stdio};

/// Kills the child on drop, so a failing test leaves no process behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Invariant: a running `burrow follow` owns its cache; a second one on
/// the same `--cache` fails at once with one line naming the directory.
#[test]
fn second_follow_on_same_cache_exits_with_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cache = dir.path().join("cache");
    let bin = env!("CARGO_BIN_EXE_burrow");
    let demo = Command::new(bin)
        .arg("--store")
        .arg(&store)
        .args(["demo", "--records", "100", "--cycles", "1"])
        .arg("--cache")
        .arg(dir.path().join("demo-cache"))
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let follow = |stdout: Stdio| {
        Command::new(bin)
            .arg("--store")
            .arg(&store)
            .arg("--json")
            .arg("follow")
            .arg("--cache")
            .arg(&cache)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = Running(follow(Stdio::piped()));
    // Its first line (readiness or the version it reached) comes after it
    // took the lock. Its stdout stays open to the end: a follow whose
    // stdout is closed exits at its next line, and frees the cache.
    let mut line = String::new();
    let mut first_out = std::io::BufReader::new(first.0.stdout.take().unwrap());
    first_out.read_line(&mut line).unwrap();
    assert!(line.contains("\"version\""), "first follow: {line}");
    let mut second = Running(follow(Stdio::null()));
    let mut pipe = second.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        let _ = tx.send(text);
    });
    // Its stderr closes when it exits; a second follow that runs on is the
    // fault (bounded, so the test fails rather than hangs).
    let stderr = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the second follow exits");
    let status = second.0.wait().unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains(&cache.display().to_string()), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    drop(first_out);
}
