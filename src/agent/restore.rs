//! Carries out the restores of Failovers: for every Failover with a `status.restore` in flight,
//! fills the target claims mounted by writer pods on this node from the vault's target location
//! (the source zone may be gone), verifies them, and reports on the registration Lease. A claim
//! is reported Done only when every byte was authenticated and the restore finished (the
//! incomplete marker removed); anything else is Failed with the reason.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::capture::{Mounted, mount_path};
use super::error::WorkError;
use super::registration::{AgentSettings, Reports};
use super::scan::Scan;
use crate::api::failover::Restore;
use crate::api::work::{AgentWork, FAILOVER_LABEL, WorkKind, WorkState, writer_name};
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};
use crate::repository::Repository;
use crate::repository::restore::{INCOMPLETE_MARKER, RestoreOptions, restore};
use crate::vault_access::VaultAccess;

/// (source claim = volume of the point, target claim, mount directory or device)
type Local = Vec<(String, String, Mounted)>;

pub async fn run_restores(client: Client, settings: AgentSettings, reports: Reports) {
    let mut scan = Scan::<Failover>::new(&client, Duration::from_secs(1), crate::cache::trim);
    while scan.next_pass().await {
        let mut in_flight = HashSet::new();
        for guard in scan.store.state() {
            let Ok(f) = &guard.0 else { continue };
            let Some(r) = f.status.as_ref().and_then(|s| s.restore.clone()) else {
                continue;
            };
            if r.completed.is_some()
                || r.failed.is_some()
                || f.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let key = format!(
                "restore:{}/{}/{}",
                f.namespace().unwrap_or_default(),
                f.name_any(),
                f.uid().unwrap_or_default()
            );
            in_flight.insert((key.clone(), r.point.clone()));
            if scan.started.contains(&(key.clone(), r.point.clone())) {
                continue;
            }
            match local_writers(&client, &settings, f, &r).await {
                Ok(None) => {}
                Ok(Some(local)) => {
                    scan.started.insert((key.clone(), r.point.clone()));
                    if !local.is_empty() {
                        scan.tasks.spawn(run_one(
                            client.clone(),
                            settings.clone(),
                            reports.clone(),
                            f.clone(),
                            r,
                            key,
                            local,
                        ));
                    }
                }
                Err(e) => {
                    scan.started.insert((key.clone(), r.point.clone()));
                    let failed = report(f, &r, WorkState::Failed, vec![], e.to_string());
                    reports.set(key, failed, true);
                }
            }
        }
        scan.end_pass(&in_flight, &reports, WorkKind::Restore);
    }
}

fn report(
    f: &Failover,
    r: &Restore,
    state: WorkState,
    claims: Vec<String>,
    message: String,
) -> AgentWork {
    AgentWork {
        claims,
        ..AgentWork::about(WorkKind::Restore, f, &r.point, state, message)
    }
}

/// The writer pods of this restore on this node, once every writer pod is scheduled and its
/// claim mounted; `None` while waiting.
async fn local_writers(
    client: &Client,
    settings: &AgentSettings,
    f: &Failover,
    r: &Restore,
) -> Result<Option<Local>, WorkError> {
    // A drill's claims are in the drill's namespace.
    let namespace = r
        .namespace
        .clone()
        .unwrap_or_else(|| f.namespace().unwrap_or_default());
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("{FAILOVER_LABEL}={}", f.name_any())))
        .await
        .map_err(WorkError::api("listing writer pods"))?;
    let mut local = Vec::new();
    for (i, v) in r.volumes.iter().enumerate() {
        let name = writer_name(&f.name_any(), i);
        let Some(pod) = pods.items.iter().find(|p| p.name_any() == name) else {
            return Ok(None);
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(None);
        };
        if node != settings.node_name {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        match mount_path(client, settings, &namespace, &v.target_claim, &uid).await? {
            Some(path) => local.push((v.source_claim.clone(), v.target_claim.clone(), path)),
            None => return Ok(None),
        }
    }
    Ok(Some(local))
}

async fn run_one(
    client: Client,
    settings: AgentSettings,
    reports: Reports,
    f: Failover,
    r: Restore,
    key: String,
    local: Local,
) {
    let claims: Vec<String> = local.iter().map(|(_, t, _)| t.clone()).collect();
    reports.set(
        key.clone(),
        report(&f, &r, WorkState::Running, claims.clone(), String::new()),
        false,
    );
    let outcome = restore_all(&client, &settings, &f, &r, &local).await;
    let done = match outcome {
        Ok(written) => report(&f, &r, WorkState::Done, claims, written.join("; ")),
        Err(e) => {
            tracing::warn!(failover = %key, error = %e, "restore failed");
            report(&f, &r, WorkState::Failed, claims, e.to_string())
        }
    };
    reports.set(key, done, true);
}

async fn restore_all(
    client: &Client,
    settings: &AgentSettings,
    f: &Failover,
    r: &Restore,
    local: &Local,
) -> Result<Vec<String>, WorkError> {
    let namespace = f.namespace().unwrap_or_default();
    // What each claim took: the bytes written, of the point's.
    let mut written = Vec::new();
    // A failover from a vault (a region failover) names it; otherwise the workload does.
    let vault_name = match &f.spec.vault_name {
        Some(v) => v.clone(),
        None => {
            Api::<ReplicatedWorkload>::namespaced(client.clone(), &namespace)
                .get(&f.spec.workload_name)
                .await
                .map_err(WorkError::api(format!(
                    "reading ReplicatedWorkload {}",
                    f.spec.workload_name
                )))?
                .spec
                .vault_name
        }
    };
    let vault_name = &vault_name;
    let vault = Api::<RecoveryVault>::namespaced(client.clone(), &namespace)
        .get(vault_name)
        .await
        .map_err(WorkError::api(format!(
            "reading RecoveryVault {vault_name}"
        )))?;
    let access =
        VaultAccess::resolve_handed(client, &settings.namespace, &vault, &settings.storage)
            .await
            .map_err(WorkError::vault(vault_name))?;
    let repo = Repository::open(access.target.clone(), &access.key)
        .await
        .map_err(WorkError::repository("target location"))?;
    for (source, target, mounted) in local {
        let in_place = r
            .volumes
            .iter()
            .any(|v| &v.target_claim == target && v.in_place);
        let path = mounted.path();
        let directory = matches!(mounted, Mounted::Dir(_));
        // A restore interrupted earlier leaves its marker: start that claim again from empty
        // (a claim written in place converges on the point again instead; a device is always
        // compared block by block and converges too).
        if directory && !in_place && path.join(INCOMPLETE_MARKER).exists() {
            clear(path).map_err(|source| WorkError::ClearInterrupted {
                claim: target.clone(),
                source,
            })?;
        }
        let stats = restore(
            &repo,
            &r.point,
            path,
            &RestoreOptions {
                volume: Some(source.clone()),
                sync: true,
                in_place,
            },
            None,
        )
        .await
        .map_err(WorkError::repository(format!(
            "claim {target} from volume {source} of point {}",
            r.point
        )))?;
        written.push(format!(
            "{target}: {} of {} bytes written{}",
            stats.bytes_written,
            stats.bytes,
            if in_place { " in place" } else { "" }
        ));
        if directory && path.join(INCOMPLETE_MARKER).exists() {
            return Err(WorkError::RestoreIncomplete {
                claim: target.clone(),
            });
        }
    }
    Ok(written)
}

fn clear(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}
