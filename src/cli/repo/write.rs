//! The `repo` verbs that write a repository: init, snapshot, replicate, restore (which writes
//! the target) and prune.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::{Report, open_location, progress_reporter};
use crate::api::policy::parse_duration;
use crate::repository::Repository;
use crate::repository::format::{Consistency, Manifest};
use crate::repository::prune::{PruneOptions, PruneReport};
use crate::repository::replicate::ReplicateStats;
use crate::repository::restore::{RestoreOptions, RestoreStats};
use crate::repository::snapshot::{SnapshotOptions, Source};
use crate::storage::Location;

#[derive(Args)]
pub(super) struct SnapshotArgs {
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
}

#[derive(Args)]
pub(super) struct ReplicateArgs {
    /// Destination location URL.
    #[arg(long)]
    to: String,
    /// Options of the destination (KEY=VALUE).
    #[arg(long = "to-option", value_name = "KEY=VALUE")]
    to_options: Vec<String>,
    /// Points to copy (ids, prefixes or `latest`); all when omitted.
    #[arg(long = "point")]
    points: Vec<String>,
}

#[derive(Args)]
pub(super) struct RestoreArgs {
    #[arg(long, default_value = "latest")]
    point: String,
    #[arg(long)]
    target: PathBuf,
    #[arg(long)]
    volume: Option<String>,
    /// Flush the restored data to disk before returning.
    #[arg(long)]
    sync: bool,
    /// The target holds an older copy of the volume: keep what matches the point, write only
    /// the extents that differ, and remove what the point does not hold.
    #[arg(long)]
    in_place: bool,
}

#[derive(Args)]
pub(super) struct PruneArgs {
    /// Keep points younger than this (e.g. 24h).
    #[arg(long, default_value = "24h")]
    keep_within: String,
    /// Keep at least the newest N points of each workload.
    #[arg(long, default_value_t = 1)]
    keep_last: usize,
    #[arg(long)]
    dry_run: bool,
}

pub(super) async fn init(location: Location, secret: &[u8]) -> anyhow::Result<Report> {
    let repo = Repository::init(location, secret).await?;
    Ok(Report::ok(
        serde_json::json!({"id": repo.config.id, "location": repo.location.name()}),
        format!(
            "initialized repository {} at {}",
            repo.config.id,
            repo.location.name()
        ),
    ))
}

pub(super) async fn snapshot(
    location: Location,
    secret: &[u8],
    args: SnapshotArgs,
) -> anyhow::Result<Report> {
    let mut repo = Repository::open(location, secret).await?;
    let consistency: Consistency = args
        .consistency
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--consistency {e}"))?;
    let source = if args.raw {
        Source::Raw(args.source)
    } else {
        Source::Tree(args.source)
    };
    let options = SnapshotOptions {
        workload: args.workload,
        consistency,
        source_zone: args.zone,
        use_parent: !args.no_parent,
        part: None,
        parent_hint: None,
    };
    let (progress, done) = progress_reporter("snapshot");
    let started = Instant::now();
    let point = crate::repository::snapshot::snapshot(
        &mut repo,
        vec![(args.volume, source)],
        &options,
        Some(progress),
    )
    .await;
    done();
    Ok(snapshot_report(&point?, started.elapsed().as_secs_f64()))
}

fn snapshot_report(m: &Manifest, seconds: f64) -> Report {
    let s = &m.stats;
    Report::ok(
        serde_json::json!({"id": m.id, "time": m.time, "stats": {"files": s.files, "bytes": s.bytes, "bytesRead": s.bytes_read, "newChunks": s.new_chunks, "storedBytesAdded": s.stored_bytes_added}, "seconds": seconds}),
        format!(
            "point {} ({}): {} files, {} bytes, {} read, {} new chunks, {} bytes added, {:.1}s",
            m.id,
            m.consistency.as_str(),
            s.files,
            s.bytes,
            s.bytes_read,
            s.new_chunks,
            s.stored_bytes_added,
            seconds
        ),
    )
}

