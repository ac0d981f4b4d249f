//! Carries out a replication decision's actions. Each is idempotent: the sweep deletes what is
//! there, a job starts only when none of its key runs, and a point's capture is recorded only
//! once it succeeded (snapshots made before a failure are swept as strays).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::decide::{Action, Count, Decision, JobSpec, StartPoint};
use crate::api::reasons::{EventReason, WorkloadReason as R};
use crate::api::vault::SnapshotMethod;
use crate::api::workload::PointInProgress;
use crate::api::{RecoveryVault, ReplicatedWorkload};
use crate::controllers::jobs::JobKey;
use crate::controllers::store::{PointStore, StoreError};
use crate::controllers::{Context, PlannedEvent};
use crate::metrics::{ConsistencyLabels, LocationLabels, WorkloadLabels};
use crate::repository::new_point_id;

/// How long the repositories may take to be ensured before a point start gives up (it is
/// tried again at the next pass).
const ENSURE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a data-path job may take before it counts as failed.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// The workload whose decision is carried out.
pub struct Target<'a> {
    pub rw: &'a ReplicatedWorkload,
    /// `namespace/name`: the owner of its jobs.
    pub key: &'a str,
    pub pods: &'a [String],
}

/// Carries out `d.actions`; a point that started is returned with its request, to be recorded.
/// Failures of a start land in `d` (failure, requeue, events).
pub async fn execute(
    ctx: &Arc<Context>,
    target: &Target<'_>,
    d: &mut Decision,
    now: Timestamp,
) -> Option<(PointInProgress, Option<String>)> {
    let mut started = None;
    for action in std::mem::take(&mut d.actions) {
        match action {
            Action::SweepPoint(point) => sweep_point(ctx, target, &point).await,
            Action::SweepLeftovers => sweep(ctx, target).await,
            Action::Count(c) => count(ctx, target.rw, c),
            Action::Job { tag, spec } => start_job(ctx, target, &tag, spec, now),
            Action::Start(s) => match start_point(ctx, target, &s, d, now).await {
                Ok(point) => {
                    tracing::info!(workload = %target.key, point = %point.id, consistency = %point.consistency, "starting a recovery point");
                    d.requeue = super::super::schedule::POLL;
                    started = Some((point, s.requested.clone()));
                }
                Err((reason, message, retry)) => {
                    d.failure = Some((reason, message));
                    d.requeue = d.requeue.min(retry);
                }
            },
        }
    }
    started
}

/// The first sweep after a start (or after a capture failed): every temporary object of the
/// idle workload is a stray; also for Live vaults (one that was CSI before may have left
/// objects behind).
async fn sweep(ctx: &Context, target: &Target<'_>) {
    let swept = super::super::csi::sweep_leftovers(ctx, target.rw).await;
    let mut set = ctx.swept.lock().unwrap_or_else(|e| e.into_inner());
    match swept {
        Ok(_) => {
            set.insert(target.key.to_string());
        }
        Err(e) => {
            tracing::warn!(workload = %target.key, error = %e, "could not remove temporary objects yet");
            set.remove(target.key);
        }
    }
}

/// The temporary objects of a point that ended, by name: no list of the namespace per point.
/// What cannot be deleted now is left to a sweep of the idle workload.
async fn sweep_point(ctx: &Context, target: &Target<'_>, point: &PointInProgress) {
    if point.method != SnapshotMethod::Csi {
        return;
    }
    if let Err(e) = super::super::csi::remove_point_objects(ctx, target.rw, point).await {
        tracing::warn!(workload = %target.key, point = %point.id, error = %e, "could not remove the point's temporary objects yet");
        super::super::csi::sweep_anew(ctx, target.key);
    }
}

fn count(ctx: &Context, rw: &ReplicatedWorkload, c: Count) {
    let metrics = &ctx.metrics.replication;
    let labels = WorkloadLabels {
        namespace: rw.namespace().unwrap_or_default(),
        workload: rw.name_any(),
    };
    match c {
        Count::Missed(n) => {
            metrics.missed_intervals.get_or_create(&labels).inc_by(n);
        }
        Count::Point(consistency) => {
            metrics
                .recovery_points
                .get_or_create(&ConsistencyLabels {
                    consistency: consistency.as_str().into(),
                })
                .inc();
        }
        Count::Bytes(location, n) => {
            metrics
                .bytes_transferred
                .get_or_create(&LocationLabels {
                    location: location.into(),
                })
                .inc_by(n);
        }
        Count::Replicated(seconds) => {
            metrics
                .replication_duration
                .get_or_create(&labels)
                .observe(seconds);
        }
    }
}

/// The workload's vault, from the shared cache.
fn vault(ctx: &Context, rw: &ReplicatedWorkload) -> Result<RecoveryVault, StoreError> {
    let name = &rw.spec.vault_name;
    ctx.stores
        .vaults
        .get(&ObjectRef::new(name).within(&rw.namespace().unwrap_or_default()))
        .and_then(|g| g.0.as_ref().ok().cloned())
        .ok_or_else(|| StoreError::Vault(format!("RecoveryVault {name} not found")))
}

