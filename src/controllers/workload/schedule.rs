//! The replication decision: when a point is due, whether the point in flight is finished or
//! failed, and what the replication conditions say. Pure: status + reports + now.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::policy::{ReplicationPolicy, parse_duration};
use crate::api::reasons::WorkloadReason as R;
use crate::api::registration::AgentRegistration;
use crate::api::work::WorkState;
use crate::api::workload::{PointInProgress, ReplicatedWorkloadStatus, VolumeStatus};

/// How long a point may wait for its first report before it is given up.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a point in flight is looked at when no report arrives.
pub const POLL: Duration = Duration::from_secs(2);
/// How often a point is looked at while what it waits for says so itself when it changes (an
/// agent's report changes its registration, a job's end is announced): a safety net only. A
/// point that polled every [`POLL`] cost three API requests each time, and with thousands of
/// points queued at the agents the operator did little else.
pub const TRIGGERED: Duration = Duration::from_secs(15);
/// How long the agents' reports of a point may stay where they are (no byte more read, no
/// claim more done) before the point is given up: a read that hangs (a stalled network
/// filesystem, a FIFO) must not hold the workload's points forever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a point may wait in a live agent's queue (named on its registration, see
/// `crate::api::work::QUEUED_ANNOTATION`) before it is given up: a queue shows no progress to
/// judge by, and a point must not wait on one forever.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1800);

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

/// What the agents reported of a point in flight.
#[derive(Default)]
struct Tally {
    covered: BTreeSet<String>,
    parts: Vec<String>,
    done: u64,
    total: u64,
    stored: u64,
    reported: bool,
    /// The node of a live agent that says the point waits there for a capture slot.
    queued_on: Option<String>,
}

/// Sums the agents' reports of `point`; a failed report ends the point.
fn tally(
    (namespace, workload): (&str, &str),
    point: &PointInProgress,
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Result<Tally, Step> {
    let mut t = Tally::default();
    let key = crate::api::work::queued_key(&point.id);
    for r in registrations {
        if t.queued_on.is_none() && r.is_alive(now) && key.is_some_and(|k| r.queued.contains(k)) {
            t.queued_on = Some(r.node.clone());
        }
        for w in &r.work {
            if w.kind != crate::api::work::WorkKind::Capture
                || w.namespace != namespace
                || w.workload != workload
                || w.point != point.id
            {
                continue;
            }
            t.reported = true;
            // Reports are input: sums saturate rather than overflow.
            t.done = u64::saturating_add(t.done, w.bytes_done);
            t.total = u64::saturating_add(t.total, w.bytes_total);
            match w.state {
                WorkState::Failed => {
                    return Err(Step::Fail {
                        reason: R::CaptureFailed,
                        message: format!(
                            "point {}: the agent on node {} failed: {}",
                            point.id, r.node, w.message
                        ),
                    });
                }
                WorkState::Done => {
                    t.covered.extend(w.claims.iter().cloned());
                    t.stored = u64::saturating_add(t.stored, w.stored_bytes);
                    if !w.claims.is_empty() {
                        t.parts.push(r.node.clone());
                    }
                }
                WorkState::Running => {}
            }
        }
    }
    Ok(t)
}

/// The node of claim `claim`, as the workload's volumes show it.
fn node_of<'a>(volumes: &'a [VolumeStatus], claim: &str) -> Option<&'a str> {
    volumes
        .iter()
        .find(|v| v.claim_name == claim)
        .and_then(|v| v.node.as_deref())
}

