//! Carries out the freezes the operator asks for (`siterecovery.io/freeze` on a
//! ReplicatedWorkload, see `crate::api::work`): the claims of the request mounted on this node
//! are frozen together, reported frozen on the registration, and thawed when the request says
//! `thaw`, goes away, names another point, or reaches `until`: whichever comes first. A claim
//! that is not a filesystem of its own (a directory of the node's filesystem, as hostPath and
//! emptyDir volumes are) is never frozen: that would freeze the node. At its start the agent
//! thaws what an earlier run left frozen (see [`super::freeze::thaw_leftovers`]).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use super::capture::mount_path;
use super::freeze;
use super::registration::{AgentSettings, Reports};
use super::scan::Scan;
use crate::api::ReplicatedWorkload;
use crate::api::work::{AgentWork, FREEZE_ANNOTATION, FreezeRequest, WorkKind, WorkState};

/// Freezes are short: requests are looked for often, and the thaw is watched for closely.
const SCAN: Duration = Duration::from_millis(200);
const WATCH_THAW: Duration = Duration::from_millis(20);
/// No freeze is held longer than this, whatever a request says.
const MAX_FREEZE: Duration = Duration::from_secs(60);

pub async fn run_freezes(client: Client, settings: AgentSettings, reports: Reports) {
    match freeze::thaw_leftovers(&settings.state_dir) {
        Ok(thawed) if !thawed.is_empty() => {
            tracing::warn!(mounts = ?thawed, "thawed filesystems an earlier run of the agent left frozen");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "could not thaw what an earlier run left frozen"),
    }
    let mut scan = Scan::<ReplicatedWorkload>::new(&client, SCAN, crate::cache::freeze_workload);
    while scan.next_pass().await {
        let now = crate::clock::now();
        let mut in_flight = HashSet::new();
        for guard in scan.store.state() {
            let Ok(rw) = &guard.0 else { continue };
            let Some(request) = FreezeRequest::parse(rw.annotations().get(FREEZE_ANNOTATION))
            else {
                continue;
            };
            let key = format!(
                "freeze:{}/{}",
                rw.namespace().unwrap_or_default(),
                rw.name_any()
            );
            let work = (key.clone(), request.point.clone());
            in_flight.insert(work.clone());
            if request.thaw || request.until <= now || scan.started.contains(&work) {
                continue;
            }
            scan.started.insert(work);
            let job = Hold {
                client: client.clone(),
                settings: settings.clone(),
                reports: reports.clone(),
                store: scan.store.clone(),
                rw: rw.clone(),
                request,
                key,
            };
            scan.tasks.spawn(job.run());
        }
        scan.end_pass(&in_flight, &reports, WorkKind::Freeze);
    }
}

struct Hold {
    client: Client,
    settings: AgentSettings,
    reports: Reports,
    store: Store<DeserializeGuard<ReplicatedWorkload>>,
    rw: ReplicatedWorkload,
    request: FreezeRequest,
    key: String,
}

impl Hold {
    fn report(&self, state: WorkState, claims: Vec<String>, message: String) {
        let work = AgentWork {
            claims,
            ..AgentWork::about(
                WorkKind::Freeze,
                &self.rw,
                &self.request.point,
                state,
                message,
            )
        };
        self.reports.set(self.key.clone(), work, true);
    }

