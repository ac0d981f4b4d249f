//! The operator's shared reflectors: one watch per kind feeds one cache that every controller
//! reads, and hands each subscriber the kind's changes, deletions included.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt, future};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// One watched kind: its cache, and the streams of its changes for the controllers. Every
/// subscription is made before [`Reflector::run`] (which consumes it), so none misses an event.
pub struct Reflector<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    store: Store<K>,
    deletes: broadcast::Sender<Arc<K>>,
}

impl<K> Reflector<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    pub fn new() -> Self {
        let (store, writer) = reflector::store_shared(1024);
        let (deletes, _) = broadcast::channel(256);
        Self {
            writer,
            store,
            deletes,
        }
    }

    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Objects as they are added or modified.
    pub fn applied(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.writer
            .subscribe()
            .expect("a shared store accepts subscribers")
    }

    /// Objects as they are deleted: shared-store subscribers see only applied objects, yet a
    /// deleted vault, workload, failover, node or registration changes what its dependents
    /// should report.
    pub fn deleted(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::unfold(self.deletes.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(obj) => return Some((obj, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Objects as they are added, modified or deleted.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::select(self.applied(), self.deleted())
    }

    /// Watches `api`, filling the cache and passing changes on, until the process ends; watch
    /// errors are logged (the watcher retries them with backoff). Every object is `project`ed
    /// to what the operator reads of its kind (one of [`crate::cache`]'s projections; [`crate::cache::trim`]
    /// for kinds kept whole) before it enters the cache.
    pub fn run(
        self,
        name: &'static str,
        api: Api<K>,
        config: watcher::Config,
        project: fn(&mut K),
    ) -> BoxFuture<'static, ()> {
        self.run_indexed(name, api, config, project, |_| {})
    }

    /// [`Self::run`], with `index` shown every event just before the cache is, so that an
    /// index kept beside the cache is never behind a reconcile the cache's change triggers.
    pub fn run_indexed(
        self,
        name: &'static str,
        api: Api<K>,
        config: watcher::Config,
        project: fn(&mut K),
        index: impl Fn(&watcher::Event<K>) + Send + 'static,
    ) -> BoxFuture<'static, ()> {
        let deletes = self.deletes;
        Box::pin(
            watcher(api, config)
                .default_backoff()
                .modify(project)
                .map_ok(move |event| {
                    index(&event);
                    event
                })
                .reflect_shared(self.writer)
                .for_each(move |event| {
                    match event {
                        Ok(watcher::Event::Delete(obj)) => {
                            let _ = deletes.send(Arc::new(obj));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(watch = name, error = %e, "watch failed; retrying")
                        }
                    }
                    future::ready(())
                }),
        )
    }
}

/// Passes on the objects whose `fingerprint` changed since they were last seen, and every
/// deletion: a pod's readiness or a Deployment's rollout status changes nothing a workload
/// reads, and would otherwise reconcile it each time.
pub fn fingerprint_changed<K>(
    applied: impl Stream<Item = Arc<K>> + Send + 'static,
    deleted: impl Stream<Item = Arc<K>> + Send + 'static,
    fingerprint: fn(&K) -> u64,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource + Send + Sync + 'static,
{
    let key = |o: &K| {
        let meta = o.meta();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    futures::stream::select(applied.map(|o| (o, true)), deleted.map(|o| (o, false))).filter_map(
        move |(object, applied)| {
            let changed = if applied {
                let print = fingerprint(&object);
                seen.insert(key(&object), print) != Some(print)
            } else {
                seen.remove(&key(&object));
                true
            };
            future::ready(changed.then_some(object))
        },
    )
}

/// A fingerprint of the serialized fields `pick` chooses.
pub fn fingerprint_of<T: serde::Serialize>(pick: T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_vec(&pick)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Objects of a watch the operator keeps no cache of (pods), as they change; watch errors are
/// logged (the watcher retries them with backoff).
pub fn touched<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .touched_objects()
        .filter_map(move |r| {
            future::ready(match r {
                Ok(obj) => Some(Arc::new(obj)),
                Err(e) => {
                    tracing::warn!(watch = name, error = %e, "watch failed; retrying");
                    None
                }
            })
        })
}
