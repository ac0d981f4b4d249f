//! Index compaction on a real filesystem location: the index files of many parts are merged
//! into one, a handle kept open (an agent's) follows the merge by reading the merged file alone
//! and still deduplicates against what it held, a garbage collection after a merge still makes
//! it read everything again, and a load or refresh whose listing raced a merge lists again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use site_recovery::repository::format::Manifest;
use site_recovery::repository::index::SMALL_FILES_AT;
use site_recovery::repository::prune::prune;
use site_recovery::repository::restore::{RestoreOptions, restore};
use site_recovery::repository::snapshot::{Source, snapshot};
use site_recovery::repository::verify::verify;
use site_recovery::repository::{RepoError, Repository};
use site_recovery::storage::Location;

use super::repository::{Faulty, KEY, describe, fs_location, options, random_file};

/// A new repository in a temporary directory, the directory the points' data is written in,
/// and a writer's handle.
struct Setup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    at: PathBuf,
    writer: Repository,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let at = tmp.path().join("repo");
    Repository::init(fs_location(&at), KEY).await.unwrap();
    let writer = Repository::open(fs_location(&at), KEY).await.unwrap();
    Setup {
        tmp,
        src,
        at,
        writer,
    }
}

fn index_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("index")).unwrap().count()
}

/// `n` points of distinct 16 KiB files, each written as its own part would be: one index file
/// each.
async fn write_points(repo: &mut Repository, src: &Path, n: usize, seed: u64) {
    for i in 0..n {
        random_file(&src.join("value"), 16 << 10, seed + i as u64);
        let tree = vec![("data".to_string(), Source::Tree(src.to_path_buf()))];
        snapshot(repo, tree, &options(&format!("w{i}")), None)
            .await
            .unwrap();
    }
}

/// Snapshots `src` through `kept`, which must read the whole index again first (its count of
/// full loads was `loads`) and store the bytes anew (the packs it knew are gone); the
/// repository then verifies. A fresh handle and the point.
async fn stored_anew(
    kept: &mut Repository,
    src: &Path,
    at: &Path,
    workload: &str,
    loads: u64,
) -> (Repository, Manifest) {
    let tree = vec![("data".to_string(), Source::Tree(src.to_path_buf()))];
    let written = snapshot(kept, tree, &options(workload), None)
        .await
        .unwrap();
    assert_eq!(kept.full_index_loads(), loads + 1);
    assert!(
        written.stats.stored_bytes_added >= 16 << 10,
        "{:?}",
        written.stats
    );
    let fresh = Repository::open(fs_location(at), KEY).await.unwrap();
    assert!(verify(&fresh, true).await.unwrap().problems.is_empty());
    (fresh, written)
}

fn chunk_ids(repo: &Repository) -> std::collections::BTreeSet<[u8; 32]> {
    repo.chunks.keys().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_files_of_many_parts_are_merged_and_a_kept_handle_follows_the_merge() {
    let Setup {
        tmp,
        src,
        at,
        mut writer,
    } = setup().await;
    write_points(&mut writer, &src, 4, 100).await;
    // An agent's handle, opened now and kept: it knows the first four files only.
    let mut kept = Repository::open(fs_location(&at), KEY).await.unwrap();
    let loads = kept.full_index_loads();
    write_points(&mut writer, &src, SMALL_FILES_AT, 200).await;
    let n = SMALL_FILES_AT + 4;
    assert_eq!(index_files(&at), n);

    // The operator's handle merges them, once.
    let mut operator = Repository::open(fs_location(&at), KEY).await.unwrap();
    assert!(operator.compaction_due());
    let merged = operator
        .compact_if_due()
        .await
        .unwrap()
        .expect("a full tier of small files is merged");
    assert_eq!(merged.merged, n);
    assert_eq!(merged.packs, n);
    assert_eq!(index_files(&at), 1, "one file replaced {n}");
    assert!(!operator.compaction_due());
    assert!(operator.compact_if_due().await.unwrap().is_none());
    assert_eq!(chunk_ids(&operator), chunk_ids(&writer));

    // One more part by another writer; the kept handle, whose four files are gone, reads the
    // merged file and that part's file, not everything again.
    write_points(&mut writer, &src, 1, 900).await;
    kept.refresh_index().await.unwrap();
    assert_eq!(
        kept.full_index_loads(),
        loads,
        "a merge is followed by reading the new files alone"
    );
    assert_eq!(kept.index_files.len(), 2);
    let fresh = Repository::open(fs_location(&at), KEY).await.unwrap();
    assert_eq!(chunk_ids(&kept), chunk_ids(&fresh));

    // What it writes now deduplicates against a point written after it opened, indexed only
    // in the merged file.
    random_file(&src.join("value"), 16 << 10, 203);
    let tree = || vec![("data".to_string(), Source::Tree(src.clone()))];
    let again = snapshot(&mut kept, tree(), &options("again"), None)
        .await
        .unwrap();
    assert_eq!(again.stats.stored_bytes_added, 0, "{:?}", again.stats);
    assert!(verify(&fresh, true).await.unwrap().problems.is_empty());
    let out = tmp.path().join("out");
    restore(&fresh, &again.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&src));

    // A garbage collection after the merge rewrites the index: the kept handle reads it whole
    // again and stores the bytes anew rather than point at packs that are gone.
    let report = prune(&mut writer, &super::repository::remove_everything())
        .await
        .unwrap();
    assert!(report.packs_removed as usize >= n, "{report:?}");
    stored_anew(&mut kept, &src, &at, "after", loads).await;
}

