//! What every reconcile shares: the client, the shared reflector stores, the event recorder,
//! metrics and the per-object backoff.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::events::Recorder;
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
}

/// Zone and region labels of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTopology {
    pub name: String,
    pub zone: Option<String>,
    pub region: Option<String>,
}

impl Stores {
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

    /// Every agent registration in the cache.
    /// The RTO of every cached Failover that reached its workload.
    pub fn failover_rtos(&self) -> Vec<(String, String, f64)> {
        use kube::ResourceExt;
        self.failovers
            .state()
            .iter()
            .filter_map(|f| {
                let f = f.0.as_ref().ok()?;
                let rto = f.status.as_ref()?.rto_seconds?;
                Some((f.namespace().unwrap_or_default(), f.name_any(), rto))
            })
            .collect()
    }

    /// Every cached vault's, workload's and failover's conditions, for the condition gauge.
    pub fn conditions(
        &self,
    ) -> Vec<(
        &'static str,
        String,
        String,
        Vec<crate::api::conditions::Condition>,
    )> {
        use kube::ResourceExt;
        let mut out = Vec::new();
        for v in self.vaults.state() {
            if let Ok(v) = &v.0 {
                let c = v
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                out.push((
                    "RecoveryVault",
                    v.namespace().unwrap_or_default(),
                    v.name_any(),
                    c,
                ));
            }
        }
        for w in self.workloads.state() {
            if let Ok(w) = &w.0 {
                let c = w
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                out.push((
                    "ReplicatedWorkload",
                    w.namespace().unwrap_or_default(),
                    w.name_any(),
                    c,
                ));
            }
        }
        for f in self.failovers.state() {
            if let Ok(f) = &f.0 {
                let c = f
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                out.push((
                    "Failover",
                    f.namespace().unwrap_or_default(),
                    f.name_any(),
                    c,
                ));
            }
        }
        out
    }

    pub fn registrations(&self) -> Vec<AgentRegistration> {
        self.registrations
            .state()
            .iter()
            .filter_map(|l| l.0.as_ref().ok().and_then(AgentRegistration::from_lease))
            .collect()
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
    /// The vault uids whose handed Secret exists, as the last sweep listed them and hand-overs
    /// since changed them (`None` until the first sweep).
    pub handed: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    /// The data path's jobs of the workloads (finish, catch-up, retention), and their outcomes.
    pub jobs: super::jobs::Jobs<serde_json::Value, super::jobs::JobKey>,
    /// The vaults' repositories, opened once per vault.
    pub point_stores: super::store::VaultStores,
}
