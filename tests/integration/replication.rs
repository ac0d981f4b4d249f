//! The replication pipeline end to end: the real operator and real agents (one per node) against
//! the rig, which plays scheduler and kubelet; the test writes into the volume directories,
//! takes points, and restores every point from the target location with the repository library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use site_recovery::api::work::{POINT_REQUEST_ANNOTATION, WORK_ANNOTATION};
use site_recovery::api::workload::ReplicatedWorkloadStatus;
use site_recovery::api::{RecoveryVault, ReplicatedWorkload};
use site_recovery::operator::Shutdown;
use site_recovery::repository::Repository;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::storage::{Location, LocationSpec};

use crate::operator::{OPERATOR_NS, Running, condition, start_operator};
use crate::rig::{Rig, eventually};

pub(crate) const KEY: [u8; 32] = [7u8; 32];

/// Three nodes in two zones; the vault's cache is in zone-a, its target in zone-b.
pub(crate) async fn cluster() -> (Rig, tempfile::TempDir) {
    let rig = Rig::start().await;
    rig.apply_crds().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.namespace("apps").await;
    rig.node("node-a1", "zone-a", "region-1").await;
    rig.node("node-a2", "zone-a", "region-1").await;
    rig.node("node-b1", "zone-b", "region-1").await;
    rig.secret("apps", "vault-key", &[("key", &KEY)]).await;
    let dir = rig.vault_dir("apps");
    (rig, dir)
}

pub(crate) fn live_vault(dir: &Path, policy: serde_json::Value) -> RecoveryVault {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "vault", "namespace": "apps"},
        "spec": {
            "cache": {"zone": "zone-a", "storage": {"filesystem": {"path": dir.join("cache")}}},
            "target": {"zone": "zone-b", "storage": {"filesystem": {"path": dir.join("target")}}},
            "snapshotMethod": "Live",
            "encryption": {"keySecretRef": {"name": "vault-key"}},
            "replicationPolicy": policy,
        },
    }))
    .unwrap()
}

pub(crate) struct Agent {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Like a SIGKILL: the task and every capture it runs are dropped where they are.
    pub(crate) fn kill(self) {
        self.task.abort();
        drop(self.stop);
    }
}

pub(crate) fn start_agent(rig: &Rig, node: &str, lease_seconds: i32) -> Agent {
    start_agent_with(rig, node, lease_seconds, rig.storage_rules())
}

/// An agent on each of `nodes`, renewing every 10 s.
pub(crate) fn start_agents(rig: &Rig, nodes: &[&str]) -> Vec<Agent> {
    nodes.iter().map(|n| start_agent(rig, n, 10)).collect()
}

/// An agent whose vaults may use the storage under `rules` (another cluster's, shared).
pub(crate) fn start_agent_with(
    rig: &Rig,
    node: &str,
    lease_seconds: i32,
    rules: site_recovery::storage::StorageRules,
) -> Agent {
    let settings = site_recovery::agent::AgentSettings {
        node_name: node.into(),
        namespace: OPERATOR_NS.into(),
        lease_duration_seconds: lease_seconds,
        kubelet_root: rig.kubelet_root.path().to_path_buf(),
        storage: rules,
        state_dir: rig.agent_state_dir(node),
    };
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(site_recovery::agent::run(
        rig.agent_client_on(node),
        settings,
        shutdown.wait(),
    ));
    Agent { stop, task }
}

/// A StatefulSet `db` with one claim per pod, `data-db-0` on node-a1 and `data-db-1` on
/// node-a2; returns each claim's mount directory.
pub(crate) async fn database(rig: &Rig) -> BTreeMap<String, PathBuf> {
    let pods = rig
        .statefulset("apps", "db", &["data"], &["node-a1", "node-a2"])
        .await;
    pods.iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap();
            let uid = p["metadata"]["uid"].as_str().unwrap();
            let claim = format!("data-{name}");
            let dir = rig.volume_dir(uid, &format!("pv-apps-{claim}"));
            (claim, dir)
        })
        .collect()
}

/// ReplicatedWorkload `name` in `apps` of workload `kind`/`workload`, into `vault`.
pub(crate) fn replicated_workload(
    name: &str,
    vault: &str,
    kind: &str,
    workload: &str,
) -> ReplicatedWorkload {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"vaultName": vault, "workloadRef": {"kind": kind, "name": workload}},
    }))
    .unwrap()
}

pub(crate) async fn protect(rig: &Rig) -> Api<ReplicatedWorkload> {
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    let rw: ReplicatedWorkload = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
    }))
    .unwrap();
    workloads.create(&PostParams::default(), &rw).await.unwrap();
    workloads
}

/// What a test wrote into each volume: relative path → content.
pub(crate) type Content = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Writes version `v` of the data: a file that changes every version, one that grows, one that
/// is deleted after the first version, and one big file with a changed middle.
pub(crate) fn write_version(volumes: &BTreeMap<String, PathBuf>, v: u32) -> Content {
    let mut all = Content::new();
    for (claim, dir) in volumes {
        let mut files = BTreeMap::new();
        files.insert(
            "state.txt".to_string(),
            format!("{claim} version {v}\n").into_bytes(),
        );
        let log: Vec<u8> = (1..=v)
            .flat_map(|i| format!("entry {i} of {claim}\n").into_bytes())
            .collect();
        files.insert("wal/log".to_string(), log);
        if v == 1 {
            files.insert("tmp/first-only".to_string(), b"removed later".to_vec());
        } else {
            let _ = std::fs::remove_dir_all(dir.join("tmp"));
        }
        let mut big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        big[1_500_000..1_500_064].copy_from_slice(&[v as u8; 64]);
        files.insert("table.db".to_string(), big);
        for (path, bytes) in &files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        all.insert(claim.clone(), files);
    }
    all
}

