//! What the operator's and the agents' caches keep of each watched object: only the fields
//! they read. Every object passes through its kind's projection before it enters a cache
//! (tests that fill caches from lists apply the same ones), so that memory grows with the
//! fields used and not with the objects' size: managed fields, kubectl's last-applied copy of
//! an object, pod specs and statuses, Deployment templates. Neither the agent nor the
//! controllers own this module: both read from it.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodSpec, Service, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeSet, HashMap};

use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::DeserializeGuard;

use crate::api::ReplicatedWorkload;
use crate::api::work::FREEZE_ANNOTATION;
use crate::api::workload::ReplicatedWorkloadStatus;
use kube::runtime::watcher;

/// kubectl's copy of the whole object as last applied, often its largest field.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Every cached object: without its managed fields and kubectl's last-applied copy, which no
/// reconcile reads.
pub fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Of an object whose existence is all that is read: its identity and deletion.
fn identity(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        deletion_timestamp: meta.deletion_timestamp.clone(),
        ..Default::default()
    }
}

/// A pod as the workload controller reads it: labels and owners (whose pod it is), its node,
/// the claims it mounts, and whether it is being deleted.
pub fn pod(p: &mut Pod) {
    trim(p);
    p.metadata.annotations = None;
    p.status = None;
    p.spec = p.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        volumes: spec.volumes.map(|volumes| {
            volumes
                .into_iter()
                .filter_map(|v| {
                    v.persistent_volume_claim.map(|claim| Volume {
                        name: v.name,
                        persistent_volume_claim: Some(claim),
                        ..Default::default()
                    })
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// A claim: whether it exists.
pub fn claim(c: &mut PartialObjectMeta<PersistentVolumeClaim>) {
    c.metadata = identity(&c.metadata);
}

/// A Service, as a recovery point carries it (its status is this cluster's).
pub fn service(s: &mut Service) {
    trim(s);
    s.status = None;
}

/// A Deployment: whether it exists, and which pods it selects.
pub fn deployment(d: &mut Deployment) {
    d.metadata = identity(&d.metadata);
    d.status = None;
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
        spec.strategy = None;
    }
}

/// A StatefulSet: whether it exists, and which pods it selects.
pub fn stateful_set(s: &mut StatefulSet) {
    s.metadata = identity(&s.metadata);
    s.status = None;
    if let Some(spec) = s.spec.as_mut() {
        spec.template = Default::default();
        spec.volume_claim_templates = None;
        spec.update_strategy = None;
    }
}

/// What a pod belongs to, as a workload names it: `(namespace, kind, name)`, the kind being
/// `StatefulSet`, `Deployment`, `VirtualMachine`, or [`HOLDER`] for a pod holding a stopped
/// workload's claims.
pub type Owner = (String, &'static str, String);

/// The owner kind of the pods that hold a stopped workload's claims for its final point.
pub const HOLDER: &str = "Holder";

/// The workloads `pod` belongs to: its StatefulSet's, its Deployment's (a Deployment's pods
/// belong to a ReplicaSet named `<deployment>-<pod-template-hash>`), its VirtualMachine's (a
/// virt-launcher pod belongs to the machine's instance, of the same name), and the workload
/// a holder pod holds claims for.
pub fn owners_of(pod: &impl Resource) -> Vec<Owner> {
    let meta = pod.meta();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let labels = meta.labels.as_ref();
    let hash = labels.and_then(|l| l.get("pod-template-hash"));
    let mut owners: Vec<Owner> = meta
        .owner_references
        .iter()
        .flatten()
        .filter_map(|o| {
            let (kind, name) = match o.kind.as_str() {
                "StatefulSet" => ("StatefulSet", o.name.as_str()),
                "ReplicaSet" => (
                    "Deployment",
                    hash.and_then(|h| o.name.strip_suffix(h.as_str())?.strip_suffix('-'))
                        .or_else(|| o.name.rsplit_once('-').map(|(d, _)| d))?,
                ),
                "Deployment" => ("Deployment", o.name.as_str()),
                "VirtualMachineInstance" => ("VirtualMachine", o.name.as_str()),
                _ => return None,
            };
            Some((namespace.clone(), kind, name.to_string()))
        })
        .collect();
    if let Some(held) = labels.and_then(|l| l.get(crate::api::work::HOLD_LABEL)) {
        owners.push((namespace.clone(), HOLDER, held.clone()));
    }
    owners
}

/// The names of each workload's pods, kept beside the pod cache and updated from the same
/// watch events just before the cache is: a reconcile reads its own pods without walking
/// every pod of the cluster.
#[derive(Debug, Default)]
pub struct PodIndex(std::sync::RwLock<Indexed>);

#[derive(Debug, Default)]
struct Indexed {
    pods: HashMap<Owner, BTreeSet<String>>,
    /// `(namespace, pod)` → its owners, to move or remove it.
    owners: HashMap<(String, String), Vec<Owner>>,
    /// The index a relist is building, swapped in when the list is complete.
    building: Option<Box<Indexed>>,
}

impl Indexed {
    fn insert(&mut self, pod: &Pod) {
        self.remove(pod);
        let key = pod_key(pod);
        let owners = owners_of(pod);
        for owner in &owners {
            self.pods
                .entry(owner.clone())
                .or_default()
                .insert(key.1.clone());
        }
        if !owners.is_empty() {
            self.owners.insert(key, owners);
        }
    }

    fn remove(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        for owner in self.owners.remove(&key).into_iter().flatten() {
            if let Some(names) = self.pods.get_mut(&owner) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.pods.remove(&owner);
                }
            }
        }
    }
}

/// `(namespace, name)` of a pod.
fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl PodIndex {
    /// Follows one event of the pod watch, as the cache does.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(pod) => index.insert(pod),
            watcher::Event::Delete(pod) => index.remove(pod),
            watcher::Event::Init => index.building = Some(Box::default()),
            watcher::Event::InitApply(pod) => {
                if let Some(b) = index.building.as_mut() {
                    b.insert(pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(b) = index.building.take() {
                    index.pods = b.pods;
                    index.owners = b.owners;
                }
            }
        }
    }

    /// The names of the pods `owner` has, in name order.
    pub fn pods(&self, owner: &Owner) -> Vec<String> {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        index
            .pods
            .get(owner)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A workload as an agent's capture loop reads it: its spec, and of its status the point in
/// progress (what to read), where its claims were last seen (a claim mounted elsewhere) and
/// the latest point (the new one's parent). Conditions, the other points and the last
/// attempt stay out: every agent caches every workload of the cluster.
pub fn capture_workload(guard: &mut DeserializeGuard<ReplicatedWorkload>) {
    trim(guard);
    if let Ok(rw) = guard.0.as_mut()
        && let Some(s) = rw.status.take()
    {
        rw.status = Some(ReplicatedWorkloadStatus {
            volumes: s.volumes,
            latest_point: s.latest_point,
            point_in_progress: s.point_in_progress,
            ..Default::default()
        });
    }
}

/// A workload as an agent's freeze loop reads it: which it is and its freeze request; no
/// status, no other annotation or label.
pub fn freeze_workload(guard: &mut DeserializeGuard<ReplicatedWorkload>) {
    trim(guard);
    if let Ok(rw) = guard.0.as_mut() {
        let request = rw
            .metadata
            .annotations
            .as_mut()
            .and_then(|a| a.remove_entry(FREEZE_ANNOTATION));
        rw.metadata = ObjectMeta {
            annotations: request.map(|(k, v)| [(k, v)].into()),
            ..identity(&rw.metadata)
        };
        rw.status = None;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn workload() -> DeserializeGuard<ReplicatedWorkload> {
        serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
            "metadata": {"name": "db", "namespace": "apps", "uid": "w1", "resourceVersion": "7",
                "labels": {"team": "a"},
                "annotations": {FREEZE_ANNOTATION: "{\"point\":\"p2\"}", "note": "x", LAST_APPLIED: "{...}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
            "status": {
                "conditions": [{"type": "Protected", "status": "True", "reason": "Replicated",
                    "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"}],
                "volumes": [{"claimName": "data-db-0", "node": "n1"}],
                "latestPoint": {"id": "p1", "time": "2026-12-01T00:00:00Z", "replicated": true},
                "latestReplicatedPoint": {"id": "p1", "time": "2026-12-01T00:00:00Z", "replicated": true},
                "pointInProgress": {"id": "p2", "consistency": "CrashConsistent", "method": "Live",
                    "started": "2026-12-01T00:05:00Z", "claims": ["data-db-0"]},
            },
        }))
        .unwrap()
    }

    #[test]
    fn an_agents_cached_workload_keeps_what_its_loops_read() {
        let mut capture = workload();
        capture_workload(&mut capture);
        let rw = capture.0.as_ref().unwrap();
        let s = rw.status.as_ref().unwrap();
        assert_eq!(s.point_in_progress.as_ref().unwrap().id, "p2");
        assert_eq!(s.volumes[0].node.as_deref(), Some("n1"));
        assert_eq!(s.latest_point.as_ref().unwrap().id, "p1");
        assert!(s.conditions.is_empty() && s.latest_replicated_point.is_none());
        assert_eq!(rw.spec.vault_name, "vault");
        assert!(rw.metadata.managed_fields.is_none());

        let mut freeze = workload();
        freeze_workload(&mut freeze);
        let rw = freeze.0.as_ref().unwrap();
        assert!(rw.status.is_none());
        assert_eq!(
            rw.metadata.annotations,
            Some(
                [(
                    FREEZE_ANNOTATION.to_string(),
                    "{\"point\":\"p2\"}".to_string()
                )]
                .into()
            )
        );
        assert_eq!(
            (
                rw.metadata.name.as_deref(),
                rw.metadata.namespace.as_deref()
            ),
            (Some("db"), Some("apps"))
        );
        assert!(rw.metadata.labels.is_none() && rw.metadata.managed_fields.is_none());
    }

    #[test]
    fn a_cached_pod_keeps_what_the_workload_reads_and_nothing_else() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "apps", "uid": "u1",
                "labels": {"app": "db"},
                "annotations": {LAST_APPLIED: "{...}", "note": "x"},
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s1"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "db", "image": "postgres", "env": [{"name": "A", "value": "b"}]}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                    {"name": "cfg", "configMap": {"name": "db"}}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        pod(&mut p);
        let kept = serde_json::to_value(&p).unwrap();
        assert_eq!(
            kept,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "db-0", "namespace": "apps", "uid": "u1",
                    "labels": {"app": "db"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s1"}]},
                "spec": {"nodeName": "n1", "containers": [],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]},
            })
        );
    }

    #[test]
    fn a_cached_deployment_keeps_its_selector() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "apps", "uid": "d1", "resourceVersion": "7",
                "labels": {"app": "web"}, "annotations": {LAST_APPLIED: "{...}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
            "status": {"replicas": 2},
        }))
        .unwrap();
        deployment(&mut d);
        let kept = serde_json::to_value(&d).unwrap();
        assert_eq!(
            kept["metadata"],
            json!({"name": "web", "namespace": "apps", "uid": "d1", "resourceVersion": "7"})
        );
        assert_eq!(
            kept["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        assert_eq!(kept["spec"]["template"], json!({}));
        assert!(kept.get("status").is_none());
    }

    fn owned(name: &str, kind: &str, owner: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u"}]},
        }))
        .unwrap()
    }

    fn key(kind: &'static str, name: &str) -> Owner {
        ("apps".into(), kind, name.into())
    }

    #[test]
    fn a_pod_belongs_to_the_workload_its_owner_names() {
        let of = |p: &Pod| owners_of(p);
        assert_eq!(
            of(&owned("db-0", "StatefulSet", "db", json!({}))),
            [key("StatefulSet", "db")]
        );
        // The ReplicaSet's name less the pod-template-hash, even when the Deployment's name
        // has dashes.
        assert_eq!(
            of(&owned(
                "w-1",
                "ReplicaSet",
                "my-web-5d8f9",
                json!({"pod-template-hash": "5d8f9"})
            )),
            [key("Deployment", "my-web")]
        );
        assert_eq!(
            of(&owned("w-1", "ReplicaSet", "web-5d8f9", json!({}))),
            [key("Deployment", "web")]
        );
        assert_eq!(
            of(&owned(
                "virt-launcher-vm-x",
                "VirtualMachineInstance",
                "vm",
                json!({})
            )),
            [key("VirtualMachine", "vm")]
        );
        assert_eq!(
            of(&owned(
                "hold-0",
                "Failover",
                "f",
                json!({crate::api::work::HOLD_LABEL: "db"})
            )),
            [key(HOLDER, "db")]
        );
        assert!(of(&owned("j", "Job", "backup", json!({}))).is_empty());
    }

    #[test]
    fn the_pod_index_follows_the_watch_and_its_relists() {
        let index = PodIndex::default();
        let web = key("Deployment", "web");
        index.apply(&watcher::Event::Apply(owned(
            "web-1",
            "Deployment",
            "web",
            json!({}),
        )));
        index.apply(&watcher::Event::Apply(owned(
            "web-0",
            "Deployment",
            "web",
            json!({}),
        )));
        index.apply(&watcher::Event::Apply(owned(
            "db-0",
            "StatefulSet",
            "db",
            json!({}),
        )));
        assert_eq!(index.pods(&web), ["web-0", "web-1"]);
        // Orphaned (owner removed): no longer the Deployment's.
        let mut orphan = owned("web-1", "Deployment", "web", json!({}));
        orphan.metadata.owner_references = None;
        index.apply(&watcher::Event::Apply(orphan));
        assert_eq!(index.pods(&web), ["web-0"]);
        index.apply(&watcher::Event::Delete(owned(
            "web-0",
            "Deployment",
            "web",
            json!({}),
        )));
        assert!(index.pods(&web).is_empty());
        // A relist replaces everything once complete: what it did not list is gone.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(owned(
            "web-2",
            "Deployment",
            "web",
            json!({}),
        )));
        assert_eq!(
            index.pods(&key("StatefulSet", "db")),
            ["db-0"],
            "kept until the list is complete"
        );
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.pods(&web), ["web-2"]);
        assert!(index.pods(&key("StatefulSet", "db")).is_empty());
    }

    #[test]
    fn trim_keeps_the_annotations_a_reconcile_reads() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {LAST_APPLIED: "{...}", "siterecovery.io/request-point": "1"},
                "managedFields": [{"manager": "kubectl"}]},
        }))
        .unwrap();
        trim(&mut d);
        assert_eq!(
            serde_json::to_value(&d.metadata).unwrap(),
            json!({"name": "web", "annotations": {"siterecovery.io/request-point": "1"}})
        );
    }
}
