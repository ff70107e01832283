//! The one conversion from raw arguments ([`crate::args`]) to validated
//! settings. Every check of an argument's meaning lives here, and each
//! failure is one line that names the argument and what is wrong with it.

use crate::args::{
    Args, BenchArgs, BlobArg, ChildMode, Command, DemoArgs, DiffArgs, DumpArgs, ExploreCacheArgs,
    FollowArgs, GcArgs, HistoryArgs, InputFormatArg, InspectArgs, PinArgs, PublishArgs, SchemaArgs,
    ServeArgs, SuiteArg, VersionsArgs,
};
use anyhow::{bail, Context, Result};
use burrow::blobstore::{BlobStore, CacheRetention, Compression, StoreOptions, StoreUrl};
use burrow::notify::NotifyChannel;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Upper bound on `--records`: ordinals are u32 and a Cap'n Proto list holds
/// under 2^29 elements.
pub const MAX_RECORDS: u64 = (1 << 29) - 1;

/// Where the dataset lives: the `--store` URL, parsed by the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    url: String,
    parsed: StoreUrl,
}

impl StoreLocation {
    pub fn parse(raw: &str) -> Result<Self> {
        let parsed = StoreUrl::parse(raw).context("invalid --store")?;
        Ok(StoreLocation {
            url: raw.to_string(),
            parsed,
        })
    }

    /// Opens the store (creating a local directory if it is missing) and
    /// checks that it answers.
    pub async fn open(&self) -> Result<BlobStore> {
        BlobStore::connect(&self.url, &StoreOptions::default())
            .await
            .with_context(|| format!("cannot open store {}", self.url))
    }

    /// Opens a store that must already exist with object_store's own
    /// retries off, for a caller that wraps it in burrow's retry decorator
    /// (`burrow follow`): only one layer retries.
    pub async fn open_existing_for_resilience(&self) -> Result<BlobStore> {
        self.check_exists()?;
        let options = StoreOptions {
            retry: burrow::blobstore::RetryOptions::none(),
            ..StoreOptions::default()
        };
        BlobStore::connect(&self.url, &options)
            .await
            .with_context(|| format!("cannot open store {}", self.url))
    }

    fn check_exists(&self) -> Result<()> {
        if let Some(dir) = self.local_dir() {
            if !dir.is_dir() {
                bail!(
                    "store {} does not exist (run `burrow demo` to make one, or pass --store)",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// Opens a store that must already exist (for commands that only read).
    pub async fn open_existing(&self) -> Result<BlobStore> {
        if let Some(dir) = self.local_dir() {
            // A file is not "missing": `open` says it is a file.
            if !dir.exists() {
                bail!(
                    "store {} does not exist (run `burrow demo` to make one, or pass --store)",
                    dir.display()
                );
            }
        }
        self.open().await
    }

    /// The directory of a local store.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.parsed {
            StoreUrl::Local(dir) => Some(dir),
            _ => None,
        }
    }

    /// The demo's default cache: `burrow-cache/<store name>` beside a local
    /// store, or `./burrow-cache/<bucket>/<prefix>` for a remote one. One
    /// directory per store, because a cache knows blobs by name only: two
    /// stores sharing one would read each other's `snapshot/1`.
    fn default_cache(&self) -> PathBuf {
        match &self.parsed {
            StoreUrl::Local(dir) => {
                let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
                let name = dir
                    .file_name()
                    .map_or_else(|| "store".into(), |n| n.to_os_string());
                parent
                    .unwrap_or(Path::new("."))
                    .join("burrow-cache")
                    .join(name)
            }
            StoreUrl::S3 { bucket, prefix } => {
                let mut dir = PathBuf::from("./burrow-cache").join(bucket);
                dir.extend(prefix.split('/').filter(|p| !p.is_empty()));
                dir
            }
        }
    }
}

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub store: StoreLocation,
    pub json: bool,
}

/// A validated command.
#[derive(Debug, Clone)]
pub enum Task {
    Demo(DemoConfig),
    Publish(PublishConfig),
    /// `burrow versions`: how many of the newest entries (`None`: all).
    Versions(Option<u64>),
    Inspect(InspectConfig),
    Bench(Box<BenchConfig>),
    Follow(FollowConfig),
    Verify,
    /// `burrow pin`: the version to pin, and where to notify.
    Pin(u64, Option<Arc<dyn NotifyChannel>>),
    Unpin(Option<Arc<dyn NotifyChannel>>),
    Schema(SchemaConfig),
    Gc(crate::gc::GcConfig),
    Dump(DumpConfig),
    Diff(DiffConfig),
    History(HistoryConfig),
    Serve(burrow::explore::web::WebConfig),
}

/// The formats `burrow publish` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jsonl,
    Csv,
}