pub(crate) fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

async fn open(dir: &Path) -> Repository {
    let location = Location::open(
        &LocationSpec::Filesystem(dir.to_path_buf()),
        &Default::default(),
    )
    .unwrap();
    Repository::open(location, &KEY).await.unwrap()
}

/// Restores every volume of `point` from the target location alone and compares it with what
/// was written before the point was taken.
/// The files of `claim` in `point` of the repository in `target`, restored.
pub(crate) async fn restored_tree(
    target: &Path,
    point: &str,
    claim: &str,
) -> BTreeMap<String, Vec<u8>> {
    let repo = open(target).await;
    let into = tempfile::tempdir().unwrap();
    let dest = into.path().join("restored");
    restore(
        &repo,
        point,
        &dest,
        &RestoreOptions {
            volume: Some(claim.to_string()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("restoring {claim} of {point}: {e}"));
    read_tree(&dest)
}

async fn assert_restores(target: &Path, point: &str, expected: &Content) {
    for (claim, files) in expected {
        let got = restored_tree(target, point, claim).await;
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            files.keys().collect::<Vec<_>>(),
            "files of {claim} in point {point}"
        );
        for (path, bytes) in files {
            assert!(
                got[path] == *bytes,
                "{claim}/{path} in point {point} differs from what was written"
            );
        }
    }
}

pub(crate) async fn request_point(workloads: &Api<ReplicatedWorkload>, token: &str) {
    workloads
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {POINT_REQUEST_ANNOTATION: token}}})),
        )
        .await
        .unwrap();
}

/// Waits for the first point to be replicated with nothing in flight; returns the status then.
pub(crate) async fn first_point(workloads: &Api<ReplicatedWorkload>) -> ReplicatedWorkloadStatus {
    eventually(
        Duration::from_secs(60),
        "first point replicated",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            s.latest_replicated_point.as_ref()?;
            s.point_in_progress.is_none().then_some(s)
        },
    )
    .await
}

/// Waits for the point started for request `token` to be replicated; returns its id.
pub(crate) async fn replicated_point(
    workloads: &Api<ReplicatedWorkload>,
    token: &str,
    within: Duration,
) -> (String, ReplicatedWorkloadStatus) {
    eventually(
        within,
        &format!("point for request {token} replicated"),
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            if s.handled_point_request.as_deref() != Some(token) || s.point_in_progress.is_some() {
                return None;
            }
            let p = s.latest_replicated_point.clone()?;
            (s.last_attempt.as_ref()?.id == p.id).then(|| (p.id.clone(), s))
        },
    )
    .await
}

