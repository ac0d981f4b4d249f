//! Decision tables of the replication pipeline: (phase, observed, jobs) → (actions, facts,
//! condition reason), and the record of facts.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::decide::*;
use super::record::record;
use crate::api::reasons::WorkloadReason as R;
use crate::api::registration::AgentRegistration;
use crate::api::vault::RecoveryVaultSpec;
use crate::api::work::{AgentWork, WorkKind, WorkState};
use crate::api::workload::{
    PointInProgress, PointRef, ReplicatedWorkloadSpec, ReplicatedWorkloadStatus, VolumeStatus,
};
use crate::controllers::jobs::{Job, JobKind};
use crate::controllers::store::{Consistency, Finished, Pruned};

fn at(secs: i64) -> Timestamp {
    "2026-06-01T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs)
}

fn vault(method: &str) -> RecoveryVaultSpec {
    serde_json::from_value(json!({
        "cache": {"zone": "zone-a", "storage": {"filesystem": {"path": "/cache"}}},
        "target": {"zone": "zone-b", "storage": {"filesystem": {"path": "/target"}}},
        "encryption": {"keySecretRef": {"name": "key"}},
        "snapshotMethod": method,
        "replicationPolicy": {"crashConsistentFrequency": "30s", "appConsistentFrequency": "60s", "recoveryPointRetention": "1h"},
    }))
    .unwrap()
}

fn workload(hooks: bool) -> ReplicatedWorkloadSpec {
    let app = hooks.then(|| json!({"hooks": {"pre": [{"container": "db", "command": ["sync"]}]}}));
    serde_json::from_value(json!({
        "vaultName": "vault",
        "workloadRef": {"kind": "StatefulSet", "name": "db"},
        "appConsistency": app,
    }))
    .unwrap()
}

fn volumes() -> Vec<VolumeStatus> {
    vec![VolumeStatus {
        claim_name: "data-0".into(),
        node: Some("n1".into()),
        zone: None,
    }]
}

fn agent(state: Option<WorkState>) -> AgentRegistration {
    AgentRegistration {
        node: "n1".into(),
        zone: None,
        region: None,
        version: None,
        renewed: Some(at(0)),
        duration_seconds: 3600,
        work: state
            .into_iter()
            .map(|state| AgentWork {
                kind: WorkKind::Capture,
                namespace: "ns".into(),
                workload: "db".into(),
                point: "p1".into(),
                state,
                claims: vec!["data-0".into()],
                consistency: "FileLevel".into(),
                bytes_done: 10,
                bytes_total: 20,
                stored_bytes: 5,
                message: "disk full".into(),
                owner: String::new(),
            })
            .collect(),
        queued: Default::default(),
    }
}

fn in_flight() -> PointInProgress {
    PointInProgress {
        id: "p1".into(),
        consistency: "CrashConsistent".into(),
        method: crate::api::vault::SnapshotMethod::Live,
        started: at(0),
        claims: vec!["data-0".into()],
        degraded: None,
        warnings: vec![],
        last_progress: None,
    }
}

fn point(id: &str, time: i64, replicated: bool) -> PointRef {
    PointRef {
        id: id.into(),
        time: at(time),
        replicated,
        consistency: "FileLevel".into(),
    }
}

fn finished(replicated: Result<u64, String>) -> Finished {
    Finished {
        id: "p1".into(),
        consistency: Consistency::FileLevel,
        volumes: 1,
        bytes: 100,
        replicated,
    }
}

/// One pass: the workload's world, the pass's time, and what the decision must hold.
struct World {
    status: ReplicatedWorkloadStatus,
    agent: Option<WorkState>,
    jobs: WorkloadJobs,
    method: &'static str,
    hooks: bool,
    swept: bool,
    exposed: Option<Exposed>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            status: ReplicatedWorkloadStatus::default(),
            agent: None,
            jobs: WorkloadJobs::default(),
            method: "Live",
            hooks: false,
            swept: true,
            exposed: None,
        }
    }
}

fn pass(w: &World, now: Timestamp) -> Decision {
    pass_with(w, &workload(w.hooks), now)
}

