//! ReplicatedWorkload controller: resolves the protected workload, its volumes, nodes and zones,
//! and whether an agent is registered on each of those nodes.

pub mod apply;
pub mod csi;
pub mod freeze;
pub mod hooks;
pub mod observe;
pub mod plan;
pub mod points;
pub mod schedule;
pub mod status;
pub mod triggers;

use std::sync::Arc;

use futures::StreamExt;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::api::ReplicatedWorkload;
use crate::controllers::{Context, Error, write_status};
use crate::metrics::ControllerLabels;

pub const CONTROLLER: &str = "replicatedworkload";

/// The workloads whose data-path jobs finished, for the controller's `reconcile_on`: the pass
/// that records an outcome runs at once rather than at the next poll.
pub fn job_triggers(
    ctx: &Context,
) -> impl futures::Stream<Item = ObjectRef<DeserializeGuard<ReplicatedWorkload>>> + Send + 'static {
    use crate::controllers::jobs::JobKind;
    ctx.jobs.completions().filter_map(|key| {
        let owner = match key.kind {
            JobKind::FinishPoint | JobKind::CatchUp | JobKind::Prune => key.owner.split_once('/'),
            JobKind::DiscardParts | JobKind::ForgetWorkload | JobKind::Discover => None,
        };
        futures::future::ready(owner.map(|(ns, name)| ObjectRef::new(name).within(ns)))
    })
}

