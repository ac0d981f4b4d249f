//! Waiting for a Failover's outcome: the predicates that say it was reached or that it is stuck,
//! and the loop that polls until one of them does.

use anyhow::Context as _;
use clap::Args;
use kube::api::Api;

use super::{Output, print};
use crate::api::Failover;
use crate::api::conditions::find;

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

/// Waits until `outcome` says the Failover reached it (or failed), or until it is stuck.
pub(super) async fn wait_for_outcome(
    api: &Api<Failover>,
    name: &str,
    wait: &Wait,
    output: Output,
    outcome: impl Fn(&Failover) -> Option<Result<(), String>>,
) -> anyhow::Result<Failover> {
    wait_for(api, name, wait, output, |f| outcome(f).or_else(|| stuck(f)))
        .await?
        .with_context(|| format!("Failover {name} was deleted while it ran"))
}

/// A failover's outcome: the workload runs in the target zone.
pub(super) fn failed_over(f: &Failover) -> Option<Result<(), String>> {
    condition_is(f, "FailedOver", "FailedOver").then_some(Ok(()))
}

/// A drill's outcome: its copy was verified, or its verification failed.
pub(super) fn verified(f: &Failover) -> Option<Result<(), String>> {
    if condition_is(f, "Verified", "Verified") {
        Some(Ok(()))
    } else if condition_is(f, "Verified", "VerificationFailed") {
        Some(Err(message_of(f, "Verified")))
    } else {
        None
    }
}

/// A commit's outcome: `Committed=True`.
pub(super) fn committed(f: &Failover) -> Option<Result<(), String>> {
    condition_is(f, "Committed", "Committed").then_some(Ok(()))
}

/// Waits until `done` says the Failover reached its outcome (Ok) or failed (Err), printing each
/// new timeline step and condition message on the way (table output only).
pub(super) async fn wait_for(
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

pub(super) fn print_failover(output: Output, f: Option<&Failover>) -> anyhow::Result<()> {
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
