//! The producer's retention step: after each announcement, a background
//! task applies the dataset's [`RetentionPolicy`] (see [`crate::gc`]).
//!
//! It never fails or holds up a cycle: it runs on its own task, one run at
//! a time (an announcement made while a run is still going starts none),
//! and its errors are logged at warn level, counted in
//! `burrow_producer_gc_failures_total` and kept as the outcome that the
//! next [`CycleReport`](super::CycleReport) carries in `last_gc` and
//! [`Producer::last_gc`](super::Producer::last_gc) returns. Blob ages and
//! the grace window are read against the system clock, like the store's
//! last-modified times.

use crate::announcer::AnnouncementLog;
use crate::gc::{GcError, GcReport, RetentionPolicy};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The outcome of one background retention run.
#[derive(Debug, Clone)]
pub struct GcOutcome {
    /// The version whose announcement started the run.
    pub after_version: u64,
    /// What the run deleted and kept, or why it stopped.
    pub result: Result<GcReport, Arc<GcError>>,
}

/// The producer's background retention runs.
#[derive(Default)]
pub(super) struct RetentionStep {
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
    last: Arc<Mutex<Option<GcOutcome>>>,
}

impl RetentionStep {
    /// Starts a run after the announcement of `version`, unless one is
    /// still running or no tokio runtime is there to run it.
    pub(super) fn start(&self, log: &AnnouncementLog, policy: RetentionPolicy, version: u64) {
        let mut running = self.running.lock().expect("retention task lock");
        if running.as_ref().is_some_and(|t| !t.is_finished()) {
            tracing::debug!(version, "retention still running; not starting another");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (log, last) = (log.clone(), Arc::clone(&self.last));
        *running = Some(runtime.spawn(async move {
            let result =
                crate::gc::collect_garbage_in(&log, &policy, SystemTime::now(), false).await;
            match &result {
                Ok(report) => tracing::info!(
                    after_version = version,
                    deleted = report.deleted.len(),
                    deleted_bytes = report.deleted_bytes(),
                    kept_bytes = report.kept_bytes,
                    "retention ran"
                ),
                Err(error) => {
                    metrics::counter!("burrow_producer_gc_failures_total").increment(1);
                    tracing::warn!(after_version = version, %error, "retention failed; the next announcement tries again");
                }
            }
            *last.lock().expect("retention outcome lock") = Some(GcOutcome {
                after_version: version,
                result: result.map_err(Arc::new),
            });
        }));
    }

    /// The outcome of the last run that finished.
    pub(super) fn last(&self) -> Option<GcOutcome> {
        self.last.lock().expect("retention outcome lock").clone()
    }

    /// Waits for the run in progress, if any, and returns the last outcome.
    pub(super) async fn wait(&self) -> Option<GcOutcome> {
        let task = self.running.lock().expect("retention task lock").take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the retention task did not finish");
            }
        }
        self.last()
    }
}
