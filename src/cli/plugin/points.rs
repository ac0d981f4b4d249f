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
    /// The ReplicatedWorkload.
    pub workload: String,
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

pub async fn points(client: Client, args: PointsArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let workload = Api::<ReplicatedWorkload>::namespaced(client.clone(), &ns)
        .get_opt(&args.workload)
        .await
        .context("reading the ReplicatedWorkload")?
        .with_context(|| {
            format!(
                "ReplicatedWorkload {} not found in namespace {ns}",
                args.workload
            )
        })?;
    let vault_name = &workload.spec.vault_name;
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
    let key = format!("{ns}/{}", args.workload);
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
