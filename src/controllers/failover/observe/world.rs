//! What each phase reads of the world besides the plan's inputs: the source workload, the names
//! the phase creates objects under, the agents' reports, the copy's pods, the drill's Job, the
//! commit job.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;

use super::{Report, Source, VerifyJob, World, workload_of};
use crate::api::failover::ResolvedPoint;
use crate::api::work::{
    FAILOVER_LABEL, FAILOVER_UID_LABEL, HOLD_LABEL, WorkKind, holder_name, writer_name,
};
use crate::api::workload::WorkloadKind;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::failover::decide::prepared_names;
use crate::controllers::failover::manifests::{
    ClaimShape, Place, SourceNamespace, verification_job_name,
};
use crate::controllers::failover::phase::Phase;
use crate::controllers::jobs::{JobKey, JobKind, State};
use crate::controllers::objects::{Kind, ObjectName, claim_size, holder};
use crate::controllers::{Context, Error, shape};

/// What `phase` reads of the world.
pub async fn observe_world(
    ctx: &Context,
    f: &Failover,
    phase: Phase,
    point: Option<&ResolvedPoint>,
    zone: Option<&str>,
) -> Result<World, Error> {
    let mut world = World::default();
    if f.spec.vault_name.is_some() {
        super::found::observe(ctx, f, phase, point, &mut world).await?;
        if matches!(phase, Phase::Restoring) {
            let place = world
                .found
                .as_ref()
                .map(|x| Place::found(f, x.kind, &x.name));
            if let Some(place) = place {
                world.reports = reports(ctx, f);
                world.writer_nodes = writer_nodes(ctx, f, &place).await?;
            }
        }
        return Ok(world);
    }
    let Some(Ok(rw)) = workload_of(ctx, f) else {
        return Ok(world);
    };
    let namespace = f.namespace().unwrap_or_default();
    let place = Place::of(f, rw.spec.workload_ref.kind, &rw.spec.workload_ref.name);
    let uid = f.uid().unwrap_or_default();
    let client = &ctx.client;
    match phase {
        Phase::Deleting | Phase::RestoreFailed => {}
        Phase::StoppingSource => {
            world.source = source(ctx, &namespace, &place).await?;
            if let Some(s) = &world.source {
                world.source_pods = pods_of(ctx, &namespace, place.kind, &s.object).await?;
            }
        }
        Phase::FinalPoint => {
            let ours = labelled_pods(
                ctx,
                &namespace,
                &format!("{FAILOVER_UID_LABEL}={uid},{HOLD_LABEL}"),
            )
            .await?;
            let count = point.map_or(0, |p| p.volumes.len());
            world.holders = (0..count)
                .map(|n| {
                    let name = holder_name(&f.name_any(), n);
                    ours.iter().find(|p| p.name_any() == name).map(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                })
                .collect();
            // A holder to create mounts its claim as the claim asks (a block claim as a device).
            if let Some(point) = point.filter(|_| world.holders.contains(&None)) {
                world.claim_shapes = claim_shapes(ctx, &namespace, &point.volumes).await?;
            }
        }
        Phase::Preparing => {
            let place = match failback_of(ctx, f, &namespace, &place).await? {
                Some(original) => {
                    world.failback = Some(original.clone());
                    place.failback(&original)
                }
                None => place,
            };
            prepared(ctx, f, &place, point, &mut world).await?;
            world.zone_class = zone_class(ctx, f, &rw, zone);
        }
        Phase::Restoring => {
            world.reports = reports(ctx, f);
            world.writer_nodes = writer_nodes(ctx, f, &place).await?;
        }
        Phase::Starting => {
            world.source = source(ctx, &namespace, &place).await?;
            let copy = ObjectName::new(place.copy_kind(), Some(&place.namespace), &place.copy);
            let h = holder(client, &copy, FAILOVER_UID_LABEL, &uid).await?;
            world.names.insert(copy, h);
            if place.drill {
                world.services = Api::<Service>::namespaced(client.clone(), &namespace)
                    .list(&ListParams::default())
                    .await
                    .map_err(Error::Kube)?
                    .items;
            }
        }
        Phase::Running => {
            world.ready_pods = if place.failback {
                // The original's pods carry no label of this Failover.
                super::found::ready_pods(ctx, &place).await?
            } else {
                ready_pods(ctx, f, &place).await?
            };
            if place.drill && f.spec.verification.is_some() {
                world.job = verify_job(ctx, f, &place).await?;
            }
            world.commit = commit_state(ctx, f);
        }
    }
    world.workload = Some(rw);
    Ok(world)
}

/// Whether the source is a failover's copy whose original still waits for it: the copy names
/// the original (`siterecovery.io/copy-of`), and the original is held at zero replicas by the
/// very failover that made the copy. Only then are the original's claims written in place.
async fn failback_of(
    ctx: &Context,
    f: &Failover,
    namespace: &str,
    place: &Place,
) -> Result<Option<String>, Error> {
    if place.drill || place.failback || f.status.as_ref().is_some_and(|s| s.restore.is_some()) {
        return Ok(None);
    }
    let api = place.copy_kind().api(&ctx.client, Some(namespace));
    let Some(copy) = api.get_opt(&place.source).await.map_err(Error::Kube)? else {
        return Ok(None);
    };
    let (Some(original), Some(maker)) = (
        copy.annotations()
            .get(crate::controllers::failover::COPY_OF_ANNOTATION),
        copy.labels().get(FAILOVER_LABEL),
    ) else {
        return Ok(None);
    };
    let Some(held) = api.get_opt(original).await.map_err(Error::Kube)? else {
        return Ok(None);
    };
    let held_by = held
        .annotations()
        .get(crate::controllers::failover::HELD_BY_ANNOTATION);
    let stopped = shape::replicas(place.kind, &held.data) == Some(0);
    Ok((held_by == Some(maker) && stopped).then(|| original.clone()))
}

/// What the first step reads: who holds the names it creates objects under, the source claims'
/// sizes and classes, and for a drill the source namespace's labels, limits and quotas.
async fn prepared(
    ctx: &Context,
    f: &Failover,
    place: &Place,
    point: Option<&ResolvedPoint>,
    world: &mut World,
) -> Result<(), Error> {
    let namespace = f.namespace().unwrap_or_default();
    let uid = f.uid().unwrap_or_default();
    if let Some(point) = point {
        for name in prepared_names(f, place, point) {
            let h = holder(&ctx.client, &name, FAILOVER_UID_LABEL, &uid).await?;
            world.names.insert(name, h);
        }
        world.claim_shapes = claim_shapes(ctx, &namespace, &point.volumes).await?;
    }
    if place.drill {
        world.source_namespace = Some(source_namespace(ctx, &namespace).await?);
    }
    Ok(())
}

/// The key of a Failover's commit job.
pub fn commit_key(f: &Failover) -> JobKey {
    JobKey::new(f.uid().unwrap_or_default(), JobKind::ForgetWorkload)
}

/// Where the Failover's commit job stands: the points it removed, once done.
pub(super) fn commit_state(ctx: &Context, f: &Failover) -> Option<super::CommitJob> {
    let job = ctx.jobs.get(&commit_key(f))?;
    Some(match &job.state {
        State::Running => State::Running,
        State::Failed(m) => State::Failed(m.clone()),
        State::Done(_) => State::Done(job.outcome::<usize>().unwrap_or_default()),
    })
}

pub async fn source(
    ctx: &Context,
    namespace: &str,
    place: &Place,
) -> Result<Option<Source>, Error> {
    let found = Kind::workload(place.kind)
        .api(&ctx.client, Some(namespace))
        .get_opt(&place.source)
        .await
        .map_err(Error::Kube)?;
    Ok(found.map(|object| Source {
        noted: object
            .annotations()
            .get(crate::controllers::failover::REPLICAS_ANNOTATION)
            .and_then(|r| r.parse::<i32>().ok()),
        replicas: shape::replicas(place.kind, &object.data),
        object,
    }))
}

pub(super) async fn labelled_pods(
    ctx: &Context,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Pod>, Error> {
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::Kube)?
        .items)
}

