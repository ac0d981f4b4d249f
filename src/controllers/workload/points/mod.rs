//! Carries out the replication decision ([`super::schedule::decide`]): starts points, assembles
//! the agents' parts, copies points to the target, applies retention, and records the outcome in
//! the status. Every step is idempotent, so an operator killed anywhere resumes from the status.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::observe::Observed;
use super::schedule::{self, POLL, Schedule, Step};
use crate::api::ReplicatedWorkload;
use crate::api::reasons::{EventReason, WorkloadReason as R};
use crate::api::vault::SnapshotMethod;
use crate::api::workload::{
    PointAttempt, PointInProgress, PointRef, Progress, ReplicatedWorkloadStatus, VolumeStatus,
};
use crate::controllers::{Context, PlannedEvent};
use crate::metrics::{ConsistencyLabels, LocationLabels, WorkloadLabels};
use crate::repository::format::Manifest;
use crate::repository::prune::{PruneOptions, prune};
use crate::repository::replicate::replicate;
use crate::repository::{RepoError, Repository, new_point_id};
use crate::storage::vault::{AccessError, VaultAccess};

/// What the replication step produced for the status and the reconcile.
pub struct Advanced {
    pub events: Vec<PlannedEvent>,
    /// Why replication is not working, for the Replicating condition.
    pub failure: Option<(R, String)>,
    pub requeue: Duration,
    pub schedule: Option<Schedule>,
}

/// How long storage work of one step may take before the reconcile gives up on it (the work is
/// idempotent and resumes at the next reconcile).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(600);

fn until(next: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(next.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(500))
}

