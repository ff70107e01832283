//! burrow's integration tests: one binary.

#[cfg(feature = "cli")]
mod bench_smoke;
#[cfg(feature = "cli")]
mod cli;
mod common;
mod conformance;
mod e2e;
mod failure;
mod hostile;
mod property;
mod resilience;
