//! The three controllers and what triggers each: its own kind's changes, and the changes of
//! other kinds that the kind's pure `triggers` map to its objects.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{Lookup, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::Shutdown;
use super::reflectors::{Reflector, fingerprint_changed, fingerprint_of, touched};
use super::report::{begin, error_policy, finish, invalid_object};
use crate::api::work::FAILOVER_UID_LABEL;
use crate::api::workload::WorkloadKind;
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload, registration};
use crate::cache;
use crate::controllers::context::Stores;
use crate::controllers::{self, Context, failover, vault, workload};

/// The operator's watched kinds, one shared reflector each.
pub struct Reflectors {
    pub vaults: Reflector<DeserializeGuard<RecoveryVault>>,
    pub workloads: Reflector<DeserializeGuard<ReplicatedWorkload>>,
    pub failovers: Reflector<DeserializeGuard<Failover>>,
    pub nodes: Reflector<PartialObjectMeta<Node>>,
    /// Guarded like the custom resources: one Lease our types cannot read (a renewTime past
    /// what a timestamp holds) must not stop the watch of every other registration.
    pub registrations: Reflector<DeserializeGuard<Lease>>,
    /// What workloads are observed from: pods (with the index of whose they are), claims,
    /// Deployments and StatefulSets, each as [`cache`] keeps them.
    pub pods: Reflector<Pod>,
    pub pod_index: Arc<cache::PodIndex>,
    pub claims: Reflector<PartialObjectMeta<PersistentVolumeClaim>>,
    pub deployments: Reflector<Deployment>,
    pub stateful_sets: Reflector<StatefulSet>,
    pub services: Reflector<Service>,
}

impl Reflectors {
    pub fn new() -> Self {
        Self {
            vaults: Reflector::new(),
            workloads: Reflector::new(),
            failovers: Reflector::new(),
            nodes: Reflector::new(),
            registrations: Reflector::new(),
            pods: Reflector::new(),
            pod_index: Default::default(),
            claims: Reflector::new(),
            deployments: Reflector::new(),
            stateful_sets: Reflector::new(),
            services: Reflector::new(),
        }
    }

    pub fn stores(&self) -> Stores {
        Stores {
            vaults: self.vaults.store(),
            workloads: self.workloads.store(),
            failovers: self.failovers.store(),
            nodes: self.nodes.store(),
            registrations: self.registrations.store(),
            pods: self.pods.store(),
            pod_index: self.pod_index.clone(),
            claims: self.claims.store(),
            deployments: self.deployments.store(),
            stateful_sets: self.stateful_sets.store(),
            services: self.services.store(),
            decoded: Default::default(),
        }
    }

    /// The watches behind the caches; they run until the process ends.
    pub fn run(
        self,
        client: &Client,
        operator_namespace: &str,
    ) -> impl Future<Output = ()> + use<> {
        let wc = watcher::Config::default();
        let registrations = wc.clone().labels(&registration::selector());
        let leases = Api::namespaced(client.clone(), operator_namespace);
        let index = self.pod_index.clone();
        // Each watch on the heap: together their states would not fit a thread's stack.
        let watches: Vec<futures::future::BoxFuture<'static, ()>> = vec![
            self.vaults.run(
                "recoveryvaults",
                Api::all(client.clone()),
                wc.clone(),
                cache::trim,
            ),
            self.workloads.run(
                "replicatedworkloads",
                Api::all(client.clone()),
                wc.clone(),
                cache::trim,
            ),
            self.failovers.run(
                "failovers",
                Api::all(client.clone()),
                wc.clone(),
                cache::trim,
            ),
            self.nodes
                .run("nodes", Api::all(client.clone()), wc.clone(), cache::trim),
            self.registrations
                .run("registrations", leases, registrations, cache::trim),
            self.pods.run_indexed(
                "pods",
                Api::all(client.clone()),
                wc.clone(),
                cache::pod,
                move |event| index.apply(event),
            ),
            self.claims.run(
                "persistentvolumeclaims",
                Api::all(client.clone()),
                wc.clone(),
                cache::claim,
            ),
            self.deployments.run(
                "deployments",
                Api::all(client.clone()),
                wc.clone(),
                cache::deployment,
            ),
            self.stateful_sets.run(
                "statefulsets",
                Api::all(client.clone()),
                wc.clone(),
                cache::stateful_set,
            ),
            self.services
                .run("services", Api::all(client.clone()), wc, cache::service),
        ];
        async move {
            future::join_all(watches).await;
        }
    }
}