/// Advances the pipeline by one step and updates `status` in place.
pub async fn advance(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    observed: &Observed,
    ready: bool,
    volumes: &[VolumeStatus],
    status: &mut ReplicatedWorkloadStatus,
    now: Timestamp,
) -> Advanced {
    let mut out = Advanced {
        events: vec![],
        failure: None,
        requeue: super::plan::RECHECK,
        schedule: None,
    };
    let Some(Ok(vault)) = &observed.vault else {
        return out;
    };
    // A name that cannot label the point's objects stops here (Ready says why).
    if crate::api::names::label_value_problem("", &observed.name, "").is_some() {
        return out;
    }
    let spec = &vault.spec;
    let policy = spec
        .replication_policy
        .with_override(rw.spec.replication_policy.as_ref());
    // Only hooks quiesce an application here: a filesystem freeze is not carried out (the
    // Replicating condition says so when it is asked for), and a live read is never an instant.
    let app_possible = spec.snapshot_method == SnapshotMethod::Csi
        && rw
            .spec
            .app_consistency
            .as_ref()
            .and_then(|a| a.hooks.as_ref())
            .is_some_and(|h| !h.pre.is_empty());
    let schedule = match Schedule::from_policy(&policy, app_possible) {
        Ok(s) => s,
        Err(message) => {
            out.failure = Some((R::CaptureFailed, message));
            return out;
        }
    };
    out.schedule = Some(schedule.clone());
    let namespace = rw.namespace().unwrap_or_default();
    let name = rw.name_any();
    let labels = WorkloadLabels {
        namespace: namespace.clone(),
        workload: name.clone(),
    };
    let metrics = &ctx.metrics.replication;
    let requested = rw
        .annotations()
        .get(crate::api::work::POINT_REQUEST_ANNOTATION)
        .cloned();
    let step = schedule::decide(
        (&namespace, &name),
        &schedule,
        status,
        requested.as_deref(),
        ready,
        volumes,
        &observed.registrations,
        now,
    );
    let access = || VaultAccess::resolve(&ctx.client, &namespace, spec, &ctx.storage);
    let csi = spec.snapshot_method == SnapshotMethod::Csi;
    // A CSI point in flight is exposed to the agents step by step as its snapshots get ready.
    let step = match &status.point_in_progress {
        // The point's own method: the vault's may have changed since the point started.
        Some(point) if point.method == SnapshotMethod::Csi && matches!(step, Step::Wait { .. }) => {
            match super::csi::expose(ctx, rw, point, volumes, now).await {
                Ok(super::csi::Exposure::Failed(message)) => Step::Fail {
                    reason: R::CaptureFailed,
                    message: format!("point {}: {message}", point.id),
                },
                Ok(super::csi::Exposure::Pending) => step,
                Err(e) => {
                    out.failure = Some((
                        R::CaptureFailed,
                        format!("exposing the snapshots of point {}: {e}", point.id),
                    ));
                    out.requeue = POLL;
                    return out;
                }
            }
        }
        _ => step,
    };
    // Temporary snapshots, claims and reader pods of finished, failed or abandoned points: after
    // every point, and once per workload after the operator starts (strays of a predecessor);
    // not at every idle reconcile, which would list three kinds per workload each time.
    let key = format!("{namespace}/{name}");
    let swept = ctx.swept.lock().expect("swept lock").contains(&key);
    let sweep = match &step {
        Step::Finish { .. } | Step::Fail { .. } => true,
        Step::Idle { .. } => !swept,
        _ => false,
    };
    // Also for Live vaults: one that was CSI before may have left objects behind.
    if sweep {
        match super::csi::cleanup(ctx, rw, None).await {
            Ok(_) => {
                ctx.swept.lock().expect("swept lock").insert(key.clone());
            }
            Err(e) => {
                tracing::warn!(workload = %name, namespace = %namespace, error = %e, "could not remove temporary objects yet");
                ctx.swept.lock().expect("swept lock").remove(&key);
            }
        }
    }
    match step {
        Step::Idle { next } => {
            out.requeue = until(next, now).min(out.requeue);
            if status.latest_point.as_ref().is_some_and(|p| !p.replicated) {
                // The target was unreachable when the last point finished: catch up.
                match with_timeout(catch_up(access, &format!("{namespace}/{name}"))).await {
                    Ok(_) => mark_replicated(status, now),
                    Err(message) => {
                        out.failure = Some((R::ReplicationFailed, message));
                        out.requeue = out.requeue.min(Duration::from_secs(30));
                    }
                }
            }
        }
        Step::Start {
            consistency,
            missed,
        } => {
            if missed > 0 {
                metrics
                    .missed_intervals
                    .get_or_create(&labels)
                    .inc_by(missed);
            }
            // The repositories exist (and are ours) before any agent is asked to write.
            if let Err(message) = with_timeout(ensure_repositories(access)).await {
                out.failure = Some((R::RepositoryRefused, message));
                out.requeue = Duration::from_secs(60);
                return out;
            }
            let point = PointInProgress {
                id: new_point_id(now),
                consistency: consistency.into(),
                method: spec.snapshot_method,
                started: now,
                claims: volumes.iter().map(|v| v.claim_name.clone()).collect(),
                degraded: None,
                warnings: vec![],
                last_progress: None,
            };
            let mut point = point;
            if csi && let Err(message) = super::csi::api_available(ctx, rw).await {
                out.failure = Some((R::CaptureFailed, message));
                out.requeue = Duration::from_secs(60);
                return out;
            }
            let hooks = rw
                .spec
                .app_consistency
                .as_ref()
                .and_then(|a| a.hooks.clone())
                .filter(|_| consistency == "AppConsistent");
            let pods: Vec<String> = observed.pods.iter().map(|p| p.name.clone()).collect();
            if let Some(hooks) = &hooks {
                let failed = super::hooks::run(ctx, &namespace, &pods, &hooks.pre, "pre").await;
                if !failed.is_empty() {
                    point.degraded = Some(format!(
                        "the point is CrashConsistent, not AppConsistent: {}",
                        failed.join("; ")
                    ));
                }
            }
            // The capture instant, between the pre and post hooks.
            let captured = if csi {
                super::csi::take_snapshots(
                    ctx,
                    rw,
                    &point,
                    spec.volume_snapshot_class_name.as_deref(),
                )
                .await
            } else {
                Ok(())
            };
            if let Some(_) = &hooks
                && captured.is_ok()
                && let Err(message) =
                    super::csi::wait_until_cut(ctx, rw, &point, Duration::from_secs(60)).await
            {
                point.warnings.push(message);
            }
            if let Some(hooks) = &hooks {
                point.warnings =
                    super::hooks::run(ctx, &namespace, &pods, &hooks.post, "post").await;
            }
            for message in point.degraded.iter().chain(&point.warnings) {
                out.events.push(PlannedEvent::warning(
                    EventReason::HookFailed,
                    "Quiesce",
                    format!("point {}: {message}", point.id),
                ));
            }
            if let Err(e) = captured {
                // Snapshots created before the error are removed as strays at the next idle step.
                ctx.swept.lock().expect("swept lock").remove(&key);
                out.failure = Some((R::CaptureFailed, e));
                out.requeue = Duration::from_secs(10);
                return out;
            }
            tracing::info!(workload = %labels.workload, namespace = %labels.namespace, point = %point.id, consistency, "starting a recovery point");
            status.point_in_progress = Some(point);
            status.handled_point_request = requested;
            status.progress = None;
            out.requeue = POLL;
        }
        Step::Wait {
            bytes_done,
            bytes_total,
        } => {
            if bytes_total > 0 {
                status.progress = Some(Progress {
                    total_bytes: bytes_total,
                    bytes_done,
                });
            }
            // The mark the stall timeout counts from moves only when the reports do.
            if let Some(point) = status.point_in_progress.as_mut()
                && point.last_progress.as_ref().map_or(0, |p| p.bytes_done) != bytes_done
            {
                point.last_progress = Some(crate::api::workload::ProgressMark {
                    bytes_done,
                    time: now,
                });
            }
            out.requeue = POLL;
        }
        Step::Finish {
            parts,
            stored_bytes,
        } => {
            let Some(point) = status.point_in_progress.clone() else {
                return out;
            };
            match with_timeout(finish(access, &point, &parts)).await {
                Err(message) => {
                    // The parts stay; the next reconcile tries again.
                    out.failure = Some((R::ReplicationFailed, message));
                    out.requeue = Duration::from_secs(5);
                }
                Ok((manifest, replicated)) => {
                    let finished = crate::clock::now();
                    let consistency = manifest.consistency.as_str().to_string();
                    let reference = PointRef {
                        id: manifest.id.clone(),
                        time: point.started,
                        replicated: replicated.is_ok(),
                        consistency: consistency.clone(),
                    };
                    status.latest_point = Some(reference.clone());
                    match consistency.as_str() {
                        "AppConsistent" => {
                            status.latest_app_consistent_point = Some(reference.clone());
                            status.latest_crash_consistent_point = Some(reference.clone());
                        }
                        "CrashConsistent" => {
                            status.latest_crash_consistent_point = Some(reference.clone())
                        }
                        _ => {}
                    }
                    status.point_count = Some(status.point_count.unwrap_or(0).saturating_add(1));
                    status.oldest_point = status.oldest_point.or(Some(point.started));
                    status.point_in_progress = None;
                    status.progress = None;
                    status.last_attempt = Some(PointAttempt {
                        id: point.id.clone(),
                        started: point.started,
                        consistency: consistency.clone(),
                        succeeded: true,
                        // Hook failures the point survived, for the Replicating condition.
                        message: point
                            .degraded
                            .iter()
                            .chain(&point.warnings)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; "),
                    });
                    metrics
                        .recovery_points
                        .get_or_create(&ConsistencyLabels {
                            consistency: consistency.clone(),
                        })
                        .inc();
                    metrics
                        .bytes_transferred
                        .get_or_create(&LocationLabels {
                            location: "cache".into(),
                        })
                        .inc_by(stored_bytes);
                    let mut note = format!(
                        "point {} ({consistency}, {} volume(s), {} bytes, {} added to the cache)",
                        manifest.id,
                        manifest.volumes.len(),
                        manifest.stats.bytes,
                        stored_bytes
                    );
                    match replicated {
                        Ok(copied) => {
                            metrics
                                .bytes_transferred
                                .get_or_create(&LocationLabels {
                                    location: "target".into(),
                                })
                                .inc_by(copied);
                            let took = finished.duration_since(point.started).as_secs_f64();
                            metrics
                                .replication_duration
                                .get_or_create(&labels)
                                .observe(took);
                            status.latest_replicated_point = Some(reference);
                            note.push_str(&format!(
                                " replicated to the target in {took:.1}s ({copied} bytes copied)"
                            ));
                            out.events.push(PlannedEvent::normal(
                                EventReason::RecoveryPointCreated,
                                "Replicate",
                                note,
                            ));
                        }
                        Err(message) => {
                            note.push_str(&format!(
                                " is in the cache, but copying it to the target failed: {message}"
                            ));
                            out.events.push(PlannedEvent::warning(
                                EventReason::ReplicationFailed,
                                "Replicate",
                                note.clone(),
                            ));
                            out.failure = Some((R::ReplicationFailed, note));
                            out.requeue = Duration::from_secs(30);
                        }
                    }
                    if let Some(pruned) = retention(
                        access,
                        status,
                        &schedule,
                        &format!("{namespace}/{name}"),
                        now,
                    )
                    .await
                    {
                        match pruned {
                            Ok(removed) if removed > 0 => out.events.push(PlannedEvent::normal(
                                EventReason::RecoveryPointsPruned,
                                "Prune",
                                format!(
                                    "{removed} point(s) older than {} removed from cache and target",
                                    policy.recovery_point_retention
                                ),
                            )),
                            Ok(_) => {}
                            Err(message) => out.events.push(PlannedEvent::warning(
                                EventReason::ReconcileFailed,
                                "Prune",
                                format!("retention could not run: {message}"),
                            )),
                        }
                    }
                    let next = status.last_attempt.as_ref().map(|a| a.started);
                    if let Some(next) = next {
                        out.requeue = out
                            .requeue
                            .min(until(schedule::after(next, schedule.crash), finished));
                    }
                }
            }
        }
        Step::Fail { reason, message } => {
            let Some(point) = status.point_in_progress.take() else {
                return out;
            };
            // The parts written so far become garbage for the next prune.
            if let Ok(a) = access().await
                && let Ok(cache) = Repository::open(a.cache.clone(), &a.key).await
                && let Err(e) = cache.discard_parts(&point.id).await
            {
                tracing::warn!(point = %point.id, error = %e, "could not discard the parts of a failed point");
            }
            metrics.missed_intervals.get_or_create(&labels).inc();
            status.progress = None;
            status.last_attempt = Some(PointAttempt {
                id: point.id.clone(),
                started: point.started,
                consistency: point.consistency.clone(),
                succeeded: false,
                message: message.clone(),
            });
            out.events.push(PlannedEvent::warning(
                EventReason::RecoveryPointFailed,
                "Capture",
                message.clone(),
            ));
            out.failure = Some((reason, message));
            out.requeue = Duration::from_secs(1);
        }
    }
    out
}

