//! The workload's replication conditions (Replicating, Protected, RPOMet), from its status.

use std::time::Duration;

use jiff::Timestamp;

use super::{Schedule, after};
use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::reasons::{ConditionType as T, WorkloadReason as R};
use crate::api::workload::ReplicatedWorkloadStatus;

/// Seconds since the newest point durable in the target.
pub fn rpo_seconds(status: &ReplicatedWorkloadStatus, now: Timestamp) -> Option<i64> {
    status
        .latest_replicated_point
        .as_ref()
        .map(|p| now.duration_since(p.time).as_secs().max(0))
}

/// Replicating, Protected and RPOMet, and when RPOMet would flip if nothing happened.
///
/// RPOMet rule: the newest replicated point is at most twice the crash-consistent frequency old
/// (one missed interval is tolerated, two are not), as Ramen warns.
pub fn replication_conditions(
    status: &ReplicatedWorkloadStatus,
    schedule: Option<&Schedule>,
    failure: Option<(R, String)>,
    freeze_requested: bool,
    now: Timestamp,
) -> (Vec<Condition>, Option<Timestamp>) {
    let replicating = with_freeze(replicating(status, failure), freeze_requested);
    let (rpo_met, flips) = rpo_met(status, schedule, now);
    (vec![replicating, protected(status), rpo_met], flips)
}

fn replicating(status: &ReplicatedWorkloadStatus, failure: Option<(R, String)>) -> Condition {
    if let Some((reason, message)) = failure {
        Condition::new(T::Replicating, ConditionStatus::False, reason, message)
    } else if let Some(p) = &status.point_in_progress {
        Condition::new(
            T::Replicating,
            ConditionStatus::True,
            R::PointInProgress,
            format!("taking point {} ({})", p.id, p.consistency),
        )
    } else if let Some(a) = status.last_attempt.as_ref().filter(|a| !a.succeeded) {
        Condition::new(
            T::Replicating,
            ConditionStatus::False,
            R::CaptureFailed,
            a.message.clone(),
        )
    } else if let Some(a) = status
        .last_attempt
        .as_ref()
        .filter(|a| a.succeeded && !a.message.is_empty())
        .filter(|a| {
            status
                .latest_point
                .as_ref()
                .is_some_and(|p| p.id == a.id && p.replicated)
        })
    {
        Condition::new(
            T::Replicating,
            ConditionStatus::True,
            R::HookFailed,
            format!(
                "point {} ({}) replicated, but {}",
                a.id, a.consistency, a.message
            ),
        )
    } else if let Some(p) = &status.latest_point {
        if p.replicated {
            Condition::new(
                T::Replicating,
                ConditionStatus::True,
                R::PointReplicated,
                format!(
                    "point {} ({}) replicated to the target",
                    p.id, p.consistency
                ),
            )
        } else {
            Condition::new(
                T::Replicating,
                ConditionStatus::False,
                R::ReplicationFailed,
                format!("point {} is in the cache but not yet in the target", p.id),
            )
        }
    } else {
        Condition::new(
            T::Replicating,
            ConditionStatus::False,
            R::ReplicationNotStarted,
            "no recovery point has been taken yet",
        )
    }
}

/// A freeze asked for and not carried out (Live captures) is said beside a working replication.
fn with_freeze(replicating: Condition, freeze_requested: bool) -> Condition {
    if freeze_requested && replicating.is_true() {
        Condition::new(
            T::Replicating,
            ConditionStatus::True,
            R::FreezeNeedsSnapshots,
            format!(
                "{}; spec.appConsistency.freezeFilesystems is not carried out with the vault's Live capture: a freeze around a read that takes seconds would stall the application, so the points stay FileLevel. A vault with snapshotMethod CSI freezes for the snapshot instant only",
                replicating.message
            ),
        )
    } else {
        replicating
    }
}

fn protected(status: &ReplicatedWorkloadStatus) -> Condition {
    match &status.latest_replicated_point {
        Some(p) => Condition::new(
            T::Protected,
            ConditionStatus::True,
            R::RecoveryPointReplicated,
            format!(
                "point {} of {} is durable in the target location",
                p.id, p.time
            ),
        ),
        None => Condition::new(
            T::Protected,
            ConditionStatus::False,
            R::NoRecoveryPoint,
            "no recovery point is durable in the target location yet",
        ),
    }
}

/// RPOMet, and when it would flip if nothing happened.
fn rpo_met(
    status: &ReplicatedWorkloadStatus,
    schedule: Option<&Schedule>,
    now: Timestamp,
) -> (Condition, Option<Timestamp>) {
    match (schedule, &status.latest_replicated_point) {
        (Some(s), Some(p)) => {
            let limit = s.crash.saturating_mul(2);
            let rpo = now.duration_since(p.time);
            if rpo.as_secs_f64() <= limit.as_secs_f64() {
                let flips = Some(after(after(p.time, limit), Duration::from_secs(1)));
                (
                    Condition::new(
                        T::RPOMet,
                        ConditionStatus::True,
                        R::RPOWithinTarget,
                        format!(
                            "the newest replicated point, of {}, is within {}s (twice the crash-consistent frequency)",
                            p.time,
                            limit.as_secs()
                        ),
                    ),
                    flips,
                )
            } else {
                (
                    Condition::new(
                        T::RPOMet,
                        ConditionStatus::False,
                        R::RPOExceeded,
                        format!(
                            "the newest replicated point, of {}, is older than {}s (twice the crash-consistent frequency); see Replicating",
                            p.time,
                            limit.as_secs()
                        ),
                    ),
                    None,
                )
            }
        }
        _ => (
            Condition::new(
                T::RPOMet,
                ConditionStatus::Unknown,
                R::RPONotMeasured,
                "the RPO is measured from the first replicated recovery point",
            ),
            None,
        ),
    }
}
