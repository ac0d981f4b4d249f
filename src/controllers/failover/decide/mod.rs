//! The failover decision, pure: (phase, the Failover, what was observed, now) → the actions to
//! take, the facts to record once they succeeded, the FailedOver/Committed/Verified conditions
//! and the events. Nothing here reads or writes the API; a pass that is cut short between its
//! actions and the recording of its facts decides the same again, and every action is
//! idempotent.

mod planned;
mod prepare;
mod running;
pub use prepare::prepared_names;
use prepare::{blocked, prepare};
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeSet;

use jiff::Timestamp;
use kube::ResourceExt;

use super::manifests::Place;
use super::observe::{Found, World};
use super::phase::Phase;
use crate::api::Failover;
use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::failover::{FailoverStatus, Milestone, ResolvedPoint, Restore};
use crate::api::reasons::{ConditionType as T, EventReason, FailoverReason as R};
use crate::api::work::{WorkState, writer_name};
use crate::api::workload::WorkloadKind;
use crate::controllers::PlannedEvent;
use crate::controllers::objects::{Kind, Manifest, ObjectName};

/// One change to the world, idempotent: repeating it after a crash changes nothing more.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Keep the Failover until it is rolled back.
    AddFinalizer,
    RemoveFinalizer,
    /// Create the object unless this Failover's object of that name exists.
    Create(Manifest),
    /// Delete the object if it exists and is this Failover's.
    Delete(ObjectName),
    /// Delete what the failover made in the place: the copy, writer and holder pods, restored
    /// claims, the verification Job.
    TearDown(Place),
    /// Delete the pods, claims and Jobs in the namespace that carry this Failover's uid.
    DeleteLabelled {
        namespace: String,
    },
    /// Set the source workload's replicas, noting (or, with `None`, removing) the count before
    /// the failover in the same patch, so that the count survives a lost status write.
    ScaleSource {
        kind: WorkloadKind,
        name: String,
        replicas: i32,
        note: Option<i32>,
    },
    /// Ask the workload for a point (Planned mode's final point); the annotation is the fact.
    RequestPoint {
        workload: String,
        token: String,
    },
    /// Start deleting the workload's points in cache and target (phase two), in the background.
    StartCommit,
    /// Create the object unless one of that name exists, whoever made it (a found workload's
    /// companions under `existingObjects: Use`).
    CreateOrUse(Manifest),
    /// Delete workload `name` if it is a failover's copy of `of` (`siterecovery.io/copy-of`):
    /// a committed failback removes the copy it came back from.
    DeleteCopy {
        kind: Kind,
        name: String,
        of: String,
    },
    /// Write the fence record of the found workload in the vault's target location (idempotent:
    /// this Failover's fence is kept).
    Fence,
}

/// A fact for the status, recorded only after every action of the pass succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// A timeline step, recorded once.
    Reached(Milestone, String),
    /// A timeline step that may happen more than once.
    Again(Milestone, String),
    ResolvedPoint(Option<ResolvedPoint>),
    Restore(Option<Restore>),
    /// The spec generation the restore's point was last checked against.
    RestoreGeneration(Option<i64>),
    SourceStopped(Timestamp),
    SourceReplicas(i32),
    TargetWorkload(Option<String>),
    Rto(Option<f64>),
    /// A failover from a vault: the workload as its point describes it.
    Found(crate::api::failover::FoundWorkload),
    /// The found workload existed here and was scaled up, not created.
    FoundExisted,
    /// The objects restored beside the found workload (`Kind/name`).
    FoundObjects(Vec<String>),
    /// A failback returns to this original workload.
    FailbackTo(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub facts: Vec<Fact>,
    /// FailedOver, Committed and Verified as this pass sees them (the plan gives Ready).
    pub conditions: Vec<Condition>,
    pub events: Vec<PlannedEvent>,
    /// Look again soon (work in flight), rather than at the idle resync.
    pub busy: bool,
}

impl Decision {
    fn waiting(reason: R, message: impl Into<String>) -> Self {
        Decision {
            conditions: vec![failed_over(ConditionStatus::False, reason, message)],
            busy: true,
            ..Default::default()
        }
    }