/// A trigger mapper over a store: `map` sees the changed object and the store's contents then.
fn over<K, A, R>(
    store: &Store<K>,
    map: impl Fn(&A, &[Arc<K>]) -> R + Send + Sync + 'static,
) -> impl Fn(Arc<A>) -> R + Send + Sync + 'static
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let store = store.clone();
    move |changed| map(&changed, &store.state())
}

/// How many objects of one kind are reconciled at once; the others wait in the controller's
/// queue, each once however often it was asked for. Unbounded, a cold start or a relist of
/// thousands of workloads holds thousands of reconciles in memory at once, each with its own
/// reads and buffers, for no gain on two cores: a reconcile reads caches and writes a status.
const CONCURRENT_RECONCILES: u16 = 128;

/// Runs a controller of one kind until shutdown: metrics and backoff around the kind's
/// `reconcile`, malformed objects reported instead of reconciled, failures retried by the
/// kind's error policy.
macro_rules! serve {
    ($controller:expr, $kind:ident, $ctx:expr, $shutdown:expr) => {
        $controller
            .with_config(
                kube::runtime::controller::Config::default().concurrency(CONCURRENT_RECONCILES),
            )
            .graceful_shutdown_on($shutdown.wait())
            .run(
                |obj, ctx| async move {
                    let started = begin(&ctx, controllers::$kind::CONTROLLER);
                    let result = match &obj.0 {
                        Ok(k) => controllers::$kind::reconcile(k, ctx.clone()).await,
                        Err(invalid) => invalid_object(&ctx, obj.as_ref(), &invalid.error).await,
                    };
                    let kind = controllers::$kind::CONTROLLER;
                    finish(&ctx, kind, obj.as_ref(), started, &result);
                    result
                },
                |obj, err, ctx| error_policy(obj, err, ctx, controllers::$kind::CONTROLLER),
                $ctx,
            )
            .for_each(|_| future::ready(()))
    };
}

/// Vaults: their own changes, and node label changes and removals (zones and regions decide
/// separation).
pub fn vaults(
    r: &Reflectors,
    ctx: Arc<Context>,
    shutdown: &Shutdown,
) -> impl Future<Output = ()> + use<> {
    let store = r.vaults.store();
    let on_node = |_: &PartialObjectMeta<Node>, vaults: &[_]| vault::triggers::on_node(vaults);
    // A listing of the target location that ends is shown at once.
    let listed = {
        let store = store.clone();
        ctx.jobs.completions().filter_map(move |key| {
            let found = (key.kind == crate::controllers::jobs::JobKind::Discover)
                .then(|| {
                    store.state().iter().find_map(|v| {
                        let v = v.0.as_ref().ok()?;
                        (v.metadata.uid.as_deref() == Some(key.owner.as_str())).then(|| {
                            kube::runtime::reflector::ObjectRef::new(&ResourceExt::name_any(v))
                                .within(&ResourceExt::namespace(v).unwrap_or_default())
                        })
                    })
                })
                .flatten();
            futures::future::ready(found)
        })
    };
    let controller = Controller::for_shared_stream(r.vaults.applied(), store.clone())
        // Node heartbeats would otherwise re-run every vault every few seconds.
        .watches_shared_stream(
            fingerprint_changed(r.nodes.applied(), r.nodes.deleted(), |n| {
                fingerprint_of(&n.metadata.labels)
            }),
            over(&store, on_node),
        )
        .reconcile_on(listed);
    serve!(controller, vault, ctx, shutdown)
}