/// A garbage collection, then enough parts for a merge that takes the collection's own index
/// file in: a handle that knew the files from before the collection finds them gone and named
/// by no merge, reads everything again, and never deduplicates against a deleted pack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_after_a_garbage_collection_does_not_hide_it_from_a_kept_handle() {
    let Setup {
        tmp,
        src,
        at,
        mut writer,
    } = setup().await;
    write_points(&mut writer, &src, 2, 10).await;
    let mut kept = Repository::open(fs_location(&at), KEY).await.unwrap();
    let loads = kept.full_index_loads();
    prune(&mut writer, &super::repository::remove_everything())
        .await
        .unwrap();
    write_points(&mut writer, &src, SMALL_FILES_AT, 100).await;
    let mut operator = Repository::open(fs_location(&at), KEY).await.unwrap();
    let merged = operator.compact_if_due().await.unwrap().unwrap();
    assert_eq!(
        merged.merged,
        SMALL_FILES_AT + 1,
        "the collection's file too"
    );
    // The bytes of a point the collection removed: stored again.
    random_file(&src.join("value"), 16 << 10, 10);
    let (fresh, written) = stored_anew(&mut kept, &src, &at, "again", loads).await;
    let out = tmp.path().join("out");
    restore(&fresh, &written.id, &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_or_refresh_whose_listing_raced_a_merge_lists_again() {
    let Setup {
        tmp: _tmp,
        src,
        at,
        mut writer,
    } = setup().await;
    let local: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&at).unwrap());
    let faulty = Arc::new(Faulty::new(local.clone()));
    write_points(&mut writer, &src, 1, 1).await;
    // A handle through a store whose next index listing will be one taken before the merge.
    let mut racing = Repository::open(Location::from_store(faulty.clone(), "", "racing"), KEY)
        .await
        .unwrap();
    write_points(&mut writer, &src, SMALL_FILES_AT, 10).await;
    let listing = || async {
        local
            .list(Some(&"index".into()))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    *faulty.replay.lock().unwrap() = Some(listing().await);
    let mut operator = Repository::open(fs_location(&at), KEY).await.unwrap();
    let merged = operator.compact_if_due().await.unwrap().unwrap();
    assert_eq!(merged.merged, SMALL_FILES_AT + 1);

    // The refresh finds the files it listed gone and reads the index again whole.
    let loads = racing.full_index_loads();
    racing.refresh_index().await.unwrap();
    assert_eq!(racing.full_index_loads(), loads + 1);
    assert_eq!(chunk_ids(&racing), chunk_ids(&operator));
    assert_eq!(racing.index_files.len(), 1);

    // An open whose listing named the merged file and the files it replaced (taken between
    // the write and the deletions) reads the merged file and needs no second listing.
    write_points(&mut writer, &src, SMALL_FILES_AT, 1000).await;
    let before = listing().await;
    operator.refresh_index().await.unwrap();
    operator.compact_if_due().await.unwrap().unwrap();
    let mut between = listing().await;
    between.extend(before);
    *faulty.replay.lock().unwrap() = Some(between);
    let opened = Repository::open(Location::from_store(faulty.clone(), "", "racing"), KEY)
        .await
        .unwrap();
    assert_eq!(opened.full_index_loads(), 1);
    assert_eq!(chunk_ids(&opened), chunk_ids(&operator));

    // An open whose listing was taken before the merge finds files gone and named by no file it
    // read: it lists again, and finds the merged file.
    write_points(&mut writer, &src, SMALL_FILES_AT, 2000).await;
    *faulty.replay.lock().unwrap() = Some(listing().await);
    operator.refresh_index().await.unwrap();
    operator.compact_if_due().await.unwrap().unwrap();
    let opened = Repository::open(Location::from_store(faulty.clone(), "", "racing"), KEY)
        .await
        .unwrap();
    assert_eq!(
        opened.full_index_loads(),
        2,
        "the stale listing, then a fresh one"
    );
    assert_eq!(chunk_ids(&opened), chunk_ids(&operator));
    assert!(faulty.replay.lock().unwrap().is_none());
}

/// A file to merge that does not authenticate stops the merge with an error naming it, and
/// nothing is deleted: every file is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_index_file_stops_a_merge_before_anything_is_deleted() {
    let Setup {
        tmp: _tmp,
        src,
        at,
        mut writer,
    } = setup().await;
    write_points(&mut writer, &src, SMALL_FILES_AT, 7).await;
    let victim = std::fs::read_dir(at.join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    writer.refresh_index().await.unwrap();
    assert!(writer.compaction_due());
    let err = writer.compact_if_due().await.unwrap_err();
    assert!(
        matches!(&err, RepoError::Corrupt { object, .. } if object.contains(victim.file_name().unwrap().to_str().unwrap())),
        "{err}"
    );
    assert_eq!(index_files(&at), SMALL_FILES_AT);
}
