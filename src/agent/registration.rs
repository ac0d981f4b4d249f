//! Keeps this node's registration Lease fresh.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::registration::{
    COMPONENT_LABEL, COMPONENT_VALUE, NODE_LABEL, REGION_ANNOTATION, REGION_LABEL,
    VERSION_ANNOTATION, ZONE_ANNOTATION, ZONE_LABEL, lease_name,
};

/// Field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "site-recovery-agent";

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub node_name: String,
    /// The operator's namespace, where registrations live.
    pub namespace: String,
    /// How long a registration stays valid without renewal.
    pub lease_duration_seconds: i32,
}

/// Writes the registration once: the node's current zone and region, renewed now.
pub async fn register(client: &Client, settings: &AgentSettings) -> Result<(), kube::Error> {
    let node = Api::<Node>::all(client.clone())
        .get_metadata(&settings.node_name)
        .await?;
    let labels = node.metadata.labels.unwrap_or_default();
    let now = jiff::Timestamp::now();
    let mut annotations = serde_json::Map::new();
    annotations.insert(VERSION_ANNOTATION.into(), json!(env!("CARGO_PKG_VERSION")));
    if let Some(zone) = labels.get(ZONE_LABEL) {
        annotations.insert(ZONE_ANNOTATION.into(), json!(zone));
    }
    if let Some(region) = labels.get(REGION_LABEL) {
        annotations.insert(REGION_ANNOTATION.into(), json!(region));
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

/// Renews the registration every third of its duration until `shutdown` resolves. A failed
/// renewal is retried at the next tick; the registration lapses only if renewals keep failing.
pub async fn run(
    client: Client,
    settings: AgentSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let period = Duration::from_secs((settings.lease_duration_seconds.max(3) / 3) as u64);
    let mut ticker = tokio::time::interval(period);
    tokio::pin!(shutdown);
    tracing::info!(node = %settings.node_name, namespace = %settings.namespace, "registering node");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                if let Err(e) = register(&client, &settings).await {
                    tracing::warn!(error = %e, node = %settings.node_name, "could not renew the node registration");
                }
            }
        }
    }
    tracing::info!(node = %settings.node_name, "agent stopped");
    Ok(())
}
