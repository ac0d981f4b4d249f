//! A failover's source stays down while its Failover holds it: the chart's admission policy
//! (`failover.holdSource`) refuses a GitOps tool's self-heal of the source's manifest, however
//! the tool writes it, and names the Failover; a rollback's scale-back is the operator's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};
use site_recovery::api::Failover;
use site_recovery::api::failover::FailoverMode;

use crate::operator::condition;
use crate::rig::{Cluster, Rig, eventually};
use crate::scenario::{Protected, finish, gone, protected, zones};

const HELD_BY: &str = "siterecovery.io/held-by-failover";
const NOTED: &str = "siterecovery.io/replicas-before-failover";

/// How a GitOps tool writes the manifest back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sync {
    /// `kubectl apply`: a strategic merge patch of what changed and the new last-applied.
    ClientSide,
    /// Server-side apply with force (Argo CD's ServerSideApply, Flux).
    ServerSide,
    /// A replace (PUT) of the manifest: annotations it does not carry are dropped.
    Replace,
}

const SYNCS: [Sync; 3] = [Sync::ClientSide, Sync::ServerSide, Sync::Replace];

/// A GitOps controller's ServiceAccount, allowed to read and write StatefulSets in `apps`.
async fn gitops_client(rig: &Rig) -> kube::Client {
    rig.apply_document(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "gitops", "namespace": "apps"},
        "rules": [{"apiGroups": ["apps"], "resources": ["statefulsets"],
            "verbs": ["get", "list", "watch", "patch", "update"]}],
    }))
    .await;
    rig.apply_document(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "gitops", "namespace": "apps"},
        "subjects": [{"kind": "ServiceAccount", "name": "argocd-application-controller", "namespace": "argocd"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gitops"},
    }))
    .await;
    rig.client_as("argocd", "argocd-application-controller")
}

/// One self-heal of StatefulSet `db` to `manifest`.
async fn sync(sets: &Api<StatefulSet>, manifest: &Value, how: Sync) -> Result<(), Status> {
    let written = match how {
        Sync::ClientSide => {
            let patch = json!({
                "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": manifest.to_string()}},
                "spec": {"replicas": manifest["spec"]["replicas"]},
            });
            sets.patch("db", &PatchParams::default(), &Patch::Strategic(patch))
                .await
        }
        Sync::ServerSide => {
            sets.patch(
                "db",
                &PatchParams::apply("argocd-controller").force(),
                &Patch::Apply(manifest),
            )
            .await
        }
        Sync::Replace => {
            let live = sets.get("db").await.map_err(|e| match e {
                kube::Error::Api(s) => *s,
                other => panic!("{other}"),
            })?;
            let mut replaced: StatefulSet = serde_json::from_value(manifest.clone()).unwrap();
            replaced.metadata.resource_version = live.metadata.resource_version;
            sets.replace("db", &PostParams::default(), &replaced).await
        }
    };
    match written {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(*s),
        Err(e) => panic!("{how:?}: {e}"),
    }
}

async fn source(rig: &Cluster) -> StatefulSet {
    Api::<StatefulSet>::namespaced(rig.client(), "apps")
        .get("db")
        .await
        .unwrap()
}

fn replicas(s: &StatefulSet) -> Option<i32> {
    s.spec.as_ref().and_then(|s| s.replicas)
}

fn annotation<'a>(s: &'a StatefulSet, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// What one attempt of the self-heal loop saw: how it wrote, what the server answered, and the
/// source's replicas right after.
type Attempt = (Sync, Result<(), Status>, Option<i32>);

