//! The [`PointStore`] of one vault over its two repositories, and the per-vault cache of them
//! in the `Context`. A repository is opened once (config read, key unwrapped) and kept; its chunk
//! index is reloaded only by the operations that copy or collect chunks. A storage error drops
//! the open repository, so the next operation opens it again.

use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Mutex, MutexGuard};

use super::summaries::{PresentIds, Summaries};
use super::{Finished, Origin, PointStore, Pruned, Retention, StoreError, TargetPoints};
use crate::api::workload::PointRef;
use crate::metrics::LocationLabels;
use crate::repository::prune::{
    PointFacts, PruneOptions, PruneReport, forget_workload, prune_known,
};

/// How often retention also deletes the packs no point references any more (a full read of
/// the location's index and points): not after every point of every workload.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
use crate::repository::replicate::replicate;
use crate::repository::{RepoError, Repository};
use crate::vault_access::VaultAccess;

/// One location's repository, opened on first use.
struct Slot {
    name: &'static str,
    repo: Mutex<Option<Repository>>,
    /// A reader of the repository `repo` last opened (no index): listing and reading points
    /// need no wait for a job holding `repo`.
    reader: std::sync::Mutex<Option<Repository>>,
    points: Summaries,
    /// Which points are here, for copies into this location.
    present: PresentIds,
    /// Which workload the parts of each point in flight here are of (see
    /// [`Repository::discard_stale_parts_with`]).
    part_owners: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// When retention last collected garbage here.
    collected: std::sync::Mutex<Option<std::time::Instant>>,
    /// No merge of index files is tried here before this (one failed).
    compact_after: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Slot {
    /// `e` as this location's error.
    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        if self.name == "cache" {
            StoreError::Cache(e.to_string())
        } else {
            StoreError::Target(e.to_string())
        }
    }

    fn new(name: &'static str) -> Self {
        Self {
            name,
            repo: Mutex::new(None),
            reader: std::sync::Mutex::new(None),
            points: Summaries::default(),
            present: PresentIds::default(),
            part_owners: Default::default(),
            collected: std::sync::Mutex::new(None),
            compact_after: std::sync::Mutex::new(None),
        }
    }

    fn part_owners(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.part_owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a reader of `repo`, just opened.
    fn opened(&self, repo: &Repository) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(repo.reader());
    }

    fn kept_reader(&self) -> Option<Repository> {
        self.reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Repository::reader)
    }

    /// Whether a handle is open now: one held by another task (a job using it) is.
    fn is_open(&self) -> bool {
        self.repo.try_lock().map_or(true, |g| g.is_some())
    }

    /// Whether garbage is due again in this location (and, if so, it counts as collected now).
    fn collect_due(&self) -> bool {
        let mut last = self.collected.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= COLLECT_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Retention of `workload`'s points in `repo`, from the summaries this slot keeps.
    async fn prune(
        &self,
        repo: &mut Repository,
        options: &PruneOptions,
    ) -> Result<PruneReport, RepoError> {
        let known = self.points.list(repo).await?;
        let facts: Vec<PointFacts> = known
            .iter()
            .map(|s| PointFacts {
                id: &s.id,
                workload: &s.workload,
                time: &s.time,
                consistency: s.consistency,
            })
            .collect();
        let report = prune_known(repo, options, &facts, || self.collect_due()).await?;
        self.deleted(&report.points_removed);
        Ok(report)
    }

    /// Points this process deleted here.
    fn deleted(&self, ids: &[String]) {
        self.points.removed(ids);
        self.present.removed(ids);
    }
}

/// A vault's cache and target repositories.
pub struct RepoStore {
    access: VaultAccess,
    cache: Slot,
    target: Slot,
    opens: Family<LocationLabels, Counter>,
    /// Both repositories were ensured once (created or checked to be ours and opened).
    ensured: std::sync::atomic::AtomicBool,
}

type Guard<'a> = MutexGuard<'a, Option<Repository>>;