/// `burrow publish`.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub schema: PathBuf,
    pub type_name: String,
    /// The key's field names, in key order.
    pub key: Vec<String>,
    pub input: PathBuf,
    pub format: InputFormat,
    pub ignore_unknown_fields: bool,
    pub src_prefix: Option<PathBuf>,
    pub import_paths: Vec<PathBuf>,
    pub compression: Compression,
    /// Whether the producer runs retention after its announcement.
    pub gc: bool,
    /// Upserts (and deletes) on the last announced version, instead of
    /// the whole dataset.
    pub incremental: bool,
    /// With `incremental`: the file of keys to delete, and its format.
    pub deletes: Option<(PathBuf, InputFormat)>,
}

/// `burrow schema [--capnp]`: which file, and where the types are read
/// from.
#[derive(Debug, Clone)]
pub struct SchemaConfig {
    /// The file that decodes whole blobs (`--capnp`), or the dataset's
    /// types alone.
    pub capnp: bool,
    /// A blob file; `None`: the store's latest snapshot.
    pub blob: Option<PathBuf>,
    /// The explorer's cache (for the store's snapshot without `--capnp`).
    pub cache: PathBuf,
}

/// Which records `burrow dump` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpSelect {
    All,
    Key(String),
    Ordinal(u32),
}

/// `burrow dump`.
#[derive(Debug, Clone)]
pub struct DumpConfig {
    /// `None`: the newest version.
    pub version: Option<u64>,
    pub type_name: Option<String>,
    pub select: DumpSelect,
    pub limit: Option<u64>,
    pub field: Option<String>,
    pub cache: PathBuf,
}

/// `burrow diff`.
#[derive(Debug, Clone)]
pub struct DiffConfig {
    pub from: u64,
    pub to: u64,
    pub type_name: Option<String>,
    pub limit: usize,
    pub cache: PathBuf,
}

/// `burrow history`.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub type_name: Option<String>,
    pub key: String,
    pub cache: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FollowConfig {
    pub cache: PathBuf,
    pub interval: std::time::Duration,
    pub retention: CacheRetention,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The notification channel to listen on, and the poll interval while
    /// it is not healthy.
    pub notify: Option<Arc<dyn NotifyChannel>>,
    pub fallback_interval: std::time::Duration,
    /// How long to wait for the first state before saying what the
    /// consumer waits for.
    pub ready_timeout: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub records: u64,
    pub cycles: u64,
    pub change: f64,
    pub churn: f64,
    pub cache: PathBuf,
    pub compression: Compression,
    /// Where the producer publishes notifications, if anywhere.
    pub notify: Option<Arc<dyn NotifyChannel>>,
    /// Whether the producer runs retention after its announcements.
    pub gc: bool,
}

/// `burrow bench`: the figures, or one of the child processes a run starts.
#[derive(Debug, Clone)]
pub enum BenchConfig {
    Run(BenchRun),
    Child(BenchChild),
}

/// The workload a bench run publishes.
#[derive(Debug, Clone, Copy)]
pub struct BenchWorkload {
    /// Records in the first cycle, at least [`MIN_BENCH_RECORDS`].
    pub records: u64,
    /// Fraction changed per cycle, in (0, 1].
    pub change: f64,
    /// Fraction removed and added per cycle, in (0, 0.5], if any.
    pub churn: Option<f64>,
    pub seed: u64,
}

/// A bench run's settings.
#[derive(Debug, Clone)]
pub struct BenchRun {
    pub workload: BenchWorkload,
    /// Runs of each in-process figure (at least 1).
    pub runs: usize,
    /// Runs of each figure that needs its own process (at least 1).
    pub process_runs: usize,
    /// Lookups timed per run (at least 1).
    pub lookups: usize,
    pub json: bool,
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// Which figures.
    pub suite: Suite,
    /// Lookups per run of each load figure, as time.
    pub load_time: std::time::Duration,
    /// Refreshes of the soak (at least [`MIN_SOAK_REFRESHES`]).
    pub refreshes: u64,
}

