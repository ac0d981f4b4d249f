//! Stored bytes and volume trees written by an attacker: a tenant holds its own vault's key (so
//! it can write well-formed, authenticated manifests), and a workload controls the files being
//! captured. Nothing they write may make a restore leave its target, make a capture read
//! outside its volume, panic, exhaust memory, or leave a lock behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use site_recovery::repository::crypto::{self, Kind};
use site_recovery::repository::format::{
    self, Consistency, FileData, Manifest, Node, NodeKind, Stats, VolumeContent, VolumeManifest,
};
use site_recovery::repository::prune::{PruneOptions, prune};
use site_recovery::repository::replicate::replicate;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::repository::snapshot::{Progress, Source, snapshot};
use site_recovery::repository::{RepoError, Repository, new_point_id};
use site_recovery::storage::{Location, layout};

use crate::repository::{Faulty, KEY, describe, fs_location, options};

fn node(path: &str, kind: NodeKind) -> Node {
    Node {
        path: path.into(),
        kind,
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        xattrs: vec![("user.planted".into(), b"yes".to_vec())],
    }
}

/// Writes an authenticated manifest with these nodes (the root added) as a new point.
async fn plant(repo: &Repository, nodes: Vec<Node>) -> String {
    let id = new_point_id(jiff::Timestamp::now());
    let mut all = vec![node("", NodeKind::Dir)];
    all.extend(nodes);
    let m = Manifest {
        id: id.clone(),
        time: jiff::Timestamp::now().to_string(),
        workload: "w".into(),
        consistency: Consistency::CrashConsistent,
        source_zone: None,
        parent: None,
        volumes: vec![VolumeManifest {
            name: "data".into(),
            content: VolumeContent::Tree(all),
        }],
        stats: Stats::default(),
        origin: None,
    };
    repo.location
        .put(
            &layout::point(repo.location.prefix(), &id),
            Bytes::from(format::encode_manifest(&repo.keys, &m)),
        )
        .await
        .unwrap();
    id
}

/// A file outside the volume and the restore target, that nothing may touch: (its directory, it).
fn victim(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let outside = tmp.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    (outside, victim)
}

/// A point of `src` as volume "data" of workload "w".
async fn snap(repo: &mut Repository, src: &Path) -> Manifest {
    snapshot(
        repo,
        vec![("data".into(), Source::Tree(src.to_path_buf()))],
        &options("w"),
        None,
    )
    .await
    .unwrap()
}

fn file_of(data: &FileData) -> NodeKind {
    NodeKind::File(data.clone())
}

