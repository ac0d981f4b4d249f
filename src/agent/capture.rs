//! Carries out the points the operator starts: for every ReplicatedWorkload with a
//! `status.pointInProgress`, reads the claims of the point that are mounted on this node and
//! writes them into the vault's cache as this node's part of the point. Reports go on the
//! registration Lease (see `crate::api::work`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::error::WorkError;
use super::registration::{AgentSettings, Reports};
use super::scan::Scan;
use crate::api::registration::ZONE_LABEL;
use crate::api::vault::SnapshotMethod;
use crate::api::work::{AgentWork, WorkKind, WorkState, read_claim};
use crate::api::workload::PointInProgress;
use crate::api::{RecoveryVault, ReplicatedWorkload};
use crate::repository::Repository;
use crate::repository::format::Consistency;
use crate::repository::parts::PartOf;
use crate::repository::snapshot::{Progress, SnapshotOptions, Source, snapshot};
use crate::vault_access::VaultAccess;

/// How often the agent looks for work it has not started.
const SCAN: Duration = Duration::from_secs(1);

/// Captures a node runs at once; the others wait their turn (each capture hashes, compresses
/// and encrypts on every core already: more at once would only share the same cores and hold
/// more memory).
const CAPTURES_AT_ONCE: usize = 4;

/// Queued points said at most (see `crate::api::work::QUEUED_ANNOTATION`).
const MAX_QUEUED: usize = crate::api::work::MAX_QUEUED;

/// One claim to read on this node.
#[derive(Clone, Debug)]
struct LocalVolume {
    claim: String,
    mounted: Mounted,
}

/// What this node has to do for a point.
enum LocalWork {
    /// Not every claim is mounted yet (a reader pod not scheduled, a mount not there).
    Wait,
    /// Every claim is mounted; these are on this node (maybe none).
    Read(Vec<LocalVolume>),
}

/// The pods a pass looks at, from caches: those on this node, and the reader pods of CSI
/// points on any node. Nothing is listed per workload: a pass costs no request, however many
/// workloads and pods there are.
struct Pods {
    here: Store<Pod>,
    readers: Store<Pod>,
}

/// (namespace, claim) → (pod uid, node) of the pods that mount a claim.
type Mounts = HashMap<(String, String), (String, String)>;

impl Pods {
    fn start(client: &Client, node: &str) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api = Api::<Pod>::all(client.clone());
        let (here, here_writer) = reflector::store();
        let (readers, readers_writer) = reflector::store();
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let labelled = watcher::Config::default().labels(crate::api::work::POINT_LABEL);
        let watch = |writer, config| {
            // Kept as the operator keeps them: owners, node, claims, deletion.
            reflector(
                writer,
                watcher(api.clone(), config).modify(crate::cache::pod),
            )
            .default_backoff()
            .applied_objects()
            .for_each(|_| futures::future::ready(()))
        };
        let watches =
            futures::future::join(watch(here_writer, on_node), watch(readers_writer, labelled));
        (Pods { here, readers }, async move {
            watches.await;
        })
    }

    fn mounts(&self) -> Mounts {
        let mut out = Mounts::new();
        for pod in self.here.state().iter().chain(self.readers.state().iter()) {
            let Some((spec, node)) = scheduled(pod) else {
                continue;
            };
            let namespace = pod.namespace().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            for v in spec.volumes.iter().flatten() {
                if let Some(c) = &v.persistent_volume_claim {
                    out.insert(
                        (namespace.clone(), c.claim_name.clone()),
                        (uid.clone(), node.to_string()),
                    );
                }
            }
        }
        out
    }
}

/// The pod that mounts what the agent reads of `claim` for `point`, and its node.
fn mount_of<'a>(
    mounts: &'a Mounts,
    namespace: &str,
    point: &PointInProgress,
    claim: &str,
) -> (String, Option<&'a (String, String)>) {
    let wanted = read_claim(point.method, claim, &point.id);
    let found = mounts.get(&(namespace.to_string(), wanted.clone()));
    (wanted, found)
}

