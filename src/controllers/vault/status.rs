//! The vault's status, built from a plan and written only when it changes.

use jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::merge_conditions;
use crate::api::vault::RecoveryVaultStatus;

pub fn build(
    previous: Option<&RecoveryVaultStatus>,
    plan: &Plan,
    generation: Option<i64>,
    now: Timestamp,
) -> RecoveryVaultStatus {
    let old_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    RecoveryVaultStatus {
        observed_generation: generation,
        conditions: merge_conditions(old_conditions, plan.conditions.clone(), generation, now),
        separation: plan.separation,
        cache_region: plan.cache_region.clone(),
        target_region: plan.target_region.clone(),
        usage: previous.and_then(|p| p.usage.clone()),
        discovered: previous.map(|p| p.discovered.clone()).unwrap_or_default(),
        discovery_error: previous.and_then(|p| p.discovery_error.clone()),
    }
}
