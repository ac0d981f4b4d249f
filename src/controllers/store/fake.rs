//! An in-memory [`PointStore`] for tests: points and parts in two lists, locations that can be
//! made unreachable, and a log of the operations asked for.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;

use super::{Consistency, Finished, PointStore, Pruned, Retention, StoreError, TargetPoints};
use crate::api::workload::PointRef;

#[derive(Clone, Debug, PartialEq)]
pub struct FakePoint {
    pub id: String,
    pub workload: String,
    pub time: Timestamp,
    pub consistency: Consistency,
    pub volumes: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct FakeState {
    /// Points whose parts are written, by id, waiting to be assembled.
    pub parts: BTreeMap<String, FakePoint>,
    pub cache: Vec<FakePoint>,
    pub target: Vec<FakePoint>,
    pub cache_down: bool,
    pub target_down: bool,
    /// Operations in the order they were asked for (`finish <id>`, `prune <workload>`…).
    pub calls: Vec<String>,
    /// Origins of target points, by point id.
    pub origins: BTreeMap<String, crate::repository::format::Origin>,
    /// The newest fence of each workload.
    pub fences: BTreeMap<String, super::Fence>,
}

#[derive(Debug, Default)]
pub struct FakeStore {
    pub state: Mutex<FakeState>,
}

impl FakeStore {
    pub fn with(state: FakeState) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakeState {
    fn reachable(&self, cache: bool, target: bool) -> Result<(), StoreError> {
        if cache && self.cache_down {
            return Err(StoreError::Cache("unreachable".into()));
        }
        if target && self.target_down {
            return Err(StoreError::Target("unreachable".into()));
        }
        Ok(())
    }

    fn copy_missing(&mut self, workload: &str) -> Result<u64, StoreError> {
        self.reachable(false, true)?;
        let missing: Vec<FakePoint> = self
            .cache
            .iter()
            .filter(|p| p.workload == workload && !self.target.iter().any(|t| t.id == p.id))
            .cloned()
            .collect();
        let bytes = missing.iter().map(|p| p.bytes).sum();
        self.target.extend(missing);
        Ok(bytes)
    }

    fn finish(&mut self, point: &str) -> Result<Finished, StoreError> {
        self.reachable(true, false)?;
        let p = match self.cache.iter().find(|p| p.id == point) {
            Some(p) => p.clone(),
            None => self
                .parts
                .remove(point)
                .ok_or_else(|| StoreError::Assemble {
                    point: point.to_string(),
                    message: "a part has not been written".into(),
                })?,
        };
        if !self.cache.contains(&p) {
            self.cache.push(p.clone());
        }
        Ok(Finished {
            id: p.id.clone(),
            consistency: p.consistency,
            volumes: p.volumes.len(),
            bytes: p.bytes,
            replicated: self.copy_missing(&p.workload).map_err(String::from),
        })
    }

    fn prune(&mut self, workload: &str, retention: &Retention) -> Result<Pruned, StoreError> {
        self.reachable(true, true)?;
        let newest = self
            .cache
            .iter()
            .filter(|p| p.workload == workload)
            .map(|p| p.time)
            .max();
        let keep = |list: &mut Vec<FakePoint>| {
            let before = list.len();
            let mut mine: Vec<_> = list
                .iter()
                .filter(|p| p.workload == workload)
                .cloned()
                .collect();
            mine.sort_by_key(|p| std::cmp::Reverse(p.time));
            let doomed: Vec<String> = mine
                .iter()
                .skip(retention.keep_last)
                .filter(|p| {
                    newest.is_some_and(|n| {
                        n.duration_since(p.time).as_secs_f64() > retention.keep_within.as_secs_f64()
                    })
                })
                .map(|p| p.id.clone())
                .collect();
            list.retain(|p| !doomed.contains(&p.id));
            before - list.len()
        };
        let removed = keep(&mut self.cache);
        keep(&mut self.target);
        let mine: Vec<_> = self
            .cache
            .iter()
            .filter(|p| p.workload == workload)
            .collect();
        Ok(Pruned {
            removed,
            remaining: mine.len() as u32,
            oldest: mine.iter().map(|p| p.time).min(),
        })
    }
}

impl PointStore for FakeStore {
    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut s = self.lock();
        s.calls.push("ensure".into());
        let result = s.reachable(true, true);
        async move { result }.boxed()
    }

