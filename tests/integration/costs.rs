//! What one idle reconcile of each kind costs: API requests (counted by the rig per identity,
//! verb and resource) and repository opens (counted by the repository). A protected workload
//! with a replicated point, its vault, and then a Failover that has failed over are brought to
//! a steady state by the real operator; the operator is stopped, and one reconcile of each kind
//! runs on caches filled from the rig, as the operator's own would, once to settle and once to
//! measure. The numbers are printed and bounded, so that a change that makes an idle pass
//! dearer fails here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::json;
use site_recovery::api::{Failover, RecoveryVault, ReplicatedWorkload, registration};
use site_recovery::controllers::{self, Context, context::Stores};

use crate::operator::{OPERATOR_NS, condition, start_operator};
use crate::rig::{Rig, chart, eventually};
use crate::scenario::{Protected, protected, zones};

/// The most one idle reconcile of a kind may cost: (API requests, repository opens). These are
/// what the reconcilers cost before the redesign of issue 12 (main at e770392):
/// - RecoveryVault: get secrets 3, list secrets 1; no open.
/// - ReplicatedWorkload, protected or failed over: get statefulsets 1, list
///   persistentvolumeclaims 1, list pods 2; no open.
/// - Failover, failed over and not committed: delete pods 2 (writer pods long gone), get
///   secrets 1, list pods 1; one open of the target repository (its whole index and every
///   manifest read, to resolve the point again).
///
/// Since the Failover's state machine (c9dff79) an idle failed-over Failover costs list pods 1
/// and no open; since each vault Secret is read once per pass and the handed Secrets are listed
/// only when one may be an orphan, an idle vault costs get secrets 2 (its key and its handed
/// copy); a workload lists the holder pods of a Planned failover only while one exists, so an
/// idle workload costs get statefulsets 1, list persistentvolumeclaims 1, list pods 1. Since
/// the scale work of issue 14 a workload reads the claims its pods mount by name instead of
/// listing every claim of the namespace (a list whose size grew with the other workloads): get
/// statefulsets 1, get persistentvolumeclaims 2 (this workload's two claims), list pods 1.
/// Since a workload is observed from the operator's caches of pods, claims, Deployments and
/// StatefulSets, an idle workload costs no request at all. The bounds are these.
const VAULT_BOUND: (u64, u64) = (2, 0);
const WORKLOAD_BOUND: (u64, u64) = (0, 0);
const FAILOVER_BOUND: (u64, u64) = (1, 0);

/// What one reconcile cost.
struct Cost {
    /// (verb, resource) → requests.
    requests: BTreeMap<(String, String), u64>,
    opens: u64,
}

impl Cost {
    fn requests(&self) -> u64 {
        self.requests.values().sum()
    }

    fn assert_within(&self, what: &str, (requests, opens): (u64, u64)) {
        assert!(
            self.requests() <= requests && self.opens <= opens,
            "one idle {what} reconcile cost {self}; at most {requests} requests and {opens} repository opens are expected"
        );
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by: Vec<String> = self
            .requests
            .iter()
            .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
            .collect();
        write!(
            f,
            "{} API requests ({}), {} repository opens",
            self.requests(),
            by.join(", "),
            self.opens
        )
    }
}

fn operator_user() -> String {
    format!(
        "system:serviceaccount:{}:{}",
        chart::RELEASE_NAMESPACE,
        chart::OPERATOR_SA
    )
}

/// The operator's caches, filled from lists instead of watches.
struct Caches {
    vaults: Writer<DeserializeGuard<RecoveryVault>>,
    workloads: Writer<DeserializeGuard<ReplicatedWorkload>>,
    failovers: Writer<DeserializeGuard<Failover>>,
    nodes: Writer<kube::core::PartialObjectMeta<Node>>,
    registrations: Writer<DeserializeGuard<Lease>>,
    pods: Writer<Pod>,
    pod_index: Arc<site_recovery::cache::PodIndex>,
    claims: Writer<PartialObjectMeta<PersistentVolumeClaim>>,
    deployments: Writer<Deployment>,
    stateful_sets: Writer<StatefulSet>,
    services: Writer<Service>,
}

fn fill<K>(writer: &mut Writer<K>, items: Vec<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fill_as(writer, items, site_recovery::cache::trim, |_| {});
}

