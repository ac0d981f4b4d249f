//! Phase one of a failover end to end: the operator, the agents (the one in the target zone
//! restores) and the rig playing binder, scheduler, kubelet and StatefulSet controller.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use site_recovery::api::Failover;
use site_recovery::repository::Repository;
use site_recovery::storage::{Location, LocationSpec};

use crate::operator::{OPERATOR_NS, condition};
use crate::replication::{
    first_point, live_vault, protect, read_tree, replicated_point, request_point, setup,
    start_agent, write_version,
};
use crate::rig::{Rig, eventually};
use crate::scenario::{Protected, finish, gone, protected, zones};

fn failover(name: &str, point: serde_json::Value) -> Failover {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"workloadName": "db", "recoveryPoint": point},
    }))
    .unwrap()
}

async fn failover_objects(rig: &Rig) -> Vec<String> {
    let lp = ListParams::default().labels("siterecovery.io/failover");
    let mut out = Vec::new();
    for p in Api::<Pod>::namespaced(rig.client(), "apps")
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
    {
        out.push(format!("Pod/{}", p.metadata.name.unwrap()));
    }
    for c in Api::<PersistentVolumeClaim>::namespaced(rig.client(), "apps")
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
    {
        out.push(format!(
            "PersistentVolumeClaim/{}",
            c.metadata.name.unwrap()
        ));
    }
    if Api::<StatefulSet>::namespaced(rig.client(), "apps")
        .get_opt("db-failover")
        .await
        .unwrap()
        .is_some()
    {
        out.push("StatefulSet/db-failover".into());
    }
    out
}

async fn replicas(rig: &Rig, name: &str) -> Option<i32> {
    Api::<StatefulSet>::namespaced(rig.client(), "apps")
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|s| s.spec)
        .and_then(|s| s.replicas)
}

