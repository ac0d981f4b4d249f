//! Reads what the workload decision needs, from the shared caches: its vault, the StatefulSet
//! or Deployment, its pods and their claims, node topology and agent registrations (a
//! VirtualMachine is read from the API).

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;

use crate::api::conditions::find;
use crate::api::reasons::ConditionType;
use crate::api::registration::AgentRegistration;
use crate::api::workload::{ReplicatedWorkloadSpec, WorkloadKind};
use crate::cache::{HOLDER, Owner};
use crate::controllers::context::NodeTopology;
use crate::controllers::objects::Kind;
use crate::controllers::{Context, Error, shape};

/// How long a pass waits for the caches to fill before it is retried.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The vault as far as the workload cares.
#[derive(Clone, Debug, PartialEq)]
pub struct VaultSummary {
    pub ready: bool,
    pub message: String,
    pub target_zone: Option<String>,
    pub spec: Box<crate::api::vault::RecoveryVaultSpec>,
}

/// One pod of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub node: Option<String>,
    /// Claim names mounted by the pod.
    pub claims: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The ReplicatedWorkload's own name (it becomes a label value).
    pub name: String,
    /// `None`: no such vault. `Some(Err)`: it exists but cannot be read.
    pub vault: Option<Result<VaultSummary, String>>,
    /// Whether the StatefulSet or Deployment exists.
    pub workload_found: bool,
    pub pods: Vec<PodInfo>,
    /// Names of the PersistentVolumeClaims the pods mount that exist.
    pub claims: Vec<String>,
    pub nodes: Vec<NodeTopology>,
    pub registrations: std::sync::Arc<[AgentRegistration]>,
    /// A Failover of this workload that has started (its restore began).
    pub failover: Option<FailoverSummary>,
}

/// What the workload's status says of a Failover that took it over.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailoverSummary {
    pub name: String,
    /// Committed: the points are gone, the copy is the workload now.
    pub committed: bool,
    pub target_workload: Option<String>,
    pub target_zone: Option<String>,
}

pub async fn observe(
    ctx: &Context,
    namespace: &str,
    workload_name: &str,
    spec: &ReplicatedWorkloadSpec,
) -> Result<Observed, Error> {
    let vault = vault_summary(ctx, namespace, &spec.vault_name);

    // Served from the caches once they are filled: a pass costs no request to read them, so
    // what a point costs does not grow with how often its workload reconciles.
    ctx.stores
        .workload_caches_ready(CACHE_WAIT)
        .await
        .map_err(|caches| Error::CachesFilling { caches })?;
    let name = &spec.workload_ref.name;
    let invalid = |e: kube::core::ParseExpressionError| Error::InvalidObject {
        kind: spec.workload_ref.kind.as_str().into(),
        name: format!("{namespace}/{name}"),
        message: format!("spec.selector cannot be used: {e}"),
    };
    let selector: Option<Selector> = match spec.workload_ref.kind {
        WorkloadKind::StatefulSet => ctx
            .stores
            .stateful_sets
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| Selector::try_from(s.spec.clone().unwrap_or_default().selector))
            .transpose()
            .map_err(invalid)?,
        WorkloadKind::Deployment => ctx
            .stores
            .deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| Selector::try_from(d.spec.clone().unwrap_or_default().selector))
            .transpose()
            .map_err(invalid)?,
        // Its virt-launcher pod, by the label KubeVirt gives it. Read from the API: KubeVirt
        // may not be installed, and a watch of a kind that does not exist would never fill.
        WorkloadKind::VirtualMachine => Kind::VirtualMachine
            .api(&ctx.client, Some(namespace))
            .get_metadata_opt(name)
            .await
            .map_err(Error::Kube)?
            .map(|_| Selector::from_iter([(shape::VM_NAME_LABEL.to_string(), name.to_string())])),
    };
    let workload_found = selector.is_some();
    let owner = (
        namespace.to_string(),
        spec.workload_ref.kind.as_str(),
        name.clone(),
    );
    let mut pods = match &selector {
        Some(selector) => pods_of(ctx, &owner, Some(selector)),
        None => vec![],
    };
    // A planned failover stopped the workload and holds its claims mounted for a final point.
    // Only while a Planned Failover of the workload exists (holders carry its uid and go with
    // it): an idle workload does not look for them.
    if planned_failover(ctx, namespace, workload_name) {
        let holders = (namespace.to_string(), HOLDER, workload_name.to_string());
        pods.extend(pods_of(ctx, &holders, None));
    }
    let mounted: std::collections::BTreeSet<&String> =
        pods.iter().flat_map(|p| p.claims.iter()).collect();
    let claims = mounted
        .into_iter()
        .filter(|claim| {
            ctx.stores
                .claims
                .get(&ObjectRef::new(claim).within(namespace))
                .is_some()
        })
        .cloned()
        .collect();
    Ok(Observed {
        name: workload_name.to_string(),
        vault,
        workload_found,
        pods,
        claims,
        nodes: ctx.stores.node_topology(),
        registrations: ctx.stores.registrations(),
        failover: failover_summary(ctx, namespace, workload_name),
    })
}

