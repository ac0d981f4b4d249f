//! Upkeep between points, pure: the catch-up of a point the target missed, and retention.

use std::time::Duration;

use jiff::Timestamp;

use super::super::schedule::{self, Schedule, TRIGGERED};
use super::decide::{CATCH_UP_RETRY, Decision, Fact, Inputs, JobSpec, until};
use crate::api::reasons::{EventReason, WorkloadReason as R};
use crate::api::workload::ReplicatedWorkloadStatus;
use crate::controllers::PlannedEvent;
use crate::controllers::jobs::{Job, JobKind, JobState};
use crate::controllers::store::{Pruned, Retention};

/// The last point is in the cache only (the target was unreachable when it finished): copy it.
pub(super) fn catch_up(
    d: &mut Decision,
    inputs: &Inputs,
    status: &ReplicatedWorkloadStatus,
    now: Timestamp,
) {
    let Some(latest) = status.latest_point.as_ref().filter(|p| !p.replicated) else {
        return;
    };
    let job = inputs.jobs.catch_up.as_ref().filter(|j| j.tag == latest.id);
    match job.map(|j| (&j.state, j)) {
        None => d.job(&latest.id, JobSpec::CatchUp),
        Some((JobState::Running, _)) => d.soon(TRIGGERED),
        Some((JobState::Done(_), j)) => {
            d.facts.push(Fact::Replicated);
            d.recorded.push((JobKind::CatchUp, j.tag.clone()));
        }
        Some((JobState::Failed(message), j)) => match retry_in(j, CATCH_UP_RETRY, now) {
            None => d.job(&latest.id, JobSpec::CatchUp),
            Some(wait) => {
                d.failure = Some((R::ReplicationFailed, message.clone()));
                d.soon(wait);
            }
        },
    }
    if let Some(message) = job
        .filter(|j| j.is_running())
        .and_then(|j| j.last_failure.clone())
    {
        d.failure = Some((R::ReplicationFailed, message));
    }
}

/// How long until a failed job may run again; `None`: now.
pub fn retry_in(job: &Job, backoff: Duration, now: Timestamp) -> Option<Duration> {
    let at = schedule::after(job.finished.unwrap_or(job.started), backoff);
    (now < at).then(|| until(at, now))
}

/// Prunes both locations when the oldest point has outlived the retention by a tenth of it (so
/// retention runs in batches, not at every point), once per newest point. Returns whether a
/// prune runs (a point waits for it).
pub(super) fn retention(
    d: &mut Decision,
    inputs: &Inputs,
    status: &ReplicatedWorkloadStatus,
    schedule: &Schedule,
    now: Timestamp,
) -> bool {
    let Some(oldest) = status.oldest_point else {
        return false;
    };
    let slack = (schedule.retention / 10).max(schedule.crash);
    let age = Duration::try_from(now.duration_since(oldest)).unwrap_or_default();
    if age <= schedule.retention.saturating_add(slack) {
        return false;
    }
    let tag = status
        .latest_point
        .as_ref()
        .map_or_else(|| oldest.to_string(), |p| p.id.clone());
    let Some(job) = inputs.jobs.prune.as_ref().filter(|j| j.tag == tag) else {
        let retention = Retention {
            keep_within: schedule.retention,
            keep_last: 1,
        };
        d.job(&tag, JobSpec::Prune(retention));
        return true;
    };
    match &job.state {
        JobState::Running => {
            d.soon(TRIGGERED);
            return true;
        }
        _ if job.recorded => {}
        JobState::Done(_) => pruned(d, inputs, job),
        JobState::Failed(message) => d.events.push(PlannedEvent::warning(
            EventReason::ReconcileFailed,
            "Prune",
            format!("retention could not run: {message}"),
        )),
    }
    d.recorded.push((JobKind::Prune, tag));
    false
}

fn pruned(d: &mut Decision, inputs: &Inputs, job: &Job) {
    let Some(outcome) = job.outcome::<Pruned>() else {
        return;
    };
    if outcome.removed > 0 {
        let policy = inputs
            .vault
            .replication_policy
            .with_override(inputs.spec.replication_policy.as_ref());
        d.events.push(PlannedEvent::normal(
            EventReason::RecoveryPointsPruned,
            "Prune",
            format!(
                "{} point(s) older than {} removed from cache and target",
                outcome.removed, policy.recovery_point_retention
            ),
        ));
    }
    d.facts.push(Fact::Pruned(outcome));
}
