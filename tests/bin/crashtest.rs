//! The process the crash tests (tests/crash.rs) kill: burrow's real
//! producer and consumer code, run against a local store, with failpoints
//! armed by `BURROW_FAILPOINT` (see `burrow::testing::failpoint`).
//!
//! ```text
//! burrow-crashtest produce <store-dir> <from-generation> <to-generation> [incremental]
//! burrow-crashtest consume <store-dir> <cache-dir>
//! ```
//!
//! `produce` restores from the store and publishes generations `from..=to`
//! of the crash model, printing `published <generation> <version>` after
//! each. With `incremental`, each generation `g` is published by an
//! incremental cycle of the changes from generation `g - 1` to `g` (a
//! producer with no state publishes its first generation by a full cycle).
//! Applied in order from any state between `from - 1` and `to`, these
//! changes end at generation `to`: each key ends with the value of the
//! last generation that changed it. `consume` refreshes a consumer to the announced version and prints
//! `at <version>`.

#[path = "crash_model.rs"]
mod crash_model;

use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::producer::ProducerBuilder;
use burrow::schema::examples::movies_capnp::movie;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match args.get(1).map(String::as_str) {
        Some("produce") if args.len() == 5 || args.len() == 6 => runtime.block_on(produce(
            &args[2],
            args[3].parse().expect("from generation"),
            args[4].parse().expect("to generation"),
            args.get(5).map(String::as_str) == Some("incremental"),
        )),
        Some("consume") if args.len() == 4 => runtime.block_on(consume(&args[2], &args[3])),
        _ => {
            eprintln!(
                "usage: burrow-crashtest produce <store> <from> <to> [incremental] | consume <store> \
                 <cache>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The producer's multipart part size: its blobs (about 1 KB) each go up
/// in two or three parts, so that kills land between parts
/// (`after-upload-part`) in every kind of cycle. A local store takes parts
/// of any size; S3's 5 MiB minimum is not in play.
const PART_SIZE: usize = 512;

async fn produce(store: &str, from: u64, to: u64, incremental: bool) -> burrow::Result<()> {
    let store = BlobStore::local(store)?.with_upload_options(burrow::blobstore::UploadOptions {
        part_size: PART_SIZE,
        ..Default::default()
    });
    let producer = ProducerBuilder::new(store)
        .producer_id("crash")
        .snapshot_every(3)
        .primary_key::<movie::Owned>(&["id"])
        .build()?;
    let mut has_state = producer.restore().await?.is_some();
    for g in from..=to {
        let model = crash_model::generation(g);
        if incremental && has_state {
            let before = crash_model::generation(g.saturating_sub(1));
            let report = producer
                .run_incremental_cycle(|inc| {
                    for (id, movie) in &model {
                        if before.get(id) != Some(movie) {
                            inc.upsert::<movie::Owned>(|m| {
                                movie.fill(m);
                                Ok(())
                            })?;
                        }
                    }
                    for id in before.keys().filter(|id| !model.contains_key(id)) {
                        inc.delete::<movie::Owned, _>(id)?;
                    }
                    Ok(())
                })
                .await?;
            println!("published {g} {}", report.version);
            continue;
        }
        has_state = true;
        let report = producer
            .run_cycle(|p| {
                for movie in model.values() {
                    p.add::<movie::Owned>(|m| {
                        movie.fill(m);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await?;
        println!("published {g} {}", report.version);
    }
    Ok(())
}

async fn consume(store: &str, cache: &str) -> burrow::Result<()> {
    let consumer = ConsumerBuilder::new(BlobStore::local(store)?)
        .cache_dir(cache)
        .build()?;
    consumer.refresh().await?;
    println!("at {}", consumer.version().unwrap_or(0));
    Ok(())
}
