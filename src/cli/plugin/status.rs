//! `status`: the vaults and workloads of a namespace (or all), with their RPO and latest points.

use anyhow::Context as _;
use clap::Args;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::{Scope, columns, condition, dash, namespace_of, print};
use crate::api::{RecoveryVault, ReplicatedWorkload};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct VaultRow {
    namespace: String,
    name: String,
    ready: String,
    cache_zone: Option<String>,
    target_zone: Option<String>,
    message: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct WorkloadRow {
    namespace: String,
    name: String,
    vault: String,
    ready: String,
    protected: String,
    rpo_seconds: Option<i64>,
    latest_point: Option<String>,
    latest_point_time: Option<String>,
    consistency: Option<String>,
    replicated: Option<bool>,
    in_flight: Option<String>,
    message: String,
}

#[derive(Serialize, Debug)]
struct Status {
    vaults: Vec<VaultRow>,
    workloads: Vec<WorkloadRow>,
}

pub async fn status(client: Client, args: StatusArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let (vaults, workloads): (
        Api<DeserializeGuard<RecoveryVault>>,
        Api<DeserializeGuard<ReplicatedWorkload>>,
    ) = if args.all_namespaces {
        (Api::all(client.clone()), Api::all(client.clone()))
    } else {
        (
            Api::namespaced(client.clone(), &ns),
            Api::namespaced(client.clone(), &ns),
        )
    };
    let lp = ListParams::default();
    // Objects that do not deserialize (another version's, or invalid) are left out.
    let status = Status {
        vaults: vaults
            .list(&lp)
            .await
            .context("listing RecoveryVaults")?
            .items
            .into_iter()
            .filter_map(|v| v.0.ok())
            .map(|v| vault_row(&v))
            .collect(),
        workloads: workloads
            .list(&lp)
            .await
            .context("listing ReplicatedWorkloads")?
            .items
            .into_iter()
            .filter_map(|w| w.0.ok())
            .map(|w| workload_row(&w))
            .collect(),
    };
    print(args.scope.output, &status, || status_table(&status))
}

fn vault_row(v: &RecoveryVault) -> VaultRow {
    let (ready, message) = condition(
        v.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default(),
        "Ready",
    );
    VaultRow {
        namespace: v.namespace().unwrap_or_default(),
        name: v.name_any(),
        ready,
        cache_zone: v.spec.cache.zone.clone(),
        target_zone: v.spec.target.zone.clone(),
        message,
    }
}

fn workload_row(w: &ReplicatedWorkload) -> WorkloadRow {
    let s = w.status.clone().unwrap_or_default();
    let (ready, message) = condition(&s.conditions, "Ready");
    let (protected, _) = condition(&s.conditions, "Protected");
    let latest = s.latest_point.clone();
    WorkloadRow {
        namespace: w.namespace().unwrap_or_default(),
        name: w.name_any(),
        vault: w.spec.vault_name.clone(),
        ready,
        protected,
        rpo_seconds: s.rpo_seconds,
        latest_point: latest.as_ref().map(|p| p.id.clone()),
        latest_point_time: latest.as_ref().map(|p| p.time.to_string()),
        consistency: latest.as_ref().map(|p| p.consistency.clone()),
        replicated: latest.as_ref().map(|p| p.replicated),
        in_flight: s.point_in_progress.as_ref().map(|p| p.id.clone()),
        message,
    }
}

/// The table output: the vaults' table, a blank line, the workloads' table.
fn status_table(status: &Status) -> String {
    let vaults = columns(
        &["NAMESPACE", "VAULT", "READY", "CACHE", "TARGET", "MESSAGE"],
        status
            .vaults
            .iter()
            .map(|v| {
                vec![
                    v.namespace.clone(),
                    v.name.clone(),
                    v.ready.clone(),
                    dash(v.cache_zone.clone()),
                    dash(v.target_zone.clone()),
                    v.message.clone(),
                ]
            })
            .collect(),
    );
    let workloads = columns(
        &[
            "NAMESPACE",
            "WORKLOAD",
            "VAULT",
            "READY",
            "PROTECTED",
            "RPO",
            "LATEST POINT",
            "TIME",
            "CONSISTENCY",
            "REPLICATED",
            "IN FLIGHT",
        ],
        status.workloads.iter().map(workload_cells).collect(),
    );
    format!("{vaults}\n{workloads}")
}

fn workload_cells(w: &WorkloadRow) -> Vec<String> {
    vec![
        w.namespace.clone(),
        w.name.clone(),
        w.vault.clone(),
        w.ready.clone(),
        w.protected.clone(),
        w.rpo_seconds
            .map(|r| format!("{r}s"))
            .unwrap_or_else(|| "-".into()),
        dash(w.latest_point.clone()),
        dash(w.latest_point_time.clone()),
        dash(w.consistency.clone()),
        w.replicated
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
        dash(w.in_flight.clone()),
    ]
}
