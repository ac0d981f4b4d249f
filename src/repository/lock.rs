//! Markers of writers in flight. Snapshot and replicate take shared locks; prune's garbage
//! collection takes an exclusive one and deletes no data while any other lock is fresh, so it
//! can never delete a chunk an in-flight snapshot has just decided to reuse.
//!
//! Freshness is judged by the storage's own clock: a lock's age is the last-modified time of
//! the lock just written by the one asking minus the other lock's, so the hosts' clocks never
//! matter. A lock dated further ahead than a refresh interval cannot come from a live writer
//! (its refreshes would be dated by the same storage) and does not block. A lock releases
//! itself when dropped (a timeout or a cancelled task), and a writer whose lock could not be
//! refreshed commits nothing ([`Lock::ensure_held`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::format::limits;
use crate::storage::{Location, layout};

/// A lock not refreshed for this long belongs to a dead writer.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// What a lock file says: for messages only, never for deciding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LockInfo {
    pub kind: String,
    pub exclusive: bool,
    pub host: String,
    pub pid: u32,
    /// Unix seconds of the last refresh, by the writer's clock (informative).
    pub refreshed: i64,
}

/// Decodes a lock file (a fuzz target's entry point).
pub fn decode_lock(bytes: &[u8]) -> Result<LockInfo, String> {
    if bytes.len() as u64 > limits::LOCK {
        return Err(format!(
            "a lock of {} bytes is not one of ours",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("lock: {e}"))
}

/// Another writer's lock, as the storage dates it.
#[derive(Clone, Debug)]
pub struct Held {
    pub name: String,
    /// `None` when the file does not read as a lock: it blocks as if exclusive.
    pub info: Option<LockInfo>,
}

impl Held {
    fn exclusive(&self) -> bool {
        self.info.as_ref().is_none_or(|i| i.exclusive)
    }

    fn describe(&self) -> String {
        match &self.info {
            Some(l) => format!("{} by {} (pid {})", l.kind, l.host, l.pid),
            None => format!("an unreadable lock {}", self.name),
        }
    }
}

#[derive(Default)]
struct Health {
    failure: Option<String>,
}

pub struct Lock {
    location: Location,
    key: Path,
    refresher: Option<tokio::task::JoinHandle<()>>,
    health: Arc<Mutex<Health>>,
    last_refresh: Arc<Mutex<Instant>>,
}

fn info(kind: &str, exclusive: bool) -> Bytes {
    let info = LockInfo {
        kind: kind.into(),
        exclusive,
        host: std::env::var("HOSTNAME")
            .or_else(|_| std::env::var("NODE_NAME"))
            .unwrap_or_else(|_| "unknown".into()),
        pid: std::process::id(),
        refreshed: jiff::Timestamp::now().as_second(),
    };
    Bytes::from(serde_json::to_vec(&info).expect("lock serializes"))
}

/// Sorts the locks below `locks/` other than `ours` into fresh and stale, by storage time.
/// `ours` must have just been written: its last-modified time is the storage's "now".
async fn judge(location: &Location, ours: &Path) -> Result<(Vec<Held>, Vec<Path>), RepoError> {
    let listed = location
        .list_modified(&layout::dir(location.prefix(), layout::LOCKS))
        .await?;
    let now = listed
        .iter()
        .find(|(k, _, _)| k == ours)
        .map(|(_, _, t)| *t)
        .ok_or_else(|| RepoError::Locked {
            location: location.name().into(),
            reason: format!("the lock {ours} just written is not listed; retry later"),
        })?;
    let stale_after = jiff::SignedDuration::try_from(STALE_AFTER).expect("fits");
    let ahead = jiff::SignedDuration::try_from(REFRESH_EVERY).expect("fits");
    let (mut fresh, mut stale) = (vec![], vec![]);
    for (key, size, modified) in listed {
        if key == *ours {
            continue;
        }
        let age = now.duration_since(modified);
        if age >= stale_after || -age > ahead {
            stale.push(key);
            continue;
        }
        let info = if size <= limits::LOCK {
            match location.get_max(&key, limits::LOCK).await {
                Ok(b) => decode_lock(&b).ok(),
                // Released meanwhile.
                Err(crate::storage::StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let name = key.filename().unwrap_or_default().to_string();
        fresh.push(Held { name, info });
    }
    Ok((fresh, stale))
}

impl Lock {
    /// Takes a lock. A shared lock fails while an exclusive one is fresh; an exclusive lock
    /// fails while any other lock is fresh. Both sides write first and check second, so two
    /// racing writers cannot both pass. An exclusive lock removes the stale locks it finds.
    pub async fn acquire(
        location: &Location,
        kind: &str,
        exclusive: bool,
    ) -> Result<Lock, RepoError> {
        Self::acquire_refreshing(location, kind, exclusive, REFRESH_EVERY).await
    }

    /// [`Lock::acquire`] with another refresh interval (tests of what a failed refresh does).
    pub async fn acquire_refreshing(
        location: &Location,
        kind: &str,
        exclusive: bool,
        refresh_every: Duration,
    ) -> Result<Lock, RepoError> {
        let name = format!(
            "{}-{}",
            jiff::Timestamp::now().as_millisecond(),
            hex::encode(super::crypto::random_bytes::<6>())
        );
        let key = layout::lock(location.prefix(), &name);
        location.put(&key, info(kind, exclusive)).await?;
        let mut lock = Lock {
            location: location.clone(),
            key: key.clone(),
            refresher: None,
            health: Arc::default(),
            last_refresh: Arc::new(Mutex::new(Instant::now())),
        };
        let (fresh, stale) = judge(location, &key).await?;
        if let Some(l) = fresh.iter().find(|l| exclusive || l.exclusive()) {
            let reason = format!("{} is in progress; retry later", l.describe());
            lock.release().await?;
            return Err(RepoError::Locked {
                location: location.name().into(),
                reason,
            });
        }
        if exclusive {
            location.delete_all(stale).await?;
        }
        let (location, kind) = (location.clone(), kind.to_string());
        let (health, last) = (lock.health.clone(), lock.last_refresh.clone());
        lock.refresher = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh_every).await;
                match location.put(&key, info(&kind, exclusive)).await {
                    Ok(()) => *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now(),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not refresh the repository lock");
                        health.lock().unwrap_or_else(|p| p.into_inner()).failure =
                            Some(e.to_string());
                        return;
                    }
                }
            }
        }));
        Ok(lock)
    }

    /// Whether the lock still protects its holder: refreshed without failure, and recently
    /// enough that nobody can have judged it stale. Checked before anything is committed.
    pub fn ensure_held(&self) -> Result<(), RepoError> {
        let lost = |why: String| RepoError::Locked {
            location: self.location.name().into(),
            reason: format!("{why}; nothing was committed"),
        };
        if let Some(e) = &self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure
        {
            return Err(lost(format!("the lock could not be refreshed ({e})")));
        }
        let since = self
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if since + REFRESH_EVERY >= STALE_AFTER {
            return Err(lost(format!(
                "the lock was last refreshed {} s ago, close to when others may judge it stale",
                since.as_secs()
            )));
        }
        Ok(())
    }

    pub async fn release(mut self) -> Result<(), RepoError> {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let key = std::mem::replace(&mut self.key, Path::from(""));
        self.location.delete(&key).await?;
        Ok(())
    }
}

impl Drop for Lock {
    /// A lock dropped without `release` (its task timed out or was cancelled) is removed in
    /// the background, so it never outlives its holder by more than one delete.
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if self.key.as_ref().is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (location, key) = (self.location.clone(), self.key.clone());
            handle.spawn(async move {
                if let Err(e) = location.delete(&key).await {
                    tracing::warn!(error = %e, "could not remove a dropped repository lock");
                }
            });
        }
    }
}
