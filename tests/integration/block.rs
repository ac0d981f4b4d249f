//! Block volumes end to end, on loop devices: claims in `Block` mode are captured as raw images
//! across two nodes, an incremental moves only the blocks that changed, a failover restores
//! them into block claims in the target zone byte for byte, and a claim whose device link leads
//! to a file is refused with a reason.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use serde_json::json;
use site_recovery::api::{Failover, RecoveryVault};
use site_recovery::repository::Repository;
use site_recovery::repository::format::VolumeContent;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::repository::snapshot::{Source, snapshot};

use crate::failover::{noise, stored_bytes};
use crate::operator::Running;
use crate::replication::{
    Agent, KEY, csi_vault, first_point, live_vault, protect, replicated_point, request_point,
    with_vault,
};
use crate::repository::{fs_location, options};
use crate::rig::{Rig, block, eventually};
use crate::scenario::{condition_true, zones};

const SIZE: u64 = 32 << 20;
const BLOCK: u64 = 16 << 10;

async fn repository(dir: &std::path::Path, location: &str) -> Repository {
    Repository::open(fs_location(&dir.join(location)), &KEY)
        .await
        .unwrap()
}

/// Whether this machine cannot play block volumes (said on stderr, with why).
fn skipped() -> bool {
    let why = block::unavailable();
    if let Some(why) = &why {
        eprintln!("skipped: block volumes need loop devices: {why}");
    }
    why.is_some()
}

/// The cluster with the operator running, vault `vault(dir)`, and StatefulSet `db` whose block
/// claims `data-db-0` (node-a1) and `data-db-1` (node-a2) are loop devices; returns those.
async fn block_cluster(
    vault: impl FnOnce(&std::path::Path) -> RecoveryVault,
) -> (Rig, tempfile::TempDir, Running, Vec<std::path::PathBuf>) {
    let (rig, dir, running) = with_vault(vault).await;
    rig.statefulset_with("apps", "db", &["data"], &["node-a1", "node-a2"], Some(SIZE))
        .await;
    let devices = ["data-db-0", "data-db-1"]
        .iter()
        .map(|c| block::device_of(&rig.kubelet, &format!("pv-apps-{c}")).unwrap())
        .collect();
    (rig, dir, running, devices)
}

async fn stop(running: Running, agents: Vec<Agent>) {
    running.stop().await;
    for a in agents {
        a.kill();
    }
}

#[tokio::test]
async fn block_claims_are_captured_incremented_and_failed_over_byte_for_byte() {
    if skipped() {
        return;
    }
    let (rig, dir, running, devs) = block_cluster(|d| live_vault(d, json!({}))).await;
    // Data at the start of one device and in the middle of the other; the rest never written.
    block::write(&devs[0], 0, &noise(1, 4 << 20));
    block::write(&devs[1], 8 << 20, &noise(2, 2 << 20));
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let workloads = protect(&rig).await;
    let status = first_point(&workloads).await;
    let first = status.latest_replicated_point.unwrap().id;
    let cache = repository(dir.path(), "cache").await;
    let manifest = cache.manifest(&first).await.unwrap();
    assert_eq!(manifest.volumes.len(), 2, "{:?}", manifest.volumes);
    for v in &manifest.volumes {
        let VolumeContent::Raw(data) = &v.content else {
            panic!("volume {} of a block claim is not a raw image", v.name);
        };
        assert_eq!(data.size, SIZE, "the whole device is the image");
    }
    assert!(
        manifest.stats.stored_bytes_added < (6 << 20) + (1 << 20),
        "only the written ranges are stored (unwritten blocks are holes): {:?}",
        manifest.stats
    );

    // Eight scattered blocks change: the incremental moves about eight blocks.
    let before = stored_bytes(&dir.path().join("target"));
    for i in 0..8u64 {
        let device = &devs[(i % 2) as usize];
        block::write(device, i * (3 << 20) + 4096, &noise(100 + i, 4096));
    }
    let expected: Vec<Vec<u8>> = devs.iter().map(|d| block::read(d, SIZE as usize)).collect();
    request_point(&workloads, "after-changes").await;
    let (second, _) = replicated_point(&workloads, "after-changes", Duration::from_secs(60)).await;
    let moved = stored_bytes(&dir.path().join("target")) - before;
    let cache = repository(dir.path(), "cache").await;
    let incremental = cache.manifest(&second).await.unwrap();
    let changed = 8 * BLOCK;
    eprintln!(
        "block incremental: {} bytes of data changed in 8 blocks of {BLOCK}; {} stored, {moved} bytes moved to the target",
        8 * 4096,
        incremental.stats.stored_bytes_added
    );
    assert!(
        incremental.stats.stored_bytes_added <= changed + 4096,
        "only the changed blocks are stored: {:?}",
        incremental.stats
    );
    assert!(
        moved < changed + (256 << 10),
        "the target receives the changed blocks and the point's metadata only: {moved} bytes"
    );

    // Failover to the second point: block claims in zone-b, filled byte for byte.
    let _zone_b = zones(&rig, &[("zone-b", "node-b1")]);
    let failovers: Api<Failover> = Api::namespaced(rig.client(), "apps");
    let fo: Failover = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "db-fo", "namespace": "apps"},
        "spec": {"workloadName": "db", "recoveryPoint": {"id": second}},
    }))
    .unwrap();
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    condition_true(&failovers, "db-fo", "FailedOver", Duration::from_secs(90)).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(rig.client(), "apps");
    for (i, want) in expected.iter().enumerate() {
        let claim = format!("data-db-failover-{i}");
        let spec = claims.get(&claim).await.unwrap().spec.unwrap();
        assert_eq!(spec.volume_mode.as_deref(), Some("Block"), "{claim}");
        let device = crate::rig::failover::claim_device(&rig, "apps", &claim).await;
        let got = block::read(&device, SIZE as usize);
        assert!(
            got == *want,
            "{claim} differs from the source at the point, first at byte {:?}",
            got.iter().zip(want).position(|(a, b)| a != b)
        );
    }
    stop(running, agents).await;
}

