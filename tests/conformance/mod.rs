//! The conformance suites: every behaviour of the blob store and of the
//! announcement log is one async function in `store_cases` or
//! `announce_cases`, and the `conformance!` macro runs every one of them on
//! every backend: in-memory, a local directory, and a real S3 server
//! (moto, when built with `--features s3`, started by the tests
//! themselves: see `moto`). A backend cannot skip a case:
//! the case list is written once, for all backends. Each run works under a
//! random prefix of its own.
//!
//! Test names are `conformance::<backend>::<case>`, so
//! `cargo test --test integration conformance::memory` runs one backend.

mod announce_cases;
#[cfg(feature = "s3")]
pub(crate) mod moto;
#[cfg(feature = "s3")]
mod roles;
#[cfg(feature = "s3")]
mod s3;
mod store_cases;
pub(crate) mod support;

use support::Backend;

macro_rules! conformance {
    ($($suite:ident :: $case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $suite::$case(&Backend::memory()).await;
                }
            )*
        }

        mod local {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $suite::$case(&Backend::local()).await;
                }
            )*
        }

        /// Every case again through `Retry(CircuitBreaker(store))`.
        mod resilient_memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $suite::$case(&Backend::memory().resilient()).await;
                }
            )*
        }

        mod resilient_local {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $suite::$case(&Backend::local().resilient()).await;
                }
            )*
        }

        #[cfg(feature = "s3")]
        mod s3_server {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $suite::$case(&Backend::s3().await).await;
                }
            )*
        }
    };
}

conformance!(
    store_cases::put_get_list,
    store_cases::create_refuses_to_overwrite,
    store_cases::missing_blob_is_not_found,
    store_cases::large_blob_round_trips_through_multipart,
    store_cases::large_blob_is_create_only,
    store_cases::small_blob_through_writer_is_one_put,
    store_cases::producer_uploads_a_large_snapshot_in_parts,
    store_cases::racing_producers_never_announce_each_others_large_blob,
    store_cases::aborted_writer_creates_nothing,
    store_cases::fetch_verifies_and_rejects_corrupt_blobs,
    store_cases::sweep_removes_only_leftover_uploads,
    store_cases::check_accepts_a_working_store,
    announce_cases::append_then_latest,
    announce_cases::concurrent_appenders_have_one_winner,
    announce_cases::append_is_idempotent_for_its_own_entry,
    announce_cases::idle_watcher_poll_is_one_get,
    announce_cases::stale_hint_is_probed_past,
    announce_cases::missing_hint_falls_back_to_list,
    announce_cases::corrupt_hint_is_ignored,
    announce_cases::corrupt_entry_is_a_format_error,
    announce_cases::pins_and_unpins,
);
