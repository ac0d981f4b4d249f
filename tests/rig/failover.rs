//! The test as PV binder, scheduler, kubelet and StatefulSet controller in the target zone of a
//! failover: claims labelled with a failover get a volume whose data lives in one directory per
//! volume (as a disk outlives the pods that mount it); pods pinned to a zone are bound to that
//! zone's node with the volume's directory mounted (a symlink) under the kubelet root; a
//! StatefulSet a failover made gets its pods; a verification Job runs its command here.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::Cluster;

/// Where the data of volume `pv` lives, whichever pod mounts it.
pub fn disk(cluster: &Cluster, pv: &str) -> PathBuf {
    cluster.kubelet.join("disks").join(pv)
}

/// The loop device of the block volume bound to `claim`.
pub async fn claim_device(cluster: &Cluster, ns: &str, claim: &str) -> PathBuf {
    let c: PersistentVolumeClaim = Api::namespaced(cluster.client(), ns)
        .get(claim)
        .await
        .unwrap();
    let pv = c.spec.unwrap().volume_name.unwrap();
    super::block::device_of(&cluster.kubelet, &pv).expect("a block volume")
}

/// The data of the volume bound to `claim`.
pub async fn claim_disk(cluster: &Cluster, ns: &str, claim: &str) -> PathBuf {
    let c: PersistentVolumeClaim = Api::namespaced(cluster.client(), ns)
        .get(claim)
        .await
        .unwrap();
    disk(cluster, &c.spec.unwrap().volume_name.unwrap())
}

pub fn run(
    cluster: &Cluster,
    ns: &str,
    nodes: BTreeMap<String, String>,
) -> tokio::task::JoinHandle<()> {
    let rig = cluster.clone();
    let ns = ns.to_string();
    tokio::spawn(async move {
        let mut scheduled = HashSet::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Objects come and go under the rig's feet (the operator deletes what it made): a
            // pass that meets one that is gone gives up and the next pass starts over, as
            // controllers do.
            if let Err(e) = pass(&rig, &ns, &nodes, &mut scheduled).await {
                tracing::debug!(error = %e, "rig failover controllers: retrying");
            }
        }
    })
}

