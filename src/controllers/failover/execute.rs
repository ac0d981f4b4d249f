//! Phase one of an Unplanned failover of a StatefulSet, step by step, each step idempotent and
//! derived from the status and the objects that exist (so an operator killed anywhere resumes):
//!
//! 1. new claims in the target zone, one per volume of the point, each mounted by a writer pod
//!    pinned to the target zone (`status.restore`);
//! 2. the agents restore the point's volumes into them from the target location and verify;
//!    a failed restore stops here (fail closed: the workload never sees a half-filled volume);
//! 3. the source StatefulSet is scaled to zero (never deleted) and a copy, `<name>-failover`,
//!    whose claim templates resolve to the restored claims, starts in the target zone;
//! 4. `FailedOver=True` once its pods are Ready, with the measured RTO.
//!
//! Deleting the Failover before commit rolls back: the copy, the new claims and the writer pods
//! go, and the source returns to its replica count. Its data was never touched.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::failover::{FailoverMode, FailoverStatus, Restore, TimelineStep, VolumeRestore};
use crate::api::reasons::{ConditionType as T, EventReason, FailoverReason as R};
use crate::api::work::{
    FAILOVER_LABEL, FAILOVER_UID_LABEL, HOLD_LABEL, POINT_REQUEST_ANNOTATION, WorkKind, WorkState,
    holder_name, writer_name,
};
use crate::api::workload::WorkloadKind;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::{
    Context, Error, PlannedEvent, claim_pod, delete_if_present, publish_events, zone_affinity,
};

pub const FINALIZER: &str = "siterecovery.io/failover";

/// The conditions after this step, the events it asks for, and whether to look again soon.
#[derive(Default)]
pub struct Step {
    pub failed_over: Option<Condition>,
    pub committed: Option<Condition>,
    pub verified: Option<Condition>,
    pub events: Vec<PlannedEvent>,
    pub busy: bool,
}

fn condition(status: ConditionStatus, reason: R, message: impl Into<String>) -> Condition {
    Condition::new(T::FailedOver, status, reason, message)
}

/// Records a step once; true when it is new.
fn mark(status: &mut FailoverStatus, step: &str, message: String, now: Timestamp) -> bool {
    if status.timeline.iter().any(|t| t.step == step) {
        return false;
    }
    status.timeline.push(TimelineStep {
        step: step.into(),
        time: now,
        message,
    });
    true
}

/// Like [`mark`], for steps that may happen more than once.
fn mark_again(status: &mut FailoverStatus, step: &str, message: String, now: Timestamp) {
    status.timeline.push(TimelineStep {
        step: step.into(),
        time: now,
        message,
    });
    // The timeline is bounded by the schema: the oldest entries go first.
    while status.timeline.len() > 60 {
        status.timeline.remove(0);
    }
}

/// The source StatefulSet's replica count before the failover scaled it to zero: written in the
/// same patch that scales it, so the count survives a lost status write.
pub const REPLICAS_ANNOTATION: &str = "siterecovery.io/replicas-before-failover";

fn labels(f: &Failover) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            "site-recovery".into(),
        ),
        (FAILOVER_LABEL.into(), f.name_any()),
        (FAILOVER_UID_LABEL.into(), f.uid().unwrap_or_default()),
    ])
}

/// What stands in the way of creating object `name` for this Failover: nothing (absent, or made
/// by this Failover), an object of an earlier one still being deleted (`Going`), or an object
/// this Failover did not make (`Taken`), which it never adopts.
enum Leftover {
    None,
    Going(String),
    Taken(String),
}

async fn leftover<K>(api: &Api<K>, f: &Failover, kind: &str, name: &str) -> Result<Leftover, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await.map_err(Error::Kube)? else {
        return Ok(Leftover::None);
    };
    if existing.meta().deletion_timestamp.is_some() {
        return Ok(Leftover::Going(format!(
            "waiting for {kind} {name} of an earlier restore to be deleted"
        )));
    }
    let mine = f.uid();
    Ok(
        if existing
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(FAILOVER_UID_LABEL))
            == mine.as_ref()
        {
            Leftover::None
        } else {
            Leftover::Taken(format!(
                "{kind} {name} exists and was not made by this Failover; delete or rename it and the failover goes on"
            ))
        },
    )
}

/// The step that waits for a name to be free.
fn blocked(l: Leftover) -> Option<Step> {
    let (reason, message) = match l {
        Leftover::None => return None,
        Leftover::Going(m) => (R::Restoring, m),
        Leftover::Taken(m) => (R::NameInUse, m),
    };
    Some(wait(condition(ConditionStatus::False, reason, message)))
}

/// `data-db-0` of StatefulSet `db` → (`data`, `0`).
fn template_of(claim: &str, sts: &str) -> Option<(String, String)> {
    let (rest, ordinal) = claim.rsplit_once('-')?;
    ordinal.parse::<u32>().ok()?;
    let template = rest.strip_suffix(&format!("-{sts}"))?;
    Some((template.to_string(), ordinal.to_string()))
}

pub fn target_name(sts: &str) -> String {
    format!("{sts}-failover")
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).map_err(|e| Error::InvalidObject {
        kind: "object".into(),
        name: String::new(),
        message: e.to_string(),
    })?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Where a failover puts what it creates: the Failover's own namespace and a copy named
/// `<sts>-failover` (Unplanned), or the drill's namespace and a copy under the source's own name,
/// so the application's names resolve inside the drill as they do in production (Test).
struct Place {
    namespace: String,
    copy: String,
    kind: WorkloadKind,
    drill: bool,
}