/// The figure sets of a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// The anchor workload's figures and the load figures.
    All,
    Anchor,
    Load,
    Soak,
}

impl Suite {
    pub fn anchor(self) -> bool {
        matches!(self, Suite::All | Suite::Anchor)
    }
    pub fn load(self) -> bool {
        matches!(self, Suite::All | Suite::Load)
    }
}

/// The fewest refreshes a soak takes: it compares what it measures after
/// 100 refreshes with what it measures at the end.
pub const MIN_SOAK_REFRESHES: u64 = 200;

/// A bench run's child process (`--child`, hidden).
#[derive(Debug, Clone)]
pub enum BenchChild {
    Produce {
        dir: PathBuf,
        workload: BenchWorkload,
        snapshot_every: u32,
    },
    Open {
        dir: PathBuf,
        t0_ns: u128,
        lookup_id: u64,
    },
    Decode {
        blob: PathBuf,
        at_version: u64,
        t0_ns: u128,
        lookup_id: u64,
    },
}

#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub version: u64,
    /// `None`: the snapshot if the version has one, else its delta.
    pub blob: Option<BlobArg>,
}

/// Validates the whole command line.
pub fn from_args(args: Args) -> Result<(Global, Task)> {
    let global = Global {
        store: StoreLocation::parse(&args.store)?,
        json: args.json,
    };
    let task = match args.command {
        Command::Demo(a) => Task::Demo(demo(a, &global.store)?),
        Command::Publish(a) => Task::Publish(publish(a)?),
        Command::Versions(a) => Task::Versions(versions(a)?),
        Command::Verify(_) => Task::Verify,
        Command::Inspect(a) => Task::Inspect(inspect(a)?),
        Command::Follow(a) => Task::Follow(follow(a, &global.store)?),
        Command::Pin(a) => {
            let channel = notify_channel(a.notify.as_deref())?;
            Task::Pin(pin(a)?, channel)
        }
        Command::Unpin(a) => Task::Unpin(notify_channel(a.notify.as_deref())?),
        Command::Gc(a) => Task::Gc(gc(a)?),
        Command::Schema(a) => Task::Schema(schema(a, &global.store)?),
        Command::Dump(a) => Task::Dump(dump(a, &global.store)?),
        Command::Diff(a) => Task::Diff(diff(a, &global.store)?),
        Command::History(a) => Task::History(history(a, &global.store)?),
        Command::Serve(a) => Task::Serve(serve(a, &global.store)?),
        Command::Bench(a) => Task::Bench(Box::new(bench(a, args.json)?)),
    };
    Ok((global, task))
}

fn schema(a: SchemaArgs, store: &StoreLocation) -> Result<SchemaConfig> {
    if let Some(file) = &a.blob {
        if !file.is_file() {
            bail!(
                "invalid BLOB_FILE {}: not a file (give a blob from a store or a consumer's cache)",
                file.display()
            );
        }
    }
    Ok(SchemaConfig {
        capnp: a.capnp,
        blob: a.blob,
        cache: explore_cache(a.cache, store)?,
    })
}

/// The cache of `dump`, `diff`, `history` and `schema`: `--cache`, or
/// the store's default cache with `-explore` (never a consumer's: `demo`
/// and `follow` use theirs, locked while they run).
fn explore_cache(a: ExploreCacheArgs, store: &StoreLocation) -> Result<PathBuf> {
    let cache = a.cache.unwrap_or_else(|| {
        let mut dir = store.default_cache().into_os_string();
        dir.push("-explore");
        PathBuf::from(dir)
    });
    if store.local_dir() == Some(cache.as_path()) {
        bail!(
            "invalid --cache {}: the cache must not be the store's own directory",
            cache.display()
        );
    }
    Ok(cache)
}

/// A version number given to `flag`.
fn version_arg(flag: &str, raw: &str) -> Result<u64> {
    let version: u64 = raw.trim().parse().map_err(|_| {
        anyhow::anyhow!("invalid {flag} {raw:?}: expected a version number (see `burrow versions`)")
    })?;
    if version == 0 {
        bail!("invalid {flag} 0: versions start at 1 (see `burrow versions`)");
    }
    Ok(version)
}