pub async fn run_captures(client: Client, settings: AgentSettings, reports: Reports) {
    let mut scan = Scan::<ReplicatedWorkload>::new(&client, SCAN, crate::cache::capture_workload);
    let (pods, watch) = Pods::start(&client, &settings.node_name);
    scan.watch_too(watch);
    let repositories = Repositories::default();
    let zone: Arc<tokio::sync::OnceCell<Option<String>>> = Arc::default();
    // Points whose claims are mounted here but that wait for a capture slot: said on the
    // registration, so that the operator waits for them rather than restarting them.
    let mut queued: HashSet<super::scan::WorkKey> = HashSet::new();
    while scan.next_pass().await {
        let mut in_flight = HashSet::new();
        let mut mounts: Option<Mounts> = None;
        for guard in scan.store.state() {
            let Ok(rw) = &guard.0 else { continue };
            let Some(point) = rw.status.as_ref().and_then(|s| s.point_in_progress.clone()) else {
                continue;
            };
            let key = format!("{}/{}", rw.namespace().unwrap_or_default(), rw.name_any());
            let work_key = (key.clone(), point.id.clone());
            in_flight.insert(work_key.clone());
            if scan.started.contains(&work_key)
                || (reports.get(&key).is_some_and(|w| w.point == point.id)
                    && !queued.contains(&work_key))
            {
                continue;
            }
            let mounts = mounts.get_or_insert_with(|| pods.mounts());
            if scan.tasks.len() >= CAPTURES_AT_ONCE {
                let namespace = rw.namespace().unwrap_or_default();
                let here = point.claims.iter().any(|c| {
                    mount_of(mounts, &namespace, &point, c)
                        .1
                        .is_some_and(|(_, node)| *node == settings.node_name)
                });
                if !here {
                    // Its pod left the node: no longer ours to vouch for.
                    queued.remove(&work_key);
                } else if queued.len() < MAX_QUEUED {
                    queued.insert(work_key);
                }
                continue;
            }
            queued.remove(&work_key);
            match local_work(&client, &settings, rw, &point, mounts).await {
                Ok(LocalWork::Wait) => {}
                Ok(LocalWork::Read(volumes)) => {
                    scan.started.insert((key.clone(), point.id.clone()));
                    if volumes.is_empty() {
                        continue;
                    }
                    // Running before it leaves the queue (both go out in the same Lease
                    // write), so that the operator never sees it in neither.
                    let mut running = report(rw, &point, WorkState::Running, String::new());
                    running.claims = volumes.iter().map(|v| v.claim.clone()).collect();
                    reports.set(key.clone(), running, false);
                    let job = Capture {
                        client: client.clone(),
                        settings: settings.clone(),
                        reports: reports.clone(),
                        workload: rw.clone(),
                        key,
                        point,
                        volumes,
                        repositories: repositories.clone(),
                        zone: zone.clone(),
                    };
                    scan.tasks.spawn(job.run());
                }
                Err(e) => {
                    tracing::warn!(workload = %key, point = %point.id, error = %e, "cannot capture");
                    scan.started.insert((key.clone(), point.id.clone()));
                    reports.set(
                        key.clone(),
                        report(rw, &point, WorkState::Failed, e.to_string()),
                        true,
                    );
                }
            }
        }
        queued.retain(|k| in_flight.contains(k));
        reports.set_queued(queued.iter().map(|(_, point)| point.as_str()));
        scan.end_pass(&in_flight, &reports, WorkKind::Capture);
    }
}

/// The point a part takes its parent from (files unchanged since are not read again): the
/// workload's newest, as its status says. A workload whose status names none has no parent to
/// look for: searching the repository for one read every point's manifest, newest first, for
/// every first part of every workload, which at N workloads made a round of first points read
/// O(N²) manifests. Without a parent every file is read, and chunks already stored are still
/// found in the index and not stored again.
fn parent_hint(rw: &ReplicatedWorkload) -> Option<String> {
    rw.status
        .as_ref()
        .and_then(|s| s.latest_point.as_ref())
        .map(|p| p.id.clone())
}

fn report(
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    state: WorkState,
    message: String,
) -> AgentWork {
    AgentWork::about(WorkKind::Capture, rw, &point.id, state, message)
}

/// Finds, for every claim of the point, the pod that mounts the claim to read, and for those on
/// this node, the mount directory under the kubelet root. A claim mounted on no node this agent
/// can see waits, unless it is known to be elsewhere: a reader pod on another node (CSI), or
/// the workload's status placing it on another node (Live).
async fn local_work(
    client: &Client,
    settings: &AgentSettings,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    mounts: &Mounts,
) -> Result<LocalWork, WorkError> {
    let namespace = rw.namespace().unwrap_or_default();
    let placed = |claim: &str| {
        rw.status
            .iter()
            .flat_map(|s| &s.volumes)
            .find(|v| v.claim_name == claim)
            .and_then(|v| v.node.clone())
    };
    let mut local = Vec::new();
    for claim in &point.claims {
        let (wanted, found) = mount_of(mounts, &namespace, point, claim);
        let uid = match found {
            Some((uid, node)) if *node == settings.node_name => uid.clone(),
            Some(_) => continue,
            None if point.method == SnapshotMethod::Live
                && placed(claim).is_some_and(|n| n != settings.node_name) =>
            {
                continue;
            }
            None => return Ok(LocalWork::Wait),
        };
        match mount_path(client, settings, &namespace, &wanted, &uid).await? {
            Some(mounted) => local.push(LocalVolume {
                claim: claim.clone(),
                mounted,
            }),
            None => return Ok(LocalWork::Wait),
        }
    }
    Ok(LocalWork::Read(local))
}

