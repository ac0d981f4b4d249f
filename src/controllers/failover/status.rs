//! The failover's status, built from a plan and written only when it changes.

use jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::merge_conditions;
use crate::api::failover::FailoverStatus;

pub fn build(
    previous: Option<&FailoverStatus>,
    plan: &Plan,
    generation: Option<i64>,
    now: Timestamp,
) -> FailoverStatus {
    let prev = previous.cloned().unwrap_or_default();
    FailoverStatus {
        observed_generation: generation,
        conditions: merge_conditions(&prev.conditions, plan.conditions.clone(), generation, now),
        resolved_point: plan.resolved_point.clone(),
        source_zone: plan.source_zone.clone().or(prev.source_zone.clone()),
        target_zone: plan.target_zone.clone().or(prev.target_zone.clone()),
        ..prev
    }
}