/// The mode, content and extended attribute of a file, to show it was not touched.
fn fingerprint(p: &Path) -> (u32, Vec<u8>, Option<Vec<u8>>) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (
        m.permissions().mode(),
        std::fs::read(p).unwrap_or_default(),
        xattr::get(p, "user.planted").ok().flatten(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_manifests_never_write_outside_the_restore_root() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"attacker-chosen bytes").unwrap();
    let (outside, victim) = victim(tmp.path());
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let real = snap(&mut repo, &src).await;
    let VolumeContent::Tree(nodes) = &real.volumes[0].content else {
        panic!("a tree")
    };
    let NodeKind::File(data) = &nodes[1].kind else {
        panic!("f is a file")
    };
    let victim_abs = victim.to_str().unwrap().trim_start_matches('/').to_string();
    let cases: Vec<(&str, Vec<Node>, &str)> = vec![
        (
            "absolute path",
            vec![node(victim.to_str().unwrap(), file_of(data))],
            "normal components",
        ),
        (
            "parent components",
            vec![node("../outside/victim", file_of(data))],
            "normal components",
        ),
        (
            "climbing through a directory",
            vec![
                node("a", NodeKind::Dir),
                node("a/../../outside/victim", file_of(data)),
            ],
            "normal components",
        ),
        (
            "a file, then a symlink of the same name",
            vec![
                node("x", file_of(data)),
                node("x", NodeKind::Symlink(victim.to_str().unwrap().into())),
            ],
            "given twice",
        ),
        (
            "a symlink, then a file of the same name",
            vec![
                node("x", NodeKind::Symlink(victim.to_str().unwrap().into())),
                node("x", file_of(data)),
            ],
            "given twice",
        ),
        (
            "out of order",
            vec![node("z", file_of(data)), node("b", file_of(data))],
            "out of order",
        ),
        (
            "a hard link to a file outside",
            vec![node(
                "l",
                NodeKind::HardLink(victim.to_str().unwrap().into()),
            )],
            "hard link",
        ),
        (
            "a hard link climbing out",
            vec![node("l", NodeKind::HardLink(format!("../../{victim_abs}")))],
            "hard link",
        ),
        (
            "a hard link through a symlink",
            vec![
                node("s", NodeKind::Symlink(outside.to_str().unwrap().into())),
                node("t", NodeKind::HardLink("s/victim".into())),
            ],
            "hard link",
        ),
    ];
    for (what, nodes, expected) in cases {
        let id = plant(&repo, nodes).await;
        let target = tmp
            .path()
            .join(format!("restore-{}", what.replace(' ', "-")));
        let err = restore(&repo, &id, &target, &RestoreOptions::default(), None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RepoError::Corrupt { .. }), "{what}: {text}");
        assert!(
            text.contains(&id) && text.contains(expected) && text.contains("volume data"),
            "{what}: the error names the point, the volume and why: {text}"
        );
        assert_eq!(
            fingerprint(&victim),
            (0o100600, b"precious".to_vec(), None),
            "{what}: the file outside the restore root is untouched"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_in_a_restore_target_are_replaced_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/x"), b"restored content").unwrap();
    std::fs::write(src.join("f"), b"restored file").unwrap();
    xattr::set(src.join("f"), "user.planted", b"from the point").unwrap();
    std::fs::set_permissions(src.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (outside, victim) = victim(tmp.path());
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let m = snap(&mut repo, &src).await;
    // The target already holds symlinks where the point has a directory and a file, and the
    // marker's name points outside too.
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("f")).unwrap();
    std::os::unix::fs::symlink(
        &victim,
        target.join(site_recovery::repository::restore::INCOMPLETE_MARKER),
    )
    .unwrap();
    restore(&repo, &m.id, &target, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&target), describe(&src));
    assert_eq!(fingerprint(&victim), (0o100600, b"precious".to_vec(), None));
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing was created through the planted directory symlink"
    );
}

