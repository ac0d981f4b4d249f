//! The repository end to end: round trips of random trees, incremental points, sparse files,
//! replication to a second location, retention, tampering, foreign repositories, and crashes
//! (faults injected in storage, and a real process killed with SIGKILL).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use site_recovery::repository::format::Consistency;
use site_recovery::repository::prune::{PruneOptions, prune};
use site_recovery::repository::replicate::replicate;
use site_recovery::repository::restore::{INCOMPLETE_MARKER, RestoreOptions, restore};
use site_recovery::repository::snapshot::{SnapshotOptions, Source, snapshot};
use site_recovery::repository::verify::verify;
use site_recovery::repository::{RepoError, Repository};
use site_recovery::storage::{Location, LocationSpec};

pub const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";

pub fn fs_location(path: &Path) -> Location {
    Location::open(
        &LocationSpec::Filesystem(path.to_path_buf()),
        &Default::default(),
    )
    .unwrap()
}

pub fn options(workload: &str) -> SnapshotOptions {
    SnapshotOptions {
        workload: workload.into(),
        consistency: Consistency::CrashConsistent,
        source_zone: Some("zone-a".into()),
        use_parent: true,
        part: None,
        parent_hint: None,
    }
}

/// Everything a restore must reproduce, per relative path.
pub fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    for entry in walk(root) {
        let rel = entry
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == INCOMPLETE_MARKER {
            continue;
        }
        let m = std::fs::symlink_metadata(&entry).unwrap();
        let kind = if m.file_type().is_symlink() {
            format!("link->{}", std::fs::read_link(&entry).unwrap().display())
        } else if m.is_dir() {
            "dir".into()
        } else {
            let content = blake3::hash(&std::fs::read(&entry).unwrap())
                .to_hex()
                .to_string();
            let link = if m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                format!(" hardlink-of={first}")
            } else {
                String::new()
            };
            format!("file size={} {content}{link}", m.len())
        };
        let xattrs: Vec<String> = xattr::list(&entry)
            .map(|names| {
                names
                    .map(|n| {
                        format!(
                            "{}={:?}",
                            n.to_string_lossy(),
                            xattr::get(&entry, &n).ok().flatten()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mode = if m.file_type().is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        let mtime = if m.is_dir() {
            0
        } else {
            m.mtime() * 1_000_000_000 + m.mtime_nsec()
        };
        out.insert(
            rel,
            format!("{kind} mode={mode:o} mtime={mtime} xattrs={xattrs:?}"),
        );
    }
    out
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.clone());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Entry {
    File {
        name: String,
        content: Vec<u8>,
        mode: u32,
        mtime: i64,
        xattr: Option<Vec<u8>>,
    },
    Dir {
        name: String,
        children: Vec<Entry>,
    },
    Symlink {
        name: String,
        target: String,
    },
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    let name = "[a-z]{1,6}(\\.[a-z]{1,3})?";
    let content = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..70_000),
        (0usize..200_000).prop_map(|n| vec![0u8; n]),
        (any::<u8>(), 1usize..100_000).prop_map(|(b, n)| vec![b; n]),
    ];
    let file = (
        name,
        content,
        prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4711)],
        0i64..2_000_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(|(name, content, mode, mtime, xattr)| Entry::File {
            name,
            content,
            mode,
            mtime,
            xattr,
        });
    let link = (name, "[a-z/.]{1,20}").prop_map(|(name, target)| Entry::Symlink { name, target });
    let leaf = prop_oneof![4 => file, 1 => link];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        ("[a-z]{1,6}", proptest::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Entry::Dir { name, children })
    })
}

