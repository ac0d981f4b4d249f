//! `site-recovery operator`: shared reflectors, the three controllers, leader election on a
//! Lease, the health and metrics server, graceful shutdown.

pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

use crate::api::reasons::EventReason;
use crate::api::registration;
use crate::api::{Failover, RecoveryVault, ReplicatedWorkload};
use crate::controllers::context::Stores;
use crate::controllers::{self, Context, Error, FIELD_MANAGER, PlannedEvent, publish_events};
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the operator: its Lease and the agent registrations live here.
    pub namespace: String,
    pub leader_election: bool,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// Lease duration in seconds.
    pub lease_duration: u64,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; none when `None`.
    pub http_addr: Option<SocketAddr>,
    /// Image of the pods that mount snapshot claims for agents to read (they run nothing).
    pub reader_image: String,
    /// Where vaults may put their storage (the chart's storage root, endpoints, identity).
    pub storage: crate::storage::StorageRules,
}

/// The reader pods only hold a mount: the smallest image that sleeps.
pub const DEFAULT_READER_IMAGE: &str = "registry.k8s.io/pause:3.10";

impl Settings {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            leader_election: true,
            lease_name: "site-recovery-operator".into(),
            identity: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("site-recovery-{}", std::process::id())),
            lease_duration: 15,
            http_addr: None,
            reader_image: std::env::var("SITE_RECOVERY_READER_IMAGE")
                .unwrap_or_else(|_| DEFAULT_READER_IMAGE.into()),
            storage: Default::default(),
        }
    }
}

/// A cloneable "stop now" signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Runs the operator until `shutdown` fires. With leader election, controllers start only once
/// this replica holds the Lease, and the operator returns an error if it loses it (the pod then
/// restarts as a standby rather than risk two writers).
pub async fn run(client: Client, settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(http::Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let server = match settings.http_addr {
        Some(addr) => {
            let (bound, task) = http::serve(addr, health.clone(), shutdown.wait()).await?;
            tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
            Some(task)
        }
        None => None,
    };

    let result = if settings.leader_election {
        run_as_leader(
            client,
            &settings,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
    } else {
        metrics.leader.set(1);
        run_controllers(
            client,
            &settings,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
    };
    metrics.leader.set(0);
    if let Some(server) = server {
        server.abort();
    }
    result
}

async fn run_as_leader(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    health: Arc<http::Health>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration)
        .with_grace((settings.lease_duration / 3).max(1))
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is ready: it serves probes and waits for the Lease.
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %settings.identity, lease = %settings.lease_name, "waiting for leadership");
    let became_leader = tokio::select! {
        r = leader.wait_for(|l| *l) => r.is_ok(),
        () = shutdown.wait() => false,
    };
    let result = if became_leader {
        tracing::info!(identity = %settings.identity, "leading");
        metrics.leader.set(1);
        let mut lost = leader.clone();
        tokio::select! {
            r = run_controllers(client, settings, metrics, health, shutdown.clone()) => r,
            _ = lost.wait_for(|l| !*l) => Err(anyhow::anyhow!("lost the leader Lease {}; exiting so that one leader remains", settings.lease_name)),
        }
    } else {
        Ok(())
    };
    // Dropping the channel ends the lease task, which releases the Lease for a quick hand-over.
    drop(leader);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "could not release the leader Lease");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
        Err(e) => tracing::warn!(error = %e, "leader election task failed"),
    }
    result
}

/// Creates or updates the CRDs with server-side apply and waits until the API serves them.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| anyhow::anyhow!("CRD {name} was not established within 30s"))??;
        tracing::info!(crd = %name, "CRD installed");
    }
    Ok(())
}

/// Polls a shared reflector's root stream, logging watch errors (the watcher retries them) and
/// passing deleted objects on: shared-store subscribers see only applied objects, yet a deleted
/// vault, workload, failover, node or registration changes what its dependents should report.
fn drive<S, K>(
    name: &'static str,
    stream: S,
    deletes: broadcast::Sender<Arc<K>>,
) -> impl Future<Output = ()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    stream.for_each(move |r| {
        match r {
            Ok(watcher::Event::Delete(obj)) => {
                let _ = deletes.send(Arc::new(obj));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(watch = name, error = %e, "watch failed; retrying"),
        }
        future::ready(())
    })
}

