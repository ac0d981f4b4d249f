//! The scenario most failover tests start from, and the check they end with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use site_recovery::api::workload::PointRef;
use site_recovery::api::{Failover, ReplicatedWorkload};

use crate::operator::Running;
use crate::replication::{
    Agent, Content, first_point, live_vault, parts_left, protect, setup, temporaries, write_version,
};
use crate::rig::{Rig, eventually};

/// The operator (as the chart's ServiceAccount) and a live vault (cache zone-a, target zone-b),
/// StatefulSet `db` with `data-db-0` on node-a1 and `data-db-1` on node-a2, agents on node-a1,
/// node-a2 and node-b1, version 1 of the data written, the workload protected and its first
/// point replicated.
pub(crate) struct Protected {
    pub rig: Rig,
    /// Holds the vault's locations: bind it for the whole test (`dir: _dir`), since `..` drops
    /// it, and with it every recovery point.
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub volumes: BTreeMap<String, PathBuf>,
    pub agents: Vec<Agent>,
    pub workloads: Api<ReplicatedWorkload>,
    pub failovers: Api<Failover>,
    /// What version 1 wrote.
    pub content: Content,
    pub first: PointRef,
}

pub(crate) async fn protected() -> Protected {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let content = write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    let first = first_point(&workloads)
        .await
        .latest_replicated_point
        .expect("the first point");
    let failovers = Api::namespaced(rig.client(), "apps");
    Protected {
        rig,
        dir,
        running,
        volumes,
        agents,
        workloads,
        failovers,
        content,
        first,
    }
}

/// The rig plays scheduler, kubelet and StatefulSet controller in `apps` for each zone's node.
pub(crate) fn zones(rig: &Rig, zones: &[(&str, &str)]) -> tokio::task::JoinHandle<()> {
    crate::rig::failover::run(
        rig,
        "apps",
        zones
            .iter()
            .map(|(z, n)| (z.to_string(), n.to_string()))
            .collect(),
    )
}

/// `Some(())` once object `name` is gone (for [`eventually`]).
pub(crate) async fn gone<K>(api: &Api<K>, name: &str) -> Option<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.ok()?.is_none().then_some(())
}

/// Ends a scenario: nothing temporary is left once the work settles (no writer, holder or
/// reader pod in any namespace, no VolumeSnapshot or reader claim of a point, no part in the
/// cache); then the operator and the agents stop.
pub(crate) async fn finish(rig: &Rig, dir: &Path, running: Running, agents: Vec<Agent>) {
    eventually(
        Duration::from_secs(60),
        "nothing temporary left",
        || async {
            let pods = Api::<Pod>::all(rig.client())
                .list_metadata(&ListParams::default())
                .await
                .ok()?;
            let temporary: Vec<String> = pods
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .filter(|n| n.starts_with("sr-"))
                .collect();
            (temporary.is_empty() && temporaries(rig).await.is_empty()).then_some(())?;
            parts_left(&dir.join("cache")).is_empty().then_some(())
        },
    )
    .await;
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

/// Waits until condition `type_` of Failover `name` is True; returns the status then.
pub(crate) async fn condition_true(
    failovers: &Api<Failover>,
    name: &str,
    type_: &str,
    within: Duration,
) -> site_recovery::api::failover::FailoverStatus {
    eventually(within, &format!("{name}: {type_}=True"), || async {
        let s = failovers.get(name).await.ok()?.status?;
        (crate::operator::condition(&s.conditions, type_)?.0 == "True").then_some(s)
    })
    .await
}

/// Phase two of Failover `name`: `spec.commit`, then Committed=True.
pub(crate) async fn commit(failovers: &Api<Failover>, name: &str) {
    failovers
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"commit": true}})),
        )
        .await
        .unwrap();
    condition_true(failovers, name, "Committed", Duration::from_secs(60)).await;
}
