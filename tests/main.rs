//! burrow's integration tests: one binary.

mod common;
mod conformance;
mod e2e;
mod failure;
#[cfg(feature = "fuzzing")]
mod fuzz_seeds;
mod hostile;
mod property;
mod resilience;
