//! What makes protected workloads reconcile besides their own changes: their vault changing or
//! going away, a Failover of theirs (one that starts stops their points), an agent's
//! registration on a node they use (its reports move a point on), and their own pods.

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::core::DeserializeGuard;

use crate::api::registration::{AgentRegistration, NODE_LABEL};
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

/// What each agent's registration said when it last changed. A renewal that changes nothing
/// but its renew time concerns no workload; one that changes an agent's reports concerns the
/// workloads they are about; a new registration, a new zone, or one renewed after it had lapsed
/// concerns every workload [`on_node`] names. Without this, every renewal of every agent
/// reconciled a third of the workloads, and the cost of a point grew with their number.
#[derive(Default)]
pub struct Registrations(std::sync::Mutex<std::collections::HashMap<String, Seen>>);

struct Seen {
    zone: Option<String>,
    expires: Option<jiff::Timestamp>,
    work: Vec<crate::api::work::AgentWork>,
}

impl Registrations {
    pub fn changed(
        &self,
        registration: &DeserializeGuard<Lease>,
        workloads: &[Cached<ReplicatedWorkload>],
    ) -> Vec<Ref<ReplicatedWorkload>> {
        let Some(now) = readable(registration).and_then(AgentRegistration::from_lease) else {
            return on_node(registration, workloads);
        };
        let seen = Seen {
            zone: now.zone.clone(),
            expires: now.expires(),
            work: now.work.clone(),
        };
        let before = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(now.node.clone(), seen);
        match before {
            Some(b)
                if b.zone == now.zone
                    && b.expires.is_some()
                    && now.renewed.is_some_and(|r| Some(r) <= b.expires) =>
            {
                let changed: std::collections::BTreeSet<(&str, &str)> = b
                    .work
                    .iter()
                    .filter(|w| !now.work.contains(w))
                    .chain(now.work.iter().filter(|w| !b.work.contains(w)))
                    .map(|w| (w.namespace.as_str(), w.workload.as_str()))
                    .collect();
                if changed.is_empty() {
                    return Vec::new();
                }
                matching(workloads, |w| {
                    let ns = w.namespace().unwrap_or_default();
                    changed.contains(&(ns.as_str(), w.name_any().as_str()))
                })
            }
            _ => on_node(registration, workloads),
        }
    }

    /// A deleted registration: every workload [`on_node`] names, and the node forgotten.
    pub fn deleted(
        &self,
        registration: &DeserializeGuard<Lease>,
        workloads: &[Cached<ReplicatedWorkload>],
    ) -> Vec<Ref<ReplicatedWorkload>> {
        if let Some(node) = registration.labels().get(NODE_LABEL) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(node);
        }
        on_node(registration, workloads)
    }
}

/// The workload a pod belongs to (its StatefulSet's, its Deployment's, its VirtualMachine's),
/// or holds claims for.
pub fn of_pod(
    pod: &impl kube::Resource,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let owners = crate::cache::owners_of(pod);
    matching(workloads, |w| {
        let ns = w.namespace().unwrap_or_default();
        owners.iter().any(|(namespace, kind, name)| {
            *namespace == ns
                && (*kind == crate::cache::HOLDER && *name == w.name_any()
                    || *kind == w.spec.workload_ref.kind.as_str()
                        && *name == w.spec.workload_ref.name)
        })
    })
}

/// The workloads that protect the StatefulSet or Deployment `object` (of `kind`).
pub fn of_workload_object(
    kind: crate::api::workload::WorkloadKind,
    object: &impl kube::Resource,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let (ns, name) = (object.meta().namespace.clone(), object.meta().name.clone());
    matching(workloads, |w| {
        w.namespace() == ns
            && w.spec.workload_ref.kind == kind
            && Some(&w.spec.workload_ref.name) == name.as_ref()
    })
}

