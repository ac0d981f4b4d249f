//! The replication decision of one pass, pure: from the workload's spec and policy, its status,
//! the agents' reports and the state of its jobs to the actions to take, the facts to record,
//! why replication is not working, the events and when to look again.

use std::time::Duration;

use jiff::Timestamp;

use super::super::schedule::{self, POLL, Schedule, Step, TRIGGERED};
use super::upkeep;
pub use super::upkeep::retry_in;
use crate::api::reasons::{EventReason, WorkloadReason as R};
use crate::api::registration::AgentRegistration;
use crate::api::vault::{RecoveryVaultSpec, SnapshotMethod};
use crate::api::workload::{
    Hooks, PointAttempt, PointInProgress, ReplicatedWorkloadSpec, ReplicatedWorkloadStatus,
    VolumeStatus,
};
use crate::controllers::PlannedEvent;
use crate::controllers::jobs::{Job, JobKind};
use crate::controllers::store::{Consistency, Finished, Pruned, Retention};

/// How soon a finish that failed is tried again.
pub const FINISH_RETRY: Duration = Duration::from_secs(5);
/// How soon a catch-up that failed is tried again.
pub const CATCH_UP_RETRY: Duration = Duration::from_secs(30);

/// The workload's jobs, as the registry holds them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadJobs {
    pub finish: Option<Job>,
    pub catch_up: Option<Job>,
    pub prune: Option<Job>,
}

/// What the pass sees.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a ReplicatedWorkloadSpec,
    pub vault: &'a RecoveryVaultSpec,
    /// The workload's point-request annotation.
    pub requested: Option<&'a str>,
    /// The workload's Ready condition.
    pub ready: bool,
    pub volumes: &'a [VolumeStatus],
    pub registrations: &'a [AgentRegistration],
    /// The pods the hooks run in.
    pub pods: &'a [String],
    /// The workload's temporary objects were swept since the operator started.
    pub swept: bool,
    pub jobs: &'a WorkloadJobs,
}

/// How the exposure of a CSI point's snapshots stands (observed for a point in flight).
#[derive(Clone, Debug, PartialEq)]
pub enum Exposed {
    Pending,
    /// A snapshot failed: the point cannot complete.
    Failed(String),
    /// The snapshots could not be looked at.
    Error(String),
}

/// Long work, started as a job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobSpec {
    Finish {
        point: String,
        parts: Vec<String>,
        /// The point's claims, whose specs the point's definition carries.
        claims: Vec<String>,
    },
    CatchUp,
    Prune(Retention),
    DiscardParts {
        point: String,
    },
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Finish { .. } => JobKind::FinishPoint,
            JobSpec::CatchUp => JobKind::CatchUp,
            JobSpec::Prune(_) => JobKind::Prune,
            JobSpec::DiscardParts { .. } => JobKind::DiscardParts,
        }
    }
}

/// A point to start: the repositories are ensured, the snapshot API checked (CSI), the hooks
/// run around the capture instant, the snapshots taken.
#[derive(Clone, Debug, PartialEq)]
pub struct StartPoint {
    pub consistency: Consistency,
    pub method: SnapshotMethod,
    pub claims: Vec<String>,
    /// Hooks of an app-consistent point.
    pub hooks: Option<Hooks>,
    /// The bound of the filesystem freeze of an app-consistent CSI point.
    pub freeze: Option<std::time::Duration>,
    /// The nodes that mount the claims (whose agents freeze them).
    pub nodes: Vec<String>,
    pub snapshot_class: Option<String>,
    pub requested: Option<String>,
}