/// The label selector of a workload's pods; `None` when it has none.
pub(super) fn selector_of(kind: WorkloadKind, workload: &DynamicObject) -> Option<String> {
    let name = workload.metadata.name.as_deref().unwrap_or_default();
    shape::selector(kind, name, &workload.data["spec"])
}

/// The workload's pods still running: they match its selector and are not a failover's.
async fn pods_of(
    ctx: &Context,
    namespace: &str,
    kind: WorkloadKind,
    source: &DynamicObject,
) -> Result<usize, Error> {
    let Some(selector) = selector_of(kind, source) else {
        return Ok(0);
    };
    Ok(labelled_pods(ctx, namespace, &selector)
        .await?
        .iter()
        .filter(|p| !p.labels().contains_key(FAILOVER_LABEL))
        .count())
}

async fn claim_shapes(
    ctx: &Context,
    namespace: &str,
    claims: &[String],
) -> Result<BTreeMap<String, ClaimShape>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let mut out = BTreeMap::new();
    for claim in claims {
        let spec = api
            .get_opt(claim)
            .await
            .map_err(Error::Kube)?
            .and_then(|c| c.spec);
        out.insert(
            claim.clone(),
            ClaimShape {
                size: claim_size(spec.as_ref()),
                block: spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block"),
                class: spec.and_then(|s| s.storage_class_name),
            },
        );
    }
    Ok(out)
}