async fn with_timeout<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(STORAGE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "storage did not finish within {}s",
                STORAGE_TIMEOUT.as_secs()
            ))
        })
}

async fn ensure_repositories<F, Fut>(access: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<VaultAccess, AccessError>>,
{
    let a = access().await.map_err(|e| e.to_string())?;
    let cache = a
        .open_cache()
        .await
        .map_err(|e| format!("cache location: {e}"))?;
    a.open_target(&cache)
        .await
        .map_err(|e| format!("target location: {e}"))?;
    Ok(())
}

/// Assembles the point in the cache and copies it (with any earlier point of the workload the
/// target lacks) to the target. The inner result is the replication's: bytes copied, or why not.
async fn finish<F, Fut>(
    access: F,
    point: &PointInProgress,
    parts: &[String],
) -> Result<(Manifest, Result<u64, String>), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<VaultAccess, AccessError>>,
{
    let a = access().await.map_err(|e| e.to_string())?;
    let cache = Repository::open(a.cache.clone(), &a.key)
        .await
        .map_err(|e| format!("cache location: {e}"))?;
    let manifest = cache
        .assemble(&point.id, parts)
        .await
        .map_err(|e| format!("assembling point {}: {e}", point.id))?;
    if let Err(e) = cache.discard_stale_parts(&manifest.workload, None).await {
        tracing::warn!(error = %e, "could not remove the parts of abandoned points yet");
    }
    let replicated = copy_missing(&a, &cache, &manifest.workload)
        .await
        .map_err(|e| format!("target location: {e}"));
    Ok((manifest, replicated))
}

/// Copies the workload's points the target lacks; returns the bytes copied.
async fn copy_missing(
    a: &VaultAccess,
    cache: &Repository,
    workload: &str,
) -> Result<u64, RepoError> {
    let mut target = a.open_target(cache).await?;
    let present: std::collections::HashSet<String> =
        target.point_ids().await?.into_iter().collect();
    let mut missing = Vec::new();
    for id in cache.point_ids().await? {
        if !present.contains(&id) && cache.manifest(&id).await?.workload == workload {
            missing.push(id);
        }
    }
    let stats = replicate(cache, &mut target, &missing).await?;
    Ok(stats.bytes_copied)
}

async fn catch_up<F, Fut>(access: F, workload: &str) -> Result<u64, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<VaultAccess, AccessError>>,
{
    let a = access().await.map_err(|e| e.to_string())?;
    let cache = Repository::open(a.cache.clone(), &a.key)
        .await
        .map_err(|e| format!("cache location: {e}"))?;
    copy_missing(&a, &cache, workload)
        .await
        .map_err(|e| format!("target location: {e}"))
}

fn mark_replicated(status: &mut ReplicatedWorkloadStatus, _now: Timestamp) {
    for p in [
        &mut status.latest_point,
        &mut status.latest_crash_consistent_point,
        &mut status.latest_app_consistent_point,
    ]
    .into_iter()
    .flatten()
    {
        p.replicated = true;
    }
    status.latest_replicated_point = status.latest_point.clone();
}

/// Prunes both locations when the oldest point has outlived the retention by a tenth of it (so
/// retention runs in batches, not at every point). Returns the points removed from the cache,
/// and updates the count and the oldest point from what remains.
async fn retention<F, Fut>(
    access: F,
    status: &mut ReplicatedWorkloadStatus,
    schedule: &Schedule,
    workload: &str,
    now: Timestamp,
) -> Option<Result<usize, String>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<VaultAccess, AccessError>>,
{
    let oldest = status.oldest_point?;
    let slack = (schedule.retention / 10).max(schedule.crash);
    let age = Duration::try_from(now.duration_since(oldest)).unwrap_or_default();
    if age <= schedule.retention.saturating_add(slack) {
        return None;
    }
    let run = async {
        let a = access().await.map_err(|e| e.to_string())?;
        let options = PruneOptions {
            keep_within: schedule.retention,
            keep_last: 1,
            dry_run: false,
            workload: Some(workload.to_string()),
        };
        let mut removed = 0;
        let mut remaining = (0u32, None);
        for (name, location) in [("cache", &a.cache), ("target", &a.target)] {
            let mut repo = Repository::open(location.clone(), &a.key)
                .await
                .map_err(|e| format!("{name} location: {e}"))?;
            let report = prune(&mut repo, &options)
                .await
                .map_err(|e| format!("{name} location: {e}"))?;
            if name == "cache" {
                removed = report.points_removed.len();
                let mine: Vec<_> = repo
                    .manifests()
                    .await
                    .map_err(|e| format!("{name} location: {e}"))?
                    .into_iter()
                    .filter(|m| m.workload == workload)
                    .collect();
                remaining = (
                    mine.len() as u32,
                    mine.first().and_then(|m| m.time.parse::<Timestamp>().ok()),
                );
            }
        }
        Ok((removed, remaining))
    };
    Some(with_timeout(run).await.map(|(removed, (count, oldest))| {
        status.point_count = Some(count);
        status.oldest_point = oldest;
        removed
    }))
}