    async fn run(self) {
        let mounts = match local_mounts(&self.client, &self.settings, &self.rw, &self.request).await
        {
            Ok(m) if m.is_empty() => return,
            Ok(m) => m,
            Err(message) => {
                tracing::warn!(workload = %self.key, point = %self.request.point, %message, "cannot freeze");
                self.report(WorkState::Failed, vec![], message);
                return;
            }
        };
        let claims: Vec<String> = mounts.iter().map(|(c, _)| c.clone()).collect();
        let bound = Duration::try_from(self.request.until.duration_since(crate::clock::now()))
            .unwrap_or_default()
            .min(MAX_FREEZE);
        let paths: Vec<PathBuf> = mounts.into_iter().map(|(_, p)| p).collect();
        let state_dir = self.settings.state_dir.clone();
        let frozen =
            tokio::task::spawn_blocking(move || freeze::freeze(&paths, bound, &state_dir)).await;
        let held = match frozen {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                self.report(WorkState::Failed, claims, e.to_string());
                return;
            }
            Err(e) => {
                self.report(
                    WorkState::Failed,
                    claims,
                    format!("the freeze did not run: {e}"),
                );
                return;
            }
        };
        tracing::info!(workload = %self.key, point = %self.request.point, ?claims, "filesystems frozen");
        self.report(
            WorkState::Running,
            claims.clone(),
            format!("frozen: {}", claims.join(", ")),
        );
        let started = std::time::Instant::now();
        while !self.thaw_asked() && started.elapsed() < bound {
            tokio::time::sleep(WATCH_THAW).await;
        }
        let at_bound = started.elapsed() >= bound;
        let thawed = tokio::task::spawn_blocking(move || held.thaw()).await;
        match thawed {
            Ok(Ok(frozen_for)) => {
                let message = format!(
                    "{} filesystem(s) frozen for {} ms{}",
                    claims.len(),
                    frozen_for.as_millis(),
                    if at_bound {
                        ", thawed at the bound"
                    } else {
                        ""
                    }
                );
                tracing::info!(workload = %self.key, point = %self.request.point, %message, "thawed");
                self.report(WorkState::Done, claims, message);
            }
            Ok(Err(e)) => self.report(WorkState::Failed, claims, e.to_string()),
            Err(e) => self.report(
                WorkState::Failed,
                claims,
                format!("the thaw did not run: {e}"),
            ),
        }
    }

    /// The request says thaw, names another point, or is gone.
    fn thaw_asked(&self) -> bool {
        let r =
            ObjectRef::new(&self.rw.name_any()).within(&self.rw.namespace().unwrap_or_default());
        let current = self.store.get(&r).and_then(|g| {
            g.0.as_ref()
                .ok()
                .and_then(|rw| FreezeRequest::parse(rw.annotations().get(FREEZE_ANNOTATION)))
        });
        current.is_none_or(|c| c.thaw || c.point != self.request.point)
    }
}

/// The request's claims mounted by pods on this node, each a filesystem of its own.
async fn local_mounts(
    client: &Client,
    settings: &AgentSettings,
    rw: &ReplicatedWorkload,
    request: &FreezeRequest,
) -> Result<Vec<(String, PathBuf)>, String> {
    let namespace = rw.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing pods in {namespace}: {e}"))?;
    let mut out = Vec::new();
    for claim in &request.claims {
        let on_this_node = pods
            .items
            .iter()
            .find(|p| super::capture::mounting_node(p, claim) == Some(settings.node_name.as_str()));
        let Some(pod) = on_this_node else { continue };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let path = mount_path(client, settings, &namespace, claim, &uid)
            .await
            .map_err(|e| format!("claim {claim}: {e}"))?
            .ok_or_else(|| format!("claim {claim} is not mounted on this node yet"))?;
        let path = match path {
            super::capture::Mounted::Dir(p) => p,
            super::capture::Mounted::Device(_) => {
                return Err(format!(
                    "claim {claim} is a block claim (volumeMode Block): a filesystem on it is mounted inside the pod, where the agent cannot freeze it; make points of it app-consistent with pre and post hooks"
                ));
            }
        };
        own_filesystem(claim, &path, settings)?;
        out.push((claim.clone(), path));
    }
    Ok(out)
}

/// Refuses a volume that is not a filesystem of its own: freezing it would freeze the
/// filesystem it is a directory of (the node's, the kubelet's, or the agent's own).
fn own_filesystem(claim: &str, path: &Path, settings: &AgentSettings) -> Result<(), String> {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    let volume = dev(path).map_err(|e| format!("claim {claim}: {}: {e}", path.display()))?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let guards = [
        ("its parent directory", parent),
        ("the node's root filesystem", Path::new("/")),
        ("the kubelet root", settings.kubelet_root.as_path()),
        ("the agent's state directory", settings.state_dir.as_path()),
    ];
    for (what, guard) in guards {
        if dev(guard).is_ok_and(|d| d == volume) {
            return Err(format!(
                "claim {claim}: its volume {} is on the same filesystem as {what} ({}), not a filesystem of its own (a hostPath or emptyDir-like volume): freezing it would freeze that filesystem, so it is not frozen",
                path.display(),
                guard.display()
            ));
        }
    }
    Ok(())
}
