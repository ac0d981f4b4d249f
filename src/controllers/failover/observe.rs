//! Reads what the failover decision needs: the protected workload (shared cache), its points as
//! the vault's target location lists them (the source zone and its cache may be gone), and the
//! other Failovers of the namespace.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::workload::PointRef;
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::Context;
use crate::repository::Repository;
use crate::storage::vault::VaultAccess;

#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSummary {
    /// The workload's points in the target location, oldest first; why they cannot be listed.
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

#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub workload: Option<Result<WorkloadSummary, String>>,
    pub siblings: Vec<Sibling>,
}

pub async fn observe(ctx: &Context, failover: &Failover) -> Observed {
    let namespace = failover.namespace().unwrap_or_default();
    let found = ctx
        .stores
        .workloads
        .get(&ObjectRef::new(&failover.spec.workload_name).within(&namespace))
        .map(|guard| match &guard.0 {
            Ok(w) => Ok(w.clone()),
            Err(e) => Err(e.to_string()),
        });
    let workload = match found {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(w)) => {
            let status = w.status.clone().unwrap_or_default();
            // The target zone comes from the vault itself: the workload's status may be stale
            // while a failover runs.
            let vault_zone = ctx
                .stores
                .vaults
                .get(&ObjectRef::new(&w.spec.vault_name).within(&namespace))
                .and_then(|g| g.0.as_ref().ok().and_then(|v| v.spec.target.zone.clone()));
            let (points, volumes) = match target_points(ctx, &namespace, &w).await {
                Ok(listed) => {
                    let volumes = listed
                        .iter()
                        .map(|(p, v)| (p.id.clone(), v.clone()))
                        .collect();
                    (Ok(listed.into_iter().map(|(p, _)| p).collect()), volumes)
                }
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
    let siblings = ctx
        .stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|f| {
            f.namespace().as_deref() == Some(namespace.as_str())
                && f.name_any() != failover.name_any()
                && f.spec.workload_name == failover.spec.workload_name
                && f.metadata.deletion_timestamp.is_none()
        })
        .map(|f| Sibling {
            name: f.name_any(),
            created: f.metadata.creation_timestamp.as_ref().map(|t| t.0),
            test: f.spec.mode == crate::api::failover::FailoverMode::Test,
        })
        .collect();
    Observed { workload, siblings }
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
