//! Retention and garbage collection. Points older than the retention window are forgotten
//! (keeping the newest `keep_last` and the newest app-consistent point of every workload); then,
//! under an exclusive lock that no snapshot or replication holds, packs no remaining point
//! references are deleted. Order makes a crash harmless: manifests first, then a new index
//! without the doomed packs, then the old index files, then the packs.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::format::{Consistency, Manifest};
use super::lock::Lock;
use super::{RepoError, Repository, pack_name};
use crate::storage::layout;

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Points younger than this are kept.
    pub keep_within: Duration,
    /// The newest this-many points of each workload are kept whatever their age.
    pub keep_last: usize,
    /// Report what would be deleted without deleting.
    pub dry_run: bool,
    /// Only this workload's points are considered; every workload's when `None`.
    pub workload: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneReport {
    pub points_removed: Vec<String>,
    pub points_kept: usize,
    pub packs_removed: u64,
    pub bytes_freed: u64,
    /// Why garbage collection was skipped, if it was.
    pub gc_skipped: Option<String>,
    /// Packs in storage that no index names and whose header did not open: kept, not deleted.
    pub packs_unreadable: Vec<String>,
}

/// What retention needs to know of a point: what its manifest says, or a summary of it.
#[derive(Clone, Copy, Debug)]
pub struct PointFacts<'a> {
    pub id: &'a str,
    pub workload: &'a str,
    /// RFC 3339 capture time.
    pub time: &'a str,
    pub consistency: Consistency,
}

impl<'a> From<&'a Manifest> for PointFacts<'a> {
    fn from(m: &'a Manifest) -> Self {
        PointFacts {
            id: &m.id,
            workload: &m.workload,
            time: &m.time,
            consistency: m.consistency,
        }
    }
}

/// Which points retention removes, from what is known of them: pure, for tests.
pub fn select_facts(
    points: &[PointFacts],
    options: &PruneOptions,
    now: jiff::Timestamp,
) -> Vec<String> {
    let mut by_workload: BTreeMap<&str, Vec<&PointFacts>> = BTreeMap::new();
    for m in points {
        if options.workload.as_deref().is_some_and(|w| w != m.workload) {
            continue;
        }
        by_workload.entry(m.workload).or_default().push(m);
    }
    let mut remove = Vec::new();
    for (_, mut ms) in by_workload {
        ms.sort_by(|a, b| b.id.cmp(a.id));
        let newest_app = ms
            .iter()
            .find(|m| m.consistency == Consistency::AppConsistent)
            .map(|m| m.id);
        for (i, m) in ms.iter().enumerate() {
            let age = m
                .time
                .parse::<jiff::Timestamp>()
                .ok()
                .and_then(|t| now.duration_since(t).try_into().ok())
                .unwrap_or(Duration::ZERO);
            let keep =
                i < options.keep_last || age <= options.keep_within || Some(m.id) == newest_app;
            if !keep {
                remove.push(m.id.to_string());
            }
        }
    }
    remove.sort();
    remove
}

pub async fn prune(
    repo: &mut Repository,
    options: &PruneOptions,
) -> Result<PruneReport, RepoError> {
    let manifests = repo.manifests().await?;
    let facts: Vec<PointFacts> = manifests.iter().map(PointFacts::from).collect();
    prune_facts(repo, options, &facts, |_| true).await
}