impl Place {
    fn of(f: &Failover, rw: &ReplicatedWorkload) -> Self {
        let name = &rw.spec.workload_ref.name;
        let kind = rw.spec.workload_ref.kind;
        if f.spec.mode == FailoverMode::Test {
            Place {
                namespace: drill_namespace(f),
                copy: name.clone(),
                kind,
                drill: true,
            }
        } else {
            Place {
                namespace: f.namespace().unwrap_or_default(),
                copy: target_name(name),
                kind,
                drill: false,
            }
        }
    }
}

/// The drill's namespace: `spec.testNamespace`, or `<name>-drill`.
pub fn drill_namespace(f: &Failover) -> String {
    f.spec.test_namespace.clone().unwrap_or_else(|| {
        let base: String = f.name_any().replace('.', "-").chars().take(57).collect();
        format!("{}-drill", base.trim_end_matches('-'))
    })
}

fn wait(failed_over: Condition) -> Step {
    Step {
        failed_over: Some(failed_over),
        busy: true,
        ..Default::default()
    }
}

pub async fn advance(
    ctx: &Context,
    f: &Failover,
    ready: bool,
    wanted: Option<&crate::api::failover::ResolvedPoint>,
    status: &mut FailoverStatus,
    now: Timestamp,
) -> Result<Step, Error> {
    let idle = |c| {
        Ok(Step {
            failed_over: Some(c),
            ..Default::default()
        })
    };
    let namespace = f.namespace().unwrap_or_default();
    let name = f.name_any();
    if status.restore.is_none() && !ready {
        return Ok(Step::default());
    }
    let rw = ctx
        .stores
        .workloads
        .get(&ObjectRef::new(&f.spec.workload_name).within(&namespace))
        .and_then(|g| g.0.as_ref().ok().cloned());
    let Some(rw) = rw else {
        return Ok(Step::default());
    };
    let sts = rw.spec.workload_ref.name.clone();
    let place = Place::of(f, &rw);
    let target_zone = status.target_zone.clone();
    ensure_finalizer(ctx, f).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &place.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &place.namespace);
    let kind = rw.spec.workload_ref.kind;
    let sets = workload_api(ctx, &place.namespace, kind);
    let source_sets = workload_api(ctx, &namespace, kind);
    let mut events = Vec::new();

    // Between the phases, a changed spec.recoveryPoint re-restores: stop the copy, drop the
    // restored claims, start again from step 1 with the new point.
    if let (Some(r), Some(wanted)) = (status.restore.clone(), wanted)
        && !f.spec.commit
        && r.generation != f.metadata.generation
        && wanted.id != r.point
    {
        tear_down(ctx, f, &place).await?;
        mark_again(
            status,
            "PointSwitched",
            format!(
                "from point {} to {}: the copy is stopped and its claims restored again",
                r.point, wanted.id
            ),
            now,
        );
        status.restore = None;
        status.target_workload = None;
        status.rto_seconds = None;
        status.resolved_point = Some(wanted.clone());
        return Ok(wait(condition(
            ConditionStatus::False,
            R::Restoring,
            format!("switching to point {}", wanted.id),
        )));
    }

    // 0. Planned: the source stops, a final point is taken and replicated; it is the point.
    if f.spec.mode == FailoverMode::Planned && status.restore.is_none() {
        match final_point(ctx, f, &rw, wanted, status, now, &mut events).await? {
            Ok(p) => status.resolved_point = Some(p),
            Err(mut step) => {
                status.resolved_point = None;
                step.events.extend(events);
                return Ok(step);
            }
        }
    }
    let Some(point) = status.resolved_point.clone() else {
        return Ok(Step::default());
    };

    // 1. Claims and writer pods in the target zone (in a drill, in its own namespace).
    if status.restore.is_none() {
        if place.drill
            && let Some(step) = blocked(ensure_drill_namespace(ctx, f, &place.namespace).await?)
        {
            return Ok(step);
        }
        let volumes = restore_plan(&point, &sts, &place.copy);
        // Names used by an earlier failover (a previous point, a cancelled Failover of the same
        // name) must be free: a restore never lands in a claim it did not create.
        for (i, v) in volumes.iter().enumerate() {
            let l = leftover(&claims, f, "PersistentVolumeClaim", &v.target_claim).await?;
            if let Some(step) = blocked(l) {
                return Ok(step);
            }
            let l = leftover(&pods, f, "Pod", &writer_name(&name, i)).await?;
            if let Some(step) = blocked(l) {
                return Ok(step);
            }
        }
        if let Some(step) = blocked(leftover(&sets, f, kind.as_str(), &place.copy).await?) {
            return Ok(step);
        }
        let source_claims: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &namespace);
        // The vault's class for the target zone, else the source claim's.
        let zone_class = ctx
            .stores
            .vaults
            .get(&ObjectRef::new(&rw.spec.vault_name).within(&namespace))
            .and_then(|g| g.0.as_ref().ok().cloned())
            .and_then(|v| {
                target_zone
                    .as_ref()
                    .and_then(|z| v.spec.storage_classes.get(z).cloned())
            });
        for (i, v) in volumes.iter().enumerate() {
            let source = source_claims
                .get_opt(&v.source_claim)
                .await
                .map_err(Error::Kube)?;
            let source_spec = source.and_then(|c| c.spec).unwrap_or_default();
            let size = source_spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "1Gi".into());
            create(&claims, json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": v.target_claim, "namespace": place.namespace, "labels": labels(f)},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": zone_class.clone().or(source_spec.storage_class_name),
                    "resources": {"requests": {"storage": size}}},
            }))
            .await?;
            create(
                &pods,
                writer_pod(
                    ctx,
                    f,
                    &place.namespace,
                    i,
                    &v.target_claim,
                    target_zone.as_deref(),
                ),
            )
            .await?;
        }
        let message = format!(
            "restoring point {} into {} claim(s) in the target zone{}",
            point.id,
            volumes.len(),
            if place.drill {
                format!(", namespace {}", place.namespace)
            } else {
                String::new()
            }
        );
        if mark(status, "RestoreStarted", message.clone(), now) {
            events.push(PlannedEvent::normal(
                EventReason::FailoverRestoreStarted,
                "Restore",
                message,
            ));
        }
        status.restore = Some(Restore {
            point: point.id.clone(),
            started: now,
            volumes,
            namespace: place.drill.then(|| place.namespace.clone()),
            completed: None,
            failed: None,
            generation: f.metadata.generation,
        });
        let mut step = wait(condition(
            ConditionStatus::False,
            R::Restoring,
            format!("restoring point {}", point.id),
        ));
        step.events = events;
        return Ok(step);
    }
    let mut restore = status.restore.clone().expect("checked above");

    // 2. The agents' reports.
    if restore.completed.is_none() && restore.failed.is_none() {
        let mut done = std::collections::BTreeSet::new();
        // A report counts only from the node that runs the writer pods of its claims: any
        // node's agent can write a registration, and a forged Done would start the copy on
        // claims never restored.
        let mut writer_nodes = BTreeMap::new();
        for (i, v) in restore.volumes.iter().enumerate() {
            if let Some(node) = pods
                .get_opt(&writer_name(&name, i))
                .await
                .map_err(Error::Kube)?
                .filter(|p| p.labels().get(FAILOVER_UID_LABEL) == f.uid().as_ref())
                .and_then(|p| p.spec.and_then(|s| s.node_name))
            {
                writer_nodes.insert(v.target_claim.clone(), node);
            }
        }
        for r in ctx.stores.registrations() {
            for w in &r.work {
                if w.kind != WorkKind::Restore
                    || w.namespace != namespace
                    || w.workload != name
                    || Some(&w.owner) != f.metadata.uid.as_ref()
                    || w.point != restore.point
                {
                    continue;
                }
                if let Some(claim) = w
                    .claims
                    .iter()
                    .find(|c| writer_nodes.get(*c) != Some(&r.node))
                {
                    tracing::warn!(
                        node = %r.node, %claim, writer = ?writer_nodes.get(claim),
                        "ignoring a restore report from a node that does not run the claim's writer pod"
                    );
                    continue;
                }
                match w.state {
                    WorkState::Failed => {
                        restore.failed = Some(format!(
                            "the agent on node {} failed: {}",
                            r.node, w.message
                        ));
                    }
                    WorkState::Done => done.extend(w.claims.iter().cloned()),
                    WorkState::Running => {}
                }
            }
        }
        if restore.failed.is_none()
            && restore
                .volumes
                .iter()
                .all(|v| done.contains(&v.target_claim))
        {
            restore.completed = Some(now);
            mark(
                status,
                "Restored",
                format!("{} claim(s) restored and verified", restore.volumes.len()),
                now,
            );
        }
        if let Some(message) = &restore.failed
            && mark(status, "RestoreFailed", message.clone(), now)
        {
            events.push(PlannedEvent::warning(
                EventReason::FailoverRestoreFailed,
                "Restore",
                format!("{message}; the workload was not started in the target zone"),
            ));
        }
        status.restore = Some(restore.clone());
        if restore.completed.is_none() && restore.failed.is_none() {
            return Ok(wait(condition(
                ConditionStatus::False,
                R::Restoring,
                format!("restoring point {}", restore.point),
            )));
        }
    }
    // Writer pods are done either way.
    for (i, _) in restore.volumes.iter().enumerate() {
        delete_if_present(&pods, &writer_name(&name, i)).await?;
    }
    if let Some(message) = &restore.failed {
        return Ok(Step {
            failed_over: Some(condition(
                ConditionStatus::False,
                R::RestoreFailed,
                format!(
                    "{message}; the workload was not started in the target zone (delete this Failover to clean up, or pick another point)"
                ),
            )),
            verified: place.drill.then(|| {
                Condition::new(
                    T::Verified,
                    ConditionStatus::False,
                    R::VerificationFailed,
                    format!("the restore failed: {message}"),
                )
            }),
            events,
            ..Default::default()
        });
    }

    // 3. The copy starts in the target zone; for a failover, the source is scaled to zero
    //    first (never deleted). A drill leaves the source alone.
    let target = place.copy.clone();
    if status.target_workload.is_none() {
        let source = source_sets.get_opt(&sts).await.map_err(Error::Kube)?;
        let Some(source) = source else {
            return idle(condition(
                ConditionStatus::False,
                R::RestoreFailed,
                format!(
                    "{} {sts} is gone: its spec is needed to start the copy",
                    kind.as_str()
                ),
            ));
        };
        if let Some(step) = blocked(leftover(&sets, f, kind.as_str(), &target).await?) {
            return Ok(step);
        }
        let replicas = if place.drill {
            copy_services(ctx, f, &source, &place.namespace).await?;
            let replicas = replicas_of(&source).unwrap_or(1);
            // A StatefulSet stopped at zero replicas still comes up in the target zone: with one.
            replicas.max(1)
        } else {
            stop_source(&source_sets, &source, status).await?
        };
        status.source_replicas = Some(replicas);
        create(
            &sets,
            copy_of(
                &source,
                kind,
                &target,
                &place.namespace,
                f,
                replicas,
                target_zone.as_deref(),
                &restore.volumes,
            ),
        )
        .await?;
        status.target_workload = Some(target.clone());
        mark(
            status,
            "WorkloadStarted",
            if place.drill {
                format!(
                    "{target} started in the target zone in namespace {}; the source is untouched",
                    place.namespace
                )
            } else {
                format!(
                    "{} {sts} scaled to 0; {target} started in the target zone",
                    kind.as_str()
                )
            },
            now,
        );
    }

    // 4. Ready in the target zone.
    let want = status.source_replicas.unwrap_or(1);
    let ready_pods = pods
        .list(&ListParams::default().labels(&format!("{FAILOVER_LABEL}={name}")))
        .await
        .map_err(Error::Kube)?
        .items
        .iter()
        .filter(|p| p.name_any().starts_with(&format!("{target}-")))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count() as i32;
    if ready_pods < want {
        let mut step = wait(condition(
            ConditionStatus::False,
            R::WaitingForPods,
            format!("{ready_pods} of {want} pod(s) of {target} Ready"),
        ));
        step.committed = f.spec.commit.then(|| {
            Condition::new(
                T::Committed,
                ConditionStatus::False,
                R::Committing,
                "commit waits until the workload is Ready in the target zone",
            )
        });
        step.verified = place.drill.then(|| {
            Condition::new(
                T::Verified,
                ConditionStatus::False,
                R::Verifying,
                format!("{ready_pods} of {want} pod(s) of the copy Ready"),
            )
        });
        step.events = events;
        return Ok(step);
    }
    if status.rto_seconds.is_none() {
        // The outage began when the source stopped (planned), else when the restore started.
        let outage = status.source_stopped.unwrap_or(restore.started);
        status.rto_seconds = Some(now.duration_since(outage).as_secs_f64());
    }
    let ready_message = format!("{ready_pods} pod(s) of {target} Ready in the target zone");
    if place.drill {
        mark(status, "CopyReady", ready_message, now);
        let verified = verify(ctx, f, &place.namespace, status, now, &mut events).await?;
        let busy = verified.reason == R::Verifying.as_str();
        return Ok(Step {
            failed_over: Some(condition(
                ConditionStatus::False,
                R::Drill,
                format!(
                    "a drill does not fail over: the copy runs in namespace {}; delete this Failover to remove it",
                    place.namespace
                ),
            )),
            verified: Some(verified),
            busy,
            events,
            ..Default::default()
        });
    }
    if mark(status, "FailedOver", ready_message, now) {
        events.push(PlannedEvent::normal(
            EventReason::FailedOver,
            "FailOver",
            format!(
                "{target} runs in the target zone from point {} after {:.0}s",
                restore.point,
                status.rto_seconds.unwrap_or_default()
            ),
        ));
    }
    let failed_over = condition(
        ConditionStatus::True,
        R::FailedOver,
        format!(
            "{target} runs in the target zone from point {}; set spec.commit to commit, or delete this Failover to roll back",
            restore.point
        ),
    );
    let committed = if f.spec.commit {
        Some(commit(ctx, f, &rw, status, now, &mut events).await)
    } else {
        None
    };
    let busy = committed.as_ref().is_some_and(|c| !c.is_true());
    Ok(Step {
        failed_over: Some(failed_over),
        committed,
        busy,
        events,
        ..Default::default()
    })
}

