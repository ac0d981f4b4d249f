//! Keeps this node's registration Lease fresh, and publishes the agent's reports on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use crate::api::registration::{
    COMPONENT_LABEL, COMPONENT_VALUE, NODE_LABEL, REGION_ANNOTATION, REGION_LABEL,
    VERSION_ANNOTATION, ZONE_ANNOTATION, ZONE_LABEL, lease_name,
};
use crate::api::work::{AgentWork, QUEUED_ANNOTATION, WORK_ANNOTATION, encode_queued};

/// Field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "site-recovery-agent";

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub node_name: String,
    /// The operator's namespace, where registrations live.
    pub namespace: String,
    /// How long a registration stays valid without renewal.
    pub lease_duration_seconds: i32,
    /// The kubelet's root directory: the agent reads volumes below it and nowhere else.
    pub kubelet_root: std::path::PathBuf,
    /// What vaults' storage may point at: the same rules as the operator's.
    pub storage: crate::storage::StorageRules,
    /// A host directory (on none of the volumes) where freezes are recorded before they are
    /// made, so that a restarted agent thaws what a killed one left frozen.
    pub state_dir: std::path::PathBuf,
}

/// The agent's reports, keyed by `namespace/workload`, and a bell that asks for them to be
/// published now rather than at the next renewal.
#[derive(Clone, Default)]
pub struct Reports {
    entries: Arc<Mutex<BTreeMap<String, AgentWork>>>,
    /// The queued annotation's value (see [`QUEUED_ANNOTATION`]).
    queued: Arc<Mutex<String>>,
    pub changed: Arc<Notify>,
}

impl Reports {
    pub fn get(&self, key: &str) -> Option<AgentWork> {
        self.entries.lock().expect("reports lock").get(key).cloned()
    }

    /// Records a report; `publish` rings the bell (state changes), progress waits for renewal.
    pub fn set(&self, key: String, work: AgentWork, publish: bool) {
        self.entries.lock().expect("reports lock").insert(key, work);
        if publish {
            self.changed.notify_one();
        }
    }

    /// Says which points wait on this node for a capture slot, published with the next
    /// renewal (well within the operator's patience for a point's first word; a write of the
    /// Lease per change would be one a second while a queue moves).
    pub fn set_queued<'a>(&self, points: impl IntoIterator<Item = &'a str>) {
        let mut ids: Vec<&str> = points.into_iter().collect();
        ids.sort_unstable();
        *self.queued.lock().expect("reports lock") = encode_queued(ids);
    }

    /// Drops reports the operator no longer needs (their point is no longer in flight). The
    /// next renewal carries the shorter list: the operator ignores reports of finished points.
    pub fn retain(&self, keep: impl Fn(&str, &AgentWork) -> bool) {
        self.entries
            .lock()
            .expect("reports lock")
            .retain(|k, v| keep(k, v));
    }

    fn snapshot(&self) -> Vec<AgentWork> {
        self.entries
            .lock()
            .expect("reports lock")
            .values()
            .cloned()
            .collect()
    }
}

/// The node's labels (its zone and region).
async fn node_labels(
    client: &Client,
    settings: &AgentSettings,
) -> Result<BTreeMap<String, String>, kube::Error> {
    let node = Api::<Node>::all(client.clone())
        .get_metadata(&settings.node_name)
        .await?;
    Ok(node.metadata.labels.unwrap_or_default())
}

/// What the Lease's annotations may hold together: the API server refuses more than 256 KiB,
/// and a refused write would be a lost renewal. The queue gets what the reports leave.
const ANNOTATIONS_BUDGET: usize = 250 * 1024;

/// The longest prefix of the space-separated `queued` of at most `budget` bytes, cut between
/// entries.
fn within(queued: &str, budget: usize) -> &str {
    if queued.len() <= budget {
        return queued;
    }
    if queued.as_bytes()[budget] == b' ' {
        return &queued[..budget];
    }
    queued[..budget].rfind(' ').map_or("", |end| &queued[..end])
}