fn dump(a: DumpArgs, store: &StoreLocation) -> Result<DumpConfig> {
    let version = a
        .version
        .as_deref()
        .map(|v| version_arg("--version", v))
        .transpose()?;
    let select = match (a.key, a.ordinal) {
        (Some(key), _) => {
            if key.is_empty() {
                bail!("invalid --key \"\": give a key value such as 42, or field=value pairs");
            }
            DumpSelect::Key(key)
        }
        (None, Some(raw)) => DumpSelect::Ordinal(raw.trim().parse().map_err(|_| {
            anyhow::anyhow!("invalid --ordinal {raw:?}: expected a whole number below 2^32")
        })?),
        (None, None) => DumpSelect::All,
    };
    let limit = a
        .limit
        .map(|raw| {
            raw.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "invalid --limit {raw:?}: expected a number of records, at least 1"
                    )
                })
        })
        .transpose()?;
    if a.field.as_deref() == Some("") {
        bail!("invalid --field \"\": give a path such as title or tags.0");
    }
    Ok(DumpConfig {
        version,
        type_name: a.type_name,
        select,
        limit,
        field: a.field,
        cache: explore_cache(a.cache, store)?,
    })
}

fn diff(a: DiffArgs, store: &StoreLocation) -> Result<DiffConfig> {
    Ok(DiffConfig {
        from: version_arg("A", &a.from)?,
        to: version_arg("B", &a.to)?,
        type_name: a.type_name,
        limit: a.limit,
        cache: explore_cache(a.cache, store)?,
    })
}

fn history(a: HistoryArgs, store: &StoreLocation) -> Result<HistoryConfig> {
    if a.key.is_empty() {
        bail!("invalid --key \"\": give a key value such as 42, or field=value pairs");
    }
    Ok(HistoryConfig {
        type_name: a.type_name,
        key: a.key,
        cache: explore_cache(a.cache, store)?,
    })
}

fn serve(a: ServeArgs, store: &StoreLocation) -> Result<burrow::explore::web::WebConfig> {
    let addr = a.addr.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid --addr {:?}: must be an IP address and port, such as 127.0.0.1:8080",
            a.addr
        )
    })?;
    if a.interval_ms == 0 || a.interval_ms > 3_600_000 {
        bail!(
            "invalid --interval-ms {}: must be between 1 and 3600000",
            a.interval_ms
        );
    }
    let cache_dir = a.cache.unwrap_or_else(|| {
        let mut dir = store.default_cache().into_os_string();
        dir.push("-serve");
        PathBuf::from(dir)
    });
    if store.local_dir() == Some(cache_dir.as_path()) {
        bail!(
            "invalid --cache {}: the cache must not be the store's own directory",
            cache_dir.display()
        );
    }
    Ok(burrow::explore::web::WebConfig {
        addr,
        cache_dir,
        interval: std::time::Duration::from_millis(a.interval_ms),
    })
}

fn fraction(flag: &str, value: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("invalid {flag} {value}: must be a fraction between 0 and 1");
    }
    Ok(value)
}

fn follow(a: FollowArgs, store: &StoreLocation) -> Result<FollowConfig> {
    if a.interval_ms == 0 || a.interval_ms > 3_600_000 {
        bail!(
            "invalid --interval-ms {}: must be between 1 and 3600000",
            a.interval_ms
        );
    }
    let cache = a.cache.unwrap_or_else(|| {
        let mut dir = store.default_cache().into_os_string();
        dir.push("-follow");
        PathBuf::from(dir)
    });
    if store.local_dir() == Some(cache.as_path()) {
        bail!(
            "invalid --cache {}: the cache must not be the store's own directory",
            cache.display()
        );
    }
    if a.ready_timeout_ms == 0 || a.ready_timeout_ms > 3_600_000 {
        bail!(
            "invalid --ready-timeout-ms {}: must be between 1 and 3600000",
            a.ready_timeout_ms
        );
    }
    let mut retention = CacheRetention::default();
    if let Some(raw) = &a.cache_max_bytes {
        retention.max_bytes = parse_size(raw)
            .map_err(|reason| anyhow::anyhow!("invalid --cache-max-bytes {raw:?}: {reason}"))?;
    }
    if let Some(raw) = &a.cache_max_files {
        retention.max_files = raw.trim().parse().map_err(|_| {
            anyhow::anyhow!("invalid --cache-max-files {raw:?}: must be a whole number of files")
        })?;
    }
    let metrics_addr = match &a.metrics_addr {
        None => None,
        Some(raw) => Some(raw.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid --metrics-addr {raw:?}: must be an IP address and port, such as 127.0.0.1:9464"
            )
        })?),
    };
    if a.fallback_interval_ms == 0 || a.fallback_interval_ms > 3_600_000 {
        bail!(
            "invalid --fallback-interval-ms {}: must be between 1 and 3600000",
            a.fallback_interval_ms
        );
    }
    Ok(FollowConfig {
        cache,
        interval: std::time::Duration::from_millis(a.interval_ms),
        retention,
        metrics_addr,
        notify: notify_channel(a.notify.as_deref())?,
        fallback_interval: std::time::Duration::from_millis(a.fallback_interval_ms),
        ready_timeout: std::time::Duration::from_millis(a.ready_timeout_ms),
    })
}