/// Scales the source StatefulSet to zero (never deletes it), noting its replica count in an
/// annotation in the same patch; returns the count the copy runs with.
async fn stop_source(
    api: &Api<DynamicObject>,
    source: &DynamicObject,
    status: &FailoverStatus,
) -> Result<i32, Error> {
    // The count before the failover: from the annotation when an earlier pass (whose status
    // write may have been lost) already scaled the source down.
    let replicas = source
        .annotations()
        .get(REPLICAS_ANNOTATION)
        .and_then(|r| r.parse::<i32>().ok())
        .or(status.source_replicas)
        .unwrap_or_else(|| replicas_of(source).unwrap_or(1));
    // A workload stopped at zero replicas still comes up in the target zone: with one.
    let replicas = replicas.max(1);
    let noted = source.annotations().get(REPLICAS_ANNOTATION) == Some(&replicas.to_string());
    if noted && replicas_of(source) == Some(0) {
        return Ok(replicas);
    }
    api.patch(
        &source.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {REPLICAS_ANNOTATION: replicas.to_string()}},
            "spec": {"replicas": 0},
        })),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(replicas)
}

fn replicas_of(source: &DynamicObject) -> Option<i32> {
    source.data["spec"]["replicas"].as_i64().map(|r| r as i32)
}