/// Writes the registration once: the node's zone and region (`labels`), renewed now, with the
/// current reports.
async fn register(
    client: &Client,
    settings: &AgentSettings,
    reports: &Reports,
    labels: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let mut annotations = serde_json::Map::new();
    annotations.insert(VERSION_ANNOTATION.into(), json!(env!("CARGO_PKG_VERSION")));
    if let Some(zone) = labels.get(ZONE_LABEL) {
        annotations.insert(ZONE_ANNOTATION.into(), json!(zone));
    }
    if let Some(region) = labels.get(REGION_LABEL) {
        annotations.insert(REGION_ANNOTATION.into(), json!(region));
    }
    let work = reports.snapshot();
    if !work.is_empty() {
        annotations.insert(
            WORK_ANNOTATION.into(),
            json!(serde_json::to_string(&work).expect("reports serialize")),
        );
    }
    let queued = reports.queued.lock().expect("reports lock").clone();
    let used: usize = annotations
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    let queued = within(
        &queued,
        ANNOTATIONS_BUDGET.saturating_sub(used + QUEUED_ANNOTATION.len()),
    );
    if !queued.is_empty() {
        annotations.insert(QUEUED_ANNOTATION.into(), json!(queued));
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(&settings.node_name),
            "labels": {COMPONENT_LABEL: COMPONENT_VALUE, NODE_LABEL: settings.node_name, "app.kubernetes.io/name": "site-recovery"},
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": settings.node_name,
            "leaseDurationSeconds": settings.lease_duration_seconds,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
        },
    });
    Api::<Lease>::namespaced(client.clone(), &settings.namespace)
        .patch(
            &lease_name(&settings.node_name),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// How long a report that asks to be published waits for others: outcomes that come together
/// (many small parts finishing) go out in one Lease write.
const GATHER: Duration = Duration::from_millis(200);

/// Renews the registration every third of its duration, and soon (after [`GATHER`]) when a
/// report changes state. The node's labels are read again at each renewal, not for each
/// report. A failed renewal is retried at the next tick (or after a second when a report waits).
pub async fn keep_registered(client: Client, settings: AgentSettings, reports: Reports) {
    let period = Duration::from_secs((settings.lease_duration_seconds.max(3) / 3) as u64);
    let mut ticker = tokio::time::interval(period);
    let mut labels: Option<BTreeMap<String, String>> = None;
    tracing::info!(node = %settings.node_name, namespace = %settings.namespace, "registering node");
    loop {
        let renewal = tokio::select! {
            _ = ticker.tick() => true,
            () = reports.changed.notified() => false,
        };
        if !renewal {
            tokio::time::sleep(GATHER).await;
        }
        if renewal || labels.is_none() {
            match node_labels(&client, &settings).await {
                Ok(l) => labels = Some(l),
                Err(e) if labels.is_none() => {
                    tracing::warn!(error = %e, node = %settings.node_name, "could not read the node's labels");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    reports.changed.notify_one();
                    continue;
                }
                // The labels read before stand until the next renewal.
                Err(e) => {
                    tracing::warn!(error = %e, node = %settings.node_name, "could not read the node's labels")
                }
            }
        }
        let labels = labels.as_ref().expect("read above");
        if let Err(e) = register(&client, &settings, &reports, labels).await {
            tracing::warn!(error = %e, node = %settings.node_name, "could not renew the node registration");
            tokio::time::sleep(Duration::from_secs(1)).await;
            reports.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn the_queue_gets_what_the_other_annotations_leave_cut_between_entries() {
        let queued = "00000001 00000002 00000003";
        assert_eq!(within(queued, 100), queued);
        assert_eq!(within(queued, 26), queued);
        assert_eq!(within(queued, 25), "00000001 00000002");
        assert_eq!(within(queued, 17), "00000001 00000002");
        assert_eq!(within(queued, 16), "00000001");
        assert_eq!(within(queued, 8), "00000001");
        assert_eq!(within(queued, 7), "");
        assert_eq!(within(queued, 0), "");
    }
}
