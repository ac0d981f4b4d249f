//! The workload decision: which volumes are protected, where they are, whether an agent serves
//! each of their nodes. Pure: spec + observed + now.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use super::observe::Observed;
use crate::api::conditions::{Condition, ConditionStatus, find, transitioned};
use crate::api::reasons::{ConditionType as T, EventReason, WorkloadReason as R};
use crate::api::workload::{ReplicatedWorkloadSpec, ReplicatedWorkloadStatus, VolumeStatus};
use crate::controllers::PlannedEvent;

/// How often the workload is looked at again when nothing triggers it.
pub const RECHECK: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub conditions: Vec<Condition>,
    pub volumes: Vec<VolumeStatus>,
    pub source_zone: Option<String>,
    pub target_zone: Option<String>,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
}

/// Why the workload cannot be resolved, as (reason, message).
type Blocker = (R, String);

/// Resolves the protected volumes: the claims named in `spec.volumes` (a claim name, or a
/// StatefulSet claim template name that matches `<template>-<pod>`), or every claim the pods mount.
fn resolve_volumes(
    spec: &ReplicatedWorkloadSpec,
    observed: &Observed,
) -> Result<Vec<VolumeStatus>, Blocker> {
    let kind = spec.workload_ref.kind.as_str();
    let name = &spec.workload_ref.name;
    if observed.pods.is_empty() {
        return Err((
            R::NoPods,
            format!("{kind} {name} has no pods; protection starts once it runs"),
        ));
    }
    let mut volumes = BTreeSet::new();
    for pod in &observed.pods {
        for claim in &pod.claims {
            let wanted = match &spec.volumes {
                None => true,
                Some(list) => list
                    .iter()
                    .any(|v| v == claim || *claim == format!("{v}-{}", pod.name)),
            };
            if wanted {
                volumes.insert((claim.clone(), pod.node.clone()));
            }
        }
    }
    if let Some(list) = &spec.volumes {
        for (i, v) in list.iter().enumerate() {
            if !volumes
                .iter()
                .any(|(c, _)| c == v || c.starts_with(&format!("{v}-")))
            {
                return Err((
                    R::ClaimNotFound,
                    format!(
                        "spec.volumes[{i}]: claim {v:?} is not mounted by any pod of {kind} {name}"
                    ),
                ));
            }
        }
    }
    if volumes.is_empty() {
        return Err((
            R::NoVolumes,
            format!("the pods of {kind} {name} mount no PersistentVolumeClaim"),
        ));
    }
    for (claim, _) in &volumes {
        if !observed.claims.contains(claim) {
            return Err((
                R::ClaimNotFound,
                format!("PersistentVolumeClaim {claim} does not exist"),
            ));
        }
    }
    Ok(volumes
        .into_iter()
        .map(|(claim_name, node)| VolumeStatus {
            zone: node
                .as_ref()
                .and_then(|n| observed.nodes.iter().find(|t| &t.name == n))
                .and_then(|t| t.zone.clone()),
            claim_name,
            node,
        })
        .collect())
}