pub(crate) fn parts_left(cache: &Path) -> Vec<PathBuf> {
    let parts = cache.join("parts");
    let mut out = Vec::new();
    let mut stack = vec![parts];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

pub(crate) async fn events(rig: &Rig, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(rig.client(), "apps")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// How many times an event was recorded (a repeated event is one object with a series count).
pub(crate) async fn event_count(rig: &Rig, reason: &str) -> i32 {
    Api::<Event>::namespaced(rig.client(), "apps")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.map_or(1, |s| s.count))
        .sum()
}

/// The operator with its HTTP endpoints on a free local port.
pub(crate) async fn start_operator_with_metrics(rig: &Rig) -> (Running, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = site_recovery::operator::Settings::new(OPERATOR_NS);
    settings.leader_election = false;
    settings.http_addr = Some(addr);
    settings.storage = rig.storage_rules();
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(site_recovery::operator::run(
        rig.operator_client(),
        settings,
        shutdown,
    ));
    (Running { stop, task }, addr)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn points_span_two_nodes_and_every_point_restores_from_the_target() {
    let (rig, dir) = cluster().await;
    let (running, metrics_addr) = start_operator_with_metrics(&rig).await;
    Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .create(&PostParams::default(), &live_vault(dir.path(), json!({})))
        .await
        .unwrap();
    let volumes = database(&rig).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let mut written = vec![write_version(&volumes, 1)];
    let workloads = protect(&rig).await;

    // The first point is due at once.
    let first = {
        let s = first_point(&workloads).await;
        (s.latest_replicated_point.clone().unwrap().id, s)
    };
    let (first_id, status) = first;
    assert_eq!(
        condition(&status.conditions, "Protected").unwrap().0,
        "True"
    );
    assert_eq!(
        condition(&status.conditions, "Replicating").unwrap().1,
        "PointReplicated"
    );
    assert_eq!(condition(&status.conditions, "RPOMet").unwrap().0, "True");
    let latest = status.latest_point.clone().unwrap();
    assert_eq!(
        (latest.consistency.as_str(), latest.replicated),
        ("FileLevel", true),
        "a live read without a freeze is labelled file-level, never crash-consistent"
    );
    assert!(status.latest_crash_consistent_point.is_none());
    let mut points = vec![first_id];

    // Two more points on request, with writes in between; count the API writes they cost.
    let status_writes = rig.request_count("PATCH", "replicatedworkloads");
    let lease_writes = rig.request_count("PATCH", "leases");
    let started = std::time::Instant::now();
    for v in 2..=3 {
        written.push(write_version(&volumes, v));
        request_point(&workloads, &v.to_string()).await;
        let (id, _) = replicated_point(&workloads, &v.to_string(), Duration::from_secs(60)).await;
        points.push(id);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The test's own annotation patches are not the operator's.
    let status_per_point =
        (rig.request_count("PATCH", "replicatedworkloads") - status_writes - 2) as f64 / 2.0;
    let lease_per_point = (rig.request_count("PATCH", "leases") - lease_writes) as f64 / 2.0;
    println!(
        "API writes per point: {status_per_point} workload status, {lease_per_point} Lease (3 agents, {elapsed:.1}s for 2 points, renewals included)"
    );
    assert!(
        status_per_point <= 3.0,
        "status writes per point: {status_per_point}"
    );

    for (point, expected) in points.iter().zip(&written) {
        assert_restores(&dir.path().join("target"), point, expected).await;
    }
    let status = workloads.get("db").await.unwrap().status.unwrap();
    assert_eq!(status.point_count, Some(3));
    let created = events(&rig, "RecoveryPointCreated").await;
    assert!(created[0].contains("2 volume(s)"), "{}", created[0]);
    assert_eq!(
        event_count(&rig, "RecoveryPointCreated").await,
        3,
        "{created:?}"
    );
    assert!(parts_left(&dir.path().join("cache")).is_empty());
    // The points carry the workload's name and both claims, in both locations.
    let cache = open(&dir.path().join("cache")).await;
    let m = cache.manifest(&points[2]).await.unwrap();
    assert_eq!(m.workload, "apps/db");
    assert_eq!(
        m.volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["data-db-0", "data-db-1"]
    );
    let metrics = scrape(metrics_addr).await;
    for line in [
        "site_recovery_recovery_points_total{consistency=\"FileLevel\"} 3",
        "site_recovery_rpo_seconds{namespace=\"apps\",workload=\"db\"}",
        "site_recovery_bytes_transferred_total{location=\"cache\"}",
        "site_recovery_bytes_transferred_total{location=\"target\"}",
        "site_recovery_replication_duration_seconds_count{namespace=\"apps\",workload=\"db\"} 3",
        "site_recovery_last_success_timestamp_seconds{namespace=\"apps\",workload=\"db\"}",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }
    shut_down(&rig, dir.path(), running, agents).await;
}

/// A cluster with the operator running, the vault `vault(dir)` created and the `db`
/// StatefulSet laid out; returns its volume directories too.
pub(crate) async fn setup(
    vault: impl FnOnce(&Path) -> RecoveryVault,
) -> (Rig, tempfile::TempDir, Running, BTreeMap<String, PathBuf>) {
    let (rig, dir, running) = with_vault(vault).await;
    let volumes = database(&rig).await;
    (rig, dir, running, volumes)
}

/// A cluster with the operator running and the vault `vault(dir)` created.
pub(crate) async fn with_vault(
    vault: impl FnOnce(&Path) -> RecoveryVault,
) -> (Rig, tempfile::TempDir, Running) {
    let (rig, dir) = cluster().await;
    let running = start_operator(&rig, false).await;
    Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .create(&PostParams::default(), &vault(dir.path()))
        .await
        .unwrap();
    (rig, dir, running)
}

/// Ends a test: once no point is in flight, no temporary object (VolumeSnapshot, claim, reader
/// pod) and no part is left; then the operator and agents stop.
pub(crate) async fn shut_down(rig: &Rig, dir: &Path, running: Running, agents: Vec<Agent>) {
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    eventually(
        Duration::from_secs(60),
        "nothing temporary left",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            s.point_in_progress.is_none().then_some(())?;
            temporaries(rig).await.is_empty().then_some(())?;
            parts_left(&dir.join("cache")).is_empty().then_some(())
        },
    )
    .await;
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

#[tokio::test]
async fn killed_agent_and_operator_resume_the_point_in_flight() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let a1 = start_agent(&rig, "node-a1", 20);
    let a2 = start_agent(&rig, "node-a2", 20);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads)
        .await
        .latest_replicated_point
        .unwrap();

    // node-a2's agent dies; a point is requested; node-a1's agent writes its part.
    a2.kill();
    let expected = write_version(&volumes, 2);
    request_point(&workloads, "2").await;
    let point = eventually(Duration::from_secs(30), "the point starts", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (s.handled_point_request.as_deref() == Some("2")).then_some(())?;
        s.point_in_progress
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(rig.client(), OPERATOR_NS);
    let reported = |node: &'static str, id: String| {
        let leases = leases.clone();
        async move {
            let l = leases
                .get(&format!("site-recovery-agent-{node}"))
                .await
                .ok()?;
            let work = l.metadata.annotations?.get(WORK_ANNOTATION)?.clone();
            (work.contains(&id) && work.contains("\"Done\"")).then_some(())
        }
    };
    eventually(
        Duration::from_secs(30),
        "node-a1 reports its part done",
        || reported("node-a1", point.id.clone()),
    )
    .await;
    let s = workloads.get("db").await.unwrap().status.unwrap();
    // The same point (its progress mark moves with node-a1's report).
    let waiting = s.point_in_progress.clone().map(|mut p| {
        p.last_progress = None;
        p
    });
    let mut started = point.clone();
    started.last_progress = None;
    assert_eq!(waiting, Some(started), "the point waits for node-a2");
    assert_eq!(
        condition(&s.conditions, "Replicating").unwrap().1,
        "PointInProgress"
    );

    // The operator dies too; node-a2's agent comes back, then the operator.
    running.task.abort();
    let a2 = start_agent(&rig, "node-a2", 20);
    eventually(
        Duration::from_secs(30),
        "node-a2 reports its part done",
        || reported("node-a2", point.id.clone()),
    )
    .await;
    let running = start_operator(&rig, false).await;
    let (id, status) = replicated_point(&workloads, "2", Duration::from_secs(60)).await;
    assert_eq!(
        id, point.id,
        "the interrupted point completes under its own id"
    );
    assert_eq!(status.point_count, Some(2));
    assert_restores(&dir.path().join("target"), &id, &expected).await;
    assert!(parts_left(&dir.path().join("cache")).is_empty());
    shut_down(&rig, dir.path(), running, vec![a1, a2]).await;
}

/// A restarted operator removes what its predecessor left of an idle workload's points (a
/// reader pod, a temporary claim), from one listing of the namespace, and leaves alone the
/// objects labelled for a workload it does not protect.
#[tokio::test]
async fn a_restarted_operator_sweeps_what_its_predecessor_left_of_idle_workloads() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2"]);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads).await;
    running.stop().await;
    for workload in ["db", "unprotected"] {
        let labels = json!({
            "siterecovery.io/replicated-workload": workload,
            "siterecovery.io/point": "p-left-behind",
        });
        rig.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("{workload}-left"), "namespace": "apps", "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .await;
        rig.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{workload}-reader"), "namespace": "apps", "labels": labels},
            "spec": {"containers": [{"name": "reader", "image": "busybox"}]},
        }))
        .await;
    }
    assert_eq!(temporaries(&rig).await.len(), 2);
    let running = start_operator(&rig, false).await;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(rig.client(), "apps");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(rig.client(), "apps");
    // Deleted: the pod is gone, the claim waits for its protection finalizer (no controller
    // of the rig removes it here).
    eventually(Duration::from_secs(30), "leftovers deleted", || async {
        let pod = pods.get_opt("db-reader").await.unwrap();
        let claim = claims.get_opt("db-left").await.unwrap()?;
        (pod.is_none() && claim.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    claims
        .patch(
            "db-left",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(claims.get_opt("unprotected-left").await.unwrap().is_some());
    assert!(pods.get_opt("unprotected-reader").await.unwrap().is_some());
    shut_down(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn a_lost_agent_fails_the_point_with_a_reason_and_the_next_point_succeeds() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let a1 = start_agent(&rig, "node-a1", 3);
    let a2 = start_agent(&rig, "node-a2", 3);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads)
        .await
        .latest_replicated_point
        .unwrap();

    a2.kill();
    request_point(&workloads, "2").await;
    let s = eventually(
        Duration::from_secs(30),
        "point failed: AgentLost",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            let a = s.last_attempt.clone()?;
            (!a.succeeded && s.point_in_progress.is_none()).then_some(s)
        },
    )
    .await;
    let attempt = s.last_attempt.unwrap();
    assert!(
        attempt.message.contains("node-a2") && attempt.message.contains("data-db-1"),
        "{}",
        attempt.message
    );
    let failed = events(&rig, "RecoveryPointFailed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        parts_left(&dir.path().join("cache")).is_empty(),
        "the failed point's parts are removed"
    );
    // The last good point still protects the workload.
    assert_eq!(condition(&s.conditions, "Protected").unwrap().0, "True");

    let a2 = start_agent(&rig, "node-a2", 3);
    let expected = write_version(&volumes, 3);
    request_point(&workloads, "3").await;
    let (id, _) = replicated_point(&workloads, "3", Duration::from_secs(60)).await;
    assert_restores(&dir.path().join("target"), &id, &expected).await;
    shut_down(&rig, dir.path(), running, vec![a1, a2]).await;
}

/// Replaces a location's `data` directory with a file, so that every pack upload fails; returns
/// a guard that puts the directory back.
fn break_data(location: &Path) -> impl FnOnce() {
    let data = location.join("data");
    let aside = location.join("data.aside");
    std::fs::rename(&data, &aside).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    move || {
        std::fs::remove_file(&data).unwrap();
        std::fs::rename(&aside, &data).unwrap();
    }
}

#[tokio::test]
async fn storage_errors_at_cache_and_target_are_reported_and_recovered() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2"]);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    first_point(&workloads)
        .await
        .latest_replicated_point
        .unwrap();
    let (cache, target) = (dir.path().join("cache"), dir.path().join("target"));

    // The cache refuses writes: the agents' failure becomes the point's stated reason.
    let mend = break_data(&cache);
    write_version(&volumes, 2);
    request_point(&workloads, "2").await;
    let s = eventually(
        Duration::from_secs(30),
        "point failed at the cache",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            let a = s.last_attempt.clone()?;
            (!a.succeeded).then_some(s)
        },
    )
    .await;
    let message = &s.last_attempt.as_ref().unwrap().message;
    assert!(message.contains("cache location"), "{message}");
    assert_eq!(
        condition(&s.conditions, "Replicating").unwrap().1,
        "CaptureFailed"
    );
    mend();

    // The target refuses writes: the point is complete in the cache, not replicated.
    let mend = break_data(&target);
    let expected = write_version(&volumes, 3);
    request_point(&workloads, "3").await;
    let s = eventually(Duration::from_secs(30), "point in cache only", || async {
        let s = workloads.get("db").await.ok()?.status?;
        let p = s.latest_point.clone()?;
        (s.handled_point_request.as_deref() == Some("3")
            && !p.replicated
            && s.point_in_progress.is_none())
        .then_some(s)
    })
    .await;
    assert_eq!(
        condition(&s.conditions, "Replicating").unwrap().1,
        "ReplicationFailed"
    );
    let pending = s.latest_point.unwrap().id;
    assert_ne!(s.latest_replicated_point.unwrap().id, pending);
    assert_eq!(events(&rig, "ReplicationFailed").await.len(), 1);

    // The target comes back: the operator catches up without a new point.
    mend();
    let s = eventually(Duration::from_secs(60), "caught up", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (s.latest_replicated_point.as_ref()?.id == pending).then_some(s)
    })
    .await;
    assert_eq!(
        condition(&s.conditions, "Replicating").unwrap().1,
        "PointReplicated"
    );
    assert_restores(&target, &pending, &expected).await;
    shut_down(&rig, dir.path(), running, agents).await;
}

