//! Markers of writers in flight. Snapshot and replicate take shared locks; prune's garbage
//! collection takes an exclusive one and deletes no data while any other lock is fresh, so it
//! can never delete a chunk an in-flight snapshot has just decided to reuse.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RepoError;
use crate::storage::{Location, layout};

/// A lock not refreshed for this long belongs to a dead writer.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LockInfo {
    pub kind: String,
    pub exclusive: bool,
    pub host: String,
    pub pid: u32,
    /// Unix seconds of the last refresh.
    pub refreshed: i64,
}

pub struct Lock {
    location: Location,
    name: String,
    refresher: tokio::task::JoinHandle<()>,
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn info(kind: &str, exclusive: bool) -> LockInfo {
    LockInfo {
        kind: kind.into(),
        exclusive,
        host: std::env::var("HOSTNAME")
            .or_else(|_| std::env::var("NODE_NAME"))
            .unwrap_or_else(|_| "unknown".into()),
        pid: std::process::id(),
        refreshed: now_secs(),
    }
}

/// Fresh locks other than `except`.
pub async fn fresh_locks(
    location: &Location,
    except: Option<&str>,
) -> Result<Vec<(String, LockInfo)>, RepoError> {
    let mut out = Vec::new();
    for (key, _) in location
        .list(&layout::dir(location.prefix(), layout::LOCKS))
        .await?
    {
        let name = key.filename().unwrap_or_default().to_string();
        if Some(name.as_str()) == except {
            continue;
        }
        let Ok(bytes) = location.get(&key).await else {
            continue;
        };
        let Ok(lock) = serde_json::from_slice::<LockInfo>(&bytes) else {
            continue;
        };
        if now_secs() - lock.refreshed < STALE_AFTER.as_secs() as i64 {
            out.push((name, lock));
        }
    }
    Ok(out)
}

impl Lock {
    /// Takes a lock. A shared lock fails while an exclusive one is fresh; an exclusive lock
    /// fails while any other lock is fresh. Both sides write first and check second, so two
    /// racing writers cannot both pass.
    pub async fn acquire(
        location: &Location,
        kind: &str,
        exclusive: bool,
    ) -> Result<Lock, RepoError> {
        let name = format!(
            "{}-{}",
            jiff::Timestamp::now().as_millisecond(),
            hex::encode(super::crypto::random_bytes::<6>())
        );
        let key = layout::lock(location.prefix(), &name);
        location
            .put(
                &key,
                Bytes::from(serde_json::to_vec(&info(kind, exclusive)).expect("lock serializes")),
            )
            .await?;
        let others = fresh_locks(location, Some(&name)).await?;
        let blocking: Vec<_> = others
            .iter()
            .filter(|(_, l)| exclusive || l.exclusive)
            .collect();
        if let Some((_, l)) = blocking.first() {
            location.delete(&key).await?;
            return Err(RepoError::Locked {
                location: location.name().into(),
                reason: format!(
                    "{} by {} (pid {}) is in progress; retry later",
                    l.kind, l.host, l.pid
                ),
            });
        }
        let refresher = {
            let location = location.clone();
            let key = key.clone();
            let kind = kind.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH_EVERY).await;
                    let body = Bytes::from(
                        serde_json::to_vec(&info(&kind, exclusive)).expect("lock serializes"),
                    );
                    if let Err(e) = location.put(&key, body).await {
                        tracing::warn!(error = %e, "could not refresh the repository lock");
                    }
                }
            })
        };
        Ok(Lock {
            location: location.clone(),
            name,
            refresher,
        })
    }

    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        self.location
            .delete(&layout::lock(self.location.prefix(), &self.name))
            .await?;
        Ok(())
    }
}