/// The StatefulSet or Deployment API, one dynamic API for both kinds a failover moves.
fn workload_api(ctx: &Context, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let resource = match kind {
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
    };
    Api::namespaced_with(ctx.client.clone(), namespace, &resource)
}

/// The workload's pods still running: they match its selector and are not a failover's.
async fn pods_of(pods: &Api<Pod>, source: &DynamicObject) -> Result<usize, Error> {
    let Some(labels) = source.data["spec"]["selector"]["matchLabels"].as_object() else {
        return Ok(0);
    };
    let selector = labels
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect::<Vec<_>>()
        .join(",");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::Kube)?
        .items
        .iter()
        .filter(|p| !p.labels().contains_key(FAILOVER_LABEL))
        .count())
}

/// Planned mode, before the restore: stop the source, wait until its last pod is gone, hold its
/// claims mounted read-only by holder pods (so the agents can read them), ask the workload for
/// a point, and wait until a point taken after the stop is replicated: no write is lost. Returns
/// that point, or the step to report while waiting.
async fn final_point(
    ctx: &Context,
    f: &Failover,
    rw: &ReplicatedWorkload,
    latest: Option<&crate::api::failover::ResolvedPoint>,
    status: &mut FailoverStatus,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> Result<Result<crate::api::failover::ResolvedPoint, Step>, Error> {
    let namespace = f.namespace().unwrap_or_default();
    let name = f.name_any();
    let sts = rw.spec.workload_ref.name.clone();
    let kind = rw.spec.workload_ref.kind.as_str();
    let sets = workload_api(ctx, &namespace, rw.spec.workload_ref.kind);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let waiting = |message: String| {
        Ok(Err(wait(condition(
            ConditionStatus::False,
            R::StoppingSource,
            message,
        ))))
    };
    let Some(source) = sets.get_opt(&sts).await.map_err(Error::Kube)? else {
        return Ok(Err(Step {
            failed_over: Some(condition(
                ConditionStatus::False,
                R::RestoreFailed,
                format!("{kind} {sts} is gone: a planned failover stops it first"),
            )),
            ..Default::default()
        }));
    };
    // The claims to hold: those of the workload's newest point.
    let Some(latest) = latest else {
        return waiting("waiting for the workload's points to be listed".into());
    };
    if status.source_stopped.is_none() {
        let replicas = stop_source(&sets, &source, status).await?;
        status.source_replicas = Some(replicas);
        let running = pods_of(&pods, &source).await?;
        if running > 0 {
            return waiting(format!(
                "{kind} {sts} scaled to 0; waiting for {running} pod(s) to stop (if the source zone is down they never will: delete this Failover and fail over with mode Unplanned)"
            ));
        }
        status.source_stopped = Some(now);
        let message = format!("{kind} {sts} stopped: no pod writes to its claims any more");
        if mark(status, "SourceStopped", message.clone(), now) {
            events.push(PlannedEvent::normal(
                EventReason::FailoverSourceStopped,
                "Stop",
                message,
            ));
        }
    }
    let stopped = status.source_stopped.expect("set above");
    let token = format!("planned-{}", f.uid().unwrap_or_default());
    let requested = |status: &mut FailoverStatus| {
        mark(
            status,
            "FinalPointRequested",
            format!(
                "a point of the stopped claims is requested from ReplicatedWorkload {}",
                rw.name_any()
            ),
            now,
        );
    };
    // Times are whole seconds: only a point of a later second surely started after the stop.
    if latest.time > stopped {
        // Recorded from the fact (our request on the workload), in case the pass that made the
        // request lost its status write.
        if rw.annotations().get(POINT_REQUEST_ANNOTATION) == Some(&token) {
            requested(status);
        }
        // Holders are done.
        for (i, _) in latest.volumes.iter().enumerate() {
            delete_if_present(&pods, &holder_name(&name, i)).await?;
        }
        mark(
            status,
            "FinalPointReplicated",
            format!(
                "point {} taken after the source stopped is in the target location",
                latest.id
            ),
            now,
        );
        return Ok(Ok(latest.clone()));
    }
    // The point is asked for once every claim is mounted: the workload's controller reads the
    // holders as the workload's pods.
    let mut unmounted = 0;
    for (i, claim) in latest.volumes.iter().enumerate() {
        let holder = holder_name(&name, i);
        let Some(pod) = pods.get_opt(&holder).await.map_err(Error::Kube)? else {
            let mut labels = labels(f);
            labels.insert(HOLD_LABEL.into(), rw.name_any());
            create(
                &pods,
                claim_pod(
                    &ctx.reader_image,
                    json!({"name": holder, "namespace": namespace, "labels": labels}),
                    "hold",
                    "source",
                    claim,
                    true,
                    None,
                ),
            )
            .await?;
            unmounted += 1;
            continue;
        };
        if pod.status.and_then(|s| s.phase).as_deref() != Some("Running") {
            unmounted += 1;
        }
    }
    if unmounted > 0 {
        return waiting(format!(
            "{kind} {sts} stopped; waiting for {unmounted} holder pod(s) to mount its claims for the final point"
        ));
    }
    if now <= stopped {
        return waiting(format!(
            "{kind} {sts} stopped; the final point is asked for in the next second"
        ));
    }
    if rw.annotations().get(POINT_REQUEST_ANNOTATION) != Some(&token) {
        Api::<ReplicatedWorkload>::namespaced(ctx.client.clone(), &namespace)
            .patch(
                &rw.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {POINT_REQUEST_ANNOTATION: token}}}),
                ),
            )
            .await
            .map_err(Error::Kube)?;
    }
    requested(status);
    let last = rw
        .status
        .as_ref()
        .and_then(|s| s.last_attempt.as_ref())
        .filter(|a| a.started >= stopped && !a.succeeded)
        .map(|a| format!("; point {} failed: {}", a.id, a.message))
        .unwrap_or_default();
    waiting(format!(
        "waiting for the final point (taken after {stopped}) to be replicated{last}"
    ))
}

