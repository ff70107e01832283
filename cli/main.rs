//! The `burrow` binary: thin. It parses the command line ([`args`]),
//! validates it into settings in one conversion ([`config`]), and calls the
//! library. Every failure is one line on stderr and a non-zero exit code; a
//! closed stdout (`burrow versions | head`) is a quiet, successful exit.
//!
//! `publish` ([`publish`]) is the one command that writes records: a
//! producer cycle from a JSON Lines or CSV file, through a schema compiled
//! at run time.
//!
//! Adding a subcommand: a variant and an argument struct in [`args`], a
//! `Task` variant and its checks in [`config`], a module that runs it, and
//! one arm in [`run`].

mod args;
mod bench;
mod config;
mod demo;
mod diff;
mod dump;
mod follow;
mod gc;
mod history;
mod inspect;
mod output;
mod pin;
mod publish;
mod schema;
mod serve;
mod verify;
mod versions;

use anyhow::{Context, Result};
use clap::Parser;
use config::{Global, Task};
use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match args::Args::try_parse() {
        Ok(args) => args,
        Err(e) => return clap_exit(&e),
    };
    match config::from_args(args).and_then(|(global, task)| run(&global, task)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(global: &Global, task: Task) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = output::Out::stdout(global.json);
    runtime.block_on(async {
        match task {
            Task::Demo(cfg) => demo::run(&cfg, global.store.open().await?, &mut out).await,
            Task::Publish(cfg) => publish::run(&cfg, global.store.open().await?, &mut out).await,
            Task::Versions(last) => {
                versions::run(last, global.store.open_existing().await?, &mut out).await
            }
            Task::Inspect(cfg) => {
                inspect::run(&cfg, global.store.open_existing().await?, &mut out).await
            }
            Task::Bench(args) => bench::run(*args).await,
            Task::Follow(cfg) => {
                let store = global.store.open_existing_for_resilience().await?;
                follow::run(&cfg, store, &mut out).await
            }
            Task::Verify => verify::run(global.store.open_existing().await?, &mut out).await,
            Task::Pin(version, notify) => {
                let store = global.store.open_existing().await?;
                pin::pin(version, store, notify, &mut out).await
            }
            Task::Unpin(notify) => {
                let store = global.store.open_existing().await?;
                pin::unpin(store, notify, &mut out).await
            }
            Task::Gc(cfg) => gc::run(&cfg, global.store.open_existing().await?, &mut out).await,
            Task::Schema(cfg) => match &cfg.blob {
                Some(file) => schema::from_file(file, cfg.capnp, &mut out).await,
                None if cfg.capnp => {
                    schema::from_store(global.store.open_existing().await?, &mut out).await
                }
                None => {
                    let store = global.store.open_existing().await?;
                    schema::dataset_from_store(store, &cfg.cache, &mut out).await
                }
            },
            Task::Dump(cfg) => dump::run(&cfg, global.store.open_existing().await?, &mut out).await,
            Task::Diff(cfg) => diff::run(&cfg, global.store.open_existing().await?, &mut out).await,
            Task::History(cfg) => {
                history::run(&cfg, global.store.open_existing().await?, &mut out).await
            }
            Task::Serve(cfg) => {
                let store = global.store.open_existing().await?;
                serve::run(cfg, store, &mut out).await
            }
        }
    })
}

/// Help and version go to stdout with success; usage errors are clap's
/// message folded onto one line, with exit code 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = write!(io::stdout(), "{}", e.render());
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = write!(io::stderr(), "{}", e.render());
        return ExitCode::from(2);
    }
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let _ = writeln!(
        io::stderr(),
        "{} (see burrow --help)",
        first.join(" ").trim_end_matches(':')
    );
    ExitCode::from(2)
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (library errors often repeat their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