/// The spec and node of `pod` when it is scheduled and not being deleted.
fn scheduled(pod: &Pod) -> Option<(&k8s_openapi::api::core::v1::PodSpec, &str)> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.as_deref()?;
    pod.metadata
        .deletion_timestamp
        .is_none()
        .then_some((spec, node))
}

/// The node of `pod` when it is scheduled, not being deleted, and mounts `claim`.
pub(crate) fn mounting_node<'a>(pod: &'a Pod, claim: &str) -> Option<&'a str> {
    let (spec, node) = scheduled(pod)?;
    let mounts = spec.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == claim)
    });
    mounts.then_some(node)
}

/// What the kubelet made of a claim for a pod: a mounted filesystem, or a block device.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mounted {
    /// The mount directory, below the kubelet root.
    Dir(PathBuf),
    /// The device (resolved from the kubelet's link for the pod, checked to be a block device).
    Device(PathBuf),
}

impl Mounted {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Mounted::Dir(p) | Mounted::Device(p) => p,
        }
    }

    pub(crate) fn source(&self) -> Source {
        match self {
            Mounted::Dir(p) => Source::Tree(p.clone()),
            Mounted::Device(p) => Source::Raw(p.clone()),
        }
    }
}

/// Where the kubelet mounted `claim` for pod `uid` (a filesystem claim), or published its
/// device (a block claim: `volumeDevices`); `None` while it is not there yet. Refuses mounts
/// whose data is not below the kubelet root, and device links that do not lead to a block
/// device.
pub(crate) async fn mount_path(
    client: &Client,
    settings: &AgentSettings,
    namespace: &str,
    claim: &str,
    uid: &str,
) -> Result<Option<Mounted>, WorkError> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(claim)
        .await
        .map_err(WorkError::api(format!(
            "reading PersistentVolumeClaim {claim}"
        )))?;
    let Some(pvc_spec) = pvc.and_then(|c| c.spec) else {
        return Ok(None);
    };
    let block = pvc_spec.volume_mode.as_deref() == Some("Block");
    let Some(pv_name) = pvc_spec.volume_name else {
        return Ok(None);
    };
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&pv_name)
        .await
        .map_err(WorkError::api(format!(
            "reading PersistentVolume {pv_name}"
        )))?;
    let Some(spec) = pv.and_then(|p| p.spec) else {
        return Ok(None);
    };
    let pod = settings.kubelet_root.join("pods").join(uid);
    let volumes = pod.join(if block { "volumeDevices" } else { "volumes" });
    let path = if spec.csi.is_some() {
        let entry = volumes.join("kubernetes.io~csi").join(&pv_name);
        if block { entry } else { entry.join("mount") }
    } else if spec.local.is_some() {
        volumes.join("kubernetes.io~local-volume").join(&pv_name)
    } else if let Some(h) = &spec.host_path {
        return Err(WorkError::HostPathVolume {
            claim: claim.into(),
            volume: pv_name,
            path: h.path.clone(),
            kubelet_root: settings.kubelet_root.clone(),
        });
    } else {
        return Err(WorkError::UnsupportedVolume {
            claim: claim.into(),
            volume: pv_name,
        });
    };
    if block {
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        return device_at(&settings.kubelet_root, claim, &path).map(|p| Some(Mounted::Device(p)));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    Ok(Some(Mounted::Dir(check_below(
        &settings.kubelet_root,
        &path,
    )?)))
}

/// The block device the kubelet's entry `path` (below the kubelet root) leads to. The entry
/// itself must be below the kubelet root; the device it resolves to may be anywhere (a local
/// volume's `/dev/…`), but must be a block device: no link can make the agent read or write a
/// file.
fn device_at(root: &Path, claim: &str, path: &Path) -> Result<PathBuf, WorkError> {
    let parent = path.parent().unwrap_or(path);
    check_below(root, parent)?;
    let real = resolve(path)?;
    let is_block = std::fs::metadata(&real)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    if !is_block {
        return Err(WorkError::NotABlockDevice {
            claim: claim.into(),
            path: path.into(),
            real,
        });
    }
    Ok(real)
}