/// Fills a file with bytes that do not compress or repeat.
fn noise(path: &Path, len: usize) {
    let mut state = 0x9e3779b97f4a7c15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_never_follows_what_the_workload_swaps_in_while_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::create_dir_all(src.join("e")).unwrap();
    // Read first and long enough that the swap happens while the reader is still on it.
    noise(&src.join("a-big"), 40 << 20);
    std::fs::write(src.join("d/token"), b"the workload's own harmless file").unwrap();
    std::fs::write(src.join("e/fifo-to-be"), b"a regular file at scan time").unwrap();
    let secret = b"service account token of another pod";
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("token"), secret).unwrap();
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();

    let swapped = Arc::new(std::sync::Once::new());
    let progress = {
        let (src, outside, swapped) = (src.clone(), outside.clone(), swapped.clone());
        Arc::new(move |_: Progress| {
            swapped.call_once(|| {
                // A directory becomes a symlink to a directory outside the volume, and a file
                // becomes a FIFO nobody writes to (a read of it would block forever).
                std::fs::rename(src.join("d"), src.join("d.moved")).unwrap();
                std::os::unix::fs::symlink(&outside, src.join("d")).unwrap();
                std::fs::remove_file(src.join("e/fifo-to-be")).unwrap();
                let fifo =
                    std::ffi::CString::new(src.join("e/fifo-to-be").to_str().unwrap().as_bytes())
                        .unwrap();
                assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
            })
        })
    };
    let m = tokio::time::timeout(
        Duration::from_secs(60),
        snapshot(
            &mut repo,
            vec![("data".into(), Source::Tree(src.clone()))],
            &options("w"),
            Some(progress),
        ),
    )
    .await
    .expect("a FIFO swapped in does not hold the capture")
    .unwrap();
    assert!(swapped.is_completed(), "the swap happened during the read");
    assert!(
        !repo.chunks.contains_key(&repo.keys.chunk_id(secret)),
        "the outside file's bytes are not in the repository"
    );
    assert_eq!(m.stats.skipped, 2, "{:?}", m.stats.warnings);
    for name in [
        "data: d/token: changed while being read",
        "data: e/fifo-to-be: changed",
    ] {
        assert!(
            m.stats.warnings.iter().any(|w| w.starts_with(name)),
            "{name}: {:?}",
            m.stats.warnings
        );
    }
    let out = tmp.path().join("out");
    restore(&repo, &m.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert!(!out.join("d/token").exists() && !out.join("e/fifo-to-be").exists());
    assert_eq!(
        std::fs::read(out.join("a-big")).unwrap(),
        std::fs::read(src.join("a-big")).unwrap()
    );

    // At scan time FIFOs, sockets and devices are skipped and counted, never opened.
    std::fs::remove_file(src.join("d")).unwrap();
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        snapshot(
            &mut repo,
            vec![("data".into(), Source::Tree(src.clone()))],
            &options("w"),
            None,
        ),
    )
    .await
    .expect("a FIFO in the tree does not hold the capture")
    .unwrap();
    assert_eq!(again.stats.skipped, 1, "{:?}", again.stats.warnings);
    assert!(
        again.stats.warnings[0].contains("FIFO"),
        "{:?}",
        again.stats.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stored_bytes_are_refused_with_the_object_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    noise(&src.join("f"), 1 << 20);
    let cache_dir = tmp.path().join("cache");
    let mut cache = Repository::init(fs_location(&cache_dir), KEY)
        .await
        .unwrap();
    let m = snapshot(
        &mut cache,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();

    // A pack trailer whose length is past the pack: refused, not an underflow.
    let (pack, _) = cache.list_packs().await.unwrap()[0];
    let pack_path = cache_dir
        .join(layout::pack(&object_store::path::Path::from(""), &hex::encode(pack)).to_string());
    let mut crafted = b"not a pack body".to_vec();
    crafted.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    crafted.extend_from_slice(format::PACK_MAGIC);
    std::fs::write(&pack_path, &crafted).unwrap();
    cache
        .init_replica(fs_location(&tmp.path().join("target")))
        .await
        .unwrap();
    let mut target = Repository::open(fs_location(&tmp.path().join("target")), KEY)
        .await
        .unwrap();
    let err = replicate(&cache, &mut target, std::slice::from_ref(&m.id))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Corrupt { .. })
            && err.to_string().contains(&hex::encode(pack))
            && err.to_string().contains("exceeds the pack"),
        "{err}"
    );

    // Config fields out of bounds are refused before anything divides by them or allocates.
    let config_path = cache_dir.join("config");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    for (size, expected) in [
        (serde_json::json!(0), "blockSize 0"),
        (serde_json::json!(u32::MAX), "blockSize 4294967295"),
    ] {
        let mut c = original.clone();
        c["chunking"]["blockSize"] = size;
        std::fs::write(&config_path, serde_json::to_vec(&c).unwrap()).unwrap();
        let err = Repository::open(fs_location(&cache_dir), KEY)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, RepoError::Foreign { .. }) && err.to_string().contains(expected),
            "{err}"
        );
    }
    // Within bounds but altered: the config is authenticated by the wrapped key.
    let mut c = original.clone();
    c["chunking"]["blockSize"] = serde_json::json!(8192);
    std::fs::write(&config_path, serde_json::to_vec(&c).unwrap()).unwrap();
    let err = Repository::open(fs_location(&cache_dir), KEY)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RepoError::WrongKey { .. }), "{err}");
    std::fs::write(&config_path, serde_json::to_vec(&original).unwrap()).unwrap();

    // A manifest that declares, or expands to, a gigabyte is refused with memory bounded.
    let repo = Repository::open(fs_location(&tmp.path().join("target")), KEY)
        .await
        .unwrap();
    let bomb = {
        use std::io::Write;
        let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap()
    };
    for (declared, expected) in [
        (1u64 << 30, "more than the 134217728 allowed"),
        (1 << 20, "zstd (declared 1048576 bytes)"),
    ] {
        let id = new_point_id(jiff::Timestamp::now());
        let mut plain = declared.to_le_bytes().to_vec();
        plain.extend_from_slice(&bomb);
        let sealed = crypto::seal(&repo.keys.data_key, Kind::Manifest, id.as_bytes(), &plain);
        repo.location
            .put(
                &layout::point(repo.location.prefix(), &id),
                Bytes::from(sealed),
            )
            .await
            .unwrap();
        let err = repo.manifest(&id).await.unwrap_err();
        assert!(
            err.to_string().contains(&id) && err.to_string().contains(expected),
            "{err}"
        );
    }
    assert!(
        peak_rss() < 512 << 20,
        "peak RSS {} MiB: nothing was decompressed without bound",
        peak_rss() >> 20
    );

    // A lock file of 2 GiB is never read: it blocks as an unreadable lock would, by name.
    let lock_path = cache_dir.join("locks/0-huge");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    std::fs::File::create(&lock_path)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut cache = Repository::open(fs_location(&cache_dir), KEY)
        .await
        .unwrap();
    let err = snapshot(
        &mut cache,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RepoError::Locked { .. }) && err.to_string().contains("0-huge"),
        "{err}"
    );
    assert!(peak_rss() < 512 << 20, "the lock was not read");
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lock_could_not_be_refreshed_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
    let store = Arc::new(Faulty::new(local));
    let location = Location::from_store(store.clone(), "", "failing");
    let lock = site_recovery::repository::lock::Lock::acquire_refreshing(
        &location,
        "snapshot",
        false,
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.ensure_held()
        .expect("refreshed while the storage answers");
    // The storage goes away: every write from now on fails.
    store.allowed.store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = lock.ensure_held().unwrap_err();
    assert!(
        matches!(err, RepoError::Locked { .. })
            && err.to_string().contains("could not be refreshed")
            && err.to_string().contains("nothing was committed"),
        "{err}"
    );
}