/// After a merge of index files failed, the next is tried this much later, not at every point.
const COMPACT_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// Merges a location's index files when enough have gathered (agents add one per part, the
/// copy one per point): every refresh lists them all. A failure is only logged (a garbage
/// collection's lock, quietly); the next try is [`COMPACT_RETRY`] later.
async fn compact(repo: &mut Repository, slot: &Slot) {
    let now = std::time::Instant::now();
    let waiting = slot
        .compact_after
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|t| now < t);
    if waiting {
        return;
    }
    match repo.compact_if_due().await {
        Ok(Some(c)) => tracing::info!(
            location = slot.name,
            merged = c.merged,
            packs = c.packs,
            into = %c.into,
            "merged index files"
        ),
        Ok(None) => {}
        Err(e) => {
            if matches!(e, RepoError::Locked { .. }) {
                tracing::debug!(location = slot.name, error = %e, "index files not merged yet");
            } else {
                tracing::warn!(location = slot.name, error = %e, "could not merge index files");
            }
            *slot.compact_after.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(now + COMPACT_RETRY);
        }
    }
}

impl RepoStore {
    pub fn new(access: VaultAccess, opens: Family<LocationLabels, Counter>) -> Self {
        Self {
            access,
            cache: Slot::new("cache"),
            target: Slot::new("target"),
            opens,
            ensured: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn counted(&self, slot: &Slot) {
        self.opens
            .get_or_create(&LocationLabels {
                location: slot.name.into(),
            })
            .inc();
    }

    /// The cache, opened (`create`: created when absent) if it is not yet.
    async fn cache(&self, create: bool) -> Result<Guard<'_>, RepoError> {
        let mut guard = self.cache.repo.lock().await;
        if guard.is_none() {
            self.counted(&self.cache);
            let repo = if create {
                self.access.open_cache().await?
            } else {
                Repository::open(self.access.cache.clone(), &self.access.key).await?
            };
            self.cache.opened(&repo);
            *guard = Some(repo);
        }
        Ok(guard)
    }

    /// The target, opened if it is not yet: initialised as the replica of `cache` when given,
    /// opened as it is otherwise.
    async fn target(&self, cache: Option<&Repository>) -> Result<Guard<'_>, RepoError> {
        let mut guard = self.target.repo.lock().await;
        if guard.is_none() {
            self.counted(&self.target);
            let repo = match cache {
                Some(cache) => self.access.open_target(cache).await?,
                None => Repository::open(self.access.target.clone(), &self.access.key).await?,
            };
            self.target.opened(&repo);
            *guard = Some(repo);
        }
        Ok(guard)
    }

    /// Copies `workload`'s points the target lacks; bytes copied. The cache's index is
    /// read again first (agents wrote packs since it was read), unless `assembled`, the point
    /// just assembled, finds every chunk in it already: a read of the index lists every index
    /// file of the location, as many as parts were ever written there and not compacted.
    async fn copy_missing(
        &self,
        cache: &mut Repository,
        workload: &str,
        assembled: Option<&crate::repository::format::Manifest>,
    ) -> Result<u64, StoreError> {
        let known = assembled.is_some_and(|m| m.chunks().all(|c| cache.chunks.contains_key(c)));
        if !known {
            cache.refresh_index().await.map_err(cache_error)?;
            compact(cache, &self.cache).await;
        }
        let mine = self
            .cache
            .points
            .of_workload_recent(cache, workload)
            .await
            .map_err(cache_error)?;
        let mut target = self.target(Some(cache)).await.map_err(target_error)?;
        let result = async {
            let Some(target) = target.as_mut() else {
                return Ok(0);
            };
            let ids = mine.into_iter().map(|s| s.id).collect();
            let missing = self.target.present.missing(target, ids).await?;
            let copied = replicate(cache, target, &missing).await?.bytes_copied;
            self.target.present.added(missing);
            compact(target, &self.target).await;
            Ok(copied)
        }
        .await;
        drop_on_error(&mut target, result).map_err(target_error)
    }

