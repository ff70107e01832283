//! Fuzz target `delta`: see `burrow::fuzzing::delta` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow::fuzzing::delta(data));