/// Real time, not simulated: the operator's clock, the agents' reads and the storage are all
/// real, so the RPO measured here includes every delay a point really has.
#[tokio::test]
async fn rpo_stays_within_45s_at_a_30s_frequency_and_retention_prunes_both_locations() {
    let policy = json!({"crashConsistentFrequency": "30s", "recoveryPointRetention": "1m"});
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, policy)).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2"]);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    let first = first_point(&workloads)
        .await
        .latest_replicated_point
        .unwrap();

    let run_for = Duration::from_secs(150);
    let start = std::time::Instant::now();
    let mut worst = 0i64;
    let mut worst_reported = 0i64;
    let mut v = 2;
    while start.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if start.elapsed().as_secs().is_multiple_of(10) {
            write_version(&volumes, v);
            v += 1;
        }
        let s = workloads.get("db").await.unwrap().status.unwrap();
        let newest = s.latest_replicated_point.unwrap().time;
        let rpo = jiff::Timestamp::now().duration_since(newest).as_secs();
        worst = worst.max(rpo);
        worst_reported = worst_reported.max(s.rpo_seconds.unwrap_or(0));
        assert!(rpo <= 45, "RPO {rpo}s after {:?}", start.elapsed());
        assert_eq!(condition(&s.conditions, "RPOMet").unwrap().0, "True");
    }
    println!("worst RPO over {run_for:?}: {worst}s measured, {worst_reported}s reported in status");

    // Retention (1m) removed the first point from both locations, keeping the recent ones.
    let s = eventually(Duration::from_secs(40), "first point pruned", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (s.oldest_point? > first.time).then_some(s)
    })
    .await;
    for location in ["cache", "target"] {
        let repo = open(&dir.path().join(location)).await;
        let ids = repo.point_ids().await.unwrap();
        assert!(
            !ids.contains(&first.id),
            "{location} still holds {}",
            first.id
        );
        assert!(
            ids.len() >= 2,
            "{location} keeps the recent points: {ids:?}"
        );
    }
    assert!(s.point_count.unwrap() >= 2);
    assert!(!events(&rig, "RecoveryPointsPruned").await.is_empty());
    shut_down(&rig, dir.path(), running, agents).await;
}

