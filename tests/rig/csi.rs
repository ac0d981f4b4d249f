//! The test as CSI driver, external snapshotter, volume binder, scheduler and kubelet for the
//! temporary objects of CSI captures: a VolumeSnapshot copies its claim's volume directory at
//! the moment it is seen (and is marked ready), a claim restored from a snapshot gets a volume
//! with that copy, and a reader pod is bound to a node of the zone its affinity asks for, with
//! the volume laid out under the kubelet root. (The rig serves the VolumeSnapshot API itself.)

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::json;

use super::Cluster;

pub fn snapshots(rig: &Cluster, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
    Api::namespaced_with(
        rig.client(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "volumesnapshots"),
    )
}

/// What the driver did, for assertions.
#[derive(Default)]
pub struct DriverLog {
    pub snapshots_taken: Vec<String>,
    pub readers_scheduled: Vec<(String, String)>,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs the driver for namespace `ns` until the returned handle is dropped; `nodes` maps a zone
/// to the node reader pods of that zone are bound to.
pub fn run_driver(
    rig: &Cluster,
    ns: &str,
    nodes: BTreeMap<String, String>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<DriverLog>>) {
    let log = Arc::new(Mutex::new(DriverLog::default()));
    let rig = rig.clone();
    let ns = ns.to_string();
    let store: PathBuf = rig.kubelet.join("csi-snapshots").join(&ns);
    let out = log.clone();
    let task = tokio::spawn(async move {
        let snaps = snapshots(&rig, &ns);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(rig.client(), &ns);
        let pods: Api<Pod> = Api::namespaced(rig.client(), &ns);
        let mut scheduled = HashSet::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let all_pods = pods.list(&ListParams::default()).await.unwrap().items;
            let mount_of = |claim: &str| -> Option<PathBuf> {
                all_pods.iter().find_map(|p| {
                    let mounts = p.spec.as_ref()?.volumes.iter().flatten().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    });
                    let uid = p.metadata.uid.clone()?;
                    (mounts && p.spec.as_ref()?.node_name.is_some()).then(|| {
                        rig.volume_dir(
                            &uid,
                            &format!("pv-{}-{claim}", p.namespace().unwrap_or_default()),
                        )
                    })
                })
            };
            // Snapshots: copy the source volume now, then report ready.
            for s in snaps.list(&ListParams::default()).await.unwrap().items {
                let ready = s
                    .data
                    .get("status")
                    .and_then(|st| st.get("readyToUse"))
                    .is_some();
                if ready {
                    continue;
                }
                let claim = s.data["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let source = claims.get_opt(&claim).await.unwrap();
                let block_source = source
                    .as_ref()
                    .and_then(|c| c.spec.as_ref()?.volume_name.clone())
                    .and_then(|pv| super::block::device_of(&rig.kubelet, &pv));
                if let Some(device) = block_source {
                    // A block volume's snapshot: an image of the device as it is now.
                    std::fs::create_dir_all(&store).unwrap();
                    super::block::copy_out(&device, &store.join(format!("{}.img", s.name_any())));
                } else {
                    let Some(dir) = mount_of(&claim) else {
                        continue;
                    };
                    copy_tree(&dir, &store.join(s.name_any()));
                }
                snaps
                    .patch_status(
                        &s.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"status": {"readyToUse": true, "restoreSize": "1Gi"}}),
                        ),
                    )
                    .await
                    .unwrap();
                out.lock().unwrap().snapshots_taken.push(s.name_any());
            }
            // Claims restored from a snapshot: a volume holding the snapshot's copy.
            for c in claims.list(&ListParams::default()).await.unwrap().items {
                // The pvc-protection controller: a deleted claim no pod uses loses its finalizer.
                if c.metadata.deletion_timestamp.is_some() && mount_of(&c.name_any()).is_none() {
                    claims
                        .patch(
                            &c.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await
                        .ok();
                    continue;
                }
                let spec = c.spec.clone().unwrap_or_default();
                let Some(source) = spec
                    .data_source
                    .as_ref()
                    .filter(|d| d.kind == "VolumeSnapshot")
                else {
                    continue;
                };
                if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                    || c.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let pv = format!("pv-{ns}-{}", c.name_any());
                let mode = spec.volume_mode.clone().unwrap_or("Filesystem".into());
                if mode == "Block" {
                    let image = store.join(format!("{}.img", source.name));
                    let size = std::fs::metadata(&image).unwrap().len();
                    let device = super::block::device(&rig.kubelet, &pv, size);
                    super::block::copy_in(&image, &device);
                }
                rig.create_or_keep(json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv, "annotations": {"rig/snapshot": source.name}},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                        "csi": {"driver": "rig.csi.example.com", "volumeHandle": pv},
                        "claimRef": {"namespace": ns, "name": c.name_any()}},
                }))
                .await;
                claims
                    .patch(
                        &c.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"volumeName": pv}})),
                    )
                    .await
                    .unwrap();
                rig.patch_status(
                    "v1",
                    "PersistentVolumeClaim",
                    Some(&ns),
                    &c.name_any(),
                    json!({"status": {"phase": "Bound"}}),
                )
                .await;
            }
            // Reader pods: bound in their zone, the volume laid out, Running.
            for p in &all_pods {
                let name = p.name_any();
                let spec = p.spec.clone().unwrap_or_default();
                if spec.node_name.is_some()
                    || scheduled.contains(&name)
                    || p.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let Some(zone) = super::zone_of(&spec) else {
                    continue;
                };
                let Some(node) = nodes.get(&zone) else {
                    continue;
                };
                let claim = spec
                    .volumes
                    .iter()
                    .flatten()
                    .find_map(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .map(|c| c.claim_name.clone())
                    })
                    .unwrap();
                let Some(c) = claims.get_opt(&claim).await.unwrap() else {
                    continue;
                };
                if c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                    continue;
                }
                let snapshot = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.data_source.as_ref())
                    .map(|d| d.name.clone())
                    .unwrap();
                let pv = format!("pv-{ns}-{claim}");
                let uid = p.metadata.uid.clone().unwrap();
                match super::block::device_of(&rig.kubelet, &pv) {
                    Some(device) => super::block::publish(&rig.kubelet, &uid, &pv, &device),
                    None => copy_tree(&store.join(&snapshot), &rig.volume_dir(&uid, &pv)),
                }
                rig.bind_pod(&ns, &name, node).await;
                rig.mark_ready(&ns, &name).await;
                scheduled.insert(name.clone());
                out.lock()
                    .unwrap()
                    .readers_scheduled
                    .push((name, node.clone()));
            }
        }
    });
    (task, log)
}