fn materialize(dir: &Path, entries: &[Entry]) {
    let mut used = std::collections::HashSet::new();
    for e in entries {
        let name = match e {
            Entry::File { name, .. } | Entry::Dir { name, .. } | Entry::Symlink { name, .. } => {
                name
            }
        };
        if !used.insert(name.clone()) {
            continue;
        }
        let path = dir.join(name);
        match e {
            Entry::File {
                content,
                mode,
                mtime,
                xattr,
                ..
            } => {
                std::fs::write(&path, content).unwrap();
                if let Some(v) = xattr {
                    let _ = xattr::set(&path, "user.site-recovery-test", v);
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
                let t = filetime::FileTime::from_unix_time(*mtime, 123_000);
                filetime::set_file_times(&path, t, t).unwrap();
            }
            Entry::Dir { children, .. } => {
                std::fs::create_dir(&path).unwrap();
                materialize(&path, children);
            }
            Entry::Symlink { target, .. } => std::os::unix::fs::symlink(target, &path).unwrap(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, .. ProptestConfig::default() })]
    #[test]
    fn random_trees_round_trip(entries in proptest::collection::vec(entry_strategy(), 1..10)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            std::fs::create_dir(&src).unwrap();
            materialize(&src, &entries);
            // A hard link pair, when there is a file to link.
            if let Some(first) = walk(&src).into_iter().find(|p| std::fs::symlink_metadata(p).unwrap().is_file()) {
                std::fs::hard_link(&first, src.join("hardlink")).unwrap();
            }
            let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY).await.unwrap();
            let m = snapshot(&mut repo, vec![("data".into(), Source::Tree(src.clone()))], &options("w"), None).await.unwrap();
            let out = tmp.path().join("out");
            let stats = restore(&repo, &m.id, &out, &RestoreOptions::default(), None).await.unwrap();
            // setuid and setgid bits are never restored on files (see the README).
            let expected: BTreeMap<String, String> = describe(&src)
                .into_iter()
                .map(|(k, v)| (k, v.replace(" mode=4711 ", " mode=711 ")))
                .collect();
            let setuid = expected.len() != describe(&src).len() || describe(&src).values().any(|v| v.contains(" mode=4711 "));
            assert_eq!(describe(&out), expected);
            assert_eq!(stats.setid_cleared > 0, setuid);
            assert!(!out.join(INCOMPLETE_MARKER).exists());
            let report = verify(&repo, true).await.unwrap();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        });
    }
}

pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_points_each_restore_their_own_content() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("logs")).unwrap();
    random_file(&src.join("db.img"), 12 << 20, 1);
    for i in 0..20 {
        random_file(
            &src.join(format!("logs/{i}.log")),
            50_000 + i * 1000,
            100 + i as u64,
        );
    }
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let first = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("db"),
        None,
    )
    .await
    .unwrap();
    let before = describe(&src);

    // Scattered 4 KiB writes in place into the image, one log appended, one removed, one new.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("db.img"))
            .unwrap();
        for i in 0..10u64 {
            f.write_all_at(&[0xAB; 4096], i * 1_200_000 / 4096 * 4096)
                .unwrap();
        }
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("logs/3.log"))
        .unwrap();
    std::fs::write(src.join("logs/3.log"), b"rewritten").unwrap();
    std::fs::remove_file(src.join("logs/4.log")).unwrap();
    random_file(&src.join("logs/new.log"), 30_000, 999);
    let second = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("db"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    // Only the changed files were read; ten 4 KiB writes cost at most ten 16 KiB blocks.
    assert!(
        second.stats.bytes_read < (12 << 20) + 100_000,
        "{:?}",
        second.stats
    );
    assert!(
        second.stats.stored_bytes_added < 10 * 16_500 + 200_000,
        "{:?}",
        second.stats
    );

    for (point, expected) in [(&first.id, before), (&second.id, describe(&src))] {
        let out = tmp.path().join(format!("out-{point}"));
        restore(&repo, point, &out, &RestoreOptions::default(), None)
            .await
            .unwrap();
        assert_eq!(describe(&out), expected, "point {point}");
    }
}

