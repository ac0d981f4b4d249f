use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::api::work::AgentWork;
use crate::api::workload::{PointAttempt, PointRef};

fn t0() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn schedule(app: Option<u64>) -> Schedule {
    Schedule {
        crash: Duration::from_secs(30),
        app: app.map(Duration::from_secs),
        retention: Duration::from_secs(3600),
    }
}

fn point(id: &str, started: i64) -> PointInProgress {
    PointInProgress {
        id: id.into(),
        consistency: "CrashConsistent".into(),
        method: crate::api::vault::SnapshotMethod::Live,
        started: at(started),
        claims: vec!["data-0".into(), "data-1".into()],
        degraded: None,
        warnings: vec![],
        last_progress: None,
    }
}

fn volumes() -> Vec<VolumeStatus> {
    vec![
        VolumeStatus {
            claim_name: "data-0".into(),
            node: Some("n1".into()),
            zone: None,
        },
        VolumeStatus {
            claim_name: "data-1".into(),
            node: Some("n2".into()),
            zone: None,
        },
    ]
}

fn agent(node: &str, renewed: i64, work: Vec<(&str, WorkState, &[&str])>) -> AgentRegistration {
    AgentRegistration {
        node: node.into(),
        zone: None,
        region: None,
        version: None,
        renewed: Some(at(renewed)),
        duration_seconds: 30,
        work: work
            .into_iter()
            .map(|(p, state, claims)| AgentWork {
                kind: Default::default(),
                namespace: "ns".into(),
                workload: "db".into(),
                point: p.into(),
                state,
                claims: claims.iter().map(|c| c.to_string()).collect(),
                consistency: "FileLevel".into(),
                bytes_done: 10,
                bytes_total: 20,
                stored_bytes: 5,
                message: if state == WorkState::Failed {
                    "disk full".into()
                } else {
                    String::new()
                },
                owner: String::new(),
            })
            .collect(),
        queued: Default::default(),
    }
}