/// Whether a Planned Failover of the workload exists (in the cache), whose holder pods the
/// workload reads as its own.
fn planned_failover(ctx: &Context, namespace: &str, workload_name: &str) -> bool {
    ctx.stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .any(|f| {
            f.namespace().as_deref() == Some(namespace)
                && f.spec.workload_name == workload_name
                && f.spec.vault_name.is_none()
                && f.spec.mode == crate::api::failover::FailoverMode::Planned
        })
}

/// The vault the workload names, from the cache.
fn vault_summary(
    ctx: &Context,
    namespace: &str,
    vault: &str,
) -> Option<Result<VaultSummary, String>> {
    ctx.stores
        .vaults
        .get(&ObjectRef::new(vault).within(namespace))
        .map(|guard| match &guard.0 {
            Ok(v) => {
                let ready = v
                    .status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, ConditionType::Ready.as_str()));
                Ok(VaultSummary {
                    ready: ready.is_some_and(|c| c.is_true()),
                    message: ready
                        .map(|c| c.message.clone())
                        .unwrap_or_else(|| "not yet reconciled".into()),
                    target_zone: v.spec.target.zone.clone(),
                    spec: Box::new(v.spec.clone()),
                })
            }
            Err(e) => Err(e.to_string()),
        })
}

/// The Failover (not a drill) that has started restoring this workload, if any.
fn failover_summary(
    ctx: &Context,
    namespace: &str,
    workload_name: &str,
) -> Option<FailoverSummary> {
    ctx.stores
        .failovers
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .find(|f| {
            f.namespace().as_deref() == Some(namespace)
                && f.spec.workload_name == workload_name
                // A failover from a vault brought a workload of that name here; it is not one
                // of this ReplicatedWorkload's.
                && f.spec.vault_name.is_none()
                && f.spec.mode != crate::api::failover::FailoverMode::Test
                && f.status.as_ref().is_some_and(|s| s.restore.is_some())
        })
        .map(|f| {
            let status = f.status.clone().unwrap_or_default();
            FailoverSummary {
                name: f.name_any(),
                committed: status.reached(&crate::api::failover::Milestone::Committed),
                target_workload: status.target_workload,
                target_zone: status.target_zone,
            }
        })
}

/// The pods `owner` has (that `selector` selects, when given) and that are not being deleted,
/// from the cache, in name order. Only pods its controller owns: a pod whose labels match but
/// that another controller owns is not this workload's.
fn pods_of(ctx: &Context, owner: &Owner, selector: Option<&Selector>) -> Vec<PodInfo> {
    ctx.stores
        .pod_index
        .pods(owner)
        .iter()
        .filter_map(|name| ctx.stores.pods.get(&ObjectRef::new(name).within(&owner.0)))
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && selector.is_none_or(|s| s.matches(p.labels()))
        })
        .map(|p| PodInfo {
            name: p.name_any(),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            claims: p
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .map(|c| c.claim_name.clone())
                })
                .collect(),
        })
        .collect()
}