/// The real path of `path`, all links followed.
fn resolve(path: &Path) -> Result<PathBuf, WorkError> {
    path.canonicalize()
        .map_err(|source| WorkError::Unresolvable {
            path: path.into(),
            source,
        })
}

/// The real path of `path`, refused when it resolves (through symlinks) outside `root`.
fn check_below(root: &Path, path: &Path) -> Result<PathBuf, WorkError> {
    let kubelet_root = root
        .canonicalize()
        .map_err(|source| WorkError::KubeletRoot {
            kubelet_root: root.into(),
            source,
        })?;
    let real = resolve(path)?;
    if !real.starts_with(&kubelet_root) {
        return Err(WorkError::OutsideKubeletRoot {
            path: path.into(),
            real,
            kubelet_root,
        });
    }
    Ok(real)
}

struct Capture {
    client: Client,
    settings: AgentSettings,
    reports: Reports,
    workload: ReplicatedWorkload,
    key: String,
    point: PointInProgress,
    volumes: Vec<LocalVolume>,
    repositories: Repositories,
    zone: Arc<tokio::sync::OnceCell<Option<String>>>,
}

/// Open cache repositories, per vault, reused from part to part: a part reads only the index
/// files written since the last one (see [`Repository::refresh_index`]) instead of opening the
/// repository and reading its whole index again. One handle per capture running at once.
#[derive(Clone, Default)]
struct Repositories(Arc<std::sync::Mutex<HashMap<String, Vec<Repository>>>>);

impl Repositories {
    /// The vault's identity as far as its cache is concerned: uid, generation, cache location
    /// and key (a rotated key or a moved location opens a new handle).
    fn key(vault: &RecoveryVault, access: &VaultAccess) -> String {
        format!(
            "{}/{}/{}/{}",
            vault.metadata.uid.as_deref().unwrap_or_default(),
            vault.metadata.generation.unwrap_or_default(),
            access.cache.name(),
            blake3::hash(&access.key).to_hex()
        )
    }

    async fn take(&self, key: &str, access: &VaultAccess) -> Result<Repository, WorkError> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
            .and_then(Vec::pop);
        match kept {
            Some(repo) => Ok(repo),
            None => Repository::open(access.cache.clone(), &access.key)
                .await
                .map_err(WorkError::repository("cache location")),
        }
    }

    /// Keeps `repo` for the next part; handles of the vault's older identities are dropped.
    fn put_back(&self, key: &str, repo: Repository) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let uid = key.split('/').next().unwrap_or_default().to_string();
        all.retain(|k, _| k == key || !k.starts_with(&format!("{uid}/")));
        all.entry(key.to_string()).or_default().push(repo);
    }
}

impl Capture {
    async fn run(self) {
        let mut running = report(
            &self.workload,
            &self.point,
            WorkState::Running,
            String::new(),
        );
        running.claims = self.volumes.iter().map(|v| v.claim.clone()).collect();
        // Running is published with the next renewal; only the outcome is worth a write of its own.
        self.reports.set(self.key.clone(), running.clone(), false);
        let result = self.capture(&running).await;
        let mut done = running;
        match result {
            Ok((consistency, bytes, stored)) => {
                tracing::info!(workload = %self.key, point = %self.point.id, bytes, stored, "part written");
                done.state = WorkState::Done;
                done.consistency = consistency.as_str().into();
                done.bytes_done = bytes;
                done.bytes_total = bytes;
                done.stored_bytes = stored;
            }
            Err(e) => {
                tracing::warn!(workload = %self.key, point = %self.point.id, error = %e, "capture failed");
                done.state = WorkState::Failed;
                done.message = e.to_string();
            }
        }
        self.reports.set(self.key.clone(), done, true);
    }