/// Pages of `path` in the page cache (`mincore` of a mapping of it).
fn resident_pages(path: &Path) -> usize {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let page = 4096;
    let mut vec = vec![0u8; len.div_ceil(page)];
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
        libc::munmap(map, len);
    }
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// Whether files in `dir` can be opened for direct I/O (tmpfs on older kernels cannot).
fn takes_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A restore of many packs: the writers each take a stretch of them and help each other at
/// the end; every byte lands in its file, whichever writer fetched its pack. A durable restore
/// writes large files past the page cache (it leaves next to nothing of them cached), their
/// last partial block included, and small files through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_many_packs_puts_every_byte_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..5 {
        random_file(
            &src.join(format!("big-{i}.img")),
            (9 << 20) + i as usize * 4099,
            10 + i,
        );
    }
    for i in 0..300 {
        random_file(&src.join(format!("small/{i}")), 1 + i * 97, 1000 + i as u64);
    }
    let repo = {
        let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
            .await
            .unwrap();
        snapshot(
            &mut repo,
            vec![("data".into(), Source::Tree(src.clone()))],
            &options("many"),
            None,
        )
        .await
        .unwrap();
        repo
    };
    let point = repo.point_ids().await.unwrap().pop().unwrap();
    let out = tmp.path().join("out");
    let durable = RestoreOptions {
        sync: true,
        ..Default::default()
    };
    let stats = restore(&repo, &point, &out, &durable, None).await.unwrap();
    assert!(stats.packs_read >= 5, "{stats:?}");
    assert_eq!(stats.files, 305, "{stats:?}");
    if takes_direct_io(tmp.path()) {
        for i in 0..5 {
            let cached = resident_pages(&out.join(format!("big-{i}.img")));
            assert!(
                cached <= 2,
                "big-{i}.img: {cached} pages left in the page cache"
            );
        }
    }
    assert_eq!(describe(&out), describe(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_files_and_raw_images_stay_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let sparse = src.join("sparse.img");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"needle", 40 << 20).unwrap();
    drop(f);
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let m = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();
    assert!(
        m.stats.stored_bytes_added < 100_000,
        "holes are not stored: {:?}",
        m.stats
    );
    let out = tmp.path().join("out");
    restore(&repo, &m.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    let restored = std::fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(restored.len(), 64 << 20);
    assert!(
        restored.blocks() * 512 < 1 << 20,
        "restored file allocates {} bytes",
        restored.blocks() * 512
    );
    assert_eq!(describe(&src), describe(&out));

    // The same file as a raw image restores to a file, via a .partial name renamed at the end.
    let raw = snapshot(
        &mut repo,
        vec![("disk".into(), Source::Raw(sparse.clone()))],
        &options("vm"),
        None,
    )
    .await
    .unwrap();
    let image = tmp.path().join("image");
    restore(&repo, &raw.id, &image, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&sparse).unwrap()
    );
    assert!(!tmp.path().join("image.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_point_restores_from_the_target_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("a"), 3 << 20, 7);
    random_file(&src.join("b"), 100_000, 8);
    let mut cache = Repository::init(fs_location(&tmp.path().join("cache")), KEY)
        .await
        .unwrap();
    let p1 = snapshot(
        &mut cache,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();
    random_file(&src.join("c"), 200_000, 9);
    let p2 = snapshot(
        &mut cache,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();

    let target_loc = fs_location(&tmp.path().join("target"));
    cache.init_replica(target_loc.clone()).await.unwrap();
    let mut target = Repository::open(target_loc.clone(), KEY).await.unwrap();
    let s1 = replicate(&cache, &mut target, std::slice::from_ref(&p1.id))
        .await
        .unwrap();
    let s2 = replicate(&cache, &mut target, &[p1.id.clone(), p2.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        (s1.points_copied, s2.points_copied, s2.points_present),
        (1, 1, 1)
    );
    assert!(
        s2.bytes_copied < s1.bytes_copied,
        "the second point moves only its delta: {s1:?} then {s2:?}"
    );
    let again = replicate(&cache, &mut target, std::slice::from_ref(&p2.id))
        .await
        .unwrap();
    assert_eq!(
        (again.points_copied, again.bytes_copied),
        (0, 0),
        "replication is idempotent"
    );

    // The source zone is gone: only the target location remains.
    std::fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let target = Repository::open(fs_location(&tmp.path().join("target")), KEY)
        .await
        .unwrap();
    assert_eq!(
        target.point_ids().await.unwrap(),
        vec![p1.id.clone(), p2.id.clone()]
    );
    let out = tmp.path().join("out");
    restore(
        &target,
        &p2.id,
        &out,
        &RestoreOptions {
            sync: true,
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(describe(&out), describe(&src));
    assert!(verify(&target, true).await.unwrap().problems.is_empty());
    // A different repository at the destination is refused.
    let other = Repository::init(fs_location(&tmp.path().join("other")), KEY)
        .await
        .unwrap();
    let err = other.init_replica(target_loc).await.unwrap_err();
    assert!(matches!(err, RepoError::Foreign { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_app_consistent_point_and_frees_unused_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, consistency) in [
        Consistency::AppConsistent,
        Consistency::CrashConsistent,
        Consistency::CrashConsistent,
    ]
    .into_iter()
    .enumerate()
    {
        random_file(&src.join("data"), 2 << 20, 50 + i as u64);
        let opts = SnapshotOptions {
            consistency,
            ..options("w")
        };
        ids.push(
            snapshot(
                &mut repo,
                vec![("data".into(), Source::Tree(src.clone()))],
                &opts,
                None,
            )
            .await
            .unwrap()
            .id,
        );
    }
    let packs_before = repo.list_packs().await.unwrap().len();
    let report = prune(
        &mut repo,
        &PruneOptions {
            keep_within: std::time::Duration::ZERO,
            keep_last: 1,
            dry_run: false,
            workload: None,
        },
    )
    .await
    .unwrap();
    // The middle point goes; the newest stays (keep_last) and so does the only app-consistent one.
    assert_eq!(report.points_removed, vec![ids[1].clone()]);
    assert!(
        report.packs_removed >= 1 && repo.list_packs().await.unwrap().len() < packs_before,
        "{report:?}"
    );
    assert!(verify(&repo, true).await.unwrap().problems.is_empty());
    for id in [&ids[0], &ids[2]] {
        restore(
            &repo,
            id,
            &tmp.path().join(format!("out-{id}")),
            &RestoreOptions::default(),
            None,
        )
        .await
        .unwrap();
    }
    // Garbage collection waits while a snapshot holds its lock.
    let held = site_recovery::repository::lock::Lock::acquire(&repo.location, "snapshot", false)
        .await
        .unwrap();
    let report = prune(&mut repo, &remove_everything()).await.unwrap();
    assert!(
        report
            .gc_skipped
            .as_deref()
            .is_some_and(|r| r.contains("snapshot")),
        "{report:?}"
    );
    held.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_names_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("a"), 500_000, 3);
    let repo_dir = tmp.path().join("repo");
    let mut repo = Repository::init(fs_location(&repo_dir), KEY).await.unwrap();
    let m = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();
    let find = |kind: &str| {
        walk(&repo_dir.join(kind))
            .into_iter()
            .find(|p| p.is_file())
            .unwrap()
    };
    let flip = |path: &Path, at: usize| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    };

    // A flipped byte inside a chunk of a pack.
    let pack = find("data");
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    flip(&pack, 100);
    let report = verify(&repo, true).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&pack_name) && p.contains("authentication failed")),
        "{:?}",
        report.problems
    );
    let err = restore(
        &repo,
        &m.id,
        &tmp.path().join("out"),
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&pack_name), "{err}");
    assert!(
        tmp.path().join("out").join(INCOMPLETE_MARKER).exists(),
        "a failed restore stays marked incomplete"
    );
    flip(&pack, 100);

    // A flipped byte in an index file: opening the repository names it.
    let index = find("index");
    flip(&index, 40);
    let err = Repository::open(fs_location(&repo_dir), KEY)
        .await
        .err()
        .expect("a corrupt index is refused");
    assert!(
        err.to_string()
            .contains(index.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    flip(&index, 40);

    // A flipped byte in a manifest.
    let point = find("points");
    flip(&point, 30);
    let err = repo.manifest(&m.id).await.unwrap_err();
    assert!(
        err.to_string().contains(&m.id) && err.to_string().contains("authentication failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_newer_and_locked_repositories_are_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("loc");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("config"),
        br#"{"version":2,"id":"abc","chunker_polynomial":"3DA3358B4DC173"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("data/keep-me"), b"someone's data").unwrap();
    let before = describe(&dir);
    let err = Repository::open(fs_location(&dir), KEY)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, RepoError::Foreign { .. }) && err.to_string().contains("config.format"),
        "{err}"
    );
    let err = Repository::init(fs_location(&dir), KEY)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("foreign"), "{err}");
    assert_eq!(
        describe(&dir),
        before,
        "nothing was written to a foreign location"
    );
    let newer = tmp.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(
        newer.join("config"),
        br#"{"format":"site-recovery/repository","version":9}"#,
    )
    .unwrap();
    let err = Repository::open(fs_location(&newer), KEY)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, RepoError::UnsupportedVersion { found: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade site-recovery"), "{err}");

    let ours = tmp.path().join("ours");
    Repository::init(fs_location(&ours), KEY).await.unwrap();
    let err = Repository::open(
        fs_location(&ours),
        b"another-key-that-is-long-enough-000000",
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, RepoError::WrongKey { .. }), "{err}");
    let err = Repository::open(fs_location(&tmp.path().join("empty")), KEY)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RepoError::NotARepository { .. }), "{err}");
    let err = Repository::init(fs_location(&tmp.path().join("short")), b"short")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
}

/// An object store that fails every write after `allowed` of them, writing a torn (truncated)
/// object for the first failing one, as an upload cut off mid-way might leave; lists below
/// `slow` take 5 s (a storage that answers late).
#[derive(Debug)]
pub struct Faulty {
    pub inner: Arc<dyn object_store::ObjectStore>,
    pub allowed: AtomicUsize,
    pub slow: Option<&'static str>,
    /// A listing returned once instead of the store's, for the first list below `index/`: what a
    /// list that raced another writer saw.
    pub replay: std::sync::Mutex<Option<Vec<object_store::ObjectMeta>>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn object_store::ObjectStore>) -> Self {
        Self {
            inner,
            allowed: AtomicUsize::new(usize::MAX),
            slow: None,
            replay: Default::default(),
        }
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            let bytes: bytes::Bytes = payload.into();
            if location.as_ref().contains("data/") {
                let torn = bytes.slice(..bytes.len() / 2);
                let _ = self
                    .inner
                    .put_opts(location, torn.into(), Default::default())
                    .await;
            }
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected fault: connection reset".into(),
            });
        }
        self.allowed.fetch_sub(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        if prefix.is_some_and(|p| p.as_ref().ends_with("index"))
            && let Some(listed) = self.replay.lock().unwrap().take()
        {
            return futures::stream::iter(listed.into_iter().map(Ok)).boxed();
        }
        let slow = self
            .slow
            .is_some_and(|s| prefix.is_some_and(|p| p.as_ref().starts_with(s)));
        let inner = self.inner.list(prefix);
        futures::stream::once(async move {
            if slow {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            inner
        })
        .flatten()
        .boxed()
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_at_every_write_leave_a_valid_repository_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..4 {
        random_file(&src.join(format!("f{i}")), 9 << 20, 20 + i);
    }
    let repo_dir = tmp.path().join("repo");
    let base = fs_location(&repo_dir);
    Repository::init(base.clone(), KEY).await.unwrap();
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&repo_dir).unwrap());
    let mut reference = Repository::init(fs_location(&tmp.path().join("reference")), KEY)
        .await
        .unwrap();
    let full = snapshot(
        &mut reference,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("w"),
        None,
    )
    .await
    .unwrap();
    // Fail after 0, 1, 2, ... successful writes (lock, packs, index, manifest), each time
    // checking that the repository is valid and holds no partial point.
    let mut allowed = 0;
    loop {
        let faulty = Arc::new(Faulty {
            allowed: AtomicUsize::new(allowed),
            ..Faulty::new(local.clone())
        });
        let loc = Location::from_store(faulty, "", "faulty");
        let mut repo = Repository::open(loc, KEY).await.unwrap();
        let result = snapshot(
            &mut repo,
            vec![("data".into(), Source::Tree(src.clone()))],
            &options("w"),
            None,
        )
        .await;
        let healthy = Repository::open(base.clone(), KEY).await.unwrap();
        let report = verify(&healthy, true).await.unwrap();
        let torn_only = report.problems.iter().all(|p| {
            p.contains("content does not match its name") || p.contains("no pack trailer")
        });
        assert!(torn_only, "after {allowed} writes: {:?}", report.problems);
        if result.is_ok() {
            break;
        }
        assert!(
            healthy.point_ids().await.unwrap().is_empty(),
            "no point exists before its manifest"
        );
        allowed += 1;
        assert!(allowed < 200, "the snapshot never completed");
    }
    assert!(allowed > 3, "faults were injected at several steps");
    let mut repo = Repository::open(base.clone(), KEY).await.unwrap();
    let ids = repo.point_ids().await.unwrap();
    assert_eq!(ids.len(), 1);
    let out = tmp.path().join("out");
    restore(&repo, &ids[0], &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&src));
    // Runs interrupted before the last one uploaded packs that the final run reused.
    let total: u64 = repo
        .list_packs()
        .await
        .unwrap()
        .iter()
        .map(|(_, s)| s)
        .sum();
    assert!(
        total < full.stats.stored_bytes_added * 2,
        "uploads were reused, not repeated: {total} vs {}",
        full.stats.stored_bytes_added
    );
    // A later prune never deletes what it cannot read: the torn leftovers are reported and kept
    // (a read that failed for a moment looks the same), and the point is untouched.
    let torn: Vec<String> = verify(&repo, true).await.unwrap().problems;
    let report = prune(
        &mut repo,
        &PruneOptions {
            keep_within: std::time::Duration::from_secs(3600),
            keep_last: 1,
            dry_run: false,
            workload: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.packs_removed, 0, "{report:?}");
    assert_eq!(
        report.packs_unreadable.is_empty(),
        torn.is_empty(),
        "{report:?} {torn:?}"
    );
    assert_eq!(verify(&repo, true).await.unwrap().problems, torn);
    restore(
        &repo,
        &ids[0],
        &tmp.path().join("again"),
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cli_mid_snapshot_loses_nothing_and_the_next_run_reuses_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..6 {
        random_file(&src.join(format!("f{i}")), 12 << 20, 40 + i);
    }
    let key = tmp.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    let repo_dir = tmp.path().join("repo");
    let bin = env!("CARGO_BIN_EXE_site-recovery");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args([
                "repo",
                "--location",
                repo_dir.to_str().unwrap(),
                "--key-file",
                key.to_str().unwrap(),
                "--json",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    let mut child = std::process::Command::new(bin)
        .args([
            "repo",
            "--location",
            repo_dir.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "snapshot",
            "--source",
            src.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Complete packs carry their 64-hex-digit id as name (uploads in progress do not).
    let packs = || -> Vec<u64> {
        walk(&repo_dir.join("data"))
            .into_iter()
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.len() == 64 && n.to_string_lossy().chars().all(|c| c.is_ascii_hexdigit())
                })
            })
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect()
    };
    // Kill -9 once some packs are durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while packs().len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let at_kill = packs();
    let durable: u64 = at_kill.iter().sum();
    assert!(
        !status.success() && at_kill.len() >= 4,
        "killed mid-way with {} packs",
        at_kill.len()
    );

    let verify_out = run(&["verify", "--read-data"]);
    assert!(
        verify_out.status.success(),
        "{}",
        String::from_utf8_lossy(&verify_out.stdout)
    );
    let points: serde_json::Value = serde_json::from_slice(&run(&["points"]).stdout).unwrap();
    assert_eq!(
        points.as_array().unwrap().len(),
        0,
        "the killed snapshot left no point"
    );
    let again = run(&["snapshot", "--source", src.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let added = stats["stats"]["storedBytesAdded"].as_u64().unwrap();
    let total = 6 * (12u64 << 20);
    assert!(
        added <= total + (1 << 20) - durable,
        "the rerun reused the {durable} bytes of packs uploaded before the kill: added {added} of {total}"
    );
    let out = tmp.path().join("out");
    let restored = run(&["restore", "--target", out.to_str().unwrap()]);
    assert!(restored.status.success());
    assert_eq!(describe(&out), describe(&src));
}

/// Retention that keeps no point.
pub fn remove_everything() -> PruneOptions {
    PruneOptions {
        keep_within: std::time::Duration::ZERO,
        keep_last: 0,
        dry_run: false,
        workload: None,
    }
}

/// An agent keeps its cache repository open from part to part and reads only the index files
/// written since: what another writer stored is reused, and after a prune removed packs (and
/// rewrote the index) the kept handle reads the index again instead of pointing at them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_handle_sees_other_writers_and_never_reuses_a_pruned_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("data"), 2 << 20, 7);
    let at = tmp.path().join("repo");
    Repository::init(fs_location(&at), KEY).await.unwrap();
    let mut kept = Repository::open(fs_location(&at), KEY).await.unwrap();
    let mut other = Repository::open(fs_location(&at), KEY).await.unwrap();
    let tree = || vec![("data".to_string(), Source::Tree(src.clone()))];
    let a = snapshot(&mut other, tree(), &options("a"), None)
        .await
        .unwrap();
    assert!(a.stats.stored_bytes_added >= 2 << 20, "{:?}", a.stats);
    // The same bytes through the kept handle: found in the other writer's index, not stored.
    let b = snapshot(&mut kept, tree(), &options("b"), None)
        .await
        .unwrap();
    assert!(
        b.stats.stored_bytes_added < 64 << 10,
        "the kept handle stored {} bytes the other writer had stored",
        b.stats.stored_bytes_added
    );
    // Every point goes, and with them every pack.
    let report = prune(&mut other, &remove_everything()).await.unwrap();
    assert!(report.packs_removed >= 1, "{report:?}");
    // The kept handle stores the bytes again rather than point at removed packs.
    let c = snapshot(&mut kept, tree(), &options("c"), None)
        .await
        .unwrap();
    assert!(c.stats.stored_bytes_added >= 2 << 20, "{:?}", c.stats);
    assert!(verify(&kept, true).await.unwrap().problems.is_empty());
    let out = tmp.path().join("out");
    restore(&kept, &c.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&src));
}
