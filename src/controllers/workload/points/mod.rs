//! The replication pipeline of a workload: starts points, has the agents' parts assembled and
//! copied to the target, applies retention, and records the outcome in the status. Each pass
//! is `step` and `decide` (pure, [`decide`]), the actions ([`act`]), then the facts into the
//! status ([`record`]). The data path runs as jobs (`controllers::jobs`) whose outcomes later
//! passes read; every step is idempotent, so an operator killed anywhere resumes from the status.

pub mod act;
pub mod decide;
mod finish;
pub mod record;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::observe::Observed;
use super::schedule::Schedule;
use crate::api::ReplicatedWorkload;
use crate::api::reasons::WorkloadReason as R;
use crate::api::workload::{ReplicatedWorkloadStatus, VolumeStatus};
use crate::controllers::jobs::{JobKey, JobKind};
use crate::controllers::{Context, PlannedEvent};
use decide::{Exposed, Inputs, WorkloadJobs};

/// What the replication step produced for the status and the reconcile.
pub struct Advanced {
    pub events: Vec<PlannedEvent>,
    /// Why replication is not working, for the Replicating condition.
    pub failure: Option<(R, String)>,
    pub requeue: Duration,
    pub schedule: Option<Schedule>,
    /// Job outcomes (key, tag) applied to the status: marked recorded once it is written.
    pub recorded: Vec<(JobKey, String)>,
}

/// The workload's jobs in the registry.
pub fn jobs_of(ctx: &Context, key: &str) -> WorkloadJobs {
    let get = |kind| ctx.jobs.get(&JobKey::new(key, kind));
    WorkloadJobs {
        finish: get(JobKind::FinishPoint),
        catch_up: get(JobKind::CatchUp),
        prune: get(JobKind::Prune),
    }
}

/// Advances the pipeline by one step and updates `status` in place.
pub async fn advance(
    ctx: &Arc<Context>,
    rw: &ReplicatedWorkload,
    observed: &Observed,
    ready: bool,
    volumes: &[VolumeStatus],
    status: &mut ReplicatedWorkloadStatus,
    now: Timestamp,
) -> Advanced {
    let mut out = Advanced {
        events: vec![],
        failure: None,
        requeue: super::plan::RECHECK,
        schedule: None,
        recorded: vec![],
    };
    let Some(Ok(vault)) = &observed.vault else {
        return out;
    };
    let namespace = rw.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", observed.name);
    let jobs = jobs_of(ctx, &key);
    let pods: Vec<String> = observed.pods.iter().map(|p| p.name.clone()).collect();
    let requested = rw
        .annotations()
        .get(crate::api::work::POINT_REQUEST_ANNOTATION)
        .cloned();
    let swept = ctx
        .swept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key);
    let inputs = Inputs {
        namespace: &namespace,
        name: &observed.name,
        spec: &rw.spec,
        vault: &vault.spec,
        requested: requested.as_deref(),
        ready,
        volumes,
        registrations: &observed.registrations,
        pods: &pods,
        swept,
        jobs: &jobs,
    };
    let mut decision = match decide::step(&inputs, status, now) {
        Err(d) => *d,
        Ok((schedule, step)) => {
            let exposed = match decide::exposing(status, &step) {
                Some(point) => Some(expose(ctx, rw, point, volumes, now).await),
                None => None,
            };
            decide::decide(&inputs, status, schedule, step, exposed, now)
        }
    };
    let target = act::Target {
        rw,
        key: &key,
        pods: &pods,
    };
    let started = act::execute(ctx, &target, &mut decision, now).await;
    record::record(status, std::mem::take(&mut decision.facts), now);
    if let Some((point, requested)) = started {
        record::started(status, point, requested);
    }
    out.recorded = decision
        .recorded
        .into_iter()
        .map(|(kind, tag)| (JobKey::new(key.clone(), kind), tag))
        .collect();
    out.events = decision.events;
    out.failure = decision.failure;
    out.requeue = decision.requeue;
    out.schedule = decision.schedule;
    out
}

async fn expose(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &crate::api::workload::PointInProgress,
    volumes: &[VolumeStatus],
    now: Timestamp,
) -> Exposed {
    match super::csi::expose(ctx, rw, point, volumes, now).await {
        Ok(super::csi::Exposure::Pending) => Exposed::Pending,
        Ok(super::csi::Exposure::Failed(message)) => Exposed::Failed(message),
        Err(e) => Exposed::Error(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
