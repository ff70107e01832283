//! The command line as typed: raw clap structs, validated by nothing but
//! their types. [`crate::config`] turns them into what the commands run on;
//! no other module looks at these.

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Publish and inspect burrow datasets.
#[derive(Debug, Parser)]
#[command(name = "burrow", version, about, propagate_version = true)]
pub struct Args {
    /// Where the dataset lives: a directory, a file:// URL, or s3://bucket/prefix
    /// (S3 needs the `s3` feature; settings come from the AWS_* variables).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "./burrow-data"
    )]
    pub store: String,

    /// Print one JSON object per line instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Each has its own argument struct and its own module.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish the Movie workload into the store and follow it with a consumer.
    Demo(DemoArgs),
    /// List the announcement log.
    Versions(VersionsArgs),
    /// Show one blob of a version: envelope, header and per-type counts.
    Inspect(InspectArgs),
    /// Run the anchor workload end to end and print its figures with
    /// their baselines.
    Bench(crate::bench::BenchArgs),
    /// Follow the store with a consumer: print each version it reaches and
    /// each change of its health, until interrupted.
    Follow(FollowArgs),
    /// Check every blob in the store and the announcement log; print each
    /// problem with the blob's name and fail if there is any.
    Verify(crate::verify::VerifyArgs),
    /// Hold consumers at an announced version (they follow reverse deltas
    /// back) until `burrow unpin`.
    Pin(PinArgs),
    /// Release a pin: consumers follow the newest announced version again.
    Unpin(UnpinArgs),
}

#[derive(Debug, ClapArgs)]
pub struct PinArgs {
    /// The announced version to hold consumers at.
    #[arg(value_name = "VERSION")]
    pub target: String,
}

#[derive(Debug, ClapArgs)]
pub struct UnpinArgs {}

#[derive(Debug, ClapArgs)]
pub struct FollowArgs {
    /// Where the consumer keeps its blobs [default: burrow-cache/<store
    /// name>-follow beside a local store].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<std::path::PathBuf>,

    /// Time between polls of the announcement log, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
}

#[derive(Debug, ClapArgs)]
pub struct DemoArgs {
    /// Records in the first cycle (N).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub records: u64,

    /// Cycles to run.
    #[arg(long, value_name = "C", default_value_t = 5)]
    pub cycles: u64,

    /// Fraction of records changed by each cycle after the first.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.01,
        allow_negative_numbers = true
    )]
    pub change: f64,

    /// Fraction of keys removed, and of new keys added, by each cycle after
    /// the first.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.001,
        allow_negative_numbers = true
    )]
    pub churn: f64,

    /// The consumer's blob cache [default: burrow-cache/STORE_NAME beside
    /// the store].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct VersionsArgs {}

#[derive(Debug, ClapArgs)]
pub struct InspectArgs {
    /// The announced version to inspect.
    #[arg(value_name = "VERSION")]
    pub target: String,

    /// Which blob [default: the snapshot if the version has one, else its
    /// delta].
    #[arg(long, value_enum)]
    pub blob: Option<BlobArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BlobArg {
    Snapshot,
    Delta,
    Reverse,
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions only in debug builds, at parse time.
    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