/// [`fill`], each item projected as the operator's watch does, and each event shown to `index`
/// first.
fn fill_as<K>(
    writer: &mut Writer<K>,
    items: Vec<K>,
    project: impl Fn(&mut K),
    index: impl Fn(&watcher::Event<K>),
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut apply = |event: watcher::Event<K>| {
        index(&event);
        writer.apply_watcher_event(&event);
    };
    apply(watcher::Event::Init);
    for mut item in items {
        project(&mut item);
        apply(watcher::Event::InitApply(item));
    }
    apply(watcher::Event::InitDone);
}

impl Caches {
    /// Empty caches, and the operator's context reading them.
    fn new(rig: &Rig) -> (Self, Arc<Context>) {
        let (vaults, vault_writer) = reflector::store();
        let (workloads, workload_writer) = reflector::store();
        let (failovers, failover_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let (registrations, registration_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (claims, claim_writer) = reflector::store();
        let (deployments, deployment_writer) = reflector::store();
        let (stateful_sets, stateful_set_writer) = reflector::store();
        let (services, service_writer) = reflector::store();
        let pod_index = Arc::new(site_recovery::cache::PodIndex::default());
        let mut settings = site_recovery::operator::Settings::new(OPERATOR_NS);
        settings.identity = "cost-probe".into();
        settings.storage = rig.storage_rules();
        let ctx = site_recovery::operator::context(
            rig.operator_client(),
            &settings,
            Stores {
                vaults,
                workloads,
                failovers,
                nodes,
                registrations,
                pods,
                pod_index: pod_index.clone(),
                claims,
                deployments,
                stateful_sets,
                services,
                decoded: Default::default(),
            },
            Default::default(),
        );
        let caches = Self {
            vaults: vault_writer,
            workloads: workload_writer,
            failovers: failover_writer,
            nodes: node_writer,
            registrations: registration_writer,
            pods: pod_writer,
            pod_index,
            claims: claim_writer,
            deployments: deployment_writer,
            stateful_sets: stateful_set_writer,
            services: service_writer,
        };
        (caches, ctx)
    }

    /// Lists everything again (as the test's admin: these requests are not the operator's).
    async fn refresh(&mut self, rig: &Rig) {
        let client = rig.client();
        let registrations = ListParams::default().labels(&registration::selector());
        fill(&mut self.vaults, listed(Api::all(client.clone())).await);
        fill(&mut self.workloads, listed(Api::all(client.clone())).await);
        fill(&mut self.failovers, listed(Api::all(client.clone())).await);
        let nodes = Api::<Node>::all(client.clone());
        let nodes = nodes.list_metadata(&ListParams::default()).await.unwrap();
        fill(&mut self.nodes, nodes.items);
        let leases = Api::namespaced(client.clone(), OPERATOR_NS);
        let leases = leases.list(&registrations).await.unwrap();
        fill(&mut self.registrations, leases.items);
        let index = self.pod_index.clone();
        let pods = listed(Api::all(client.clone())).await;
        fill_as(&mut self.pods, pods, site_recovery::cache::pod, |e| {
            index.apply(e)
        });
        let claims = Api::<PersistentVolumeClaim>::all(client.clone());
        let claims = claims.list_metadata(&ListParams::default()).await.unwrap();
        fill_as(
            &mut self.claims,
            claims.items,
            site_recovery::cache::claim,
            |_| {},
        );
        let deployments = listed(Api::all(client.clone())).await;
        fill_as(
            &mut self.deployments,
            deployments,
            site_recovery::cache::deployment,
            |_| {},
        );
        let stateful_sets = listed(Api::all(client.clone())).await;
        let services = listed(Api::all(client)).await;
        fill_as(
            &mut self.services,
            services,
            site_recovery::cache::service,
            |_| {},
        );
        fill_as(
            &mut self.stateful_sets,
            stateful_sets,
            site_recovery::cache::stateful_set,
            |_| {},
        );
    }
}

async fn listed<K>(api: Api<K>) -> Vec<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default()).await.unwrap().items
}

/// The vault's listing of its target location runs in the background (about once a minute):
/// once the one the first round started has ended, a round records it, and the next is idle.
async fn settle_discovery(rig: &Rig, caches: &mut Caches, ctx: &Arc<Context>) {
    use site_recovery::controllers::jobs::{JobKey, JobKind};
    let vault = Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .get("vault")
        .await
        .unwrap();
    let key = JobKey::new(vault.metadata.uid.clone().unwrap(), JobKind::Discover);
    crate::rig::eventually(
        Duration::from_secs(30),
        "the vault's listing ended",
        || async { ctx.jobs.get(&key).filter(|j| !j.is_running()).map(|_| ()) },
    )
    .await;
    reconcile_each(rig, caches, ctx).await;
}

