//! Running the producer's blocking work (the caller's populate closure,
//! identifying records, building blobs, verifying and applying blobs on
//! restore) without holding a tokio worker thread, so that other tasks of
//! the process keep running while a long cycle computes.
//!
//! Why `block_in_place` and not `spawn_blocking`: the work borrows. The
//! populate closure is the caller's `FnOnce(&mut Populate<'_>)`, which
//! borrows from the caller's stack (the README's and the tests' closures
//! capture their data by reference); requiring `F: Send + 'static` would
//! break that API. Identifying and blob writing borrow the last announced
//! state, which lives under the producer's mutex guard: moving it into a
//! `'static` task would take it out of the mutex across an await, to be put
//! back on every path (and lost if the task panicked).
//!
//! So, on a multi-thread runtime, the work runs in `block_in_place`: the
//! worker hands its queued tasks to another worker thread first. A
//! current-thread runtime has no other thread to hand them to
//! (`block_in_place` would panic there), so the work runs inline: the
//! runtime's only thread is busy for its duration, which is what a caller
//! that chose that runtime gets. Outside any runtime, it runs inline too.
//!
//! The local store's file writes, renames and fsyncs are not here: the
//! local backend (object_store's `LocalFileSystem`) already runs each one
//! on tokio's blocking pool (`spawn_blocking`).

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` off the tokio worker threads where the runtime allows it
/// (see the module doc).
pub(super) fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
