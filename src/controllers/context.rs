//! What every reconcile shares: the client, the shared reflector stores, the event recorder,
//! metrics and the per-object backoff.

use std::sync::Arc;

use crate::controllers::events::Recorder;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::Client;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::Store;

use super::backoff::Backoffs;
use crate::api::registration::{AgentRegistration, REGION_LABEL, ZONE_LABEL};
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};
use crate::metrics::Metrics;

/// Read-only caches fed by the operator's watches.
#[derive(Clone)]
pub struct Stores {
    pub vaults: Store<DeserializeGuard<RecoveryVault>>,
    pub workloads: Store<DeserializeGuard<ReplicatedWorkload>>,
    pub failovers: Store<DeserializeGuard<Failover>>,
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub registrations: Store<DeserializeGuard<Lease>>,
    /// Pods as [`cache::pod`](crate::cache::pod) keeps them: whose they are, their node
    /// and claims.
    pub pods: Store<Pod>,
    /// Which pods each workload has, updated with the pod cache.
    pub pod_index: Arc<crate::cache::PodIndex>,
    /// Claims, metadata only: whether each exists.
    pub claims: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Deployments and StatefulSets: whether each exists and which pods it selects.
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    /// Services, which recovery points carry with the workloads they select.
    pub services: Store<Service>,
    /// The registrations decoded, for the Lease versions they were decoded from.
    pub decoded: Arc<std::sync::Mutex<Decoded>>,
}

/// Agent registrations decoded from their Leases, and which Lease versions they are: decoded
/// again only when a Lease changed. Every reconcile of every workload reads them: decoding every
/// agent's reports each time made a reconcile's cost (and the heap) grow with the number of
/// workloads the agents report on (a heap profile at 1,000 workloads put 120 MB of the peak
/// there).
#[derive(Debug, Default)]
pub struct Decoded {
    versions: Vec<(String, String)>,
    registrations: Arc<[AgentRegistration]>,
}

/// Zone and region labels of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTopology {
    pub name: String,
    pub zone: Option<String>,
    pub region: Option<String>,
}

