//! The everyday verbs, as `site-recovery <verb>` or, installed under the name
//! `kubectl-siterecovery`, as `kubectl siterecovery <verb>`: `status` (vaults, workloads, RPO,
//! latest points), `points` (listed from the repository itself, so that they can be listed
//! with only the target location reachable), and `failover`, `drill`, `commit` and `cancel`
//! (writes to Failovers, then a wait for the outcome, in `wait`). This module holds what they
//! share: the scope and output options, the table layout, the storage rules.

mod failover;
mod points;
mod status;
mod wait;

pub use failover::{
    DrillArgs, FailoverArgs, NamedArgs, PointChoice, cancel, commit, drill, failover,
};
pub use points::{PointsArgs, Which, points};
pub use status::{StatusArgs, status};
pub use wait::Wait;

use clap::{Args, ValueEnum};
use kube::Client;
use serde::Serialize;

use crate::api::conditions::find;

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
        .map(|c| (c.status.as_str().to_string(), c.message.clone()))
        .unwrap_or_else(|| ("Unknown".into(), "not yet reconciled".into()))
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn namespace_of(client: &Client, scope: &Scope) -> String {
    scope
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string())
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