/// The store of the workload's vault (opened once per vault, see `store::VaultStores`).
pub async fn store(
    ctx: &Context,
    rw: &ReplicatedWorkload,
) -> Result<Arc<dyn PointStore>, StoreError> {
    let vault = vault(ctx, rw)?;
    ctx.point_stores.get(ctx, &vault).await
}

fn start_job(ctx: &Arc<Context>, target: &Target<'_>, tag: &str, spec: JobSpec, now: Timestamp) {
    let key = JobKey::new(target.key, spec.kind());
    let (ctx2, rw, workload) = (ctx.clone(), target.rw.clone(), target.key.to_string());
    let work = move || async move {
        let store = store(&ctx2, &rw).await?;
        // A cluster another one fenced out writes nothing of the workload into the target:
        // no point, no copy, no retention (the points there are the other cluster's now).
        if !matches!(spec, JobSpec::DiscardParts { .. })
            && let Some(f) = store.fence_of(&workload).await?
            && f.cluster_uid != ctx2.cluster.uid
        {
            return Err(format!(
                "the vault's target location is fenced by cluster {}: nothing of the workload is written there",
                if f.cluster_name.is_empty() {
                    &f.cluster_uid
                } else {
                    &f.cluster_name
                }
            ));
        }
        let done = match spec {
            JobSpec::Finish {
                point,
                parts,
                claims,
            } => {
                let origin = origin(&ctx2, &rw, &claims).await;
                serde_json::to_value(store.finish_point(&point, &parts, origin.as_ref()).await?)
            }
            JobSpec::CatchUp => serde_json::to_value(store.catch_up(&workload).await?),
            JobSpec::Prune(retention) => {
                serde_json::to_value(store.prune(&workload, &retention).await?)
            }
            JobSpec::DiscardParts { point } => {
                if let Err(e) = store.discard_parts(&point).await {
                    tracing::warn!(point = %point, error = %e, "could not discard the parts of a failed point");
                }
                Ok(serde_json::Value::Null)
            }
        };
        done.map_err(|e| e.to_string())
    };
    // The work is idempotent: one that hangs fails, and the next pass starts it again. The
    // time runs from the job's turn: waiting for one is not hanging.
    let bounded = move || async move {
        tokio::time::timeout(JOB_TIMEOUT, work())
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "storage did not finish within {}s",
                    JOB_TIMEOUT.as_secs()
                ))
            })
    };
    ctx.jobs.start_admitted(key, tag, now, bounded);
}

/// What the point carries of its workload: this cluster, and the workload's definition (read
/// now; a point is still written without it when it cannot be read, and says so in the log).
async fn origin(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    claims: &[String],
) -> Option<crate::repository::format::Origin> {
    let namespace = rw.namespace().unwrap_or_default();
    let w = &rw.spec.workload_ref;
    let definition = match crate::controllers::definition::gather(
        &ctx.client,
        &namespace,
        w.kind,
        &w.name,
        claims,
        &ctx.stores.services_in(&namespace),
    )
    .await
    {
        Ok(d) => d.to_bytes(),
        Err(e) => {
            tracing::warn!(workload = %w.name, error = %e, "the point carries no definition of the workload");
            return None;
        }
    };
    Some(crate::repository::format::Origin {
        cluster_uid: ctx.cluster.uid.clone(),
        cluster_name: ctx.cluster.name.clone(),
        kind: w.kind.as_str().to_string(),
        namespace,
        name: w.name.clone(),
        definition,
    })
}

type StartFailure = (R, String, Duration);

/// Ensures the repositories, then captures the point: pre hooks, the snapshots (CSI), the post
/// hooks. Hook failures become events in `d` and notes on the point.
async fn start_point(
    ctx: &Context,
    target: &Target<'_>,
    s: &StartPoint,
    d: &mut Decision,
    now: Timestamp,
) -> Result<PointInProgress, StartFailure> {
    let refused = |message: String| (R::RepositoryRefused, message, Duration::from_secs(60));
    // The repositories exist (and are ours) before any agent is asked to write.
    let store = store(ctx, target.rw).await.map_err(|e| refused(e.into()))?;
    tokio::time::timeout(ENSURE_TIMEOUT, store.ensure())
        .await
        .unwrap_or(Err(StoreError::Timeout {
            seconds: ENSURE_TIMEOUT.as_secs(),
        }))
        .map_err(|e| refused(e.into()))?;
    // Another cluster that failed the workload over owns it in the target location now.
    let fence = tokio::time::timeout(ENSURE_TIMEOUT, store.fence_of(target.key))
        .await
        .unwrap_or(Err(StoreError::Timeout {
            seconds: ENSURE_TIMEOUT.as_secs(),
        }))
        .map_err(|e| refused(e.into()))?;
    if let Some(f) = fence.filter(|f| f.cluster_uid != ctx.cluster.uid) {
        return Err((
            R::Fenced,
            format!(
                "the vault's target location is fenced by cluster {} (Failover uid {}, epoch {}, {}): this cluster writes no more points of the workload there",
                if f.cluster_name.is_empty() {
                    &f.cluster_uid
                } else {
                    &f.cluster_name
                },
                f.failover_uid,
                f.epoch,
                f.time
            ),
            Duration::from_secs(60),
        ));
    }
    let csi = s.method == SnapshotMethod::Csi;
    if csi && let Err(message) = super::super::csi::api_available(ctx, target.rw).await {
        return Err((R::CaptureFailed, message, Duration::from_secs(60)));
    }
    let mut point = PointInProgress {
        id: new_point_id(now),
        consistency: s.consistency.as_str().into(),
        method: s.method,
        started: now,
        claims: s.claims.clone(),
        degraded: None,
        warnings: vec![],
        last_progress: None,
    };
    let captured = capture(ctx, target, s, &mut point, d).await;
    for message in point.degraded.iter().chain(&point.warnings) {
        d.events.push(PlannedEvent::warning(
            EventReason::HookFailed,
            "Quiesce",
            format!("point {}: {message}", point.id),
        ));
    }
    if let Err(e) = captured {
        // Snapshots created before the error are removed as strays at the next idle step, by a
        // listing made after them.
        super::super::csi::sweep_anew(ctx, target.key);
        return Err((R::CaptureFailed, e, Duration::from_secs(10)));
    }
    Ok(point)
}