/// A metric the pass moves.
#[derive(Clone, Debug, PartialEq)]
pub enum Count {
    Missed(u64),
    Point(Consistency),
    /// Bytes written to a location (`cache`, `target`).
    Bytes(&'static str, u64),
    /// Seconds from a point's capture instant until it was durable in the target.
    Replicated(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Remove the temporary objects of a point that finished or failed (a CSI point's
    /// snapshots, claims and reader pods, found by their names; a Live point has none).
    SweepPoint(PointInProgress),
    /// The first sweep after a start, of an idle workload: remove what a predecessor left.
    SweepLeftovers,
    Start(StartPoint),
    Job {
        tag: String,
        spec: JobSpec,
    },
    Count(Count),
}

/// A fact for the status (see `record`).
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    Progress {
        bytes_done: u64,
        bytes_total: u64,
    },
    Finished {
        point: PointInProgress,
        outcome: Finished,
    },
    Failed(PointAttempt),
    Replicated,
    Pruned(Pruned),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub schedule: Option<Schedule>,
    pub actions: Vec<Action>,
    pub facts: Vec<Fact>,
    /// Why replication is not working, for the Replicating condition.
    pub failure: Option<(R, String)>,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
    /// Job outcomes this pass applies: marked recorded once the status is written.
    pub recorded: Vec<(JobKind, String)>,
}

impl Decision {
    fn new(schedule: Option<Schedule>) -> Self {
        Self {
            schedule,
            actions: vec![],
            facts: vec![],
            failure: None,
            events: vec![],
            requeue: super::super::plan::RECHECK,
            recorded: vec![],
        }
    }

    pub(super) fn soon(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d);
    }

    /// Starts a job: its end triggers the workload (see `job_triggers`).
    pub(super) fn job(&mut self, tag: &str, spec: JobSpec) {
        self.actions.push(Action::Job {
            tag: tag.into(),
            spec,
        });
        self.soon(TRIGGERED);
    }
}

/// `next - now`, at least half a second.
pub fn until(next: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(next.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(500))
}

/// The schedule and the pipeline's step, or the decision when there is none to take.
pub fn step(
    inputs: &Inputs,
    status: &ReplicatedWorkloadStatus,
    now: Timestamp,
) -> Result<(Schedule, Step), Box<Decision>> {
    // A name that cannot label the point's objects stops here (Ready says why).
    if crate::api::names::label_value_problem("", inputs.name, "").is_some() {
        return Err(Box::new(Decision::new(None)));
    }
    let policy = inputs
        .vault
        .replication_policy
        .with_override(inputs.spec.replication_policy.as_ref());
    // Pre hooks or a filesystem freeze quiesce an application for a snapshot instant; a live
    // read is never an instant (the Replicating condition says so when a freeze is asked for).
    let app_possible = inputs.vault.snapshot_method == SnapshotMethod::Csi
        && (hooks(inputs.spec).is_some_and(|h| !h.pre.is_empty())
            || freeze(inputs.spec, inputs.vault.snapshot_method).is_some());
    let schedule = Schedule::from_policy(&policy, app_possible).map_err(|message| {
        let mut d = Decision::new(None);
        d.failure = Some((R::CaptureFailed, message));
        Box::new(d)
    })?;
    let step = schedule::decide(
        (inputs.namespace, inputs.name),
        &schedule,
        status,
        inputs.requested,
        inputs.ready,
        inputs.volumes,
        inputs.registrations,
        now,
    );
    Ok((schedule, step))
}

/// The freeze's bound, when the spec asks for one and the capture method can honour it. An
/// unparsable bound (admission refuses one) falls back to the default of 10s.
fn freeze(spec: &ReplicatedWorkloadSpec, method: SnapshotMethod) -> Option<std::time::Duration> {
    let a = spec.app_consistency.as_ref()?;
    (a.freeze_filesystems && method == SnapshotMethod::Csi).then(|| {
        crate::api::policy::parse_duration(&a.freeze_timeout)
            .unwrap_or(std::time::Duration::from_secs(10))
            .clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
            )
    })
}

fn hooks(spec: &ReplicatedWorkloadSpec) -> Option<&Hooks> {
    spec.app_consistency.as_ref().and_then(|a| a.hooks.as_ref())
}

/// The CSI point whose snapshots are exposed to the agents step by step as they get ready, if
/// this step waits on one. The point's own method counts: the vault's may have changed since.
pub fn exposing<'a>(
    status: &'a ReplicatedWorkloadStatus,
    step: &Step,
) -> Option<&'a PointInProgress> {
    status
        .point_in_progress
        .as_ref()
        .filter(|p| p.method == SnapshotMethod::Csi && matches!(step, Step::Wait { .. }))
}