/// Labels of the source namespace that set its Pod Security admission level.
const POD_SECURITY_PREFIX: &str = "pod-security.kubernetes.io/";

/// The labels of a drill's namespace: the Failover's, and the source namespace's Pod Security
/// labels, so that a drill never runs a pod the source namespace would forbid.
pub fn drill_namespace_labels(
    f: &Failover,
    source: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = source
        .iter()
        .filter(|(k, _)| k.starts_with(POD_SECURITY_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(labels(f));
    out
}

/// The drill's namespace, made by this Failover and isolated: its pods reach each other and DNS,
/// nothing else, and nothing outside reaches them (a copy must never talk to production). It
/// carries the source namespace's Pod Security labels and copies of its LimitRanges and
/// ResourceQuotas, made before any pod: what the source forbids, the drill forbids.
async fn ensure_drill_namespace(
    ctx: &Context,
    f: &Failover,
    namespace: &str,
) -> Result<Leftover, Error> {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match leftover(&namespaces, f, "Namespace", namespace).await? {
        Leftover::None => {}
        other => return Ok(other),
    }
    let source_namespace = f.namespace().unwrap_or_default();
    let source = namespaces
        .get_opt(&source_namespace)
        .await
        .map_err(Error::Kube)?
        .map(|n| n.metadata.labels.unwrap_or_default())
        .unwrap_or_default();
    create(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": drill_namespace_labels(f, &source),
            "annotations": {"siterecovery.io/drill-of": format!("{source_namespace}/{}", f.name_any())}}}),
    )
    .await?;
    copy_specs::<LimitRange>(ctx, f, &source_namespace, namespace, |l| json!(l.spec)).await?;
    copy_specs::<ResourceQuota>(ctx, f, &source_namespace, namespace, |q| json!(q.spec)).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    create(
        &policies,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "site-recovery-drill-isolation", "namespace": namespace, "labels": labels(f)},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {}}]}],
                "egress": [
                    {"to": [{"podSelector": {}}]},
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                ],
            },
        }),
    )
    .await?;
    Ok(Leftover::None)
}

