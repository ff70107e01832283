//! Fuzz target `announcement`: see `burrow::testing::fuzzing::announcement` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::testing::fuzzing::announcement(data));
