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
    /// Publish the records of a JSON Lines or CSV file (gzip or zstd too)
    /// as the dataset's next version, with no code: the record type's
    /// schema is compiled at run time.
    Publish(PublishArgs),
    /// List the announcement log.
    Versions(VersionsArgs),
    /// Show one blob of a version: envelope, header and per-type counts.
    Inspect(InspectArgs),
    /// Run the anchor workload end to end and print its figures with
    /// their baselines.
    Bench(BenchArgs),
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
    /// Apply a retention policy: delete the blobs no retained version needs
    /// (after a grace period) and print each deletion and why.
    Gc(GcArgs),
    /// Print the dataset's own record types as Cap'n Proto source; with
    /// --capnp, the schema file with which `capnp decode` prints every
    /// record of a snapshot or delta body.
    Schema(SchemaArgs),
    /// Print a version's records as JSON lines, read through the schema
    /// its blobs carry (no generated code needed).
    // `--version` here is the dataset's version, not burrow's.
    #[command(disable_version_flag = true)]
    Dump(DumpArgs),
    /// Show the records added, removed and changed between two versions,
    /// matched by primary key, with the fields that changed.
    Diff(DiffArgs),
    /// Show one record at every retained version where it changed.
    History(HistoryArgs),
    /// Serve a web explorer of the store (timeline, types, records, diffs,
    /// histories, health), following it as a consumer does, until
    /// interrupted.
    Serve(ServeArgs),
}

/// Where `dump`, `diff`, `history` and `schema` keep the blobs they fetch.
#[derive(Debug, ClapArgs)]
pub struct ExploreCacheArgs {
    /// A cache directory of this command's own [default:
    /// burrow-cache/<store name>-explore beside a local store]; never a
    /// running consumer's (it is locked).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct DumpArgs {
    /// The announced version [default: the newest].
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// The record type: its name (`Movie`) or full name; may be left out
    /// when the dataset has one type.
    #[arg(long = "type", value_name = "T")]
    pub type_name: Option<String>,
    /// Only the record with this primary key: `42`, `bash`, or
    /// `field=value,field2=value2` for a key of several fields.
    #[arg(
        long,
        value_name = "K",
        conflicts_with = "ordinal",
        allow_hyphen_values = true
    )]
    pub key: Option<String>,
    /// Only the record at this ordinal.
    #[arg(long, value_name = "O")]
    pub ordinal: Option<String>,
    /// At most this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,
    /// Print only this field of each record: a path such as `title`,
    /// `tags.0` or `location.row`.
    #[arg(long, value_name = "PATH")]
    pub field: Option<String>,
    #[command(flatten)]
    pub cache: ExploreCacheArgs,
}

#[derive(Debug, ClapArgs)]
pub struct DiffArgs {
    /// The version to compare from.
    #[arg(value_name = "A")]
    pub from: String,
    /// The version to compare to.
    #[arg(value_name = "B")]
    pub to: String,
    /// Only this record type.
    #[arg(long = "type", value_name = "T")]
    pub type_name: Option<String>,
    /// Records listed per type and kind of change in the table (the counts
    /// are always whole; --json lists every record).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub cache: ExploreCacheArgs,
}

#[derive(Debug, ClapArgs)]
pub struct HistoryArgs {
    /// The record type (may be left out when the dataset has one type).
    #[arg(long = "type", value_name = "T")]
    pub type_name: Option<String>,
    /// The record's primary key, as `dump --key` takes it.
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub key: String,
    #[command(flatten)]
    pub cache: ExploreCacheArgs,
}

#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// Where to listen (IP:PORT; port 0 picks a free port, printed at
    /// start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// The server's caches, `consumer/` and `explorer/` under this
    /// directory [default: burrow-cache/<store name>-serve beside a local
    /// store]; never a running consumer's (each is locked).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Time between polls of the announcement log, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
}

#[derive(Debug, ClapArgs)]
pub struct SchemaArgs {
    /// Print the Cap'n Proto schema file that decodes whole blob bodies
    /// (burrow's own structs with the records typed) instead of the
    /// dataset's types alone.
    #[arg(long)]
    pub capnp: bool,

    #[command(flatten)]
    pub cache: ExploreCacheArgs,

