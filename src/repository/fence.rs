//! Fences: which cluster may write points of a workload in this repository. A region failover
//! writes a fence naming the standby cluster; the protecting cluster, returning, reads the latest
//! fence before it writes and stops when the fence names another cluster (invariant 7).
//!
//! A fence is `fences/<namespace>/<name>/<epoch>` (epoch: 20 decimal digits, from 1), written by
//! conditional create with the epoch after the latest, so two writers never share an epoch and
//! the highest epoch decides. Each is sealed with the data key under its own kind, bound to its
//! key below the prefix: it cannot be replayed under another epoch or workload. A fence that does
//! not open or decode is an error naming it, never skipped (a forged or damaged fence must not
//! let a writer through), and nothing deletes fences: they are tiny and stay.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::crypto::{self, Kind};
use super::format::limits;
use super::origin::{self, split_workload, truncated};
use super::{RepoError, Repository};
use crate::storage::{StorageError, layout};

/// A fence record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// `namespace/name`.
    pub workload: String,
    /// The cluster that may write points of the workload: the uid of its kube-system namespace.
    pub cluster_uid: String,
    pub cluster_name: String,
    /// The failover that wrote this fence.
    pub failover_uid: String,
    /// RFC 3339.
    pub time: String,
    pub epoch: u64,
}

/// How many epochs a writer tries before it gives up to the other writers.
const WRITE_ATTEMPTS: usize = 8;

/// Whether cluster `cluster_uid` may write points of the workload: when it has no fence, or
/// when the latest names it. `Err` is the fence that forbids it (a copy: called once per
/// decision, so its size does not matter).
#[allow(clippy::result_large_err)]
pub fn may_write(latest: Option<&Fence>, cluster_uid: &str) -> Result<(), Fence> {
    match latest {
        Some(f) if f.cluster_uid != cluster_uid => Err(f.clone()),
        _ => Ok(()),
    }
}

/// What a fence must say, besides naming its key's workload and epoch.
fn check_fields(f: &Fence) -> Result<(), String> {
    let text = |what: &str, s: &str, max: usize| {
        if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
            Err(format!(
                "{what} {:?} is empty, longer than {max} bytes or has control characters",
                truncated(s)
            ))
        } else {
            Ok(())
        }
    };
    split_workload(&f.workload)?;
    text("cluster uid", &f.cluster_uid, origin::UID_MAX)?;
    text("cluster name", &f.cluster_name, origin::CLUSTER_NAME_MAX)?;
    text("failover uid", &f.failover_uid, origin::UID_MAX)?;
    f.time
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("time {:?}: {e}", truncated(&f.time)))?;
    if f.epoch == 0 {
        return Err("epoch 0 (epochs start at 1)".into());
    }
    Ok(())
}

/// Seals a fence, bound to its key.
pub fn encode_fence(keys: &crypto::Keys, f: &Fence) -> Result<Vec<u8>, String> {
    check_fields(f)?;
    let (namespace, name) = split_workload(&f.workload)?;
    let plain = postcard::to_stdvec(f).expect("a fence serializes");
    let bound = layout::fence_name(namespace, name, f.epoch);
    Ok(crypto::seal(
        &keys.data_key,
        Kind::Fence,
        bound.as_bytes(),
        &plain,
    ))
}

/// Opens and checks the fence stored as `workload`'s epoch `epoch`.
pub fn decode_fence(
    keys: &crypto::Keys,
    workload: &str,
    epoch: u64,
    bytes: &[u8],
) -> Result<Fence, String> {
    let (namespace, name) = split_workload(workload)?;
    if bytes.len() as u64 > limits::FENCE {
        return Err(format!(
            "{} bytes, more than a fence's {}",
            bytes.len(),
            limits::FENCE
        ));
    }
    let bound = layout::fence_name(namespace, name, epoch);
    let plain = crypto::open(&keys.data_key, Kind::Fence, bound.as_bytes(), bytes)
        .map_err(|e| format!("fence: {e}"))?;
    decode_fence_plaintext(&plain, workload, epoch)
}

/// Decodes a fence after decryption (a fuzz target's entry point): it must name `workload` and
/// `epoch`, and its fields must be bounded.
pub fn decode_fence_plaintext(plain: &[u8], workload: &str, epoch: u64) -> Result<Fence, String> {
    let f = match postcard::take_from_bytes::<Fence>(plain) {
        Ok((f, [])) => f,
        Ok((_, rest)) => return Err(format!("fence: {} bytes after its end", rest.len())),
        Err(e) => return Err(format!("fence: {e}")),
    };
    check_fields(&f).map_err(|e| format!("fence: {e}"))?;
    if f.workload != workload || f.epoch != epoch {
        return Err(format!(
            "fence names {} epoch {}, not {workload} epoch {epoch}",
            truncated(&f.workload),
            f.epoch
        ));
    }
    Ok(f)
}

