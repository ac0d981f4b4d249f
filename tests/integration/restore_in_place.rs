//! Restoring into a directory that holds an older copy of the volume (a failback into retained
//! claims): the result is exactly the point, only the extents that differ are written, what the
//! point does not hold is removed, and nothing already there is followed or written through.

use std::os::unix::fs::MetadataExt;

use site_recovery::repository::Repository;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::repository::snapshot::{Source, snapshot};

use crate::failover::noise;
use crate::repository::{KEY, describe, fs_location, options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_restore_writes_only_what_differs_and_leaves_exactly_the_point() {
    const SIZE: usize = 32 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("wal")).unwrap();
    std::fs::write(src.join("table.db"), noise(1, SIZE)).unwrap();
    std::fs::write(src.join("wal/log"), b"entry 1\n").unwrap();
    std::fs::write(src.join("gone-later"), b"only in the old copy").unwrap();
    let mut repo = Repository::init(fs_location(&tmp.path().join("repo")), KEY)
        .await
        .unwrap();
    let old = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("apps/db"),
        None,
    )
    .await
    .unwrap();
    // The retained claim: the old point restored, as the original zone kept it.
    let claim = tmp.path().join("claim");
    restore(&repo, &old.id, &claim, &RestoreOptions::default(), None)
        .await
        .unwrap();

    // The copy ran on and changed: 4 KiB in the middle of the table, the log grew, a file went,
    // a file became a directory, a new file came.
    let mut table = noise(1, SIZE);
    table[SIZE / 2..SIZE / 2 + 4096].copy_from_slice(&[7u8; 4096]);
    std::fs::write(src.join("table.db"), &table).unwrap();
    std::fs::write(src.join("wal/log"), b"entry 1\nentry 2\n").unwrap();
    std::fs::remove_file(src.join("gone-later")).unwrap();
    std::fs::create_dir(src.join("was-a-file")).unwrap();
    std::fs::write(src.join("was-a-file/inside"), b"x").unwrap();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    let new = snapshot(
        &mut repo,
        vec![("data".into(), Source::Tree(src.clone()))],
        &options("apps/db"),
        None,
    )
    .await
    .unwrap();

    // Things in the claim the point knows nothing of, some of them traps: a file where the
    // point has a directory, a symlink out of the claim where the point has a file, and a
    // file hard-linked to one outside the claim.
    std::fs::write(claim.join("was-a-file"), b"a file, not a dir").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, b"must stay").unwrap();
    std::fs::remove_file(claim.join("new.txt")).ok();
    std::os::unix::fs::symlink(&outside, claim.join("new.txt")).unwrap();
    std::fs::remove_file(claim.join("wal/log")).unwrap();
    std::fs::hard_link(&outside, claim.join("wal/log")).unwrap();
    std::fs::create_dir_all(claim.join("stale/deep")).unwrap();
    std::fs::write(claim.join("stale/deep/file"), b"stale").unwrap();

    let stats = restore(
        &repo,
        &new.id,
        &claim,
        &RestoreOptions {
            in_place: true,
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        describe(&claim),
        describe(&src),
        "the claim holds exactly the point"
    );
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"must stay",
        "nothing outside is written"
    );
    assert_eq!(
        std::fs::metadata(&outside).unwrap().nlink(),
        1,
        "the hard link was replaced"
    );
    println!(
        "in place: {} bytes of the point, {} written, {} stale entries removed",
        stats.bytes, stats.bytes_written, stats.removed
    );
    assert!(stats.removed >= 4, "{stats:?}");
    assert!(
        stats.bytes_written < (SIZE / 8) as u64,
        "only the changed extents are written: {} of {}",
        stats.bytes_written,
        stats.bytes
    );
    // A full restore writes everything, for comparison.
    let full = restore(
        &repo,
        &new.id,
        &tmp.path().join("full"),
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(full.bytes_written, full.bytes);
    // Once more in place: nothing differs, nothing is written.
    let again = restore(
        &repo,
        &new.id,
        &claim,
        &RestoreOptions {
            in_place: true,
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!((again.bytes_written, again.removed), (0, 0));
    assert_eq!(describe(&claim), describe(&src));
}