async fn pass(
    rig: &Cluster,
    ns: &str,
    nodes: &BTreeMap<String, String>,
    scheduled: &mut HashSet<String>,
) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(rig.client(), ns);
    let pods: Api<Pod> = Api::namespaced(rig.client(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(rig.client(), ns);
    let selector = ListParams::default().labels("siterecovery.io/failover");
    for c in claims.list(&selector).await?.items {
        let name = c.name_any();
        if c.metadata.deletion_timestamp.is_some() {
            claims
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await
                .ok();
            continue;
        }
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            continue;
        }
        // A new claim gets a new, empty volume, also when it reuses a name.
        let uid = c.metadata.uid.clone().unwrap();
        let pv = format!("pv-{ns}-{name}-{}", &uid[uid.len() - 6..]);
        let spec = c.spec.clone().unwrap_or_default();
        let mode = spec.volume_mode.clone().unwrap_or("Filesystem".into());
        if mode == "Block" {
            let size = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| super::block::bytes(&q.0))
                .unwrap_or(64 << 20);
            super::block::device(&rig.kubelet, &pv, size);
        } else {
            std::fs::create_dir_all(disk(rig, &pv)).unwrap();
        }
        rig.try_create_or_keep(json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                "csi": {"driver": "rig.csi.example.com", "volumeHandle": pv},
                "claimRef": {"namespace": ns, "name": name, "uid": uid}},
        }))
        .await?;
        claims
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"volumeName": pv}})),
            )
            .await?;
        rig.try_patch_status(
            "v1",
            "PersistentVolumeClaim",
            Some(ns),
            &name,
            json!({"status": {"phase": "Bound"}}),
        )
        .await?;
    }
    // StatefulSets and Deployments alike: (kind, object as JSON).
    let mut workloads: Vec<(&str, serde_json::Value)> = Vec::new();
    for s in sets.list(&ListParams::default()).await?.items {
        workloads.push(("StatefulSet", serde_json::to_value(s).unwrap()));
    }
    let deployments: Api<Deployment> = Api::namespaced(rig.client(), ns);
    for d in deployments.list(&ListParams::default()).await?.items {
        workloads.push(("Deployment", serde_json::to_value(d).unwrap()));
    }
    // The garbage collector: a pod created for a workload deleted meanwhile goes too.
    let uids: HashSet<String> = workloads
        .iter()
        .filter_map(|(_, w)| w["metadata"]["uid"].as_str().map(String::from))
        .collect();
    for p in pods.list(&ListParams::default()).await?.items {
        let orphan = p
            .owner_references()
            .iter()
            .any(|o| (o.kind == "StatefulSet" || o.kind == "Deployment") && !uids.contains(&o.uid));
        if orphan {
            pods.delete(&p.name_any(), &Default::default()).await?;
        }
    }
    // The workload controllers: a source scaled down loses its pods of higher ordinals; the
    // copies get theirs (pods `<name>-<i>`; a StatefulSet's claims from its templates).
    for (kind, w) in workloads {
        let name = w["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = w["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let replicas = w["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
        if w["metadata"]["labels"]["siterecovery.io/failover"].is_null() {
            for p in pods.list(&ListParams::default()).await?.items {
                let owned = p.owner_references().iter().any(|o| o.uid == uid);
                let ordinal = p
                    .name_any()
                    .rsplit_once('-')
                    .and_then(|(_, n)| n.parse::<i32>().ok());
                if owned && ordinal.is_some_and(|n| n >= replicas) {
                    pods.delete(&p.name_any(), &Default::default()).await?;
                }
            }
            // A StatefulSet scaled back up gets its pods again, on its claims (a failback to
            // the original); a Deployment's pods are the test's own.
            if kind != "StatefulSet" {
                continue;
            }
        }
        if !w["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        for i in 0..replicas {
            let pod = format!("{name}-{i}");
            let mut template_spec = w["spec"]["template"]["spec"].clone();
            if kind == "StatefulSet" {
                let volumes: Vec<_> = w["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let tmpl = t["metadata"]["name"].as_str().unwrap_or_default();
                        json!({"name": tmpl, "persistentVolumeClaim": {"claimName": format!("{tmpl}-{pod}")}})
                    })
                    .collect();
                template_spec["volumes"] = json!(volumes);
            }
            rig.try_create_or_keep(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": w["spec"]["template"]["metadata"]["labels"],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]},
                "spec": template_spec,
            }))
            .await?;
        }
    }
    // The Job controller and kubelet for verification Jobs: the command runs here.
    let jobs: Api<Job> = Api::namespaced(rig.client(), ns);
    for j in jobs.list(&ListParams::default()).await?.items {
        if j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some()
        {
            continue;
        }
        let command = j
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.command.clone())
            .unwrap_or_default();
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let out = tokio::process::Command::new(program)
            .args(args)
            .output()
            .await;
        let (kind, message) = match out {
            Ok(o) if o.status.success() => ("Complete", String::new()),
            Ok(o) => (
                "Failed",
                format!(
                    "the container exited with {}: {}",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => ("Failed", format!("cannot run {program}: {e}")),
        };
        rig.try_patch_status(
            "batch/v1",
            "Job",
            Some(ns),
            &j.name_any(),
            json!({"status": {"conditions": [{"type": kind, "status": "True", "reason": if kind == "Complete" { "Completed" } else { "BackoffLimitExceeded" }, "message": message}]}}),
        )
        .await?;
    }
    // Scheduler and kubelet for pods pinned to a zone.
    for p in pods.list(&ListParams::default()).await?.items {
        let name = p.name_any();
        let uid = p.metadata.uid.clone().unwrap();
        let spec = p.spec.clone().unwrap_or_default();
        if spec.node_name.is_some()
            || scheduled.contains(&uid)
            || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        // Pinned to a zone (writer pods, copies), or by its volumes to their node (holders).
        let node = match super::zone_of(&spec) {
            Some(zone) => nodes.get(&zone).cloned(),
            None => volume_node(rig, &claims, &spec).await?,
        };
        let Some(node) = node else {
            continue;
        };
        let node = &node;
        let mut bound = true;
        let mut mounts = Vec::new();
        for v in spec.volumes.iter().flatten() {
            let Some(c) = &v.persistent_volume_claim else {
                continue;
            };
            match claims.get_opt(&c.claim_name).await? {
                Some(claim)
                    if claim.metadata.deletion_timestamp.is_none()
                        && claim.status.as_ref().and_then(|s| s.phase.as_deref())
                            == Some("Bound") =>
                {
                    mounts.push(claim.spec.unwrap().volume_name.unwrap())
                }
                _ => bound = false,
            }
        }
        if !bound {
            continue;
        }
        let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(rig.client());
        for pv in mounts {
            // Provisioned for its first consumer: from then on the volume lives on its node.
            let pinned = volumes
                .get_opt(&pv)
                .await?
                .and_then(|v| v.spec)
                .is_some_and(|s| s.node_affinity.is_some());
            if !pinned {
                volumes
                    .patch(
                        &pv,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})),
                    )
                    .await?;
            }
            if let Some(device) = super::block::device_of(&rig.kubelet, &pv) {
                super::block::publish(&rig.kubelet, &uid, &pv, &device);
                continue;
            }
            let dir = rig.volume_dir(&uid, &pv);
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            let data = data_dir(rig, &pv);
            if !dir.exists() {
                std::os::unix::fs::symlink(data, &dir).unwrap();
            }
        }
        rig.try_bind_pod(ns, &name, node).await?;
        rig.try_mark_ready(ns, &name).await?;
        scheduled.insert(uid);
    }
    Ok(())
}

/// The node a pod's volumes pin it to (their PersistentVolume's required node affinity).
async fn volume_node(
    rig: &Cluster,
    claims: &Api<PersistentVolumeClaim>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<Option<String>, kube::Error> {
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(rig.client());
    for v in spec.volumes.iter().flatten() {
        let Some(c) = &v.persistent_volume_claim else {
            continue;
        };
        let Some(pv) = claims
            .get_opt(&c.claim_name)
            .await?
            .and_then(|c| c.spec)
            .and_then(|s| s.volume_name)
        else {
            continue;
        };
        let node = volumes.get_opt(&pv).await?.and_then(|pv| {
            let affinity = serde_json::to_value(pv.spec?.node_affinity?).ok()?;
            affinity
                .pointer("/required/nodeSelectorTerms/0/matchExpressions/0/values/0")?
                .as_str()
                .map(String::from)
        });
        if node.is_some() {
            return Ok(node);
        }
    }
    Ok(None)
}

/// Where the data of volume `pv` lives: its disk, or for a volume the rig laid out under the
/// first pod that mounted it, that pod's directory.
fn data_dir(rig: &Cluster, pv: &str) -> PathBuf {
    let disk = disk(rig, pv);
    if disk.exists() {
        return disk;
    }
    let pods = rig.kubelet.join("pods");
    for entry in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        let dir = entry
            .path()
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount");
        if dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return dir;
        }
    }
    std::fs::create_dir_all(&disk).unwrap();
    disk
}
