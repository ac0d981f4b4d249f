//! The failover's status: the recorded facts, the plan's Ready beside the decision's
//! FailedOver/Committed/Verified, written only when it changes.

use jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::{Condition, merge_conditions};
use crate::api::failover::FailoverStatus;

pub fn build(
    recorded: FailoverStatus,
    plan: &Plan,
    decided: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> FailoverStatus {
    let mut conditions = plan.conditions.clone();
    for c in decided {
        conditions.retain(|x| x.r#type != c.r#type);
        conditions.push(c.clone());
    }
    FailoverStatus {
        observed_generation: generation,
        conditions: merge_conditions(&recorded.conditions, conditions, generation, now),
        source_zone: plan.source_zone.clone().or(recorded.source_zone.clone()),
        target_zone: plan.target_zone.clone().or(recorded.target_zone.clone()),
        ..recorded
    }
}
