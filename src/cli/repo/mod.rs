//! `site-recovery repo <verb>`: the repository operations, for operators' debugging and for
//! benchmarks. Every verb works against any location URL (a path, s3://, az://, gs://).
//! The verbs that write a repository live in `write`, those that only read it in `read`; each
//! returns a [`Report`] that `run` prints.

mod read;
mod write;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::repository::snapshot::{Progress, ProgressFn};
use crate::storage::location::Options;
use crate::storage::{Location, LocationSpec};

#[derive(Args)]
pub struct RepoArgs {
    /// Where the repository is: a path, file:///path, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
    #[arg(long, env = "SITE_RECOVERY_LOCATION", global = true)]
    location: Option<String>,
    /// Options of the location, e.g. endpoint=http://127.0.0.1:9000, region=..., accountName=...,
    /// AWS_ACCESS_KEY_ID=..., accountKey=... (the keys of a vault's credentials Secret).
    #[arg(long = "option", value_name = "KEY=VALUE", global = true)]
    options: Vec<String>,
    /// File holding the repository key (at least 32 bytes), as a vault's key Secret does.
    #[arg(long, env = "SITE_RECOVERY_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Create a repository in the location.
    Init,
    /// Take a recovery point of a directory (or, with --raw, of a file or block device).
    Snapshot(write::SnapshotArgs),
    /// Copy points to another location (only what it lacks; the manifest last).
    Replicate(write::ReplicateArgs),
    /// Restore a point into a directory (or a file, for raw images).
    Restore(write::RestoreArgs),
    /// List the points.
    Points,
    /// Show one point: volumes, files, consistency.
    Show {
        #[arg(default_value = "latest")]
        point: String,
    },
    /// Check that every referenced chunk is present (and, with --read-data, authentic).
    Verify {
        #[arg(long)]
        read_data: bool,
    },
    /// Forget points outside the retention and delete the data only they used.
    Prune(write::PruneArgs),
    /// Sizes and counts.
    Stats,
}

fn parse_options(list: &[String]) -> anyhow::Result<Options> {
    list.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--option {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn open_location(url: &str, options: &[String]) -> anyhow::Result<Location> {
    let spec = LocationSpec::parse(url)?;
    Ok(Location::open(&spec, &parse_options(options)?)?)
}

fn progress_reporter(what: &'static str) -> (ProgressFn, Box<dyn FnOnce()>) {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
                .expect("valid template"),
        );
        bar.set_message(what);
        let b = bar.clone();
        let f: ProgressFn = Arc::new(move |p: Progress| {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
        });
        (f, Box::new(move || bar.finish_and_clear()))
    } else {
        let started = Instant::now();
        let last = std::sync::Mutex::new(Instant::now());
        let f: ProgressFn = Arc::new(move |p: Progress| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(2) {
                *last = Instant::now();
                let rate = p.bytes_done as f64 / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    what,
                    bytes_done = p.bytes_done,
                    bytes_total = p.bytes_total,
                    bytes_per_second = rate as u64,
                    "progress"
                );
            }
        });
        (f, Box::new(|| {}))
    }
}

fn secret(args: &RepoArgs) -> anyhow::Result<Vec<u8>> {
    let path = args
        .key_file
        .as_ref()
        .context("--key-file (or SITE_RECOVERY_KEY_FILE) is required")?;
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the key file", path.display()))?;
    if bytes.len() < 32 {
        bail!(
            "{}: the key file must hold at least 32 bytes, it has {}",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}

/// What a verb prints: `json` with `--json`, `text` otherwise; `failed` makes the exit code 1.
struct Report {
    json: serde_json::Value,
    text: String,
    failed: bool,
}

impl Report {
    fn ok(json: serde_json::Value, text: String) -> Self {
        Report {
            json,
            text,
            failed: false,
        }
    }
}

pub async fn run(args: RepoArgs) -> anyhow::Result<std::process::ExitCode> {
    let url = args
        .location
        .clone()
        .context("--location (or SITE_RECOVERY_LOCATION) is required")?;
    let location = open_location(&url, &args.options)?;
    let secret = secret(&args)?;
    let report = match args.verb {
        Verb::Init => write::init(location, &secret).await?,
        Verb::Snapshot(verb) => write::snapshot(location, &secret, verb).await?,
        Verb::Replicate(verb) => write::replicate(location, &secret, verb).await?,
        Verb::Restore(verb) => write::restore(location, &secret, verb).await?,
        Verb::Points => read::points(location, &secret).await?,
        Verb::Show { point } => read::show(location, &secret, &point).await?,
        Verb::Verify { read_data } => read::verify(location, &secret, read_data).await?,
        Verb::Prune(verb) => write::prune(location, &secret, verb).await?,
        Verb::Stats => read::stats(location, &secret).await?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json).expect("JSON prints")
        );
    } else {
        println!("{}", report.text);
    }
    Ok(if report.failed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
