//! `points`: a workload's points, listed from the repository itself, so that they can be listed
//! with only the target location reachable.

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kube::Client;
use kube::api::Api;
use serde::Serialize;

use super::{Scope, columns, dash, namespace_of, plugin_rules, print};
use crate::api::{RecoveryVault, ReplicatedWorkload};
use crate::repository::Repository;
use crate::vault_access::VaultAccess;

#[derive(Args, Debug)]
pub struct PointsArgs {
    /// The ReplicatedWorkload (with `--vault`: the workload's name as the vault lists it; left
    /// out, the workloads the vault's location holds are listed).
    pub workload: Option<String>,
    /// Read this RecoveryVault's location directly: no ReplicatedWorkload is needed (a standby
    /// cluster lists what another cluster protected).
    #[arg(long)]
    pub vault: Option<String>,
    #[command(flatten)]
    pub scope: Scope,
    /// Which location to list: the target (default; all a failover needs) or the cache.
    #[arg(long, value_enum, default_value_t = Which::Target)]
    pub location: Which,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Which {
    Cache,
    Target,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PointRow {
    id: String,
    time: String,
    consistency: String,
    source_zone: Option<String>,
    volumes: Vec<String>,
    bytes: u64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct WorkloadRow {
    namespace: String,
    name: String,
    kind: String,
    cluster: String,
    points: usize,
    latest_point: String,
    latest_point_time: String,
    fenced_by: Option<String>,
}

pub async fn points(client: Client, args: PointsArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let vault_name = match (&args.vault, &args.workload) {
        (Some(v), _) => v.clone(),
        (None, Some(w)) => {
            Api::<ReplicatedWorkload>::namespaced(client.clone(), &ns)
                .get_opt(w)
                .await
                .context("reading the ReplicatedWorkload")?
                .with_context(|| {
                    format!("ReplicatedWorkload {w} not found in namespace {ns} (to list a vault's workloads, pass --vault)")
                })?
                .spec
                .vault_name
        }
        (None, None) => anyhow::bail!("name a ReplicatedWorkload, or a vault with --vault"),
    };
    let vault_name = &vault_name;
    let vault = Api::<RecoveryVault>::namespaced(client.clone(), &ns)
        .get_opt(vault_name)
        .await
        .context("reading the RecoveryVault")?
        .with_context(|| {
            format!("spec.vaultName: RecoveryVault {vault_name} not found in namespace {ns}")
        })?;
    let access = VaultAccess::resolve(&client, &ns, &vault.spec, &plugin_rules())
        .await
        .with_context(|| format!("RecoveryVault {vault_name}"))?;
    let (name, location) = match args.location {
        Which::Target => ("target", access.target.clone()),
        Which::Cache => ("cache", access.cache.clone()),
    };
    let repo = Repository::open(location, &access.key)
        .await
        .with_context(|| format!("opening the {name} location of RecoveryVault {vault_name}"))?;
    let Some(workload) = &args.workload else {
        return workloads(&repo, name, args.scope.output).await;
    };
    let key = format!("{ns}/{workload}");
    let rows: Vec<PointRow> = repo
        .manifests()
        .await
        .with_context(|| format!("listing the points in the {name} location"))?
        .into_iter()
        .filter(|m| m.workload == key)
        .map(|m| PointRow {
            id: m.id,
            time: m.time,
            consistency: m.consistency.as_str().into(),
            source_zone: m.source_zone,
            volumes: m.volumes.into_iter().map(|v| v.name).collect(),
            bytes: m.stats.bytes,
        })
        .collect();
    print(args.scope.output, &rows, || {
        columns(
            &[
                "POINT",
                "TIME",
                "CONSISTENCY",
                "SOURCE ZONE",
                "VOLUMES",
                "BYTES",
            ],
            rows.iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        p.time.clone(),
                        p.consistency.clone(),
                        dash(p.source_zone.clone()),
                        p.volumes.join(","),
                        p.bytes.to_string(),
                    ]
                })
                .collect(),
        )
    })
}

/// The workloads a location holds points of, with who protected them and who fenced them.
async fn workloads(repo: &Repository, name: &str, output: super::Output) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for w in repo
        .workloads()
        .await
        .with_context(|| format!("listing the workloads in the {name} location"))?
    {
        let fence = repo
            .latest_fence(&w.workload)
            .await
            .with_context(|| format!("reading the fence of {}", w.workload))?;
        let (namespace, workload) = w.workload.split_once('/').unwrap_or(("", &w.workload));
        rows.push(WorkloadRow {
            namespace: namespace.into(),
            name: workload.into(),
            kind: w.kind,
            cluster: if w.cluster_name.is_empty() {
                w.cluster_uid
            } else {
                w.cluster_name
            },
            points: w.points,
            latest_point: w.latest_id,
            latest_point_time: w.latest_time,
            fenced_by: fence.map(|f| {
                if f.cluster_name.is_empty() {
                    f.cluster_uid
                } else {
                    f.cluster_name
                }
            }),
        });
    }
    let now = jiff::Timestamp::now();
    print(output, &rows, || {
        columns(
            &[
                "NAMESPACE",
                "NAME",
                "KIND",
                "CLUSTER",
                "POINTS",
                "LATEST",
                "AGE",
                "FENCED BY",
            ],
            rows.iter()
                .map(|w| {
                    let age = w
                        .latest_point_time
                        .parse::<jiff::Timestamp>()
                        .map(|t| format!("{}s", now.duration_since(t).as_secs().max(0)))
                        .unwrap_or_else(|_| "-".into());
                    vec![
                        w.namespace.clone(),
                        w.name.clone(),
                        dash(Some(w.kind.clone()).filter(|k| !k.is_empty())),
                        dash(Some(w.cluster.clone()).filter(|c| !c.is_empty())),
                        w.points.to_string(),
                        w.latest_point.clone(),
                        age,
                        dash(w.fenced_by.clone()),
                    ]
                })
                .collect(),
        )
    })
}
