//! The decision for a point whose parts are all in the cache: finish it as a job, and record
//! its outcome (pure).

use std::time::Duration;

use jiff::Timestamp;

use super::super::schedule::{self, Schedule, TRIGGERED};
use super::decide::{
    Action, Count, Decision, FINISH_RETRY, Fact, Inputs, JobSpec, retry_in, until,
};
use crate::api::reasons::{EventReason, WorkloadReason as R};
use crate::api::workload::PointInProgress;
use crate::controllers::PlannedEvent;
use crate::controllers::jobs::{Job, JobKind, JobState};
use crate::controllers::store::Finished;

pub(super) fn finish(
    d: &mut Decision,
    inputs: &Inputs,
    point: &PointInProgress,
    parts: Vec<String>,
    stored_bytes: u64,
    schedule: &Schedule,
    now: Timestamp,
) {
    let spec = JobSpec::Finish {
        point: point.id.clone(),
        parts,
        claims: point.claims.clone(),
    };
    let Some(job) = inputs.jobs.finish.as_ref().filter(|j| j.tag == point.id) else {
        // The reader pods and claims of the point are done with.
        d.actions.push(Action::SweepPoint(point.clone()));
        d.job(&point.id, spec);
        return;
    };
    match &job.state {
        JobState::Running => {
            d.soon(TRIGGERED);
            if let Some(message) = &job.last_failure {
                d.failure = Some((R::ReplicationFailed, message.clone()));
            }
        }
        // The parts stay; the point is finished again shortly.
        JobState::Failed(message) => match retry_in(job, FINISH_RETRY, now) {
            None => d.job(&point.id, spec),
            Some(wait) => {
                d.failure = Some((R::ReplicationFailed, message.clone()));
                d.soon(wait);
            }
        },
        JobState::Done(_) => match job.outcome::<Finished>() {
            Some(outcome) => finished(d, point, outcome, stored_bytes, job, schedule, now),
            None => d.job(&point.id, spec),
        },
    }
}

/// Records a finished point; its metrics and events only the first time.
fn finished(
    d: &mut Decision,
    point: &PointInProgress,
    outcome: Finished,
    stored_bytes: u64,
    job: &Job,
    schedule: &Schedule,
    now: Timestamp,
) {
    let at = job.finished.unwrap_or(now);
    let consistency = outcome.consistency.as_str();
    let mut note = format!(
        "point {} ({consistency}, {} volume(s), {} bytes, {} added to the cache)",
        outcome.id, outcome.volumes, outcome.bytes, stored_bytes
    );
    let mut counts = vec![
        Count::Point(outcome.consistency),
        Count::Bytes("cache", stored_bytes),
    ];
    let event = match &outcome.replicated {
        Ok(copied) => {
            let took = at.duration_since(point.started).as_secs_f64();
            counts.push(Count::Bytes("target", *copied));
            counts.push(Count::Replicated(took));
            note.push_str(&format!(
                " replicated to the target in {took:.1}s ({copied} bytes copied)"
            ));
            PlannedEvent::normal(EventReason::RecoveryPointCreated, "Replicate", note)
        }
        Err(message) => {
            note.push_str(&format!(
                " is in the cache, but copying it to the target failed: {message}"
            ));
            d.failure = Some((R::ReplicationFailed, note.clone()));
            d.requeue = d.requeue.min(Duration::from_secs(30));
            PlannedEvent::warning(EventReason::ReplicationFailed, "Replicate", note)
        }
    };
    if !job.recorded {
        d.actions.extend(counts.into_iter().map(Action::Count));
        d.events.push(event);
    }
    d.requeue = d
        .requeue
        .min(until(schedule::after(point.started, schedule.crash), at));
    d.facts.push(Fact::Finished {
        point: point.clone(),
        outcome,
    });
    d.recorded.push((JobKind::FinishPoint, point.id.clone()));
}
