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

/// Plays virt-controller (and each guest's agent, for freezes) in every namespace until the
/// handle is dropped (aborted).
pub fn run(rig: &super::Rig) -> tokio::task::JoinHandle<()> {
    let cluster = rig.cluster.clone();
    let state = rig.state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Err(e) = guest_agents(&cluster, &state).await {
                tracing::debug!(error = %e, "rig guest agents: retrying");
            }
            if let Err(e) = pass(&cluster).await {
                tracing::debug!(error = %e, "rig virt-controller: retrying");
            }
        }
    })
}

/// Every instance's `status.fsFreezeStatus`, as its guest agent would report it.
async fn guest_agents(cluster: &Cluster, state: &super::Shared) -> Result<(), kube::Error> {
    let all = Api::<DynamicObject>::all_with(
        cluster.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
            "virtualmachineinstances",
        ),
    );
    for vmi in all.list(&ListParams::default()).await?.items {
        let ns = vmi.namespace().unwrap_or_default();
        if vmi.labels().contains_key(NO_GUEST_AGENT) {
            continue;
        }
        let want = frozen(state, &ns, &vmi.name_any());
        let is = vmi.data["status"]["fsFreezeStatus"].as_str() == Some("frozen");
        if want != is {
            cluster
                .try_patch_status(
                    "kubevirt.io/v1",
                    "VirtualMachineInstance",
                    Some(&ns),
                    &vmi.name_any(),
                    json!({"status": {"fsFreezeStatus": if want { json!("frozen") } else { Value::Null }}}),
                )
                .await?;
        }
    }
    Ok(())
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

/// A guest freeze or unfreeze asked of a VirtualMachineInstance.
#[derive(Clone, Debug)]
pub struct GuestFreeze {
    pub namespace: String,
    pub name: String,
    /// `freeze` or `unfreeze`.
    pub op: String,
    pub unfreeze_timeout: Option<Duration>,
    pub at: std::time::Instant,
}

/// `PUT /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{op}`.
#[derive(Clone, Debug)]
pub struct FreezeTarget {
    pub namespace: String,
    pub name: String,
    pub op: String,
}

pub fn is_freeze(req: &axum::http::Request<axum::body::Body>) -> Option<FreezeTarget> {
    let rest = req
        .uri()
        .path()
        .strip_prefix("/apis/subresources.kubevirt.io/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "virtualmachineinstances", name, op] if *op == "freeze" || *op == "unfreeze" => {
            Some(FreezeTarget {
                namespace: ns.to_string(),
                name: name.to_string(),
                op: op.to_string(),
            })
        }
        _ => None,
    }
}

/// virt-api's part: the freeze is recorded for the guest agent (played by [`run`]), which
/// reports it in the instance's `status.fsFreezeStatus`.
pub async fn freeze(
    shared: super::Shared,
    t: FreezeTarget,
    req: axum::http::Request<axum::body::Body>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.method() != axum::http::Method::PUT {
        return super::server::status_error(
            405,
            "MethodNotAllowed",
            format!("{} is served for PUT only", t.op),
            Value::Null,
        )
        .into_response();
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let timeout = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["unfreezeTimeout"].as_str().map(String::from))
        .and_then(|t| t.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()))
        .map(Duration::from_secs);
    let mut state = shared.0.lock().unwrap();
    let exists = state
        .objects
        .get("kubevirt.io/virtualmachineinstances")
        .is_some_and(|o| o.contains_key(&(t.namespace.clone(), t.name.clone())));
    if !exists {
        return super::server::status_error(
            404,
            "NotFound",
            format!(
                "virtualmachineinstance.kubevirt.io \"{}\" not found",
                t.name
            ),
            json!({"name": t.name, "group": "kubevirt.io", "kind": "virtualmachineinstances"}),
        )
        .into_response();
    }
    state.guest_freezes.push(GuestFreeze {
        namespace: t.namespace,
        name: t.name,
        op: t.op,
        unfreeze_timeout: timeout,
        at: std::time::Instant::now(),
    });
    (axum::http::StatusCode::OK, "").into_response()
}

/// What the guest agent of `ns/name` reports: frozen after a freeze, until the unfreeze or the
/// freeze's timeout.
fn frozen(state: &super::Shared, ns: &str, name: &str) -> bool {
    let state = state.0.lock().unwrap();
    let last = state
        .guest_freezes
        .iter()
        .rev()
        .find(|g| g.namespace == ns && g.name == name);
    last.is_some_and(|g| g.op == "freeze" && g.unfreeze_timeout.is_none_or(|t| g.at.elapsed() < t))
}

/// An instance labelled so has no guest agent: nothing reports its freeze.
const NO_GUEST_AGENT: &str = "rig/no-guest-agent";

/// Takes the guest agent out of VirtualMachine `name`'s instance.
pub async fn without_guest_agent(rig: &super::Rig, ns: &str, name: &str) {
    instances(rig, ns)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {NO_GUEST_AGENT: "true"}}})),
        )
        .await
        .unwrap();
}