pub(crate) fn csi_vault(dir: &Path) -> RecoveryVault {
    let mut v = live_vault(dir, json!({}));
    v.spec.snapshot_method = site_recovery::api::vault::SnapshotMethod::Csi;
    v.spec.volume_snapshot_class_name = Some("rig-snapshots".into());
    v
}

pub(crate) async fn temporaries(rig: &Rig) -> Vec<String> {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    let lp = ListParams::default().labels("siterecovery.io/replicated-workload=db");
    let mut out: Vec<String> = crate::rig::csi::snapshots(rig, "apps")
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| format!("VolumeSnapshot/{}", o.metadata.name.clone().unwrap()))
        .collect();
    for c in Api::<PersistentVolumeClaim>::namespaced(rig.client(), "apps")
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
    {
        out.push(format!(
            "PersistentVolumeClaim/{}",
            c.metadata.name.unwrap()
        ));
    }
    for p in Api::<Pod>::namespaced(rig.client(), "apps")
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
    {
        out.push(format!("Pod/{}", p.metadata.name.unwrap()));
    }
    out
}

#[tokio::test]
async fn csi_points_are_read_from_snapshots_through_reader_pods_that_are_removed_after() {
    let (rig, dir, running, volumes) = setup(csi_vault).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let (driver, log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        BTreeMap::from([("zone-a".to_string(), "node-a2".to_string())]),
    );
    let at_snapshot = write_version(&volumes, 1);
    let workloads = protect(&rig).await;

    // The snapshots are taken; the volumes change before the reader pods are even scheduled.
    eventually(Duration::from_secs(30), "snapshots taken", || async {
        (log.lock().unwrap().snapshots_taken.len() == 2).then_some(())
    })
    .await;
    write_version(&volumes, 2);
    let (id, status) = {
        let s = first_point(&workloads).await;
        (s.latest_replicated_point.clone().unwrap().id, s)
    };
    let latest = status
        .latest_crash_consistent_point
        .clone()
        .expect("a crash-consistent point");
    assert_eq!(
        (latest.id.as_str(), latest.consistency.as_str()),
        (id.as_str(), "CrashConsistent")
    );
    // The point holds the volumes as they were at the snapshot instant.
    assert_restores(&dir.path().join("target"), &id, &at_snapshot).await;
    {
        let log = log.lock().unwrap();
        assert_eq!(log.readers_scheduled.len(), 2);
        assert!(
            log.readers_scheduled
                .iter()
                .all(|(_, node)| node == "node-a2")
        );
    }
    // Every temporary object is gone.
    eventually(
        Duration::from_secs(20),
        "temporary objects removed",
        || async {
            let left = temporaries(&rig).await;
            left.is_empty().then_some(())
        },
    )
    .await;

    // A snapshot the driver reports as failed fails the point with the driver's message.
    driver.abort();
    request_point(&workloads, "2").await;
    let point = eventually(Duration::from_secs(30), "second point started", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (s.handled_point_request.as_deref() == Some("2")).then_some(())?;
        s.point_in_progress
    })
    .await;
    let snaps = crate::rig::csi::snapshots(&rig, "apps");
    let name = site_recovery::api::work::temporary_name("data-db-0", &point.id);
    snaps
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyToUse": false, "error": {"message": "snapshot quota exceeded"}}})),
        )
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(30), "second point failed", || async {
        let s = workloads.get("db").await.ok()?.status?;
        let a = s.last_attempt.clone()?;
        (a.id == point.id && !a.succeeded).then_some(s)
    })
    .await;
    assert!(
        s.last_attempt
            .unwrap()
            .message
            .contains("snapshot quota exceeded")
    );
    eventually(
        Duration::from_secs(20),
        "temporary objects of the failed point removed",
        || async { temporaries(&rig).await.is_empty().then_some(()) },
    )
    .await;

    // The operator is killed while a point's reader pods exist; its successor finishes the
    // point and removes them.
    let (_driver, _log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        BTreeMap::from([("zone-a".to_string(), "node-a2".to_string())]),
    );
    let expected = write_version(&volumes, 3);
    request_point(&workloads, "3").await;
    eventually(Duration::from_secs(30), "reader pods exist", || async {
        let left = temporaries(&rig).await;
        (left.iter().filter(|o| o.starts_with("Pod/")).count() == 2).then_some(())
    })
    .await;
    running.task.abort();
    let running = start_operator(&rig, false).await;
    let (id, _) = replicated_point(&workloads, "3", Duration::from_secs(60)).await;
    assert_restores(&dir.path().join("target"), &id, &expected).await;
    shut_down(&rig, dir.path(), running, agents).await;
}