/// Copies every `K` of namespace `from` into `to` under its name, with `spec` of it and this
/// Failover's labels (create-if-absent).
async fn copy_specs<K>(
    ctx: &Context,
    f: &Failover,
    from: &str,
    to: &str,
    spec: impl Fn(&K) -> serde_json::Value,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let items = Api::<K>::namespaced(ctx.client.clone(), from)
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items;
    for item in items {
        create(
            &Api::<K>::namespaced(ctx.client.clone(), to),
            json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()),
                "metadata": {"name": item.name_any(), "namespace": to, "labels": labels(f)},
                "spec": spec(&item)}),
        )
        .await?;
    }
    Ok(())
}

/// The Services that select the workload's pods (a StatefulSet's `spec.serviceName` among
/// them), copied into the drill's namespace so the copy's pods get the names the application
/// expects.
async fn copy_services(
    ctx: &Context,
    f: &Failover,
    source: &DynamicObject,
    namespace: &str,
) -> Result<(), Error> {
    let pod_labels = source.data["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let named = source.data["spec"]["serviceName"].as_str();
    let services: Api<Service> =
        Api::namespaced(ctx.client.clone(), &source.namespace().unwrap_or_default());
    for service in services
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items
    {
        let spec = service.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let selects = !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| pod_labels.get(k).and_then(|l| l.as_str()) == Some(v.as_str()));
        if !selects && named != Some(service.name_any().as_str()) {
            continue;
        }
        // The copy is a ClusterIP Service of its own: the source's allocated node ports and
        // cluster IP belong to the source (reusing them is refused with 422).
        let ports: Vec<_> = spec
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut p| {
                p.node_port = None;
                p
            })
            .collect();
        let mut copy = json!({
            "selector": spec.selector,
            "ports": ports,
            "publishNotReadyAddresses": spec.publish_not_ready_addresses,
        });
        if spec.cluster_ip.as_deref() == Some("None") {
            copy["clusterIP"] = json!("None");
        }
        create(
            &Api::<Service>::namespaced(ctx.client.clone(), namespace),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": service.name_any(), "namespace": namespace, "labels": labels(f)},
                "spec": copy}),
        )
        .await?;
    }
    Ok(())
}

/// A drill's verdict: Verified once the copy is Ready and the verification Job (if any)
/// succeeded; VerificationFailed when the Job failed or ran out of time.
async fn verify(
    ctx: &Context,
    f: &Failover,
    namespace: &str,
    status: &mut FailoverStatus,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> Result<Condition, Error> {
    let verified = |s, r: R, m: String| Condition::new(T::Verified, s, r, m);
    let mut passed = |message: String| {
        if mark(status, "Verified", message.clone(), now) {
            events.push(PlannedEvent::normal(
                EventReason::DrillVerified,
                "Verify",
                message.clone(),
            ));
        }
        Ok(verified(ConditionStatus::True, R::Verified, message))
    };
    let Some(check) = &f.spec.verification else {
        return passed("the copy is Ready in the target zone (no verification Job set)".into());
    };
    let timeout = match check
        .timeout
        .as_deref()
        .map(crate::api::policy::parse_duration)
    {
        None => std::time::Duration::from_secs(600),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            return Ok(verified(
                ConditionStatus::False,
                R::VerificationFailed,
                format!("spec.verification.timeout: {e}"),
            ));
        }
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let job_name = verification_job_name(&f.name_any());
    let Some(job) = jobs.get_opt(&job_name).await.map_err(Error::Kube)? else {
        create(
            &jobs,
            json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job_name, "namespace": namespace, "labels": labels(f)},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": timeout.as_secs().max(1),
                    "template": {"metadata": {"labels": labels(f)}, "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "verify", "image": check.image, "command": check.command}],
                    }},
                },
            }),
        )
        .await?;
        return Ok(verified(
            ConditionStatus::False,
            R::Verifying,
            format!("the copy is Ready; Job {job_name} started"),
        ));
    };
    let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return passed(format!("the copy is Ready and Job {job_name} succeeded"));
    }
    if let Some(c) = is("Failed") {
        let message = format!(
            "Job {job_name} failed: {}",
            c.message.clone().or(c.reason.clone()).unwrap_or_default()
        );
        if mark(status, "VerificationFailed", message.clone(), now) {
            events.push(PlannedEvent::warning(
                EventReason::DrillFailed,
                "Verify",
                message.clone(),
            ));
        }
        return Ok(verified(
            ConditionStatus::False,
            R::VerificationFailed,
            message,
        ));
    }
    Ok(verified(
        ConditionStatus::False,
        R::Verifying,
        format!("the copy is Ready; waiting for Job {job_name}"),
    ))
}

