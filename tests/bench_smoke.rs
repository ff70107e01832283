//! `burrow bench` keeps working: the runner executes the whole workload on
//! a small dataset through the real binary and reports every figure as a
//! finite positive number (the incremental cycle's memory growth may be
//! 0). No timing is asserted.

use std::process::Command;

const FIGURES: &[&str] = &[
    "producer_snapshot_cycle",
    "producer_delta_cycle",
    "producer_delta_cycle_with_snapshot",
    "incremental_cycle",
    "incremental_anon_peak",
    "producer_peak_rss",
    "producer_peak_rss_with_snapshot",
    "producer_anon_peak",
    "producer_anon_peak_with_snapshot",
    "producer_file_peak_with_snapshot",
    "incremental_peak_rss_growth",
    "snapshot_bytes",
    "delta_bytes",
    "snapshot_bytes_mapped",
    "snapshot_bytes_stored",
    "delta_bytes_stored",
    "reverse_bytes",
    "decode_open",
    "consumer_open",
    "consumer_open_verified",
    "delta_refresh",
    "delta_refresh_cached",
    "hashmap_lookup",
    "hashmap_index_lookup",
    "index_lookup",
    "refresh_plain",
    "refresh_listening",
    "changes_told",
    "changes_compared",
    "snapshot_checksum_check",
    "open_unfiltered",
    "open_filtered",
    "lookup",
    "hashmap_lookup_threads",
    "lookup_threads",
    "hashmap_scan",
    "scan",
    "decode_rss",
    "decode_anon_rss",
    "consumer_rss",
    "consumer_file_rss",
    "consumer_anon_rss",
    "consumer_rss_after_scan",
    "announce_to_refresh_polling",
    "announce_to_refresh",
    "announce_to_refresh_p99",
    "lookup_p50_idle",
    "lookup_p99_idle",
    "lookup_max_idle",
    "lookup_p50_refreshing",
    "lookup_p99_refreshing",
    "lookup_max_refreshing",
    "lookup_p99_after_delta_swap",
    "lookup_p99_after_delta_swap_off",
    "lookup_p99_after_snapshot_swap_off",
    "lookup_p99_after_snapshot_swap_willneed",
    "lookup_p99_after_snapshot_swap_populate",
    "refresh_under_load",
    "warm_up_delta",
    "refresh_snapshot_off",
    "refresh_snapshot_populate",
    "warm_up_snapshot_populate",
];

#[test]
fn bench_reports_every_figure_as_a_finite_positive_number() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "bench",
            "--records",
            "2000",
            "--runs",
            "1",
            "--load-seconds",
            "0.5",
            "--json",
            "--dir",
        ])
        .arg(dir.path().join("work"))
        .output()
        .expect("burrow runs");
    assert!(
        output.status.success(),
        "burrow bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    assert_eq!(report["config"]["records"], 2000);
    let figures = report["figures"].as_object().expect("figures object");
    for &name in FIGURES {
        let figure = &figures[name];
        for stat in ["median", "min", "max"] {
            let v = figure[stat]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{stat} is not a number: {figure}"));
            // An incremental cycle may fit in memory the allocator already
            // holds: its peak growth can be 0.
            let positive = v > 0.0
                || (name.starts_with("incremental_") && name.ends_with("_growth")
                    || name == "incremental_anon_peak")
                    && v == 0.0;
            assert!(v.is_finite() && positive, "{name}.{stat} = {v}");
        }
        if let Some(base) = figure["baseline"].as_str() {
            assert!(
                figures.contains_key(base),
                "{name}'s baseline {base} is reported"
            );
            let ratio = figure["ratio"].as_f64().expect("a ratio beside a baseline");
            assert!(ratio.is_finite() && ratio > 0.0, "{name}.ratio = {ratio}");
        }
    }
    assert_eq!(figures.len(), FIGURES.len(), "no unexpected figures");
    assert!(
        !dir.path().join("work").exists(),
        "the work directory is removed"
    );
}