async fn set_hooks(workloads: &Api<ReplicatedWorkload>, hooks: serde_json::Value) {
    workloads
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"appConsistency": {"hooks": hooks}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn hooks_wrap_the_snapshot_and_a_failing_hook_is_never_called_app_consistent() {
    let (rig, dir, running, volumes) = setup(csi_vault).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2"]);
    let (_driver, _log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        BTreeMap::from([("zone-a".to_string(), "node-a1".to_string())]),
    );
    write_version(&volumes, 1);
    let marker = dir.path().join("hooks.log");
    let dirs: Vec<String> = volumes.values().map(|d| d.display().to_string()).collect();
    let quiesce = format!(
        "echo pre >> {m}; for d in {d}; do echo quiesced > $d/quiesce.flag; done",
        m = marker.display(),
        d = dirs.join(" ")
    );
    let resume = format!(
        "echo post >> {m}; for d in {d}; do rm -f $d/quiesce.flag; done",
        m = marker.display(),
        d = dirs.join(" ")
    );
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    let rw: ReplicatedWorkload = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {
            "vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"},
            "appConsistency": {"hooks": {
                // A failing pre hook and one that outlives its timeout.
                "pre": [
                    {"container": "main", "command": ["sh", "-c", "echo flush failed >&2; exit 3"]},
                    {"container": "main", "command": ["sleep", "5"], "timeout": "1s"},
                ],
                "post": [{"container": "main", "command": ["sh", "-c", resume]}],
            }},
        },
    }))
    .unwrap();
    workloads.create(&PostParams::default(), &rw).await.unwrap();

    // Point 1: the pre hooks failed, so the point is crash-consistent and says why.
    let s = first_point(&workloads).await;
    let p = s.latest_point.clone().unwrap();
    assert_eq!(p.consistency, "CrashConsistent");
    assert!(s.latest_app_consistent_point.is_none());
    let (status, reason, message) = condition(&s.conditions, "Replicating").unwrap();
    assert_eq!((status, reason), ("True", "HookFailed"));
    assert!(
        message.contains("exit code")
            && message.contains("flush failed")
            && message.contains("timeout of 1s"),
        "{message}"
    );
    assert_eq!(event_count(&rig, "HookFailed").await, 1);
    // Post hooks run even when pre hooks fail: once per pod.
    let log = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(log.matches("post").count(), 2, "{log}");

    // Point 2: pre hooks quiesce, the snapshot is cut, then post hooks resume; a post hook
    // failing afterwards is reported but does not change what was captured.
    std::fs::remove_file(&marker).unwrap();
    set_hooks(
        &workloads,
        json!({
            "pre": [{"container": "main", "command": ["sh", "-c", quiesce]}],
            "post": [
                {"container": "main", "command": ["sh", "-c", resume]},
                {"container": "main", "command": ["sh", "-c", "echo resume failed >&2; exit 4"]},
            ],
        }),
    )
    .await;
    let expected = write_version(&volumes, 2);
    request_point(&workloads, "2").await;
    let (id, s) = replicated_point(&workloads, "2", Duration::from_secs(60)).await;
    let app = s
        .latest_app_consistent_point
        .clone()
        .expect("an app-consistent point");
    assert_eq!(
        (app.id.as_str(), app.consistency.as_str()),
        (id.as_str(), "AppConsistent")
    );
    let (_, reason, message) = condition(&s.conditions, "Replicating").unwrap();
    assert_eq!(reason, "HookFailed");
    assert!(message.contains("resume failed"), "{message}");
    // The point holds the quiesced state: the flag the pre hook wrote and the post hook removed.
    let mut quiesced = expected.clone();
    for files in quiesced.values_mut() {
        files.insert("quiesce.flag".into(), b"quiesced\n".to_vec());
    }
    assert_restores(&dir.path().join("target"), &id, &quiesced).await;
    for d in volumes.values() {
        assert!(
            !d.join("quiesce.flag").exists(),
            "the post hook resumed the application"
        );
    }
    let log = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["pre", "pre", "post", "post"]
    );
    // Hooks ran in the named container of both pods.
    let execs = rig.state.0.lock().unwrap().execs.clone();
    assert!(execs.iter().all(|e| e.container == "main"));
    assert!(execs.iter().any(|e| e.pod == "db-0") && execs.iter().any(|e| e.pod == "db-1"));
    shut_down(&rig, dir.path(), running, agents).await;
}