fn locks(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("locks"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn keep_one() -> PruneOptions {
    PruneOptions {
        keep_within: Duration::ZERO,
        keep_last: 1,
        dry_run: false,
        workload: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_never_leak_and_are_judged_by_the_storage_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"one").unwrap();
    let dir = tmp.path().join("repo");
    Repository::init(fs_location(&dir), KEY).await.unwrap();
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir).unwrap());

    // A prune that runs past its timeout leaves no lock behind.
    let mut slow = Repository::open(
        Location::from_store(
            Arc::new(Faulty {
                slow: Some("data"),
                ..Faulty::new(local.clone())
            }),
            "",
            "slow",
        ),
        KEY,
    )
    .await
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(1), prune(&mut slow, &keep_one())).await;
    assert!(outcome.is_err(), "the prune timed out");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        locks(&dir),
        Vec::<String>::new(),
        "the dropped lock removed itself"
    );

    // A lock dated ten years ahead (by its content and by the storage) blocks nothing, and one
    // whose writer's clock says "now" but that the storage last saw two hours ago is stale.
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 3650);
    let behind = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    for (name, when) in [("1-future", ahead), ("2-skewed", behind)] {
        let path = dir.join("locks").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let refreshed = if name == "1-future" {
            ahead.as_second()
        } else {
            jiff::Timestamp::now().as_second()
        };
        std::fs::write(
            &path,
            serde_json::json!({"kind": "prune", "exclusive": true, "host": "elsewhere", "pid": 1, "refreshed": refreshed})
                .to_string(),
        )
        .unwrap();
        let t = filetime::FileTime::from_unix_time(when.as_second(), 0);
        filetime::set_file_mtime(&path, t).unwrap();
    }
    let mut repo = Repository::open(fs_location(&dir), KEY).await.unwrap();
    for _ in 0..2 {
        snapshot(
            &mut repo,
            vec![("data".into(), Source::Tree(src.clone()))],
            &options("w"),
            None,
        )
        .await
        .expect("neither lock blocks a snapshot");
        std::fs::write(
            src.join("f"),
            b"two, so that the first point's data becomes garbage",
        )
        .unwrap();
    }
    let report = prune(&mut repo, &keep_one()).await.unwrap();
    assert_eq!(report.gc_skipped, None, "{report:?}");
    assert_eq!(report.points_removed.len(), 1);
    assert!(report.packs_removed > 0, "{report:?}");
    assert_eq!(
        locks(&dir),
        Vec::<String>::new(),
        "the exclusive lock removed the stale ones, then itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_more_files_than_a_process_may_open_is_captured_and_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in 0..4 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..400 {
            std::fs::write(src.join(format!("d{d}/f{f}")), format!("file {d}/{f}")).unwrap();
        }
    }
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    // This test has its own process (nextest): 256 descriptors for 1,600 files.
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let m = snap(&mut repo, &src).await;
    let out = tmp.path().join("out");
    restore(&repo, &m.id, &out, &RestoreOptions::default(), None)
        .await
        .expect("no file stays open longer than it is written");
    assert_eq!(describe(&out), describe(&src));
}
