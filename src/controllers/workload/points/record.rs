//! Writes the facts of a pass into the status, pure. Applying a fact twice (a status write that
//! failed, a stale cache) leaves the status as applying it once.

use jiff::Timestamp;

use super::decide::Fact;
use crate::api::workload::{
    PointAttempt, PointInProgress, PointRef, Progress, ProgressMark, ReplicatedWorkloadStatus,
};
use crate::controllers::store::{Consistency, Finished};

pub fn record(status: &mut ReplicatedWorkloadStatus, facts: Vec<Fact>, now: Timestamp) {
    for fact in facts {
        match fact {
            Fact::Progress {
                bytes_done,
                bytes_total,
            } => progress(status, bytes_done, bytes_total, now),
            Fact::Finished { point, outcome } => finished(status, &point, outcome),
            Fact::Failed(attempt) => {
                if status.point_in_progress.as_ref().map(|p| &p.id) == Some(&attempt.id) {
                    status.point_in_progress = None;
                    status.progress = None;
                    status.last_attempt = Some(attempt);
                }
            }
            Fact::Replicated => replicated(status),
            Fact::Pruned(pruned) => {
                status.point_count = Some(pruned.remaining);
                status.oldest_point = pruned.oldest;
            }
        }
    }
}

/// A point started: in flight from now on.
pub fn started(
    status: &mut ReplicatedWorkloadStatus,
    point: PointInProgress,
    requested: Option<String>,
) {
    status.point_in_progress = Some(point);
    status.handled_point_request = requested;
    status.progress = None;
}

fn progress(
    status: &mut ReplicatedWorkloadStatus,
    bytes_done: u64,
    bytes_total: u64,
    now: Timestamp,
) {
    if bytes_total > 0 {
        status.progress = Some(Progress {
            total_bytes: bytes_total,
            bytes_done,
        });
    }
    // The mark the stall timeout counts from moves only when the reports do.
    if let Some(point) = status.point_in_progress.as_mut()
        && point.last_progress.as_ref().map_or(0, |p| p.bytes_done) != bytes_done
    {
        point.last_progress = Some(ProgressMark {
            bytes_done,
            time: now,
        });
    }
}

fn finished(status: &mut ReplicatedWorkloadStatus, point: &PointInProgress, outcome: Finished) {
    // Recorded already (a second look at the same outcome).
    if status.point_in_progress.as_ref().map(|p| &p.id) != Some(&point.id) {
        return;
    }
    let consistency = outcome.consistency.as_str().to_string();
    let reference = PointRef {
        id: outcome.id.clone(),
        time: point.started,
        replicated: outcome.replicated.is_ok(),
        consistency: consistency.clone(),
    };
    status.latest_point = Some(reference.clone());
    match outcome.consistency {
        Consistency::AppConsistent => {
            status.latest_app_consistent_point = Some(reference.clone());
            status.latest_crash_consistent_point = Some(reference.clone());
        }
        Consistency::CrashConsistent => {
            status.latest_crash_consistent_point = Some(reference.clone())
        }
        Consistency::FileLevel => {}
    }
    status.point_count = Some(status.point_count.unwrap_or(0).saturating_add(1));
    status.oldest_point = status.oldest_point.or(Some(point.started));
    status.point_in_progress = None;
    status.progress = None;
    status.last_attempt = Some(PointAttempt {
        id: point.id.clone(),
        started: point.started,
        consistency,
        succeeded: true,
        // Hook failures the point survived, for the Replicating condition.
        message: point
            .degraded
            .iter()
            .chain(&point.warnings)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    });
    if outcome.replicated.is_ok() {
        status.latest_replicated_point = Some(reference);
    }
}

fn replicated(status: &mut ReplicatedWorkloadStatus) {
    for p in [
        &mut status.latest_point,
        &mut status.latest_crash_consistent_point,
        &mut status.latest_app_consistent_point,
    ]
    .into_iter()
    .flatten()
    {
        p.replicated = true;
    }
    status.latest_replicated_point = status.latest_point.clone();
}
