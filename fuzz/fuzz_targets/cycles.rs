//! Fuzz target `cycles`: see `burrow::testing::fuzzing::cycles` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::testing::fuzzing::cycles(data));
