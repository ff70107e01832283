//! Fuzz target `cycles`: see `burrow::fuzzing::cycles` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::fuzzing::cycles(data));
