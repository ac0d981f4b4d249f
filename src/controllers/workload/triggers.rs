//! What makes protected workloads reconcile besides their own changes: their vault changing or
//! going away, a Failover of theirs (one that starts stops their points), an agent's
//! registration on a node they use (its reports move a point on), and their own pods.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::{DeserializeGuard, PartialObjectMeta};

use crate::api::registration::NODE_LABEL;
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};
use crate::controllers::triggers::{Cached, Ref, matching, readable};

/// The workloads protected in `vault`.
pub fn of_vault(
    vault: &DeserializeGuard<RecoveryVault>,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let (ns, name) = (vault.namespace(), vault.name_any());
    matching(workloads, |w| {
        w.namespace() == ns && w.spec.vault_name == name
    })
}

/// The workload a Failover fails over (none for a failover from a vault: no ReplicatedWorkload
/// of this cluster is its subject).
pub fn of_failover(failover: &DeserializeGuard<Failover>) -> Option<Ref<ReplicatedWorkload>> {
    readable(failover)
        .filter(|f| f.spec.vault_name.is_none())
        .map(|f| {
            Ref::<ReplicatedWorkload>::new(&f.spec.workload_name)
                .within(&f.namespace().unwrap_or_default())
        })
}

/// The workloads an agent's registration concerns: those with a volume on its node, those not
/// yet resolved, and those with a point in flight (its reports may come from any node: reader
/// pods run where the snapshot is).
pub fn on_node(
    registration: &DeserializeGuard<Lease>,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let node = registration
        .labels()
        .get(NODE_LABEL)
        .cloned()
        .unwrap_or_default();
    matching(workloads, |w| {
        w.status.as_ref().is_none_or(|s| {
            s.point_in_progress.is_some()
                || s.volumes.is_empty()
                || s.volumes
                    .iter()
                    .any(|v| v.node.as_deref() == Some(node.as_str()))
        })
    })
}

/// The workload a pod belongs to: its StatefulSet's, or its Deployment's (a Deployment's
/// pods belong to a ReplicaSet named `<deployment>-<hash>`).
pub fn of_pod(
    pod: &PartialObjectMeta<Pod>,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let owners: Vec<(&str, &str)> = pod
        .owner_references()
        .iter()
        .filter_map(|o| match o.kind.as_str() {
            "StatefulSet" => Some(("StatefulSet", o.name.as_str())),
            "ReplicaSet" => o.name.rsplit_once('-').map(|(d, _)| ("Deployment", d)),
            _ => None,
        })
        .collect();
    let ns = pod.namespace();
    matching(workloads, |w| {
        w.namespace() == ns
            && owners.iter().any(|(kind, name)| {
                *kind == w.spec.workload_ref.kind.as_str() && *name == w.spec.workload_ref.name
            })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controllers::triggers::fixtures::{cached, malformed, names, vault};

    fn workload(
        ns: &str,
        name: &str,
        vault: &str,
        kind: &str,
        status: Value,
    ) -> Cached<ReplicatedWorkload> {
        cached(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"vaultName": vault, "workloadRef": {"kind": kind, "name": name}},
            "status": status,
        }))
    }

    fn registration(node: Option<&str>) -> DeserializeGuard<Lease> {
        let labels = node.map_or(json!({}), |n| json!({ NODE_LABEL: n }));
        DeserializeGuard(Ok(serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "agent", "namespace": "site-recovery-system", "labels": labels},
        }))
        .unwrap()))
    }

    fn pod(ns: &str, owners: Value) -> PartialObjectMeta<Pod> {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": ns, "ownerReferences": owners}}),
        )
        .unwrap()
    }

    fn owner(kind: &str, name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u"})
    }

    #[test]
    fn a_vault_change_reconciles_the_workloads_it_protects_in_its_namespace() {
        let workloads = [
            workload("apps", "db", "vault", "StatefulSet", json!({})),
            workload("apps", "web", "other", "Deployment", json!({})),
            workload("prod", "db", "vault", "StatefulSet", json!({})),
            malformed("apps", "broken"),
        ];
        assert_eq!(
            names(&of_vault(&vault("apps", "vault"), &workloads)),
            ["apps/db"]
        );
        assert!(of_vault(&vault("apps", "none"), &workloads).is_empty());
    }

    #[test]
    fn a_failover_reconciles_its_workload_and_a_malformed_one_nothing() {
        let failover = DeserializeGuard::<Failover>(Ok(serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": "fo", "namespace": "apps"},
            "spec": {"workloadName": "db", "recoveryPoint": {"latest": true}},
        }))
        .unwrap()));
        let got = of_failover(&failover).expect("the failover's workload");
        assert_eq!(
            (got.namespace.as_deref(), got.name.as_str()),
            (Some("apps"), "db")
        );
        assert!(of_failover(&malformed::<Failover>("apps", "bad")).is_none());
    }

    #[test]
    fn a_registration_reconciles_the_workloads_on_its_node_unresolved_ones_and_points_in_flight() {
        let on = |node: &str| json!({"volumes": [{"claimName": "data-db-0", "node": node}]});
        let workloads = [
            workload("apps", "on-a1", "v", "StatefulSet", on("node-a1")),
            workload("apps", "on-b1", "v", "StatefulSet", on("node-b1")),
            workload("apps", "new", "v", "StatefulSet", Value::Null),
            workload(
                "apps",
                "unresolved",
                "v",
                "StatefulSet",
                json!({"volumes": []}),
            ),
            workload(
                "apps",
                "in-flight",
                "v",
                "StatefulSet",
                json!({"volumes": [{"claimName": "c", "node": "node-b1"}], "pointInProgress": {
                    "id": "p", "consistency": "CrashConsistent", "method": "Live",
                    "started": "2024-01-01T00:00:00Z", "claims": ["c"]}}),
            ),
            malformed("apps", "broken"),
        ];
        assert_eq!(
            names(&on_node(&registration(Some("node-a1")), &workloads)),
            [
                "apps/on-a1",
                "apps/new",
                "apps/unresolved",
                "apps/in-flight"
            ]
        );
        // A registration without a node label concerns only those any node may report on.
        assert_eq!(
            names(&on_node(&registration(None), &workloads)),
            ["apps/new", "apps/unresolved", "apps/in-flight"]
        );
    }

    #[test]
    fn a_pod_reconciles_the_workload_that_owns_it() {
        let workloads = [
            workload("apps", "db", "v", "StatefulSet", json!({})),
            workload("apps", "web", "v", "Deployment", json!({})),
            workload("apps", "api-v2", "v", "Deployment", json!({})),
            workload("prod", "db", "v", "StatefulSet", json!({})),
        ];
        let of = |ns: &str, owners: Value| names(&of_pod(&pod(ns, owners), &workloads));
        assert_eq!(of("apps", json!([owner("StatefulSet", "db")])), ["apps/db"]);
        assert_eq!(
            of("apps", json!([owner("ReplicaSet", "web-5d9f8")])),
            ["apps/web"]
        );
        // A Deployment's name may hold dashes: only the ReplicaSet's hash is cut.
        assert_eq!(
            of("apps", json!([owner("ReplicaSet", "api-v2-7c4b")])),
            ["apps/api-v2"]
        );
        // Kind and namespace must both match; an unowned pod concerns nothing.
        assert!(of("apps", json!([owner("StatefulSet", "web")])).is_empty());
        assert_eq!(of("prod", json!([owner("StatefulSet", "db")])), ["prod/db"]);
        assert!(of("apps", json!([])).is_empty());
        assert!(of("apps", json!([owner("Job", "db")])).is_empty());
    }
}