/// Workloads: their own changes, their vault, their Failovers, agent registrations, and their
/// pods.
pub fn workloads(
    r: &Reflectors,
    ctx: Arc<Context>,
    shutdown: &Shutdown,
) -> impl Future<Output = ()> + use<> {
    let store = r.workloads.store();
    // What a workload reads of its pods: whose they are, their node and claims, deletion.
    let pods = fingerprint_changed(r.pods.applied(), r.pods.deleted(), |p| {
        fingerprint_of((
            &p.metadata.labels,
            &p.metadata.owner_references,
            &p.metadata.deletion_timestamp,
            &p.spec,
        ))
    });
    let claims = fingerprint_changed(r.claims.applied(), r.claims.deleted(), |_| 0);
    let deployments = fingerprint_changed(r.deployments.applied(), r.deployments.deleted(), |d| {
        fingerprint_of(d.spec.as_ref().map(|s| &s.selector))
    });
    let stateful_sets =
        fingerprint_changed(r.stateful_sets.applied(), r.stateful_sets.deleted(), |s| {
            fingerprint_of(s.spec.as_ref().map(|s| &s.selector))
        });
    let seen = Arc::new(workload::triggers::Registrations::default());
    let gone = seen.clone();
    let controller = Controller::for_shared_stream(r.workloads.applied(), store.clone())
        .watches_shared_stream(
            r.vaults.changes(),
            over(&store, workload::triggers::of_vault),
        )
        .watches_shared_stream(r.failovers.applied(), |f| {
            workload::triggers::of_failover(&f)
        })
        .watches_shared_stream(
            r.registrations.applied(),
            over(&store, move |l, w| seen.changed(l, w)),
        )
        .watches_shared_stream(
            r.registrations.deleted(),
            over(&store, move |l, w| gone.deleted(l, w)),
        )
        .watches_shared_stream(
            pods,
            over(&store, |p: &Pod, w: &[_]| workload::triggers::of_pod(p, w)),
        )
        .watches_shared_stream(
            claims,
            over(
                &store,
                |c: &PartialObjectMeta<PersistentVolumeClaim>, w: &[_]| {
                    workload::triggers::of_claim(c, w)
                },
            ),
        )
        .watches_shared_stream(
            deployments,
            over(&store, |d: &Deployment, w: &[_]| {
                workload::triggers::of_workload_object(WorkloadKind::Deployment, d, w)
            }),
        )
        .watches_shared_stream(
            stateful_sets,
            over(&store, |s: &StatefulSet, w: &[_]| {
                workload::triggers::of_workload_object(WorkloadKind::StatefulSet, s, w)
            }),
        )
        // A data-path job that ends moves its workload on.
        .reconcile_on(workload::job_triggers(&ctx));
    serve!(controller, workload, ctx, shutdown)
}

/// Failovers: their own changes, their workload, their siblings (only one may act), agents'
/// restore reports, and the pods they made.
pub fn failovers(
    r: &Reflectors,
    ctx: Arc<Context>,
    shutdown: &Shutdown,
) -> impl Future<Output = ()> + use<> {
    let store = r.failovers.store();
    let pods = touched(
        "failover pods",
        Api::<PartialObjectMeta<Pod>>::all(ctx.client.clone()),
        watcher::Config::default().labels(FAILOVER_UID_LABEL),
    );
    let controller = Controller::for_shared_stream(r.failovers.applied(), store.clone())
        .watches_shared_stream(
            r.workloads.changes(),
            over(&store, failover::triggers::of_workload),
        )
        .watches_shared_stream(
            r.failovers.changes(),
            over(&store, failover::triggers::siblings),
        )
        .watches_shared_stream(
            r.registrations.applied(),
            over(&store, failover::triggers::restoring),
        )
        .watches_shared_stream(pods, over(&store, failover::triggers::of_pod));
    serve!(controller, failover, ctx, shutdown)
}