fn in_flight(
    owner: (&str, &str),
    point: &PointInProgress,
    volumes: &[VolumeStatus],
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Step {
    let mut t = match tally(owner, point, registrations, now) {
        Ok(t) => t,
        Err(step) => return step,
    };
    if point.claims.iter().all(|c| t.covered.contains(c)) && !t.parts.is_empty() {
        t.parts.sort();
        t.parts.dedup();
        return Step::Finish {
            parts: t.parts,
            stored_bytes: t.stored,
        };
    }
    lost_agent(point, &t, volumes, registrations, now)
        .or_else(|| never_started(point, &t, now))
        .or_else(|| stalled(point, &t, volumes, now))
        .unwrap_or(Step::Wait {
            bytes_done: t.done,
            bytes_total: t.total,
        })
}

/// A claim whose node's agent stopped renewing will never be read.
fn lost_agent(
    point: &PointInProgress,
    t: &Tally,
    volumes: &[VolumeStatus],
    registrations: &[AgentRegistration],
    now: Timestamp,
) -> Option<Step> {
    for claim in point.claims.iter().filter(|c| !t.covered.contains(*c)) {
        if let Some(node) = node_of(volumes, claim)
            && let Some(r) = registrations.iter().find(|r| r.node == node)
            && !r.is_alive(now)
        {
            return Some(Step::Fail {
                reason: R::AgentLost,
                message: format!(
                    "point {}: the agent on node {node}, which holds claim {claim}, stopped renewing its registration",
                    point.id
                ),
            });
        }
    }
    None
}

/// No agent reported at all in time, nor said that the point waits for a capture slot on its
/// node. A point queued at a live agent waits its turn, up to [`QUEUE_TIMEOUT`]: given up and
/// started again, it would only join the queue's end. CSI points wait for their snapshots first
/// (bounded by the snapshot timeout).
fn never_started(point: &PointInProgress, t: &Tally, now: Timestamp) -> Option<Step> {
    if let Some(node) = &t.queued_on {
        return (now > after(point.started, QUEUE_TIMEOUT)).then(|| Step::Fail {
            reason: R::CaptureFailed,
            message: format!(
                "point {}: waited {}s in the queue of the agent on node {node} without being started; the node reads 4 points at once: check the agent's logs there, and whether its points take longer than their interval",
                point.id,
                QUEUE_TIMEOUT.as_secs()
            ),
        });
    }
    let patience = match point.method {
        crate::api::vault::SnapshotMethod::Live => START_TIMEOUT,
        crate::api::vault::SnapshotMethod::Csi => START_TIMEOUT * 3,
    };
    (!t.reported && now > after(point.started, patience)).then(|| Step::Fail {
        reason: R::CaptureFailed,
        message: format!(
            "point {}: no agent started reading claims {} within {}s; check that the pods mounting them are running and that an agent runs on their nodes",
            point.id,
            point.claims.join(", "),
            patience.as_secs()
        ),
    })
}

/// Reports that stop moving: the point fails, naming who holds it up.
fn stalled(
    point: &PointInProgress,
    t: &Tally,
    volumes: &[VolumeStatus],
    now: Timestamp,
) -> Option<Step> {
    // A part still waiting in a queue is bounded by the queue's timeout, not by the parts
    // done elsewhere that stopped moving.
    if t.queued_on.is_some() {
        return None;
    }
    let (seen, since) = point
        .last_progress
        .as_ref()
        .map_or((0, point.started), |p| (p.bytes_done, p.time));
    if !(t.reported && t.done == seen && now > after(since, STALL_TIMEOUT)) {
        return None;
    }
    let waiting: Vec<String> = point
        .claims
        .iter()
        .filter(|c| !t.covered.contains(*c))
        .map(|claim| {
            let node = node_of(volumes, claim).unwrap_or("an unknown node");
            format!("claim {claim} on node {node}")
        })
        .collect();
    Some(Step::Fail {
        reason: R::CaptureStalled,
        message: format!(
            "point {}: no progress for {}s (stuck at {} bytes since {since}) reading {}; the point is given up and the next one is taken on schedule: check the agent's logs on that node and the volume (a hung read, a FIFO, a stalled network filesystem)",
            point.id,
            STALL_TIMEOUT.as_secs(),
            t.done,
            waiting.join(", ")
        ),
    })
}

mod conditions;
pub use conditions::{replication_conditions, rpo_seconds};

#[cfg(test)]
mod tests;
