//! burrow's integration tests: one binary.

#[cfg(feature = "cli")]
mod bench_smoke;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod cli_cache_lock;
mod common;
mod conformance;
mod consumer_cache;
mod consumer_outage;
#[cfg(feature = "failpoints")]
mod crash;
mod e2e;
mod failure;
mod full_disk;
#[cfg(feature = "fuzzing")]
mod fuzz_seeds;
mod hostile;
mod hostile_records;
mod limits;
mod property;
mod resilience;
#[cfg(feature = "cli")]
mod verify;