#[tokio::test]
async fn an_agent_killed_mid_capture_leaves_a_valid_cache_and_the_point_completes() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let a2 = start_agent(&rig, "node-a2", 20);
    let mut expected = write_version(&volumes, 1);
    // node-a1's volume is big enough that its capture takes a while.
    let big: Vec<u8> = {
        let mut state = 0x9e3779b97f4a7c15u64;
        (0..96 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    std::fs::write(volumes["data-db-0"].join("big.bin"), &big).unwrap();
    expected
        .get_mut("data-db-0")
        .unwrap()
        .insert("big.bin".into(), big);
    let cache = dir.path().join("cache");
    let a1 = start_agent(&rig, "node-a1", 20);
    let workloads = protect(&rig).await;

    // Killed as soon as a capture holds its lock in the cache: mid-write.
    eventually(Duration::from_secs(30), "a capture in flight", || async {
        let locks = std::fs::read_dir(cache.join("locks")).ok()?;
        (locks.count() > 0).then_some(())
    })
    .await;
    a1.kill();
    let s = workloads.get("db").await.unwrap().status.unwrap();
    assert!(
        s.latest_point.is_none(),
        "no point exists before every byte is in the cache"
    );
    let a1 = start_agent(&rig, "node-a1", 20);
    let (id, status) = eventually(Duration::from_secs(90), "the point completes", || async {
        let s = workloads.get("db").await.ok()?.status?;
        let p = s.latest_replicated_point.clone()?;
        Some((p.id, s))
    })
    .await;
    assert_eq!(status.point_count, Some(1));
    assert_restores(&dir.path().join("target"), &id, &expected).await;
    let repo = open(&cache).await;
    let report = site_recovery::repository::verify::verify(&repo, true)
        .await
        .unwrap();
    assert_eq!((report.points, report.problems.len()), (1, 0), "{report:?}");
    assert!(parts_left(&cache).is_empty());
    shut_down(&rig, dir.path(), running, vec![a1, a2]).await;
}

#[tokio::test]
async fn a_csi_vault_without_the_snapshot_api_says_so() {
    let (rig, dir) = cluster().await;
    rig.remove_api("snapshot.storage.k8s.io", "volumesnapshots");
    let running = start_operator(&rig, false).await;
    Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .create(&PostParams::default(), &csi_vault(dir.path()))
        .await
        .unwrap();
    database(&rig).await;
    let agents = vec![
        start_agent(&rig, "node-a1", 10),
        start_agent(&rig, "node-a2", 10),
    ];
    let workloads = protect(&rig).await;
    let s = eventually(Duration::from_secs(30), "CaptureFailed", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (condition(&s.conditions, "Replicating")?.1 == "CaptureFailed").then_some(s)
    })
    .await;
    let (_, _, message) = condition(&s.conditions, "Replicating").unwrap();
    assert!(
        message.contains("snapshot.storage.k8s.io/v1") && message.contains("snapshotMethod: Live"),
        "{message}"
    );
    assert!(
        s.point_in_progress.is_none(),
        "no point starts without a way to capture it"
    );
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

#[tokio::test]
async fn the_plugin_shows_status_and_lists_points_from_the_target_alone() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = vec![
        start_agent(&rig, "node-a1", 10),
        start_agent(&rig, "node-a2", 10),
    ];
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    let (id, _) = {
        let s = first_point(&workloads).await;
        (s.latest_replicated_point.clone().unwrap().id, s)
    };
    // Installed under the name kubectl looks for: `kubectl siterecovery …` runs it.
    let plugin = dir.path().join("kubectl-siterecovery");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_site-recovery"), &plugin).unwrap();
    let kubeconfig = rig.kubeconfig(dir.path());
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&plugin);
        cmd.args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("SITE_RECOVERY_FILESYSTEM_ROOT", rig.storage_root.path());
        async move {
            // Asynchronously: the rig answers on this test's runtime.
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, table, err) = run(&["status", "-n", "apps"]).await;
    assert_eq!(code, Some(0), "{err}");
    let line = table
        .lines()
        .find(|l| l.starts_with("apps") && l.contains(" db "))
        .unwrap_or_else(|| panic!("{table}"));
    for word in ["vault", "True", &id, "FileLevel"] {
        assert!(line.contains(word), "{word} missing in {line:?}");
    }
    let (code, json, err) = run(&["status", "-A", "-o", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["workloads"][0]["latestPoint"], json!(id));
    assert_eq!(v["vaults"][0]["ready"], json!("True"));

    // The source zone's cache is gone: the points are listed from the target alone.
    running.stop().await;
    for a in agents {
        a.kill();
    }
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let (code, yaml, err) = run(&["points", "db", "-n", "apps", "-o", "yaml"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        yaml.contains(&id) && yaml.contains("data-db-0") && yaml.contains("data-db-1"),
        "{yaml}"
    );
    let (code, _, err) = run(&["points", "db", "-n", "apps", "--location", "cache"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("opening the cache location of RecoveryVault vault"),
        "{err}"
    );
    let (code, _, err) = run(&["points", "nope", "-n", "apps"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("ReplicatedWorkload nope not found in namespace apps"),
        "{err}"
    );
}

#[tokio::test]
async fn failovers_resolve_points_from_the_target_location_alone() {
    let (rig, dir, running, volumes) = setup(|d| live_vault(d, json!({}))).await;
    let agents = vec![
        start_agent(&rig, "node-a1", 10),
        start_agent(&rig, "node-a2", 10),
    ];
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    let (first, _) = {
        let s = first_point(&workloads).await;
        (s.latest_replicated_point.clone().unwrap(), s)
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_version(&volumes, 2);
    request_point(&workloads, "2").await;
    let (second, _) = replicated_point(&workloads, "2", Duration::from_secs(60)).await;
    shut_down(&rig, dir.path(), running, agents).await;

    // The source zone is gone with its cache; a new operator resolves points from the target.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let running = start_operator(&rig, false).await;
    let failovers: Api<site_recovery::api::Failover> = Api::namespaced(rig.client(), "apps");
    let resolved = |name: &'static str| {
        let failovers = failovers.clone();
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("{name} resolved"),
                || async {
                    let s = failovers.get(name).await.ok()?.status?;
                    let c = condition(&s.conditions, "Ready")?;
                    (c.0 == "True").then_some(())?;
                    s.resolved_point
                },
            )
            .await
        }
    };
    let create = |name: &str, point: serde_json::Value| {
        serde_json::from_value::<site_recovery::api::Failover>(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"workloadName": "db", "recoveryPoint": point},
        }))
        .unwrap()
    };
    // The newest point at or before the first point's time is the first one, not the latest.
    failovers
        .create(
            &PostParams::default(),
            &create("to-time", json!({"time": first.time})),
        )
        .await
        .unwrap();
    let p = resolved("to-time").await;
    assert_eq!(
        (p.id.as_str(), p.consistency.as_str()),
        (first.id.as_str(), "FileLevel")
    );
    failovers
        .delete("to-time", &Default::default())
        .await
        .unwrap();
    failovers
        .create(
            &PostParams::default(),
            &create("latest", json!({"latest": true})),
        )
        .await
        .unwrap();
    assert_eq!(resolved("latest").await.id, second);
    running.stop().await;
}

