//! burrow's integration tests: one binary.

#[cfg(feature = "cli")]
mod bench_smoke;
mod cache_retention;
mod capnp_schema;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod cli_cache_lock;
#[cfg(feature = "cli")]
mod cli_explore;
#[cfg(feature = "cli")]
mod cli_notify;
#[cfg(feature = "cli")]
mod cli_pin;
#[cfg(feature = "cli")]
mod cli_publish;
mod colliding_keys;
mod common;
mod compression;
mod conformance;
mod consumer_cache;
mod consumer_outage;
#[cfg(all(feature = "failpoints", feature = "workload"))]
mod crash;
mod dataset_id;
mod dropped_type;
mod e2e;
mod evolve;
mod explore;
mod failure;
mod full_disk;
#[cfg(feature = "fuzzing")]
mod fuzz_seeds;
#[cfg(feature = "cli")]
mod gc;
mod gc_property;
mod gc_retention;
mod golden;
mod hostile;
mod hostile_v2;
mod incremental;
mod index;
mod limits;
mod load;
#[cfg(feature = "cli")]
mod metrics_http;
#[cfg(any(feature = "redis", feature = "nats"))]
mod notify;
mod parallel_populate;
mod producer_blocking;
mod producer_pin;
mod producer_restore;
mod property;
#[cfg(feature = "cli")]
mod python;
mod readiness;
mod refresh_listener;
mod resilience;
#[cfg(feature = "cli")]
mod serve;
#[cfg(feature = "cli")]
mod soak;
mod state_checksum;
mod type_filter;
#[cfg(feature = "cli")]
mod verify;
#[cfg(target_os = "linux")]
mod warm_up;
mod work_dir;