/// CSI: the snapshot of a block claim is restored into a temporary block claim that the reader
/// pod attaches as a device; the point holds the device as it was at the snapshot.
#[tokio::test]
async fn csi_points_of_block_claims_read_the_snapshot_through_an_attached_device() {
    if skipped() {
        return;
    }
    let (rig, dir, running, devs) = block_cluster(csi_vault).await;
    block::write(&devs[0], 1 << 20, &noise(3, 1 << 20));
    block::write(&devs[1], 0, &noise(4, 512 << 10));
    let at_snapshot: Vec<Vec<u8>> = devs.iter().map(|d| block::read(d, SIZE as usize)).collect();
    let agents = crate::replication::start_agents(&rig, &["node-a1", "node-a2", "node-b1"]);
    let (_driver, log) = crate::rig::csi::run_driver(
        &rig,
        "apps",
        std::collections::BTreeMap::from([("zone-a".to_string(), "node-a2".to_string())]),
    );
    let workloads = protect(&rig).await;
    eventually(Duration::from_secs(30), "snapshots taken", || async {
        (log.lock().unwrap().snapshots_taken.len() == 2).then_some(())
    })
    .await;
    // Written after the snapshot: not in the point.
    block::write(&devs[0], 1 << 20, &noise(5, 4096));
    // The reader pods attach their temporary claims as devices.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(rig.client(), "apps");
    let readers = eventually(Duration::from_secs(30), "reader pods", || async {
        let lp = kube::api::ListParams::default().labels("siterecovery.io/replicated-workload=db");
        let list = pods.list(&lp).await.ok()?.items;
        (list.len() == 2).then_some(list)
    })
    .await;
    for r in &readers {
        let c = &r.spec.as_ref().unwrap().containers[0];
        assert!(
            c.volume_devices.is_some() && c.volume_mounts.is_none(),
            "a reader of a block claim attaches it as a device: {c:?}"
        );
    }
    let status = first_point(&workloads).await;
    let id = status.latest_replicated_point.unwrap().id;
    let target = repository(dir.path(), "target").await;
    let scratch = tempfile::tempdir().unwrap();
    for (i, want) in at_snapshot.iter().enumerate() {
        let out = scratch.path().join(format!("{i}.img"));
        restore(
            &target,
            &id,
            &out,
            &RestoreOptions {
                volume: Some(format!("data-db-{i}")),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        let got = std::fs::read(&out).unwrap();
        assert!(got == *want, "data-db-{i} is the device at the snapshot");
    }
    stop(running, agents).await;
}

/// A raw image of a device restored into another device that holds other bytes: the device ends
/// up holding the image exactly (holes included), and only the blocks that differ are written;
/// a tree is not restored into a device, an image not into a directory, and a pipe is not read.
#[tokio::test]
async fn a_device_restore_converges_on_the_image_and_kinds_never_mix() {
    if skipped() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let source = block::device(tmp.path(), "source", 8 << 20);
    let target = block::device(tmp.path(), "target", 16 << 20);
    let _detach = Detach(tmp.path().to_path_buf());
    block::write(&source, 0, &noise(7, 1 << 20));
    block::write(&source, 5 << 20, &noise(8, 64 << 10));
    // The target holds other data where the image has holes and where it has data.
    block::write(&target, 0, &noise(9, 8 << 20));
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), &KEY)
        .await
        .unwrap();
    let m = snapshot(
        &mut repo,
        vec![("disk".into(), Source::Raw(source.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();
    let stats = restore(&repo, &m.id, &target, &RestoreOptions::default(), None)
        .await
        .unwrap();
    let want = block::read(&source, 8 << 20);
    assert!(
        block::read(&target, 8 << 20) == want,
        "the device holds the image"
    );
    assert!(
        stats.bytes_written >= 8 << 20,
        "every differing byte was written: {stats:?}"
    );
    // Again: nothing differs, nothing is written.
    let again = restore(&repo, &m.id, &target, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(again.bytes_written, 0, "{again:?}");
    assert!(block::read(&target, 8 << 20) == want);

    // A device smaller than the image is refused before anything is written.
    let small = block::device(tmp.path(), "small", 4 << 20);
    let err = restore(&repo, &m.id, &small, &RestoreOptions::default(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least as large"), "{err}");

    // An image is not restored into a directory (nothing is written beside it either).
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let err = restore(&repo, &m.id, &dir, &RestoreOptions::default(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a directory"), "{err}");
    assert!(!tmp.path().join("dir.partial").exists());

    // A tree is not restored into a device.
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let t = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(tree))],
        &options("t"),
        None,
    )
    .await
    .unwrap();
    let err = restore(&repo, &t.id, &target, &RestoreOptions::default(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a block device"), "{err}");
    assert!(
        block::read(&target, 8 << 20) == want,
        "the device is untouched"
    );

    // A pipe given as a raw image is refused at once, not waited on.
    let fifo = tmp.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        snapshot(
            &mut repo,
            vec![("disk".into(), Source::Raw(fifo))],
            &options("p"),
            None,
        ),
    )
    .await
    .expect("a pipe is not waited on")
    .unwrap_err()
    .to_string();
    assert!(err.contains("regular file or a block device"), "{err}");
}

/// Detaches a test's own loop devices when it ends, passed or not.
struct Detach(std::path::PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        block::detach_all(&self.0);
    }
}