#[tokio::test]
async fn a_gitops_self_heal_cannot_restart_the_source_a_planned_failover_holds() {
    let Protected {
        rig,
        dir,
        running,
        agents,
        failovers,
        ..
    } = protected().await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    let sets: Api<StatefulSet> = Api::namespaced(gitops_client(&rig).await, "apps");
    // The manifest in git: the source as it was created, with 2 replicas.
    let live = serde_json::to_value(source(&rig).await).unwrap();
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "apps", "labels": live["metadata"]["labels"]},
        "spec": live["spec"],
    });
    assert_eq!(manifest["spec"]["replicas"], 2);
    for how in SYNCS {
        sync(&sets, &manifest, how)
            .await
            .unwrap_or_else(|e| panic!("{how:?} before the failover: {}", e.message));
    }

    // The self-heal, every second, each way in turn, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let healing = tokio::spawn({
        let (stop, cluster, sets, manifest) = (
            stop.clone(),
            rig.cluster.clone(),
            sets.clone(),
            manifest.clone(),
        );
        async move {
            let mut attempts: Vec<Attempt> = Vec::new();
            for how in SYNCS.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let answer = sync(&sets, &manifest, *how).await;
                attempts.push((*how, answer, replicas(&source(&cluster).await)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            attempts
        }
    });

    let mut fo: Failover = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "planned", "namespace": "apps"},
        "spec": {"workloadName": "db", "recoveryPoint": {"latest": true}},
    }))
    .unwrap();
    fo.spec.mode = FailoverMode::Planned;
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    eventually(Duration::from_secs(90), "FailedOver=True", || async {
        let s = failovers.get("planned").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(())
    })
    .await;
    // A few more rounds with the copy running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let attempts = healing.await.unwrap();

    let held = source(&rig).await;
    assert_eq!(replicas(&held), Some(0), "the source is still stopped");
    assert_eq!(annotation(&held, HELD_BY), Some("planned"));
    assert_eq!(annotation(&held, NOTED), Some("2"));
    let first = attempts
        .iter()
        .position(|(_, answer, _)| answer.is_err())
        .unwrap_or_else(|| panic!("no self-heal was refused: {attempts:?}"));
    let expected = "statefulsets.apps \"db\" is forbidden: ValidatingAdmissionPolicy 'site-recovery-hold-failover-source' with binding 'site-recovery-hold-failover-source' denied request: StatefulSet db is held at 0 replicas by Failover planned: its copy runs in the target zone. Delete the Failover to roll back (the operator scales db back). After a commit the copy is the workload, and db stays held until the annotation siterecovery.io/held-by-failover is removed";
    for (how, answer, after) in &attempts[..first] {
        assert!(answer.is_ok(), "{how:?}: {answer:?}");
        assert_eq!(*after, Some(2), "{how:?}: not yet held, nothing to heal");
    }
    // From the stop on, every way of writing the manifest back was refused, and the source
    // never came back.
    for (how, answer, after) in &attempts[first..] {
        let refused = answer
            .as_ref()
            .expect_err(&format!("{how:?} went through while held"));
        assert_eq!(
            (
                refused.code,
                refused.reason.as_str(),
                refused.message.as_str()
            ),
            (403, "Forbidden", expected),
            "{how:?}"
        );
        assert_eq!(*after, Some(0), "{how:?}");
    }
    for how in SYNCS {
        assert!(
            attempts[first..].iter().any(|(h, _, _)| *h == how),
            "{how:?} was tried while held: {attempts:?}"
        );
    }
    println!(
        "{} self-heal(s) refused while Failover planned held db",
        attempts.len() - first
    );

    // Rolled back: the operator scales the source back (its write is not refused) and lifts
    // the hold in the same patch; from then on the GitOps tool may scale it again.
    failovers
        .delete("planned", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "rolled back", || async {
        gone(&failovers, "planned").await
    })
    .await;
    let back = source(&rig).await;
    assert_eq!(replicas(&back), Some(2), "the source is back");
    assert_eq!(annotation(&back, HELD_BY), None);
    assert_eq!(annotation(&back, NOTED), None);
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scaling a released source");
    assert_eq!(replicas(&source(&rig).await), Some(1));
    for how in SYNCS {
        sync(&sets, &manifest, how)
            .await
            .unwrap_or_else(|e| panic!("{how:?} after the rollback: {}", e.message));
    }
    assert_eq!(replicas(&source(&rig).await), Some(2));
    finish(&rig, dir.path(), running, agents).await;
}
