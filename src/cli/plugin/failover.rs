//! `failover`, `drill`, `commit` and `cancel`: the plugin's writes to Failovers, each followed
//! (unless `--no-wait`) by a wait for its outcome.

use anyhow::Context as _;
use clap::Args;
use kube::Client;
use kube::api::Api;

use super::wait::{
    Wait, committed, failed_over, print_failover, verified, wait_for, wait_for_outcome,
};
use super::{Output, Scope, namespace_of};
use crate::api::Failover;

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

/// A region failover, in a cluster that did not protect the workload.
#[derive(Args, Debug)]
pub struct FromVault {
    /// Fail over the workload as this RecoveryVault's target location lists it (`points
    /// --vault`), not a ReplicatedWorkload of this cluster.
    #[arg(long)]
    pub vault: Option<String>,
    /// With `--vault`, from the operator's namespace: the namespace the workload ran in; it is
    /// created when missing.
    #[arg(long, requires = "vault")]
    pub workload_namespace: Option<String>,
}

impl FromVault {
    fn apply(&self, spec: &mut serde_json::Value) {
        if let Some(v) = &self.vault {
            spec["vaultName"] = serde_json::json!(v);
        }
        if let Some(ns) = &self.workload_namespace {
            spec["workloadNamespace"] = serde_json::json!(ns);
        }
    }
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The ReplicatedWorkload to fail over (with `--vault`: the workload as the vault lists it).
    pub workload: String,
    #[command(flatten)]
    pub scope: Scope,
    #[command(flatten)]
    pub from: FromVault,
    /// Name of the Failover [default: <workload>-failover].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub point: PointChoice,
    /// A planned failover: stop the workload, take and replicate a final point, fail over to
    /// it (no write is lost; the source zone must still be up).
    #[arg(long, conflicts_with_all = ["point_id", "time", "latest_app_consistent", "vault"])]
    pub planned: bool,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The ReplicatedWorkload to test (with `--vault`: the workload as the vault lists it).
    pub workload: String,
    #[command(flatten)]
    pub scope: Scope,
    #[command(flatten)]
    pub from: FromVault,
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

/// Field manager of the plugin's writes (the spec it sets stays visible to GitOps tools).
const PLUGIN_MANAGER: &str = "kubectl-siterecovery";

/// `failover`: creates the Failover (phase one) and waits until the workload runs in the
/// target zone.
pub async fn failover(client: Client, args: FailoverArgs) -> anyhow::Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-failover", args.workload));
    let spec = failover_spec(&args);
    let outcome = create_and_wait(
        &client,
        &args.scope,
        &args.workload,
        &name,
        spec,
        &args.wait,
        failed_over,
    );
    let Some(f) = outcome.await? else {
        return Ok(());
    };
    if let Some(rto) = f.status.as_ref().and_then(|s| s.rto_seconds) {
        eprintln!(
            "failed over in {rto:.0}s; `kubectl siterecovery commit {name}` commits, `kubectl siterecovery cancel {name}` rolls back"
        );
    }
    print_failover(args.scope.output, Some(&f))
}

/// `drill`: creates a Failover in Test mode and waits until its copy is verified.
pub async fn drill(client: Client, args: DrillArgs) -> anyhow::Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-drill", args.workload));
    let spec = drill_spec(&args);
    let outcome = create_and_wait(
        &client,
        &args.scope,
        &args.workload,
        &name,
        spec,
        &args.wait,
        verified,
    );
    let Some(f) = outcome.await? else {
        return Ok(());
    };
    let status = f.status.clone().unwrap_or_default();
    eprintln!(
        "drill verified: the copy was Ready {:.0}s after the restore started, in namespace {}; `kubectl siterecovery cancel {name}` removes it",
        status.rto_seconds.unwrap_or_default(),
        status.restore.and_then(|r| r.namespace).unwrap_or_default()
    );
    print_failover(args.scope.output, Some(&f))
}

fn failover_spec(args: &FailoverArgs) -> serde_json::Value {
    let mut spec = if args.planned {
        serde_json::json!({"workloadName": args.workload, "mode": "Planned"})
    } else {
        serde_json::json!({"workloadName": args.workload, "recoveryPoint": args.point.selector()})
    };
    args.from.apply(&mut spec);
    spec
}

fn drill_spec(args: &DrillArgs) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "workloadName": args.workload, "mode": "Test", "recoveryPoint": args.point.selector(),
    });
    if let Some(test_namespace) = &args.test_namespace {
        spec["testNamespace"] = serde_json::json!(test_namespace);
    }
    args.from.apply(&mut spec);
    if !args.verify.is_empty() {
        spec["verification"] =
            serde_json::json!({"image": args.verify_image, "command": args.verify});
        if let Some(t) = &args.verify_timeout {
            spec["verification"]["timeout"] = serde_json::json!(t);
        }
    }
    spec
}

/// Creates the Failover `name` of `workload` (a drill when `spec` is in Test mode), says so,
/// and, unless `--no-wait`, waits for its `outcome` (None: not waited for).
async fn create_and_wait(
    client: &Client,
    scope: &Scope,
    workload: &str,
    name: &str,
    spec: serde_json::Value,
    wait: &Wait,
    outcome: impl Fn(&Failover) -> Option<Result<(), String>>,
) -> anyhow::Result<Option<Failover>> {
    let ns = namespace_of(client, scope);
    let what = if spec["mode"] == "Test" {
        "Drill"
    } else {
        "Failover"
    };
    let api = apply_failover(client, &ns, name, spec).await?;
    eprintln!("{what} {name} of {workload} created in namespace {ns}");
    if wait.no_wait {
        return Ok(None);
    }
    Ok(Some(
        wait_for_outcome(&api, name, wait, scope.output, outcome).await?,
    ))
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
    let f = wait_for(&api, &args.name, &args.wait, args.scope.output, committed)
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Failover {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn spec(argv: &[&str]) -> Result<serde_json::Value, clap::Error> {
        let parsed =
            Failover::try_parse_from(std::iter::once("failover").chain(argv.iter().copied()))?;
        Ok(failover_spec(&parsed.args))
    }

    #[test]
    fn a_region_failover_names_the_vault_and_the_workloads_namespace() {
        assert_eq!(
            spec(&[
                "db",
                "--vault",
                "dr",
                "--workload-namespace",
                "shop",
                "--point-id",
                "p1"
            ])
            .unwrap(),
            json!({"workloadName": "db", "recoveryPoint": {"id": "p1"}, "vaultName": "dr", "workloadNamespace": "shop"})
        );
        assert_eq!(
            spec(&["db"]).unwrap(),
            json!({"workloadName": "db", "recoveryPoint": {"latest": true}})
        );
        let planned = spec(&["db", "--vault", "dr", "--planned"]).unwrap_err();
        assert_eq!(planned.kind(), clap::error::ErrorKind::ArgumentConflict);
        let alone = spec(&["db", "--workload-namespace", "shop"]).unwrap_err();
        assert_eq!(
            alone.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }
}
