//! What the controllers need of each point's manifest (workload, time, consistency, volumes,
//! who protected it),
//! decrypted once per point id: a manifest is written once and never changed, so only the ids
//! a listing shows for the first time are read.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Consistency;
use crate::repository::origin::OriginSummary;
use crate::repository::{RepoError, Repository};

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub id: String,
    pub workload: String,
    /// RFC 3339 capture time, as the manifest holds it.
    pub time: String,
    pub consistency: Consistency,
    pub volumes: Vec<String>,
    /// Who protected the workload (cluster uid and name, kind); `None` for points without an
    /// origin. The definition is not kept.
    pub origin: Option<OriginSummary>,
}

/// How old a listing of a location's points may be for the work of one point (which of the
/// workload's points are in the cache, which the target lacks). Each point used to list both
/// locations whole: a cost that grew with every other workload's points. This process's own
/// writes and deletions are applied to what it knows at once; another writer's show within
/// this time.
pub const RECENT: Duration = Duration::from_secs(60);

fn summary_of(m: &crate::repository::format::Manifest) -> Summary {
    Summary {
        id: m.id.clone(),
        workload: m.workload.clone(),
        time: m.time.clone(),
        consistency: m.consistency,
        volumes: m.volumes.iter().map(|v| v.name.clone()).collect(),
        origin: m.origin.as_ref().map(OriginSummary::from),
    }
}

/// Summaries of the points of one location.
#[derive(Default)]
pub struct Summaries {
    known: Mutex<HashMap<String, Summary>>,
    /// When `known` was last made to match a listing.
    listed: Mutex<Option<Instant>>,
}

/// The ids of the points in one location, from a recent listing and this process's changes.
#[derive(Default)]
pub struct PresentIds {
    ids: Mutex<Option<(Instant, HashSet<String>)>>,
}

impl PresentIds {
    /// Which of `candidates` the location lacks, by a listing at most [`RECENT`] old.
    pub async fn missing(
        &self,
        repo: &Repository,
        candidates: Vec<String>,
    ) -> Result<Vec<String>, RepoError> {
        let fresh = self
            .lock()
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < RECENT);
        if !fresh {
            let listed: HashSet<String> = repo.point_ids().await?.into_iter().collect();
            *self.lock() = Some((Instant::now(), listed));
        }
        let ids = self.lock();
        let present = |id: &String| ids.as_ref().is_some_and(|(_, s)| s.contains(id));
        Ok(candidates.into_iter().filter(|id| !present(id)).collect())
    }

    /// Points this process wrote there.
    pub fn added(&self, ids: impl IntoIterator<Item = String>) {
        if let Some((_, set)) = self.lock().as_mut() {
            set.extend(ids);
        }
    }

    /// Points this process deleted there.
    pub fn removed(&self, ids: &[String]) {
        if let Some((_, set)) = self.lock().as_mut() {
            for id in ids {
                set.remove(id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, HashSet<String>)>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Summaries {
    /// Every point in `repo`, oldest first. Points gone from storage are forgotten.
    pub async fn list(&self, repo: &Repository) -> Result<Vec<Summary>, RepoError> {
        let ids = repo.point_ids().await?;
        let missing: Vec<String> = {
            let known = self.lock();
            ids.iter()
                .filter(|id| !known.contains_key(*id))
                .cloned()
                .collect()
        };
        let mut read = Vec::with_capacity(missing.len());
        for id in &missing {
            read.push(summary_of(&repo.manifest(id).await?));
        }
        let mut known = self.lock();
        known.extend(read.into_iter().map(|s| (s.id.clone(), s)));
        known.retain(|id, _| ids.binary_search(id).is_ok());
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(ids.iter().filter_map(|id| known.get(id).cloned()).collect())
    }

    /// The points of `workload`, oldest first, from a listing at most [`RECENT`] old and the
    /// points this process added or deleted since.
    pub async fn of_workload_recent(
        &self,
        repo: &Repository,
        workload: &str,
    ) -> Result<Vec<Summary>, RepoError> {
        let fresh = self
            .listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < RECENT);
        if !fresh {
            return self.of_workload(repo, workload).await;
        }
        let mut mine: Vec<Summary> = self
            .lock()
            .values()
            .filter(|s| s.workload == workload)
            .cloned()
            .collect();
        mine.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(mine)
    }

    /// A point this process wrote.
    pub fn added(&self, manifest: &crate::repository::format::Manifest) {
        let s = summary_of(manifest);
        self.lock().insert(s.id.clone(), s);
    }

    /// Points this process deleted.
    pub fn removed(&self, ids: &[String]) {
        let mut known = self.lock();
        for id in ids {
            known.remove(id);
        }
    }

    /// The points of `workload` in `repo`, oldest first.
    pub async fn of_workload(
        &self,
        repo: &Repository,
        workload: &str,
    ) -> Result<Vec<Summary>, RepoError> {
        let mut all = self.list(repo).await?;
        all.retain(|s| s.workload == workload);
        Ok(all)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Summary>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
