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
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};
use crate::repository::Repository;
use crate::vault_access::VaultAccess;

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

/// Which recovery point: the newest when none of these is given.
#[derive(Args, Debug)]
pub struct PointChoice {
    /// A point id (or a unique prefix of one).
    #[arg(long, conflicts_with_all = ["time", "latest_app_consistent"])]
    pub point_id: Option<String>,
    /// The newest point at or before this RFC 3339 time.
    #[arg(long, conflicts_with = "latest_app_consistent")]
    pub time: Option<jiff::Timestamp>,
    /// The newest app-consistent point.
    #[arg(long)]
    pub latest_app_consistent: bool,
}

impl PointChoice {
    fn selector(&self) -> serde_json::Value {
        if let Some(id) = &self.point_id {
            serde_json::json!({"id": id})
        } else if let Some(t) = &self.time {
            serde_json::json!({"time": t.to_string()})
        } else if self.latest_app_consistent {
            serde_json::json!({"latestAppConsistent": true})
        } else {
            serde_json::json!({"latest": true})
        }
    }
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The ReplicatedWorkload to fail over.
    pub workload: String,
    #[command(flatten)]
    pub scope: Scope,
    /// Name of the Failover [default: <workload>-failover].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub point: PointChoice,
    /// A planned failover: stop the workload, take and replicate a final point, fail over to
    /// it (no write is lost; the source zone must still be up).
    #[arg(long, conflicts_with_all = ["point_id", "time", "latest_app_consistent"])]
    pub planned: bool,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The ReplicatedWorkload to test.
    pub workload: String,
    #[command(flatten)]
    pub scope: Scope,
    /// Name of the Failover [default: <workload>-drill].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub point: PointChoice,
    /// The namespace the copy runs in, created for the drill [default: <name>-drill].
    #[arg(long)]
    pub test_namespace: Option<String>,
    /// Image of the verification Job (with the command after `--`).
    #[arg(long, default_value = "busybox")]
    pub verify_image: String,
    /// How long the verification Job may run.
    #[arg(long)]
    pub verify_timeout: Option<String>,
    /// The verification command, run as a Job next to the copy once it is Ready; the drill is
    /// verified when it exits 0.
    #[arg(last = true)]
    pub verify: Vec<String>,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(Args, Debug)]
pub struct NamedArgs {
    /// The Failover.
    pub name: String,
    #[command(flatten)]
    pub scope: Scope,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(Args, Debug)]
pub struct Wait {
    /// Return once the change is made, without waiting for its outcome.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "15m", value_parser = parse_wait)]
    pub timeout: std::time::Duration,
}

fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    crate::api::policy::parse_duration(text)
}

/// Field manager of the plugin's writes (the spec it sets stays visible to GitOps tools).
const PLUGIN_MANAGER: &str = "kubectl-siterecovery";

