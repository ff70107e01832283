//! The soak at CI size (issue 17): `burrow bench --suite soak` runs 1000
//! refreshes of a small dataset in a process of its own (so that what it
//! reads from `/proc/self` is the consumer's alone) with readers holding
//! and dropping states, and reports checkpoints after 100 and after 1000.
//!
//! Invariant: nothing grows per refresh. Between the checkpoints, open
//! descriptors and mapped regions stay within a few (a leaked mapping or
//! descriptor per refresh would add 900), anonymous memory within 3 MiB (a
//! leaked state of this dataset, or any 3.5 KiB a refresh, would add
//! more); and no deleted cache file stays mapped once no reader holds its
//! state, though readers holding old states did keep some mapped meanwhile.

use std::process::Command;

#[test]
fn a_thousand_refreshes_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "bench",
            "--suite",
            "soak",
            "--records",
            "2000",
            "--refreshes",
            "1000",
        ])
        .args(["--json", "--dir"])
        .arg(dir.path().join("work"))
        .output()
        .expect("burrow runs");
    assert!(
        output.status.success(),
        "burrow bench --suite soak failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let config = &report["config"];
    let checkpoints = config["soak_checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 2, "{config}");
    let at = |c: &serde_json::Value, key: &str| c[key].as_u64().unwrap();
    let (first, last) = (&checkpoints[0], &checkpoints[1]);
    assert_eq!((at(first, "refreshes"), at(last, "refreshes")), (100, 1000));
    assert!(
        at(last, "fds") <= at(first, "fds") + 2,
        "descriptors grew: {config}"
    );
    // Besides the cache files (as many as the current state has deltas),
    // the process's regions: its code, stacks and heaps.
    let other = |c: &serde_json::Value| at(c, "maps_besides_cache_files");
    assert!(
        other(last) <= other(first) + 8,
        "mapped regions grew: {config}"
    );
    assert!(
        at(last, "anon_bytes") <= at(first, "anon_bytes") + (3 << 20),
        "anonymous memory grew: {config}"
    );
    for c in checkpoints {
        assert_eq!(
            at(c, "deleted_mapped"),
            0,
            "a released state's files stay mapped: {config}"
        );
        // Mapped: the current state's blobs (its snapshot and deltas), no more.
        assert_eq!(
            at(c, "cache_files_mapped"),
            at(c, "state_blobs"),
            "{config}"
        );
    }
    // The soak went through what it is for.
    assert!(
        config["soak_deleted_mapped_max_while_held"]
            .as_u64()
            .unwrap()
            > 0,
        "{config}"
    );
    for key in [
        "soak_evicted_files",
        "soak_snapshot_loads",
        "soak_reverse_deltas",
    ] {
        assert!(config[key].as_u64().unwrap() > 0, "{key}: {config}");
    }
}