pub fn verification_job_name(failover: &str) -> String {
    let base: String = failover.chars().take(50).collect();
    format!("sr-verify-{base}")
}

/// One new claim per volume of the point: `data-db-0` of StatefulSet `db` is restored into
/// `data-db-failover-0`, the claim the copy's template `data` resolves to for ordinal 0. A
/// volume that is not a claim template's claim keeps its name with a `-failover` suffix.
fn restore_plan(
    point: &crate::api::failover::ResolvedPoint,
    sts: &str,
    target: &str,
) -> Vec<VolumeRestore> {
    point
        .volumes
        .iter()
        .map(|claim| VolumeRestore {
            source_claim: claim.clone(),
            target_claim: match template_of(claim, sts) {
                Some((template, ordinal)) => format!("{template}-{target}-{ordinal}"),
                None if target == sts => claim.clone(),
                None => format!("{claim}-failover"),
            },
        })
        .collect()
}

fn writer_pod(
    ctx: &Context,
    f: &Failover,
    namespace: &str,
    i: usize,
    claim: &str,
    zone: Option<&str>,
) -> serde_json::Value {
    claim_pod(
        &ctx.reader_image,
        json!({"name": writer_name(&f.name_any(), i), "namespace": namespace, "labels": labels(f)}),
        "writer",
        "target",
        claim,
        false,
        zone,
    )
}

/// The source's spec under a new name, pinned to the target zone, with a label of its own so
/// that source and copy never claim each other's pods; the Service, selecting the app's labels,
/// follows the new pods. A StatefulSet's claim templates resolve to the restored claims by name;
/// a Deployment's claims are replaced by the restored ones.
#[allow(clippy::too_many_arguments)]
fn copy_of(
    source: &DynamicObject,
    kind: WorkloadKind,
    name: &str,
    namespace: &str,
    f: &Failover,
    replicas: i32,
    zone: Option<&str>,
    volumes: &[VolumeRestore],
) -> serde_json::Value {
    let failover = f.name_any();
    let mut spec = source.data["spec"].clone();
    spec["replicas"] = json!(replicas);
    spec["selector"]["matchLabels"][FAILOVER_LABEL] = json!(failover);
    spec["template"]["metadata"]["labels"][FAILOVER_LABEL] = json!(failover);
    // Not in the selector: the copy's pods tell the operator whose they are.
    spec["template"]["metadata"]["labels"][FAILOVER_UID_LABEL] = json!(f.uid());
    if let Some(z) = zone {
        spec["template"]["spec"]["affinity"] = zone_affinity(Some(z));
    }
    if kind == WorkloadKind::Deployment
        && let Some(list) = spec["template"]["spec"]["volumes"].as_array_mut()
    {
        // Only claim volumes change; indexing a ConfigMap or emptyDir volume would insert a
        // `persistentVolumeClaim: {claimName: null}` into it, which an API server refuses.
        for v in list {
            let Some(claim) = v
                .get_mut("persistentVolumeClaim")
                .and_then(|c| c.get_mut("claimName"))
            else {
                continue;
            };
            if let Some(r) = volumes
                .iter()
                .find(|r| claim.as_str() == Some(&r.source_claim))
            {
                *claim = json!(r.target_claim);
            }
        }
    }
    let mut metadata_labels = source.labels().clone();
    metadata_labels.extend(labels(f));
    json!({
        "apiVersion": "apps/v1", "kind": kind.as_str(),
        "metadata": {"name": name, "namespace": namespace, "labels": metadata_labels},
        "spec": spec,
    })
}

