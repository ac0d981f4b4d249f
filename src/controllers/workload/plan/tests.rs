use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::api::registration::AgentRegistration;
use crate::controllers::context::NodeTopology;
use crate::controllers::workload::observe::{PodInfo, VaultSummary};

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn spec(volumes: Option<Vec<&str>>) -> ReplicatedWorkloadSpec {
    serde_json::from_value(json!({
        "vaultName": "vault",
        "workloadRef": {"kind": "StatefulSet", "name": "db"},
        "volumes": volumes,
    }))
    .unwrap()
}

fn reg(node: &str, renewed_ago: i64) -> AgentRegistration {
    AgentRegistration {
        node: node.into(),
        zone: None,
        region: None,
        version: Some("0.1.0".into()),
        renewed: Some(now() - SignedDuration::from_secs(renewed_ago)),
        duration_seconds: 30,
        work: vec![],
        queued: Default::default(),
    }
}

pub fn vault_spec() -> Box<crate::api::vault::RecoveryVaultSpec> {
    serde_json::from_value(json!({
        "cache": {"zone": "zone-a", "storage": {"filesystem": {"path": "/cache"}}},
        "target": {"zone": "zone-b", "storage": {"filesystem": {"path": "/target"}}},
        "encryption": {"keySecretRef": {"name": "key"}},
    }))
    .unwrap()
}

fn observed() -> Observed {
    Observed {
        name: "db".into(),
        vault: Some(Ok(VaultSummary {
            ready: true,
            message: "ok".into(),
            target_zone: Some("zone-b".into()),
            spec: vault_spec(),
        })),
        workload_found: true,
        pods: vec![
            PodInfo {
                name: "db-0".into(),
                node: Some("n1".into()),
                claims: vec!["data-db-0".into()],
            },
            PodInfo {
                name: "db-1".into(),
                node: Some("n2".into()),
                claims: vec!["data-db-1".into(), "logs-db-1".into()],
            },
        ],
        claims: vec!["data-db-0".into(), "data-db-1".into(), "logs-db-1".into()],
        nodes: vec![
            NodeTopology {
                name: "n1".into(),
                zone: Some("zone-a".into()),
                region: None,
            },
            NodeTopology {
                name: "n2".into(),
                zone: Some("zone-a".into()),
                region: None,
            },
        ],
        failover: None,
        registrations: vec![reg("n1", 5), reg("n2", 5)].into(),
    }
}

fn cond(p: &Plan, t: T) -> (ConditionStatus, String, String) {
    let c = find(&p.conditions, t.as_str()).expect("condition present");
    (c.status, c.reason.clone(), c.message.clone())
}

#[test]
fn table_of_workload_decisions() {
    type Tweak = fn(&mut Observed);
    type Case = (
        &'static str,
        Option<Vec<&'static str>>,
        Tweak,
        ConditionStatus,
        R,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "all resolved",
            None,
            |_| {},
            ConditionStatus::True,
            R::WorkloadReady,
            "3 volume(s)",
        ),
        (
            "vault missing",
            None,
            |o| o.vault = None,
            ConditionStatus::False,
            R::VaultNotFound,
            "spec.vaultName",
        ),
        (
            "vault not ready",
            None,
            |o| {
                o.vault = Some(Ok(VaultSummary {
                    ready: false,
                    message: "storage".into(),
                    target_zone: None,
                    spec: vault_spec(),
                }))
            },
            ConditionStatus::False,
            R::VaultNotReady,
            "storage",
        ),
        (
            "workload missing",
            None,
            |o| o.workload_found = false,
            ConditionStatus::False,
            R::WorkloadNotFound,
            "StatefulSet db not found",
        ),
        (
            "no pods",
            None,
            |o| o.pods.clear(),
            ConditionStatus::False,
            R::NoPods,
            "has no pods",
        ),
        (
            "no claims mounted",
            None,
            |o| o.pods.iter_mut().for_each(|p| p.claims.clear()),
            ConditionStatus::False,
            R::NoVolumes,
            "mount no PersistentVolumeClaim",
        ),
        (
            "claim object missing",
            None,
            |o| o.claims.retain(|c| c != "logs-db-1"),
            ConditionStatus::False,
            R::ClaimNotFound,
            "logs-db-1 does not exist",
        ),
        (
            "agent missing",
            None,
            |o| {
                o.registrations = o
                    .registrations
                    .iter()
                    .filter(|r| r.node != "n2")
                    .cloned()
                    .collect()
            },
            ConditionStatus::False,
            R::NotRegistered,
            "no agent is registered on node n2",
        ),
        (
            "agent lost",
            None,
            |o| {
                let mut regs = o.registrations.to_vec();
                regs[0] = reg("n1", 31);
                o.registrations = regs.into();
            },
            ConditionStatus::False,
            R::NotRegistered,
            "stopped renewing",
        ),
        (
            "a 64-character name cannot label the point's objects",
            None,
            |o| o.name = "w".repeat(64),
            ConditionStatus::False,
            R::InvalidSpec,
            "metadata.name: ",
        ),
        (
            "named volume missing",
            Some(vec!["cache"]),
            |_| {},
            ConditionStatus::False,
            R::ClaimNotFound,
            "spec.volumes[0]",
        ),
    ];
    for (name, volumes, tweak, status, reason, needle) in cases {
        let mut o = observed();
        tweak(&mut o);
        let p = plan(&spec(volumes), None, &o, now());
        let (s, r, m) = cond(&p, T::Ready);
        assert_eq!((s, r.as_str()), (status, reason.as_str()), "{name}: {m}");
        assert!(
            m.contains(needle),
            "{name}: {m:?} should mention {needle:?}"
        );
    }
}

#[test]
fn template_names_select_claims_of_every_replica() {
    let p = plan(&spec(Some(vec!["data"])), None, &observed(), now());
    let claims: Vec<_> = p.volumes.iter().map(|v| v.claim_name.as_str()).collect();
    assert_eq!(claims, ["data-db-0", "data-db-1"]);
    assert_eq!(p.volumes[0].node.as_deref(), Some("n1"));
    assert_eq!(p.volumes[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(p.source_zone.as_deref(), Some("zone-a"));
    assert_eq!(p.target_zone.as_deref(), Some("zone-b"));
}

#[test]
fn registration_reasons_and_requeue_at_expiry() {
    let mut o = observed();
    o.registrations = vec![reg("n1", 10), reg("n2", 25)].into();
    let p = plan(&spec(None), None, &o, now());
    assert_eq!(cond(&p, T::Registered).1, "AgentsRegistered");
    // n2 lapses 5s from now: the plan looks again right after.
    assert!(
        p.requeue <= std::time::Duration::from_secs(6),
        "{:?}",
        p.requeue
    );

    o.registrations = vec![reg("n1", 10)].into();
    assert_eq!(
        cond(&plan(&spec(None), None, &o, now()), T::Registered).1,
        "NoAgentOnNode"
    );
    o.registrations = vec![reg("n1", 10), reg("n2", 60)].into();
    assert_eq!(
        cond(&plan(&spec(None), None, &o, now()), T::Registered).1,
        "AgentLost"
    );
}

#[test]
fn unscheduled_pod_leaves_registration_unknown() {
    let mut o = observed();
    o.pods[1].node = None;
    let p = plan(&spec(None), None, &o, now());
    let (status, reason, _) = cond(&p, T::Registered);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::Unknown, "PodNotScheduled")
    );
}