impl Repository {
    fn fence_object(&self, key: &object_store::path::Path) -> String {
        format!("{}/{}", self.location.name(), key)
    }

    /// The epochs of `workload`'s fences in storage, highest last. A name that is not an epoch
    /// is reported as corrupt.
    async fn fence_epochs(&self, namespace: &str, name: &str) -> Result<Vec<u64>, RepoError> {
        let dir = layout::fences_of(self.location.prefix(), namespace, name);
        let listed = self.location.list(&dir).await?;
        let mut epochs = Vec::with_capacity(listed.len());
        for (key, _) in listed {
            let rest: Vec<String> = key
                .prefix_match(&dir)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            match rest.as_slice() {
                [one] if layout::parse_epoch(one).is_some_and(|e| e > 0) => {
                    epochs.push(layout::parse_epoch(one).expect("checked"));
                }
                _ => {
                    return Err(RepoError::Corrupt {
                        object: self.fence_object(&key),
                        reason: format!(
                            "not a fence: {dir} holds only fences named by their epoch ({} digits, from 1)",
                            layout::EPOCH_DIGITS
                        ),
                    });
                }
            }
        }
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Reads and checks `workload`'s fence of `epoch`.
    async fn read_fence(&self, workload: &str, epoch: u64) -> Result<Fence, RepoError> {
        let (namespace, name) = split_workload(workload).map_err(RepoError::Invalid)?;
        let key = layout::fence(self.location.prefix(), namespace, name, epoch);
        let bytes = self.location.get_max(&key, limits::FENCE).await?;
        decode_fence(&self.keys, workload, epoch, &bytes).map_err(|reason| RepoError::Corrupt {
            object: self.fence_object(&key),
            reason,
        })
    }

    /// The fence with the highest epoch for `workload` (`namespace/name`), if any.
    pub async fn latest_fence(&self, workload: &str) -> Result<Option<Fence>, RepoError> {
        let (namespace, name) = split_workload(workload).map_err(RepoError::Invalid)?;
        match self.fence_epochs(namespace, name).await?.last() {
            Some(&epoch) => Ok(Some(self.read_fence(workload, epoch).await?)),
            None => Ok(None),
        }
    }

    /// Writes a fence naming `cluster_uid` with the epoch after the latest, by conditional
    /// create, trying the next epoch when another writer took this one. Idempotent: when the
    /// latest fence already has this `failover_uid` and `cluster_uid`, it is returned as it is.
    pub async fn write_fence(
        &self,
        workload: &str,
        cluster_uid: &str,
        cluster_name: &str,
        failover_uid: &str,
        time: jiff::Timestamp,
    ) -> Result<Fence, RepoError> {
        let (namespace, name) = split_workload(workload).map_err(RepoError::Invalid)?;
        for _ in 0..WRITE_ATTEMPTS {
            let latest = self.latest_fence(workload).await?;
            if let Some(f) = &latest
                && f.failover_uid == failover_uid
                && f.cluster_uid == cluster_uid
            {
                return Ok(f.clone());
            }
            let epoch = match latest.map(|f| f.epoch.checked_add(1)) {
                None => 1,
                Some(Some(e)) => e,
                Some(None) => {
                    return Err(RepoError::Invalid(format!(
                        "{workload}: the fence epochs are exhausted"
                    )));
                }
            };
            let fence = Fence {
                workload: workload.to_string(),
                cluster_uid: cluster_uid.to_string(),
                cluster_name: cluster_name.to_string(),
                failover_uid: failover_uid.to_string(),
                time: time.to_string(),
                epoch,
            };
            let sealed = encode_fence(&self.keys, &fence)
                .map_err(|e| RepoError::Invalid(format!("fence of {workload}: {e}")))?;
            let key = layout::fence(self.location.prefix(), namespace, name, epoch);
            match self.location.put_new(&key, Bytes::from(sealed)).await {
                Ok(()) => return Ok(fence),
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RepoError::Locked {
            location: self.location.name().into(),
            reason: format!(
                "other writers took the next {WRITE_ATTEMPTS} fence epochs of {workload}; try again"
            ),
        })
    }

    /// Checks every fence in the repository (for `verify`): how many there are, and what is
    /// wrong with the others, each naming the object.
    pub async fn check_fences(&self) -> Result<(u64, Vec<String>), RepoError> {
        let dir = layout::dir(self.location.prefix(), layout::FENCES);
        let listed = self.location.list(&dir).await?;
        let mut good = 0;
        let mut problems = Vec::new();
        for (key, _) in listed {
            let rest: Vec<String> = key
                .prefix_match(&dir)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let parsed = match rest.as_slice() {
                [namespace, name, epoch] => {
                    let workload = format!("{namespace}/{name}");
                    match (split_workload(&workload), layout::parse_epoch(epoch)) {
                        (Ok(_), Some(e)) if e > 0 => Some((workload, e)),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some((workload, epoch)) = parsed else {
                problems.push(format!(
                    "{}: not a fence (expected fences/<namespace>/<name>/<{}-digit epoch>)",
                    self.fence_object(&key),
                    layout::EPOCH_DIGITS
                ));
                continue;
            };
            match self.read_fence(&workload, epoch).await {
                Ok(_) => good += 1,
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok((good, problems))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::Location;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-fence-test";

    fn t() -> jiff::Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    async fn memory_repo() -> Repository {
        let store = Arc::new(object_store::memory::InMemory::new());
        Repository::init(Location::from_store(store, "repo", "mem"), KEY)
            .await
            .unwrap()
    }

    async fn fs_repo(dir: &std::path::Path) -> Repository {
        let location = Location::open(
            &crate::storage::LocationSpec::Filesystem(dir.to_path_buf()),
            &Default::default(),
        )
        .unwrap();
        Repository::init(location, KEY).await.unwrap()
    }

    #[tokio::test]
    async fn each_failover_takes_the_next_epoch_and_a_rewrite_is_idempotent() {
        let repo = memory_repo().await;
        assert_eq!(repo.latest_fence("apps/db").await.unwrap(), None);
        assert_eq!(may_write(None, "east-uid"), Ok(()));
        let first = repo
            .write_fence("apps/db", "west-uid", "west", "fo-1", t())
            .await
            .unwrap();
        assert_eq!(first.epoch, 1);
        assert_eq!(first.time, "2026-03-01T12:00:00Z");
        assert_eq!(
            repo.latest_fence("apps/db").await.unwrap().as_ref(),
            Some(&first)
        );
        let again = repo
            .write_fence("apps/db", "west-uid", "west", "fo-1", t())
            .await
            .unwrap();
        assert_eq!(
            again, first,
            "the same failover's fence is not written twice"
        );
        assert_eq!(repo.fence_epochs("apps", "db").await.unwrap(), [1]);
        // Failing back: another failover, naming the first cluster again.
        let second = repo
            .write_fence("apps/db", "east-uid", "east", "fo-2", t())
            .await
            .unwrap();
        assert_eq!(second.epoch, 2);
        let latest = repo.latest_fence("apps/db").await.unwrap();
        assert_eq!(latest.as_ref(), Some(&second));
        assert_eq!(may_write(latest.as_ref(), "east-uid"), Ok(()));
        assert_eq!(may_write(latest.as_ref(), "west-uid"), Err(second.clone()));
        assert_eq!(may_write(Some(&first), "east-uid"), Err(first.clone()));
        // Other workloads are fenced apart.
        assert_eq!(repo.latest_fence("apps/db2").await.unwrap(), None);
        assert_eq!(repo.check_fences().await.unwrap(), (2, vec![]));
    }

    #[tokio::test]
    async fn bad_workloads_and_fields_are_refused_before_anything_is_written() {
        let repo = memory_repo().await;
        for bad in ["db", "apps/../x", "Apps/db", "apps/db/x", "apps/"] {
            let err = repo.latest_fence(bad).await.unwrap_err();
            assert!(matches!(err, RepoError::Invalid(_)), "{bad}: {err}");
            assert!(
                repo.write_fence(bad, "u", "n", "f", t()).await.is_err(),
                "{bad}"
            );
        }
        for (uid, name, failover) in [("", "n", "f"), ("u", "", "f"), ("u", "n", "a\nb")] {
            let err = repo
                .write_fence("apps/db", uid, name, failover, t())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("fence of apps/db"), "{err}");
        }
        assert_eq!(repo.check_fences().await.unwrap(), (0, vec![]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_get_distinct_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Arc::new(fs_repo(dir.path()).await);
        let writers = (0..4).map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.write_fence("apps/db", &format!("c{i}"), "c", &format!("fo-{i}"), t())
                    .await
                    .unwrap()
            })
        });
        let fences = futures::future::try_join_all(writers).await.unwrap();
        let mut epochs: Vec<u64> = fences.iter().map(|f| f.epoch).collect();
        epochs.sort();
        assert_eq!(epochs, [1, 2, 3, 4]);
        let latest = repo.latest_fence("apps/db").await.unwrap().unwrap();
        assert_eq!(latest.epoch, 4);
        assert!(fences.contains(&latest));
    }

    #[tokio::test]
    async fn tampered_replayed_and_foreign_fences_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = fs_repo(dir.path()).await;
        repo.write_fence("apps/db", "west-uid", "west", "fo-1", t())
            .await
            .unwrap();
        let fences = dir.path().join("fences/apps/db");
        let first = fences.join("00000000000000000001");
        let good = std::fs::read(&first).unwrap();

        // A flipped byte.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&first, &bad).unwrap();
        let err = repo.latest_fence("apps/db").await.unwrap_err().to_string();
        assert!(
            err.contains("fences/apps/db/00000000000000000001") && err.contains("authentication"),
            "{err}"
        );
        assert!(
            repo.write_fence("apps/db", "east-uid", "east", "fo-2", t())
                .await
                .is_err(),
            "no fence is written over one that does not open"
        );
        std::fs::write(&first, &good).unwrap();

        // Replayed under a higher epoch, or under another workload: bound to its key.
        let replay = fences.join("00000000000000000002");
        std::fs::write(&replay, &good).unwrap();
        let err = repo.latest_fence("apps/db").await.unwrap_err().to_string();
        assert!(err.contains("00000000000000000002"), "{err}");
        std::fs::remove_file(&replay).unwrap();
        std::fs::create_dir_all(dir.path().join("fences/apps/web")).unwrap();
        std::fs::write(
            dir.path().join("fences/apps/web/00000000000000000001"),
            &good,
        )
        .unwrap();
        let err = repo.latest_fence("apps/web").await.unwrap_err().to_string();
        assert!(
            err.contains("fences/apps/web/00000000000000000001"),
            "{err}"
        );
        let (count, problems) = repo.check_fences().await.unwrap();
        assert_eq!((count, problems.len()), (1, 1), "{problems:?}");
        std::fs::remove_dir_all(dir.path().join("fences/apps/web")).unwrap();

        // Oversized, and names that are no epoch.
        let huge = fences.join("00000000000000000009");
        std::fs::write(&huge, vec![0u8; limits::FENCE as usize + 1]).unwrap();
        let err = repo.latest_fence("apps/db").await.unwrap_err().to_string();
        assert!(err.contains("00000000000000000009"), "{err}");
        std::fs::remove_file(&huge).unwrap();
        for garbage in ["1", "99999999999999999999", "00000000000000000000", "x"] {
            let path = fences.join(garbage);
            std::fs::write(&path, &good).unwrap();
            let err = repo.latest_fence("apps/db").await.unwrap_err();
            assert!(matches!(err, RepoError::Corrupt { .. }), "{garbage}: {err}");
            assert!(err.to_string().contains(garbage), "{err}");
            assert_eq!(repo.check_fences().await.unwrap().1.len(), 1, "{garbage}");
            std::fs::remove_file(&path).unwrap();
        }
        std::fs::write(dir.path().join("fences/stray"), b"x").unwrap();
        let (count, problems) = repo.check_fences().await.unwrap();
        assert_eq!(count, 1);
        assert!(problems[0].contains("fences/stray"), "{problems:?}");
        assert_eq!(
            repo.latest_fence("apps/db").await.unwrap().unwrap().epoch,
            1,
            "the good fence still reads"
        );
    }

    #[test]
    fn fence_plaintexts_are_checked() {
        let f = Fence {
            workload: "apps/db".into(),
            cluster_uid: "u".into(),
            cluster_name: "n".into(),
            failover_uid: "f".into(),
            time: "2026-03-01T12:00:00Z".into(),
            epoch: 3,
        };
        let plain = postcard::to_stdvec(&f).unwrap();
        assert_eq!(decode_fence_plaintext(&plain, "apps/db", 3).unwrap(), f);
        assert!(decode_fence_plaintext(&plain, "apps/db", 4).is_err());
        assert!(decode_fence_plaintext(&plain, "apps/web", 3).is_err());
        let mut longer = plain.clone();
        longer.push(0);
        assert!(decode_fence_plaintext(&longer, "apps/db", 3).is_err());
        for cut in 0..plain.len() {
            assert!(decode_fence_plaintext(&plain[..cut], "apps/db", 3).is_err());
        }
        let bad_time = Fence {
            time: "yesterday".into(),
            ..f.clone()
        };
        let err = decode_fence_plaintext(&postcard::to_stdvec(&bad_time).unwrap(), "apps/db", 3)
            .unwrap_err();
        assert!(err.contains("time"), "{err}");
    }
}
