//! A KubeVirt VirtualMachine as a protected workload, with the rig playing KubeVirt
//! (`rig::kubevirt`): its disks (a DataVolume and a claim) are captured from its virt-launcher
//! pod, a drill runs a copy in its own namespace, a failover halts the source and starts a copy
//! on restored claims in the target zone, and the commit keeps it there.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use site_recovery::api::{Failover, ReplicatedWorkload};

use crate::failover::noise;
use crate::replication::{csi_vault, live_vault, read_tree, start_agents, with_vault};
use crate::rig::{eventually, kubevirt};
use crate::scenario::{commit, condition_true, gone};

fn failover(name: &str, spec: serde_json::Value) -> Failover {
    let mut spec = spec;
    spec["workloadName"] = json!("vm1");
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": spec,
    }))
    .unwrap()
}

/// Protects VirtualMachine `vm1` (with `appConsistency`, unless null) and waits for its first
/// point to be replicated; returns the status then.
async fn protect_vm(
    rig: &crate::rig::Rig,
    app_consistency: serde_json::Value,
) -> (
    Api<ReplicatedWorkload>,
    site_recovery::api::workload::ReplicatedWorkloadStatus,
) {
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    let mut rw = crate::replication::replicated_workload("vm1", "vault", "VirtualMachine", "vm1");
    if !app_consistency.is_null() {
        rw.spec.app_consistency = Some(serde_json::from_value(app_consistency).unwrap());
    }
    workloads.create(&PostParams::default(), &rw).await.unwrap();
    let status = eventually(Duration::from_secs(60), "vm1 protected", || async {
        let s = workloads.get("vm1").await.ok()?.status?;
        s.latest_replicated_point.as_ref()?;
        s.point_in_progress.is_none().then_some(s)
    })
    .await;
    (workloads, status)
}