/// One pass with the workload's `spec`.
fn pass_with(w: &World, spec: &ReplicatedWorkloadSpec, now: Timestamp) -> Decision {
    let (vault, volumes) = (vault(w.method), volumes());
    let registrations = vec![agent(w.agent)];
    let inputs = Inputs {
        namespace: "ns",
        name: "db",
        spec,
        vault: &vault,
        requested: None,
        ready: true,
        volumes: &volumes,
        registrations: &registrations,
        pods: &[],
        swept: w.swept,
        jobs: &w.jobs,
    };
    match step(&inputs, &w.status, now) {
        Err(d) => *d,
        Ok((schedule, step)) => decide(&inputs, &w.status, schedule, step, w.exposed.clone(), now),
    }
}

/// Status after one finished point of `time`, replicated or not.
fn after_point(time: i64, replicated: bool) -> ReplicatedWorkloadStatus {
    ReplicatedWorkloadStatus {
        latest_point: Some(point("p0", time, replicated)),
        last_attempt: Some(crate::api::workload::PointAttempt {
            id: "p0".into(),
            started: at(time),
            consistency: "FileLevel".into(),
            succeeded: true,
            message: String::new(),
        }),
        oldest_point: Some(at(time)),
        point_count: Some(1),
        ..Default::default()
    }
}

fn kinds(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .map(|a| match a {
            Action::SweepPoint(_) => "sweep".to_string(),
            Action::SweepLeftovers => "sweep leftovers".to_string(),
            Action::Start(s) => format!("start {}", s.consistency.as_str()),
            Action::Job { tag, spec } => format!("job {:?} {tag}", spec.kind()),
            Action::Count(c) => format!("count {c:?}"),
        })
        .collect()
}

fn reason(d: &Decision) -> Option<R> {
    d.failure.as_ref().map(|(r, _)| *r)
}

