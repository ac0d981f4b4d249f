//! After the restore: the copy starts in the target zone (for a failover, the source is scaled
//! to zero first, never deleted; a drill leaves the source alone), its pods become Ready, and
//! then a drill is verified and a failover with `spec.commit` is committed.

use super::planned::{source_replicas, stop};
use super::{Action, Decision, Fact, Inputs, Subject, blocked, failed_over, writer_pods};
use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::failover::ExistingObjects;
use crate::api::failover::Milestone;
use crate::api::reasons::{ConditionType as T, EventReason, FailoverReason as R};
use crate::controllers::PlannedEvent;
use crate::controllers::failover::manifests::{self, Place};
use crate::controllers::failover::observe::Found;
use crate::controllers::failover::observe::{CommitJob, VerifyJob, World};
use crate::controllers::objects::Holder;
use crate::controllers::objects::ObjectName;

/// Step 3: the copy starts.
pub fn start(i: &Inputs<'_>, place: &Place, world: &World) -> Decision {
    let Some(restore) = &i.status.restore else {
        return Decision::default();
    };
    let Some(source) = &world.source else {
        let mut d = Decision::idle(
            R::RestoreFailed,
            format!(
                "{} {} is gone: its spec is needed to start the copy",
                place.kind.as_str(),
                place.source
            ),
        );
        d.actions = writer_pods(i.failover, place, restore.volumes.len());
        return d;
    };
    let copy = ObjectName::new(place.copy_kind(), Some(&place.namespace), &place.copy);
    // A failback's copy is the original, there since before (observe checked it is held).
    if !place.failback
        && let Some(mut d) = blocked(world, [copy])
    {
        d.actions = writer_pods(i.failover, place, restore.volumes.len());
        return d;
    }
    let mut d = Decision::waiting(
        R::WaitingForPods,
        format!("starting {} in the target zone", place.copy),
    );
    // Writer pods are done.
    d.actions = writer_pods(i.failover, place, restore.volumes.len());
    let replicas = if place.drill {
        d.actions.extend(
            manifests::service_copies(
                i.failover,
                &source.object,
                &world.services,
                &place.namespace,
            )
            .into_iter()
            .map(Action::Create),
        );
        // A workload stopped at zero replicas still comes up in the target zone: with one.
        source.replicas.unwrap_or(1).max(1)
    } else {
        let (replicas, to_stop) = source_replicas(i, source);
        if to_stop {
            let rw = world.workload.as_ref().expect("decide checked it");
            d.actions.push(stop(rw, replicas));
        }
        replicas
    };
    if place.failback {
        // The original comes back on its own claims, now the point's: scaled up, its hold
        // released (the operator's own write).
        d.actions.push(Action::ScaleSource {
            kind: place.kind,
            name: place.copy.clone(),
            replicas,
            note: None,
        });
    } else {
        d.actions.push(Action::Create(manifests::copy_of(
            &source.object,
            i.failover,
            place,
            replicas,
            i.target_zone,
            &restore.volumes,
        )));
    }
    d.facts.push(Fact::SourceReplicas(replicas));
    d.facts.push(Fact::TargetWorkload(Some(place.copy.clone())));
    let message = if place.drill {
        format!(
            "{} started in the target zone in namespace {}; the source is untouched",
            place.copy, place.namespace
        )
    } else {
        format!(
            "{} {} scaled to 0; {} started in the target zone",
            place.kind.as_str(),
            place.source,
            place.copy
        )
    };
    d.reach(i.status, Milestone::WorkloadStarted, message, None);
    d
}

