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
use crate::repository::Repository;
use crate::vault_access::VaultAccess;

mod world;
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
