//! The everyday verbs, as `site-recovery <verb>` or, installed under the name
//! `kubectl-siterecovery`, as `kubectl siterecovery <verb>`: `status` (vaults, workloads, RPO,
//! latest points) and `points` (listed from the repository itself, so that they can be listed
//! with only the target location reachable).

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::api::conditions::find;
use crate::api::{RecoveryVault, ReplicatedWorkload};
use crate::repository::Repository;
use crate::storage::vault::VaultAccess;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct Scope {
    /// Namespace [default: the kube context's].
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

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

fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn condition(conditions: &[crate::api::Condition], t: &str) -> (String, String) {
    find(conditions, t)
        .map(|c| {
            let status = match c.status {
                crate::api::ConditionStatus::True => "True",
                crate::api::ConditionStatus::False => "False",
                crate::api::ConditionStatus::Unknown => "Unknown",
            };
            (status.to_string(), c.message.clone())
        })
        .unwrap_or_else(|| ("Unknown".into(), "not yet reconciled".into()))
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

pub async fn status(client: Client, args: StatusArgs) -> anyhow::Result<()> {
    let ns = args
        .scope
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
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
    let mut status = Status {
        vaults: vec![],
        workloads: vec![],
    };
    for v in vaults
        .list(&lp)
        .await
        .context("listing RecoveryVaults")?
        .items
    {
        let Ok(v) = v.0 else { continue };
        let (ready, message) = condition(
            v.status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            "Ready",
        );
        status.vaults.push(VaultRow {
            namespace: v.namespace().unwrap_or_default(),
            name: v.name_any(),
            ready,
            cache_zone: v.spec.cache.zone.clone(),
            target_zone: v.spec.target.zone.clone(),
            message,
        });
    }
    for w in workloads
        .list(&lp)
        .await
        .context("listing ReplicatedWorkloads")?
        .items
    {
        let Ok(w) = w.0 else { continue };
        let s = w.status.clone().unwrap_or_default();
        let (ready, message) = condition(&s.conditions, "Ready");
        let (protected, _) = condition(&s.conditions, "Protected");
        let latest = s.latest_point.clone();
        status.workloads.push(WorkloadRow {
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
        });
    }
    print(args.scope.output, &status, || {
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
            status
                .workloads
                .iter()
                .map(|w| {
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
                })
                .collect(),
        );
        format!("{vaults}\n{workloads}")
    })
}

pub async fn points(client: Client, args: PointsArgs) -> anyhow::Result<()> {
    let ns = args
        .scope
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
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
    let access = VaultAccess::resolve(&client, &ns, &vault.spec)
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