fn attempted(started: i64) -> ReplicatedWorkloadStatus {
    ReplicatedWorkloadStatus {
        last_attempt: Some(PointAttempt {
            id: "p0".into(),
            started: at(started),
            consistency: "CrashConsistent".into(),
            succeeded: true,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn decide_at(status: &ReplicatedWorkloadStatus, agents: &[AgentRegistration], now: i64) -> Step {
    decide(
        ("ns", "db"),
        &schedule(None),
        status,
        None,
        true,
        &volumes(),
        agents,
        at(now),
    )
}

#[test]
fn the_first_point_starts_at_once_and_the_next_one_interval_later() {
    let none = ReplicatedWorkloadStatus::default();
    assert_eq!(
        decide_at(&none, &[], 0),
        Step::Start {
            consistency: "CrashConsistent",
            missed: 0
        }
    );
    assert_eq!(
        decide_at(&attempted(0), &[], 10),
        Step::Idle { next: at(30) }
    );
    assert_eq!(
        decide_at(&attempted(0), &[], 30),
        Step::Start {
            consistency: "CrashConsistent",
            missed: 0
        }
    );
    // Started 95 s after the last point: the points due at 30 and 60 were missed.
    assert_eq!(
        decide_at(&attempted(0), &[], 95),
        Step::Start {
            consistency: "CrashConsistent",
            missed: 2
        }
    );
}

#[test]
fn a_request_starts_a_point_before_it_is_due_once() {
    let mut status = attempted(0);
    let ask = |status: &ReplicatedWorkloadStatus, token| {
        decide(
            ("ns", "db"),
            &schedule(None),
            status,
            token,
            true,
            &volumes(),
            &[],
            at(10),
        )
    };
    assert!(matches!(
        ask(&status, Some("1")),
        Step::Start { missed: 0, .. }
    ));
    status.handled_point_request = Some("1".into());
    assert!(matches!(ask(&status, Some("1")), Step::Idle { .. }));
    assert!(matches!(ask(&status, None), Step::Idle { .. }));
}

#[test]
fn nothing_starts_while_the_workload_is_not_ready() {
    let s = decide(
        ("ns", "db"),
        &schedule(None),
        &ReplicatedWorkloadStatus::default(),
        None,
        false,
        &volumes(),
        &[],
        at(0),
    );
    assert!(matches!(s, Step::Idle { .. }));
}

#[test]
fn app_consistent_points_come_at_their_own_frequency() {
    let mut status = attempted(0);
    status.latest_app_consistent_point = Some(PointRef {
        id: "a".into(),
        time: at(0),
        replicated: true,
        consistency: "AppConsistent".into(),
    });
    let app = |now| {
        decide(
            ("ns", "db"),
            &schedule(Some(120)),
            &status,
            None,
            true,
            &volumes(),
            &[],
            at(now),
        )
    };
    assert!(matches!(
        app(30),
        Step::Start {
            consistency: "CrashConsistent",
            ..
        }
    ));
    assert!(matches!(
        app(120),
        Step::Start {
            consistency: "AppConsistent",
            ..
        }
    ));
}

#[test]
fn a_point_finishes_when_reports_cover_every_claim() {
    let mut status = ReplicatedWorkloadStatus {
        point_in_progress: Some(point("p1", 0)),
        ..Default::default()
    };
    let half = [
        agent("n1", 0, vec![("p1", WorkState::Done, &["data-0"])]),
        agent("n2", 0, vec![("p1", WorkState::Running, &["data-1"])]),
    ];
    assert_eq!(
        decide_at(&status, &half, 5),
        Step::Wait {
            bytes_done: 20,
            bytes_total: 40
        }
    );
    let all = [
        agent("n1", 0, vec![("p1", WorkState::Done, &["data-0"])]),
        agent("n2", 0, vec![("p1", WorkState::Done, &["data-1"])]),
        // Reports about other points or workloads are not counted.
        agent("n3", 0, vec![("p0", WorkState::Failed, &["data-1"])]),
    ];
    assert_eq!(
        decide_at(&status, &all, 5),
        Step::Finish {
            parts: vec!["n1".into(), "n2".into()],
            stored_bytes: 10
        }
    );
    status
        .point_in_progress
        .as_mut()
        .unwrap()
        .claims
        .push("data-2".into());
    assert!(matches!(decide_at(&status, &all, 5), Step::Wait { .. }));
}

#[test]
fn a_point_fails_with_the_agents_reason_a_lost_agent_or_a_timeout() {
    let status = ReplicatedWorkloadStatus {
        point_in_progress: Some(point("p1", 0)),
        ..Default::default()
    };
    let failed = [agent("n1", 0, vec![("p1", WorkState::Failed, &["data-0"])])];
    let Step::Fail { reason, message } = decide_at(&status, &failed, 5) else {
        panic!("expected a failure")
    };
    assert_eq!(reason, R::CaptureFailed);
    assert!(
        message.contains("node n1") && message.contains("disk full"),
        "{message}"
    );

    let lost = [
        agent("n1", 0, vec![("p1", WorkState::Done, &["data-0"])]),
        agent("n2", -40, vec![("p1", WorkState::Running, &["data-1"])]),
    ];
    let Step::Fail { reason, message } = decide_at(&status, &lost, 5) else {
        panic!("expected a failure")
    };
    assert_eq!(reason, R::AgentLost);
    assert!(
        message.contains("n2") && message.contains("data-1"),
        "{message}"
    );

    assert!(matches!(decide_at(&status, &[], 60), Step::Wait { .. }));
    assert!(matches!(
        decide_at(&status, &[], 121),
        Step::Fail {
            reason: R::CaptureFailed,
            ..
        }
    ));
}

#[test]
fn rpo_is_met_up_to_twice_the_frequency() {
    let mut status = ReplicatedWorkloadStatus::default();
    let s = schedule(None);
    let (c, flips) = replication_conditions(&status, Some(&s), None, false, at(0));
    assert_eq!(c[2].reason, "RPONotMeasured");
    assert_eq!(flips, None);
    status.latest_replicated_point = Some(PointRef {
        id: "p".into(),
        time: at(0),
        replicated: true,
        consistency: "FileLevel".into(),
    });
    let (c, flips) = replication_conditions(&status, Some(&s), None, false, at(60));
    assert_eq!(
        (c[1].reason.as_str(), c[2].reason.as_str()),
        ("RecoveryPointReplicated", "RPOWithinTarget")
    );
    assert_eq!(flips, Some(at(61)));
    let (c, _) = replication_conditions(&status, Some(&s), None, false, at(61));
    assert_eq!(c[2].reason, "RPOExceeded");
    assert_eq!(rpo_seconds(&status, at(61)), Some(61));
}

#[test]
fn an_unsupported_freeze_is_said_not_hidden() {
    let status = ReplicatedWorkloadStatus {
        latest_point: Some(PointRef {
            id: "p".into(),
            time: at(0),
            replicated: true,
            consistency: "FileLevel".into(),
        }),
        ..Default::default()
    };
    let (c, _) = replication_conditions(&status, None, None, true, at(1));
    assert_eq!(
        (c[0].reason.as_str(), c[0].is_true()),
        ("FreezeNeedsSnapshots", true)
    );
    assert!(
        c[0].message.contains("freezeFilesystems"),
        "{}",
        c[0].message
    );
}

/// A point that a live agent says waits on its node for a capture slot waits its turn: not
/// given up as never started, nor as stalled while another node's part is done, until the
/// queue's timeout, which names the node. A lapsed registration's queue, or no queue at all,
/// holds nothing.
#[test]
fn a_point_queued_at_a_live_agent_waits_its_turn_up_to_the_queue_timeout() {
    let mut status = ReplicatedWorkloadStatus {
        point_in_progress: Some(point("20261203T182934000Z-08fced59", 0)),
        ..Default::default()
    };
    let late = QUEUE_TIMEOUT.as_secs() as i64 - 1;
    let queued_at = |node: &str, renewed: i64| {
        let mut busy = agent(node, renewed, vec![]);
        busy.queued = ["0badcafe", "08fced59"].map(String::from).into();
        busy
    };
    let queued = |renewed: i64| queued_at("n1", renewed);
    assert!(matches!(
        decide_at(&status, &[queued(late)], late),
        Step::Wait { .. }
    ));
    // n2's part is done and its bytes stop moving; n1's part is still queued.
    let done_elsewhere = agent(
        "n2",
        late,
        vec![("20261203T182934000Z-08fced59", WorkState::Done, &["data-1"])],
    );
    status.point_in_progress.as_mut().unwrap().last_progress =
        Some(crate::api::workload::ProgressMark {
            bytes_done: 10,
            time: at(0),
        });
    assert!(matches!(
        decide_at(&status, &[queued(late), done_elsewhere.clone()], late),
        Step::Wait { .. }
    ));
    let end = late + 2;
    let Step::Fail { reason, message } = decide_at(&status, &[queued(end), done_elsewhere], end)
    else {
        panic!("the queue's wait is bounded")
    };
    assert_eq!(reason, R::CaptureFailed);
    assert!(
        message.contains("in the queue of the agent on node n1"),
        "{message}"
    );
    // Not queued, or queued on a registration that lapsed (a reader's node that went away):
    // never started after 120 s.
    status.point_in_progress.as_mut().unwrap().last_progress = None;
    let mut idle = queued(200);
    idle.queued.remove("08fced59");
    for agents in [vec![idle], vec![queued_at("n3", 100)]] {
        let Step::Fail { reason, message } = decide_at(&status, &agents, 200) else {
            panic!("a point no live agent started nor queued is given up")
        };
        assert_eq!(reason, R::CaptureFailed);
        assert!(message.contains("no agent started reading"), "{message}");
    }
}

#[test]
fn a_point_whose_reports_stop_moving_fails_naming_node_and_claim() {
    let mut status = ReplicatedWorkloadStatus {
        point_in_progress: Some(point("p1", 0)),
        ..Default::default()
    };
    // n1 is done with data-0; n2 reports Running on data-1 and never moves (10 of 20 bytes each).
    let stuck = [
        agent("n1", 1000, vec![("p1", WorkState::Done, &["data-0"])]),
        agent("n2", 1000, vec![("p1", WorkState::Running, &[])]),
    ];
    let stall = STALL_TIMEOUT.as_secs() as i64;
    assert!(matches!(
        decide_at(&status, &stuck, 5),
        Step::Wait { bytes_done: 20, .. }
    ));
    // The operator recorded the progress mark when the bytes last changed, at 30 s.
    status.point_in_progress.as_mut().unwrap().last_progress =
        Some(crate::api::workload::ProgressMark {
            bytes_done: 20,
            time: at(30),
        });
    assert!(matches!(
        decide_at(&status, &stuck, 30 + stall),
        Step::Wait { .. }
    ));
    let Step::Fail { reason, message } = decide_at(&status, &stuck, 31 + stall) else {
        panic!("a point without progress for the stall timeout fails")
    };
    assert_eq!(reason, R::CaptureStalled);
    assert!(
        message.contains("claim data-1 on node n2") && !message.contains("data-0"),
        "{message}"
    );
    // Moving reports keep it alive: more bytes than the mark says.
    status.point_in_progress.as_mut().unwrap().last_progress =
        Some(crate::api::workload::ProgressMark {
            bytes_done: 15,
            time: at(30),
        });
    assert!(matches!(
        decide_at(&status, &stuck, 31 + stall),
        Step::Wait { bytes_done: 20, .. }
    ));
    // After the failure the next point follows the schedule: due once one interval after the
    // failed one started, not retried at once.
    let failed = ReplicatedWorkloadStatus {
        last_attempt: Some(PointAttempt {
            id: "p1".into(),
            started: at(31 + stall),
            consistency: "CrashConsistent".into(),
            succeeded: false,
            message,
        }),
        ..Default::default()
    };
    assert_eq!(
        decide_at(&failed, &stuck, 32 + stall),
        Step::Idle {
            next: at(61 + stall)
        }
    );
}

#[test]
fn durations_at_the_end_of_time_never_panic() {
    let huge = Schedule {
        crash: Duration::from_secs(u64::MAX),
        app: Some(Duration::MAX),
        retention: Duration::MAX,
    };
    let status = attempted(0);
    let step = decide(
        ("ns", "db"),
        &huge,
        &status,
        None,
        true,
        &volumes(),
        &[],
        at(10),
    );
    assert_eq!(
        step,
        Step::Idle {
            next: Timestamp::MAX
        }
    );
    let mut replicated = status.clone();
    replicated.latest_replicated_point = Some(PointRef {
        id: "p0".into(),
        time: at(0),
        replicated: true,
        consistency: "CrashConsistent".into(),
    });
    let (_, flips) = replication_conditions(&replicated, Some(&huge), None, false, at(10));
    assert_eq!(flips, Some(Timestamp::MAX));
}

#[test]
fn policies_below_the_admission_minimums_are_refused_not_run() {
    let policy = |crash: &str, app: &str, retention: &str| ReplicationPolicy {
        crash_consistent_frequency: crash.into(),
        app_consistent_frequency: app.into(),
        recovery_point_retention: retention.into(),
    };
    assert!(Schedule::from_policy(&policy("30s", "1m", "1m"), true).is_ok());
    for (p, field) in [
        (policy("0s", "off", "1h"), "crashConsistentFrequency"),
        (policy("5m", "0ms", "1h"), "appConsistentFrequency"),
        (policy("5m", "off", "0s"), "recoveryPointRetention"),
    ] {
        let e = Schedule::from_policy(&p, true).unwrap_err();
        assert!(
            e.starts_with(&format!("replicationPolicy.{field}: ")) && e.contains("minimum"),
            "{e}"
        );
    }
}