#[tokio::test]
async fn failover_to_an_older_point_brings_the_workload_up_in_the_target_zone_and_rolls_back() {
    let Protected {
        rig,
        dir,
        running,
        volumes,
        agents,
        workloads,
        content: first_content,
        first,
        failovers,
        ..
    } = protected().await;
    let first = first.id;
    let second_content = write_version(&volumes, 2);
    request_point(&workloads, "2").await;
    replicated_point(&workloads, "2", Duration::from_secs(60)).await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);

    failovers
        .create(
            &PostParams::default(),
            &failover("fo", json!({"id": first})),
        )
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(60), "FailedOver=True", || async {
        let s = failovers.get("fo").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    let steps: Vec<&str> = s.timeline.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "RestoreStarted",
            "Restored",
            "WorkloadStarted",
            "FailedOver"
        ]
    );
    let rto = s.rto_seconds.expect("the RTO is measured");
    println!(
        "RTO {rto:.1}s: {:?}",
        s.timeline
            .iter()
            .map(|t| (&t.step, t.time.to_string()))
            .collect::<Vec<_>>()
    );
    // The copy runs in the target zone on the restored claims, holding the chosen point.
    assert_eq!(
        replicas(&rig, "db").await,
        Some(0),
        "the source is scaled to zero"
    );
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    for (i, claim) in ["data-db-0", "data-db-1"].iter().enumerate() {
        let disk =
            crate::rig::failover::claim_disk(&rig, "apps", &format!("data-db-failover-{i}")).await;
        assert_eq!(
            read_tree(&disk),
            first_content[*claim],
            "{claim} restored from point {first}"
        );
    }
    let pod: Pod = Api::namespaced(rig.client(), "apps")
        .get("db-failover-0")
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-b1"));
    assert!(
        !failover_objects(&rig)
            .await
            .iter()
            .any(|o| o.starts_with("Pod/sr-restore")),
        "writer pods are removed"
    );

    // Before commit, another point: the copy is stopped, its claims restored again.
    failovers
        .patch(
            "fo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"recoveryPoint": {"id": null, "latest": true}}}),
            ),
        )
        .await
        .unwrap();
    let s = eventually(
        Duration::from_secs(60),
        "switched and FailedOver",
        || async {
            let s = failovers.get("fo").await.ok()?.status?;
            (s.restore.as_ref()?.point != first).then_some(())?;
            (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
        },
    )
    .await;
    assert!(s.timeline.iter().any(|t| t.step == "PointSwitched"));
    assert_eq!(
        s.resolved_point.as_ref().map(|p| &p.id),
        s.restore.as_ref().map(|r| &r.point)
    );
    for (i, claim) in ["data-db-0", "data-db-1"].iter().enumerate() {
        let disk =
            crate::rig::failover::claim_disk(&rig, "apps", &format!("data-db-failover-{i}")).await;
        assert_eq!(
            read_tree(&disk),
            second_content[*claim],
            "{claim} restored from the newer point"
        );
    }

    // Deleting the Failover before commit rolls back; the source's data is untouched.
    failovers.delete("fo", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(30), "rolled back", || async {
        gone(&failovers, "fo").await?;
        failover_objects(&rig).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        replicas(&rig, "db").await,
        Some(2),
        "the source is back at its replica count"
    );
    for (claim, dir) in &volumes {
        assert_eq!(
            read_tree(dir),
            second_content[claim],
            "{claim} is untouched"
        );
    }
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn a_restore_that_fails_verification_never_reaches_the_workload() {
    let Protected {
        rig,
        dir,
        running,
        agents,
        content: _,
        failovers,
        ..
    } = protected().await;
    running.stop().await;
    // Every pack in the target is damaged: nothing it holds authenticates any more.
    let mut stack = vec![dir.path().join("target/data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut bytes = std::fs::read(&p).unwrap();
                let at = bytes.len() / 3;
                bytes[at] ^= 0xff;
                std::fs::write(&p, bytes).unwrap();
            }
        }
    }
    let running = crate::operator::start_operator(&rig, false).await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    failovers
        .create(
            &PostParams::default(),
            &failover("fo", json!({"latest": true})),
        )
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(60), "RestoreFailed", || async {
        let s = failovers.get("fo").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.1 == "RestoreFailed").then_some(s)
    })
    .await;
    let (_, _, message) = condition(&s.conditions, "FailedOver").unwrap();
    assert!(
        message.contains("node-b1") && message.contains("not started"),
        "{message}"
    );
    assert_eq!(
        replicas(&rig, "db-failover").await,
        None,
        "no workload on damaged data"
    );
    assert_eq!(
        replicas(&rig, "db").await,
        Some(2),
        "the source was not stopped"
    );
    failovers.delete("fo", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(30), "cleaned up", || async {
        failover_objects(&rig).await.is_empty().then_some(())
    })
    .await;
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn commit_deletes_the_points_and_keeps_the_workload_in_the_target_zone() {
    let Protected {
        rig,
        dir,
        running,
        agents,
        workloads,
        content,
        failovers,
        ..
    } = protected().await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    let mut fo = failover("fo", json!({"latest": true}));
    fo.spec.commit = true;
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    // The operator dies once the restore has started; its successor carries on.
    eventually(Duration::from_secs(30), "restore started", || async {
        failovers.get("fo").await.ok()?.status?.restore.map(|_| ())
    })
    .await;
    running.task.abort();
    let running = crate::operator::start_operator(&rig, false).await;
    let s = eventually(Duration::from_secs(60), "Committed=True", || async {
        let s = failovers.get("fo").await.ok()?.status?;
        (condition(&s.conditions, "Committed")?.0 == "True").then_some(s)
    })
    .await;
    assert_eq!(condition(&s.conditions, "FailedOver").unwrap().0, "True");
    for location in ["cache", "target"] {
        let repo = Repository::open(
            Location::open(
                &LocationSpec::Filesystem(dir.path().join(location)),
                &Default::default(),
            )
            .unwrap(),
            &[7u8; 32],
        )
        .await
        .unwrap();
        assert!(
            repo.point_ids().await.unwrap().is_empty(),
            "{location} still holds points"
        );
    }
    // Replication of the workload stops, and it says where it runs and that it is unprotected.
    let w = eventually(Duration::from_secs(30), "workload committed", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (condition(&s.conditions, "Ready")?.1 == "FailoverCommitted").then_some(s)
    })
    .await;
    assert!(w.point_in_progress.is_none());
    let (_, _, message) = condition(&w.conditions, "Ready").unwrap();
    assert!(
        message.contains("runs as db-failover in zone zone-b"),
        "{message}"
    );
    let (protected, reason, _) = condition(&w.conditions, "Protected").unwrap();
    assert_eq!((protected, reason), ("False", "FailoverCommitted"));
    assert!(
        w.latest_replicated_point.is_none() && w.latest_point.is_none(),
        "no deleted point is shown"
    );
    assert_eq!(
        w.volumes.len(),
        2,
        "what was protected, and where, stays on record"
    );
    assert_eq!(w.target_zone.as_deref(), Some("zone-b"));
    // Deleting a committed Failover leaves the workload where it now runs.
    failovers.delete("fo", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(30), "Failover gone", || async {
        failovers.get_opt("fo").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    assert_eq!(replicas(&rig, "db").await, Some(0));
    let disk = crate::rig::failover::claim_disk(&rig, "apps", "data-db-failover-0").await;
    assert_eq!(read_tree(&disk), content["data-db-0"]);
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn the_plugin_fails_over_and_commits() {
    let Protected {
        rig,
        dir,
        running,
        agents,
        workloads,
        content: _,
        first: first_point,
        ..
    } = protected().await;
    let (first, first_time) = (first_point.id, first_point.time.to_string());
    let _cluster = zones(&rig, &[("zone-a", "node-a1"), ("zone-b", "node-b1")]);
    let plugin = dir.path().join("kubectl-siterecovery");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_site-recovery"), &plugin).unwrap();
    let kubeconfig = rig.kubeconfig(dir.path());
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&plugin);
        cmd.args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("SITE_RECOVERY_FILESYSTEM_ROOT", rig.storage_root.path());
        let shown = args.join(" ");
        async move {
            let out = cmd.output().await.unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            println!("$ kubectl siterecovery {shown}\n{err}");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                err,
            )
        }
    };
    // A drill first: verified by a command, then removed; the source runs on.
    let _drill_cluster = crate::rig::failover::run(
        &rig,
        "db-drill",
        BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]),
    );
    let (code, _, err) = run(&[
        "drill",
        "db",
        "-n",
        "apps",
        "--test-namespace",
        "db-drill",
        "--time",
        &first_time,
        "--timeout",
        "90s",
        "--",
        "true",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("drill verified"), "{err}");
    assert!(
        err.contains(&format!("restoring point {first}")),
        "the newest point at or before the time: {err}"
    );
    let (code, _, err) = run(&["cancel", "db-drill", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("removed with its namespace"), "{err}");
    assert_eq!(replicas(&rig, "db").await, Some(2));
    let (code, _, err) = run(&[
        "failover",
        "db",
        "-n",
        "apps",
        "--point-id",
        &first[..20],
        "--timeout",
        "90s",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("RestoreStarted") && err.contains("failed over in"),
        "{err}"
    );
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    // Cancelled, then started again: the second failover reuses the names the first one freed.
    let (code, _, err) = run(&["cancel", "db-failover", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(replicas(&rig, "db").await, Some(2), "the source is back");
    assert_eq!(replicas(&rig, "db-failover").await, None);
    let (code, _, err) = run(&[
        "failover",
        "db",
        "-n",
        "apps",
        "--planned",
        "--timeout",
        "90s",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("SourceStopped") && err.contains("FinalPointReplicated"),
        "{err}"
    );
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    let (code, _, err) = run(&["commit", "db-failover", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["cancel", "db-failover", "-n", "apps"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("is committed"), "{err}");
    let (code, _, err) = run(&["points", "db", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");

    // Re-protect (examples/reprotect.yaml, with this test's paths), then fail back.
    rig.create(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "vault-back", "namespace": "apps"},
        "spec": {
            "cache": {"zone": "zone-b", "storage": {"filesystem": {"path": dir.path().join("target")}}},
            "target": {"zone": "zone-a", "storage": {"filesystem": {"path": dir.path().join("cache")}}},
            "snapshotMethod": "Live",
            "encryption": {"keySecretRef": {"name": "vault-key"}},
        },
    }))
    .await;
    rig.create(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db-back", "namespace": "apps"},
        "spec": {"vaultName": "vault-back", "workloadRef": {"kind": "StatefulSet", "name": "db-failover"}},
    }))
    .await;
    eventually(Duration::from_secs(60), "re-protected", || async {
        let s = workloads.get("db-back").await.ok()?.status?;
        s.latest_replicated_point.as_ref()?;
        s.point_in_progress.is_none().then_some(())
    })
    .await;
    let (code, out, err) = run(&["status", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    println!("{out}");
    let (code, _, err) = run(&[
        "failover",
        "db-back",
        "-n",
        "apps",
        "--planned",
        "--name",
        "db-failback",
        "--timeout",
        "90s",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    // Back into the original StatefulSet, not a copy of the copy.
    assert_eq!(replicas(&rig, "db").await, Some(2));
    assert_eq!(replicas(&rig, "db-failover-failover").await, None);
    let (code, _, err) = run(&["commit", "db-failback", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    eventually(Duration::from_secs(30), "the copy deleted", || async {
        gone(
            &Api::<StatefulSet>::namespaced(rig.client(), "apps"),
            "db-failover",
        )
        .await
    })
    .await;
    finish(&rig, dir.path(), running, agents).await;
}

fn drill(name: &str, namespace: &str, command: &[&str]) -> Failover {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"workloadName": "db", "mode": "Test", "testNamespace": namespace,
            "verification": {"image": "busybox", "command": command}},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_drill_runs_a_verified_copy_in_its_own_namespace_and_leaves_the_source_alone() {
    let Protected {
        rig,
        dir,
        running,
        volumes,
        agents,
        workloads,
        content,
        first: point,
        failovers,
        ..
    } = protected().await;
    let point = point.id;
    rig.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "sql", "port": 5432}]}}))
        .await;
    // A NodePort Service selecting the pods: its copy must not claim the source's node port.
    rig.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db-public", "namespace": "apps"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.15", "selector": {"app": "db"},
            "ports": [{"name": "sql", "port": 5432, "nodePort": 30432}]}}))
        .await;
    // The source namespace enforces Pod Security "restricted" and has a quota and limits.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(rig.client())
        .patch(
            "apps",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "team": "payments"}}})),
        )
        .await
        .unwrap();
    rig.create(json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute", "namespace": "apps"},
        "spec": {"hard": {"requests.cpu": "4", "pods": "20"}}}))
        .await;
    rig.create(json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "defaults", "namespace": "apps"},
        "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}}]}}))
        .await;
    let zone_b = BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]);
    let _cluster = crate::rig::failover::run(&rig, "apps", zone_b.clone());
    let _drill_cluster = crate::rig::failover::run(&rig, "db-drill", zone_b.clone());

    failovers
        .create(
            &PostParams::default(),
            &drill("drill", "db-drill", &["true"]),
        )
        .await
        .unwrap();
    // The drill's namespace forbids what the source forbids, from before its first pod.
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(rig.client());
    let labels = eventually(Duration::from_secs(30), "the drill's namespace", || async {
        ns.get_opt("db-drill").await.ok()??.metadata.labels
    })
    .await;
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce-version")
            .map(String::as_str),
        Some("latest")
    );
    assert!(
        !labels.contains_key("team"),
        "only Pod Security labels are copied"
    );
    let quota = eventually(Duration::from_secs(30), "the quota copied", || async {
        Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(rig.client(), "db-drill")
            .get_opt("compute")
            .await
            .ok()?
    })
    .await;
    assert_eq!(
        quota.spec.unwrap().hard.unwrap()["pods"].0,
        "20",
        "the quota's limits are the source's"
    );
    let limits =
        Api::<k8s_openapi::api::core::v1::LimitRange>::namespaced(rig.client(), "db-drill")
            .get("defaults")
            .await
            .unwrap();
    assert_eq!(limits.spec.unwrap().limits[0].type_, "Container");
    let first_pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(rig.client(), "db-drill")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.clone())
        .min();
    if let Some(first) = first_pod {
        let made = |t: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.unwrap().0;
        let quota_made =
            Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(rig.client(), "db-drill")
                .get("compute")
                .await
                .unwrap()
                .metadata
                .creation_timestamp;
        assert!(
            made(quota_made) <= first.0,
            "the quota exists before the first pod"
        );
    }
    let s = eventually(Duration::from_secs(60), "Verified=True", || async {
        let s = failovers.get("drill").await.ok()?.status?;
        (condition(&s.conditions, "Verified")?.0 == "True").then_some(s)
    })
    .await;
    let (_, reason, message) = condition(&s.conditions, "FailedOver").unwrap();
    assert_eq!(reason, "Drill", "{message}");
    assert!(s.rto_seconds.is_some(), "a drill measures the RTO");
    assert_eq!(s.restore.as_ref().unwrap().point, point);
    // The copy runs under the source's names, in the drill's namespace, isolated.
    let drill_sets: Api<StatefulSet> = Api::namespaced(rig.client(), "db-drill");
    assert_eq!(
        drill_sets.get("db").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    for claim in ["data-db-0", "data-db-1"] {
        let disk = crate::rig::failover::claim_disk(&rig, "db-drill", claim).await;
        assert_eq!(read_tree(&disk), content[claim], "{claim} in the drill");
    }
    let policies = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        rig.client(),
        "db-drill",
    )
    .list(&Default::default())
    .await
    .unwrap();
    assert_eq!(policies.items.len(), 1, "the drill's namespace is isolated");
    assert!(
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(rig.client(), "db-drill")
            .get_opt("db")
            .await
            .unwrap()
            .is_some(),
        "the Service the StatefulSet names is copied"
    );
    let public = Api::<k8s_openapi::api::core::v1::Service>::namespaced(rig.client(), "db-drill")
        .get("db-public")
        .await
        .expect("the NodePort Service selecting the pods is copied")
        .spec
        .unwrap();
    assert_eq!(
        (
            public.ports.unwrap()[0].node_port,
            public.cluster_ip.as_deref()
        ),
        (None, None),
        "the copy allocates no node port and no cluster IP of the source's"
    );
    assert!(
        !crate::replication::events(&rig, "DrillVerified")
            .await
            .is_empty()
    );
    // The source runs on, and so does its replication.
    assert_eq!(replicas(&rig, "db").await, Some(2));
    assert_eq!(replicas(&rig, "db-failover").await, None);
    let content = write_version(&volumes, 2);
    request_point(&workloads, "during-drill").await;
    replicated_point(&workloads, "during-drill", Duration::from_secs(60)).await;

    // A drill whose verification fails says so; another drill of the workload waits its turn.
    failovers
        .create(
            &PostParams::default(),
            &drill("drill-2", "db-drill-2", &["false"]),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "DuplicateFailover", || async {
        let s = failovers.get("drill-2").await.ok()?.status?;
        (condition(&s.conditions, "Ready")?.1 == "DuplicateFailover").then_some(())
    })
    .await;
    failovers
        .delete("drill", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "drill removed", || async {
        gone(&failovers, "drill").await?;
        gone(
            &Api::<k8s_openapi::api::core::v1::Namespace>::all(rig.client()),
            "db-drill",
        )
        .await
    })
    .await;
    let _drill_cluster_2 = crate::rig::failover::run(&rig, "db-drill-2", zone_b);
    let s = eventually(Duration::from_secs(60), "VerificationFailed", || async {
        let s = failovers.get("drill-2").await.ok()?.status?;
        (condition(&s.conditions, "Verified")?.1 == "VerificationFailed").then_some(s)
    })
    .await;
    let (_, _, message) = condition(&s.conditions, "Verified").unwrap();
    assert!(message.contains("exited with 1"), "{message}");
    for claim in ["data-db-0", "data-db-1"] {
        let disk = crate::rig::failover::claim_disk(&rig, "db-drill-2", claim).await;
        assert_eq!(
            read_tree(&disk),
            content[claim],
            "{claim}: the newest point"
        );
    }
    failovers
        .delete("drill-2", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "second drill removed", || async {
        gone(&failovers, "drill-2").await
    })
    .await;
    // Nothing of the source was touched.
    assert_eq!(replicas(&rig, "db").await, Some(2));
    for (claim, dir) in &volumes {
        assert_eq!(read_tree(dir), content[claim], "{claim} is untouched");
    }
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn a_planned_failover_stops_the_source_and_loses_no_write() {
    let Protected {
        rig,
        dir,
        running,
        volumes,
        agents,
        content: _,
        first: before,
        failovers,
        ..
    } = protected().await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    // Written after the newest point: an unplanned failover would lose it, a planned one not.
    let last_writes = write_version(&volumes, 2);
    let mut fo = failover("planned", json!({"latest": true}));
    fo.spec.mode = site_recovery::api::failover::FailoverMode::Planned;
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    let s = eventually(Duration::from_secs(90), "FailedOver=True", || async {
        let s = failovers.get("planned").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    let steps: Vec<&str> = s.timeline.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "SourceStopped",
            "FinalPointRequested",
            "FinalPointReplicated",
            "RestoreStarted",
            "Restored",
            "WorkloadStarted",
            "FailedOver"
        ]
    );
    println!(
        "planned failover, RTO {:?}s: {:?}",
        s.rto_seconds,
        s.timeline
            .iter()
            .map(|t| (&t.step, t.time.to_string()))
            .collect::<Vec<_>>()
    );
    let point = s.resolved_point.clone().unwrap();
    assert_ne!(point.id, before.id, "a new, final point");
    assert!(point.time > s.source_stopped.unwrap());
    for (i, claim) in ["data-db-0", "data-db-1"].iter().enumerate() {
        let disk =
            crate::rig::failover::claim_disk(&rig, "apps", &format!("data-db-failover-{i}")).await;
        assert_eq!(
            read_tree(&disk),
            last_writes[*claim],
            "{claim}: every write made before the failover is in the target zone"
        );
    }
    assert_eq!(replicas(&rig, "db").await, Some(0));
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    assert!(
        !failover_objects(&rig)
            .await
            .iter()
            .any(|o| o.starts_with("Pod/sr-hold") || o.starts_with("Pod/sr-restore")),
        "holder and writer pods are removed"
    );
    assert!(
        !crate::replication::events(&rig, "FailoverSourceStopped")
            .await
            .is_empty()
    );
    // Cancelled: the source comes back at its replica count, its data as it was.
    failovers
        .delete("planned", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "rolled back", || async {
        gone(&failovers, "planned").await?;
        failover_objects(&rig).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(replicas(&rig, "db").await, Some(2));
    for (claim, dir) in &volumes {
        assert_eq!(read_tree(dir), last_writes[claim], "{claim} is untouched");
    }
    finish(&rig, dir.path(), running, agents).await;
}

/// The operator dies after every status write of a planned failover and its commit (a write may
/// record several steps); each successor picks up where the last one stopped, and the outcome
/// is the one an undisturbed run gives.
/// A Planned failover created with `commit: true` and deleted once the source is scaled to zero
/// but before any step is recorded rolls back: the intent to commit is not a commit.
#[tokio::test]
async fn a_planned_failover_deleted_before_its_commit_brings_the_source_back() {
    let Protected {
        rig,
        dir,
        mut running,
        agents,
        content: _,
        failovers,
        ..
    } = protected().await;
    let mut fo = failover("planned", json!({"latest": true}));
    fo.spec.mode = site_recovery::api::failover::FailoverMode::Planned;
    fo.spec.commit = true;
    let mut writes = rig.pause_status_writes("failovers");
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    // The operator stops right after the status write of the pass that scaled the source down.
    loop {
        tokio::time::timeout(Duration::from_secs(60), writes.recv())
            .await
            .expect("a status write")
            .unwrap();
        running.task.abort();
        if replicas(&rig, "db").await == Some(0) {
            break;
        }
        running = crate::operator::start_operator(&rig, false).await;
    }
    let s = failovers.get("planned").await.unwrap().status.unwrap();
    assert!(
        s.timeline.is_empty(),
        "nothing recorded yet: {:?}",
        s.timeline
    );
    rig.resume_status_writes();
    failovers
        .delete("planned", &Default::default())
        .await
        .unwrap();
    let running = crate::operator::start_operator(&rig, false).await;
    eventually(Duration::from_secs(30), "the Failover is gone", || async {
        gone(&failovers, "planned").await
    })
    .await;
    assert_eq!(replicas(&rig, "db").await, Some(2), "the source is back");
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn the_operator_killed_after_every_step_resumes_the_failover() {
    let Protected {
        rig,
        dir,
        mut running,
        volumes,
        agents,
        content: _,
        failovers,
        ..
    } = protected().await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    let last_writes = write_version(&volumes, 2);
    let mut fo = failover("planned", json!({"latest": true}));
    fo.spec.mode = site_recovery::api::failover::FailoverMode::Planned;
    fo.spec.commit = true;
    // The rig stops the operator right after each of its status writes of a Failover: no
    // race between the test and the operator decides where it dies.
    let mut writes = rig.pause_status_writes("failovers");
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    let mut kills = Vec::new();
    loop {
        tokio::time::timeout(Duration::from_secs(90), writes.recv())
            .await
            .expect("the next status write")
            .expect("the rig reports status writes");
        running.task.abort();
        let s = failovers.get("planned").await.unwrap().status.unwrap();
        let step = s.timeline.last().map(|t| t.step.to_string());
        kills.push(step.clone().unwrap_or_default());
        if step.as_deref() == Some("Committed") {
            break;
        }
        // Killed right after the write, its successor starts from the status.
        running = crate::operator::start_operator(&rig, false).await;
    }
    rig.resume_status_writes();
    running = crate::operator::start_operator(&rig, false).await;
    println!("operator killed after the status writes that recorded {kills:?}");
    for step in [
        "SourceStopped",
        "FinalPointReplicated",
        "RestoreStarted",
        "Restored",
        "WorkloadStarted",
        "FailedOver",
    ] {
        assert!(
            kills.iter().any(|k| k == step),
            "killed right after {step} was recorded: {kills:?}"
        );
    }
    let s = failovers.get("planned").await.unwrap().status.unwrap();
    let steps: Vec<&str> = s.timeline.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "SourceStopped",
            "FinalPointRequested",
            "FinalPointReplicated",
            "RestoreStarted",
            "Restored",
            "WorkloadStarted",
            "FailedOver",
            "Committed"
        ],
        "every step once"
    );
    assert_eq!(condition(&s.conditions, "Committed").unwrap().0, "True");
    for (i, claim) in ["data-db-0", "data-db-1"].iter().enumerate() {
        let disk =
            crate::rig::failover::claim_disk(&rig, "apps", &format!("data-db-failover-{i}")).await;
        assert_eq!(read_tree(&disk), last_writes[*claim], "{claim}");
    }
    assert_eq!(replicas(&rig, "db").await, Some(0));
    assert_eq!(replicas(&rig, "db-failover").await, Some(2));
    // The source's replica count survived every restart, for whoever scales it back.
    let source: StatefulSet = Api::namespaced(rig.client(), "apps")
        .get("db")
        .await
        .unwrap();
    assert_eq!(
        source
            .metadata
            .annotations
            .unwrap_or_default()
            .get("siterecovery.io/replicas-before-failover")
            .map(String::as_str),
        Some("2")
    );
    let left: Vec<String> = failover_objects(&rig)
        .await
        .into_iter()
        .filter(|o| o.starts_with("Pod/sr-"))
        .collect();
    assert!(left.is_empty(), "temporary pods left: {left:?}");
    let target = Repository::open(
        Location::open(
            &LocationSpec::Filesystem(dir.path().join("target")),
            &Default::default(),
        )
        .unwrap(),
        &[7u8; 32],
    )
    .await
    .unwrap();
    assert!(target.point_ids().await.unwrap().is_empty());
    finish(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn a_deployment_fails_over_onto_restored_claims_and_rolls_back() {
    let (rig, _dir, running, _volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let mount = rig.deployment("apps", "web", "web-data", "node-a1").await;
    std::fs::create_dir_all(mount.join("html")).unwrap();
    std::fs::write(mount.join("html/index.html"), "<h1>zone a</h1>\n").unwrap();
    let content = read_tree(&mount);
    let workloads: Api<site_recovery::api::ReplicatedWorkload> =
        Api::namespaced(rig.client(), "apps");
    workloads
        .create(
            &PostParams::default(),
            &crate::replication::replicated_workload("web", "vault", "Deployment", "web"),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "web protected", || async {
        let s = workloads.get("web").await.ok()?.status?;
        s.latest_replicated_point.as_ref()?;
        s.point_in_progress.is_none().then_some(())
    })
    .await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    // Claims in zone-b get that zone's class.
    Api::<site_recovery::api::RecoveryVault>::namespaced(rig.client(), "apps")
        .patch(
            "vault",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"storageClasses": {"zone-b": "ssd-zone-b"}}})),
        )
        .await
        .unwrap();
    let failovers: Api<Failover> = Api::namespaced(rig.client(), "apps");
    let mut fo = failover("web-fo", json!({"latest": true}));
    fo.spec.workload_name = "web".into();
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    let s = eventually(Duration::from_secs(60), "FailedOver=True", || async {
        let s = failovers.get("web-fo").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    assert_eq!(s.target_workload.as_deref(), Some("web-failover"));
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(rig.client(), "apps");
    let copy = deployments.get("web-failover").await.unwrap().spec.unwrap();
    let source = deployments.get("web").await.unwrap().spec.unwrap();
    let copied = copy.template.spec.unwrap().volumes.unwrap();
    assert_eq!(
        copied[1..],
        source.template.spec.unwrap().volumes.unwrap()[1..],
        "the ConfigMap and emptyDir volumes are carried over exactly"
    );
    let claim = copied[0]
        .persistent_volume_claim
        .clone()
        .unwrap()
        .claim_name;
    assert_eq!(
        claim, "web-data-failover",
        "the copy mounts the restored claim"
    );
    let restored: PersistentVolumeClaim = Api::namespaced(rig.client(), "apps")
        .get("web-data-failover")
        .await
        .unwrap();
    assert_eq!(
        restored.spec.unwrap().storage_class_name.as_deref(),
        Some("ssd-zone-b"),
        "the vault's class for the target zone"
    );
    let disk = crate::rig::failover::claim_disk(&rig, "apps", "web-data-failover").await;
    assert_eq!(read_tree(&disk), content);
    let pod: Pod = Api::namespaced(rig.client(), "apps")
        .get("web-failover-0")
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-b1"));
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(0),
        "the source is scaled to zero"
    );
    failovers
        .delete("web-fo", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "rolled back", || async {
        gone(&failovers, "web-fo").await?;
        gone(&deployments, "web-failover").await
    })
    .await;
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(1)
    );
    assert_eq!(read_tree(&mount), content, "the source's data is untouched");
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

/// Bytes stored below `dir` (a filesystem location).
/// The bytes a `Restored` timeline message says the agents wrote
/// (`… (data-db-0: 25 of 4194329 bytes written in place; …)`).
pub(crate) fn bytes_written(restored: &str) -> u64 {
    restored
        .split("; ")
        .filter_map(|part| {
            part.split(": ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

pub(crate) fn stored_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// Incompressible, deterministic bytes.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A Live vault the other way: its cache in zone-b (`cache`), its target in zone-a (`target`),
/// with the key of the first vault.
pub(crate) fn reverse_vault(
    name: &str,
    cache: &std::path::Path,
    target: &std::path::Path,
) -> site_recovery::api::RecoveryVault {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "cache": {"zone": "zone-b", "storage": {"filesystem": {"path": cache}}},
            "target": {"zone": "zone-a", "storage": {"filesystem": {"path": target}}},
            "snapshotMethod": "Live",
            "encryption": {"keySecretRef": {"name": "vault-key"}},
        },
    }))
    .unwrap()
}

/// Re-protects the copy `workload` (of `kind`) as ReplicatedWorkload `name` into `vault`
/// (created here), and waits for its first point to be replicated.
pub(crate) async fn reprotect(
    rig: &Rig,
    vault: site_recovery::api::RecoveryVault,
    name: &str,
    kind: &str,
    workload: &str,
) {
    let vault_name = vault.metadata.name.clone().unwrap_or_default();
    Api::<site_recovery::api::RecoveryVault>::namespaced(rig.client(), "apps")
        .create(&PostParams::default(), &vault)
        .await
        .unwrap();
    let workloads: Api<site_recovery::api::ReplicatedWorkload> =
        Api::namespaced(rig.client(), "apps");
    workloads
        .create(
            &PostParams::default(),
            &crate::replication::replicated_workload(name, &vault_name, kind, workload),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "re-protected", || async {
        let s = workloads.get(name).await.ok()?.status?;
        s.latest_replicated_point.as_ref()?;
        s.point_in_progress.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn reprotect_then_failback_moves_only_the_delta() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    const SIZE: usize = 4 << 20;
    for (i, dir) in volumes.values().enumerate() {
        std::fs::write(dir.join("blob.bin"), noise(i as u64 + 7, SIZE)).unwrap();
    }
    let workloads = protect(&rig).await;
    first_point(&workloads).await;
    let _cluster = zones(&rig, &[("zone-a", "node-a1"), ("zone-b", "node-b1")]);
    // Failed over to zone-b and committed.
    let failovers: Api<Failover> = Api::namespaced(rig.client(), "apps");
    let mut fo = failover("away", json!({"latest": true}));
    fo.spec.commit = true;
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    eventually(Duration::from_secs(60), "Committed=True", || async {
        let s = failovers.get("away").await.ok()?.status?;
        (condition(&s.conditions, "Committed")?.0 == "True").then_some(())
    })
    .await;
    // The workload runs on in zone-b and changes a little.
    let mut in_zone_b = BTreeMap::new();
    for i in 0..2 {
        let claim = format!("data-db-failover-{i}");
        let disk = crate::rig::failover::claim_disk(&rig, "apps", &claim).await;
        std::fs::write(
            disk.join("written-in-zone-b.txt"),
            format!("{claim} moved\n"),
        )
        .unwrap();
        in_zone_b.insert(format!("data-db-{i}"), read_tree(&disk));
    }

    // Re-protect: the copy, replicated the other way (zone-b's location is now the cache, the
    // original zone's the target), with the same key: the same repositories.
    let before = stored_bytes(&dir.path().join("cache"));
    reprotect(
        &rig,
        reverse_vault(
            "vault-back",
            &dir.path().join("target"),
            &dir.path().join("cache"),
        ),
        "db-back",
        "StatefulSet",
        "db-failover",
    )
    .await;
    let moved = stored_bytes(&dir.path().join("cache")) - before;
    println!(
        "re-protect moved {moved} bytes back to the original zone for {} bytes of data",
        2 * SIZE
    );
    assert!(
        moved < (SIZE / 4) as u64,
        "only the delta crosses back: {moved} bytes for {} bytes of data",
        2 * SIZE
    );

    // Failback: a planned failover of the copy, back to the original zone, into the original
    // StatefulSet and the claims it kept.
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let blob_inode = inode(&volumes["data-db-0"].join("blob.bin"));
    let mut back = failover("back", json!({"latest": true}));
    back.spec.workload_name = "db-back".into();
    back.spec.mode = site_recovery::api::failover::FailoverMode::Planned;
    failovers
        .create(&PostParams::default(), &back)
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(90), "failed back", || async {
        let s = failovers.get("back").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    assert_eq!(s.target_zone.as_deref(), Some("zone-a"));
    assert_eq!(s.failback_to.as_deref(), Some("db"));
    assert_eq!(s.target_workload.as_deref(), Some("db"));
    for (claim, content) in &in_zone_b {
        assert_eq!(
            &read_tree(&volumes[claim]),
            content,
            "{claim}: the original claim, back in zone-a with zone-b's writes"
        );
    }
    assert_eq!(
        inode(&volumes["data-db-0"].join("blob.bin")),
        blob_inode,
        "an unchanged file is kept, not rewritten"
    );
    let restored = s
        .timeline
        .iter()
        .find(|t| t.step == "Restored")
        .map(|t| t.message.clone())
        .unwrap_or_default();
    println!("failback: {restored}");
    assert!(restored.contains("in place"), "{restored}");
    let written = crate::failover::bytes_written(&restored);
    assert!(
        written < (SIZE / 4) as u64,
        "the failback writes only what changed: {written} bytes for {} bytes of data",
        2 * SIZE
    );
    assert_eq!(
        replicas(&rig, "db").await,
        Some(2),
        "the original is back up"
    );
    let pod: Pod = Api::namespaced(rig.client(), "apps")
        .get("db-0")
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-a1"));
    assert!(
        Api::<StatefulSet>::namespaced(rig.client(), "apps")
            .get_opt("db-failover-failover")
            .await
            .unwrap()
            .is_none(),
        "no copy of the copy"
    );
    // Commit: the copy the workload ran as in zone-b goes; the original stays.
    failovers
        .patch(
            "back",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"commit": true}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the copy deleted at commit",
        || async {
            let s = failovers.get("back").await.ok()?.status?;
            (condition(&s.conditions, "Committed")?.0 == "True").then_some(())?;
            gone(
                &Api::<StatefulSet>::namespaced(rig.client(), "apps"),
                "db-failover",
            )
            .await
        },
    )
    .await;
    assert_eq!(replicas(&rig, "db").await, Some(2));
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_report_from_a_node_without_the_writer_pods_is_ignored() {
    let (rig, _dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    // No agent in the target zone yet: only a forged report could finish the restore.
    let _agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2"]);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads).await;
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    let failovers: Api<Failover> = Api::namespaced(rig.client(), "apps");
    failovers
        .create(
            &PostParams::default(),
            &failover("fo", json!({"latest": true})),
        )
        .await
        .unwrap();
    let f = eventually(Duration::from_secs(30), "a restore in flight", || async {
        let f = failovers.get("fo").await.ok()?;
        f.status.as_ref()?.restore.as_ref()?;
        Some(f)
    })
    .await;
    let restore = f.status.as_ref().unwrap().restore.clone().unwrap();
    // Another node's registration claims every claim is restored.
    let claims: Vec<String> = restore
        .volumes
        .iter()
        .map(|v| v.target_claim.clone())
        .collect();
    let forged = json!([{"kind": "Restore", "namespace": "apps", "workload": "fo",
        "point": restore.point, "state": "Done", "claims": claims,
        "owner": f.metadata.uid}]);
    rig.create(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "site-recovery-agent-node-x", "namespace": OPERATOR_NS,
            "labels": {"app.kubernetes.io/component": "agent-registration", "siterecovery.io/node": "node-x"},
            "annotations": {"siterecovery.io/work": forged.to_string()}},
        "spec": {"holderIdentity": "node-x", "leaseDurationSeconds": 3600,
            "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = failovers.get("fo").await.unwrap().status.unwrap();
    let steps: Vec<&str> = s.timeline.iter().map(|t| t.step.as_str()).collect();
    assert!(
        !steps.contains(&"Restored"),
        "a forged report does not finish the restore: {steps:?}"
    );
    assert_eq!(replicas(&rig, "db").await, Some(2), "the source still runs");
    // The agent of the node that runs the writer pods finishes it.
    let _b = start_agent(&rig, "node-b1", 10);
    eventually(Duration::from_secs(60), "FailedOver=True", || async {
        let s = failovers.get("fo").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(())
    })
    .await;
    running.stop().await;
}
