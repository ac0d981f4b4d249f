//! Planned mode before the restore: the source stops, its last pod goes, holder pods mount its
//! claims read-only for the agents, the workload is asked for a point, and the failover waits
//! until a point taken after the stop is in the target location: no write is lost.

use kube::ResourceExt;

use super::{Action, Decision, Fact, Inputs, failed_over};
use crate::api::ReplicatedWorkload;
use crate::api::conditions::ConditionStatus;
use crate::api::failover::Milestone;
use crate::api::reasons::{EventReason, FailoverReason as R};
use crate::api::work::{POINT_REQUEST_ANNOTATION, holder_name};
use crate::controllers::PlannedEvent;
use crate::controllers::failover::manifests;
use crate::controllers::failover::observe::{Source, World};
use crate::controllers::objects::{Kind, ObjectName};

/// The source workload's replica count before the failover, and whether it still has to be
/// scaled to zero. The count comes from the annotation when an earlier pass (whose status write
/// may have been lost) already scaled the source down; a workload stopped at zero replicas still
/// comes up in the target zone, with one.
pub fn source_replicas(i: &Inputs<'_>, source: &Source) -> (i32, bool) {
    let replicas = source
        .noted
        .or(i.status.source_replicas)
        .or(source.replicas)
        .unwrap_or(1)
        .max(1);
    let stopped = source.noted == Some(replicas) && source.replicas == Some(0);
    (replicas, !stopped)
}

/// The action that scales the source to zero, noting `replicas`.
pub fn stop(rw: &ReplicatedWorkload, replicas: i32) -> Action {
    Action::ScaleSource {
        kind: rw.spec.workload_ref.kind,
        name: rw.spec.workload_ref.name.clone(),
        replicas: 0,
        note: Some(replicas),
    }
}

fn gone(rw: &ReplicatedWorkload) -> Decision {
    let w = &rw.spec.workload_ref;
    Decision {
        conditions: vec![failed_over(
            ConditionStatus::False,
            R::RestoreFailed,
            format!(
                "{} {} is gone: a planned failover stops it first",
                w.kind.as_str(),
                w.name
            ),
        )],
        ..Default::default()
    }
}

pub fn stop_source(i: &Inputs<'_>, rw: &ReplicatedWorkload, world: &World) -> Decision {
    let w = &rw.spec.workload_ref;
    let (kind, name) = (w.kind.as_str(), &w.name);
    let Some(source) = &world.source else {
        return gone(rw);
    };
    if i.chosen.is_none() {
        return Decision::waiting(
            R::StoppingSource,
            "waiting for the workload's points to be listed",
        );
    }
    let (replicas, to_stop) = source_replicas(i, source);
    let mut d = Decision::waiting(
        R::StoppingSource,
        format!("{kind} {name} scaled to 0; waiting for its pods to stop"),
    );
    d.facts.push(Fact::SourceReplicas(replicas));
    if to_stop {
        d.actions.push(stop(rw, replicas));
        return d;
    }
    if world.source_pods > 0 {
        d.conditions = vec![failed_over(
            ConditionStatus::False,
            R::StoppingSource,
            format!(
                "{kind} {name} scaled to 0; waiting for {} pod(s) to stop (if the source zone is down they never will: delete this Failover and fail over with mode Unplanned)",
                world.source_pods
            ),
        )];
        return d;
    }
    let message = format!("{kind} {name} stopped: no pod writes to its claims any more");
    d.facts.push(Fact::SourceStopped(i.now));
    let event = PlannedEvent::normal(EventReason::FailoverSourceStopped, "Stop", message.clone());
    d.reach(i.status, Milestone::SourceStopped, message, Some(event));
    d
}

pub fn final_point(i: &Inputs<'_>, rw: &ReplicatedWorkload, world: &World) -> Decision {
    let w = &rw.spec.workload_ref;
    let (kind, name) = (w.kind.as_str(), &w.name);
    let (Some(stopped), Some(latest)) = (i.status.source_stopped, i.chosen) else {
        return Decision::waiting(
            R::StoppingSource,
            "waiting for the workload's points to be listed",
        );
    };
    let f = i.failover;
    let namespace = f.namespace().unwrap_or_default();
    let token = format!("planned-{}", f.uid().unwrap_or_default());
    let asked = rw.annotations().get(POINT_REQUEST_ANNOTATION) == Some(&token);
    let requested = format!(
        "a point of the stopped claims is requested from ReplicatedWorkload {}",
        rw.name_any()
    );
    let mut d = Decision::waiting(R::StoppingSource, String::new());
    // Recorded from the fact (the request on the workload), in case the pass that made the
    // request lost its status write.
    if asked {
        d.reach(
            i.status,
            Milestone::FinalPointRequested,
            requested.clone(),
            None,
        );
    }
    // Times are whole seconds: only a point of a later second surely started after the stop.
    if latest.time > stopped {
        // Holders are done.
        for n in 0..latest.volumes.len() {
            d.actions.push(Action::Delete(ObjectName::new(
                Kind::Pod,
                Some(&namespace),
                &holder_name(&f.name_any(), n),
            )));
        }
        d.reach(
            i.status,
            Milestone::FinalPointReplicated,
            format!(
                "point {} taken after the source stopped is in the target location",
                latest.id
            ),
            None,
        );
        d.facts.push(Fact::ResolvedPoint(Some(latest.clone())));
        d.conditions = vec![failed_over(
            ConditionStatus::False,
            R::Restoring,
            format!("restoring the final point {}", latest.id),
        )];
        return d;
    }
    // The point is asked for once every claim is mounted: the workload's controller reads the
    // holders as the workload's pods.
    let unmounted = hold(i, rw, world, latest, &mut d);
    let message = if unmounted > 0 {
        format!(
            "{kind} {name} stopped; waiting for {unmounted} holder pod(s) to mount its claims for the final point"
        )
    } else if i.now <= stopped {
        format!("{kind} {name} stopped; the final point is asked for in the next second")
    } else {
        if !asked {
            d.actions.push(Action::RequestPoint {
                workload: rw.name_any(),
                token,
            });
        }
        d.reach(i.status, Milestone::FinalPointRequested, requested, None);
        let last = rw
            .status
            .as_ref()
            .and_then(|s| s.last_attempt.as_ref())
            .filter(|a| a.started >= stopped && !a.succeeded)
            .map(|a| format!("; point {} failed: {}", a.id, a.message))
            .unwrap_or_default();
        format!("waiting for the final point (taken after {stopped}) to be replicated{last}")
    };
    d.conditions = vec![failed_over(
        ConditionStatus::False,
        R::StoppingSource,
        message,
    )];
    d
}

/// Holder pods for the claims of `latest` that have none; returns how many are not yet running.
fn hold(
    i: &Inputs<'_>,
    rw: &ReplicatedWorkload,
    world: &World,
    latest: &crate::api::failover::ResolvedPoint,
    d: &mut Decision,
) -> usize {
    let mut unmounted = 0;
    for (n, claim) in latest.volumes.iter().enumerate() {
        match world.holders.get(n) {
            Some(Some(true)) => {}
            Some(Some(false)) => unmounted += 1,
            _ => {
                unmounted += 1;
                let block = world.claim_shapes.get(claim).is_some_and(|s| s.block);
                d.actions.push(Action::Create(manifests::holder_pod(
                    i.failover,
                    i.image,
                    &rw.name_any(),
                    n,
                    (claim, block),
                )));
            }
        }
    }
    unmounted
}