/// The channel a `--notify` URL names (checked here; connected later).
fn notify_channel(url: Option<&str>) -> Result<Option<Arc<dyn NotifyChannel>>> {
    url.map(|url| {
        burrow::notify::open_channel(url).map_err(|e| anyhow::anyhow!("invalid --notify: {e}"))
    })
    .transpose()
}

/// A size in bytes: digits, optionally followed by a unit (`KiB`, `MiB`,
/// `GiB`, `TiB` in powers of 1024; `KB`, `MB`, `GB`, `TB` in powers of
/// 1000; `B`), case-insensitive, with or without a space.
fn parse_size(raw: &str) -> std::result::Result<u64, String> {
    let s = raw.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err("must be a number of bytes, optionally with a unit such as MiB or GB".into());
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| "too large: must fit in 64 bits of bytes".into())
}

fn publish(a: PublishArgs) -> Result<PublishConfig> {
    if !a.schema.is_file() {
        bail!(
            "invalid --schema {}: not a file (give a .capnp file or a compiled schema)",
            a.schema.display()
        );
    }
    if !a.input.is_file() {
        bail!("invalid --input {}: not a file", a.input.display());
    }
    let key: Vec<String> = a.key.split(',').map(|f| f.trim().to_string()).collect();
    if key.iter().any(String::is_empty) {
        bail!(
            "invalid --key {:?}: give field names separated by commas, such as id or shelf,slot",
            a.key
        );
    }
    if a.type_name.trim().is_empty() {
        bail!("invalid --type \"\": give the record type's name, such as Movie");
    }
    let format = match a.format {
        Some(InputFormatArg::Jsonl) => InputFormat::Jsonl,
        Some(InputFormatArg::Csv) => InputFormat::Csv,
        None => input_format(&a.input)?,
    };
    let compression: Compression = a
        .compression
        .parse()
        .map_err(|reason| anyhow::anyhow!("invalid --compression {:?}: {reason}", a.compression))?;
    let deletes = match a.deletes {
        Some(path) => {
            if !path.is_file() {
                bail!("invalid --deletes {}: not a file", path.display());
            }
            let format = match a.format {
                Some(InputFormatArg::Jsonl) => InputFormat::Jsonl,
                Some(InputFormatArg::Csv) => InputFormat::Csv,
                None => input_format(&path)?,
            };
            Some((path, format))
        }
        None => None,
    };
    Ok(PublishConfig {
        schema: a.schema,
        type_name: a.type_name.trim().to_string(),
        key,
        input: a.input,
        format,
        ignore_unknown_fields: a.ignore_unknown_fields,
        src_prefix: a.src_prefix,
        import_paths: a.import_path,
        compression,
        gc: !a.no_gc,
        incremental: a.incremental,
        deletes,
    })
}

/// The format of an input file by its extension, under any compression's.
fn input_format(path: &Path) -> Result<InputFormat> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let base = [".gz", ".gzip", ".zst", ".zstd"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name);
    if [".jsonl", ".ndjson", ".json"]
        .iter()
        .any(|ext| base.ends_with(ext))
    {
        Ok(InputFormat::Jsonl)
    } else if base.ends_with(".csv") {
        Ok(InputFormat::Csv)
    } else {
        bail!(
            "cannot tell the format of --input {} by its extension: give --format jsonl or \
             --format csv",
            path.display()
        )
    }
}

