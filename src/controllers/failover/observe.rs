//! Reads what a phase of the failover needs, and nothing else: the protected workload and vault
//! (shared caches), the workload's points as the vault's target location lists them (only while
//! the point is being chosen: the source zone and its cache may be gone), and the objects the
//! phase creates, waits for or copies.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;

use super::decide::prepared_names;
use super::manifests::{ClaimShape, Place, SourceNamespace, verification_job_name};
use super::phase::Phase;
use crate::api::failover::{FailoverMode, ResolvedPoint};
use crate::api::work::{
    FAILOVER_LABEL, FAILOVER_UID_LABEL, HOLD_LABEL, WorkKind, WorkState, holder_name, writer_name,
};
use crate::api::workload::PointRef;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::failover::manifests::labels;
use crate::controllers::objects::{Holder, Kind, ObjectName, claim_size, holder};
use crate::controllers::{Context, Error, jobs};
use crate::repository::Repository;
use crate::storage::vault::VaultAccess;

#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSummary {
    /// The workload's points in the target location, oldest first; why they cannot be listed.
    /// Past the choice (the restore started), the chosen point alone stands for the listing.
    pub points: Result<Vec<PointRef>, String>,
    /// The volumes each point holds, by point id.
    pub volumes: BTreeMap<String, Vec<String>>,
    pub source_zone: Option<String>,
    pub target_zone: Option<String>,
    /// The protected StatefulSet's name, when the workload is one (its copy's name is derived).
    pub statefulset: Option<String>,
}

/// Another Failover of the same workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Sibling {
    pub name: String,
    pub created: Option<Timestamp>,
    /// A drill: drills and failovers never block each other.
    pub test: bool,
}

/// What the plan (the Ready condition and the point) reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub workload: Option<Result<WorkloadSummary, String>>,
    pub siblings: Vec<Sibling>,
}

/// The source workload as a failover needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub object: DynamicObject,
    /// The replica count noted before the failover scaled it to zero.
    pub noted: Option<i32>,
    pub replicas: Option<i32>,
}

/// An agent's report of restore work for this Failover.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub node: String,
    pub claims: Vec<String>,
    pub state: WorkState,
    pub message: String,
}

/// The verification Job of a drill.
#[derive(Clone, Debug, PartialEq)]
pub enum VerifyJob {
    Running,
    Complete,
    Failed(String),
}

/// The background deletion of the points (phase two): the points removed, or why not.
pub type CommitJob = jobs::State<usize>;

/// What the machine's phases read; each field is filled only in the phases that need it.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub workload: Option<ReplicatedWorkload>,
    /// The vault's storage class for the target zone.
    pub zone_class: Option<String>,
    /// Between the phases: the point `spec.recoveryPoint` now names, when it is another one.
    pub switch_to: Option<ResolvedPoint>,
    /// Who holds each name the phase creates an object under.
    pub names: BTreeMap<ObjectName, Holder>,
    pub source: Option<Source>,
    /// Pods of the source still running (Planned).
    pub source_pods: usize,
    /// Holder pod `i`: absent, or whether it runs (Planned).
    pub holders: Vec<Option<bool>>,
    pub claim_shapes: BTreeMap<String, ClaimShape>,
    pub source_namespace: Option<SourceNamespace>,
    pub services: Vec<Service>,
    pub reports: Vec<Report>,
    /// The node of each restored claim's writer pod.
    pub writer_nodes: BTreeMap<String, String>,
    /// Ready pods of the copy.
    pub ready_pods: i32,
    pub job: Option<VerifyJob>,
    pub commit: Option<CommitJob>,
}

/// The ReplicatedWorkload the Failover names, from the cache.
pub fn workload_of(ctx: &Context, f: &Failover) -> Option<Result<ReplicatedWorkload, String>> {
    let namespace = f.namespace().unwrap_or_default();
    ctx.stores
        .workloads
        .get(&ObjectRef::new(&f.spec.workload_name).within(&namespace))
        .map(|guard| guard.0.as_ref().cloned().map_err(|e| e.to_string()))
}

/// The plan's inputs. The target location is listed only while the point is being chosen or may
/// change; otherwise the chosen point stands for the listing.
pub async fn observe_plan(ctx: &Context, f: &Failover, list: bool) -> Observed {
    let namespace = f.namespace().unwrap_or_default();
    let workload = workload_of(ctx, f).map(|found| {
        let w = found?;
        let status = w.status.clone().unwrap_or_default();
        // The target zone comes from the vault itself: the workload's status may be stale
        // while a failover runs.
        let vault_zone = ctx
            .stores
            .vaults
            .get(&ObjectRef::new(&w.spec.vault_name).within(&namespace))
            .and_then(|g| g.0.as_ref().ok().and_then(|v| v.spec.target.zone.clone()));
        Ok((w, status, vault_zone))
    });
    let workload = match workload {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok((w, status, vault_zone))) => {
            let listed = if list {
                target_points(ctx, &namespace, &w).await
            } else {
                Ok(kept(f))
            };
            let (points, volumes) = match listed {
                Ok(listed) => (
                    Ok(listed.iter().map(|(p, _)| p.clone()).collect()),
                    listed.into_iter().map(|(p, v)| (p.id, v)).collect(),
                ),
                Err(e) => (Err(e), BTreeMap::new()),
            };
            Some(Ok(WorkloadSummary {
                points,
                volumes,
                source_zone: status.source_zone,
                target_zone: vault_zone.or(status.target_zone),
                statefulset: (w.spec.workload_ref.kind
                    == crate::api::workload::WorkloadKind::StatefulSet)
                    .then(|| w.spec.workload_ref.name.clone()),
            }))
        }
    };
    Observed {
        workload,
        siblings: siblings(ctx, f),
    }
}