/// The objects deleted from a shared store, as a trigger stream for `watches_stream`.
fn deleted<K>(
    tx: &broadcast::Sender<Arc<K>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Clone + Send + Sync + 'static,
{
    futures::stream::unfold(tx.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(obj) => return Some((Ok((*obj).clone()), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// The reconcile function of one kind: metrics and backoff around the kind's `reconcile`, and
/// malformed objects reported instead of reconciled.
macro_rules! reconciler {
    ($kind:ident) => {
        |obj, ctx| async move {
            let started = begin(&ctx, controllers::$kind::CONTROLLER);
            let result = match &obj.0 {
                Ok(k) => controllers::$kind::reconcile(k, ctx.clone()).await,
                Err(invalid) => invalid_object(&ctx, obj.as_ref(), &invalid.error).await,
            };
            finish(
                &ctx,
                controllers::$kind::CONTROLLER,
                obj.as_ref(),
                started,
                &result,
            );
            result
        }
    };
}

/// What every reconcile of this operator shares. Public so that tests can run one reconcile of
/// a kind against caches they fill themselves.
pub fn context(
    client: Client,
    settings: &Settings,
    stores: Stores,
    metrics: Arc<Metrics>,
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    Arc::new(Context {
        client,
        recorder,
        stores,
        metrics,
        backoffs: Default::default(),
        namespace: settings.namespace.clone(),
        reader_image: settings.reader_image.clone(),
        storage: settings.storage.clone(),
        swept: Default::default(),
        commits: Default::default(),
        jobs: Default::default(),
        point_stores: Default::default(),
    })
}

fn guarded_ok<K: Clone>(g: &DeserializeGuard<K>) -> Option<&K> {
    g.0.as_ref().ok()
}

async fn run_controllers(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    health: Arc<http::Health>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let wc = watcher::Config::default();
    let (vaults, vault_writer) = reflector::store_shared::<DeserializeGuard<RecoveryVault>>(1024);
    let (workloads, workload_writer) =
        reflector::store_shared::<DeserializeGuard<ReplicatedWorkload>>(1024);
    let (failovers, failover_writer) = reflector::store_shared::<DeserializeGuard<Failover>>(1024);
    let (nodes, node_writer) = reflector::store_shared::<PartialObjectMeta<Node>>(1024);
    // Guarded like the custom resources: one Lease our types cannot read (a renewTime past what
    // a timestamp holds) must not stop the watch of every other registration.
    let (registrations, registration_writer) =
        reflector::store_shared::<DeserializeGuard<Lease>>(1024);
    let (vault_deletes, _) = broadcast::channel(256);
    let (workload_deletes, _) = broadcast::channel(256);
    let (failover_deletes, _) = broadcast::channel(256);
    let (node_deletes, _) = broadcast::channel(256);
    let (registration_deletes, _) = broadcast::channel(256);

    let subscribe = "a shared store accepts subscribers";
    let vault_main = vault_writer.subscribe().expect(subscribe);
    let vault_for_workloads = vault_writer.subscribe().expect(subscribe);
    let workload_main = workload_writer.subscribe().expect(subscribe);
    let workload_for_failovers = workload_writer.subscribe().expect(subscribe);
    let failover_main = failover_writer.subscribe().expect(subscribe);
    let failover_for_siblings = failover_writer.subscribe().expect(subscribe);
    let failover_for_workloads = failover_writer.subscribe().expect(subscribe);
    let node_for_vaults = node_writer.subscribe().expect(subscribe);
    let registration_for_workloads = registration_writer.subscribe().expect(subscribe);
    let registration_for_failovers = registration_writer.subscribe().expect(subscribe);
    // Subscribe to deletions before the roots start, so that none is missed.
    let vaults_deleted = deleted(&vault_deletes);
    let workloads_deleted = deleted(&workload_deletes);
    let failovers_deleted = deleted(&failover_deletes);
    let nodes_deleted = deleted(&node_deletes);
    let registrations_deleted = deleted(&registration_deletes);

    let roots = future::join5(
        drive(
            "recoveryvaults",
            watcher(
                Api::<DeserializeGuard<RecoveryVault>>::all(client.clone()),
                wc.clone(),
            )
            .default_backoff()
            .reflect_shared(vault_writer),
            vault_deletes,
        ),
        drive(
            "replicatedworkloads",
            watcher(
                Api::<DeserializeGuard<ReplicatedWorkload>>::all(client.clone()),
                wc.clone(),
            )
            .default_backoff()
            .reflect_shared(workload_writer),
            workload_deletes,
        ),
        drive(
            "failovers",
            watcher(
                Api::<DeserializeGuard<Failover>>::all(client.clone()),
                wc.clone(),
            )
            .default_backoff()
            .reflect_shared(failover_writer),
            failover_deletes,
        ),
        drive(
            "nodes",
            watcher(
                Api::<PartialObjectMeta<Node>>::all(client.clone()),
                wc.clone(),
            )
            .default_backoff()
            .reflect_shared(node_writer),
            node_deletes,
        ),
        drive(
            "registrations",
            watcher(
                Api::<DeserializeGuard<Lease>>::namespaced(client.clone(), &settings.namespace),
                wc.clone().labels(&registration::selector()),
            )
            .default_backoff()
            .reflect_shared(registration_writer),
            registration_deletes,
        ),
    );

    let ctx = context(
        client.clone(),
        settings,
        Stores {
            vaults: vaults.clone(),
            workloads: workloads.clone(),
            failovers: failovers.clone(),
            nodes: nodes.clone(),
            registrations: registrations.clone(),
        },
        metrics,
    );

    // Readiness: every cache has its first full list.
    let readiness = {
        let (v, w, f, n, r) = (
            vaults.clone(),
            workloads.clone(),
            failovers.clone(),
            nodes.clone(),
            registrations.clone(),
        );
        let health = health.clone();
        async move {
            let _ = futures::join!(
                v.wait_until_ready(),
                w.wait_until_ready(),
                f.wait_until_ready(),
                n.wait_until_ready(),
                r.wait_until_ready()
            );
            health.ready.store(true, Ordering::Relaxed);
            tracing::info!("caches synced");
            future::pending::<()>().await
        }
    };

    // Vaults: their own changes, and node label changes and removals (zones and regions decide
    // separation).
    let all_vaults = {
        let vaults = vaults.clone();
        move || {
            vaults
                .state()
                .iter()
                .map(|v| ObjectRef::from_obj(v.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let all_vaults_too = all_vaults.clone();
    let vault_controller = Controller::for_shared_stream(vault_main, vaults.clone())
        .watches_shared_stream(labels_changed(node_for_vaults), move |_node| all_vaults())
        .watches_stream(nodes_deleted, move |_node| all_vaults_too())
        .graceful_shutdown_on(shutdown.wait())
        .run(
            reconciler!(vault),
            |obj, err, ctx| error_policy(obj, err, ctx, controllers::vault::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    // Workloads: their own changes, their vault, agent registrations, and their pods.
    let workloads_of_vault = {
        let workloads = workloads.clone();
        move |vault: &DeserializeGuard<RecoveryVault>| {
            let (ns, name) = (vault.namespace(), vault.name_any());
            workloads
                .state()
                .iter()
                .filter(|w| {
                    guarded_ok(w).is_some_and(|w| w.namespace() == ns && w.spec.vault_name == name)
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let workloads_on_node = {
        let workloads = workloads.clone();
        move |lease: &DeserializeGuard<Lease>| {
            let node = lease
                .labels()
                .get(registration::NODE_LABEL)
                .cloned()
                .unwrap_or_default();
            workloads
                .state()
                .iter()
                .filter(|w| {
                    guarded_ok(w).is_some_and(|w| {
                        w.status.as_ref().is_none_or(|s| {
                            // Reports of a point in flight may come from any node (reader pods).
                            s.point_in_progress.is_some()
                                || s.volumes.is_empty()
                                || s.volumes
                                    .iter()
                                    .any(|v| v.node.as_deref() == Some(node.as_str()))
                        })
                    })
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let workloads_of_pod = {
        let workloads = workloads.clone();
        move |pod: PartialObjectMeta<Pod>| {
            let owners: Vec<(&str, String)> = pod
                .owner_references()
                .iter()
                .filter_map(|o| match o.kind.as_str() {
                    "StatefulSet" => Some(("StatefulSet", o.name.clone())),
                    // A Deployment's pods belong to a ReplicaSet named <deployment>-<hash>.
                    "ReplicaSet" => o
                        .name
                        .rsplit_once('-')
                        .map(|(d, _)| ("Deployment", d.to_string())),
                    _ => None,
                })
                .collect();
            let ns = pod.namespace();
            workloads
                .state()
                .iter()
                .filter(|w| {
                    guarded_ok(w).is_some_and(|w| {
                        w.namespace() == ns
                            && owners.iter().any(|(k, n)| {
                                *k == w.spec.workload_ref.kind.as_str()
                                    && *n == w.spec.workload_ref.name
                            })
                    })
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let pods = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        wc.clone(),
    )
    .default_backoff()
    .touched_objects();
    let (of_vault, of_deleted_vault) = (workloads_of_vault.clone(), workloads_of_vault);
    let (on_node, on_deleted_node) = (workloads_on_node.clone(), workloads_on_node);
    let workload_controller = Controller::for_shared_stream(workload_main, workloads.clone())
        .watches_shared_stream(vault_for_workloads, move |v| of_vault(&v))
        // A failover that starts stops the workload's points.
        .watches_shared_stream(failover_for_workloads, |f| {
            guarded_ok(&f).map(|fo| {
                ObjectRef::<DeserializeGuard<ReplicatedWorkload>>::new(&fo.spec.workload_name)
                    .within(&fo.namespace().unwrap_or_default())
            })
        })
        .watches_stream(vaults_deleted, move |v| of_deleted_vault(&v))
        .watches_shared_stream(registration_for_workloads, move |l| on_node(&l))
        .watches_stream(registrations_deleted, move |l| on_deleted_node(&l))
        .watches_stream(pods, workloads_of_pod)
        .reconcile_on(controllers::workload::job_triggers(&ctx))
        .graceful_shutdown_on(shutdown.wait())
        .run(
            reconciler!(workload),
            |obj, err, ctx| error_policy(obj, err, ctx, controllers::workload::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    // Failovers: their own changes, their workload, and their siblings (duplicates).
    let failovers_of_workload = {
        let failovers = failovers.clone();
        move |ns: Option<String>, workload: &str| {
            failovers
                .state()
                .iter()
                .filter(|f| {
                    guarded_ok(f)
                        .is_some_and(|f| f.namespace() == ns && f.spec.workload_name == workload)
                })
                .map(|f| ObjectRef::from_obj(f.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let of_workload = {
        let by = failovers_of_workload.clone();
        move |w: &DeserializeGuard<ReplicatedWorkload>| by(w.namespace(), &w.name_any())
    };
    let siblings = move |f: &DeserializeGuard<Failover>| match guarded_ok(f) {
        Some(fo) => failovers_of_workload(fo.namespace(), &fo.spec.workload_name),
        None => vec![],
    };
    // An agent's restore report, or a pod a failover made (writer, holder, the copy's pods),
    // moves the failover on at once instead of at its next poll.
    let restoring = {
        let failovers = failovers.clone();
        move |lease: &DeserializeGuard<Lease>| {
            let reports = crate::api::work::parse_reports(
                guarded_ok(lease)
                    .and_then(|l| l.annotations().get(crate::api::work::WORK_ANNOTATION)),
            );
            failovers
                .state()
                .iter()
                .filter(|f| {
                    guarded_ok(f).is_some_and(|f| {
                        reports.iter().any(|r| {
                            r.kind == crate::api::work::WorkKind::Restore
                                && Some(&r.owner) == f.metadata.uid.as_ref()
                        })
                    })
                })
                .map(|f| ObjectRef::from_obj(f.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let failover_of_pod = {
        let failovers = failovers.clone();
        move |pod: PartialObjectMeta<Pod>| {
            let uid = pod
                .labels()
                .get(crate::api::work::FAILOVER_UID_LABEL)
                .cloned();
            failovers
                .state()
                .iter()
                .filter(|f| guarded_ok(f).is_some_and(|f| f.metadata.uid == uid))
                .map(|f| ObjectRef::from_obj(f.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let failover_pods = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default().labels(crate::api::work::FAILOVER_UID_LABEL),
    )
    .default_backoff()
    .touched_objects();
    let (of_workload_applied, of_workload_deleted) = (of_workload.clone(), of_workload);
    let (siblings_applied, siblings_deleted) = (siblings.clone(), siblings);
    let failover_controller = Controller::for_shared_stream(failover_main, failovers.clone())
        .watches_shared_stream(workload_for_failovers, move |w| of_workload_applied(&w))
        .watches_stream(workloads_deleted, move |w| of_workload_deleted(&w))
        .watches_shared_stream(failover_for_siblings, move |f| siblings_applied(&f))
        .watches_stream(failovers_deleted, move |f| siblings_deleted(&f))
        .watches_shared_stream(registration_for_failovers, move |l| restoring(&l))
        .watches_stream(failover_pods, failover_of_pod)
        .graceful_shutdown_on(shutdown.wait())
        .run(
            reconciler!(failover),
            |obj, err, ctx| error_policy(obj, err, ctx, controllers::failover::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    tracing::info!("controllers started");
    let controllers = future::join3(vault_controller, workload_controller, failover_controller);
    tokio::select! {
        _ = controllers => {},
        _ = roots => {},
        _ = readiness => {},
        // Controllers drain in-flight reconciles on shutdown; the roots would run forever.
        () = async { shutdown.wait().await; tokio::time::sleep(Duration::from_secs(10)).await } => {},
    }
    tracing::info!("controllers stopped");
    Ok(())
}

/// Passes a node on only when its labels changed since it was last seen: node heartbeats
/// would otherwise re-run every vault every few seconds.
fn labels_changed<S>(nodes: S) -> impl Stream<Item = Arc<PartialObjectMeta<Node>>> + Send
where
    S: Stream<Item = Arc<PartialObjectMeta<Node>>> + Send,
{
    let mut seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    nodes.filter(move |node| {
        let labels = node.labels().clone();
        let changed = seen.insert(node.name_any(), labels.clone()).as_ref() != Some(&labels);
        future::ready(changed)
    })
}

fn begin(ctx: &Context, controller: &'static str) -> Instant {
    ctx.metrics
        .reconciliations
        .get_or_create(&ControllerLabels { controller })
        .inc();
    Instant::now()
}

fn finish<K: Resource>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    started: Instant,
    result: &Result<Action, Error>,
) {
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller })
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoffs.succeeded(&backoff_key(controller, obj));
    }
}

fn backoff_key<K: Resource>(controller: &str, obj: &K) -> String {
    format!(
        "{controller}/{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// A malformed object is reported and left alone until it changes.
async fn invalid_object<K>(
    ctx: &Context,
    obj: &DeserializeGuard<K>,
    error: &str,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let detail = locate_decode_error::<K>(ctx, obj)
        .await
        .unwrap_or_else(|| error.to_string());
    report_invalid(ctx, obj, &detail).await;
    Ok(Action::await_change())
}

/// Decodes the object again, field by field, to name where it is malformed
/// (`spec.cache: missing field storage`); `None` when it cannot be fetched.
async fn locate_decode_error<K>(ctx: &Context, obj: &DeserializeGuard<K>) -> Option<String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let resource = kube::core::ApiResource::erase::<K>(&());
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &obj.namespace().unwrap_or_default(),
        &resource,
    );
    let raw = serde_json::to_value(api.get(&obj.name_any()).await.ok()?).ok()?;
    match serde_path_to_error::deserialize::<_, K>(raw) {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {}", e.path(), e.inner())),
    }
}

/// A malformed object gets `Ready=False` with the decoding error, and a Warning event.
async fn report_invalid<K>(ctx: &Context, obj: &DeserializeGuard<K>, error: &str)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let message = format!("the object cannot be read: {error}");
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), %message, "malformed object");
    let api: Api<DeserializeGuard<K>> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let status = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": {
            "observedGeneration": obj.meta().generation,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message,
                "observedGeneration": obj.meta().generation,
                "lastTransitionTime": crate::clock::now(),
            }],
        },
    });
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
    {
        tracing::warn!(error = %e, "could not report a malformed object in its status");
    }
    publish_events(
        ctx,
        obj,
        &[PlannedEvent::warning(
            EventReason::InvalidObject,
            "Decode",
            message,
        )],
    )
    .await;
}

fn error_policy<K>(
    obj: Arc<DeserializeGuard<K>>,
    err: &Error,
    ctx: Arc<Context>,
    controller: &'static str,
) -> Action
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let key = backoff_key(controller, obj.as_ref());
    let delay = ctx.backoffs.failed(&key, err.base_delay());
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller,
            error: err.category(),
        })
        .inc();
    tracing::warn!(%key, error = %err, retry_in = ?delay, "reconcile failed");
    let event = PlannedEvent::warning(
        EventReason::ReconcileFailed,
        err.category(),
        err.to_string(),
    );
    tokio::spawn(async move { publish_events(&ctx, obj.as_ref(), &[event]).await });
    Action::requeue(delay)
}

/// The store of a kind, for callers that need one without running controllers.
pub fn empty_store<K>() -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    reflector::store::<K>().0
}
