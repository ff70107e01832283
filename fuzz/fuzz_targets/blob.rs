//! Fuzz target `blob`: see `burrow::fuzzing::blob` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::fuzzing::blob(data));