    async fn finish(
        &self,
        point: &str,
        parts: &[String],
        origin: Option<&Origin>,
    ) -> Result<Finished, StoreError> {
        let mut cache = self.cache(false).await.map_err(cache_error)?;
        let Some(repo) = cache.as_mut() else {
            return Err(StoreError::Cache("not open".into()));
        };
        let manifest = match repo.assemble(point, parts, origin).await {
            Ok(m) => {
                self.cache.points.added(&m);
                m
            }
            Err(e) => {
                *cache = None;
                return Err(StoreError::Assemble {
                    point: point.to_string(),
                    message: e.to_string(),
                });
            }
        };
        let mut owners = std::mem::take(&mut *self.cache.part_owners());
        let discarded = repo
            // Only older points' parts: a point that started after this one (while this job
            // waited for its turn) may be in flight.
            .discard_stale_parts_with(&manifest.workload, None, Some(&manifest.id), &mut owners)
            .await;
        *self.cache.part_owners() = owners;
        if let Err(e) = discarded {
            tracing::warn!(error = %e, "could not remove the parts of abandoned points yet");
        }
        let replicated = self
            .copy_missing(repo, &manifest.workload, Some(&manifest))
            .await;
        Ok(Finished {
            id: manifest.id,
            consistency: manifest.consistency,
            volumes: manifest.volumes.len(),
            bytes: manifest.stats.bytes,
            replicated: replicated.map_err(String::from),
        })
    }

    async fn retention(&self, workload: &str, retention: &Retention) -> Result<Pruned, StoreError> {
        let options = PruneOptions {
            keep_within: retention.keep_within,
            keep_last: retention.keep_last,
            dry_run: false,
            workload: Some(workload.to_string()),
        };
        let (removed, remaining) = {
            let mut cache = self.cache(false).await.map_err(cache_error)?;
            let result = async {
                let Some(repo) = cache.as_mut() else {
                    return Ok((0, vec![]));
                };
                let report = self.cache.prune(repo, &options).await?;
                let mine = self.cache.points.of_workload(repo, workload).await?;
                Ok((report.points_removed.len(), mine))
            }
            .await;
            drop_on_error(&mut cache, result).map_err(cache_error)?
        };
        let mut target = self.target(None).await.map_err(target_error)?;
        let result = match target.as_mut() {
            Some(repo) => self.target.prune(repo, &options).await.map(|_| ()),
            None => Ok(()),
        };
        drop_on_error(&mut target, result).map_err(target_error)?;
        Ok(Pruned {
            removed,
            remaining: remaining.len() as u32,
            oldest: remaining.first().and_then(|s| s.time.parse().ok()),
        })
    }

    /// A reader of the target (a long copy into it does not hold the read up); `None` when the
    /// target holds no repository yet.
    async fn target_reader(&self) -> Result<Option<Repository>, StoreError> {
        if let Some(r) = self.target.kept_reader() {
            return Ok(Some(r));
        }
        match self.target(None).await {
            Ok(g) => Ok(g.as_ref().map(Repository::reader)),
            Err(RepoError::NotARepository { .. }) => Ok(None),
            Err(e) => Err(target_error(e)),
        }
    }

    /// `workload`'s points in the target, listed by `reader` (so a long copy into the target
    /// does not hold the listing up).
    async fn list_target(
        &self,
        reader: &Repository,
        workload: &str,
    ) -> Result<TargetPoints, RepoError> {
        let points = self.target.points.of_workload(reader, workload).await?;
        Ok(points
            .into_iter()
            .filter_map(|s| {
                let point = PointRef {
                    time: s.time.parse().ok()?,
                    id: s.id,
                    replicated: true,
                    consistency: s.consistency.as_str().into(),
                };
                Some((point, s.volumes))
            })
            .collect())
    }