/// The workloads a claim's coming or going may concern: those of its namespace that show it
/// among their volumes, or that are not yet Ready (one may be waiting for it).
pub fn of_claim(
    claim: &impl kube::Resource,
    workloads: &[Cached<ReplicatedWorkload>],
) -> Vec<Ref<ReplicatedWorkload>> {
    let (ns, name) = (claim.meta().namespace.clone(), claim.meta().name.clone());
    matching(workloads, |w| {
        w.namespace() == ns
            && w.status.as_ref().is_none_or(|s| {
                s.volumes
                    .iter()
                    .any(|v| Some(&v.claim_name) == name.as_ref())
                    || !s
                        .conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.is_true())
            })
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
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

    /// A registration Lease of `node`, renewed at `renewed` for 30 s, with `work` as its reports.
    fn lease(node: &str, renewed: &str, work: Value) -> DeserializeGuard<Lease> {
        use crate::api::registration::{COMPONENT_LABEL, COMPONENT_VALUE, lease_name};
        DeserializeGuard(Ok(serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node), "namespace": "site-recovery-system",
                "labels": {NODE_LABEL: node, COMPONENT_LABEL: COMPONENT_VALUE},
                "annotations": {crate::api::work::WORK_ANNOTATION: work.to_string()}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 30, "renewTime": renewed},
        }))
        .unwrap()))
    }

    #[test]
    fn a_renewal_that_changes_no_report_reconciles_nothing() {
        let on = |node: &str| json!({"volumes": [{"claimName": "c", "node": node}]});
        let workloads = [
            workload("apps", "a", "v", "Deployment", on("node-a1")),
            workload("apps", "b", "v", "Deployment", on("node-a1")),
        ];
        let report = |workload: &str, bytes: u64| {
            json!([{"kind": "Capture", "namespace": "apps", "workload": workload, "point": "p",
                "state": "Running", "bytesDone": bytes}])
        };
        let seen = Registrations::default();
        // First seen: every workload on the node.
        let first = lease("node-a1", "2026-01-01T00:00:00Z", json!([]));
        assert_eq!(
            names(&seen.changed(&first, &workloads)),
            ["apps/a", "apps/b"]
        );
        // Renewed in time, nothing else changed: nothing.
        let renewed = lease("node-a1", "2026-01-01T00:00:10Z", json!([]));
        assert!(seen.changed(&renewed, &workloads).is_empty());
        // A report on `a` appears, then moves on: only `a`, each time.
        let running = lease("node-a1", "2026-01-01T00:00:20Z", report("a", 1));
        assert_eq!(names(&seen.changed(&running, &workloads)), ["apps/a"]);
        let moved = lease("node-a1", "2026-01-01T00:00:25Z", report("a", 2));
        assert_eq!(names(&seen.changed(&moved, &workloads)), ["apps/a"]);
        // The same reports, renewed: nothing.
        let same = lease("node-a1", "2026-01-01T00:00:30Z", report("a", 2));
        assert!(seen.changed(&same, &workloads).is_empty());
        // Renewed after it had lapsed (the agent was lost): every workload on the node.
        let back = lease("node-a1", "2026-01-01T00:05:00Z", report("a", 2));
        assert_eq!(
            names(&seen.changed(&back, &workloads)),
            ["apps/a", "apps/b"]
        );
        // Deleted: every workload on the node, and the next registration is new again.
        assert_eq!(
            names(&seen.deleted(&back, &workloads)),
            ["apps/a", "apps/b"]
        );
        assert_eq!(
            names(&seen.changed(&same, &workloads)),
            ["apps/a", "apps/b"]
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

    #[test]
    fn a_holder_pod_reconciles_the_workload_it_holds_claims_for() {
        let workloads = [workload("apps", "db", "v", "StatefulSet", json!({}))];
        let holder: PartialObjectMeta<Pod> = serde_json::from_value(json!({"metadata": {
            "name": "hold-0", "namespace": "apps",
            "labels": {crate::api::work::HOLD_LABEL: "db"}}}))
        .unwrap();
        assert_eq!(names(&of_pod(&holder, &workloads)), ["apps/db"]);
    }

    #[test]
    fn a_deployment_or_stateful_set_reconciles_the_workloads_that_protect_it() {
        use crate::api::workload::WorkloadKind;
        let workloads = [
            workload("apps", "db", "v", "StatefulSet", json!({})),
            workload("apps", "web", "v", "Deployment", json!({})),
            workload("prod", "web", "v", "Deployment", json!({})),
        ];
        let object: PartialObjectMeta<Pod> =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "apps"}}))
                .unwrap();
        let of = |kind| names(&of_workload_object(kind, &object, &workloads));
        assert_eq!(of(WorkloadKind::Deployment), ["apps/web"]);
        assert!(of(WorkloadKind::StatefulSet).is_empty());
    }

    #[test]
    fn a_claim_reconciles_the_workloads_that_use_it_or_may_wait_for_it() {
        let ready = json!([{"type": "Ready", "status": "True", "reason": "Protected", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let workloads = [
            workload(
                "apps",
                "uses",
                "v",
                "Deployment",
                json!({"volumes": [{"claimName": "data"}], "conditions": ready}),
            ),
            workload(
                "apps",
                "other",
                "v",
                "Deployment",
                json!({"volumes": [{"claimName": "logs"}], "conditions": ready}),
            ),
            workload("apps", "waiting", "v", "Deployment", json!({})),
            workload(
                "prod",
                "uses",
                "v",
                "Deployment",
                json!({"volumes": [{"claimName": "data"}]}),
            ),
        ];
        let claim: PartialObjectMeta<Pod> =
            serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "apps"}}))
                .unwrap();
        assert_eq!(
            names(&of_claim(&claim, &workloads)),
            ["apps/uses", "apps/waiting"]
        );
    }
}
