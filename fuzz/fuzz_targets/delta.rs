//! Fuzz target `delta`: see `burrow::testing::fuzzing::delta` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::testing::fuzzing::delta(data));
