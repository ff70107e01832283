//! burrow's integration tests: one binary.

mod conformance;
