//! Long work (assembling a point, copying it to the target, retention, a committed failover's
//! deletions) runs here, beside the reconciles, never inside one: a reconcile starts a job under
//! a key and observes its state on later passes; a job's end is announced on
//! [`Jobs::completions`] so that its owner is reconciled at once. A job lost with the process is
//! started again by the next pass from what the status shows, so every job must be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, broadcast};

/// What a job does; one job of each kind per owner at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Assemble a point from its parts and copy it to the target.
    FinishPoint,
    /// Copy the workload's points the target lacks.
    CatchUp,
    /// Retention in both locations.
    Prune,
    /// Remove the parts of a failed point.
    DiscardParts,
    /// Delete every point of a workload (a committed failover).
    ForgetWorkload,
    /// List the workloads a vault's target location holds.
    Discover,
}

/// Names one job: its owner (`namespace/name` of the workload it serves, or the uid of the
/// Failover whose commit it is) and its kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub owner: String,
    pub kind: JobKind,
}

impl JobKey {
    pub fn new(owner: impl Into<String>, kind: JobKind) -> Self {
        Self {
            owner: owner.into(),
            kind,
        }
    }
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}:{}", self.kind, self.owner)
    }
}

/// What a reconcile sees of a job.
#[derive(Clone, Debug, PartialEq)]
pub enum State<T> {
    Running,
    Done(T),
    Failed(String),
}

/// The workload's jobs have outcomes of several types: JSON, read back with [`Job::outcome`].
pub type JobState = State<serde_json::Value>;

/// A job as the reconciler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Job<T = serde_json::Value> {
    /// What the job works on (a point id, a workload): an outcome answers only the question
    /// it was started for.
    pub tag: String,
    pub started: Timestamp,
    pub finished: Option<Timestamp>,
    pub state: State<T>,
    /// The owner has recorded the outcome (its status was written): its events are not
    /// published again.
    pub recorded: bool,
    /// Why the job of this key failed the last time, while it is tried again.
    pub last_failure: Option<String>,
}

impl<T> Job<T> {
    /// A running job for tests and fakes.
    pub fn running(tag: &str, started: Timestamp) -> Self {
        Self {
            tag: tag.into(),
            started,
            finished: None,
            state: State::Running,
            recorded: false,
            last_failure: None,
        }
    }

    /// A failed job for tests and fakes.
    pub fn failed(tag: &str, finished: Timestamp, message: &str) -> Self {
        Self {
            finished: Some(finished),
            state: State::Failed(message.into()),
            ..Self::running(tag, finished)
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running)
    }
}

impl Job {
    /// A finished job for tests and fakes.
    pub fn done<T: Serialize>(tag: &str, started: Timestamp, outcome: &T) -> Self {
        Self {
            finished: Some(started),
            state: State::Done(serde_json::to_value(outcome).unwrap_or_default()),
            ..Job::running(tag, started)
        }
    }

    /// The outcome of a finished job, typed; `None` while running, after a failure, or when the
    /// outcome is not a `T`.
    pub fn outcome<T: DeserializeOwned>(&self) -> Option<T> {
        match &self.state {
            State::Done(v) => serde_json::from_value(v.clone()).ok(),
            _ => None,
        }
    }
}

/// How many admitted jobs ([`Jobs::start_admitted`]) run at once; the others wait their turn,
/// in the order they were started. Enough that their reads of the API server overlap (a
/// point's job reads the workload's definition before it writes); few enough to bound what
/// they hold: a running job of a point holds buffers and a repository's lock, a waiting one
/// nothing but its key. With thousands of workloads, a point that cannot run yet is queued,
/// not started, timed out and started again.
pub const ADMITTED: usize = 64;

/// The registry of jobs, shared by the controllers through the `Context`: outcomes of type `T`
/// under keys of type `K` (a [`JobKey`], or a plain string).
pub struct Jobs<T = serde_json::Value, K = String> {
    jobs: Arc<Mutex<HashMap<K, Job<T>>>>,
    completed: broadcast::Sender<K>,
    admission: Arc<Semaphore>,
}

