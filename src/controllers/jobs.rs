//! Long work (storage deletions, copies) runs here, beside the reconciles, never inside one: a
//! reconcile starts a job under a key and observes its state on later passes. A job lost with
//! the process is started again by the next pass from what the status shows, so every job must
//! be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

/// What a reconcile sees of a job.
#[derive(Clone, Debug, PartialEq)]
pub enum State<T> {
    Running,
    Done(T),
    Failed(String),
}

struct Entry<T> {
    state: State<T>,
    started: Timestamp,
}

/// Jobs by key; at most one running per key.
pub struct Jobs<T> {
    entries: Arc<Mutex<HashMap<String, Entry<T>>>>,
}

impl<T> Default for Jobs<T> {
    fn default() -> Self {
        Jobs {
            entries: Arc::default(),
        }
    }
}

impl<T: Clone + Send + 'static> Jobs<T> {
    /// The state of the job under `key`, if one was started since this process began.
    pub fn state(&self, key: &str) -> Option<State<T>> {
        self.entries
            .lock()
            .expect("jobs lock")
            .get(key)
            .map(|e| e.state.clone())
    }

    /// When the job under `key` started.
    pub fn started(&self, key: &str) -> Option<Timestamp> {
        self.entries
            .lock()
            .expect("jobs lock")
            .get(key)
            .map(|e| e.started)
    }

    /// Starts `work` under `key` unless a job runs under it; a finished job's outcome is
    /// replaced. Returns whether it started.
    pub fn start<F>(&self, key: &str, work: F) -> bool
    where
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        {
            let mut entries = self.entries.lock().expect("jobs lock");
            if matches!(entries.get(key), Some(e) if matches!(e.state, State::Running)) {
                return false;
            }
            entries.insert(
                key.to_string(),
                Entry {
                    state: State::Running,
                    started: crate::clock::now(),
                },
            );
        }
        let entries = self.entries.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let state = match work.await {
                Ok(v) => State::Done(v),
                Err(e) => State::Failed(e),
            };
            if let Some(e) = entries.lock().expect("jobs lock").get_mut(&key) {
                e.state = state;
            }
        });
        true
    }

    /// Forgets the job under `key` (its object is gone).
    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("jobs lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_once_per_key_and_its_outcome_is_kept() {
        let jobs: Jobs<u32> = Jobs::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(jobs.start("a", async move {
            rx.await.ok();
            Ok(7)
        }));
        assert!(!jobs.start("a", async { Ok(8) }), "one at a time");
        assert_eq!(jobs.state("a"), Some(State::Running));
        tx.send(()).unwrap();
        for _ in 0..100 {
            if jobs.state("a") != Some(State::Running) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(jobs.state("a"), Some(State::Done(7)));
        assert!(
            jobs.start("a", async { Err("no".into()) }),
            "a finished job starts again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(jobs.state("a"), Some(State::Failed("no".into())));
        jobs.forget("a");
        assert_eq!(jobs.state("a"), None);
    }
}
