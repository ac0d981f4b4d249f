//! The workload's status, built from a plan and written only when it changes. Replication
//! fields (points, RPO, progress) are carried over untouched: the replication pipeline owns them.

use jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::merge_conditions;
use crate::api::workload::ReplicatedWorkloadStatus;

pub fn build(
    previous: Option<&ReplicatedWorkloadStatus>,
    plan: &Plan,
    generation: Option<i64>,
    now: Timestamp,
) -> ReplicatedWorkloadStatus {
    let prev = previous.cloned().unwrap_or_default();
    ReplicatedWorkloadStatus {
        observed_generation: generation,
        conditions: merge_conditions(&prev.conditions, plan.conditions.clone(), generation, now),
        source_zone: plan.source_zone.clone(),
        target_zone: plan.target_zone.clone(),
        volumes: plan.volumes.clone(),
        ..prev
    }
}
