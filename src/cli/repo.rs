//! `site-recovery repo <verb>`: the repository operations, for operators' debugging and for
//! benchmarks. Every verb works against any location URL (a path, s3://, az://, gs://).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::api::policy::parse_duration;
use crate::repository::Repository;
use crate::repository::format::{Consistency, NodeKind, VolumeContent};
use crate::repository::prune::{PruneOptions, prune};
use crate::repository::replicate::replicate;
use crate::repository::restore::{RestoreOptions, restore};
use crate::repository::snapshot::{Progress, ProgressFn, SnapshotOptions, Source, snapshot};
use crate::repository::verify::verify;
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
    Snapshot {
        #[arg(long)]
        source: PathBuf,
        /// Store the source as one raw image.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value = "default")]
        workload: String,
        #[arg(long, default_value = "data")]
        volume: String,
        /// crash, app or file.
        #[arg(long, default_value = "file")]
        consistency: String,
        #[arg(long)]
        zone: Option<String>,
        /// Read every file instead of reusing unchanged files of the previous point.
        #[arg(long)]
        no_parent: bool,
    },
    /// Copy points to another location (only what it lacks; the manifest last).
    Replicate {
        /// Destination location URL.
        #[arg(long)]
        to: String,
        /// Options of the destination (KEY=VALUE).
        #[arg(long = "to-option", value_name = "KEY=VALUE")]
        to_options: Vec<String>,
        /// Points to copy (ids, prefixes or `latest`); all when omitted.
        #[arg(long = "point")]
        points: Vec<String>,
    },
    /// Restore a point into a directory (or a file, for raw images).
    Restore {
        #[arg(long, default_value = "latest")]
        point: String,
        #[arg(long)]
        target: PathBuf,
        #[arg(long)]
        volume: Option<String>,
        /// Flush the restored data to disk before returning.
        #[arg(long)]
        sync: bool,
    },
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
    Prune {
        /// Keep points younger than this (e.g. 24h).
        #[arg(long, default_value = "24h")]
        keep_within: String,
        /// Keep at least the newest N points of each workload.
        #[arg(long, default_value_t = 1)]
        keep_last: usize,
        #[arg(long)]
        dry_run: bool,
    },
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