/// Registered: a live agent registration on every node holding a protected volume.
fn registration(
    volumes: &[VolumeStatus],
    observed: &Observed,
    now: Timestamp,
) -> (Condition, Option<Timestamp>) {
    let nodes: BTreeSet<&str> = volumes.iter().filter_map(|v| v.node.as_deref()).collect();
    let mut missing = Vec::new();
    let mut lost = Vec::new();
    let mut next_expiry: Option<Timestamp> = None;
    for node in &nodes {
        match observed.registrations.iter().find(|r| r.node == *node) {
            None => missing.push(*node),
            Some(r) if !r.is_alive(now) => lost.push(format!(
                "{node} (last renewed {})",
                r.renewed
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into())
            )),
            Some(r) => {
                next_expiry = match (next_expiry, r.expires()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }
    let condition = if !lost.is_empty() {
        Condition::new(
            T::Registered,
            ConditionStatus::False,
            R::AgentLost,
            format!(
                "the agent stopped renewing its registration on node {}; check the agent pod there",
                lost.join(", ")
            ),
        )
    } else if !missing.is_empty() {
        Condition::new(
            T::Registered,
            ConditionStatus::False,
            R::NoAgentOnNode,
            format!(
                "no agent is registered on node {}; check that the agent DaemonSet runs there (nodeSelector, tolerations)",
                missing.join(", ")
            ),
        )
    } else {
        Condition::new(
            T::Registered,
            ConditionStatus::True,
            R::AgentsRegistered,
            format!(
                "agents registered on {} node(s): {}",
                nodes.len(),
                nodes.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        )
    };
    (condition, next_expiry)
}

pub fn plan(
    spec: &ReplicatedWorkloadSpec,
    previous: Option<&ReplicatedWorkloadStatus>,
    observed: &Observed,
    now: Timestamp,
) -> Plan {
    let mut target_zone = None;
    let mut volumes = Vec::new();
    let mut requeue = RECHECK;
    let blocker = blocker(spec, observed, &mut target_zone, &mut volumes);
    let registered = registered(blocker.as_ref(), &volumes, observed, now, &mut requeue);
    let ready = ready(spec, blocker.as_ref(), observed, &registered, volumes.len());
    let conditions = vec![ready, registered];
    let source_zone = most_common(volumes.iter().filter_map(|v| v.zone.clone()));
    let events = ready_events(previous, &conditions);
    Plan {
        conditions,
        volumes,
        source_zone,
        target_zone,
        events,
        requeue,
    }
}

/// What stops the workload from being protected, if anything; fills in the vault's target
/// zone and the resolved volumes on the way.
fn blocker(
    spec: &ReplicatedWorkloadSpec,
    observed: &Observed,
    target_zone: &mut Option<String>,
    volumes: &mut Vec<VolumeStatus>,
) -> Option<Blocker> {
    // The name labels the workload's temporary objects and holder pods: checked before all.
    let name_problem = crate::api::names::label_value_problem(
        "metadata.name",
        &observed.name,
        crate::api::work::WORKLOAD_LABEL,
    );
    match &observed.vault {
        _ if name_problem.is_some() => name_problem.map(|m| (R::InvalidSpec, m)),
        // Checked first: after a failover the selector also finds the copy's pods.
        _ if observed.failover.is_some() => Some(failover_blocker(
            spec,
            &observed.failover.clone().unwrap_or_default(),
        )),
        None => Some((
            R::VaultNotFound,
            format!(
                "spec.vaultName: RecoveryVault {} not found in this namespace",
                spec.vault_name
            ),
        )),
        Some(Err(e)) => Some((
            R::VaultNotReady,
            format!("RecoveryVault {} cannot be read: {e}", spec.vault_name),
        )),
        Some(Ok(v)) => {
            *target_zone = v.target_zone.clone();
            if !observed.workload_found {
                Some((
                    R::WorkloadNotFound,
                    format!(
                        "spec.workloadRef: {} {} not found in this namespace",
                        spec.workload_ref.kind.as_str(),
                        spec.workload_ref.name
                    ),
                ))
            } else {
                match resolve_volumes(spec, observed) {
                    Err(b) => Some(b),
                    Ok(v) => {
                        *volumes = v;
                        None
                    }
                }
            }
        }
    }
}

/// A failover of the workload stops its points; after the commit it is unprotected.
fn failover_blocker(spec: &ReplicatedWorkloadSpec, f: &super::observe::FailoverSummary) -> Blocker {
    if f.committed {
        (
            R::FailoverCommitted,
            format!(
                "Failover {} is committed: {} {} runs as {} in zone {}; it is not protected until it is re-protected (a ReplicatedWorkload of the copy on a vault in the reverse direction, as in examples/reprotect.yaml)",
                f.name,
                spec.workload_ref.kind.as_str(),
                spec.workload_ref.name,
                f.target_workload.as_deref().unwrap_or("its copy"),
                f.target_zone.as_deref().unwrap_or("the target zone"),
            ),
        )
    } else {
        (
            R::FailoverInProgress,
            format!(
                "Failover {} of this workload has started: no point is taken while it runs",
                f.name
            ),
        )
    }
}

/// Registered: an agent on every node that holds a protected volume.
fn registered(
    blocker: Option<&Blocker>,
    volumes: &[VolumeStatus],
    observed: &Observed,
    now: Timestamp,
    requeue: &mut Duration,
) -> Condition {
    let unknown = |t: T, reason: R, message: &str| {
        Condition::new(t, ConditionStatus::Unknown, reason, message)
    };
    if let Some((reason, message)) = blocker {
        unknown(T::Registered, *reason, message)
    } else if let Some(v) = volumes.iter().find(|v| v.node.is_none()) {
        unknown(
            T::Registered,
            R::PodNotScheduled,
            &format!(
                "the pod mounting claim {} is not scheduled to a node yet",
                v.claim_name
            ),
        )
    } else {
        let (condition, expiry) = registration(volumes, observed, now);
        if let Some(expiry) = expiry {
            // Look again the moment a registration would lapse, so AgentLost shows without delay.
            if let Ok(until) = Duration::try_from(expiry.duration_since(now)) {
                *requeue = (*requeue).min(until + Duration::from_millis(500));
            }
        }
        condition
    }
}

fn ready(
    spec: &ReplicatedWorkloadSpec,
    blocker: Option<&Blocker>,
    observed: &Observed,
    registered: &Condition,
    volumes: usize,
) -> Condition {
    let vault_ready = matches!(&observed.vault, Some(Ok(v)) if v.ready);
    if let Some((reason, message)) = blocker {
        Condition::new(T::Ready, ConditionStatus::False, *reason, message.clone())
    } else if !vault_ready {
        let message = match &observed.vault {
            Some(Ok(v)) => v.message.clone(),
            _ => String::new(),
        };
        Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::VaultNotReady,
            format!("RecoveryVault {} is not ready: {message}", spec.vault_name),
        )
    } else if !registered.is_true() {
        Condition::new(
            T::Ready,
            ConditionStatus::False,
            R::NotRegistered,
            registered.message.clone(),
        )
    } else {
        Condition::new(
            T::Ready,
            ConditionStatus::True,
            R::WorkloadReady,
            format!(
                "{} volume(s) resolved and served by registered agents",
                volumes
            ),
        )
    }
}

fn most_common(items: impl Iterator<Item = String>) -> Option<String> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in items {
        *counts.entry(i).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(z, _)| z)
}

/// Events for transitions of the replication conditions that the pipeline's own events do not
/// cover: the RPO objective missed or met again.
pub fn replication_events(
    previous: Option<&ReplicatedWorkloadStatus>,
    conditions: &[Condition],
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    if let Some(rpo) = find(conditions, T::RPOMet.as_str())
        && transitioned(previous.map(|p| p.conditions.as_slice()), rpo)
        && rpo.reason == R::RPOExceeded.as_str()
    {
        events.push(PlannedEvent::warning(
            EventReason::RPOExceeded,
            "Replicate",
            rpo.message.clone(),
        ));
    }
    events
}

fn ready_events(
    previous: Option<&ReplicatedWorkloadStatus>,
    conditions: &[Condition],
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    for t in [T::Ready, T::Registered] {
        let Some(now) = find(conditions, t.as_str()) else {
            continue;
        };
        if !transitioned(previous.map(|p| p.conditions.as_slice()), now) {
            continue;
        }
        let reason = match (t, now.is_true()) {
            (T::Ready, true) => EventReason::WorkloadReady.as_str().to_string(),
            (T::Ready, false) => EventReason::WorkloadNotReady.as_str().to_string(),
            _ => now.reason.clone(),
        };
        let note = format!("{}: {}", now.reason, now.message);
        events.push(if now.is_true() {
            PlannedEvent::normal(reason, "Resolve", note)
        } else {
            PlannedEvent::warning(reason, "Resolve", note)
        });
    }
    events
}

#[cfg(test)]
mod tests;