/// The chosen point, as the listing it was chosen from.
fn kept(f: &Failover) -> Vec<(PointRef, Vec<String>)> {
    let status = f.status.clone().unwrap_or_default();
    status
        .resolved_point
        .map(|p| {
            (
                PointRef {
                    id: p.id,
                    time: p.time,
                    replicated: true,
                    consistency: p.consistency,
                },
                p.volumes,
            )
        })
        .into_iter()
        .collect()
}

fn siblings(ctx: &Context, f: &Failover) -> Vec<Sibling> {
    let namespace = f.namespace().unwrap_or_default();
    ctx.stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|o| {
            o.namespace().as_deref() == Some(namespace.as_str())
                && o.name_any() != f.name_any()
                && o.spec.workload_name == f.spec.workload_name
                && o.metadata.deletion_timestamp.is_none()
        })
        .map(|o| Sibling {
            name: o.name_any(),
            created: o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            test: o.spec.mode == FailoverMode::Test,
        })
        .collect()
}

/// What `phase` reads of the world.
pub async fn observe_world(
    ctx: &Context,
    f: &Failover,
    phase: Phase,
    point: Option<&ResolvedPoint>,
    zone: Option<&str>,
) -> Result<World, Error> {
    let mut world = World::default();
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
                world.source_pods = pods_of(ctx, &namespace, &s.object).await?;
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
        }
        Phase::Preparing => {
            if let Some(point) = point {
                for name in prepared_names(f, &place, point) {
                    let h = holder(client, &name, FAILOVER_UID_LABEL, &uid).await?;
                    world.names.insert(name, h);
                }
                world.claim_shapes = claim_shapes(ctx, &namespace, &point.volumes).await?;
            }
            world.zone_class = zone_class(ctx, f, &rw, zone);
            if place.drill {
                world.source_namespace = Some(source_namespace(ctx, &namespace).await?);
            }
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
            world.ready_pods = ready_pods(ctx, f, &place).await?;
            if place.drill && f.spec.verification.is_some() {
                world.job = verify_job(ctx, f, &place).await?;
            }
            world.commit = ctx.commits.state(&commit_key(f));
        }
    }
    world.workload = Some(rw);
    Ok(world)
}

/// The key of a Failover's commit job.
pub fn commit_key(f: &Failover) -> String {
    f.uid().unwrap_or_default()
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
            .get(super::REPLICAS_ANNOTATION)
            .and_then(|r| r.parse::<i32>().ok()),
        replicas: object.data["spec"]["replicas"].as_i64().map(|r| r as i32),
        object,
    }))
}

async fn labelled_pods(ctx: &Context, namespace: &str, selector: &str) -> Result<Vec<Pod>, Error> {
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::Kube)?
        .items)
}

/// The workload's pods still running: they match its selector and are not a failover's.
async fn pods_of(ctx: &Context, namespace: &str, source: &DynamicObject) -> Result<usize, Error> {
    let Some(labels) = source.data["spec"]["selector"]["matchLabels"].as_object() else {
        return Ok(0);
    };
    let selector = labels
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect::<Vec<_>>()
        .join(",");
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
    for r in ctx.stores.registrations() {
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
        .filter(|p| p.name_any().starts_with(&format!("{}-", place.copy)))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count() as i32)
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
    if job.labels().get(FAILOVER_UID_LABEL) != labels(f).get(FAILOVER_UID_LABEL) {
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

/// The workload's points in the vault's target location, each with the volumes it holds.
async fn target_points(
    ctx: &Context,
    namespace: &str,
    w: &ReplicatedWorkload,
) -> Result<Vec<(PointRef, Vec<String>)>, String> {
    let vault_name = &w.spec.vault_name;
    let vault = ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault_name).within(namespace))
        .ok_or_else(|| format!("RecoveryVault {vault_name} not found"))?;
    let vault = vault.0.as_ref().map_err(|e| e.to_string())?;
    let access = VaultAccess::resolve(&ctx.client, namespace, &vault.spec, &ctx.storage)
        .await
        .map_err(|e| format!("RecoveryVault {vault_name}: {e}"))?;
    let key = format!("{namespace}/{}", w.name_any());
    let list = async {
        let repo = Repository::open(access.target.clone(), &access.key).await?;
        let manifests = repo.manifests().await?;
        Ok::<_, crate::repository::RepoError>(
            manifests
                .into_iter()
                .filter(|m| m.workload == key)
                .filter_map(|m| {
                    let volumes = m.volumes.iter().map(|v| v.name.clone()).collect();
                    Some((
                        PointRef {
                            time: m.time.parse().ok()?,
                            id: m.id,
                            replicated: true,
                            consistency: m.consistency.as_str().into(),
                        },
                        volumes,
                    ))
                })
                .collect(),
        )
    };
    match tokio::time::timeout(std::time::Duration::from_secs(60), list).await {
        Ok(Ok(points)) => Ok(points),
        Ok(Err(crate::repository::RepoError::NotARepository { .. })) => Ok(vec![]),
        Ok(Err(e)) => Err(format!(
            "target location of RecoveryVault {vault_name}: {e}"
        )),
        Err(_) => Err(format!(
            "target location of RecoveryVault {vault_name} did not answer within 60s"
        )),
    }
}