/// Retention over points whose facts are already known (a cache of their summaries), so that
/// no manifest is read; garbage is collected only when a point was removed and `collect` says
/// it is time. A prune after every point of every workload must not read the whole repository
/// each time: that made a point's cost grow with the number of workloads.
pub async fn prune_known(
    repo: &mut Repository,
    options: &PruneOptions,
    points: &[PointFacts<'_>],
    collect: impl FnOnce() -> bool,
) -> Result<PruneReport, RepoError> {
    prune_facts(repo, options, points, |remove| {
        !remove.is_empty() && collect()
    })
    .await
}

/// Removes what retention selects of `points`; `collect` says, given the points removed,
/// whether garbage is collected after.
async fn prune_facts(
    repo: &mut Repository,
    options: &PruneOptions,
    points: &[PointFacts<'_>],
    collect: impl FnOnce(&[String]) -> bool,
) -> Result<PruneReport, RepoError> {
    let remove = select_facts(points, options, jiff::Timestamp::now());
    let mut report = PruneReport {
        points_kept: points.len() - remove.len(),
        ..Default::default()
    };
    if options.dry_run {
        report.points_removed = remove;
        return Ok(report);
    }
    let collect = collect(&remove);
    remove_points(repo, remove, report, collect).await
}

/// Removes every point of `workload` (a committed failover: the seed's commit deletes the
/// recovery points). The data stays: it is the base a re-protection in the reverse direction
/// deduplicates against, so that a failback moves only what changed. The next prune collects
/// whatever no point references by then.
pub async fn forget_workload(
    repo: &mut Repository,
    workload: &str,
) -> Result<PruneReport, RepoError> {
    let manifests = repo.manifests().await?;
    let remove: Vec<String> = manifests
        .iter()
        .filter(|m| m.workload == workload)
        .map(|m| m.id.clone())
        .collect();
    for id in &remove {
        repo.location
            .delete(&layout::point(repo.location.prefix(), id))
            .await?;
    }
    Ok(PruneReport {
        points_kept: manifests.len() - remove.len(),
        points_removed: remove,
        gc_skipped: Some("a committed failover keeps the data as the base for failback".into()),
        ..Default::default()
    })
}

async fn remove_points(
    repo: &mut Repository,
    remove: Vec<String>,
    mut report: PruneReport,
    collect: bool,
) -> Result<PruneReport, RepoError> {
    for id in &remove {
        repo.location
            .delete(&layout::point(repo.location.prefix(), id))
            .await?;
    }
    report.points_removed = remove;
    if !collect {
        report.gc_skipped = Some("not this time: garbage is collected every few minutes".into());
        return Ok(report);
    }

    let lock = match Lock::acquire(&repo.location, "prune", true).await {
        Ok(l) => l,
        Err(RepoError::Locked { reason, .. }) => {
            report.gc_skipped = Some(reason);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let result = collect_garbage(repo, &mut report, &lock).await;
    lock.release().await?;
    result?;
    Ok(report)
}

async fn collect_garbage(
    repo: &mut Repository,
    report: &mut PruneReport,
    lock: &Lock,
) -> Result<(), RepoError> {
    repo.load_index().await?;
    let used = repo.referenced_chunks().await?;
    let stored = repo.list_packs().await?;
    // Entries grouped by pack in one pass over the index.
    let mut by_pack: Vec<Vec<super::format::PackEntry>> = vec![Vec::new(); repo.packs.len()];
    for (id, at) in &repo.chunks {
        by_pack[at.pack as usize].push(super::format::PackEntry {
            id: *id,
            offset: at.offset,
            length: at.length,
            raw_length: at.raw_length,
        });
    }
    let mut doomed = HashSet::new();
    let mut keep = Vec::new();
    for (pack, entries) in repo.packs.iter().zip(by_pack) {
        if entries.iter().any(|e| used.contains(&e.id)) {
            keep.push((*pack, entries));
        } else {
            doomed.insert(*pack);
        }
    }
    lock.ensure_held()?;
    let old_indexes = repo.index_files.clone();
    let new_index = repo.write_index(keep).await?;
    let stale: Vec<_> = old_indexes
        .into_iter()
        .filter(|k| *k != new_index)
        .map(object_store::path::Path::from)
        .collect();
    repo.location.delete_all(stale).await?;
    let mut keys = Vec::new();
    for (pack, size) in stored {
        // Only packs whose header or index entry authenticated, and that nothing references,
        // are deleted. A pack that could not be read (corrupt, foreign, or a read that failed
        // just now) is kept and reported: deleting it would "repair" by losing data.
        if doomed.contains(&pack) {
            report.packs_removed += 1;
            report.bytes_freed += size;
            keys.push(layout::pack(repo.location.prefix(), &pack_name(&pack)));
        }
    }
    report.packs_unreadable = repo
        .unreadable_packs
        .iter()
        .map(|(p, why)| format!("{}: {why}", pack_name(p)))
        .collect();
    repo.location.delete_all(keys).await?;
    repo.load_index().await?;
    Ok(())
}