pub async fn run(args: RepoArgs) -> anyhow::Result<std::process::ExitCode> {
    let url = args
        .location
        .clone()
        .context("--location (or SITE_RECOVERY_LOCATION) is required")?;
    let location = open_location(&url, &args.options)?;
    let secret = secret(&args)?;
    let print = |value: serde_json::Value, text: String| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("JSON prints")
            );
        } else {
            println!("{text}");
        }
    };
    match args.verb {
        Verb::Init => {
            let repo = Repository::init(location, &secret).await?;
            print(
                serde_json::json!({"id": repo.config.id, "location": repo.location.name()}),
                format!(
                    "initialized repository {} at {}",
                    repo.config.id,
                    repo.location.name()
                ),
            );
        }
        Verb::Snapshot {
            source,
            raw,
            workload,
            volume,
            consistency,
            zone,
            no_parent,
        } => {
            let mut repo = Repository::open(location, &secret).await?;
            let consistency: Consistency = consistency
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--consistency {e}"))?;
            let src = if raw {
                Source::Raw(source)
            } else {
                Source::Tree(source)
            };
            let options = SnapshotOptions {
                workload,
                consistency,
                source_zone: zone,
                use_parent: !no_parent,
                part: None,
            };
            let (progress, done) = progress_reporter("snapshot");
            let started = Instant::now();
            let m = snapshot(&mut repo, vec![(volume, src)], &options, Some(progress)).await;
            done();
            let m = m?;
            let s = &m.stats;
            print(
                serde_json::json!({"id": m.id, "time": m.time, "stats": {"files": s.files, "bytes": s.bytes, "bytesRead": s.bytes_read, "newChunks": s.new_chunks, "storedBytesAdded": s.stored_bytes_added}, "seconds": started.elapsed().as_secs_f64()}),
                format!(
                    "point {} ({}): {} files, {} bytes, {} read, {} new chunks, {} bytes added, {:.1}s",
                    m.id,
                    m.consistency.as_str(),
                    s.files,
                    s.bytes,
                    s.bytes_read,
                    s.new_chunks,
                    s.stored_bytes_added,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        Verb::Replicate {
            to,
            to_options,
            points,
        } => {
            let source = Repository::open(location, &secret).await?;
            let dest_location = open_location(&to, &to_options)?;
            source.init_replica(dest_location.clone()).await?;
            let mut dest = Repository::open(dest_location, &secret).await?;
            let ids = if points.is_empty() {
                source.point_ids().await?
            } else {
                let mut ids = Vec::new();
                for p in &points {
                    ids.push(source.resolve_point(p).await?);
                }
                ids
            };
            let stats = replicate(&source, &mut dest, &ids).await?;
            print(
                serde_json::json!({"pointsCopied": stats.points_copied, "pointsPresent": stats.points_present, "packsCopied": stats.packs_copied, "bytesCopied": stats.bytes_copied}),
                format!(
                    "{} points copied ({} already there), {} packs, {} bytes",
                    stats.points_copied,
                    stats.points_present,
                    stats.packs_copied,
                    stats.bytes_copied
                ),
            );
        }
        Verb::Restore {
            point,
            target,
            volume,
            sync,
        } => {
            let repo = Repository::open(location, &secret).await?;
            let id = repo.resolve_point(&point).await?;
            let (progress, done) = progress_reporter("restore");
            let started = Instant::now();
            let stats = restore(
                &repo,
                &id,
                &target,
                &RestoreOptions { volume, sync },
                Some(progress),
            )
            .await;
            done();
            let stats = stats?;
            print(
                serde_json::json!({"point": id, "files": stats.files, "bytes": stats.bytes, "seconds": started.elapsed().as_secs_f64(), "setidCleared": stats.setid_cleared, "xattrsSkipped": stats.xattrs_skipped}),
                format!(
                    "restored point {id} to {}: {} files, {} bytes, {:.1}s{}",
                    target.display(),
                    stats.files,
                    stats.bytes,
                    started.elapsed().as_secs_f64(),
                    if stats.setid_cleared + stats.xattrs_skipped > 0 {
                        format!(
                            " ({} setuid/setgid bits and {} security/trusted extended attributes not restored)",
                            stats.setid_cleared, stats.xattrs_skipped
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        Verb::Points => {
            let repo = Repository::open(location, &secret).await?;
            let manifests = repo.manifests().await?;
            let rows: Vec<serde_json::Value> = manifests
                .iter()
                .map(|m| serde_json::json!({"id": m.id, "time": m.time, "workload": m.workload, "consistency": m.consistency.as_str(), "sourceZone": m.source_zone, "volumes": m.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>(), "bytes": m.stats.bytes}))
                .collect();
            let mut text = format!(
                "{:<36} {:<26} {:<16} {:<16} {:>14}",
                "ID", "TIME", "WORKLOAD", "CONSISTENCY", "BYTES"
            );
            for m in &manifests {
                text.push_str(&format!(
                    "\n{:<36} {:<26} {:<16} {:<16} {:>14}",
                    m.id,
                    m.time,
                    m.workload,
                    m.consistency.as_str(),
                    m.stats.bytes
                ));
            }
            print(serde_json::Value::Array(rows), text);
        }
        Verb::Show { point } => {
            let repo = Repository::open(location, &secret).await?;
            let m = repo.manifest(&repo.resolve_point(&point).await?).await?;
            let mut text = format!(
                "point {}\ntime {}\nworkload {}\nconsistency {}\nparent {}\n",
                m.id,
                m.time,
                m.workload,
                m.consistency.as_str(),
                m.parent.as_deref().unwrap_or("-")
            );
            for v in &m.volumes {
                match &v.content {
                    VolumeContent::Raw(f) => {
                        text.push_str(&format!("volume {} raw image, {} bytes\n", v.name, f.size))
                    }
                    VolumeContent::Tree(nodes) => {
                        let files = nodes
                            .iter()
                            .filter(|n| matches!(n.kind, NodeKind::File(_)))
                            .count();
                        text.push_str(&format!(
                            "volume {} tree, {} entries, {} files\n",
                            v.name,
                            nodes.len(),
                            files
                        ));
                    }
                }
            }
            print(
                serde_json::json!({"id": m.id, "time": m.time, "workload": m.workload, "consistency": m.consistency.as_str(), "parent": m.parent, "volumes": m.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>()}),
                text.trim_end().to_string(),
            );
        }
        Verb::Verify { read_data } => {
            let repo = Repository::open(location, &secret).await?;
            let report = verify(&repo, read_data).await?;
            print(
                serde_json::json!({"points": report.points, "packs": report.packs, "chunksChecked": report.chunks_checked, "problems": report.problems}),
                if report.problems.is_empty() {
                    format!(
                        "ok: {} points, {} packs, {} chunks read",
                        report.points, report.packs, report.chunks_checked
                    )
                } else {
                    report.problems.join("\n")
                },
            );
            if !report.problems.is_empty() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Verb::Prune {
            keep_within,
            keep_last,
            dry_run,
        } => {
            let mut repo = Repository::open(location, &secret).await?;
            let keep_within =
                parse_duration(&keep_within).map_err(|e| anyhow::anyhow!("--keep-within: {e}"))?;
            let report = prune(
                &mut repo,
                &PruneOptions {
                    keep_within,
                    keep_last,
                    dry_run,
                    workload: None,
                },
            )
            .await?;
            print(
                serde_json::json!({"pointsRemoved": report.points_removed, "pointsKept": report.points_kept, "packsRemoved": report.packs_removed, "bytesFreed": report.bytes_freed, "gcSkipped": report.gc_skipped, "packsUnreadable": report.packs_unreadable}),
                format!(
                    "{} points removed, {} kept, {} packs ({} bytes) freed{}{}",
                    report.points_removed.len(),
                    report.points_kept,
                    report.packs_removed,
                    report.bytes_freed,
                    report
                        .gc_skipped
                        .map(|r| format!("; garbage collection skipped: {r}"))
                        .unwrap_or_default(),
                    if report.packs_unreadable.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} packs no index names could not be read and were kept (check them with `repo verify`): {}",
                            report.packs_unreadable.len(),
                            report.packs_unreadable.join("; ")
                        )
                    }
                ),
            );
        }
        Verb::Stats => {
            let repo = Repository::open(location, &secret).await?;
            let packs = repo.list_packs().await?;
            let stored: u64 = packs.iter().map(|(_, s)| s).sum();
            let raw: u64 = repo.chunks.values().map(|c| c.raw_length as u64).sum();
            let points = repo.point_ids().await?.len();
            print(
                serde_json::json!({"id": repo.config.id, "points": points, "packs": packs.len(), "chunks": repo.chunks.len(), "storedBytes": stored, "uniqueRawBytes": raw}),
                format!(
                    "repository {}: {} points, {} packs, {} chunks, {} bytes stored for {} unique bytes",
                    repo.config.id,
                    points,
                    packs.len(),
                    repo.chunks.len(),
                    stored,
                    raw
                ),
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
