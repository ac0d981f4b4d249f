//! The failover machine as a table: (phase, what was observed) → (actions, facts, reason).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::api::ReplicatedWorkload;
use crate::api::conditions::find;
use crate::api::work::WorkState;
use crate::controllers::failover::observe::{CommitJob, Report, Source, VerifyJob, World};
use crate::controllers::failover::phase::phase;
use crate::controllers::objects::Holder;

const NOW: &str = "2026-06-01T12:10:00Z";

pub(crate) fn failover(mode: &str, commit: bool, status: Value) -> Failover {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "fo", "namespace": "apps", "uid": "u1", "generation": 1,
            "finalizers": [crate::controllers::failover::FINALIZER]},
        "spec": {"workloadName": "db", "mode": mode, "commit": commit},
        "status": status,
    }))
    .unwrap()
}

pub(crate) fn workload() -> ReplicatedWorkload {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"vaultName": "v", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
    }))
    .unwrap()
}

fn point(time: &str) -> ResolvedPoint {
    ResolvedPoint {
        id: format!("p-{time}"),
        time: time.parse().unwrap(),
        consistency: "CrashConsistent".into(),
        volumes: vec!["data-db-0".into(), "data-db-1".into()],
    }
}

fn restore(extra: Value) -> Value {
    let mut r = json!({"point": "p-2026-06-01T12:00:00Z", "started": "2026-06-01T12:01:00Z", "generation": 1,
        "volumes": [{"sourceClaim": "data-db-0", "targetClaim": "data-db-failover-0"},
                    {"sourceClaim": "data-db-1", "targetClaim": "data-db-failover-1"}]});
    json_patch::merge(&mut r, &extra);
    r
}

pub(crate) fn source(noted: Option<i32>, replicas: i32) -> Source {
    Source {
        object: serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "apps", "labels": {"app": "db"}},
            "spec": {"replicas": replicas, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": []}}},
        }))
        .unwrap(),
        noted,
        replicas: Some(replicas),
    }
}

fn world() -> World {
    World {
        workload: Some(workload()),
        ..Default::default()
    }
}

/// Decides for `f` in the phase its status names.
fn run(f: &Failover, chosen: Option<&ResolvedPoint>, world: &World) -> (Phase, Decision) {
    let status = f.status.clone().unwrap_or_default();
    let p = phase(f);
    let inputs = Inputs {
        failover: f,
        status: &status,
        chosen,
        target_zone: Some("zone-b"),
        image: "pause",
        now: NOW.parse().unwrap(),
    };
    (p, decide(p, &inputs, world))
}