/// Step 3 of a workload found in a vault: its ServiceAccounts, ConfigMaps, Secrets and
/// Services, then the workload itself under its own name; one that exists here is used as it
/// is (`existingObjects: Use`) and scaled up from zero, never overwritten.
pub fn start_found(i: &Inputs<'_>, place: &Place, found: &Found, world: &World) -> Decision {
    let Some(restore) = &i.status.restore else {
        return Decision::default();
    };
    let (Some(source), Some(Ok(definition))) = (&world.source, &found.definition) else {
        return Decision::default();
    };
    let copy = ObjectName::new(place.copy_kind(), Some(&place.namespace), &place.copy);
    let refuse = i.failover.spec.existing_objects == Some(ExistingObjects::Refuse);
    let others: Vec<ObjectName> = world
        .names
        .keys()
        .filter(|n| refuse || **n != copy)
        .cloned()
        .collect();
    if let Some(mut d) = blocked(world, others) {
        d.actions = writer_pods(i.failover, place, restore.volumes.len());
        return d;
    }
    let mut d = Decision::waiting(
        R::WaitingForPods,
        format!(
            "starting {} {} in the target zone",
            place.kind.as_str(),
            place.copy
        ),
    );
    d.actions = writer_pods(i.failover, place, restore.volumes.len());
    let companions = manifests::companions(definition, i.failover, &place.namespace);
    d.facts.push(Fact::FoundObjects(
        companions
            .iter()
            .map(|m| format!("{}/{}", m.kind.name(), m.name))
            .collect(),
    ));
    d.actions
        .extend(companions.into_iter().map(Action::CreateOrUse));
    let replicas = source.noted.unwrap_or(1).max(1);
    let existed = world.names.get(&copy) == Some(&Holder::Taken);
    if existed {
        if source.replicas.unwrap_or(0) == 0 {
            d.actions.push(Action::ScaleSource {
                kind: place.kind,
                name: place.copy.clone(),
                replicas,
                note: None,
            });
        }
        d.facts.push(Fact::FoundExisted);
    } else {
        d.actions.push(Action::Create(manifests::found_workload(
            &definition.workload,
            i.failover,
            place,
            replicas,
            i.target_zone,
        )));
    }
    d.facts.push(Fact::SourceReplicas(replicas));
    d.facts.push(Fact::TargetWorkload(Some(place.copy.clone())));
    let message = format!(
        "{} {} {} in the target zone from the vault's point{}",
        place.kind.as_str(),
        place.copy,
        if existed {
            "(found here) scaled to its replicas"
        } else {
            "created"
        },
        if found.cluster.is_empty() {
            String::new()
        } else {
            format!(" (protected by cluster {})", found.cluster)
        }
    );
    d.reach(i.status, Milestone::WorkloadStarted, message, None);
    d
}

/// Step 4: Ready in the target zone; then verified (drill) or committed (`spec.commit`).
pub fn run(i: &Inputs<'_>, subject: Subject<'_>, place: &Place, world: &World) -> Decision {
    let Some(restore) = &i.status.restore else {
        return Decision::default();
    };
    let want = i.status.source_replicas.unwrap_or(1);
    let ready = world.ready_pods;
    let target = &place.copy;
    if ready < want {
        let mut d = Decision::waiting(
            R::WaitingForPods,
            format!("{ready} of {want} pod(s) of {target} Ready"),
        );
        if i.status.reached(&Milestone::Committed) {
            d.conditions.push(committed(subject, place));
        } else if i.failover.spec.commit {
            d.conditions.push(Condition::new(
                T::Committed,
                ConditionStatus::False,
                R::Committing,
                "commit waits until the workload is Ready in the target zone",
            ));
        }
        if place.drill {
            d.conditions.push(Condition::new(
                T::Verified,
                ConditionStatus::False,
                R::Verifying,
                format!("{ready} of {want} pod(s) of the copy Ready"),
            ));
        }
        return d;
    }
    let mut d = Decision::default();
    if i.status.rto_seconds.is_none() {
        // The outage began when the source stopped (planned), else when the restore started.
        let outage = i.status.source_stopped.unwrap_or(restore.started);
        d.facts
            .push(Fact::Rto(Some(i.now.duration_since(outage).as_secs_f64())));
    }
    let ready_message = format!("{ready} pod(s) of {target} Ready in the target zone");
    if place.drill {
        drill(i, place, world, ready_message, &mut d);
        return d;
    }
    let rto = d
        .facts
        .iter()
        .find_map(|f| match f {
            Fact::Rto(r) => *r,
            _ => None,
        })
        .or(i.status.rto_seconds)
        .unwrap_or_default();
    let event = PlannedEvent::normal(
        EventReason::FailedOver,
        "FailOver",
        format!(
            "{target} runs in the target zone from point {} after {rto:.0}s",
            restore.point
        ),
    );
    d.reach(i.status, Milestone::FailedOver, ready_message, Some(event));
    let committed = i
        .failover
        .spec
        .commit
        .then(|| commit(i, subject, world, &mut d));
    let next = match &committed {
        Some(c) if c.is_true() => "committed".to_string(),
        Some(_) => "committing".to_string(),
        None => "set spec.commit to commit, or delete this Failover to roll back".to_string(),
    };
    d.busy = committed.as_ref().is_some_and(|c| !c.is_true());
    d.conditions = vec![failed_over(
        ConditionStatus::True,
        R::FailedOver,
        format!(
            "{target} runs in the target zone from point {}; {next}",
            restore.point
        ),
    )];
    d.conditions.extend(committed);
    d
}

/// A drill's copy is Ready: it is verified, and never fails over.
fn drill(i: &Inputs<'_>, place: &Place, world: &World, ready: String, d: &mut Decision) {
    d.reach(i.status, Milestone::CopyReady, ready, None);
    let verified = verify(i, place, world, d);
    d.busy = verified.reason == R::Verifying.as_str();
    d.conditions = vec![
        failed_over(
            ConditionStatus::False,
            R::Drill,
            format!(
                "a drill does not fail over: the copy runs in namespace {}; delete this Failover to remove it",
                place.namespace
            ),
        ),
        verified,
    ];
}