fn namespace_of(client: &Client, scope: &Scope) -> String {
    scope
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// Waits until `done` says the Failover reached its outcome (Ok) or failed (Err), printing each
/// new timeline step and condition message on the way (table output only).
async fn wait_for(
    api: &Api<Failover>,
    name: &str,
    wait: &Wait,
    output: Output,
    done: impl Fn(&Failover) -> Option<Result<(), String>>,
) -> anyhow::Result<Option<Failover>> {
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut seen_steps = 0;
    let mut last_message = String::new();
    loop {
        let current = api.get_opt(name).await.context("reading the Failover")?;
        if let Some(f) = &current {
            let status = f.status.clone().unwrap_or_default();
            if output == Output::Table {
                for step in status.timeline.iter().skip(seen_steps) {
                    eprintln!("{}  {:<20} {}", step.time, step.step, step.message);
                }
                let message = ["FailedOver", "Committed", "Ready"]
                    .iter()
                    .filter_map(|t| find(&status.conditions, t))
                    .map(|c| format!("{} {}: {}", c.r#type, c.reason, c.message))
                    .next()
                    .unwrap_or_default();
                if message != last_message {
                    eprintln!("  {message}");
                    last_message = message;
                }
            }
            seen_steps = status.timeline.len();
        }
        let Some(f) = &current else {
            return Ok(None);
        };
        match done(f) {
            Some(Ok(())) => return Ok(current),
            Some(Err(message)) => anyhow::bail!("Failover {name}: {message}"),
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "Failover {name}: no outcome within {}s (it goes on in the cluster; `kubectl siterecovery status` shows it)",
                wait.timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn print_failover(output: Output, f: Option<&Failover>) -> anyhow::Result<()> {
    match (output, f) {
        (Output::Table, _) | (_, None) => Ok(()),
        (output, Some(f)) => print(output, f, String::new),
    }
}

fn condition_is(f: &Failover, t: &str, want: &str) -> bool {
    f.status
        .as_ref()
        .and_then(|s| find(&s.conditions, t))
        .is_some_and(|c| c.reason == want)
}

/// `failover`: creates the Failover (phase one) and waits until the workload runs in the
/// target zone.
pub async fn failover(client: Client, args: FailoverArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-failover", args.workload));
    let spec = if args.planned {
        serde_json::json!({"workloadName": args.workload, "mode": "Planned"})
    } else {
        serde_json::json!({"workloadName": args.workload, "recoveryPoint": args.point.selector()})
    };
    let api = apply_failover(&client, &ns, &name, spec).await?;
    eprintln!(
        "Failover {name} of {} created in namespace {ns}",
        args.workload
    );
    if args.wait.no_wait {
        return Ok(());
    }
    let f = wait_for(&api, &name, &args.wait, args.scope.output, |f| {
        if condition_is(f, "FailedOver", "FailedOver") {
            Some(Ok(()))
        } else {
            stuck(f)
        }
    })
    .await?
    .with_context(|| format!("Failover {name} was deleted while it ran"))?;
    if let Some(rto) = f.status.as_ref().and_then(|s| s.rto_seconds) {
        eprintln!(
            "failed over in {rto:.0}s; `kubectl siterecovery commit {name}` commits, `kubectl siterecovery cancel {name}` rolls back"
        );
    }
    print_failover(args.scope.output, Some(&f))
}

/// `drill`: creates a Failover in Test mode and waits until its copy is verified.
pub async fn drill(client: Client, args: DrillArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-drill", args.workload));
    let mut spec = serde_json::json!({
        "workloadName": args.workload, "mode": "Test", "recoveryPoint": args.point.selector(),
    });
    if let Some(test_namespace) = &args.test_namespace {
        spec["testNamespace"] = serde_json::json!(test_namespace);
    }
    if !args.verify.is_empty() {
        spec["verification"] =
            serde_json::json!({"image": args.verify_image, "command": args.verify});
        if let Some(t) = &args.verify_timeout {
            spec["verification"]["timeout"] = serde_json::json!(t);
        }
    }
    let api = apply_failover(&client, &ns, &name, spec).await?;
    eprintln!(
        "Drill {name} of {} created in namespace {ns}",
        args.workload
    );
    if args.wait.no_wait {
        return Ok(());
    }
    let f = wait_for(&api, &name, &args.wait, args.scope.output, |f| {
        if condition_is(f, "Verified", "Verified") {
            Some(Ok(()))
        } else if condition_is(f, "Verified", "VerificationFailed") {
            Some(Err(message_of(f, "Verified")))
        } else {
            stuck(f)
        }
    })
    .await?
    .with_context(|| format!("Failover {name} was deleted while it ran"))?;
    let status = f.status.clone().unwrap_or_default();
    eprintln!(
        "drill verified: the copy was Ready {:.0}s after the restore started, in namespace {}; `kubectl siterecovery cancel {name}` removes it",
        status.rto_seconds.unwrap_or_default(),
        status.restore.and_then(|r| r.namespace).unwrap_or_default()
    );
    print_failover(args.scope.output, Some(&f))
}

/// Creates (or updates) a Failover with server-side apply, as the plugin's field manager.
async fn apply_failover(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<Api<Failover>> {
    let api: Api<Failover> = Api::namespaced(client.clone(), ns);
    let obj = serde_json::json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    api.patch(
        name,
        &kube::api::PatchParams::apply(PLUGIN_MANAGER),
        &kube::api::Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("creating Failover {name}"))?;
    Ok(api)
}

/// A Failover that will not get further without the user: its restore failed, a name it needs
/// is taken, or it cannot start.
fn stuck(f: &Failover) -> Option<Result<(), String>> {
    if ["RestoreFailed", "NameInUse"]
        .iter()
        .any(|r| condition_is(f, "FailedOver", r))
    {
        return Some(Err(message_of(f, "FailedOver")));
    }
    [
        "DuplicateFailover",
        "InvalidSpec",
        "TargetUnreachable",
        "WorkloadNotFound",
    ]
    .iter()
    .any(|r| condition_is(f, "Ready", r))
    .then(|| Err(message_of(f, "Ready")))
}

fn message_of(f: &Failover, t: &str) -> String {
    f.status
        .as_ref()
        .and_then(|s| find(&s.conditions, t))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// `commit`: sets `spec.commit` (phase two) and waits for `Committed=True`.
pub async fn commit(client: Client, args: NamedArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let api: Api<Failover> = Api::namespaced(client.clone(), &ns);
    api.patch(
        &args.name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"commit": true}})),
    )
    .await
    .with_context(|| format!("committing Failover {}", args.name))?;
    if args.wait.no_wait {
        return Ok(());
    }
    let f = wait_for(&api, &args.name, &args.wait, args.scope.output, |f| {
        condition_is(f, "Committed", "Committed").then_some(Ok(()))
    })
    .await?
    .with_context(|| format!("Failover {} was deleted before it was committed", args.name))?;
    eprintln!("Failover {} committed", args.name);
    print_failover(args.scope.output, Some(&f))
}

/// `cancel`: deletes the Failover before commit, which rolls back, and waits until it is gone.
pub async fn cancel(client: Client, args: NamedArgs) -> anyhow::Result<()> {
    let ns = namespace_of(&client, &args.scope);
    let api: Api<Failover> = Api::namespaced(client.clone(), &ns);
    let f = api
        .get_opt(&args.name)
        .await?
        .with_context(|| format!("Failover {} not found in namespace {ns}", args.name))?;
    // What happened, not what was asked: a Failover with spec.commit whose commit has not been
    // recorded still rolls back (the source may already be stopped).
    if f.status
        .as_ref()
        .is_some_and(|s| s.reached(&crate::api::failover::Milestone::Committed))
    {
        anyhow::bail!(
            "Failover {} is committed: there is nothing to roll back (delete it with kubectl if you no longer want the object)",
            args.name
        );
    }
    api.delete(&args.name, &Default::default())
        .await
        .with_context(|| format!("deleting Failover {}", args.name))?;
    if args.wait.no_wait {
        return Ok(());
    }
    // Quietly: the failover's history is not news to the one cancelling it.
    wait_for(&api, &args.name, &args.wait, Output::Json, |_| None).await?;
    if f.spec.mode == crate::api::failover::FailoverMode::Test {
        eprintln!(
            "Drill {} removed with its namespace; the source was never touched",
            args.name
        );
    } else {
        eprintln!(
            "Failover {} cancelled: the workload is back in its source zone",
            args.name
        );
    }
    Ok(())
}

/// The rules the plugin reads a vault's storage under: the installation's filesystem root
/// (`SITE_RECOVERY_FILESYSTEM_ROOT`, the default otherwise) and only the vault's own
/// credentials, never the user's environment unless `SITE_RECOVERY_ALLOW_AMBIENT_CREDENTIALS`
/// is `true`; endpoints as the vault names them (the user chose to read it).
fn plugin_rules() -> crate::storage::StorageRules {
    crate::storage::StorageRules {
        filesystem_root: std::env::var_os("SITE_RECOVERY_FILESYSTEM_ROOT")
            .map(Into::into)
            .unwrap_or_else(|| crate::storage::rules::DEFAULT_FILESYSTEM_ROOT.into()),
        allow_insecure_endpoints: true,
        allow_ambient_credentials: std::env::var("SITE_RECOVERY_ALLOW_AMBIENT_CREDENTIALS")
            .is_ok_and(|v| v == "true"),
    }
}