#[tokio::test]
async fn hook_output_is_cut_at_its_limit_and_the_exec_closed() {
    let rig = Rig::start().await;
    rig.namespace("apps").await;
    rig.create(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "apps"},
        "spec": {"containers": [{"name": "main", "image": "db"}]}}),
    )
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(rig.client(), "apps");
    let hook = |command: &[&str]| -> site_recovery::api::workload::ExecHook {
        serde_json::from_value(json!({"container": "main", "command": command, "timeout": "1h"}))
            .unwrap()
    };
    use site_recovery::controllers::workload::hooks::exec;
    // Endless output: cut at 64 KiB at once, not read for the hook's hour.
    let started = std::time::Instant::now();
    let message = tokio::time::timeout(
        Duration::from_secs(20),
        exec(&pods, "db-0", &hook(&["cat", "/dev/zero"])),
    )
    .await
    .expect("the hook is stopped long before its timeout")
    .unwrap_err();
    assert!(
        message.contains("stdout passed 64 KiB") && message.contains("truncated"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually(Duration::from_secs(10), "the command killed", || async {
        (rig.state.0.lock().unwrap().execs_killed == 1).then_some(())
    })
    .await;
    // The same on stderr.
    let message = exec(&pods, "db-0", &hook(&["sh", "-c", "cat /dev/zero >&2"]))
        .await
        .unwrap_err();
    assert!(message.contains("stderr passed 64 KiB"), "{message}");
    // Output under the limit changes nothing: a failure carries its stderr.
    let message = exec(
        &pods,
        "db-0",
        &hook(&[
            "sh",
            "-c",
            "head -c 60000 /dev/zero; echo flushed tables >&2; exit 3",
        ]),
    )
    .await
    .unwrap_err();
    assert!(
        message.contains("exit status 3") && message.contains("stderr: flushed tables"),
        "{message}"
    );
    exec(&pods, "db-0", &hook(&["true"])).await.unwrap();
}

#[tokio::test]
async fn a_snapshot_whose_restore_size_is_not_a_quantity_fails_the_point_without_a_panic() {
    let (rig, dir, running, volumes) = setup(csi_vault).await;
    let agents = start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    write_version(&volumes, 1);
    let workloads = protect(&rig).await;
    // The test plays a snapshot controller that reports nonsense: ready, with restoreSize true
    // on one snapshot and an object on the other.
    let snaps = crate::rig::csi::snapshots(&rig, "apps");
    let names = eventually(Duration::from_secs(30), "snapshots taken", || async {
        let list = snaps.list_metadata(&Default::default()).await.ok()?.items;
        (list.len() == 2).then(|| {
            list.into_iter()
                .filter_map(|s| s.metadata.name)
                .collect::<Vec<_>>()
        })
    })
    .await;
    for (name, size) in names.iter().zip([json!(true), json!({"bytes": 1})]) {
        rig.patch_status(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some("apps"),
            name,
            json!({"status": {"readyToUse": true, "creationTime": "2026-01-01T00:00:00Z", "restoreSize": size}}),
        )
        .await;
    }
    let s = eventually(Duration::from_secs(30), "the point failed", || async {
        let s = workloads.get("db").await.ok()?.status?;
        let a = s.last_attempt.clone()?;
        (!a.succeeded).then_some(s)
    })
    .await;
    let (_, reason, message) = condition(&s.conditions, "Replicating").unwrap();
    assert_eq!(reason, "CaptureFailed", "{message}");
    assert!(
        message.contains("status.restoreSize") && message.contains("not a quantity"),
        "{message}"
    );
    assert!(!running.task.is_finished(), "the operator did not panic");
    let _ = dir;
    running.stop().await;
    for a in agents {
        a.kill();
    }
}