impl<T, K: Clone> Default for Jobs<T, K> {
    fn default() -> Self {
        Self {
            jobs: Arc::default(),
            completed: broadcast::channel(256).0,
            admission: Arc::new(Semaphore::new(ADMITTED)),
        }
    }
}

impl<T, K> Jobs<T, K>
where
    T: Clone + Send + 'static,
    K: Clone + Eq + Hash + Send + 'static,
{
    /// The job of `key`, if one was started since the operator started.
    pub fn get(&self, key: &K) -> Option<Job<T>> {
        self.lock().get(key).cloned()
    }

    /// The state of the job under `key`.
    pub fn state(&self, key: &K) -> Option<State<T>> {
        self.lock().get(key).map(|j| j.state.clone())
    }

    /// When the job under `key` started.
    pub fn started(&self, key: &K) -> Option<Timestamp> {
        self.lock().get(key).map(|j| j.started)
    }

    /// Starts `work` under `key` unless a job runs under it; a finished job's outcome is
    /// replaced. Returns whether it started.
    pub fn start<F>(&self, key: &K, work: F) -> bool
    where
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        self.start_tagged(key.clone(), "", crate::clock::now(), work)
    }

    /// [`Jobs::start`] for work on `tag` (a point id…): an outcome answers only the question it
    /// was started for, and a failure is remembered while the same work is tried again. `now` is
    /// the start time the job reports.
    pub fn start_tagged<F>(&self, key: K, tag: &str, now: Timestamp, work: F) -> bool
    where
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        self.launch(key, tag, now, None, move || work)
    }

    /// [`Jobs::start_tagged`] for work that waits for one of [`ADMITTED`] turns: the job is
    /// `Running` at once (a pass sees it started), and `make` builds its work only when its
    /// turn comes, so a waiting job costs no more memory than its key.
    pub fn start_admitted<M, F>(&self, key: K, tag: &str, now: Timestamp, make: M) -> bool
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        let admission = self.admission.clone();
        self.launch(key, tag, now, Some(admission), make)
    }

    fn launch<M, F>(
        &self,
        key: K,
        tag: &str,
        now: Timestamp,
        admission: Option<Arc<Semaphore>>,
        make: M,
    ) -> bool
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = Result<T, String>> + Send + 'static,
    {
        let tag = tag.to_string();
        let mut jobs = self.lock();
        let last_failure = match jobs.get(&key) {
            Some(job) if job.is_running() => return false,
            Some(Job {
                state: State::Failed(message),
                tag: was,
                ..
            }) if *was == tag => Some(message.clone()),
            _ => None,
        };
        let job = Job {
            last_failure,
            ..Job::running(&tag, now)
        };
        jobs.insert(key.clone(), job);
        drop(jobs);
        let (jobs, completed) = (self.jobs.clone(), self.completed.clone());
        tokio::spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _turn = match admission {
                Some(s) => s.acquire_owned().await.ok(),
                None => None,
            };
            // Built now, on the heap: the task itself stays small while it waits.
            let work = Box::pin(make());
            let state = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
                Ok(Ok(v)) => State::Done(v),
                Ok(Err(message)) => State::Failed(message),
                Err(_) => State::Failed("the job panicked; it is tried again".into()),
            };
            finish(&jobs, &key, &tag, state);
            // Nobody listening is fine: the owner polls while a job runs.
            let _ = completed.send(key);
        });
        true
    }

    /// Marks the outcome of `key`'s job for `tag` as recorded by its owner.
    pub fn mark_recorded(&self, key: &K, tag: &str) {
        if let Some(job) = self.lock().get_mut(key)
            && job.tag == tag
            && !job.is_running()
        {
            job.recorded = true;
        }
    }

    /// Forgets the job under `key` (its object is gone).
    pub fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    /// The keys of jobs as they finish, for a controller's `reconcile_on` trigger.
    pub fn completions(&self) -> impl futures::Stream<Item = K> + Send + 'static {
        let receiver = self.completed.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(key) => return Some((key, receiver)),
                    // A slow consumer misses some: the owners' polling covers them.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Job<T>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records a job's end unless a newer job of the same key replaced it meanwhile.
