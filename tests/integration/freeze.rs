//! Freezing real filesystems: ext4 images on loop devices, mounted here, frozen and thawed by
//! `agent::freeze`. Needs root and loop devices; says why and passes vacuously where a machine
//! lacks them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use site_recovery::agent::freeze::{freeze, thaw_leftovers};

/// A filesystem image (ext4 or xfs) on a loop device, mounted; unmounted and detached on drop.
pub(crate) struct LoopFs {
    _dir: tempfile::TempDir,
    pub(crate) mount: PathBuf,
}

impl LoopFs {
    fn new() -> Option<LoopFs> {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        Self::mount(dir, mount, "ext4")
    }

    /// A new `fstype` filesystem mounted over the directory `mount` (a volume's directory).
    pub(crate) fn at(mount: &Path, fstype: &str) -> Option<LoopFs> {
        Self::mount(tempfile::tempdir().unwrap(), mount.to_path_buf(), fstype)
    }

    fn mount(dir: tempfile::TempDir, mount: PathBuf, fstype: &str) -> Option<LoopFs> {
        let image = dir.path().join("fs.img");
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        // xfs wants 300 MiB at least; the image is sparse.
        let (size, mkfs, force) = match fstype {
            "xfs" => ("320M", "mkfs.xfs", "-f"),
            _ => ("32M", "mkfs.ext4", "-F"),
        };
        let made = ok(Command::new("truncate").args(["-s", size]).arg(&image))
            && ok(Command::new(mkfs).args(["-q", force]).arg(&image))
            && ok(Command::new("mount")
                .args(["-o", "loop,noatime"])
                .arg(&image)
                .arg(&mount));
        if !made {
            eprintln!(
                "skipped: this machine cannot loop-mount an {fstype} image (root, loop devices and mkfs.{fstype} are needed)"
            );
            return None;
        }
        Some(LoopFs { _dir: dir, mount })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
        let _ = Command::new("umount").arg("-d").arg(&self.mount).output();
    }
}

/// Starts a write of `name` (with fsync) on `mount`; the channel says when it is durable.
fn write_in_background(mount: &Path, name: &str) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let path = mount.join(name);
    std::thread::spawn(move || {
        std::fs::write(&path, b"written").unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        let _ = tx.send(());
    });
    rx
}

#[test]
fn a_freeze_holds_writes_on_every_filesystem_of_the_group_until_the_thaw() {
    let (Some(a), Some(b)) = (LoopFs::new(), LoopFs::new()) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let f = freeze(
        &[a.mount.clone(), b.mount.clone()],
        Duration::from_secs(30),
        state.path(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        1,
        "the freeze is recorded"
    );
    let on_a = write_in_background(&a.mount, "during-a");
    let on_b = write_in_background(&b.mount, "during-b");
    for (name, rx) in [("a", &on_a), ("b", &on_b)] {
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "a write on {name} went through while frozen"
        );
    }
    let frozen_for = f.thaw().unwrap();
    assert!(frozen_for >= Duration::from_millis(500), "{frozen_for:?}");
    for rx in [on_a, on_b] {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the write completes after the thaw");
    }
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "the record is gone"
    );
}

#[test]
fn a_freeze_never_outlives_its_bound_and_a_killed_agents_freeze_is_thawed_at_its_start() {
    let Some(fs) = LoopFs::new() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    // Held by nobody: the watchdog thaws at the deadline.
    std::mem::forget(
        freeze(
            std::slice::from_ref(&fs.mount),
            Duration::from_millis(300),
            state.path(),
        )
        .unwrap(),
    );
    write_in_background(&fs.mount, "after-bound")
        .recv_timeout(Duration::from_secs(10))
        .expect("thawed at the bound");

    // As if the agent died holding a freeze: only the record and the frozen filesystem remain.
    let status = Command::new("fsfreeze")
        .arg("-f")
        .arg(&fs.mount)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        state.path().join("freeze-999999-0.json"),
        serde_json::to_vec(&serde_json::json!({"mounts": [fs.mount]})).unwrap(),
    )
    .unwrap();
    let blocked = write_in_background(&fs.mount, "after-restart");
    assert!(
        blocked.recv_timeout(Duration::from_millis(300)).is_err(),
        "frozen"
    );
    let thawed = thaw_leftovers(state.path()).unwrap();
    assert_eq!(thawed, vec![fs.mount.clone()]);
    blocked
        .recv_timeout(Duration::from_secs(10))
        .expect("the restarted agent thawed it");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

#[test]
fn a_group_that_cannot_all_be_frozen_is_left_thawed_and_names_the_mount() {
    let Some(fs) = LoopFs::new() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let missing = fs.mount.join("no-such-directory");
    let err = match freeze(
        &[fs.mount.clone(), missing.clone()],
        Duration::from_secs(30),
        state.path(),
    ) {
        Ok(_) => panic!("a missing mount froze"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&missing.display().to_string()), "{err}");
    write_in_background(&fs.mount, "not-frozen")
        .recv_timeout(Duration::from_secs(10))
        .expect("the first mount was thawed again");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

/// Waits for `rx` without blocking the test's runtime (it also runs the agents).
async fn arrives(rx: &mpsc::Receiver<()>, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if rx.try_recv().is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("nothing within {within:?}"))
}

/// A writer that creates `w-00000`, `w-00001`, … on `mount` one after another (each fsynced),
/// recording when each write started and ended, until told to stop.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, Instant, Instant)>>,
}

