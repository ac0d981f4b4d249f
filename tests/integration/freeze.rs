//! Freezing real filesystems: ext4 images on loop devices, mounted here, frozen and thawed by
//! `agent::freeze`. Needs root and loop devices; says why and passes vacuously where a machine
//! lacks them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use site_recovery::agent::freeze::{freeze, thaw_leftovers};

/// An ext4 image on a loop device, mounted; unmounted and detached on drop.
struct LoopFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl LoopFs {
    fn new() -> Option<LoopFs> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        let made = ok(Command::new("truncate").args(["-s", "32M"]).arg(&image))
            && ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            && ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount));
        if !made {
            eprintln!(
                "skipped: this machine cannot loop-mount an ext4 image (root and loop devices are needed)"
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