fn finish<T, K: Eq + Hash>(jobs: &Mutex<HashMap<K, Job<T>>>, key: &K, tag: &str, state: State<T>) {
    let mut jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(job) = jobs.get_mut(key)
        && job.tag == tag
        && job.is_running()
    {
        job.state = state;
        job.finished = Some(crate::clock::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::store::fake::{FakePoint, FakeState, FakeStore};
    use crate::controllers::store::{Consistency, Finished, PointStore};
    use futures::StreamExt;
    use serde_json::json;
    use std::time::Duration;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + secs).unwrap()
    }

    async fn settled(jobs: &Jobs<serde_json::Value, JobKey>, key: &JobKey) -> Job {
        for _ in 0..200 {
            if let Some(job) = jobs.get(key).filter(|j| !j.is_running()) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("job {key:?} did not finish");
    }

    #[tokio::test]
    async fn a_job_runs_once_reports_its_outcome_and_announces_its_end() {
        let jobs: Jobs<serde_json::Value, JobKey> = Jobs::default();
        let mut ends = Box::pin(jobs.completions());
        let key = JobKey::new("ns/db", JobKind::CatchUp);
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        assert!(jobs.start_tagged(key.clone(), "p1", t(0), async move {
            let _ = wait.await;
            Ok::<_, String>(json!(7u64))
        }));
        // One job per key at a time.
        assert!(!jobs.start_tagged(key.clone(), "p1", t(1), async {
            Ok::<_, String>(json!(8u64))
        }));
        assert!(
            jobs.get(&key)
                .is_some_and(|j| j.is_running() && j.started == t(0))
        );
        go.send(()).unwrap();
        assert_eq!(ends.next().await, Some(key.clone()));
        let job = settled(&jobs, &key).await;
        assert_eq!(job.outcome::<u64>(), Some(7));
        assert!(!job.recorded);
        jobs.mark_recorded(&key, "another point");
        assert!(!jobs.get(&key).unwrap().recorded);
        jobs.mark_recorded(&key, "p1");
        assert!(jobs.get(&key).unwrap().recorded);
    }

    #[tokio::test]
    async fn admitted_jobs_beyond_their_turns_wait_unbuilt_and_run_in_order() {
        let jobs: Jobs<serde_json::Value, JobKey> = Jobs::default();
        let built = Arc::new(Mutex::new(Vec::new()));
        let mut release = Vec::new();
        for i in 0..ADMITTED + 2 {
            let (go, wait) = tokio::sync::oneshot::channel::<()>();
            release.push(go);
            let built = built.clone();
            let key = JobKey::new(format!("ns/w{i}"), JobKind::FinishPoint);
            assert!(jobs.start_admitted(key, "p", t(0), move || {
                built.lock().unwrap().push(i);
                async move {
                    let _ = wait.await;
                    Ok::<_, String>(json!(i))
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first: Vec<usize> = (0..ADMITTED).collect();
        assert_eq!(*built.lock().unwrap(), first, "only {ADMITTED} are built");
        let waiting = JobKey::new(format!("ns/w{ADMITTED}"), JobKind::FinishPoint);
        assert!(
            jobs.get(&waiting).unwrap().is_running(),
            "a queued job is running"
        );
        // One ends: the first in line is built next, not the last.
        release.remove(0).send(()).unwrap();
        settled(&jobs, &JobKey::new("ns/w0", JobKind::FinishPoint)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(built.lock().unwrap().last(), Some(&ADMITTED));
        assert_eq!(built.lock().unwrap().len(), ADMITTED + 1);
        for go in release {
            let _ = go.send(());
        }
        let last = JobKey::new(format!("ns/w{}", ADMITTED + 1), JobKind::FinishPoint);
        assert_eq!(
            settled(&jobs, &last).await.outcome::<usize>(),
            Some(ADMITTED + 1)
        );
    }

    #[tokio::test]
    async fn a_failed_job_is_started_again_and_remembers_why_it_failed() {
        let jobs: Jobs<serde_json::Value, JobKey> = Jobs::default();
        let key = JobKey::new("ns/db", JobKind::FinishPoint);
        jobs.start_tagged(key.clone(), "p1", t(0), async {
            Err::<serde_json::Value, _>("cache location: down".to_string())
        });
        let job = settled(&jobs, &key).await;
        assert_eq!(job.state, State::Failed("cache location: down".into()));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        jobs.start_tagged(key.clone(), "p1", t(5), async move {
            let _ = wait.await;
            Ok::<_, String>(json!(null))
        });
        let running = jobs.get(&key).unwrap();
        assert_eq!(
            running.last_failure.as_deref(),
            Some("cache location: down")
        );
        go.send(()).unwrap();
        assert_eq!(
            settled(&jobs, &key).await.last_failure,
            running.last_failure
        );
    }

    #[tokio::test]
    async fn a_panicking_job_fails_instead_of_running_forever() {
        let jobs: Jobs<serde_json::Value, JobKey> = Jobs::default();
        let key = JobKey::new("ns/db", JobKind::Prune);
        jobs.start_tagged(key.clone(), "p1", t(0), async {
            if true {
                panic!("boom");
            }
            Ok::<serde_json::Value, String>(json!(null))
        });
        assert!(matches!(settled(&jobs, &key).await.state, State::Failed(_)));
    }

    #[tokio::test]
    async fn a_point_is_finished_through_the_store_in_a_job() {
        let point = FakePoint {
            id: "p1".into(),
            workload: "ns/db".into(),
            time: t(0),
            consistency: Consistency::FileLevel,
            volumes: vec!["data-0".into()],
            bytes: 100,
        };
        let mut state = FakeState::default();
        state.parts.insert("p1".into(), point);
        let store: Arc<dyn PointStore> = Arc::new(FakeStore::with(state));
        let jobs: Jobs<serde_json::Value, JobKey> = Jobs::default();
        let key = JobKey::new("ns/db", JobKind::FinishPoint);
        let s = store.clone();
        jobs.start_tagged(key.clone(), "p1", t(0), async move {
            let done = s.finish_point("p1", &["n1".to_string()], None).await?;
            serde_json::to_value(done).map_err(|e| e.to_string())
        });
        let finished: Finished = settled(&jobs, &key).await.outcome().unwrap();
        assert_eq!(finished.replicated, Ok(100));
        // Idempotent: finishing again copies nothing more.
        let again = store.finish_point("p1", &[], None).await.unwrap();
        assert_eq!(again.replicated, Ok(0));
        let listed = store.target_points("ns/db").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1, vec!["data-0".to_string()]);
        assert_eq!(store.forget_workload("ns/db").await, Ok(2));
    }
}

#[cfg(test)]
mod typed {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_once_per_key_and_its_outcome_is_kept() {
        let jobs: Jobs<u32> = Jobs::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = "a".to_string();
        assert!(jobs.start(&a, async move {
            rx.await.ok();
            Ok(7)
        }));
        assert!(!jobs.start(&a, async { Ok(8) }), "one at a time");
        assert_eq!(jobs.state(&a), Some(State::Running));
        tx.send(()).unwrap();
        for _ in 0..100 {
            if jobs.state(&a) != Some(State::Running) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(jobs.state(&a), Some(State::Done(7)));
        assert!(
            jobs.start(&a, async { Err("no".into()) }),
            "a finished job starts again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(jobs.state(&a), Some(State::Failed("no".into())));
        jobs.forget(&a);
        assert_eq!(jobs.state(&a), None);
    }
}