    async fn capture(&self, running: &AgentWork) -> Result<(Consistency, u64, u64), WorkError> {
        let namespace = self.workload.namespace().unwrap_or_default();
        let vault_name = &self.workload.spec.vault_name;
        let vault = Api::<RecoveryVault>::namespaced(self.client.clone(), &namespace)
            .get(vault_name)
            .await
            .map_err(WorkError::api(format!(
                "reading RecoveryVault {vault_name}"
            )))?;
        let access = VaultAccess::resolve_handed(
            &self.client,
            &self.settings.namespace,
            &vault,
            &self.settings.storage,
        )
        .await
        .map_err(WorkError::vault(vault_name))?;
        let pool_key = Repositories::key(&vault, &access);
        let mut repo = self.repositories.take(&pool_key, &access).await?;
        let zone = self
            .zone
            .get_or_init(|| async {
                Api::<Node>::all(self.client.clone())
                    .get_metadata(&self.settings.node_name)
                    .await
                    .ok()
                    .and_then(|n| n.metadata.labels.and_then(|l| l.get(ZONE_LABEL).cloned()))
            })
            .await
            .clone();
        let consistency = match self.point.method {
            // Files read one by one from a live filesystem.
            SnapshotMethod::Live => Consistency::FileLevel,
            SnapshotMethod::Csi if self.point.degraded.is_some() => Consistency::CrashConsistent,
            SnapshotMethod::Csi => self
                .point
                .consistency
                .parse()
                .unwrap_or(Consistency::CrashConsistent),
        };
        let parent_hint = parent_hint(&self.workload);
        let options = SnapshotOptions {
            workload: self.key.clone(),
            consistency,
            source_zone: zone,
            use_parent: parent_hint.is_some(),
            part: Some(PartOf {
                point: self.point.id.clone(),
                time: self.point.started,
                name: self.settings.node_name.clone(),
            }),
            parent_hint,
        };
        let sources = self
            .volumes
            .iter()
            .map(|v| (v.claim.clone(), v.mounted.source()))
            .collect();
        let reports = self.reports.clone();
        let (key, base) = (self.key.clone(), running.clone());
        let progress = Arc::new(move |p: Progress| {
            let mut w = base.clone();
            w.bytes_done = p.bytes_done;
            w.bytes_total = p.bytes_total;
            reports.set(key.clone(), w, false);
        });
        let written = snapshot(&mut repo, sources, &options, Some(progress)).await;
        // A handle whose part failed may hold a half-updated index: only a good one is kept.
        if written.is_ok() {
            self.repositories.put_back(&pool_key, repo);
        }
        let manifest = written.map_err(WorkError::repository("writing to the cache location"))?;
        Ok((
            manifest.consistency,
            manifest.stats.bytes,
            manifest.stats.stored_bytes_added,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{check_below, device_at, parent_hint};

    #[test]
    fn a_part_looks_for_a_parent_only_where_the_status_names_one() {
        let rw = |status: serde_json::Value| -> crate::api::workload::ReplicatedWorkload {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "siterecovery.io/v1alpha1",
                "kind": "ReplicatedWorkload",
                "metadata": {"name": "app", "namespace": "apps"},
                "spec": {"vaultName": "vault", "workloadRef": {"kind": "Deployment", "name": "app"}},
                "status": status,
            }))
            .unwrap()
        };
        assert_eq!(parent_hint(&rw(serde_json::json!({}))), None);
        let named = rw(serde_json::json!({"latestPoint": {
            "id": "20261203T182934000Z-08fced59",
            "time": "2026-12-03T18:29:34Z",
            "replicated": true,
        }}));
        assert_eq!(
            parent_hint(&named).as_deref(),
            Some("20261203T182934000Z-08fced59")
        );
    }

    #[test]
    fn a_device_link_that_leads_to_a_file_or_a_character_device_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("pods/uid/volumeDevices/kubernetes.io~csi");
        std::fs::create_dir_all(&links).unwrap();
        let file = root.path().join("planted");
        std::fs::write(&file, b"not a device").unwrap();
        for (name, target) in [
            ("pv-file", file.as_path()),
            ("pv-null", "/dev/null".as_ref()),
        ] {
            let link = links.join(name);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let err = device_at(root.path(), "data", &link)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("claim data is a block claim") && err.contains("not a block device"),
                "{err}"
            );
        }
    }

    #[test]
    fn paths_that_resolve_outside_the_kubelet_root_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let inside = root
            .path()
            .join("pods/uid/volumes/kubernetes.io~csi/pv/mount");
        std::fs::create_dir_all(&inside).unwrap();
        assert!(check_below(root.path(), &inside).is_ok());
        let escape = root.path().join("pods/uid2");
        std::fs::create_dir_all(root.path().join("pods")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &escape).unwrap();
        let err = check_below(root.path(), &escape).unwrap_err().to_string();
        assert!(err.contains("outside --kubelet-root"), "{err}");
    }
}
