//! The loop the capture and restore sides share: a cache of every `K`, scanned every `every`
//! and whenever a task ends, with the work started from it and the tasks running that work.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::task::JoinSet;

use super::registration::Reports;
use crate::api::work::WorkKind;

/// Work by (report key, point).
pub(super) type WorkKey = (String, String);

pub(super) struct Scan<K: kube::Resource<DynamicType = ()> + 'static> {
    pub(super) store: Store<DeserializeGuard<K>>,
    pub(super) tasks: JoinSet<()>,
    /// The work started and still in flight: not started again.
    pub(super) started: HashSet<WorkKey>,
    watch: Pin<Box<dyn Future<Output = ()> + Send>>,
    ticker: tokio::time::Interval,
}

impl<K> Scan<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// `project` keeps of each object what the pass reads (see [`crate::cache`]).
    pub(super) fn new(
        client: &kube::Client,
        every: Duration,
        project: fn(&mut DeserializeGuard<K>),
    ) -> Self {
        let api = kube::Api::<DeserializeGuard<K>>::all(client.clone());
        let (store, writer) = reflector::store();
        // Keeps the cache filled; it ends only if the watch does.
        // Only what the pass reads is kept: the cache holds every such object of the cluster.
        let watch = reflector(
            writer,
            watcher(api, watcher::Config::default()).modify(project),
        )
        .default_backoff()
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
        Self {
            store,
            tasks: JoinSet::new(),
            started: HashSet::new(),
            watch: Box::pin(watch),
            ticker: tokio::time::interval(every),
        }
    }

    /// Ends the scan when `other` ends too (another cache the pass reads).
    pub(super) fn watch_too(&mut self, other: impl Future<Output = ()> + Send + 'static) {
        let first = std::mem::replace(&mut self.watch, Box::pin(futures::future::pending()));
        self.watch = Box::pin(async move {
            futures::future::select(first, Box::pin(other)).await;
        });
    }

    /// Waits for the next pass: the next tick, or a task's end. False once the watch has ended.
    pub(super) async fn next_pass(&mut self) -> bool {
        tokio::select! {
            () = &mut self.watch => return false,
            _ = self.ticker.tick() => {}
            Some(_) = self.tasks.join_next() => {}
        }
        true
    }

    /// Ends a pass: forgets the work, and the reports of `kind`, that are no longer in flight.
    pub(super) fn end_pass(
        &mut self,
        in_flight: &HashSet<WorkKey>,
        reports: &Reports,
        kind: WorkKind,
    ) {
        self.started.retain(|k| in_flight.contains(k));
        reports
            .retain(|k, w| w.kind != kind || in_flight.contains(&(k.to_string(), w.point.clone())));
    }
}
