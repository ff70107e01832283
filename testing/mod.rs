//! burrow's test tools, out of the default public API: each part is behind
//! a cargo feature, and none of it is compiled into a plain library build
//! except the failpoint hook, which compiles to nothing without its feature.
//!
//! | part | feature | what |
//! | --- | --- | --- |
//! | `FaultyStore` (`faults`) | `testing` | an `ObjectStore` decorator that fails, hangs or loses answers on command |
//! | `ManualClock` | `testing` | a `Clock` whose time moves only when the test advances it |
//! | [`workload`] | `workload` (on with `testing` and `cli`) | the anchor workload's `Movie` records and its seeded per-cycle changes: one generator for `burrow demo`, `burrow bench`, the benches and the tests |
//! | `fuzzing` | `fuzzing` | the bodies of the fuzz targets in `fuzz/`, also run by the tests over the seed corpus |
//! | `failpoint` | `failpoints` | named points where the crash tests kill the process; library code calls `crate::failpoint::hit` |
//!
//! Invariants: nothing here is reachable from production code paths except
//! `failpoint::hit`, which is an empty inline function unless the
//! `failpoints` feature is on. The tools sit above the library (they may use
//! the producer, the consumer and the stores); the library never imports
//! them.

#[cfg(any(test, feature = "testing"))]
mod clock;
#[cfg(any(test, feature = "testing"))]
pub mod faults;
#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
#[cfg(any(test, feature = "testing"))]
pub use faults::{FaultError, FaultyStore, Op};

// Always compiled: library code calls `crate::failpoint::hit` (re-exported
// at the crate root). Public only with the feature.
#[cfg(feature = "failpoints")]
pub mod failpoint;
#[cfg(not(feature = "failpoints"))]
#[allow(dead_code)]
pub(crate) mod failpoint;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(feature = "workload")]
pub mod workload;