fn demo(a: DemoArgs, store: &StoreLocation) -> Result<DemoConfig> {
    if a.records == 0 || a.records > MAX_RECORDS {
        bail!(
            "invalid --records {}: must be between 1 and {MAX_RECORDS}",
            a.records
        );
    }
    if a.cycles == 0 || a.cycles > 1_000_000 {
        bail!(
            "invalid --cycles {}: must be between 1 and 1000000",
            a.cycles
        );
    }
    let change = fraction("--change", a.changes.change)?;
    let churn = fraction("--churn", a.churn)?;
    if change + churn > 1.0 {
        bail!(
            "invalid --change {change} with --churn {churn}: together they must not exceed 1 \
             (a record is either changed or removed in a cycle)"
        );
    }
    let cache = a.cache.unwrap_or_else(|| store.default_cache());
    if let Some(dir) = store.local_dir() {
        if cache == dir {
            bail!(
                "invalid --cache {}: the cache must not be the store's own directory",
                cache.display()
            );
        }
    }
    let compression: Compression = a
        .compression
        .parse()
        .map_err(|reason| anyhow::anyhow!("invalid --compression {:?}: {reason}", a.compression))?;
    Ok(DemoConfig {
        records: a.records,
        cycles: a.cycles,
        change,
        churn,
        cache,
        compression,
        notify: notify_channel(a.notify.as_deref())?,
        gc: !a.no_gc,
    })
}

/// The fewest records a bench run takes: its figures sample ids and time
/// per-record costs, which mean nothing on a handful of records.
pub const MIN_BENCH_RECORDS: u64 = 100;

fn bench(a: BenchArgs, json: bool) -> Result<BenchConfig> {
    if a.records < MIN_BENCH_RECORDS || a.records > MAX_RECORDS {
        bail!(
            "invalid --records {}: must be between {MIN_BENCH_RECORDS} and {MAX_RECORDS}",
            a.records
        );
    }
    let change = a.changes.change;
    if !(change > 0.0 && change <= 1.0) {
        bail!("invalid --change {change}: must be a fraction in (0, 1]");
    }
    if let Some(churn) = a.churn {
        if !(churn > 0.0 && churn <= 0.5) {
            bail!("invalid --churn {churn}: must be a fraction in (0, 0.5]");
        }
        if change + churn > 1.0 {
            bail!(
                "invalid --change {change} with --churn {churn}: together they must not exceed \
                 1 (a record is either changed or removed in a cycle)"
            );
        }
    }
    for (flag, value) in [("--runs", a.runs), ("--process-runs", a.process_runs)] {
        if value == Some(0) {
            bail!("invalid {flag} 0: must be at least 1");
        }
    }
    if a.lookups == 0 {
        bail!("invalid --lookups 0: must be at least 1");
    }
    if !(a.load_seconds > 0.0 && a.load_seconds <= 3600.0) {
        bail!(
            "invalid --load-seconds {}: must be more than 0 and at most 3600",
            a.load_seconds
        );
    }
    if a.refreshes < MIN_SOAK_REFRESHES || a.refreshes > 100_000_000 {
        bail!(
            "invalid --refreshes {}: must be between {MIN_SOAK_REFRESHES} and 100000000",
            a.refreshes
        );
    }
    let workload = BenchWorkload {
        records: a.records,
        change,
        churn: a.churn,
        seed: a.seed,
    };
    let Some(mode) = a.child else {
        return Ok(BenchConfig::Run(BenchRun {
            workload,
            runs: a.runs.unwrap_or(5),
            process_runs: a.process_runs.or(a.runs).unwrap_or(3),
            lookups: a.lookups,
            json,
            dir: a.dir,
            keep: a.keep,
            suite: match a.suite {
                SuiteArg::All => Suite::All,
                SuiteArg::Anchor => Suite::Anchor,
                SuiteArg::Load => Suite::Load,
                SuiteArg::Soak => Suite::Soak,
            },
            load_time: std::time::Duration::from_secs_f64(a.load_seconds),
            refreshes: a.refreshes,
        }));
    };
    let dir = || a.dir.clone().context("invalid --child: it needs --dir");
    let child = match mode {
        ChildMode::Produce => BenchChild::Produce {
            dir: dir()?,
            workload,
            snapshot_every: a.snapshot_every,
        },
        ChildMode::Open => BenchChild::Open {
            dir: dir()?,
            t0_ns: a.t0_ns,
            lookup_id: a.lookup_id,
        },
        ChildMode::Decode => BenchChild::Decode {
            blob: a.blob.context("invalid --child decode: it needs --blob")?,
            at_version: a.at_version,
            t0_ns: a.t0_ns,
            lookup_id: a.lookup_id,
        },
    };
    Ok(BenchConfig::Child(child))
}

