//! burrow's integration tests: one binary.
#[cfg(feature = "cli")]
mod bench_smoke;
mod common;
mod e2e;
