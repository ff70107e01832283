//! Running the `burrow` binary in tests: a command on a store, its output as
//! text or JSON lines, and the checks every refusal must pass (one line
//! naming the problem, no panic).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `burrow --store <store> <args>` to completion.
pub fn burrow(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("the burrow binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every line of stdout, each parsed as JSON.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Asserts a failure: non-zero exit, a message containing `names`, no panic.
pub fn assert_fails(out: &Output, names: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure naming {names:?}; stdout: {}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(names),
        "stderr should name {names:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line of error: {stderr}"
    );
}

/// Asserts a refusal: exit code 1 and nothing printed on stdout, besides
/// everything [`assert_fails`] asserts.
pub fn assert_refused(out: &Output, names: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{names}: stderr {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing printed: {}",
        text(&out.stdout)
    );
    assert_fails(out, names);
}
