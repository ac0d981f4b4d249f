//! Reads what a phase of the failover needs, and nothing else: the protected workload and vault
//! (shared caches), the workload's points as the vault's target location lists them (only while
//! the point is being chosen: the source zone and its cache may be gone), and the objects the
//! phase creates, waits for or copies.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;

use super::manifests::{ClaimShape, SourceNamespace};
use crate::api::failover::{FailoverMode, ResolvedPoint};
use crate::api::work::WorkState;
use crate::api::workload::PointRef;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::objects::{Holder, ObjectName};
use crate::controllers::{Context, jobs};

mod found;
pub use found::names as found_names;
mod world;
use world::labelled_pods;
pub use world::{commit_key, observe_world, source};

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

/// A workload found in a vault's target location (a failover from `spec.vaultName`): its kind
/// and name as the chosen point describes it, and the point's definition where a phase needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub vault: String,
    pub kind: crate::api::workload::WorkloadKind,
    pub name: String,
    pub cluster: String,
    pub cluster_uid: String,
    /// Read in the phases that create objects; why it cannot be used otherwise.
    pub definition: Option<Result<crate::controllers::definition::Definition, String>>,
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
    /// A failover from a vault: the workload as found there.
    pub found: Option<Found>,
    /// The vault's storage class for the target zone.
    pub zone_class: Option<String>,
    /// Between the phases: the point `spec.recoveryPoint` now names, when it is another one.
    pub switch_to: Option<ResolvedPoint>,
    /// The first step of a failback: the original workload the source is a copy of, held at
    /// zero by the failover that made the copy, with its claims kept.
    pub failback: Option<String>,
    /// A failover from a vault back to where the workload ran before: the claims of the
    /// workload found here, stopped at zero replicas, that the restore writes in place.
    pub kept_claims: std::collections::BTreeSet<String>,
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
    let workload = match &f.spec.vault_name {
        Some(vault) => Some(found_summary(ctx, f, vault, list).await),
        None => match workload_of(ctx, f) {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(w)) => Some(Ok(protected_summary(ctx, f, &namespace, &w, list).await)),
        },
    };
    Observed {
        workload,
        siblings: siblings(ctx, f),
    }
}

/// The vault's target zone, from the vault itself: a workload's status may be stale while a
/// failover runs.
fn vault_zone(ctx: &Context, namespace: &str, vault: &str) -> Option<String> {
    ctx.stores
        .vaults
        .get(&ObjectRef::new(vault).within(namespace))
        .and_then(|g| g.0.as_ref().ok().and_then(|v| v.spec.target.zone.clone()))
}

/// The points as listed (or the chosen one alone), split into the listing and their volumes.
fn summary(
    listed: Result<Vec<(PointRef, Vec<String>)>, String>,
) -> (Result<Vec<PointRef>, String>, BTreeMap<String, Vec<String>>) {
    match listed {
        Ok(listed) => (
            Ok(listed.iter().map(|(p, _)| p.clone()).collect()),
            listed.into_iter().map(|(p, v)| (p.id, v)).collect(),
        ),
        Err(e) => (Err(e), BTreeMap::new()),
    }
}

async fn protected_summary(
    ctx: &Context,
    f: &Failover,
    namespace: &str,
    w: &ReplicatedWorkload,
    list: bool,
) -> WorkloadSummary {
    let status = w.status.clone().unwrap_or_default();
    let listed = if list {
        let key = format!("{namespace}/{}", w.name_any());
        target_points(ctx, namespace, &w.spec.vault_name, &key).await
    } else {
        Ok(kept(f))
    };
    let (points, volumes) = summary(listed);
    WorkloadSummary {
        points,
        volumes,
        source_zone: status.source_zone,
        target_zone: vault_zone(ctx, namespace, &w.spec.vault_name).or(status.target_zone),
        statefulset: (w.spec.workload_ref.kind == crate::api::workload::WorkloadKind::StatefulSet)
            .then(|| w.spec.workload_ref.name.clone()),
    }
}

/// A workload found in the vault's target location: its points under `namespace/name`. The
/// vault must be this cluster's; nothing of the protecting cluster is read.
async fn found_summary(
    ctx: &Context,
    f: &Failover,
    vault: &str,
    list: bool,
) -> Result<WorkloadSummary, String> {
    let namespace = f.namespace().unwrap_or_default();
    if ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault).within(&namespace))
        .is_none()
    {
        return Err(format!(
            "spec.vaultName: RecoveryVault {vault} not found in this namespace"
        ));
    }
    let listed = if list {
        let key = format!(
            "{}/{}",
            found::workload_namespace(&ctx.namespace, f)?,
            f.spec.workload_name
        );
        target_points(ctx, &namespace, vault, &key).await
    } else {
        Ok(kept(f))
    };
    let (points, volumes) = summary(listed);
    Ok(WorkloadSummary {
        points,
        volumes,
        source_zone: None,
        target_zone: vault_zone(ctx, &namespace, vault),
        statefulset: None,
    })
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
    let namespace = f.workload_namespace();
    ctx.stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|o| {
            o.workload_namespace() == namespace
                && (o.namespace(), o.name_any()) != (f.namespace(), f.name_any())
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

/// The workload's points (`key`: `namespace/name`) in the vault's target location, each with the
/// volumes it holds, through the vault's store (opened once, kept while its spec and Secrets stay
/// the same).
async fn target_points(
    ctx: &Context,
    namespace: &str,
    vault_name: &str,
    key: &str,
) -> Result<Vec<(PointRef, Vec<String>)>, String> {
    let vault = ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault_name).within(namespace))
        .ok_or_else(|| format!("RecoveryVault {vault_name} not found"))?;
    let vault = vault.0.as_ref().map_err(|e| e.to_string())?;
    let list = async {
        let store = ctx.point_stores.get(ctx, vault).await?;
        store.target_points(key).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(60), list).await {
        Ok(Ok(points)) => Ok(points),
        Ok(Err(e)) => Err(format!("RecoveryVault {vault_name}: {e}")),
        Err(_) => Err(format!(
            "target location of RecoveryVault {vault_name} did not answer within 60s"
        )),
    }
}