    fn idle(reason: R, message: impl Into<String>) -> Self {
        Decision {
            conditions: vec![failed_over(ConditionStatus::False, reason, message)],
            ..Default::default()
        }
    }

    /// Records milestone `m` with `message`, and its event when it is new.
    fn reach(
        &mut self,
        status: &FailoverStatus,
        m: Milestone,
        message: String,
        event: Option<PlannedEvent>,
    ) {
        if status.reached(&m)
            || self
                .facts
                .iter()
                .any(|f| matches!(f, Fact::Reached(x, _) if *x == m))
        {
            return;
        }
        self.facts.push(Fact::Reached(m, message));
        self.events.extend(event);
    }
}

pub fn failed_over(status: ConditionStatus, reason: R, message: impl Into<String>) -> Condition {
    Condition::new(T::FailedOver, status, reason, message)
}

/// The inputs every phase shares.
pub struct Inputs<'a> {
    pub failover: &'a Failover,
    pub status: &'a FailoverStatus,
    /// The point the plan chose (Ready=True), before the restore.
    pub chosen: Option<&'a ResolvedPoint>,
    pub target_zone: Option<&'a str>,
    /// The image of the writer and holder pods.
    pub image: &'a str,
    pub now: Timestamp,
}

/// What a Failover fails over: a ReplicatedWorkload of this cluster, or a workload found in a
/// vault's target location.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    Protected(&'a crate::api::ReplicatedWorkload),
    Found(&'a Found),
}

impl Subject<'_> {
    pub fn place(&self, f: &Failover) -> Place {
        match self {
            Subject::Protected(rw) => {
                Place::of(f, rw.spec.workload_ref.kind, &rw.spec.workload_ref.name)
            }
            Subject::Found(found) => Place::found(f, found.kind, &found.name),
        }
    }
}

pub fn decide(phase: Phase, i: &Inputs<'_>, world: &World) -> Decision {
    // Without its workload a failover cannot go on (the plan's Ready says why).
    let subject = match (&world.workload, &world.found) {
        (Some(rw), _) => Subject::Protected(rw),
        (None, Some(found)) => Subject::Found(found),
        (None, None) => return Decision::default(),
    };
    let place = match &world.failback {
        Some(original) => subject.place(i.failover).failback(original),
        None => subject.place(i.failover),
    };
    if let Subject::Found(found) = subject
        && let Some(Err(message)) = &found.definition
    {
        return Decision::idle(R::RestoreFailed, format!("{message}; nothing was created"));
    }
    let mut d = match (phase, &world.switch_to, subject) {
        (Phase::Deleting, _, _) => return Decision::default(),
        (_, Some(wanted), _) => switch_point(i, &place, wanted),
        (Phase::StoppingSource, _, Subject::Protected(rw)) => planned::stop_source(i, rw, world),
        (Phase::FinalPoint, _, Subject::Protected(rw)) => planned::final_point(i, rw, world),
        (Phase::StoppingSource | Phase::FinalPoint, _, Subject::Found(_)) => {
            return Decision::default();
        }
        (Phase::Preparing, _, _) => prepare(i, &place, subject, world),
        (Phase::Restoring, _, _) => restoring(i, world),
        (Phase::RestoreFailed, _, _) => restore_failed(i, &place),
        (Phase::Starting, _, Subject::Protected(_)) => running::start(i, &place, world),
        (Phase::Starting, _, Subject::Found(found)) => {
            running::start_found(i, &place, found, world)
        }
        (Phase::Running, _, _) => running::run(i, subject, &place, world),
    };
    if !i
        .failover
        .finalizers()
        .iter()
        .any(|x| x == super::FINALIZER)
    {
        d.actions.insert(0, Action::AddFinalizer);
    }
    d
}

