//! KubeVirt for the rig: the VirtualMachine and VirtualMachineInstance CRDs, and the part of
//! virt-controller a failover meets: a VirtualMachine that should run (any `runStrategy` but
//! `Halted`) gets its instance and a virt-launcher pod that mounts its disks (a DataVolume disk
//! by its claim, which has the DataVolume's name), labelled `vm.kubevirt.io/name` and with the
//! template's labels and affinity; a halted one loses both. The pod is scheduled, its volumes
//! laid out and marked Ready by the rig's scheduler and kubelet (`super::failover::run`).

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

use super::Cluster;

pub fn machines(cluster: &Cluster, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine");
    Api::namespaced_with(
        cluster.client(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "virtualmachines"),
    )
}

fn instances(cluster: &Cluster, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance");
    Api::namespaced_with(
        cluster.client(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "virtualmachineinstances"),
    )
}

/// The two CRDs, as KubeVirt's operator installs them (the schema left open here).
pub async fn install(rig: &super::Rig) {
    for (kind, plural, short) in [
        ("VirtualMachine", "virtualmachines", "vm"),
        ("VirtualMachineInstance", "virtualmachineinstances", "vmi"),
    ] {
        rig.create(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.kubevirt.io")},
            "spec": {
                "group": "kubevirt.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "shortNames": [short]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        }))
        .await;
    }
}

/// A running VirtualMachine `name` whose disks are `claims` (the first as a DataVolume, made
/// from a DataVolume template; the others as claims), each a node-local volume on `node`;
/// returns each claim's data directory (the disk).
pub async fn virtual_machine(
    rig: &super::Rig,
    ns: &str,
    name: &str,
    claims: &[&str],
    node: &str,
) -> Vec<std::path::PathBuf> {
    let mut volumes = Vec::new();
    let mut templates = Vec::new();
    let mut disks = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        let pv = rig.local_claim(ns, claim, name, node).await;
        let disk = super::failover::disk(rig, &pv);
        std::fs::create_dir_all(&disk).unwrap();
        disks.push(disk);
        if i == 0 {
            volumes.push(json!({"name": format!("disk{i}"), "dataVolume": {"name": claim}}));
            templates.push(json!({"metadata": {"name": claim}, "spec": {"storage": {"resources": {"requests": {"storage": "1Gi"}}}, "source": {"blank": {}}}}));
        } else {
            volumes.push(
                json!({"name": format!("disk{i}"), "persistentVolumeClaim": {"claimName": claim}}),
            );
        }
    }
    volumes.push(json!({"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}));
    rig.create(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": templates,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"domain": {"devices": {"disks": []}, "resources": {"requests": {"memory": "64Mi"}}}, "volumes": volumes},
            },
        },
    }))
    .await;
    disks
}

/// Plays virt-controller in every namespace until the handle is dropped (aborted).
pub fn run(cluster: &Cluster) -> tokio::task::JoinHandle<()> {
    let cluster = cluster.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Err(e) = pass(&cluster).await {
                tracing::debug!(error = %e, "rig virt-controller: retrying");
            }
        }
    })
}

async fn pass(cluster: &Cluster) -> Result<(), kube::Error> {
    let all = Api::<DynamicObject>::all_with(
        cluster.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        ),
    );
    let pods_all = Api::<k8s_openapi::api::core::v1::Pod>::all(cluster.client());
    let launchers = pods_all
        .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
        .await?
        .items;
    let vms = all.list(&ListParams::default()).await?.items;
    // The garbage collector: a launcher whose machine is gone goes, with its instance.
    for p in &launchers {
        let ns = p.namespace().unwrap_or_default();
        let vm = p
            .labels()
            .get("vm.kubevirt.io/name")
            .cloned()
            .unwrap_or_default();
        let exists = vms
            .iter()
            .any(|m| m.namespace().as_deref() == Some(ns.as_str()) && m.name_any() == vm);
        if !exists && p.metadata.deletion_timestamp.is_none() {
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client(), &ns)
                .delete(&p.name_any(), &Default::default())
                .await
                .ok();
            instances(cluster, &ns)
                .delete(&vm, &Default::default())
                .await
                .ok();
        }
    }
    for vm in &vms {
        let ns = vm.namespace().unwrap_or_default();
        let name = vm.name_any();
        let halted = vm.data["spec"]["runStrategy"].as_str() == Some("Halted")
            || vm.metadata.deletion_timestamp.is_some();
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), &ns);
        let mine: Vec<_> = launchers
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get("vm.kubevirt.io/name") == Some(&name)
            })
            .collect();
        if halted {
            for p in mine {
                pods.delete(&p.name_any(), &Default::default()).await.ok();
            }
            instances(cluster, &ns)
                .delete(&name, &Default::default())
                .await
                .ok();
            continue;
        }
        if !mine.is_empty() {
            continue;
        }
        let template = &vm.data["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["vm.kubevirt.io/name"] = json!(name);
        let api = instances(cluster, &ns);
        let vmi = match api.get_opt(&name).await? {
            Some(v) => v,
            None => {
                let body: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "metadata": {"name": name, "namespace": ns, "labels": labels,
                        "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": name, "uid": vm.uid(), "controller": true}]},
                    "spec": template["spec"],
                }))
                .unwrap();
                api.create(&PostParams::default(), &body).await?
            }
        };
        let vmi_uid = vmi.uid().unwrap_or_default();
        let volumes: Vec<Value> = template["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let claim = v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .or(v["dataVolume"]["name"].as_str())?;
                Some(json!({"name": v["name"], "persistentVolumeClaim": {"claimName": claim}}))
            })
            .collect();
        let mut pod_labels = labels.clone();
        pod_labels["kubevirt.io"] = json!("virt-launcher");
        let suffix: String = vmi_uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(5)
            .collect();
        cluster
            .try_create_or_keep(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("virt-launcher-{name}-{suffix}"), "namespace": ns, "labels": pod_labels,
                    "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": name, "uid": vmi_uid, "controller": true}]},
                "spec": {"affinity": template["spec"]["affinity"], "containers": [{"name": "compute", "image": "virt-launcher"}], "volumes": volumes},
            }))
            .await?;
    }
    Ok(())
}
