//! The workload's status, built from a plan and the replication step's fields, and written only
//! when it changes.

use jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::merge_conditions;
use crate::api::reasons::WorkloadReason;
use crate::api::workload::ReplicatedWorkloadStatus;

/// `replicated` carries the replication fields the pipeline set; `rpo_seconds` is refreshed only
/// when something else changes, so that the RPO's ticking alone never causes a write.
pub fn build(
    replicated: &ReplicatedWorkloadStatus,
    previous: Option<&ReplicatedWorkloadStatus>,
    plan: &Plan,
    generation: Option<i64>,
    now: Timestamp,
    rpo_seconds: Option<i64>,
) -> ReplicatedWorkloadStatus {
    let prev = previous.cloned().unwrap_or_default();
    // While a failover holds the workload, what was protected, and where, stays on record.
    let held = plan.conditions.iter().any(|c| {
        c.r#type == "Ready"
            && (c.reason == WorkloadReason::FailoverInProgress.as_str()
                || c.reason == WorkloadReason::FailoverCommitted.as_str())
    });
    let (source_zone, target_zone, volumes) = if held {
        (
            prev.source_zone.clone(),
            prev.target_zone.clone(),
            prev.volumes.clone(),
        )
    } else {
        (
            plan.source_zone.clone(),
            plan.target_zone.clone(),
            plan.volumes.clone(),
        )
    };
    let mut next = ReplicatedWorkloadStatus {
        observed_generation: generation,
        conditions: merge_conditions(&prev.conditions, plan.conditions.clone(), generation, now),
        source_zone,
        target_zone,
        volumes,
        rpo_seconds: prev.rpo_seconds,
        ..replicated.clone()
    };
    if next != prev {
        next.rpo_seconds = rpo_seconds;
    }
    next
}