/// The vault's class for the target zone.
fn zone_class(
    ctx: &Context,
    f: &Failover,
    rw: &ReplicatedWorkload,
    zone: Option<&str>,
) -> Option<String> {
    let zone = zone?;
    ctx.stores
        .vaults
        .get(&ObjectRef::new(&rw.spec.vault_name).within(&f.namespace().unwrap_or_default()))
        .and_then(|g| g.0.as_ref().ok().cloned())
        .and_then(|v| v.spec.storage_classes.get(zone).cloned())
}

async fn source_namespace(ctx: &Context, namespace: &str) -> Result<SourceNamespace, Error> {
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(namespace)
        .await
        .map_err(Error::Kube)?
        .map(|n| n.metadata.labels.unwrap_or_default())
        .unwrap_or_default();
    let limit_ranges = Api::<LimitRange>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items
        .into_iter()
        .map(|l| (l.name_any(), serde_json::json!(l.spec)))
        .collect();
    let quotas = Api::<ResourceQuota>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items
        .into_iter()
        .map(|q| (q.name_any(), serde_json::json!(q.spec)))
        .collect();
    Ok(SourceNamespace {
        labels,
        limit_ranges,
        quotas,
    })
}

/// The agents' reports of this Failover's restore, from the registration cache.
fn reports(ctx: &Context, f: &Failover) -> Vec<Report> {
    let status = f.status.clone().unwrap_or_default();
    let Some(restore) = status.restore else {
        return vec![];
    };
    let namespace = f.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for r in ctx.stores.registrations().iter() {
        for w in &r.work {
            if w.kind == WorkKind::Restore
                && w.namespace == namespace
                && w.workload == f.name_any()
                && Some(&w.owner) == f.metadata.uid.as_ref()
                && w.point == restore.point
            {
                out.push(Report {
                    node: r.node.clone(),
                    claims: w.claims.clone(),
                    state: w.state,
                    message: w.message.clone(),
                });
            }
        }
    }
    out
}

/// The node of each claim's writer pod (this Failover's pods only), in one list.
async fn writer_nodes(
    ctx: &Context,
    f: &Failover,
    place: &Place,
) -> Result<BTreeMap<String, String>, Error> {
    let status = f.status.clone().unwrap_or_default();
    let Some(restore) = status.restore else {
        return Ok(BTreeMap::new());
    };
    let uid = f.uid().unwrap_or_default();
    let pods = labelled_pods(
        ctx,
        &place.namespace,
        &format!("{FAILOVER_UID_LABEL}={uid}"),
    )
    .await?;
    let mut out = BTreeMap::new();
    for (n, v) in restore.volumes.iter().enumerate() {
        let name = writer_name(&f.name_any(), n);
        if let Some(node) = pods
            .iter()
            .find(|p| p.name_any() == name)
            .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        {
            out.insert(v.target_claim.clone(), node);
        }
    }
    Ok(out)
}

async fn ready_pods(ctx: &Context, f: &Failover, place: &Place) -> Result<i32, Error> {
    let pods = labelled_pods(
        ctx,
        &place.namespace,
        &format!("{FAILOVER_LABEL}={}", f.name_any()),
    )
    .await?;
    Ok(pods
        .iter()
        .filter(|p| shape::is_pod_of_copy(place.kind, &place.copy, &p.name_any(), p.labels()))
        .filter(|p| is_ready(p))
        .count() as i32)
}

/// Whether a pod's Ready condition is True.
pub(super) fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn verify_job(
    ctx: &Context,
    f: &Failover,
    place: &Place,
) -> Result<Option<VerifyJob>, Error> {
    let name = verification_job_name(&f.name_any());
    let Some(job) = Api::<Job>::namespaced(ctx.client.clone(), &place.namespace)
        .get_opt(&name)
        .await
        .map_err(Error::Kube)?
    else {
        return Ok(None);
    };
    // Another's Job of that name is not this drill's verdict.
    if job.labels().get(FAILOVER_UID_LABEL) != f.uid().as_ref() {
        return Ok(None);
    }
    let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    Ok(Some(if is("Complete").is_some() {
        VerifyJob::Complete
    } else if let Some(c) = is("Failed") {
        VerifyJob::Failed(c.message.clone().or(c.reason.clone()).unwrap_or_default())
    } else {
        VerifyJob::Running
    }))
}