fn inspect(a: InspectArgs) -> Result<InspectConfig> {
    let version: u64 = a.target.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid VERSION {:?}: expected a version number (see `burrow versions`)",
            a.target
        )
    })?;
    if version == 0 {
        bail!("invalid VERSION 0: versions start at 1 (see `burrow versions`)");
    }
    Ok(InspectConfig {
        version,
        blob: a.blob,
    })
}

/// The newest entries `burrow versions` shows by default.
const DEFAULT_VERSIONS_SHOWN: u64 = 100;

fn versions(a: VersionsArgs) -> Result<Option<u64>> {
    if a.all {
        return Ok(None);
    }
    match &a.last {
        None => Ok(Some(DEFAULT_VERSIONS_SHOWN)),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => bail!("invalid --last {raw:?}: must be a whole number of entries, at least 1"),
        },
    }
}

fn gc(a: GcArgs) -> Result<crate::gc::GcConfig> {
    let mut policy = burrow::gc::RetentionPolicy::default();
    if let Some(raw) = &a.keep {
        policy.keep = match raw.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => bail!("invalid --keep {raw:?}: must be a whole number of versions, at least 1"),
        };
    }
    if let Some(raw) = &a.grace {
        policy.grace = parse_duration(raw)
            .map_err(|reason| anyhow::anyhow!("invalid --grace {raw:?}: {reason}"))?;
    }
    if let Some(raw) = &a.snapshot_spacing {
        policy.snapshot_spacing = match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => bail!(
                "invalid --snapshot-spacing {raw:?}: must be a whole number of versions, at least 1"
            ),
        };
    }
    Ok(crate::gc::GcConfig {
        policy,
        dry_run: a.dry_run,
    })
}

/// A duration: digits and a unit, `ms`, `s`, `m`, `h` or `d` (`30s`,
/// `10m`, `1h`), with or without a space.
fn parse_duration(raw: &str) -> std::result::Result<std::time::Duration, String> {
    let s = raw.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let Ok(n) = number.parse::<u64>() else {
        return Err("must be a number with a unit, such as 30s, 10m, 1h or 2d".into());
    };
    let millis: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err("needs a unit: ms, s, m, h or d (such as 10m)".into()),
        other => return Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    n.checked_mul(millis)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| "too long".into())
}

fn pin(a: PinArgs) -> Result<u64> {
    let version: u64 = a.target.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid VERSION {:?}: expected an announced version number (see `burrow versions`)",
            a.target
        )
    })?;
    if version == 0 {
        bail!("invalid VERSION 0: versions start at 1 (see `burrow versions`)");
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3 mib"), Ok(3 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert!(parse_size("").unwrap_err().contains("number"));
        assert!(parse_size("-1").unwrap_err().contains("number"));
        assert!(parse_size("12parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_named() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2 d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("m").unwrap_err().contains("number"));
        assert!(parse_duration("-1h").unwrap_err().contains("number"));
        assert!(parse_duration("3 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn store_locations() {
        assert_eq!(
            StoreLocation::parse("file:///tmp/x").unwrap().local_dir(),
            Some(Path::new("/tmp/x"))
        );
        let err = format!("{:#}", StoreLocation::parse("gs://bucket").unwrap_err());
        assert!(err.contains("--store") && err.contains("gs"), "{err}");
        assert_eq!(
            StoreLocation::parse("s3://bucket/a/b")
                .unwrap()
                .default_cache(),
            PathBuf::from("./burrow-cache/bucket/a/b")
        );
        assert_eq!(
            StoreLocation::parse("./burrow-data")
                .unwrap()
                .default_cache(),
            PathBuf::from("./burrow-cache/burrow-data")
        );
        assert_eq!(
            StoreLocation::parse("/a/store").unwrap().default_cache(),
            PathBuf::from("/a/burrow-cache/store")
        );
    }
}