#[test]
fn table_of_replication_decisions() {
    let finishing = || ReplicatedWorkloadStatus {
        point_in_progress: Some(in_flight()),
        ..Default::default()
    };
    let done = |r| Job::done("p1", at(10), &finished(r));
    struct Case {
        name: &'static str,
        world: World,
        now: i64,
        actions: &'static [&'static str],
        facts: usize,
        reason: Option<R>,
    }
    let cases = vec![
        Case {
            name: "idle after a start: the strays of a predecessor are swept once",
            world: World {
                status: after_point(0, true),
                swept: false,
                ..Default::default()
            },
            now: 10,
            actions: &["sweep leftovers"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "idle, swept, replicated: nothing to do",
            world: World {
                status: after_point(0, true),
                ..Default::default()
            },
            now: 10,
            actions: &[],
            facts: 0,
            reason: None,
        },
        Case {
            name: "the last point missed the target: a catch-up starts",
            world: World {
                status: after_point(0, false),
                ..Default::default()
            },
            now: 10,
            actions: &["job CatchUp p0"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "a catch-up runs: look again",
            world: World {
                status: after_point(0, false),
                jobs: WorkloadJobs {
                    catch_up: Some(Job::running("p0", at(5))),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 10,
            actions: &[],
            facts: 0,
            reason: None,
        },
        Case {
            name: "a catch-up is done: the point is replicated",
            world: World {
                status: after_point(0, false),
                jobs: WorkloadJobs {
                    catch_up: Some(Job::done("p0", at(5), &7u64)),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 10,
            actions: &[],
            facts: 1,
            reason: None,
        },
        Case {
            name: "a catch-up failed: the reason shows until it is tried again",
            world: World {
                status: after_point(0, false),
                jobs: WorkloadJobs {
                    catch_up: Some(Job::failed("p0", at(5), "target location: down")),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 10,
            actions: &[],
            facts: 0,
            reason: Some(R::ReplicationFailed),
        },
        Case {
            name: "a catch-up failed 30s ago: it runs again",
            world: World {
                status: after_point(0, false),
                jobs: WorkloadJobs {
                    catch_up: Some(Job::failed("p0", at(-20), "target location: down")),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 15,
            actions: &["job CatchUp p0"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "a point is due",
            world: World {
                status: after_point(0, true),
                ..Default::default()
            },
            now: 31,
            actions: &["start CrashConsistent"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "a CSI workload with hooks: the first point is app-consistent",
            world: World {
                method: "CSI",
                hooks: true,
                ..Default::default()
            },
            now: 0,
            actions: &["start AppConsistent"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "due, but a catch-up runs: the point waits for it",
            world: World {
                status: after_point(0, true),
                jobs: WorkloadJobs {
                    catch_up: Some(Job::running("p0", at(5))),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 31,
            actions: &[],
            facts: 0,
            reason: None,
        },
        Case {
            name: "due two intervals late: the missed ones are counted",
            world: World {
                status: after_point(0, true),
                ..Default::default()
            },
            now: 95,
            actions: &["count Missed(2)", "start CrashConsistent"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "retention due: a prune runs before the next point",
            world: World {
                status: after_point(-4000, true),
                ..Default::default()
            },
            now: 0,
            actions: &["job Prune p0"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "retention ran for this point: its outcome is recorded, the point starts",
            world: World {
                status: after_point(-4000, true),
                jobs: WorkloadJobs {
                    prune: Some(Job::done(
                        "p0",
                        at(-1),
                        &Pruned {
                            removed: 1,
                            remaining: 1,
                            oldest: Some(at(-10)),
                        },
                    )),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 0,
            actions: &["count Missed(132)", "start CrashConsistent"],
            facts: 1,
            reason: None,
        },
        Case {
            name: "agents at work: progress is recorded",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Running),
                ..Default::default()
            },
            now: 5,
            actions: &[],
            facts: 1,
            reason: None,
        },
        Case {
            name: "every part written: the temporary objects go and the point is finished as a job",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                ..Default::default()
            },
            now: 5,
            actions: &["sweep", "job FinishPoint p1"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "the finish runs: nothing more",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                jobs: WorkloadJobs {
                    finish: Some(Job::running("p1", at(5))),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 6,
            actions: &[],
            facts: 0,
            reason: None,
        },
        Case {
            name: "the finish is done: the point is recorded and counted",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                jobs: WorkloadJobs {
                    finish: Some(done(Ok(50))),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 11,
            actions: &[
                "count Point(FileLevel)",
                "count Bytes(\"cache\", 5)",
                "count Bytes(\"target\", 50)",
                "count Replicated(10.0)",
            ],
            facts: 1,
            reason: None,
        },
        Case {
            name: "the finish is done but the target refused the copy",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                jobs: WorkloadJobs {
                    finish: Some(done(Err("target location: down".into()))),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 11,
            actions: &["count Point(FileLevel)", "count Bytes(\"cache\", 5)"],
            facts: 1,
            reason: Some(R::ReplicationFailed),
        },
        Case {
            name: "the finish failed: the parts stay and it is tried again in 5s",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                jobs: WorkloadJobs {
                    finish: Some(Job::failed("p1", at(10), "cache location: down")),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 12,
            actions: &[],
            facts: 0,
            reason: Some(R::ReplicationFailed),
        },
        Case {
            name: "the finish failed 5s ago: again",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Done),
                jobs: WorkloadJobs {
                    finish: Some(Job::failed("p1", at(10), "cache location: down")),
                    ..Default::default()
                },
                ..Default::default()
            },
            now: 16,
            actions: &["job FinishPoint p1"],
            facts: 0,
            reason: None,
        },
        Case {
            name: "an agent failed: the point fails, its parts are discarded",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Failed),
                ..Default::default()
            },
            now: 5,
            actions: &["sweep", "job DiscardParts p1", "count Missed(1)"],
            facts: 1,
            reason: Some(R::CaptureFailed),
        },
        Case {
            name: "a CSI snapshot failed: the point fails",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Running),
                exposed: Some(Exposed::Failed("VolumeSnapshot x failed".into())),
                ..Default::default()
            },
            now: 5,
            actions: &["sweep", "job DiscardParts p1", "count Missed(1)"],
            facts: 1,
            reason: Some(R::CaptureFailed),
        },
        Case {
            name: "the snapshots cannot be looked at: say so, change nothing",
            world: World {
                status: finishing(),
                agent: Some(WorkState::Running),
                exposed: Some(Exposed::Error("forbidden".into())),
                ..Default::default()
            },
            now: 5,
            actions: &[],
            facts: 0,
            reason: Some(R::CaptureFailed),
        },
    ];
    for case in cases {
        let d = pass(&case.world, at(case.now));
        assert_eq!(kinds(&d), case.actions, "{}: actions", case.name);
        assert_eq!(
            d.facts.len(),
            case.facts,
            "{}: facts {:?}",
            case.name,
            d.facts
        );
        assert_eq!(
            reason(&d),
            case.reason,
            "{}: reason {:?}",
            case.name,
            d.failure
        );
    }
}

#[test]
fn an_outcome_already_recorded_is_applied_without_its_events_again() {
    let mut job = Job::done("p1", at(10), &finished(Ok(50)));
    let world = |job: &Job| World {
        status: ReplicatedWorkloadStatus {
            point_in_progress: Some(in_flight()),
            ..Default::default()
        },
        agent: Some(WorkState::Done),
        jobs: WorkloadJobs {
            finish: Some(job.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let first = pass(&world(&job), at(11));
    assert_eq!(first.events.len(), 1);
    assert_eq!(
        first.recorded,
        vec![(JobKind::FinishPoint, "p1".to_string())]
    );
    job.recorded = true;
    let again = pass(&world(&job), at(12));
    assert!(again.events.is_empty() && again.actions.is_empty());
    assert_eq!(again.facts, first.facts);
}

#[test]
fn a_finished_point_is_recorded_once_however_often_its_fact_is_applied() {
    let mut status = ReplicatedWorkloadStatus {
        point_in_progress: Some(in_flight()),
        ..Default::default()
    };
    let fact = Fact::Finished {
        point: in_flight(),
        outcome: finished(Ok(50)),
    };
    record(&mut status, vec![fact.clone()], at(11));
    let once = status.clone();
    record(&mut status, vec![fact], at(12));
    assert_eq!(status, once);
    assert_eq!(status.point_count, Some(1));
    assert!(status.point_in_progress.is_none());
    assert_eq!(
        status
            .latest_replicated_point
            .as_ref()
            .map(|p| p.id.as_str()),
        Some("p1")
    );
}

#[test]
fn a_catch_up_marks_every_latest_point_replicated() {
    let mut status = after_point(0, false);
    record(&mut status, vec![Fact::Replicated], at(5));
    assert!(status.latest_point.as_ref().is_some_and(|p| p.replicated));
    assert_eq!(status.latest_replicated_point, status.latest_point);
}

#[test]
fn a_schedule_the_policy_cannot_give_stops_with_a_reason() {
    let spec: ReplicatedWorkloadSpec = serde_json::from_value(json!({
        "vaultName": "vault",
        "workloadRef": {"kind": "StatefulSet", "name": "db"},
        "replicationPolicy": {"crashConsistentFrequency": "1s"},
    }))
    .unwrap();
    let vault = vault("Live");
    let jobs = WorkloadJobs::default();
    let inputs = Inputs {
        namespace: "ns",
        name: "db",
        spec: &spec,
        vault: &vault,
        requested: None,
        ready: true,
        volumes: &[],
        registrations: &[],
        pods: &[],
        swept: true,
        jobs: &jobs,
    };
    let d = step(&inputs, &ReplicatedWorkloadStatus::default(), at(0)).unwrap_err();
    assert_eq!(reason(&d), Some(R::CaptureFailed));
    assert!(d.actions.is_empty() && d.schedule.is_none());
    let _ = Duration::ZERO;
}

#[test]
fn a_freeze_is_asked_for_app_consistent_csi_points_only_with_its_bound_and_nodes() {
    let freeze = |method: &'static str, timeout: &str| {
        let mut spec = workload(false);
        spec.app_consistency =
            serde_json::from_value(json!({"freezeFilesystems": true, "freezeTimeout": timeout}))
                .unwrap();
        let world = World {
            method,
            ..Default::default()
        };
        pass_with(&world, &spec, at(0))
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Start(s) => Some((
                    s.consistency.as_str().to_string(),
                    s.freeze,
                    s.nodes.clone(),
                )),
                _ => None,
            })
    };
    // The freeze alone makes app-consistent points possible on a CSI vault: the first one is.
    assert_eq!(
        freeze("CSI", "3s"),
        Some((
            "AppConsistent".into(),
            Some(std::time::Duration::from_secs(3)),
            vec!["n1".into()]
        ))
    );
    // A Live read is never an instant: no freeze, and the point is not called app-consistent.
    let live = freeze("Live", "3s").unwrap();
    assert_eq!((live.0.as_str(), live.1), ("CrashConsistent", None));
    // A bound admission would refuse falls back to the default, within 1s..60s.
    assert_eq!(
        freeze("CSI", "nonsense").unwrap().1,
        Some(std::time::Duration::from_secs(10))
    );
}