/// Phase two: every point of the workload is deleted in cache and target (the seed's commit),
/// by a background job; the source's claims and volumes are kept.
fn commit(i: &Inputs<'_>, subject: Subject<'_>, world: &World, d: &mut Decision) -> Condition {
    let here = subject.place(i.failover);
    let done = committed(subject, &here);
    if i.status.reached(&Milestone::Committed) {
        return done;
    }
    let committing =
        |m: String| Condition::new(T::Committed, ConditionStatus::False, R::Committing, m);
    match &world.commit {
        None => {
            d.actions.push(Action::StartCommit);
            committing("deleting the recovery points".into())
        }
        Some(CommitJob::Running) => committing("deleting the recovery points".into()),
        Some(CommitJob::Failed(message)) => {
            d.actions.push(Action::StartCommit);
            committing(format!("deleting the recovery points: {message}; retrying"))
        }
        Some(CommitJob::Done(removed)) => {
            if here.failback {
                // Failed back: the copy the workload ran as meanwhile goes (its claims stay).
                d.actions.push(Action::DeleteCopy {
                    kind: here.copy_kind(),
                    name: here.source.clone(),
                    of: here.copy.clone(),
                });
            }
            let message = format!("{removed} recovery point(s) deleted");
            let event = PlannedEvent::normal(
                EventReason::FailoverCommitted,
                "Commit",
                format!("{}; {message}", committed_message(subject, &here)),
            );
            d.reach(i.status, Milestone::Committed, message, Some(event));
            done
        }
    }
}

fn committed(subject: Subject<'_>, place: &Place) -> Condition {
    Condition::new(
        T::Committed,
        ConditionStatus::True,
        R::Committed,
        committed_message(subject, place),
    )
}

fn committed_message(subject: Subject<'_>, place: &Place) -> String {
    let rw = match subject {
        Subject::Protected(rw) => rw,
        Subject::Found(found) => {
            return format!(
                "committed: the recovery points of {} are deleted from the vault's locations (their data stays, the base of a re-protection); {} {} runs here under its own names: protect it with a ReplicatedWorkload",
                found.name,
                found.kind.as_str(),
                found.name
            );
        }
    };
    let w = &rw.spec.workload_ref;
    if place.failback {
        return format!(
            "committed: the recovery points of {} are deleted; {} {} runs again on its own claims, and the copy {} is deleted (its claims are kept until you delete them)",
            kube::ResourceExt::name_any(rw),
            w.kind.as_str(),
            place.copy,
            w.name
        );
    }
    format!(
        "committed: the recovery points of {} are deleted; the source {} {} (0 replicas) and its claims are kept until you delete them",
        kube::ResourceExt::name_any(rw),
        w.kind.as_str(),
        w.name
    )
}

/// A drill's verdict: Verified once the copy is Ready and the verification Job (if any)
/// succeeded; VerificationFailed when the Job failed or ran out of time.
fn verify(i: &Inputs<'_>, place: &Place, world: &World, d: &mut Decision) -> Condition {
    let verified = |s, r: R, m: String| Condition::new(T::Verified, s, r, m);
    let passed = |d: &mut Decision, message: String| {
        let event = PlannedEvent::normal(EventReason::DrillVerified, "Verify", message.clone());
        d.reach(i.status, Milestone::Verified, message.clone(), Some(event));
        verified(ConditionStatus::True, R::Verified, message)
    };
    let Some(check) = &i.failover.spec.verification else {
        return passed(
            d,
            "the copy is Ready in the target zone (no verification Job set)".into(),
        );
    };
    let timeout = match check
        .timeout
        .as_deref()
        .map(crate::api::policy::parse_duration)
    {
        None => std::time::Duration::from_secs(600),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return verified(
                ConditionStatus::False,
                R::VerificationFailed,
                format!("spec.verification.timeout: {e}"),
            );
        }
    };
    let job = manifests::verification_job_name(&kube::ResourceExt::name_any(i.failover));
    match &world.job {
        None => {
            d.actions.push(Action::Create(manifests::verification_job(
                i.failover,
                &place.namespace,
                check,
                timeout,
            )));
            verified(
                ConditionStatus::False,
                R::Verifying,
                format!("the copy is Ready; Job {job} started"),
            )
        }
        Some(VerifyJob::Complete) => {
            passed(d, format!("the copy is Ready and Job {job} succeeded"))
        }
        Some(VerifyJob::Failed(why)) => {
            let message = format!("Job {job} failed: {why}");
            let event = PlannedEvent::warning(EventReason::DrillFailed, "Verify", message.clone());
            d.reach(
                i.status,
                Milestone::VerificationFailed,
                message.clone(),
                Some(event),
            );
            verified(ConditionStatus::False, R::VerificationFailed, message)
        }
        Some(VerifyJob::Running) => verified(
            ConditionStatus::False,
            R::Verifying,
            format!("the copy is Ready; waiting for Job {job}"),
        ),
    }
}