    /// Read the types from this blob file (a consumer's cache file or a
    /// stored object, zstd-compressed or not) instead of the store's latest
    /// snapshot.
    #[arg(value_name = "BLOB_FILE")]
    pub blob: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct PinArgs {
    /// The announced version to hold consumers at.
    #[arg(value_name = "VERSION")]
    pub target: String,

    /// Publish a notification of each entry written on this channel:
    /// redis://HOST:PORT[/DB][?channel=NAME] or nats://HOST:PORT[?subject=NAME]
    /// (consumers following with the same --notify learn of it at once).
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct UnpinArgs {
    /// Publish a notification of each entry written on this channel:
    /// redis://HOST:PORT[/DB][?channel=NAME] or nats://HOST:PORT[?subject=NAME]
    /// (consumers following with the same --notify learn of it at once).
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct GcArgs {
    /// Print what would be deleted, and why, without deleting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// How many of the newest announced versions stay reachable [default:
    /// 10].
    #[arg(long, value_name = "N")]
    pub keep: Option<String>,

    /// How long a blob outlives the last retained version that needed it
    /// (and how old an unannounced blob must be), such as 30s, 10m, 1h or
    /// 2d [default: 15m].
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,

    /// Also keep the oldest snapshot of every span of N versions below the
    /// retained ones [default: none].
    #[arg(long, value_name = "N")]
    pub snapshot_spacing: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct FollowArgs {
    /// Where the consumer keeps its blobs [default: burrow-cache/<store
    /// name>-follow beside a local store].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<std::path::PathBuf>,

    /// Time between polls of the announcement log, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,

    /// Bytes of blobs the cache keeps beyond what the current state maps,
    /// as a number of bytes or with a unit (KiB, MiB, GiB, TiB; KB, MB,
    /// GB, TB) [default: 2GiB].
    #[arg(long, value_name = "SIZE")]
    pub cache_max_bytes: Option<String>,

    /// Blob files the cache keeps beyond what the current state maps
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub cache_max_files: Option<String>,

    /// How long to wait for the first state before reporting what the
    /// consumer waits for (reported again after each such wait), in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub ready_timeout_ms: u64,

    /// Serve the metrics in the Prometheus text format at
    /// http://ADDR/metrics (IP:PORT; port 0 picks a free port, printed at
    /// start).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Listen for pushed announcements on this channel:
    /// redis://HOST:PORT[/DB][?channel=NAME] or
    /// nats://HOST:PORT[?subject=NAME]. A notification makes the consumer
    /// read the log at once; it polls every --interval-ms while the channel
    /// is healthy and every --fallback-interval-ms while it is down or
    /// silent.
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,

    /// Time between polls while the notification channel is down or
    /// silent, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000, requires = "notify")]
    pub fallback_interval_ms: u64,
}

#[derive(Debug, ClapArgs)]
pub struct DemoArgs {
    /// Records in the first cycle (N).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub records: u64,

    /// Cycles to run.
    #[arg(long, value_name = "C", default_value_t = 5)]
    pub cycles: u64,

    #[command(flatten)]
    pub changes: ChangeArgs,

    /// Fraction of keys removed, and of new keys added, by each cycle after
    /// the first.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.001,
        allow_negative_numbers = true
    )]
    pub churn: f64,

    /// Leave retention to `burrow gc`: the producer deletes nothing after
    /// its announcements.
    #[arg(long)]
    pub no_gc: bool,

    /// The consumer's blob cache [default: burrow-cache/STORE_NAME beside
    /// the store].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// How the producer stores blobs: zstd (level 1), zstd:LEVEL (1 to 19)
    /// or none. Consumers read every setting.
    #[arg(long, value_name = "zstd[:LEVEL]|none", default_value = "zstd:1")]
    pub compression: String,

    /// Publish a notification of each version announced on this channel:
    /// redis://HOST:PORT[/DB][?channel=NAME] or nats://HOST:PORT[?subject=NAME]
    /// (consumers following with the same --notify learn of it at once).
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
}

/// Arguments of `burrow publish`.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Each run publishes the file as the whole dataset: a record left out of \
it is removed, and a second run with a changed file publishes a delta on the same chain. \
Nothing is announced for a file with any error."
)]
pub struct PublishArgs {
    /// The record type's schema: a .capnp file, compiled here by the Cap'n
    /// Proto compiler the build uses, or a compiled schema (the
    /// CodeGeneratorRequest of `capnp compile -o-`).
    #[arg(long, value_name = "FILE")]
    pub schema: PathBuf,

    /// The record type: its name in the schema (`Movie`, `Outer.Inner`)
    /// or its full name (`movies.capnp:Movie`).
    #[arg(long = "type", value_name = "T")]
    pub type_name: String,

    /// The primary key: a field, or several comma-separated (`id`,
    /// `shelf,slot`); integers, bools, enums, text or data, outside
    /// unions.
    #[arg(long, value_name = "FIELDS")]
    pub key: String,

    /// The records: JSON Lines (an object per line) or CSV (a header row
    /// naming the fields), each optionally gzip- or zstd-compressed.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,

    /// The input's format [default: by its extension: .jsonl, .ndjson or
    /// .json, or .csv, before any .gz or .zst].
    #[arg(long, value_enum)]
    pub format: Option<InputFormatArg>,