fn reason(d: &Decision, t: &str) -> String {
    find(&d.conditions, t)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn message(d: &Decision, t: &str) -> String {
    find(&d.conditions, t)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The actions, each as a short word and the object's name.
fn actions(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .map(|a| match a {
            Action::AddFinalizer => "finalize".into(),
            Action::RemoveFinalizer => "unfinalize".into(),
            Action::Create(m) => format!("create {} {}", m.kind.name(), m.name),
            Action::Delete(n) => format!("delete {} {}", n.kind.name(), n.name),
            Action::TearDown(p) => format!("teardown {}", p.copy),
            Action::DeleteLabelled { namespace } => format!("delete-labelled {namespace}"),
            Action::ScaleSource { replicas, note, .. } => format!("scale {replicas} note {note:?}"),
            Action::RequestPoint { token, .. } => format!("request {token}"),
            Action::StartCommit => "commit".into(),
            Action::CreateOrUse(m) => format!("create-or-use {} {}", m.kind.name(), m.name),
            Action::Fence => "fence".into(),
            Action::DeleteCopy { name, .. } => format!("delete-copy {name}"),
        })
        .collect()
}

fn milestones(d: &Decision) -> Vec<&str> {
    d.facts
        .iter()
        .filter_map(|f| match f {
            Fact::Reached(m, _) | Fact::Again(m, _) => Some(m.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn preparing_makes_claims_and_writers_unless_a_name_is_taken() {
    let f = failover("Unplanned", false, json!({}));
    let chosen = point("2026-06-01T12:00:00Z");
    let (p, d) = run(&f, Some(&chosen), &world());
    assert_eq!(p, Phase::Preparing);
    assert_eq!(
        actions(&d),
        [
            "create PersistentVolumeClaim data-db-failover-0",
            "create Pod sr-restore-fo-0",
            "create PersistentVolumeClaim data-db-failover-1",
            "create Pod sr-restore-fo-1",
        ]
    );
    assert_eq!(milestones(&d), ["RestoreStarted"]);
    assert_eq!(reason(&d, "FailedOver"), "Restoring");
    assert!(
        d.facts
            .iter()
            .any(|x| matches!(x, Fact::Restore(Some(r)) if r.volumes.len() == 2))
    );

    for (holder, want) in [(Holder::Taken, "NameInUse"), (Holder::Going, "Restoring")] {
        let mut w = world();
        w.names.insert(
            ObjectName::new(Kind::Claim, Some("apps"), "data-db-failover-1"),
            holder,
        );
        let (_, d) = run(&f, Some(&chosen), &w);
        assert_eq!(actions(&d), Vec::<String>::new(), "{want}");
        assert!(d.facts.is_empty());
        assert_eq!(reason(&d, "FailedOver"), want);
        assert!(message(&d, "FailedOver").contains("data-db-failover-1"));
    }
}

#[test]
fn a_drill_makes_its_namespace_before_any_claim() {
    let f = failover("Test", false, json!({}));
    let (_, d) = run(&f, Some(&point("2026-06-01T12:00:00Z")), &world());
    let a = actions(&d);
    assert_eq!(a[0], "create Namespace fo-drill");
    assert_eq!(a[1], "create NetworkPolicy site-recovery-drill-isolation");
    assert_eq!(
        a[2], "create PersistentVolumeClaim data-db-0",
        "a drill keeps the names"
    );
}

#[test]
fn restore_reports_count_only_from_the_writer_pods_node() {
    let f = failover("Unplanned", false, json!({"restore": restore(json!({}))}));
    let report = |node: &str, state| Report {
        node: node.into(),
        claims: vec!["data-db-failover-0".into(), "data-db-failover-1".into()],
        state,
        message: "disk full".into(),
    };
    let mut w = world();
    w.writer_nodes = BTreeMap::from([
        ("data-db-failover-0".to_string(), "node-b1".to_string()),
        ("data-db-failover-1".to_string(), "node-b1".to_string()),
    ]);
    w.reports = vec![report("node-a1", WorkState::Done)];
    let (p, d) = run(&f, None, &w);
    assert_eq!(p, Phase::Restoring);
    assert!(milestones(&d).is_empty(), "a forged Done is ignored");
    assert_eq!(reason(&d, "FailedOver"), "Restoring");

    w.reports = vec![report("node-b1", WorkState::Done)];
    let (_, d) = run(&f, None, &w);
    assert_eq!(milestones(&d), ["Restored"]);

    w.reports = vec![report("node-b1", WorkState::Failed)];
    let (_, d) = run(&f, None, &w);
    assert_eq!(milestones(&d), ["RestoreFailed"]);
    assert!(d.events[0].warning);

    let failed = failover(
        "Unplanned",
        false,
        json!({"restore": restore(json!({"failed": "the agent on node node-b1 failed: disk full"}))}),
    );
    let (p, d) = run(&failed, None, &w);
    assert_eq!(p, Phase::RestoreFailed);
    assert_eq!(reason(&d, "FailedOver"), "RestoreFailed");
    assert_eq!(
        actions(&d),
        ["delete Pod sr-restore-fo-0", "delete Pod sr-restore-fo-1"]
    );
}

#[test]
fn starting_stops_the_source_once_and_starts_the_copy() {
    let done = restore(json!({"completed": "2026-06-01T12:05:00Z"}));
    let f = failover("Unplanned", false, json!({"restore": done}));
    let mut w = world();
    w.source = Some(source(None, 3));
    let (p, d) = run(&f, None, &w);
    assert_eq!(p, Phase::Starting);
    assert_eq!(
        actions(&d),
        [
            "delete Pod sr-restore-fo-0",
            "delete Pod sr-restore-fo-1",
            "scale 0 note Some(3)",
            "create StatefulSet db-failover",
        ]
    );
    assert!(d.facts.contains(&Fact::SourceReplicas(3)));
    assert_eq!(milestones(&d), ["WorkloadStarted"]);
    // Already scaled down by a pass whose status write was lost: the noted count stands.
    w.source = Some(source(Some(3), 0));
    let (_, d) = run(&f, None, &w);
    assert!(!actions(&d).iter().any(|a| a.starts_with("scale")));
    assert!(d.facts.contains(&Fact::SourceReplicas(3)));
    // The source is gone: nothing starts.
    w.source = None;
    let (_, d) = run(&f, None, &w);
    assert_eq!(reason(&d, "FailedOver"), "RestoreFailed");
    assert!(!actions(&d).iter().any(|a| a.starts_with("create")));
}

#[test]
fn a_drill_copies_the_services_and_leaves_the_source_alone() {
    let done = restore(json!({"completed": "2026-06-01T12:05:00Z"}));
    let f = failover("Test", false, json!({"restore": done}));
    let mut w = world();
    w.source = Some(source(None, 0));
    w.services = vec![
        serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}})).unwrap(),
        serde_json::from_value(json!({"metadata": {"name": "other"}, "spec": {"selector": {"app": "other"}}})).unwrap(),
    ];
    let (_, d) = run(&f, None, &w);
    let a = actions(&d);
    assert!(a.contains(&"create Service db".to_string()), "{a:?}");
    assert!(!a.contains(&"create Service other".to_string()));
    assert!(!a.iter().any(|x| x.starts_with("scale")), "{a:?}");
    assert!(
        d.facts.contains(&Fact::SourceReplicas(1)),
        "a stopped source's copy runs one"
    );
}

fn running(commit: bool, extra: Value) -> Failover {
    let mut status = json!({"restore": restore(json!({"completed": "2026-06-01T12:05:00Z"})),
        "targetWorkload": "db-failover", "sourceReplicas": 2, "resolvedPoint": point("2026-06-01T12:00:00Z")});
    json_patch::merge(&mut status, &extra);
    failover("Unplanned", commit, status)
}

#[test]
fn running_waits_for_the_pods_then_reports_failed_over() {
    let mut w = world();
    w.ready_pods = 1;
    let (p, d) = run(&running(false, json!({})), None, &w);
    assert_eq!(p, Phase::Running);
    assert_eq!(reason(&d, "FailedOver"), "WaitingForPods");
    assert!(d.busy);
    w.ready_pods = 2;
    let (_, d) = run(&running(false, json!({})), None, &w);
    assert_eq!(reason(&d, "FailedOver"), "FailedOver");
    assert!(
        message(&d, "FailedOver")
            .ends_with("set spec.commit to commit, or delete this Failover to roll back")
    );
    assert_eq!(milestones(&d), ["FailedOver"]);
    assert!(
        d.facts
            .iter()
            .any(|f| matches!(f, Fact::Rto(Some(r)) if *r == 540.0))
    );
    assert!(!d.busy);
}

#[test]
fn commit_runs_as_a_job_and_is_recorded_when_it_is_done() {
    let mut w = world();
    w.ready_pods = 2;
    let f = running(true, json!({}));
    let (_, d) = run(&f, None, &w);
    assert_eq!(actions(&d), ["commit"]);
    assert_eq!(reason(&d, "Committed"), "Committing");
    assert!(d.busy);
    w.commit = Some(CommitJob::Running);
    let (_, d) = run(&f, None, &w);
    assert!(actions(&d).is_empty());
    w.commit = Some(CommitJob::Failed("target location: timeout".into()));
    let (_, d) = run(&f, None, &w);
    assert_eq!(actions(&d), ["commit"], "a failed commit is tried again");
    assert!(message(&d, "Committed").contains("timeout; retrying"));
    w.commit = Some(CommitJob::Done(4));
    let (_, d) = run(&f, None, &w);
    assert_eq!(milestones(&d), ["FailedOver", "Committed"]);
    assert_eq!(reason(&d, "Committed"), "Committed");
    assert!(
        d.events
            .iter()
            .any(|e| e.note.contains("4 recovery point(s) deleted"))
    );
}

#[test]
fn after_the_commit_the_status_says_committed_without_looking_at_storage() {
    let committed = running(
        true,
        json!({"timeline": [{"step": "FailedOver", "time": NOW}, {"step": "Committed", "time": NOW}]}),
    );
    let mut w = world();
    w.ready_pods = 2;
    let (_, d) = run(&committed, None, &w);
    assert!(actions(&d).is_empty());
    assert_eq!(reason(&d, "Committed"), "Committed");
    assert!(
        message(&d, "FailedOver").ends_with("; committed"),
        "{}",
        message(&d, "FailedOver")
    );
    assert!(!d.busy);
    // A pod of the copy restarting does not undo the commit.
    w.ready_pods = 1;
    let (_, d) = run(&committed, None, &w);
    assert_eq!(reason(&d, "FailedOver"), "WaitingForPods");
    assert_eq!(reason(&d, "Committed"), "Committed");
    // The plan's Ready, from the chosen point (the target holds no point of the workload any
    // more), is True.
    let status = committed.status.clone().unwrap();
    let chosen = status.resolved_point.clone().unwrap();
    let observed = crate::controllers::failover::observe::Observed {
        workload: Some(Ok(crate::controllers::failover::observe::WorkloadSummary {
            points: Ok(vec![crate::api::workload::PointRef {
                id: chosen.id.clone(),
                time: chosen.time,
                replicated: true,
                consistency: chosen.consistency.clone(),
            }]),
            volumes: BTreeMap::from([(chosen.id.clone(), chosen.volumes.clone())]),
            source_zone: Some("zone-a".into()),
            target_zone: Some("zone-b".into()),
            statefulset: Some("db".into()),
        })),
        siblings: vec![],
    };
    let plan = crate::controllers::failover::plan::plan(
        &committed.spec,
        Some(&status),
        &observed,
        crate::controllers::failover::plan::Me {
            name: "fo",
            created: None,
        },
    );
    let ready = find(&plan.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::True, "FailoverReady")
    );
}

#[test]
fn a_drill_is_verified_by_its_job() {
    let mut status = json!({"restore": restore(json!({"completed": "2026-06-01T12:05:00Z"})),
        "targetWorkload": "db", "sourceReplicas": 1});
    let mut f = failover("Test", false, status.take());
    f.spec.verification = Some(crate::api::failover::Verification {
        image: "busybox".into(),
        command: vec!["true".into()],
        timeout: None,
    });
    let mut w = world();
    w.ready_pods = 1;
    let (_, d) = run(&f, None, &w);
    assert_eq!(actions(&d), ["create Job sr-verify-fo"]);
    assert_eq!(reason(&d, "Verified"), "Verifying");
    assert_eq!(reason(&d, "FailedOver"), "Drill");
    w.job = Some(VerifyJob::Failed("BackoffLimitExceeded".into()));
    let (_, d) = run(&f, None, &w);
    assert_eq!(reason(&d, "Verified"), "VerificationFailed");
    assert_eq!(milestones(&d), ["CopyReady", "VerificationFailed"]);
    w.job = Some(VerifyJob::Complete);
    let (_, d) = run(&f, None, &w);
    assert_eq!(reason(&d, "Verified"), "Verified");
    assert!(!d.busy);
}

#[test]
fn a_planned_failover_stops_the_source_then_waits_for_a_later_point() {
    let latest = point("2026-06-01T12:00:00Z");
    let f = failover("Planned", true, json!({}));
    let mut w = world();
    w.source = Some(source(None, 2));
    let (p, d) = run(&f, Some(&latest), &w);
    assert_eq!(p, Phase::StoppingSource);
    assert_eq!(actions(&d), ["scale 0 note Some(2)"]);
    assert!(
        milestones(&d).is_empty(),
        "stopped is a fact only once no pod runs"
    );
    w.source = Some(source(Some(2), 0));
    w.source_pods = 1;
    let (_, d) = run(&f, Some(&latest), &w);
    assert!(actions(&d).is_empty());
    assert!(message(&d, "FailedOver").contains("waiting for 1 pod(s) to stop"));
    w.source_pods = 0;
    let (_, d) = run(&f, Some(&latest), &w);
    assert_eq!(milestones(&d), ["SourceStopped"]);
    assert!(d.facts.contains(&Fact::SourceStopped(NOW.parse().unwrap())));

    let stopped = failover(
        "Planned",
        true,
        json!({"sourceStopped": "2026-06-01T12:05:00Z", "sourceReplicas": 2}),
    );
    let mut w = world();
    let (p, d) = run(&stopped, Some(&latest), &w);
    assert_eq!(p, Phase::FinalPoint);
    assert_eq!(
        actions(&d),
        ["create Pod sr-hold-fo-0", "create Pod sr-hold-fo-1"]
    );
    w.holders = vec![Some(true), Some(true)];
    let (_, d) = run(&stopped, Some(&latest), &w);
    assert_eq!(actions(&d), ["request planned-u1"]);
    assert_eq!(milestones(&d), ["FinalPointRequested"]);
    let last = point("2026-06-01T12:06:00Z");
    let (_, d) = run(&stopped, Some(&last), &w);
    assert_eq!(
        actions(&d),
        ["delete Pod sr-hold-fo-0", "delete Pod sr-hold-fo-1"]
    );
    assert_eq!(milestones(&d), ["FinalPointReplicated"]);
    assert!(d.facts.contains(&Fact::ResolvedPoint(Some(last))));
}

#[test]
fn a_new_point_between_the_phases_tears_down_and_starts_again() {
    let f = running(false, json!({}));
    let mut w = world();
    w.switch_to = Some(point("2026-06-01T11:00:00Z"));
    let (_, d) = run(&f, None, &w);
    assert_eq!(actions(&d), ["teardown db-failover"]);
    assert_eq!(milestones(&d), ["PointSwitched"]);
    assert!(d.facts.contains(&Fact::Restore(None)));
}

#[test]
fn the_finalizer_comes_first() {
    let mut f = failover("Unplanned", false, json!({}));
    f.metadata.finalizers = None;
    let (_, d) = run(&f, Some(&point("2026-06-01T12:00:00Z")), &world());
    assert_eq!(actions(&d)[0], "finalize");
}

/// A failover from a vault in a standby cluster: no ReplicatedWorkload, the workload as its
/// point describes it.
fn from_vault(status: Value, existing: Option<&str>) -> Failover {
    let mut f = failover("Unplanned", false, status);
    f.spec.vault_name = Some("v".into());
    f.spec.existing_objects = existing.map(|e| serde_json::from_value(json!(e)).unwrap());
    f
}

fn found(definition: Option<Result<crate::controllers::definition::Definition, String>>) -> World {
    let d = crate::controllers::definition::Definition {
        workload: json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "apps", "labels": {"app": "db"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": []}}}}),
        config_maps: vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}),
        ],
        services: vec![
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": {}}),
        ],
        claims: vec![
            json!({"name": "data-db-0", "spec": {"resources": {"requests": {"storage": "5Gi"}}}}),
        ],
        ..Default::default()
    };
    World {
        found: Some(crate::controllers::failover::observe::Found {
            vault: "v".into(),
            kind: crate::api::workload::WorkloadKind::StatefulSet,
            name: "db".into(),
            cluster: "cluster-a".into(),
            cluster_uid: "uid-a".into(),
            definition: definition.or(Some(Ok(d))),
        }),
        ..Default::default()
    }
}

