//! What the controllers need of each point's manifest (workload, time, consistency, volumes,
//! who protected it),
//! decrypted once per point id: a manifest is written once and never changed, so only the ids
//! a listing shows for the first time are read.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Summaries of the points of one location.
#[derive(Default)]
pub struct Summaries {
    known: Mutex<HashMap<String, Summary>>,
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
            let m = repo.manifest(id).await?;
            read.push(Summary {
                id: m.id,
                workload: m.workload,
                time: m.time,
                consistency: m.consistency,
                volumes: m.volumes.into_iter().map(|v| v.name).collect(),
                origin: m.origin.as_ref().map(OriginSummary::from),
            });
        }
        let mut known = self.lock();
        known.extend(read.into_iter().map(|s| (s.id.clone(), s)));
        known.retain(|id, _| ids.binary_search(id).is_ok());
        Ok(ids.iter().filter_map(|id| known.get(id).cloned()).collect())
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