/// One reconcile of each kind there is an object of, on freshly filled caches; returns what
/// each cost, in the order vault, workload, failover.
async fn reconcile_each(rig: &Rig, caches: &mut Caches, ctx: &Arc<Context>) -> Vec<Cost> {
    let client = rig.client();
    let vaults: Api<RecoveryVault> = Api::namespaced(client.clone(), "apps");
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(client.clone(), "apps");
    let failovers: Api<Failover> = Api::namespaced(client, "apps");
    let mut costs = Vec::new();

    caches.refresh(rig).await;
    let vault = vaults.get("vault").await.unwrap();
    costs.push(measure(rig, controllers::vault::reconcile(&vault, ctx.clone())).await);
    caches.refresh(rig).await;
    let workload = workloads.get("db").await.unwrap();
    costs.push(
        measure(
            rig,
            controllers::workload::reconcile(&workload, ctx.clone()),
        )
        .await,
    );
    caches.refresh(rig).await;
    if let Some(failover) = failovers.get_opt("fo").await.unwrap() {
        costs.push(
            measure(
                rig,
                controllers::failover::reconcile(&failover, ctx.clone()),
            )
            .await,
        );
    }
    costs
}

/// The operator's requests and the repository opens while `work` runs (and shortly after, for
/// anything it left in flight).
async fn measure<T, E: fmt::Debug>(rig: &Rig, work: impl Future<Output = Result<T, E>>) -> Cost {
    let user = operator_user();
    let (before, opens) = (rig.calls_of(&user), site_recovery::repository::opened());
    work.await.expect("an idle reconcile succeeds");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rig.calls_of(&user);
    let requests = after
        .into_iter()
        .filter_map(|(k, n)| {
            let n = n - before.get(&k).copied().unwrap_or(0);
            (n > 0).then_some((k, n))
        })
        .collect();
    Cost {
        requests,
        opens: site_recovery::repository::opened() - opens,
    }
}

#[tokio::test]
async fn one_idle_reconcile_of_each_kind_costs_at_most_its_bound() {
    let Protected {
        rig,
        // Held to the end: the vault's locations are in it.
        dir: _dir,
        running,
        agents,
        failovers,
        ..
    } = protected().await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    eventually(Duration::from_secs(30), "vault Ready", || async {
        let s = vaults.get("vault").await.ok()?.status?;
        (condition(&s.conditions, "Ready")?.0 == "True").then_some(())
    })
    .await;
    running.stop().await;

    // Protected, with a replicated point and nothing in flight.
    let (mut caches, ctx) = Caches::new(&rig);
    reconcile_each(&rig, &mut caches, &ctx).await;
    settle_discovery(&rig, &mut caches, &ctx).await;
    let protected = reconcile_each(&rig, &mut caches, &ctx).await;
    println!("idle RecoveryVault reconcile: {}", protected[0]);
    println!(
        "idle ReplicatedWorkload reconcile (protected): {}",
        protected[1]
    );

    // Failed over to the target zone, not committed.
    let _cluster = zones(&rig, &[("zone-b", "node-b1")]);
    let running = start_operator(&rig, false).await;
    let fo: Failover = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": "fo", "namespace": "apps"},
        "spec": {"workloadName": "db", "recoveryPoint": {"latest": true}},
    }))
    .unwrap();
    failovers.create(&PostParams::default(), &fo).await.unwrap();
    eventually(Duration::from_secs(60), "FailedOver=True", || async {
        let s = failovers.get("fo").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(())
    })
    .await;
    running.stop().await;
    reconcile_each(&rig, &mut caches, &ctx).await;
    settle_discovery(&rig, &mut caches, &ctx).await;
    let failed_over = reconcile_each(&rig, &mut caches, &ctx).await;
    println!(
        "idle ReplicatedWorkload reconcile (failed over): {}",
        failed_over[1]
    );
    println!("idle Failover reconcile (failed over): {}", failed_over[2]);

    protected[0].assert_within("RecoveryVault", VAULT_BOUND);
    protected[1].assert_within("ReplicatedWorkload", WORKLOAD_BOUND);
    failed_over[1].assert_within("ReplicatedWorkload (failed over)", WORKLOAD_BOUND);
    failed_over[2].assert_within("Failover", FAILOVER_BOUND);
    for a in agents {
        a.kill();
    }
}