#[test]
fn a_failover_from_a_vault_fences_first_and_restores_under_the_original_names() {
    let f = from_vault(json!({}), None);
    let chosen = point("2026-06-01T12:00:00Z");
    let (p, d) = run(&f, Some(&chosen), &found(None));
    assert_eq!(p, Phase::Preparing);
    assert_eq!(
        actions(&d),
        [
            "fence",
            "create PersistentVolumeClaim data-db-0",
            "create Pod sr-restore-fo-0",
            "create PersistentVolumeClaim data-db-1",
            "create Pod sr-restore-fo-1",
        ]
    );
    assert_eq!(milestones(&d), ["RestoreStarted", "Fenced"]);
    assert!(d.facts.iter().any(
        |x| matches!(x, Fact::Found(w) if w.kind == "StatefulSet" && w.cluster == "cluster-a")
    ));
}

#[test]
fn a_failover_into_another_namespace_makes_it_before_the_claims_and_restores_there() {
    // A platform vault's Failover in the operator's namespace, for a workload of `shop`.
    let mut f = from_vault(json!({}), None);
    f.metadata.namespace = Some("site-recovery".into());
    f.spec.workload_namespace = Some("shop".into());
    let chosen = point("2026-06-01T12:00:00Z");
    let (_, d) = run(&f, Some(&chosen), &found(None));
    assert_eq!(
        actions(&d),
        [
            "fence",
            "create-or-use Namespace shop",
            "create PersistentVolumeClaim data-db-0",
            "create Pod sr-restore-fo-0",
            "create PersistentVolumeClaim data-db-1",
            "create Pod sr-restore-fo-1",
        ]
    );
    let namespaces: Vec<Option<&str>> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Create(m) => Some(m.namespace.as_deref()),
            _ => None,
        })
        .collect();
    assert!(
        namespaces.iter().all(|n| *n == Some("shop")),
        "{namespaces:?}"
    );
    let restore = d.facts.iter().find_map(|x| match x {
        Fact::Restore(Some(r)) => Some(r),
        _ => None,
    });
    assert_eq!(
        restore.and_then(|r| r.namespace.as_deref()),
        Some("shop"),
        "the agents find the writer pods there"
    );
    // In its own namespace, a Failover makes none.
    let (_, d) = run(&from_vault(json!({}), None), Some(&chosen), &found(None));
    assert!(!actions(&d).iter().any(|a| a.contains("Namespace")));
}

