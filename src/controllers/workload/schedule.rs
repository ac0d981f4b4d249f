//! The replication decision: when a point is due, whether the point in flight is finished or
//! failed, and what the replication conditions say. Pure: status + reports + now.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::policy::{ReplicationPolicy, parse_duration};
use crate::api::reasons::{ConditionType as T, WorkloadReason as R};
use crate::api::registration::AgentRegistration;
use crate::api::work::WorkState;
use crate::api::workload::{PointInProgress, ReplicatedWorkloadStatus, VolumeStatus};

/// How long a point may wait for its first report before it is given up.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a point in flight is looked at when no report arrives.
pub const POLL: Duration = Duration::from_secs(2);
/// How long the agents' reports of a point may stay where they are (no byte more read, no
/// claim more done) before the point is given up: a read that hangs (a stalled network
/// filesystem, a FIFO) must not hold the workload's points forever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The effective schedule of a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub crash: Duration,
    /// `None`: app-consistent points are off (or impossible with this capture method).
    pub app: Option<Duration>,
    pub retention: Duration,
}

impl Schedule {
    /// The policy's durations; `app_possible` is false for Live captures (nothing can make a
    /// live read of a volume app-consistent) and when no hook or freeze is configured.
    /// The minimums are the admission rules' too: on an install without CEL they are all that
    /// stops a `0s` frequency from starting a point at every reconcile.
    pub fn from_policy(policy: &ReplicationPolicy, app_possible: bool) -> Result<Self, String> {
        let field = |name: &str, value: &str, min: Duration| {
            let d = parse_duration(value).map_err(|e| format!("replicationPolicy.{name}: {e}"))?;
            if d < min {
                return Err(format!(
                    "replicationPolicy.{name}: {value:?} is shorter than the minimum of {}s",
                    min.as_secs()
                ));
            }
            Ok(d)
        };
        Ok(Self {
            crash: field(
                "crashConsistentFrequency",
                &policy.crash_consistent_frequency,
                Duration::from_secs(30),
            )?,
            app: if app_possible && policy.app_consistent_frequency != "off" {
                Some(field(
                    "appConsistentFrequency",
                    &policy.app_consistent_frequency,
                    Duration::from_secs(60),
                )?)
            } else {
                None
            },
            retention: field(
                "recoveryPointRetention",
                &policy.recovery_point_retention,
                Duration::from_secs(60),
            )?,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing in flight; look again at `next`.
    Idle { next: Timestamp },
    /// Start a point now; `missed` scheduled points were skipped since the last start.
    Start {
        consistency: &'static str,
        missed: u64,
    },
    /// Agents are at work. When `bytes_done` differs from the point's `lastProgress`, the
    /// caller records it (with the time) as the point's new progress mark.
    Wait { bytes_done: u64, bytes_total: u64 },
    /// Every claim is in the cache: assemble these parts (node names).
    Finish {
        parts: Vec<String>,
        stored_bytes: u64,
    },
    /// The point cannot complete.
    Fail { reason: R, message: String },
}

/// `t + d`, or the end of time when that is past it (durations come from specs).
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// What to do next about points. `ready` is the workload's Ready condition; `volumes` says on
/// which node each protected claim is mounted (used to tell a lost agent from a slow one).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    key: (&str, &str),
    schedule: &Schedule,
    status: &ReplicatedWorkloadStatus,
    requested: Option<&str>,
    ready: bool,
    volumes: &[VolumeStatus],
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Step {
    if let Some(point) = &status.point_in_progress {
        return in_flight(key, point, volumes, registrations, now);
    }
    let last_start = status.last_attempt.as_ref().map(|a| a.started);
    let crash_due = last_start.map_or(now, |t| after(t, schedule.crash));
    let app_due = schedule.app.map(|every| {
        status
            .latest_app_consistent_point
            .as_ref()
            .map_or(now, |p| after(p.time, every))
            // Never more often than crash-consistent points: an app-consistent attempt whose
            // hooks failed is retried at the next interval, not at once.
            .max(crash_due)
    });
    let next = app_due.map_or(crash_due, |a| a.min(crash_due));
    let on_request = requested.is_some() && requested != status.handled_point_request.as_deref();
    if !ready || (now < next && !on_request) {
        return Step::Idle { next };
    }
    let missed = match last_start {
        Some(_) if now > crash_due && !on_request => {
            let late = now.duration_since(crash_due).as_secs_f64();
            (late / schedule.crash.as_secs_f64()).floor() as u64
        }
        _ => 0,
    };
    // A requested point (before maintenance, a planned failover) gets the best consistency the
    // workload can have.
    let consistency = if app_due.is_some_and(|a| now >= a || on_request) {
        "AppConsistent"
    } else {
        "CrashConsistent"
    };
    Step::Start {
        consistency,
        missed,
    }
}

fn in_flight(
    (namespace, workload): (&str, &str),
    point: &PointInProgress,
    volumes: &[VolumeStatus],
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Step {
    let mut covered = BTreeSet::new();
    let mut parts = Vec::new();
    let (mut done, mut total, mut stored) = (0, 0, 0);
    let mut reported = false;
    for r in registrations {
        for w in &r.work {
            if w.kind != crate::api::work::WorkKind::Capture
                || w.namespace != namespace
                || w.workload != workload
                || w.point != point.id
            {
                continue;
            }
            reported = true;
            // Reports are input: sums saturate rather than overflow.
            done = u64::saturating_add(done, w.bytes_done);
            total = u64::saturating_add(total, w.bytes_total);
            match w.state {
                WorkState::Failed => {
                    return Step::Fail {
                        reason: R::CaptureFailed,
                        message: format!(
                            "point {}: the agent on node {} failed: {}",
                            point.id, r.node, w.message
                        ),
                    };
                }
                WorkState::Done => {
                    covered.extend(w.claims.iter().cloned());
                    stored = u64::saturating_add(stored, w.stored_bytes);
                    if !w.claims.is_empty() {
                        parts.push(r.node.clone());
                    }
                }
                WorkState::Running => {}
            }
        }
    }
    if point.claims.iter().all(|c| covered.contains(c)) && !parts.is_empty() {
        parts.sort();
        parts.dedup();
        return Step::Finish {
            parts,
            stored_bytes: stored,
        };
    }
    // A claim whose node's agent stopped renewing will never be read.
    for claim in point.claims.iter().filter(|c| !covered.contains(*c)) {
        let node = volumes
            .iter()
            .find(|v| &v.claim_name == claim)
            .and_then(|v| v.node.as_deref());
        if let Some(node) = node
            && let Some(r) = registrations.iter().find(|r| r.node == node)
            && !r.is_alive(now)
        {
            return Step::Fail {
                reason: R::AgentLost,
                message: format!(
                    "point {}: the agent on node {node}, which holds claim {claim}, stopped renewing its registration",
                    point.id
                ),
            };
        }
    }
    // CSI points wait for their snapshots first (bounded by the snapshot timeout).
    let patience = match point.method {
        crate::api::vault::SnapshotMethod::Live => START_TIMEOUT,
        crate::api::vault::SnapshotMethod::Csi => START_TIMEOUT * 3,
    };
    if !reported && now > after(point.started, patience) {
        return Step::Fail {
            reason: R::CaptureFailed,
            message: format!(
                "point {}: no agent started reading claims {} within {}s; check that the pods mounting them are running and that an agent runs on their nodes",
                point.id,
                point.claims.join(", "),
                patience.as_secs()
            ),
        };
    }
    // Reports that stop moving: the point fails, naming who holds it up.
    let (seen, since) = point
        .last_progress
        .as_ref()
        .map_or((0, point.started), |p| (p.bytes_done, p.time));
    if reported && done == seen && now > after(since, STALL_TIMEOUT) {
        let waiting: Vec<String> = point
            .claims
            .iter()
            .filter(|c| !covered.contains(*c))
            .map(|claim| {
                let node = volumes
                    .iter()
                    .find(|v| &v.claim_name == claim)
                    .and_then(|v| v.node.as_deref())
                    .unwrap_or("an unknown node");
                format!("claim {claim} on node {node}")
            })
            .collect();
        return Step::Fail {
            reason: R::CaptureStalled,
            message: format!(
                "point {}: no progress for {}s (stuck at {done} bytes since {since}) reading {}; the point is given up and the next one is taken on schedule: check the agent's logs on that node and the volume (a hung read, a FIFO, a stalled network filesystem)",
                point.id,
                STALL_TIMEOUT.as_secs(),
                waiting.join(", ")
            ),
        };
    }
    Step::Wait {
        bytes_done: done,
        bytes_total: total,
    }
}

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
    let replicating = if let Some((reason, message)) = failure {
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
    };
    let replicating = if freeze_requested && replicating.is_true() {
        Condition::new(
            T::Replicating,
            ConditionStatus::True,
            R::FreezeNotSupported,
            format!(
                "{}; spec.appConsistency.freezeFilesystems is not carried out by this version: points are app-consistent only through pre hooks (CSI), and Live points stay FileLevel",
                replicating.message
            ),
        )
    } else {
        replicating
    };
    let protected = match &status.latest_replicated_point {
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
    };
    let mut flips = None;
    let rpo_met = match (schedule, &status.latest_replicated_point) {
        (Some(s), Some(p)) => {
            let limit = s.crash.saturating_mul(2);
            let rpo = now.duration_since(p.time);
            if rpo.as_secs_f64() <= limit.as_secs_f64() {
                flips = Some(after(after(p.time, limit), Duration::from_secs(1)));
                Condition::new(
                    T::RPOMet,
                    ConditionStatus::True,
                    R::RPOWithinTarget,
                    format!(
                        "the newest replicated point, of {}, is within {}s (twice the crash-consistent frequency)",
                        p.time,
                        limit.as_secs()
                    ),
                )
            } else {
                Condition::new(
                    T::RPOMet,
                    ConditionStatus::False,
                    R::RPOExceeded,
                    format!(
                        "the newest replicated point, of {}, is older than {}s (twice the crash-consistent frequency); see Replicating",
                        p.time,
                        limit.as_secs()
                    ),
                )
            }
        }
        _ => Condition::new(
            T::RPOMet,
            ConditionStatus::Unknown,
            R::RPONotMeasured,
            "the RPO is measured from the first replicated recovery point",
        ),
    };
    (vec![replicating, protected, rpo_met], flips)
}

#[cfg(test)]
mod tests;
