//! Fuzz target `blob`: see `burrow::testing::fuzzing::blob` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::testing::fuzzing::blob(data));