#[test]
fn a_point_without_a_definition_creates_nothing_and_says_what_to_do() {
    let f = from_vault(json!({}), None);
    let chosen = point("2026-06-01T12:00:00Z");
    let world = found(Some(Err(
        "point p carries no workload definition (it was taken by an older version)".into(),
    )));
    let (_, d) = run(&f, Some(&chosen), &world);
    assert!(actions(&d).is_empty(), "{:?}", actions(&d));
    assert_eq!(reason(&d, "FailedOver"), "RestoreFailed");
    assert!(message(&d, "FailedOver").contains("older version"));
}

fn restored_from_vault(existing: Option<&str>) -> Failover {
    from_vault(
        json!({"restore": restore(json!({"completed": "2026-06-01T12:05:00Z",
            "volumes": [{"sourceClaim": "data-db-0", "targetClaim": "data-db-0"}]})),
            "found": {"kind": "StatefulSet", "name": "db", "cluster": "cluster-a", "clusterUid": "uid-a"}}),
        existing,
    )
}

fn with_source(mut w: World, replicas: Option<i32>, existing: bool) -> World {
    let mut s = source(None, replicas.unwrap_or(0));
    s.noted = Some(2);
    s.replicas = replicas;
    w.source = Some(s);
    if existing {
        w.names.insert(
            ObjectName::new(Kind::StatefulSet, Some("apps"), "db"),
            Holder::Taken,
        );
    }
    w
}