    async fn forget(&self, workload: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        for slot in [&self.target, &self.cache] {
            let opened = if slot.name == "cache" {
                self.cache(false).await
            } else {
                self.target(None).await
            };
            let mut guard = match opened {
                Ok(g) => g,
                // The source zone's cache may be gone with the zone: nothing to delete there.
                Err(e) if slot.name == "cache" => {
                    tracing::warn!(error = %e, "cache location unreachable at commit; its points stay until it returns");
                    continue;
                }
                Err(e) => return Err(slot.error(e)),
            };
            let result = match guard.as_mut() {
                Some(repo) => forget_workload(repo, workload).await,
                None => continue,
            };
            let report = drop_on_error(&mut guard, result).map_err(|e| slot.error(e))?;
            slot.deleted(&report.points_removed);
            removed += report.points_removed.len();
        }
        Ok(removed)
    }
}

fn cache_error(e: RepoError) -> StoreError {
    StoreError::Cache(e.to_string())
}

fn target_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Target(e.to_string())
}

/// Passes `result` on; an error closes the repository, to be opened afresh next time.
fn drop_on_error<T>(guard: &mut Guard<'_>, result: Result<T, RepoError>) -> Result<T, RepoError> {
    if result.is_err() {
        **guard = None;
    }
    result
}