/// The decision of the pass, given the step and, for a CSI point in flight, its exposure.
pub fn decide(
    inputs: &Inputs,
    status: &ReplicatedWorkloadStatus,
    schedule: Schedule,
    step: Step,
    exposed: Option<Exposed>,
    now: Timestamp,
) -> Decision {
    let mut d = Decision::new(Some(schedule.clone()));
    let point = status.point_in_progress.as_ref();
    let step = match (exposed, point) {
        (Some(Exposed::Failed(message)), Some(p)) => Step::Fail {
            reason: R::CaptureFailed,
            message: format!("point {}: {message}", p.id),
        },
        (Some(Exposed::Error(e)), Some(p)) => {
            d.failure = Some((
                R::CaptureFailed,
                format!("exposing the snapshots of point {}: {e}", p.id),
            ));
            d.soon(POLL);
            return d;
        }
        _ => step,
    };
    match step {
        Step::Idle { next } => {
            d.soon(until(next, now));
            if !inputs.swept {
                d.actions.push(Action::SweepLeftovers);
            }
            upkeep::catch_up(&mut d, inputs, status, now);
            upkeep::retention(&mut d, inputs, status, &schedule, now);
        }
        Step::Start {
            consistency,
            missed,
        } => start(&mut d, inputs, status, &schedule, consistency, missed, now),
        Step::Wait {
            bytes_done,
            bytes_total,
        } => {
            d.facts.push(Fact::Progress {
                bytes_done,
                bytes_total,
            });
            // Live reads report as they go; a CSI point also waits for its snapshots, which
            // nothing announces.
            d.soon(match inputs.vault.snapshot_method {
                SnapshotMethod::Live => TRIGGERED,
                SnapshotMethod::Csi => POLL,
            });
        }
        Step::Finish {
            parts,
            stored_bytes,
        } => {
            if let Some(point) = point {
                super::finish::finish(&mut d, inputs, point, parts, stored_bytes, &schedule, now);
            }
        }
        Step::Fail { reason, message } => {
            if let Some(point) = point {
                fail(&mut d, point, reason, message);
            }
        }
    }
    d
}

#[allow(clippy::too_many_arguments)]
fn start(
    d: &mut Decision,
    inputs: &Inputs,
    status: &ReplicatedWorkloadStatus,
    schedule: &Schedule,
    consistency: &'static str,
    missed: u64,
    now: Timestamp,
) {
    // Retention and a catch-up finish before a point starts: they ran inside the pass before.
    let busy = [&inputs.jobs.catch_up, &inputs.jobs.prune]
        .into_iter()
        .flatten()
        .any(Job::is_running);
    if busy || upkeep::retention(d, inputs, status, schedule, now) {
        d.soon(POLL);
        return;
    }
    if missed > 0 {
        d.actions.push(Action::Count(Count::Missed(missed)));
    }
    let consistency = consistency
        .parse::<Consistency>()
        .unwrap_or(Consistency::CrashConsistent);
    let vault = inputs.vault;
    d.actions.push(Action::Start(StartPoint {
        consistency,
        method: vault.snapshot_method,
        claims: inputs
            .volumes
            .iter()
            .map(|v| v.claim_name.clone())
            .collect(),
        hooks: hooks(inputs.spec)
            .filter(|_| consistency == Consistency::AppConsistent)
            .cloned(),
        freeze: freeze(inputs.spec, vault.snapshot_method)
            .filter(|_| consistency == Consistency::AppConsistent),
        nodes: inputs
            .volumes
            .iter()
            .filter_map(|v| v.node.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        snapshot_class: vault.volume_snapshot_class_name.clone(),
        requested: inputs.requested.map(String::from),
    }));
}

/// The point cannot complete: recorded as a failed attempt, its parts discarded.
fn fail(d: &mut Decision, point: &PointInProgress, reason: R, message: String) {
    d.actions.push(Action::SweepPoint(point.clone()));
    d.actions.push(Action::Job {
        tag: point.id.clone(),
        spec: JobSpec::DiscardParts {
            point: point.id.clone(),
        },
    });
    d.actions.push(Action::Count(Count::Missed(1)));
    d.facts.push(Fact::Failed(PointAttempt {
        id: point.id.clone(),
        started: point.started,
        consistency: point.consistency.clone(),
        succeeded: false,
        message: message.clone(),
    }));
    d.events.push(PlannedEvent::warning(
        EventReason::RecoveryPointFailed,
        "Capture",
        message.clone(),
    ));
    d.failure = Some((reason, message));
    d.requeue = Duration::from_secs(1);
}