impl Stores {
    /// Waits (at most `limit`) until the caches a workload is observed from hold their first
    /// full list: before that, a missing pod or claim means only that it was not listed yet.
    /// The ones still filling, when the limit passed.
    pub async fn workload_caches_ready(&self, limit: std::time::Duration) -> Result<(), String> {
        let (pods, claims, deployments, stateful_sets, services) = futures::join!(
            filled(&self.pods, limit),
            filled(&self.claims, limit),
            filled(&self.deployments, limit),
            filled(&self.stateful_sets, limit),
            filled(&self.services, limit),
        );
        let pending: Vec<&str> = [
            (pods, "pods"),
            (claims, "persistentvolumeclaims"),
            (deployments, "deployments"),
            (stateful_sets, "statefulsets"),
            (services, "services"),
        ]
        .into_iter()
        .filter_map(|(ready, name)| (!ready).then_some(name))
        .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.join(", "))
        }
    }

    /// The cached Services of `namespace`.
    pub fn services_in(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Zone and region of every node, from the metadata-only node cache.
    pub fn node_topology(&self) -> Vec<NodeTopology> {
        self.nodes
            .state()
            .iter()
            .map(|n| {
                let labels = n.metadata.labels.as_ref();
                NodeTopology {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    zone: labels.and_then(|l| l.get(ZONE_LABEL)).cloned(),
                    region: labels.and_then(|l| l.get(REGION_LABEL)).cloned(),
                }
            })
            .collect()
    }

    /// Every cached vault, workload and failover with its conditions (and a Failover's RTO),
    /// for the condition and RTO gauges.
    pub fn object_states(&self) -> Vec<crate::metrics::ObjectState> {
        let mut out = Vec::new();
        states(&mut out, "RecoveryVault", &self.vaults, |v| {
            (v.status.as_ref().map(|s| &s.conditions), None)
        });
        states(&mut out, "ReplicatedWorkload", &self.workloads, |w| {
            (w.status.as_ref().map(|s| &s.conditions), None)
        });
        states(&mut out, "Failover", &self.failovers, |f| {
            let status = f.status.as_ref();
            (
                status.map(|s| &s.conditions),
                status.and_then(|s| s.rto_seconds),
            )
        });
        out
    }

    /// Every agent registration in the cache, decoded once per Lease version.
    pub fn registrations(&self) -> Arc<[AgentRegistration]> {
        let leases = self.registrations.state();
        let versions: Vec<(String, String)> = leases
            .iter()
            .filter_map(|l| l.0.as_ref().ok())
            .map(|l| {
                (
                    l.metadata.name.clone().unwrap_or_default(),
                    l.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect();
        let mut decoded = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        if decoded.versions != versions {
            decoded.registrations = leases
                .iter()
                .filter_map(|l| l.0.as_ref().ok().and_then(AgentRegistration::from_lease))
                .collect();
            decoded.versions = versions;
        }
        decoded.registrations.clone()
    }
}

/// The cluster this operator runs in, as recovery points and fences name it: the uid of its
/// `kube-system` namespace (stable for the cluster's life, the same for every replica) and the
/// human name the chart gives it (`clusterName`; the uid when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub uid: String,
    pub name: String,
}

impl ClusterIdentity {
    /// Reads the uid of `kube-system`; `name` defaults to it.
    pub async fn resolve(client: &Client, name: Option<&str>) -> Result<Self, kube::Error> {
        let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let uid = ns
            .get_metadata("kube-system")
            .await?
            .metadata
            .uid
            .unwrap_or_default();
        Ok(Self {
            name: name
                .filter(|n| !n.is_empty())
                .map_or_else(|| uid.clone(), String::from),
            uid,
        })
    }
}

pub struct Context {
    /// This cluster, as points and fences name it.
    pub cluster: ClusterIdentity,
    pub client: Client,
    pub recorder: Recorder,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub backoffs: Backoffs,
    /// Namespace of the operator, where agent registrations live.
    pub namespace: String,
    /// Image of the reader pods of CSI captures.
    pub reader_image: String,
    /// What vaults' storage may point at; the agents hold the same rules.
    pub storage: crate::storage::StorageRules,
    /// Workloads (`namespace/name`) whose temporary objects were swept since this start.
    pub swept: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What a predecessor left in each namespace, for the workloads' first sweeps.
    pub leftovers: crate::controllers::workload::csi::Leftovers,
    /// The vault uids whose handed Secret exists, as the last sweep listed them and hand-overs
    /// since changed them (`None` until the first sweep).
    pub handed: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    /// The data path's jobs of the workloads (finish, catch-up, retention), and their outcomes.
    pub jobs: super::jobs::Jobs<serde_json::Value, super::jobs::JobKey>,
    /// The vaults' repositories, opened once per vault.
    pub point_stores: super::store::VaultStores,
}

/// Whether `store` holds its first full list within `limit`.
async fn filled<K>(store: &Store<K>, limit: std::time::Duration) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    tokio::time::timeout(limit, store.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Appends each decodable object of `store` as an [`ObjectState`](crate::metrics::ObjectState).
fn states<K>(
    out: &mut Vec<crate::metrics::ObjectState>,
    kind: &'static str,
    store: &Store<DeserializeGuard<K>>,
    read: impl Fn(&K) -> (Option<&Vec<crate::api::conditions::Condition>>, Option<f64>),
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    use kube::ResourceExt;
    for object in store.state() {
        if let Ok(o) = &object.0 {
            let (conditions, rto_seconds) = read(o);
            out.push(crate::metrics::ObjectState {
                kind,
                namespace: o.namespace().unwrap_or_default(),
                name: o.name_any(),
                conditions: conditions.cloned().unwrap_or_default(),
                rto_seconds,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;
    use crate::api::registration::{
        COMPONENT_LABEL, COMPONENT_VALUE, NODE_LABEL, ZONE_ANNOTATION, lease_name,
    };

    fn lease(version: &str, zone: &str) -> DeserializeGuard<Lease> {
        DeserializeGuard(Ok(serde_json::from_value(json!({
            "metadata": {"name": lease_name("n1"), "namespace": "ops", "resourceVersion": version,
                "labels": {COMPONENT_LABEL: COMPONENT_VALUE, NODE_LABEL: "n1"},
                "annotations": {ZONE_ANNOTATION: zone}},
            "spec": {"leaseDurationSeconds": 30},
        }))
        .unwrap()))
    }

    #[test]
    fn registrations_are_decoded_once_per_lease_version() {
        let (registrations, mut writer) = reflector::store();
        let stores = Stores {
            vaults: reflector::store().0,
            workloads: reflector::store().0,
            failovers: reflector::store().0,
            nodes: reflector::store().0,
            registrations,
            pods: reflector::store().0,
            pod_index: Default::default(),
            claims: reflector::store().0,
            deployments: reflector::store().0,
            stateful_sets: reflector::store().0,
            services: reflector::store().0,
            decoded: Default::default(),
        };
        writer.apply_watcher_event(&watcher::Event::Apply(lease("1", "zone-a")));
        let first = stores.registrations();
        assert_eq!(first[0].zone.as_deref(), Some("zone-a"));
        assert!(
            Arc::ptr_eq(&first, &stores.registrations()),
            "the same Lease versions are not decoded again"
        );
        writer.apply_watcher_event(&watcher::Event::Apply(lease("2", "zone-b")));
        let second = stores.registrations();
        assert_eq!(
            second[0].zone.as_deref(),
            Some("zone-b"),
            "a new version is"
        );
        writer.apply_watcher_event(&watcher::Event::Delete(lease("2", "zone-b")));
        assert!(stores.registrations().is_empty());
    }
}
