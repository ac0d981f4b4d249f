//! What makes Failovers reconcile besides their own changes: their workload changing or going
//! away, a sibling Failover of the same workload (only one may act), an agent's restore report,
//! and the pods a Failover made (writer, holder, the copy's): each moves it on at once instead
//! of at its next poll.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::{DeserializeGuard, PartialObjectMeta};

use crate::api::work::{FAILOVER_UID_LABEL, WORK_ANNOTATION, WorkKind, parse_reports};
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::triggers::{Cached, Ref, matching, readable};

/// The Failovers of `workload` in `namespace`.
fn failovers_of(
    namespace: Option<String>,
    workload: &str,
    failovers: &[Cached<Failover>],
) -> Vec<Ref<Failover>> {
    matching(failovers, |f| {
        Some(f.workload_namespace()) == namespace && f.spec.workload_name == workload
    })
}

/// The Failovers of a workload.
pub fn of_workload(
    workload: &DeserializeGuard<ReplicatedWorkload>,
    failovers: &[Cached<Failover>],
) -> Vec<Ref<Failover>> {
    failovers_of(workload.namespace(), &workload.name_any(), failovers)
}

/// Every Failover of the same workload as `failover` (itself included).
pub fn siblings(
    failover: &DeserializeGuard<Failover>,
    failovers: &[Cached<Failover>],
) -> Vec<Ref<Failover>> {
    match readable(failover) {
        Some(f) => failovers_of(
            Some(f.workload_namespace()),
            &f.spec.workload_name,
            failovers,
        ),
        None => vec![],
    }
}

/// The Failovers an agent's registration reports a restore for (by the Failover's uid, so
/// that a report never counts for a later Failover of the same name).
pub fn restoring(
    registration: &DeserializeGuard<Lease>,
    failovers: &[Cached<Failover>],
) -> Vec<Ref<Failover>> {
    let reports =
        parse_reports(readable(registration).and_then(|l| l.annotations().get(WORK_ANNOTATION)));
    matching(failovers, |f| {
        reports
            .iter()
            .any(|r| r.kind == WorkKind::Restore && Some(&r.owner) == f.metadata.uid.as_ref())
    })
}

/// The Failover a pod was made for (its uid label).
pub fn of_pod(pod: &PartialObjectMeta<Pod>, failovers: &[Cached<Failover>]) -> Vec<Ref<Failover>> {
    let uid = pod.labels().get(FAILOVER_UID_LABEL);
    matching(failovers, |f| {
        uid.is_some() && f.metadata.uid.as_ref() == uid
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controllers::triggers::fixtures::{cached, malformed, names};

    fn failover(ns: &str, name: &str, uid: &str, workload: &str) -> Cached<Failover> {
        cached(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"workloadName": workload, "recoveryPoint": {"latest": true}},
        }))
    }

    fn failovers() -> Vec<Cached<Failover>> {
        vec![
            failover("apps", "fo-1", "uid-1", "db"),
            failover("apps", "fo-2", "uid-2", "db"),
            failover("apps", "web-fo", "uid-3", "web"),
            failover("prod", "fo-1", "uid-4", "db"),
            malformed("apps", "broken"),
        ]
    }

    fn registration(annotations: Value) -> DeserializeGuard<Lease> {
        DeserializeGuard(Ok(serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "agent", "namespace": "site-recovery-system", "annotations": annotations},
        }))
        .unwrap()))
    }

    fn report(kind: &str, owner: &str) -> Value {
        json!({"kind": kind, "namespace": "apps", "workload": "fo-1", "point": "p",
            "state": "Running", "owner": owner})
    }

    #[test]
    fn a_workload_change_reconciles_its_failovers_in_its_namespace() {
        let workload = DeserializeGuard::<ReplicatedWorkload>(Ok(serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
            "metadata": {"name": "db", "namespace": "apps"},
            "spec": {"vaultName": "v", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
        }))
        .unwrap()));
        assert_eq!(
            names(&of_workload(&workload, &failovers())),
            ["apps/fo-1", "apps/fo-2"]
        );
        // A malformed workload still names itself: its Failovers learn it cannot be read.
        let broken = malformed::<ReplicatedWorkload>("apps", "web");
        assert_eq!(names(&of_workload(&broken, &failovers())), ["apps/web-fo"]);
    }

    #[test]
    fn a_failover_change_reconciles_its_siblings_and_itself() {
        let all = failovers();
        assert_eq!(names(&siblings(&all[0], &all)), ["apps/fo-1", "apps/fo-2"]);
        assert_eq!(names(&siblings(&all[2], &all)), ["apps/web-fo"]);
        assert!(siblings(&all[4], &all).is_empty());
    }

    #[test]
    fn a_restore_report_reconciles_the_failover_whose_uid_it_names() {
        let all = failovers();
        let with = |reports: Value| registration(json!({ WORK_ANNOTATION: reports.to_string() }));
        let got = restoring(&with(json!([report("Restore", "uid-2")])), &all);
        assert_eq!(names(&got), ["apps/fo-2"]);
        // A capture report, a report for a uid no Failover has, or none: nothing.
        assert!(restoring(&with(json!([report("Capture", "uid-1")])), &all).is_empty());
        assert!(restoring(&with(json!([report("Restore", "uid-9")])), &all).is_empty());
        assert!(restoring(&registration(json!({})), &all).is_empty());
        // A malformed annotation reads as no report.
        let garbage = registration(json!({ WORK_ANNOTATION: "not json" }));
        assert!(restoring(&garbage, &all).is_empty());
    }

    #[test]
    fn a_pod_reconciles_the_failover_it_was_made_for() {
        let all = failovers();
        let pod = |labels: Value| -> PartialObjectMeta<Pod> {
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "prod", "labels": labels}}),
            )
            .unwrap()
        };
        assert_eq!(
            names(&of_pod(&pod(json!({ FAILOVER_UID_LABEL: "uid-4" })), &all)),
            ["prod/fo-1"]
        );
        assert!(of_pod(&pod(json!({ FAILOVER_UID_LABEL: "uid-9" })), &all).is_empty());
        assert!(of_pod(&pod(json!({})), &all).is_empty());
    }
}
