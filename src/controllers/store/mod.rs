//! One door to a vault's recovery-point repositories for the controllers: the [`PointStore`]
//! trait (ensure, finish a point, catch up, prune, list, forget), its implementation over the
//! repository ([`repo::RepoStore`]), opened once per vault and kept in the `Context`
//! ([`VaultStores`]), and an in-memory fake for tests ([`fake::FakeStore`]). Controllers never
//! open a repository themselves; the long operations run as jobs (`controllers::jobs`).

mod cache;
pub mod fake;
pub mod repo;
mod summaries;

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::workload::PointRef;
pub use crate::repository::format::{Consistency, Origin};

pub use self::cache::VaultStores;

/// Why a store operation failed, naming what to look at: the vault (its Secrets, key or storage
/// spec), one of its two locations, or the point being assembled. Displayed as the message a
/// condition carries.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The vault cannot be opened (the message names the field or Secret).
    #[error("{0}")]
    Vault(String),
    #[error("cache location: {0}")]
    Cache(String),
    #[error("target location: {0}")]
    Target(String),
    #[error("assembling point {point}: {message}")]
    Assemble { point: String, message: String },
    /// The storage did not answer in time; the operation is idempotent and is tried again.
    #[error("storage did not finish within {seconds}s")]
    Timeout { seconds: u64 },
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.to_string()
    }
}

/// What finishing a point produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub id: String,
    pub consistency: Consistency,
    pub volumes: usize,
    /// Bytes of the point's volumes.
    pub bytes: u64,
    /// The copy to the target: bytes copied, or why it failed (the point is in the cache).
    pub replicated: Result<u64, String>,
}

/// What retention left of a workload (counted in the cache).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    pub removed: usize,
    pub remaining: u32,
    pub oldest: Option<Timestamp>,
}

/// Retention of one workload: points younger than `keep_within` stay, and the newest
/// `keep_last` whatever their age.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub keep_within: Duration,
    pub keep_last: usize,
}

/// A workload's points in the target, each with the names of the volumes it holds.
pub type TargetPoints = Vec<(PointRef, Vec<String>)>;

/// The repository operations the controllers need, for one vault. Every operation is
/// idempotent: repeated after a crash or a timeout it finishes what is left. Errors say
/// which location (or the vault) failed ([`StoreError`]).
pub trait PointStore: Send + Sync {
    /// Creates the repositories when they do not exist (the target as the cache's replica);
    /// refuses foreign ones and ones the key does not open.
    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Assembles `point` from its `parts` (node names) in the cache, with `origin` (the
    /// protecting cluster and the workload's definition), discards the parts of abandoned
    /// points of its workload, and copies what the target lacks of the workload.
    fn finish_point<'a>(
        &'a self,
        point: &'a str,
        parts: &'a [String],
        origin: Option<&'a Origin>,
    ) -> BoxFuture<'a, Result<Finished, StoreError>>;

    /// Copies the points of `workload` (`namespace/name`) the target lacks; bytes copied.
    fn catch_up<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Retention of `workload` in cache and target.
    fn prune<'a>(
        &'a self,
        workload: &'a str,
        retention: &'a Retention,
    ) -> BoxFuture<'a, Result<Pruned, StoreError>>;

    /// Removes the parts of a point that will not complete (best effort: garbage otherwise).
    fn discard_parts<'a>(&'a self, point: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The points of `workload` durable in the target; none when it holds no repository.
    fn target_points<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<TargetPoints, StoreError>>;

    /// Deletes every point of `workload` from target and cache (a committed failover); a cache
    /// that cannot be reached is skipped (the source zone may be gone). Points removed.
    fn forget_workload<'a>(&'a self, workload: &'a str)
    -> BoxFuture<'a, Result<usize, StoreError>>;

    /// The origin of `point` in the target (the protecting cluster, the workload's
    /// definition); `None` for a point without one.
    fn point_origin<'a>(
        &'a self,
        point: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::repository::format::Origin>, StoreError>>;

    /// Every workload the target holds points of, with its latest point and fence.
    fn discover(
        &self,
    ) -> BoxFuture<'_, Result<Vec<crate::api::vault::DiscoveredWorkload>, StoreError>>;

    /// The newest fence of `workload` in the target, if any.
    fn fence_of<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<Fence>, StoreError>>;

    /// Writes a fence of `workload` naming this cluster in the target (idempotent for one
    /// Failover); its epoch.
    fn fence<'a>(
        &'a self,
        workload: &'a str,
        request: &'a FenceRequest,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

pub use crate::repository::fence::Fence;

/// Who fences a workload, and for which Failover.
#[derive(Clone, Debug, PartialEq)]
pub struct FenceRequest {
    pub cluster_uid: String,
    pub cluster_name: String,
    pub failover_uid: String,
    pub time: Timestamp,
}

#[cfg(test)]
mod error_tests {
    use super::StoreError;

    #[test]
    fn a_store_error_says_which_location_or_point_failed() {
        let cases = [
            (
                StoreError::Cache("unreachable".into()),
                "cache location: unreachable",
            ),
            (StoreError::Target("403".into()), "target location: 403"),
            (
                StoreError::Assemble {
                    point: "p1".into(),
                    message: "a part has not been written".into(),
                },
                "assembling point p1: a part has not been written",
            ),
            (
                StoreError::Timeout { seconds: 600 },
                "storage did not finish within 600s",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(String::from(e), want);
        }
    }
}