    /// Skip fields the record type does not have (by default a file with
    /// one is refused).
    #[arg(long)]
    pub ignore_unknown_fields: bool,

    /// Name the schema's nodes relative to this directory (as a build's
    /// `src_prefix`) [default: the schema file's directory].
    #[arg(long, value_name = "DIR")]
    pub src_prefix: Option<PathBuf>,

    /// A directory searched for absolute imports (`import "/x.capnp"`);
    /// may be given more than once.
    #[arg(long, value_name = "DIR")]
    pub import_path: Vec<PathBuf>,

    /// How the producer stores blobs: zstd (level 1), zstd:LEVEL (1 to 19)
    /// or none. Consumers read every setting.
    #[arg(long, value_name = "zstd[:LEVEL]|none", default_value = "zstd:1")]
    pub compression: String,

    /// Leave retention to `burrow gc`: delete nothing after the
    /// announcement.
    #[arg(long)]
    pub no_gc: bool,

    /// Publish the file's records as upserts on the last announced
    /// version (an incremental cycle: records not in the file stay), instead
    /// of as the whole dataset.
    #[arg(long)]
    pub incremental: bool,

    /// With --incremental: a file (same format rules as --input) whose
    /// records give the keys to delete; only their key fields are read.
    #[arg(long, value_name = "FILE", requires = "incremental")]
    pub deletes: Option<PathBuf>,
}

/// The formats `burrow publish` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormatArg {
    Jsonl,
    Csv,
}

#[derive(Debug, ClapArgs)]
pub struct VersionsArgs {
    /// Show the newest N entries, read back from the newest (a log of a
    /// million entries is not read whole) [default: 100].
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub last: Option<String>,

    /// Show every entry, from the first (reads the whole log).
    #[arg(long)]
    pub all: bool,
}

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

/// The workload's per-cycle change, as `demo` and `bench` take it.
#[derive(Debug, ClapArgs)]
pub struct ChangeArgs {
    /// Fraction of records changed by each cycle after the first (f).
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.01,
        allow_negative_numbers = true
    )]
    pub change: f64,
}

/// Arguments of `burrow bench`, as typed; [`crate::config`] validates them
/// into a `BenchConfig`.
#[derive(Debug, ClapArgs)]
pub struct BenchArgs {
    /// Records in the dataset (N).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub records: u64,
    #[command(flatten)]
    pub changes: ChangeArgs,
    /// Also remove and add this fraction of keys each cycle (0.001 when
    /// given without a value).
    #[arg(
        long,
        value_name = "F",
        num_args = 0..=1,
        default_missing_value = "0.001",
        allow_negative_numbers = true
    )]
    pub churn: Option<f64>,
    /// Runs per figure [default: 5 for in-process figures, 3 for figures
    /// that need a process of their own].
    #[arg(long, value_name = "R")]
    pub runs: Option<usize>,
    /// Runs of the process figures (producer, consumer open), overriding
    /// `--runs`.
    #[arg(long, value_name = "R")]
    pub process_runs: Option<usize>,
    /// Random key lookups timed per run.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub lookups: usize,
    /// Seed of the generator that picks changed records and lookup keys.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Works in this new directory, removed at the end unless `--keep`
    /// [default: a new one under the system's temporary directory]. An
    /// existing directory must be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keeps the working directory.
    #[arg(long)]
    pub keep: bool,
    /// Which figures: the anchor workload's and the read-service load's
    /// (`all`), one of them, or the soak (many refreshes; memory, mapped
    /// regions and descriptors measured along the way).
    #[arg(long, value_enum, default_value_t = SuiteArg::All)]
    pub suite: SuiteArg,
    /// Seconds of lookups per run of each load figure (idle, refreshing,
    /// after swaps).
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    pub load_seconds: f64,
    /// Refreshes the soak runs.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub refreshes: u64,
    /// Internal: run as one of a bench run's child processes.
    #[arg(long, hide = true, value_enum)]
    pub child: Option<ChildMode>,
    #[arg(long, hide = true, default_value_t = 1)]
    pub snapshot_every: u32,
    #[arg(long, hide = true, default_value_t = 0)]
    pub t0_ns: u128,
    #[arg(long, hide = true, default_value_t = 0)]
    pub lookup_id: u64,
    #[arg(long = "at-version", hide = true, default_value_t = 0)]
    pub at_version: u64,
    #[arg(long, hide = true)]
    pub blob: Option<PathBuf>,
}

/// The figure sets of `burrow bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuiteArg {
    All,
    Anchor,
    Load,
    Soak,
}

/// The hidden child processes of a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChildMode {
    Produce,
    Open,
    Decode,
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
