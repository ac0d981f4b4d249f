//! `site-recovery operator`: shared reflectors, the three controllers, leader election on a
//! Lease, the health and metrics server, graceful shutdown.

pub mod http;
mod reflectors;
mod report;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::controllers::context::Stores;
use crate::controllers::{Context, FIELD_MANAGER};
use crate::metrics::Metrics;

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
    /// The cluster's name in recovery points and fences (the chart's `clusterName`).
    pub cluster_name: Option<String>,
    /// Resolved at start (the kube-system namespace's uid); tests may set it.
    pub cluster: crate::controllers::context::ClusterIdentity,
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
            cluster_name: None,
            cluster: Default::default(),
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

/// What every reconcile of this operator shares. Public so that tests can run one reconcile of
/// a kind against caches they fill themselves.
pub fn context(
    client: Client,
    settings: &Settings,
    stores: Stores,
    metrics: Arc<Metrics>,
) -> Arc<Context> {
    let recorder = crate::controllers::events::Recorder::new(
        client.clone(),
        crate::controllers::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: settings.identity.clone(),
        },
    );
    Arc::new(Context {
        cluster: settings.cluster.clone(),
        client,
        recorder,
        stores,
        metrics,
        backoffs: Default::default(),
        namespace: settings.namespace.clone(),
        reader_image: settings.reader_image.clone(),
        storage: settings.storage.clone(),
        swept: Default::default(),
        leftovers: Default::default(),
        handed: Default::default(),
        jobs: Default::default(),
        point_stores: Default::default(),
    })
}

/// The shared reflectors and the three controllers, until `shutdown`.
async fn run_controllers(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    health: Arc<http::Health>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    if settings.cluster.uid.is_empty() {
        settings.cluster =
            crate::controllers::context::ClusterIdentity::resolve(&client, settings.cluster_name.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("reading the uid of namespace kube-system, which names this cluster in recovery points and fences: {e}"))?;
        tracing::info!(cluster = %settings.cluster.name, uid = %settings.cluster.uid, "this cluster");
    }
    let settings = &settings;
    let reflectors = wiring::Reflectors::new();
    let stores = reflectors.stores();
    let source = stores.clone();
    // Set once: the controllers run once per process (a replica that loses the Lease exits).
    let _ = metrics
        .objects
        .set(Box::new(move || source.object_states()));
    let ctx = context(client.clone(), settings, stores.clone(), metrics);
    // Every controller subscribes to the reflectors before their watches start.
    let controllers = future::join3(
        wiring::vaults(&reflectors, ctx.clone(), &shutdown),
        wiring::workloads(&reflectors, ctx.clone(), &shutdown),
        wiring::failovers(&reflectors, ctx, &shutdown),
    );
    let roots = reflectors.run(&client, &settings.namespace);
    tracing::info!("controllers started");
    tokio::select! {
        _ = controllers => {},
        _ = roots => {},
        _ = ready_once_synced(stores, health) => {},
        // Controllers drain in-flight reconciles on shutdown; the roots would run forever.
        () = async { shutdown.wait().await; tokio::time::sleep(Duration::from_secs(10)).await } => {},
    }
    tracing::info!("controllers stopped");
    Ok(())
}

/// Readiness: every cache has its first full list.
async fn ready_once_synced(stores: Stores, health: Arc<http::Health>) {
    let _ = futures::join!(
        stores.vaults.wait_until_ready(),
        stores.workloads.wait_until_ready(),
        stores.failovers.wait_until_ready(),
        stores.nodes.wait_until_ready(),
        stores.registrations.wait_until_ready(),
        stores.workload_caches_ready(Duration::MAX),
    );
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!("caches synced");
    future::pending::<()>().await
}

/// The store of a kind, for callers that need one without running controllers.
pub fn empty_store<K>() -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    reflector::store::<K>().0
}