pub async fn reconcile(workload: &ReplicatedWorkload, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = workload.namespace().unwrap_or_default();
    let now = crate::clock::now();
    let observed = observe::observe(&ctx, &namespace, &workload.name_any(), &workload.spec).await?;
    let mut plan = plan::plan(&workload.spec, workload.status.as_ref(), &observed, now);
    let ready = plan
        .conditions
        .iter()
        .any(|c| c.r#type == "Ready" && c.is_true());
    let mut next = workload.status.clone().unwrap_or_default();
    let advanced = points::advance(
        &ctx,
        workload,
        &observed,
        ready,
        &plan.volumes,
        &mut next,
        now,
    )
    .await;
    let committed = observed.failover.as_ref().filter(|f| f.committed);
    if committed.is_some() {
        forget_points(&mut next);
    }
    // A freeze asked for with Live captures is not carried out (the condition says why).
    let live = matches!(&observed.vault, Some(Ok(v))
        if v.spec.snapshot_method == crate::api::vault::SnapshotMethod::Live);
    let freeze = live
        && workload
            .spec
            .app_consistency
            .as_ref()
            .is_some_and(|a| a.freeze_filesystems);
    let (replication, flips) = schedule::replication_conditions(
        &next,
        advanced.schedule.as_ref(),
        advanced.failure.clone(),
        freeze,
        now,
    );
    plan.events.extend(plan::replication_events(
        workload.status.as_ref(),
        &replication,
    ));
    plan.events.extend(advanced.events);
    plan.conditions.extend(replication);
    if let Some(f) = committed {
        unprotected(&mut plan.conditions, &f.name);
    }
    // A point this pass started is in no status if the pass fails before its write: what it
    // made is found by a listing at the workload's next idle step.
    let unrecorded = |e: Error| {
        csi::sweep_anew(&ctx, &format!("{namespace}/{}", workload.name_any()));
        e
    };
    fenced(
        &ctx,
        workload,
        &observed,
        &advanced.failure,
        &mut next,
        &mut plan,
    )
    .await
    .map_err(unrecorded)?;
    plan.requeue = plan.requeue.min(advanced.requeue);
    if let Some(flips) = flips
        && let Ok(d) = std::time::Duration::try_from(flips.duration_since(now))
    {
        plan.requeue = plan.requeue.min(d);
    }
    let rpo = schedule::rpo_seconds(&next, now);
    record_metrics(&ctx, workload, &next, rpo, advanced.schedule.as_ref());
    let status = status::build(
        &next,
        workload.status.as_ref(),
        &plan,
        workload.metadata.generation,
        now,
        rpo,
    );
    let written = write_status(&ctx, workload, workload.status.as_ref(), &status)
        .await
        .map_err(unrecorded)?;
    // The status holds what the jobs produced: their outcomes are not announced again.
    for (key, tag) in &advanced.recorded {
        ctx.jobs.mark_recorded(key, tag);
    }
    if written {
        ctx.metrics
            .status_writes
            .get_or_create(&ControllerLabels {
                controller: CONTROLLER,
            })
            .inc();
    }
    apply::apply(&ctx, workload, &plan).await;
    Ok(Action::requeue(plan.requeue))
}

/// Another cluster's fence in the target location (found when a point was to start) is kept in
/// the status until a point may start again, shown as `Fenced=True`, and by `spec.onFenced`
/// stops this copy (scaled to zero, never deleted): two copies never serve one workload.
async fn fenced(
    ctx: &Context,
    workload: &ReplicatedWorkload,
    observed: &observe::Observed,
    failure: &Option<(crate::api::reasons::WorkloadReason, String)>,
    next: &mut crate::api::workload::ReplicatedWorkloadStatus,
    plan: &mut plan::Plan,
) -> Result<(), Error> {
    use crate::api::conditions::{Condition, ConditionStatus};
    use crate::api::reasons::{ConditionType as T, WorkloadReason as R};
    match failure {
        Some((R::Fenced, message)) => {
            if next.fenced.is_none() {
                next.fenced_since = Some(crate::clock::now());
            }
            next.fenced = Some(message.clone());
        }
        _ if next.point_in_progress.is_some() => {
            next.fenced = None;
            next.fenced_since = None;
        }
        _ => {}
    }
    let Some(message) = next.fenced.clone() else {
        return Ok(());
    };
    let w = &workload.spec.workload_ref;
    let namespace = workload.namespace().unwrap_or_default();
    // A failover from a vault that brought the workload back here after the fence was found
    // (a failback from the other cluster) runs it now: the old fence no longer speaks for it.
    // One from before the fence (this cluster's own region failover) does not.
    let since = next.fenced_since;
    let returned = ctx.stores.failovers.state().iter().any(|g| {
        g.0.as_ref().is_ok_and(|f| {
            f.namespace().as_deref() == Some(namespace.as_str())
                && f.spec.vault_name.is_some()
                && since.is_some_and(|t| {
                    // Creation times have whole seconds.
                    f.metadata
                        .creation_timestamp
                        .as_ref()
                        .is_some_and(|c| c.0.as_second() >= t.as_second())
                })
                && f.metadata.deletion_timestamp.is_none()
                && f.status
                    .as_ref()
                    .and_then(|s| s.found.as_ref())
                    .is_some_and(|found| found.name == w.name)
        })
    });
    let stop = workload.spec.on_fenced.unwrap_or_default()
        == crate::api::workload::OnFenced::ScaleToZero
        && !returned;
    let message = if returned {
        format!(
            "{message}; {} {} runs here again, brought back by a failover from a vault",
            w.kind.as_str(),
            w.name
        )
    } else if stop {
        format!(
            "{message}; {} {} is scaled to zero (spec.onFenced: ScaleToZero)",
            w.kind.as_str(),
            w.name
        )
    } else {
        format!(
            "{message}; {} {} keeps running (spec.onFenced: Keep)",
            w.kind.as_str(),
            w.name
        )
    };
    // Its points in the target may be gone (the other cluster committed): never claim them.
    for c in plan
        .conditions
        .iter_mut()
        .filter(|c| c.r#type == T::Protected.as_str())
    {
        *c = Condition::new(
            T::Protected,
            ConditionStatus::False,
            R::Fenced,
            "another cluster failed the workload over: its points in the target location are that cluster's now",
        );
    }
    plan.conditions.push(Condition::new(
        T::Fenced,
        ConditionStatus::True,
        R::Fenced,
        message,
    ));
    if stop && !observed.pods.is_empty() {
        crate::controllers::objects::Kind::workload(w.kind)
            .api(&ctx.client, Some(&namespace))
            .patch(
                &w.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
            )
            .await
            .map_err(Error::Kube)?;
        tracing::warn!(workload = %w.name, "fenced by another cluster: scaled to zero");
    }
    Ok(())
}

/// A committed failover deleted every point: the status says so rather than show points that
/// no longer exist.
fn forget_points(next: &mut crate::api::workload::ReplicatedWorkloadStatus) {
    next.latest_point = None;
    next.latest_crash_consistent_point = None;
    next.latest_app_consistent_point = None;
    next.latest_replicated_point = None;
    next.point_count = Some(0);
    next.oldest_point = None;
}

/// After a committed failover, Protected says why the workload has no point.
fn unprotected(conditions: &mut [crate::api::conditions::Condition], failover: &str) {
    for c in conditions.iter_mut().filter(|c| c.r#type == "Protected") {
        *c = crate::api::conditions::Condition::new(
            crate::api::reasons::ConditionType::Protected,
            crate::api::conditions::ConditionStatus::False,
            crate::api::reasons::WorkloadReason::FailoverCommitted,
            format!(
                "Failover {failover} is committed and its recovery points are deleted; the workload runs in the target zone, unprotected"
            ),
        );
    }
}

/// The RPO and the time of the last replicated point, as gauges.
fn record_metrics(
    ctx: &Context,
    workload: &ReplicatedWorkload,
    next: &crate::api::workload::ReplicatedWorkloadStatus,
    rpo: Option<i64>,
    schedule: Option<&schedule::Schedule>,
) {
    let labels = crate::metrics::WorkloadLabels {
        namespace: workload.namespace().unwrap_or_default(),
        workload: workload.name_any(),
    };
    let replication = &ctx.metrics.replication;
    if let Some(rpo) = rpo {
        replication.rpo_seconds.get_or_create(&labels).set(rpo);
    }
    // The RPOMet condition's bound: the alerts compare the age of the last point with it.
    if let Some(s) = schedule {
        let target = i64::try_from(s.crash.as_secs().saturating_mul(2)).unwrap_or(i64::MAX);
        replication.rpo_target.get_or_create(&labels).set(target);
    }
    if let Some(p) = &next.latest_replicated_point {
        replication
            .last_success
            .get_or_create(&labels)
            .set(p.time.as_second());
    }
}