#[test]
fn a_found_workload_comes_back_as_itself_with_the_objects_its_pods_use() {
    let f = restored_from_vault(None);
    let (p, d) = run(&f, None, &with_source(found(None), Some(2), false));
    assert_eq!(p, Phase::Starting);
    assert_eq!(
        actions(&d),
        [
            "delete Pod sr-restore-fo-0",
            "create-or-use ConfigMap settings",
            "create-or-use Service db",
            "create StatefulSet db",
        ]
    );
    let made = d.actions.iter().find_map(|a| match a {
        Action::Create(m) if m.kind == Kind::StatefulSet => Some(m.body.clone()),
        _ => None,
    });
    let made = made.unwrap();
    assert_eq!(made["spec"]["replicas"], 2);
    assert_eq!(
        made["spec"]["selector"],
        json!({"matchLabels": {"app": "db"}}),
        "the selector is the workload's own"
    );
    assert_eq!(
        made["metadata"]["labels"]["siterecovery.io/failover-uid"],
        "u1"
    );
    assert!(d.facts.iter().any(|x| matches!(x, Fact::FoundObjects(o) if o == &["ConfigMap/settings".to_string(), "Service/db".to_string()])));
}

#[test]
fn a_found_workload_that_exists_here_at_zero_is_scaled_up_not_overwritten() {
    let f = restored_from_vault(None);
    let (_, d) = run(&f, None, &with_source(found(None), Some(0), true));
    assert_eq!(
        actions(&d),
        [
            "delete Pod sr-restore-fo-0",
            "create-or-use ConfigMap settings",
            "create-or-use Service db",
            "scale 2 note None",
        ]
    );
    assert!(d.facts.contains(&Fact::FoundExisted));
    // With existingObjects: Refuse, the failover waits instead, naming the object.
    let f = restored_from_vault(Some("Refuse"));
    let (_, d) = run(&f, None, &with_source(found(None), Some(0), true));
    assert_eq!(reason(&d, "FailedOver"), "NameInUse");
    assert!(message(&d, "FailedOver").contains("StatefulSet apps/db"));
}