    fn finish_point<'a>(
        &'a self,
        point: &'a str,
        _parts: &'a [String],
        _origin: Option<&'a super::Origin>,
    ) -> BoxFuture<'a, Result<Finished, StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("finish {point}"));
        let result = s.finish(point);
        async move { result }.boxed()
    }

    fn catch_up<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("catch-up {workload}"));
        let result = s.copy_missing(workload);
        async move { result }.boxed()
    }

    fn prune<'a>(
        &'a self,
        workload: &'a str,
        retention: &'a Retention,
    ) -> BoxFuture<'a, Result<Pruned, StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("prune {workload}"));
        let result = s.prune(workload, retention);
        async move { result }.boxed()
    }

    fn discard_parts<'a>(&'a self, point: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("discard {point}"));
        s.parts.remove(point);
        async move { Ok(()) }.boxed()
    }

    fn target_points<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<TargetPoints, StoreError>> {
        let s = self.lock();
        let result = s.reachable(false, true).map(|()| {
            s.target
                .iter()
                .filter(|p| p.workload == workload)
                .map(|p| {
                    let point = PointRef {
                        id: p.id.clone(),
                        time: p.time,
                        replicated: true,
                        consistency: p.consistency.as_str().into(),
                    };
                    (point, p.volumes.clone())
                })
                .collect()
        });
        async move { result }.boxed()
    }

    fn forget_workload<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("forget {workload}"));
        let result = s.reachable(false, true).map(|()| {
            let before = s.target.len();
            s.target.retain(|p| p.workload != workload);
            let mut removed = before - s.target.len();
            if !s.cache_down {
                let before = s.cache.len();
                s.cache.retain(|p| p.workload != workload);
                removed += before - s.cache.len();
            }
            removed
        });
        async move { result }.boxed()
    }

    fn point_origin<'a>(
        &'a self,
        point: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::repository::format::Origin>, StoreError>> {
        let s = self.lock();
        let result = s
            .reachable(false, true)
            .map(|()| s.origins.get(point).cloned());
        async move { result }.boxed()
    }

    fn discover(
        &self,
    ) -> BoxFuture<'_, Result<Vec<crate::api::vault::DiscoveredWorkload>, StoreError>> {
        let s = self.lock();
        let result = s.reachable(false, true).map(|()| {
            let mut out: Vec<crate::api::vault::DiscoveredWorkload> = Vec::new();
            for p in &s.target {
                let (ns, name) = p.workload.split_once('/').unwrap_or(("", &p.workload));
                match out.iter_mut().find(|w| w.namespace == ns && w.name == name) {
                    Some(w) => {
                        w.points += 1;
                        if p.time >= w.latest_point_time {
                            w.latest_point = p.id.clone();
                            w.latest_point_time = p.time;
                        }
                    }
                    None => out.push(crate::api::vault::DiscoveredWorkload {
                        namespace: ns.into(),
                        name: name.into(),
                        points: 1,
                        latest_point: p.id.clone(),
                        latest_point_time: p.time,
                        fenced_by: s.fences.get(&p.workload).map(|f| f.cluster_name.clone()),
                        ..Default::default()
                    }),
                }
            }
            out
        });
        async move { result }.boxed()
    }

    fn fence_of<'a>(
        &'a self,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<super::Fence>, StoreError>> {
        let s = self.lock();
        let result = s
            .reachable(false, true)
            .map(|()| s.fences.get(workload).cloned());
        async move { result }.boxed()
    }

    fn fence<'a>(
        &'a self,
        workload: &'a str,
        request: &'a super::FenceRequest,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut s = self.lock();
        s.calls.push(format!("fence {workload}"));
        let result = s.reachable(false, true).map(|()| {
            let epoch = match s.fences.get(workload) {
                Some(f) if f.failover_uid == request.failover_uid => f.epoch,
                Some(f) => f.epoch + 1,
                None => 1,
            };
            s.fences.insert(
                workload.to_string(),
                super::Fence {
                    workload: workload.to_string(),
                    cluster_uid: request.cluster_uid.clone(),
                    cluster_name: request.cluster_name.clone(),
                    failover_uid: request.failover_uid.clone(),
                    time: request.time.to_string(),
                    epoch,
                },
            );
            epoch
        });
        async move { result }.boxed()
    }
}