async fn ensure_finalizer(ctx: &Context, f: &Failover) -> Result<(), Error> {
    if f.finalizers().iter().any(|x| x == FINALIZER) {
        return Ok(());
    }
    let mut list = f.finalizers().to_vec();
    list.push(FINALIZER.into());
    Api::<Failover>::namespaced(ctx.client.clone(), &f.namespace().unwrap_or_default())
        .patch(
            &f.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": list, "resourceVersion": f.resource_version()}}),
            ),
        )
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// A Failover deleted before commit: the copy, the new claims and the writer pods go, the
/// source returns to its replica count; then the finalizer is removed.
pub async fn roll_back(ctx: &Context, f: &Failover) -> Result<(), Error> {
    if !f.finalizers().iter().any(|x| x == FINALIZER) {
        return Ok(());
    }
    let namespace = f.namespace().unwrap_or_default();
    let name = f.name_any();
    let status = f.status.clone().unwrap_or_default();
    let rw = ctx
        .stores
        .workloads
        .get(&ObjectRef::new(&f.spec.workload_name).within(&namespace))
        .and_then(|g| g.0.as_ref().ok().cloned());
    if f.spec.mode == FailoverMode::Test {
        // The drill's namespace goes, and everything in it; only a namespace this Failover made.
        let drill = drill_namespace(f);
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let ours = namespaces
            .get_opt(&drill)
            .await
            .map_err(Error::Kube)?
            .is_some_and(|n| n.labels().get(FAILOVER_UID_LABEL) == f.uid().as_ref());
        if ours {
            delete_if_present(&namespaces, &drill).await?;
        }
        publish_events(
            ctx,
            f,
            &[PlannedEvent::normal(
                EventReason::FailoverRolledBack,
                "RollBack",
                format!("drill namespace {drill} deleted; the source was never touched"),
            )],
        )
        .await;
    } else if !f.spec.commit
        && let Some(rw) = &rw
    {
        let sets = workload_api(ctx, &namespace, rw.spec.workload_ref.kind);
        let sts = rw.spec.workload_ref.name.clone();
        tear_down(ctx, f, &Place::of(f, rw)).await?;
        if let Some(source) = sets.get_opt(&sts).await.map_err(Error::Kube)? {
            let noted = source
                .annotations()
                .get(REPLICAS_ANNOTATION)
                .and_then(|r| r.parse::<i32>().ok());
            if let Some(replicas) = noted.or(status.source_replicas) {
                sets.patch(
                    &sts,
                    &PatchParams::default(),
                    &Patch::Merge(json!({
                        "metadata": {"annotations": {REPLICAS_ANNOTATION: null}},
                        "spec": {"replicas": replicas},
                    })),
                )
                .await
                .map_err(Error::Kube)?;
            }
        }
        publish_events(
                ctx,
                f,
                &[PlannedEvent::normal(
                    EventReason::FailoverRolledBack,
                    "RollBack",
                    format!(
                        "the copy and its claims are deleted; {} {sts} is back at {} replica(s) in its zone",
                        rw.spec.workload_ref.kind.as_str(),
                        status.source_replicas.unwrap_or(1)
                    ),
                )],
            )
            .await;
    }
    let rest: Vec<String> = f
        .finalizers()
        .iter()
        .filter(|x| *x != FINALIZER)
        .cloned()
        .collect();
    Api::<Failover>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
        )
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// Phase two: every point of the workload is deleted in cache and target (the seed's commit);
/// the source's claims and volumes are kept. Idempotent: a commit interrupted halfway deletes
/// what is left the next time.
async fn commit(
    ctx: &Context,
    f: &Failover,
    rw: &ReplicatedWorkload,
    status: &mut FailoverStatus,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> Condition {
    if status.timeline.iter().any(|t| t.step == "Committed") {
        return Condition::new(
            T::Committed,
            ConditionStatus::True,
            R::Committed,
            committed_message(rw),
        );
    }
    let namespace = f.namespace().unwrap_or_default();
    let workload = format!("{namespace}/{}", rw.name_any());
    let run = async {
        let vault = ctx
            .stores
            .vaults
            .get(&ObjectRef::new(&rw.spec.vault_name).within(&namespace))
            .and_then(|g| g.0.as_ref().ok().cloned())
            .ok_or_else(|| format!("RecoveryVault {} not found", rw.spec.vault_name))?;
        let access = crate::storage::vault::VaultAccess::resolve(
            &ctx.client,
            &namespace,
            &vault.spec,
            &ctx.storage,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut removed = 0;
        for (name, location) in [("target", &access.target), ("cache", &access.cache)] {
            match crate::repository::Repository::open(location.clone(), &access.key).await {
                Ok(mut repo) => {
                    removed += crate::repository::prune::forget_workload(&mut repo, &workload)
                        .await
                        .map_err(|e| format!("{name} location: {e}"))?
                        .points_removed
                        .len();
                }
                // The source zone's cache may be gone with the zone: nothing to delete there.
                Err(e) if name == "cache" => {
                    tracing::warn!(error = %e, "cache location unreachable at commit; its points stay until it returns")
                }
                Err(e) => return Err(format!("{name} location: {e}")),
            }
        }
        Ok::<_, String>(removed)
    };
    match run.await {
        Ok(removed) => {
            let message = format!("{removed} recovery point(s) deleted");
            if mark(status, "Committed", message.clone(), now) {
                events.push(PlannedEvent::normal(
                    EventReason::FailoverCommitted,
                    "Commit",
                    format!("{}; {message}", committed_message(rw)),
                ));
            }
            Condition::new(
                T::Committed,
                ConditionStatus::True,
                R::Committed,
                committed_message(rw),
            )
        }
        Err(message) => Condition::new(
            T::Committed,
            ConditionStatus::False,
            R::Committing,
            format!("deleting the recovery points: {message}; retrying"),
        ),
    }
}

fn committed_message(rw: &ReplicatedWorkload) -> String {
    format!(
        "committed: the recovery points of {} are deleted; the source {} {} (0 replicas) and its claims are kept until you delete them",
        rw.name_any(),
        rw.spec.workload_ref.kind.as_str(),
        rw.spec.workload_ref.name
    )
}

/// Removes what a failover created in the target zone: the copy, writer pods, restored claims,
/// a drill's verification Job.
async fn tear_down(ctx: &Context, f: &Failover, place: &Place) -> Result<(), Error> {
    let sets = workload_api(ctx, &place.namespace, place.kind);
    if let Leftover::None = leftover(&sets, f, place.kind.as_str(), &place.copy).await? {
        delete_if_present(&sets, &place.copy).await?;
    }
    let selector = ListParams::default().labels(&format!(
        "{FAILOVER_UID_LABEL}={}",
        f.uid().unwrap_or_default()
    ));
    let ns = &place.namespace;
    delete_selected(&Api::<Job>::namespaced(ctx.client.clone(), ns), &selector).await?;
    delete_selected(&Api::<Pod>::namespaced(ctx.client.clone(), ns), &selector).await?;
    delete_selected(
        &Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns),
        &selector,
    )
    .await?;
    Ok(())
}

/// Deletes every object of `api` that `selector` selects.
async fn delete_selected<K>(api: &Api<K>, selector: &ListParams) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for o in api
        .list_metadata(selector)
        .await
        .map_err(Error::Kube)?
        .items
    {
        delete_if_present(api, &o.name_any()).await?;
    }
    Ok(())
}
