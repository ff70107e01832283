//! The process the crash tests (tests/crash.rs) kill: burrow's real
//! producer and consumer code, run against a local store, with failpoints
//! armed by `BURROW_FAILPOINT` (see `burrow::testing::failpoint`).
//!
//! ```text
//! burrow-crashtest produce <store-dir> <from-generation> <to-generation>
//! burrow-crashtest consume <store-dir> <cache-dir>
//! ```
//!
//! `produce` restores from the store and publishes generations `from..=to`
//! of the crash model, printing `published <generation> <version>` after
//! each. `consume` refreshes a consumer to the announced version and prints
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
        Some("produce") if args.len() == 5 => runtime.block_on(produce(
            &args[2],
            args[3].parse().expect("from generation"),
            args[4].parse().expect("to generation"),
        )),
        Some("consume") if args.len() == 4 => runtime.block_on(consume(&args[2], &args[3])),
        _ => {
            eprintln!(
                "usage: burrow-crashtest produce <store> <from> <to> | consume <store> <cache>"
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

async fn produce(store: &str, from: u64, to: u64) -> burrow::Result<()> {
    let store = BlobStore::local(store)?;
    let producer = ProducerBuilder::new(store)
        .producer_id("crash")
        .snapshot_every(3)
        .primary_key::<movie::Owned>(&["id"])
        .build()?;
    producer.restore().await?;
    for g in from..=to {
        let model = crash_model::generation(g);
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