impl PointStore for RepoStore {
    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        use std::sync::atomic::Ordering;
        async move {
            // Ensured before and both handles still open (a handle in use by a job is): a
            // point start does not queue behind every other workload's finishing points for
            // the handles' locks. A handle closed after an error is ensured afresh.
            if self.ensured.load(Ordering::Acquire) && self.cache.is_open() && self.target.is_open()
            {
                return Ok(());
            }
            let cache = self.cache(true).await.map_err(cache_error)?;
            let Some(repo) = cache.as_ref() else {
                return Ok(());
            };
            drop(self.target(Some(repo)).await.map_err(target_error)?);
            self.ensured.store(true, Ordering::Release);
            Ok(())
        }
        .boxed()
    }

    fn finish_point<'a>(
        &'a self,
        point: &'a str,
        parts: &'a [String],
        origin: Option<&'a Origin>,
    ) -> BoxFuture<'a, Result<Finished, StoreError>> {
        self.finish(point, parts, origin).boxed()
    }

    fn catch_up<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut cache = self.cache(false).await.map_err(cache_error)?;
            match cache.as_mut() {
                Some(repo) => self.copy_missing(repo, workload, None).await,
                None => Ok(0),
            }
        }
        .boxed()
    }

    fn prune<'a>(
        &'a self,
        workload: &'a str,
        retention: &'a Retention,
    ) -> BoxFuture<'a, Result<Pruned, StoreError>> {
        self.retention(workload, retention).boxed()
    }

    fn discard_parts<'a>(&'a self, point: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            // A point's parts are its own: no need to wait for the handle a job may hold.
            if let Some(reader) = self.cache.kept_reader() {
                return reader.discard_parts(point).await.map_err(cache_error);
            }
            let cache = self.cache(false).await.map_err(cache_error)?;
            match cache.as_ref() {
                Some(repo) => repo.discard_parts(point).await.map_err(cache_error),
                None => Ok(()),
            }
        }
        .boxed()
    }

    fn target_points<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<TargetPoints, StoreError>> {
        async move {
            let Some(reader) = self.target_reader().await? else {
                return Ok(vec![]);
            };
            match self.list_target(&reader, workload).await {
                Ok(points) => Ok(points),
                Err(RepoError::NotARepository { .. }) => Ok(vec![]),
                Err(e) => Err(target_error(e)),
            }
        }
        .boxed()
    }

    fn forget_workload<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        self.forget(workload).boxed()
    }

    fn point_origin<'a>(
        &'a self,
        point: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::repository::format::Origin>, StoreError>> {
        async move {
            match self.target_reader().await? {
                Some(r) => r.origin(point).await.map_err(target_error),
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn discover(
        &self,
    ) -> BoxFuture<'_, Result<Vec<crate::api::vault::DiscoveredWorkload>, StoreError>> {
        async move {
            let Some(reader) = self.target_reader().await? else {
                return Ok(vec![]);
            };
            let mut out = Vec::new();
            for w in reader.workloads().await.map_err(target_error)? {
                let fence = reader
                    .latest_fence(&w.workload)
                    .await
                    .map_err(target_error)?;
                let (namespace, name) = w.workload.split_once('/').unwrap_or(("", &w.workload));
                out.push(crate::api::vault::DiscoveredWorkload {
                    namespace: namespace.into(),
                    name: name.into(),
                    kind: w.kind,
                    cluster: w.cluster_name,
                    cluster_uid: w.cluster_uid,
                    points: w.points.try_into().unwrap_or(u32::MAX),
                    latest_point: w.latest_id,
                    latest_point_time: w.latest_time.parse().unwrap_or_default(),
                    fenced_by: fence.map(|f| f.cluster_name),
                });
                if out.len() >= 256 {
                    break;
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn fence_of<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<super::Fence>, StoreError>> {
        async move {
            match self.target_reader().await? {
                Some(r) => r.latest_fence(workload).await.map_err(target_error),
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn fence<'a>(
        &'a self,
        workload: &'a str,
        request: &'a super::FenceRequest,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let reader = self
                .target_reader()
                .await?
                .ok_or_else(|| StoreError::Target("it holds no repository to fence in".into()))?;
            reader
                .write_fence(
                    workload,
                    &request.cluster_uid,
                    &request.cluster_name,
                    &request.failover_uid,
                    request.time,
                )
                .await
                .map(|f| f.epoch)
                .map_err(target_error)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::format::Consistency;
    use crate::repository::index::SMALL_FILES_AT;
    use crate::repository::snapshot::{SnapshotOptions, Source, snapshot};
    use crate::storage::LocationSpec;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-unit-key";

    fn location(path: &std::path::Path) -> crate::storage::Location {
        crate::storage::Location::open(&LocationSpec::Filesystem(path.into()), &Default::default())
            .unwrap()
    }

    fn index_files(repo: &std::path::Path) -> usize {
        std::fs::read_dir(repo.join("index")).unwrap().count()
    }

    /// The operator's copy of a workload's points merges the index files that agents' parts
    /// left in the cache and that its own copies leave in the target, so that neither location's
    /// listing grows with every point ever written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copying_points_merges_both_locations_index_files_once_enough_gathered() {
        let tmp = tempfile::tempdir().unwrap();
        let (cache_at, target_at) = (tmp.path().join("cache"), tmp.path().join("target"));
        let mut agent = Repository::init(location(&cache_at), KEY).await.unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let n = SMALL_FILES_AT + 2;
        let options = SnapshotOptions {
            workload: "ns/app".into(),
            consistency: Consistency::CrashConsistent,
            source_zone: None,
            use_parent: false,
            part: None,
            parent_hint: None,
        };
        let tree = vec![("data".to_string(), Source::Tree(src.clone()))];
        for i in 0..n {
            std::fs::write(src.join("value"), format!("point {i:08}")).unwrap();
            snapshot(&mut agent, tree.clone(), &options, None)
                .await
                .unwrap();
        }
        assert_eq!(index_files(&cache_at), n);
        let store = RepoStore::new(
            VaultAccess {
                cache: location(&cache_at),
                target: location(&target_at),
                key: KEY.to_vec(),
            },
            Default::default(),
        );
        let mut guard = store.cache(false).await.unwrap();
        let cache = guard.as_mut().unwrap();
        // The operator opened the cache before the last point's part was written: the copy
        // reads the index again, then merges.
        std::fs::write(src.join("value"), "the last point").unwrap();
        snapshot(&mut agent, tree, &options, None).await.unwrap();
        let copied = store.copy_missing(cache, "ns/app", None).await.unwrap();
        assert!(copied > 0);
        assert_eq!(index_files(&cache_at), 1, "the cache's files were merged");
        assert_eq!(index_files(&target_at), 1, "the target's files were merged");
        let target = Repository::open(location(&target_at), KEY).await.unwrap();
        assert_eq!(target.point_ids().await.unwrap().len(), n + 1);
        let problems = crate::repository::verify::verify(&target, true)
            .await
            .unwrap()
            .problems;
        assert!(problems.is_empty(), "{problems:?}");
    }
}