pub(super) async fn replicate(
    location: Location,
    secret: &[u8],
    args: ReplicateArgs,
) -> anyhow::Result<Report> {
    let source = Repository::open(location, secret).await?;
    let dest_location = open_location(&args.to, &args.to_options)?;
    source.init_replica(dest_location.clone()).await?;
    let mut dest = Repository::open(dest_location, secret).await?;
    let ids = if args.points.is_empty() {
        source.point_ids().await?
    } else {
        let mut ids = Vec::new();
        for p in &args.points {
            ids.push(source.resolve_point(p).await?);
        }
        ids
    };
    let stats = crate::repository::replicate::replicate(&source, &mut dest, &ids).await?;
    Ok(replicate_report(&stats))
}

fn replicate_report(stats: &ReplicateStats) -> Report {
    Report::ok(
        serde_json::json!({"pointsCopied": stats.points_copied, "pointsPresent": stats.points_present, "packsCopied": stats.packs_copied, "bytesCopied": stats.bytes_copied}),
        format!(
            "{} points copied ({} already there), {} packs, {} bytes",
            stats.points_copied, stats.points_present, stats.packs_copied, stats.bytes_copied
        ),
    )
}

pub(super) async fn restore(
    location: Location,
    secret: &[u8],
    args: RestoreArgs,
) -> anyhow::Result<Report> {
    let repo = Repository::open(location, secret).await?;
    let id = repo.resolve_point(&args.point).await?;
    let (progress, done) = progress_reporter("restore");
    let started = Instant::now();
    let stats = crate::repository::restore::restore(
        &repo,
        &id,
        &args.target,
        &RestoreOptions {
            volume: args.volume,
            sync: args.sync,
            in_place: args.in_place,
        },
        Some(progress),
    )
    .await;
    done();
    Ok(restore_report(
        &id,
        &args.target,
        &stats?,
        started.elapsed().as_secs_f64(),
    ))
}

fn restore_report(
    id: &str,
    target: &std::path::Path,
    stats: &RestoreStats,
    seconds: f64,
) -> Report {
    let not_restored = if stats.setid_cleared + stats.xattrs_skipped > 0 {
        format!(
            " ({} setuid/setgid bits and {} security/trusted extended attributes not restored)",
            stats.setid_cleared, stats.xattrs_skipped
        )
    } else {
        String::new()
    };
    Report::ok(
        serde_json::json!({"point": id, "files": stats.files, "bytes": stats.bytes, "bytesWritten": stats.bytes_written, "removed": stats.removed, "seconds": seconds, "setidCleared": stats.setid_cleared, "xattrsSkipped": stats.xattrs_skipped}),
        format!(
            "restored point {id} to {}: {} files, {} bytes ({} written), {seconds:.1}s{not_restored}",
            target.display(),
            stats.files,
            stats.bytes,
            stats.bytes_written,
        ),
    )
}

pub(super) async fn prune(
    location: Location,
    secret: &[u8],
    args: PruneArgs,
) -> anyhow::Result<Report> {
    let mut repo = Repository::open(location, secret).await?;
    let keep_within =
        parse_duration(&args.keep_within).map_err(|e| anyhow::anyhow!("--keep-within: {e}"))?;
    let report = crate::repository::prune::prune(
        &mut repo,
        &PruneOptions {
            keep_within,
            keep_last: args.keep_last,
            dry_run: args.dry_run,
            workload: None,
        },
    )
    .await?;
    Ok(prune_report(&report))
}

fn prune_report(report: &PruneReport) -> Report {
    let gc_skipped = report
        .gc_skipped
        .as_ref()
        .map(|r| format!("; garbage collection skipped: {r}"))
        .unwrap_or_default();
    let unreadable = if report.packs_unreadable.is_empty() {
        String::new()
    } else {
        format!(
            "; {} packs no index names could not be read and were kept (check them with `repo verify`): {}",
            report.packs_unreadable.len(),
            report.packs_unreadable.join("; ")
        )
    };
    Report::ok(
        serde_json::json!({"pointsRemoved": report.points_removed, "pointsKept": report.points_kept, "packsRemoved": report.packs_removed, "bytesFreed": report.bytes_freed, "gcSkipped": report.gc_skipped, "packsUnreadable": report.packs_unreadable}),
        format!(
            "{} points removed, {} kept, {} packs ({} bytes) freed{gc_skipped}{unreadable}",
            report.points_removed.len(),
            report.points_kept,
            report.packs_removed,
            report.bytes_freed,
        ),
    )
}