/// Between the phases, a changed `spec.recoveryPoint` re-restores: the copy stops, the restored
/// claims go, and the failover starts again from its first step with the new point.
fn switch_point(i: &Inputs<'_>, place: &Place, wanted: &ResolvedPoint) -> Decision {
    let from = i
        .status
        .restore
        .as_ref()
        .map(|r| r.point.clone())
        .unwrap_or_default();
    let mut d = Decision::waiting(R::Restoring, format!("switching to point {}", wanted.id));
    d.actions.push(Action::TearDown(place.clone()));
    d.facts = vec![
        Fact::Again(
            Milestone::PointSwitched,
            format!(
                "from point {from} to {}: the copy is stopped and its claims restored again",
                wanted.id
            ),
        ),
        Fact::Restore(None),
        Fact::TargetWorkload(None),
        Fact::Rto(None),
        Fact::ResolvedPoint(Some(wanted.clone())),
    ];
    d
}

/// Step 2: the agents' reports. A report counts only from the node that runs the writer pod of
/// its claims: any node's agent can write a registration, and a forged Done would start the
/// copy on claims never restored.
fn restoring(i: &Inputs<'_>, world: &World) -> Decision {
    let Some(mut restore) = i.status.restore.clone() else {
        return Decision::default();
    };
    let mut done = BTreeSet::new();
    let mut written = Vec::new();
    for r in &world.reports {
        if let Some(claim) = r
            .claims
            .iter()
            .find(|c| world.writer_nodes.get(*c) != Some(&r.node))
        {
            tracing::warn!(
                node = %r.node, %claim, writer = ?world.writer_nodes.get(claim),
                "ignoring a restore report from a node that does not run the claim's writer pod"
            );
            continue;
        }
        match r.state {
            WorkState::Failed => {
                restore.failed = Some(format!(
                    "the agent on node {} failed: {}",
                    r.node, r.message
                ));
            }
            WorkState::Done => {
                done.extend(r.claims.iter().cloned());
                if !r.message.is_empty() {
                    written.push(r.message.clone());
                }
            }
            WorkState::Running => {}
        }
    }
    let mut d = Decision::waiting(R::Restoring, format!("restoring point {}", restore.point));
    if let Some(message) = &restore.failed {
        let event = PlannedEvent::warning(
            EventReason::FailoverRestoreFailed,
            "Restore",
            format!("{message}; the workload was not started in the target zone"),
        );
        d.reach(
            i.status,
            Milestone::RestoreFailed,
            message.clone(),
            Some(event),
        );
        d.facts.push(Fact::Restore(Some(restore)));
        return d;
    }
    if !restore
        .volumes
        .iter()
        .all(|v| done.contains(&v.target_claim))
    {
        return d;
    }
    let mut message = format!("{} claim(s) restored and verified", restore.volumes.len());
    if !written.is_empty() {
        written.sort();
        message.push_str(&format!(" ({})", written.join("; ")));
    }
    restore.completed = Some(i.now);
    d.reach(i.status, Milestone::Restored, message, None);
    d.facts.push(Fact::Restore(Some(restore)));
    d
}

/// A failed restore ends here: its writer pods go, nothing starts.
fn restore_failed(i: &Inputs<'_>, place: &Place) -> Decision {
    let Some(restore) = &i.status.restore else {
        return Decision::default();
    };
    let message = restore.failed.clone().unwrap_or_default();
    let mut d = Decision::idle(
        R::RestoreFailed,
        format!(
            "{message}; the workload was not started in the target zone (delete this Failover to clean up, or pick another point)"
        ),
    );
    d.actions = writer_pods(i.failover, place, restore.volumes.len());
    if place.drill {
        d.conditions.push(Condition::new(
            T::Verified,
            ConditionStatus::False,
            R::VerificationFailed,
            format!("the restore failed: {message}"),
        ));
    }
    d
}

/// Deletions of the restore's writer pods, done either way once the restore ended.
pub(super) fn writer_pods(f: &Failover, place: &Place, count: usize) -> Vec<Action> {
    (0..count)
        .map(|n| {
            Action::Delete(ObjectName::new(
                Kind::Pod,
                Some(&place.namespace),
                &writer_name(&f.name_any(), n),
            ))
        })
        .collect()
}