#[tokio::test]
async fn a_virtual_machine_is_protected_drilled_failed_over_and_committed() {
    let (rig, dir, running) = with_vault(|d| live_vault(d, json!({}))).await;
    kubevirt::install(&rig).await;
    let _virt = kubevirt::run(&rig);
    let zone_b = BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]);
    let _apps = crate::rig::failover::run(&rig, "apps", zone_b.clone());
    let _drills = crate::rig::failover::run(&rig, "vm1-drill", zone_b.clone());
    let disks =
        kubevirt::virtual_machine(&rig, "apps", "vm1", &["vm1-root", "vm1-data"], "node-a1").await;
    std::fs::write(disks[0].join("disk.img"), noise(11, 256 << 10)).unwrap();
    std::fs::create_dir_all(disks[1].join("log")).unwrap();
    std::fs::write(disks[1].join("log/app.log"), "written in zone a\n").unwrap();
    let content: Vec<_> = disks.iter().map(|d| read_tree(d)).collect();
    let agents = start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let (_workloads, status) = protect_vm(&rig, serde_json::Value::Null).await;
    let mut claims: Vec<_> = status
        .volumes
        .iter()
        .map(|v| v.claim_name.clone())
        .collect();
    claims.sort();
    assert_eq!(claims, ["vm1-data", "vm1-root"], "both disks are the group");
    let machines = kubevirt::machines(&rig, "apps");

    // A drill: the machine runs under its own name in the drill's namespace; the source runs on.
    let failovers: Api<Failover> = Api::namespaced(rig.client(), "apps");
    failovers
        .create(
            &PostParams::default(),
            &failover(
                "vm-drill",
                json!({"mode": "Test", "testNamespace": "vm1-drill", "verification": {"image": "busybox", "command": ["true"]}}),
            ),
        )
        .await
        .unwrap();
    condition_true(&failovers, "vm-drill", "Verified", Duration::from_secs(60)).await;
    let drilled = kubevirt::machines(&rig, "vm1-drill")
        .get("vm1")
        .await
        .unwrap();
    assert_eq!(drilled.data["spec"]["runStrategy"], "Always");
    for (claim, want) in ["vm1-root", "vm1-data"].iter().zip(&content) {
        let disk = crate::rig::failover::claim_disk(&rig, "vm1-drill", claim).await;
        assert_eq!(read_tree(&disk), *want, "{claim} in the drill");
    }
    assert_eq!(
        machines.get("vm1").await.unwrap().data["spec"]["runStrategy"],
        "Always",
        "a drill leaves the source running"
    );
    failovers
        .delete("vm-drill", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "drill removed", || async {
        gone(&failovers, "vm-drill").await
    })
    .await;

    // The failover: the source halted, a copy on restored claims in zone-b.
    failovers
        .create(
            &PostParams::default(),
            &failover("vm-fo", json!({"recoveryPoint": {"latest": true}})),
        )
        .await
        .unwrap();
    let s = condition_true(&failovers, "vm-fo", "FailedOver", Duration::from_secs(60)).await;
    assert_eq!(s.target_workload.as_deref(), Some("vm1-failover"));
    let source = machines.get("vm1").await.unwrap();
    assert_eq!(
        source.data["spec"]["runStrategy"], "Halted",
        "the source is halted"
    );
    assert_eq!(
        source.metadata.annotations.unwrap_or_default()["siterecovery.io/held-by-failover"],
        "vm-fo"
    );
    // Nobody but the operator starts the held source beside its copy.
    let started = machines
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.contains("VirtualMachine vm1 is held halted by Failover vm-fo"),
        "{started}"
    );
    let copy = machines.get("vm1-failover").await.unwrap();
    assert_eq!(copy.data["spec"]["runStrategy"], "Always");
    assert!(
        copy.data["spec"].get("replicas").is_none(),
        "{}",
        copy.data["spec"]
    );
    assert_eq!(
        copy.data["spec"]["template"]["spec"]["volumes"],
        json!([
            {"name": "disk0", "persistentVolumeClaim": {"claimName": "vm1-root-failover"}},
            {"name": "disk1", "persistentVolumeClaim": {"claimName": "vm1-data-failover"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ]),
        "the disks are the restored claims (the DataVolume's too); other volumes are kept"
    );
    assert_eq!(copy.data["spec"]["dataVolumeTemplates"], json!([]));
    for (claim, want) in ["vm1-root-failover", "vm1-data-failover"]
        .iter()
        .zip(&content)
    {
        let disk = crate::rig::failover::claim_disk(&rig, "apps", claim).await;
        assert_eq!(read_tree(&disk), *want, "{claim}");
    }
    let launcher = eventually(Duration::from_secs(30), "the copy's launcher", || async {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(rig.client(), "apps");
        let lp = kube::api::ListParams::default().labels("vm.kubevirt.io/name=vm1-failover");
        pods.list(&lp).await.ok()?.items.into_iter().next()
    })
    .await;
    assert_eq!(
        launcher.spec.unwrap().node_name.as_deref(),
        Some("node-b1"),
        "the copy runs in the target zone"
    );

    // Commit: the copy is the machine now; the source stays halted.
    commit(&failovers, "vm-fo").await;
    assert_eq!(
        machines.get("vm1").await.unwrap().data["spec"]["runStrategy"],
        "Halted"
    );
    assert_eq!(
        machines.get("vm1-failover").await.unwrap().data["spec"]["runStrategy"],
        "Always"
    );

    // Re-protect the copy the other way, then fail back (planned) into the original machine and
    // the disks it kept, with what was written in zone-b.
    let copy_disk = crate::rig::failover::claim_disk(&rig, "apps", "vm1-data-failover").await;
    std::fs::write(copy_disk.join("log/app.log"), "written in zone b\n").unwrap();
    let want_back = read_tree(&copy_disk);
    crate::failover::reprotect(
        &rig,
        crate::failover::reverse_vault(
            "vault-back",
            &dir.path().join("target"),
            &dir.path().join("cache"),
        ),
        "vm1-back",
        "VirtualMachine",
        "vm1-failover",
    )
    .await;
    let zone_a = BTreeMap::from([("zone-a".to_string(), "node-a1".to_string())]);
    let _back_cluster = crate::rig::failover::run(&rig, "apps", zone_a);
    let mut back = failover(
        "back",
        json!({"recoveryPoint": {"latest": true}, "mode": "Planned"}),
    );
    back.spec.workload_name = "vm1-back".into();
    failovers
        .create(&PostParams::default(), &back)
        .await
        .unwrap();
    let s = condition_true(&failovers, "back", "FailedOver", Duration::from_secs(90)).await;
    assert_eq!(
        (s.failback_to.as_deref(), s.target_workload.as_deref()),
        (Some("vm1"), Some("vm1"))
    );
    assert_eq!(
        machines.get("vm1").await.unwrap().data["spec"]["runStrategy"],
        "Always",
        "the original machine runs again"
    );
    assert_eq!(
        machines.get("vm1-failover").await.unwrap().data["spec"]["runStrategy"],
        "Halted"
    );
    assert_eq!(
        read_tree(&disks[1]),
        want_back,
        "the original disk, back in zone-a with zone-b's writes"
    );
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

/// App-consistent points of a VirtualMachine on a CSI vault: KubeVirt's guest freeze (the
/// instance's `freeze` subresource, bounded by `freezeTimeout`) holds while the snapshots are
/// cut, then the guest is thawed; a guest whose agent never reports the freeze is thawed and
/// the point says it is only CrashConsistent, and why.
#[tokio::test]
async fn a_virtual_machines_guest_is_frozen_while_its_snapshots_are_cut() {
    let (rig, _dir, running) = with_vault(|d| {
        let mut v = csi_vault(d);
        v.spec.replication_policy =
            serde_json::from_value(json!({"appConsistentFrequency": "1h"})).unwrap();
        v
    })
    .await;
    kubevirt::install(&rig).await;
    let _virt = kubevirt::run(&rig);
    let zone_b = BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]);
    let _apps = crate::rig::failover::run(&rig, "apps", zone_b);
    let disks = kubevirt::virtual_machine(&rig, "apps", "vm1", &["vm1-root"], "node-a1").await;
    std::fs::write(disks[0].join("disk.img"), noise(12, 64 << 10)).unwrap();
    let (_driver, _log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        BTreeMap::from([("zone-a".to_string(), "node-a2".to_string())]),
    );
    let agents = start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let (workloads, status) = protect_vm(
        &rig,
        json!({"freezeFilesystems": true, "freezeTimeout": "10s"}),
    )
    .await;
    let point = status.latest_replicated_point.unwrap();
    assert_eq!(
        point.consistency, "AppConsistent",
        "{:?}",
        status.last_attempt
    );
    let asked: Vec<(String, Option<Duration>)> = rig
        .state
        .0
        .lock()
        .unwrap()
        .guest_freezes
        .iter()
        .map(|g| (g.op.clone(), g.unfreeze_timeout))
        .collect();
    assert_eq!(
        asked,
        [
            ("freeze".to_string(), Some(Duration::from_secs(10))),
            ("unfreeze".to_string(), None)
        ],
        "one freeze, bounded by freezeTimeout, and its thaw"
    );
    let frozen = crate::replication::events(&rig, "FilesystemsFrozen").await;
    eprintln!("guest freeze: {frozen:?}");
    assert!(
        frozen
            .iter()
            .any(|e| e.contains("VirtualMachine vm1: guest filesystems frozen for")),
        "{frozen:?}"
    );

    // A guest without an agent never reports the freeze: thawed, and the point says why.
    kubevirt::without_guest_agent(&rig, "apps", "vm1").await;
    workloads
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"siterecovery.io/request-point": "again"}}}),
            ),
        )
        .await
        .unwrap();
    let attempt = eventually(Duration::from_secs(60), "second point", || async {
        let s = workloads.get("vm1").await.ok()?.status?;
        (s.handled_point_request.as_deref() == Some("again") && s.point_in_progress.is_none())
            .then_some(())?;
        s.last_attempt
    })
    .await;
    let latest = workloads
        .get("vm1")
        .await
        .unwrap()
        .status
        .unwrap()
        .latest_point
        .unwrap();
    assert_eq!(latest.id, attempt.id);
    assert_eq!(latest.consistency, "CrashConsistent", "{attempt:?}");
    assert!(
        attempt
            .message
            .contains("did not report its filesystems frozen"),
        "{attempt:?}"
    );
    let last = rig
        .state
        .0
        .lock()
        .unwrap()
        .guest_freezes
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        last.op, "unfreeze",
        "the guest is thawed after a failed freeze"
    );
    running.stop().await;
    for a in agents {
        a.kill();
    }
}