/// The capture instant: the pre hooks, the freeze of every node's filesystems, the snapshots,
/// the thaw once they are cut, the post hooks. A point is AppConsistent only when every hook
/// and every freeze succeeded (`point.degraded` says why not).
async fn capture(
    ctx: &Context,
    target: &Target<'_>,
    s: &StartPoint,
    point: &mut PointInProgress,
    d: &mut Decision,
) -> Result<(), String> {
    let namespace = target.rw.namespace().unwrap_or_default();
    let hooks = super::super::hooks::run;
    let degrade = |point: &mut PointInProgress, why: String| match &mut point.degraded {
        Some(d) => d.push_str(&format!("; {why}")),
        None => {
            point.degraded = Some(format!(
                "the point is CrashConsistent, not AppConsistent: {why}"
            ))
        }
    };
    if let Some(h) = &s.hooks {
        let failed = hooks(ctx, &namespace, target.pods, &h.pre, "pre").await;
        if !failed.is_empty() {
            degrade(point, failed.join("; "));
        }
    }
    let frozen = match s.freeze {
        Some(bound) => {
            use super::super::freeze::{Frozen, hold, hold_guest};
            let workload = &target.rw.spec.workload_ref;
            // A VirtualMachine's filesystems are the guest's, inside its disks: KubeVirt's
            // guest agent freezes them, not the node's agents.
            let held = if workload.kind == crate::api::workload::WorkloadKind::VirtualMachine {
                hold_guest(ctx, &namespace, &workload.name, bound)
                    .await
                    .map(Frozen::Guest)
            } else {
                hold(ctx, target.rw, &point.id, &s.claims, &s.nodes, bound)
                    .await
                    .map(Frozen::Filesystems)
            };
            match held {
                Ok(held) => Some(held),
                Err(why) => {
                    d.events.push(PlannedEvent::warning(
                        EventReason::FreezeFailed,
                        "Freeze",
                        format!("point {}: {why}", point.id),
                    ));
                    degrade(point, format!("the filesystems were not frozen: {why}"));
                    None
                }
            }
        }
        None => None,
    };
    let captured = if s.method == SnapshotMethod::Csi {
        let class = s.snapshot_class.as_deref();
        super::super::csi::take_snapshots(ctx, target.rw, point, class).await
    } else {
        Ok(())
    };
    if let Some(held) = frozen {
        // The snapshots must be cut before the agents' bound thaws the filesystems.
        let cut = match &captured {
            Ok(()) => {
                super::super::csi::wait_until_cut(ctx, target.rw, point, held.remaining()).await
            }
            Err(e) => Err(e.clone()),
        };
        let what = match &held {
            super::super::freeze::Frozen::Filesystems(_) => {
                format!("filesystems frozen on {} node(s)", s.nodes.len())
            }
            super::super::freeze::Frozen::Guest(_) => "the guest's filesystems frozen".into(),
        };
        let reported = held.release(ctx, target.rw).await;
        match cut {
            Ok(()) => d.events.push(PlannedEvent::normal(
                EventReason::FilesystemsFrozen,
                "Freeze",
                format!(
                    "point {}: {what} while the snapshots were cut ({})",
                    point.id,
                    reported.join("; ")
                ),
            )),
            Err(why) => degrade(
                point,
                format!("the snapshots were not cut while the filesystems were frozen: {why}"),
            ),
        }
    } else if s.hooks.is_some()
        && captured.is_ok()
        && let Err(message) =
            super::super::csi::wait_until_cut(ctx, target.rw, point, Duration::from_secs(60)).await
    {
        point.warnings.push(message);
    }
    if let Some(h) = &s.hooks {
        point.warnings = hooks(ctx, &namespace, target.pods, &h.post, "post").await;
    }
    captured
}