impl Writer {
    fn start(mount: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, mount) = (stop.clone(), mount.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w-{n:05}");
                let started = Instant::now();
                let path = mount.join(&name);
                std::fs::write(&path, name.as_bytes()).unwrap();
                std::fs::File::open(&path).unwrap().sync_all().unwrap();
                log.push((name, started, Instant::now()));
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            log
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<(String, Instant, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Checks `point`'s copy of a volume a [`Writer`] wrote to while the point's freeze held it:
/// the write that blocked longest is the one the freeze held; every write that ended before it
/// started is in the point, none that started after it ended is. Returns how long it blocked.
fn cut_between_writes(
    claim: &str,
    log: &[(String, Instant, Instant)],
    point: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Duration {
    let (held, (name, started, ended)) = log
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, s, e))| *e - *s)
        .expect("the writer wrote");
    let blocked = *ended - *started;
    assert!(
        blocked >= Duration::from_millis(100),
        "{claim}: no write was held by a freeze (longest {blocked:?}, {name})"
    );
    for (i, (file, _, _)) in log.iter().enumerate() {
        if i < held {
            assert_eq!(
                point.get(file).map(Vec::as_slice),
                Some(file.as_bytes()),
                "{claim}: {file}, durable before the freeze, is not in the point"
            );
        } else if i > held {
            assert!(
                !point.contains_key(file),
                "{claim}: {file}, written after the thaw, is in the point"
            );
        }
    }
    blocked
}

/// A CSI vault's app-consistent points with `freezeFilesystems`: the agents of both nodes
/// freeze their claims' filesystems (ext4 on one, xfs on the other), the snapshots are cut while
/// both are frozen, then both are thawed; writers on both see their writes held for that
/// instant, and the point holds exactly the writes made before it. An agent that starts finds a
/// freeze an earlier run left behind and thaws it; a freeze that fails on one node leaves
/// everything thawed and the point CrashConsistent, saying why.
#[tokio::test]
async fn app_consistent_points_freeze_every_nodes_filesystems_while_the_snapshots_are_cut() {
    use crate::replication::{
        csi_vault, events, replicated_point, request_point, restored_tree, setup, shut_down,
        write_version,
    };
    use kube::api::{Api, PostParams};
    use site_recovery::api::ReplicatedWorkload;

    let (rig, dir, running, volumes) = setup(|d| {
        let mut v = csi_vault(d);
        v.spec.replication_policy =
            serde_json::from_value(serde_json::json!({"appConsistentFrequency": "1h"})).unwrap();
        v
    })
    .await;
    let (Some(ext4), Some(xfs)) = (
        LoopFs::at(&volumes["data-db-0"], "ext4"),
        LoopFs::at(&volumes["data-db-1"], "xfs"),
    ) else {
        return;
    };

    // As if the agent of node-a1 had been killed holding a freeze: its record and the frozen
    // filesystem are left. The agent thaws it when it starts.
    assert!(
        Command::new("fsfreeze")
            .arg("-f")
            .arg(&ext4.mount)
            .status()
            .unwrap()
            .success()
    );
    let state = rig.agent_state_dir("node-a1");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("freeze-999999-0.json"),
        serde_json::to_vec(&serde_json::json!({"mounts": [ext4.mount]})).unwrap(),
    )
    .unwrap();
    let held = write_in_background(&ext4.mount, "before-the-agent");
    assert!(
        held.recv_timeout(Duration::from_millis(300)).is_err(),
        "frozen"
    );
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    arrives(&held, Duration::from_secs(10))
        .await
        .expect("the agent thawed at its start what its earlier run left frozen");

    let (_driver, _log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        std::collections::BTreeMap::from([("zone-a".to_string(), "node-a2".to_string())]),
    );
    write_version(&volumes, 1);
    let writers = [Writer::start(&ext4.mount), Writer::start(&xfs.mount)];
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    workloads
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
                "metadata": {"name": "db", "namespace": "apps"},
                "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"},
                    "appConsistency": {"freezeFilesystems": true, "freezeTimeout": "10s"}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let status = crate::replication::first_point(&workloads).await;
    let logs = writers.map(Writer::stop);
    let point = status.latest_replicated_point.clone().unwrap();
    assert_eq!(point.consistency, "AppConsistent", "{status:?}");
    assert_eq!(
        status.latest_app_consistent_point.map(|p| p.id),
        Some(point.id.clone())
    );
    let target = dir.path().join("target");
    for (claim, log) in ["data-db-0", "data-db-1"].iter().zip(&logs) {
        let restored = restored_tree(&target, &point.id, claim).await;
        let blocked = cut_between_writes(claim, log, &restored);
        println!(
            "{claim}: the write the freeze held waited {} ms",
            blocked.as_millis()
        );
    }
    let frozen = events(&rig, "FilesystemsFrozen").await;
    println!("{frozen:?}");
    assert!(
        frozen
            .iter()
            .any(|e| e.contains(&point.id) && e.contains("2 node(s)")),
        "{frozen:?}"
    );
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "no freeze record is left"
    );

    // data-db-1 is no longer a filesystem of its own (a directory of the node's filesystem, as
    // a hostPath volume is): node-a2 refuses to freeze it, node-a1 is thawed again, and the point
    // says what it is.
    drop(xfs);
    request_point(&workloads, "unfreezable").await;
    let (id, status) = replicated_point(&workloads, "unfreezable", Duration::from_secs(60)).await;
    assert_eq!(
        status.latest_crash_consistent_point.map(|p| p.id),
        Some(id.clone()),
        "the point is CrashConsistent"
    );
    let failed = events(&rig, "FreezeFailed").await;
    assert!(
        failed.iter().any(|e| e.contains(&id)
            && e.contains("node-a2")
            && e.contains("not a filesystem of its own")),
        "{failed:?}"
    );
    arrives(
        &write_in_background(&ext4.mount, "after-the-failed-freeze"),
        Duration::from_secs(5),
    )
    .await
    .expect("node-a1 thawed");
    shut_down(&rig, dir.path(), running, agents).await;
}
