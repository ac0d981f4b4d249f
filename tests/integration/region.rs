//! Region failover: two rig instances are two clusters (their own API servers, operators and
//! agents) that share the storage. Cluster A protects the workload; A is lost; cluster B, which
//! never saw A's objects, finds the workload in the vault's target location, fails it over under
//! its own names from a chosen point, and fences A out; A, back, writes no point and stops.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use site_recovery::api::{Failover, RecoveryVault, ReplicatedWorkload};
use site_recovery::operator::{Settings, Shutdown};

use crate::operator::{OPERATOR_NS, Running, condition, s3_credentials};
use crate::replication::{
    Agent, KEY, database, first_point, live_vault, protect, read_tree, write_version,
};
use crate::rig::{Rig, eventually};

/// An operator of cluster `name` whose vaults may use the storage under `rules`.
fn operator(rig: &Rig, name: &str, rules: site_recovery::storage::StorageRules) -> Running {
    let mut settings = Settings::new(OPERATOR_NS);
    settings.leader_election = false;
    settings.identity = format!("operator-{name}");
    settings.storage = rules;
    settings.cluster_name = Some(name.into());
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(site_recovery::operator::run(
        rig.operator_client(),
        settings,
        shutdown,
    ));
    Running { stop, task }
}

fn agent(rig: &Rig, node: &str, rules: site_recovery::storage::StorageRules) -> Agent {
    crate::replication::start_agent_with(rig, node, 10, rules)
}

/// The standby cluster B: its own API server, the chart's RBAC, a node in zone-b and one in
/// zone-c, the same vault key, and a vault in namespace `home` whose target is A's target
/// location (its cache is B's own, new). With `home` the operator's namespace (a platform
/// vault), B has no namespace `apps` at all: the failover makes it.
async fn standby(shared: &Path, target: &serde_json::Value, home: &str) -> Rig {
    let rig = Rig::start().await;
    rig.apply_crds().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.node("node-b1", "zone-b", "region-2").await;
    rig.node("node-c1", "zone-c", "region-2").await;
    if home != OPERATOR_NS {
        rig.namespace(home).await;
    }
    vault_secrets(&rig, home).await;
    // B's own cache, below the storage root's directory of namespace `home`.
    let root = shared.parent().and_then(Path::parent).unwrap();
    let cache = root.join(home).join(format!(
        "{}-standby-cache",
        shared.file_name().unwrap().to_string_lossy()
    ));
    let vault: RecoveryVault = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "vault", "namespace": home},
        "spec": {
            "cache": {"zone": "zone-c", "storage": {"filesystem": {"path": cache}}},
            "target": {"zone": "zone-b", "storage": target},
            "snapshotMethod": "Live",
            "encryption": {"keySecretRef": {"name": "vault-key"}},
        },
    }))
    .unwrap();
    Api::<RecoveryVault>::namespaced(rig.client(), home)
        .create(&PostParams::default(), &vault)
        .await
        .unwrap();
    rig
}

/// The vault key and the S3 credentials, in namespace `ns`.
async fn vault_secrets(rig: &Rig, ns: &str) {
    rig.secret(ns, "vault-key", &[("key", &KEY)]).await;
    rig.secret(
        ns,
        "s3-credentials",
        &[
            ("AWS_ACCESS_KEY_ID", b"test"),
            ("AWS_SECRET_ACCESS_KEY", b"s3-secret-value-0001"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_standby_cluster_fails_over_from_the_target_location_alone_and_fences_the_old_one() {
    region_failover(
        |dir| json!({"filesystem": {"path": dir.join("target")}}),
        "apps",
    )
    .await;
}

/// The same with the shared location (the target of A, the standby's target and its cache
/// towards A) in an S3 bucket, from a platform vault in the operator's namespace of a B that
/// has no namespace `apps` (the Failover names it in `spec.workloadNamespace` and makes it).
#[tokio::test]
async fn a_standby_cluster_fails_over_from_an_s3_target_alone() {
    let endpoint = std::env::var("SITE_RECOVERY_TEST_S3_ENDPOINT")
        .expect("run with `bash scripts/test.sh`: it starts the S3 server");
    let prefix = format!("region-{}", std::process::id());
    region_failover(
        move |_| {
            json!({"s3": {"bucket": "sr-test", "prefix": prefix, "endpoint": endpoint,
            "credentialsSecretRef": {"name": "s3-credentials"}}})
        },
        OPERATOR_NS,
    )
    .await;
}

/// Protect in A, lose A, fail over in B from `shared` (the location A replicates to), fence A,
/// commit, re-protect B towards A, fail back into A's own claims, fence B. B's vault and
/// Failover are in namespace `home`.
async fn region_failover(shared: impl Fn(&Path) -> serde_json::Value, home: &str) {
    // Cluster A: StatefulSet db (two claims on two nodes), a ConfigMap its pods read, protected.
    let (a, dir) = crate::replication::cluster().await;
    s3_credentials(&a).await;
    let rules = a.storage_rules();
    let running_a = operator(&a, "cluster-a", rules.clone());
    Api::<RecoveryVault>::namespaced(a.client(), "apps")
        .create(&PostParams::default(), &{
            let mut v = live_vault(dir.path(), json!({}));
            v.spec.target.storage = serde_json::from_value(shared(dir.path())).unwrap();
            v
        })
        .await
        .unwrap();
    let volumes = database(&a).await;
    a.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "db-settings", "namespace": "apps"}, "data": {"mode": "primary"}}))
        .await;
    Api::<StatefulSet>::namespaced(a.client(), "apps")
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "db:1",
                "envFrom": [{"configMapRef": {"name": "db-settings"}}]}]}}}}),
            ),
        )
        .await
        .unwrap();
    let agents_a: Vec<Agent> = ["node-a1", "node-a2", "node-b1"]
        .iter()
        .map(|n| agent(&a, n, rules.clone()))
        .collect();
    let content = write_version(&volumes, 1);
    let workloads_a = protect(&a).await;
    let first = first_point(&workloads_a)
        .await
        .latest_replicated_point
        .expect("the first point");

    // Region A is lost: its API server, operator and agents stop answering.
    running_a.stop().await;
    for x in agents_a {
        x.kill();
    }

    // Cluster B lists the workload from the target location alone.
    let b = standby(dir.path(), &shared(dir.path()), home).await;
    let running_b = operator(&b, "cluster-b", rules.clone());
    let agents_b: Vec<Agent> = ["node-b1", "node-c1"]
        .iter()
        .map(|n| agent(&b, n, rules.clone()))
        .collect();
    let rig_b = crate::rig::failover::run(
        &b,
        "apps",
        BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]),
    );
    let vaults_b: Api<RecoveryVault> = Api::namespaced(b.client(), home);
    let found = eventually(
        Duration::from_secs(90),
        "the vault lists apps/db",
        || async {
            let s = vaults_b.get("vault").await.ok()?.status?;
            s.discovered.into_iter().find(|w| w.name == "db")
        },
    )
    .await;
    assert_eq!(
        (
            found.namespace.as_str(),
            found.kind.as_str(),
            found.cluster.as_str()
        ),
        ("apps", "StatefulSet", "cluster-a"),
        "{found:?}"
    );
    assert_eq!(found.latest_point, first.id);
    assert_eq!(found.fenced_by, None);
    // The plugin lists the same from the location itself, as a user of B sees it.
    let kubeconfig = tempfile::tempdir().unwrap();
    // Asynchronously: the test's runtime also serves B's API server.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_site-recovery"))
        .args(["points", "--vault", "vault", "-n", home])
        .env("KUBECONFIG", b.kubeconfig(kubeconfig.path()))
        .env("SITE_RECOVERY_FILESYSTEM_ROOT", &rules.filesystem_root)
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("$ kubectl siterecovery points --vault vault -n {home}\n{listing}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = listing
        .lines()
        .find(|l| l.starts_with("apps"))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        [
            "apps",
            "db",
            "StatefulSet",
            "cluster-a",
            "1",
            first.id.as_str()
        ],
        "{listing}"
    );
    assert!(
        Api::<ReplicatedWorkload>::namespaced(b.client(), "apps")
            .get_opt("db")
            .await
            .unwrap()
            .is_none(),
        "B knows nothing of A's objects"
    );

    // A Failover in B names the vault and the workload as found there (and, from a platform
    // vault, the workload's namespace).
    let failovers_b: Api<Failover> = Api::namespaced(b.client(), home);
    let started = Instant::now();
    let mut spec =
        json!({"workloadName": "db", "vaultName": "vault", "recoveryPoint": {"id": first.id}});
    if home != "apps" {
        spec["workloadNamespace"] = json!("apps");
    }
    failovers_b
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
                "metadata": {"name": "region", "namespace": home},
                "spec": spec,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(120), "FailedOver=True in B", || async {
        let s = failovers_b.get("region").await.ok()?.status?;
        if std::env::var("REGION_DEBUG").is_ok() {
            eprintln!(
                "DEBUG {:?}",
                s.conditions
                    .iter()
                    .map(|c| (&c.r#type, &c.reason, &c.message))
                    .collect::<Vec<_>>()
            );
        }
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    let rto = started.elapsed();
    let steps: Vec<&str> = s.timeline.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "RestoreStarted",
            "Fenced",
            "Restored",
            "WorkloadStarted",
            "FailedOver"
        ]
    );
    let restore_started = s.timeline[0].time;
    let restored = s.timeline[2].time;
    println!(
        "cross-cluster RTO {:.1}s (Failover created → FailedOver); restore (data) {:.1}s; status RTO {:.1}s",
        rto.as_secs_f64(),
        restored.duration_since(restore_started).as_secs_f64(),
        s.rto_seconds.unwrap_or_default()
    );
    // The workload is back under its own names: StatefulSet db, claims data-db-0 and -1 holding
    // exactly the point's bytes, and the ConfigMap its pods read.
    let set = Api::<StatefulSet>::namespaced(b.client(), "apps")
        .get("db")
        .await
        .unwrap();
    assert_eq!(set.spec.as_ref().and_then(|s| s.replicas), Some(2));
    for claim in ["data-db-0", "data-db-1"] {
        let c: PersistentVolumeClaim = Api::namespaced(b.client(), "apps")
            .get(claim)
            .await
            .unwrap();
        assert!(c.spec.is_some(), "{claim} restored under its own name");
        let disk = crate::rig::failover::claim_disk(&b, "apps", claim).await;
        assert_eq!(
            read_tree(&disk),
            content[claim],
            "{claim} holds point {}",
            first.id
        );
    }
    let settings: ConfigMap = Api::namespaced(b.client(), "apps")
        .get("db-settings")
        .await
        .unwrap();
    assert_eq!(
        settings
            .data
            .unwrap_or_default()
            .get("mode")
            .map(String::as_str),
        Some("primary")
    );
    let listed = eventually(
        Duration::from_secs(90),
        "the vault says B fenced db",
        || async {
            let s = vaults_b.get("vault").await.ok()?.status?;
            s.discovered
                .into_iter()
                .find(|w| w.name == "db" && w.fenced_by.is_some())
        },
    )
    .await;
    assert_eq!(listed.fenced_by.as_deref(), Some("cluster-b"));

    // Commit: the points go, the workload stays.
    crate::scenario::commit(&failovers_b, "region").await;

    if home != "apps" {
        let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(b.client())
            .get("apps")
            .await
            .unwrap();
        assert_eq!(
            ns.annotations().get("siterecovery.io/restored-by"),
            Some(&format!("{home}/region")),
            "the failover made namespace apps"
        );
        // Re-protection below is the tenant's again, in apps.
        vault_secrets(&b, "apps").await;
    }

    // The workload runs on in B and writes a little.
    let b_disk = crate::rig::failover::claim_disk(&b, "apps", "data-db-0").await;
    std::fs::write(b_disk.join("written-in-b.txt"), b"written in region B\n").unwrap();
    let in_b = read_tree(&b_disk);

    // Re-protect in B, back towards region A: a vault whose cache is the shared target (B's
    // region) and whose target is A's cache, with the same key. They hold one repository, so
    // only what A's location lacks crosses back.
    let before = crate::failover::stored_bytes(&dir.path().join("cache"));
    Api::<RecoveryVault>::namespaced(b.client(), "apps")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
                "metadata": {"name": "vault-back", "namespace": "apps"},
                "spec": {
                    "cache": {"zone": "zone-b", "storage": shared(dir.path())},
                    "target": {"zone": "zone-c", "storage": {"filesystem": {"path": dir.path().join("cache")}}},
                    "snapshotMethod": "Live",
                    "encryption": {"keySecretRef": {"name": "vault-key"}},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let workloads_b: Api<ReplicatedWorkload> = Api::namespaced(b.client(), "apps");
    workloads_b
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
                "metadata": {"name": "db", "namespace": "apps"},
                "spec": {"vaultName": "vault-back", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let back = eventually(
        Duration::from_secs(90),
        "B's first point replicated",
        || async {
            let s = workloads_b.get("db").await.ok()?.status?;
            if std::env::var("REGION_DEBUG").is_ok() {
                eprintln!(
                    "DEBUG-B {:?}",
                    s.conditions
                        .iter()
                        .map(|c| (&c.r#type, &c.reason, &c.message))
                        .collect::<Vec<_>>()
                );
            }
            s.latest_replicated_point.as_ref()?;
            s.point_in_progress.is_none().then_some(s)
        },
    )
    .await;
    let moved = crate::failover::stored_bytes(&dir.path().join("cache")) - before;
    let data: usize = content
        .values()
        .flat_map(|f| f.values())
        .map(Vec::len)
        .sum();
    println!("re-protection B → A moved {moved} bytes into A's location for {data} bytes of data");
    assert!(
        moved < (data / 4) as u64,
        "only what A's location lacks crosses back: {moved} of {data} bytes"
    );
    assert!(
        condition(&back.conditions, "Fenced").is_none(),
        "B holds the fence: its points are written"
    );

    // Region A comes back: its operator finds the fence before its next point, writes none,
    // says Fenced and stops its copy.
    let running_a = operator(&a, "cluster-a", rules.clone());
    let agents_a: Vec<Agent> = ["node-a1", "node-a2", "node-b1"]
        .iter()
        .map(|n| agent(&a, n, rules.clone()))
        .collect();
    workloads_a
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"siterecovery.io/request-point": "after-the-fence"}}})),
        )
        .await
        .unwrap();
    let fenced = eventually(Duration::from_secs(90), "Fenced=True in A", || async {
        let s = workloads_a.get("db").await.ok()?.status?;
        if std::env::var("REGION_DEBUG").is_ok() {
            eprintln!(
                "DEBUG-A {:?}",
                s.conditions
                    .iter()
                    .map(|c| (&c.r#type, &c.reason, &c.message))
                    .collect::<Vec<_>>()
            );
        }
        let (status, reason, message) = condition(&s.conditions, "Fenced")?;
        (status == "True").then(|| (reason.to_string(), message.to_string()))
    })
    .await;
    assert_eq!(fenced.0, "Fenced");
    assert!(fenced.1.contains("cluster-b"), "{}", fenced.1);
    let s = workloads_a.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        condition(&s.conditions, "Protected").map(|c| (c.0, c.1)),
        Some(("False", "Fenced")),
        "A no longer claims the points in the target"
    );
    let stopped = eventually(Duration::from_secs(30), "A's copy stopped", || async {
        let set = Api::<StatefulSet>::namespaced(a.client(), "apps")
            .get("db")
            .await
            .ok()?;
        (set.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    let () = stopped;
    let s = workloads_a.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        s.latest_replicated_point.map(|p| p.id),
        Some(first.id.clone()),
        "A wrote no point after the fence"
    );

    // Fail back to A: a failover there from a vault on the location B re-protects into. A's
    // StatefulSet db (stopped by the fence) and its claims are used: the claims are written in
    // place, only where they differ from B's point; B is fenced out of that location in turn.
    let rig_a = crate::rig::failover::run(
        &a,
        "apps",
        BTreeMap::from([("zone-a".to_string(), "node-a1".to_string())]),
    );
    Api::<RecoveryVault>::namespaced(a.client(), "apps")
        .create(
            &PostParams::default(),
            &crate::failover::reverse_vault(
                "vault-home",
                &dir.path().join("home-cache"),
                &dir.path().join("cache"),
            ),
        )
        .await
        .unwrap();
    let failovers_a: Api<Failover> = Api::namespaced(a.client(), "apps");
    failovers_a
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
                "metadata": {"name": "home", "namespace": "apps"},
                "spec": {"workloadName": "db", "vaultName": "vault-home", "recoveryPoint": {"id": back.latest_replicated_point.clone().unwrap().id}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(120), "failed back to A", || async {
        let s = failovers_a.get("home").await.ok()?.status?;
        if std::env::var("REGION_DEBUG").is_ok() {
            eprintln!(
                "DEBUG-HOME {:?}",
                s.conditions
                    .iter()
                    .map(|c| (&c.r#type, &c.reason, &c.message))
                    .collect::<Vec<_>>()
            );
        }
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(s)
    })
    .await;
    let restored = s
        .timeline
        .iter()
        .find(|t| t.step == "Restored")
        .map(|t| t.message.clone())
        .unwrap_or_default();
    println!("failback to A: {restored}");
    assert!(restored.contains("in place"), "{restored}");
    let written = crate::failover::bytes_written(&restored);
    assert!(
        written < (data / 4) as u64,
        "the failback writes only what changed: {written} of {data} bytes"
    );
    assert_eq!(
        read_tree(&volumes["data-db-0"]),
        in_b,
        "A's own claim holds B's writes"
    );
    assert_eq!(
        Api::<StatefulSet>::namespaced(a.client(), "apps")
            .get("db")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.replicas),
        Some(2),
        "A's original StatefulSet runs again"
    );
    // B, fenced out of the location it re-protected into, stops at its next point.
    workloads_b
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"siterecovery.io/request-point": "after-the-failback"}}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(90), "Fenced=True in B", || async {
        let s = workloads_b.get("db").await.ok()?.status?;
        let (status, _, message) = condition(&s.conditions, "Fenced")?;
        (status == "True" && message.contains("cluster-a")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "B's copy stopped", || async {
        let set = Api::<StatefulSet>::namespaced(b.client(), "apps")
            .get("db")
            .await
            .ok()?;
        (set.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    rig_a.abort();
    running_a.stop().await;
    for x in agents_a {
        x.kill();
    }
    running_b.stop().await;
    for x in agents_b {
        x.kill();
    }
    rig_b.abort();
}

/// A partition: A keeps running but cannot reach the shared location (an S3 bucket) while B
/// fails the workload over; when the link is back, A's next point finds B's fence: A writes no
/// point, says Fenced and stops its copy. While cut off, A keeps serving: it cannot tell a
/// partition from a storage outage, and stopping on every outage would be an outage of its own.
#[tokio::test]
async fn a_partitioned_cluster_finds_the_fence_when_the_link_is_back_and_stops() {
    let endpoint = std::env::var("SITE_RECOVERY_TEST_S3_ENDPOINT")
        .expect("run with `bash scripts/test.sh`: it starts the S3 server");
    let link = crate::rig::partition::Partition::forward(
        endpoint.trim_start_matches("http://").trim_end_matches('/'),
    )
    .await;
    let prefix = format!("partition-{}", std::process::id());
    let bucket = |endpoint: &str| {
        json!({"s3": {"bucket": "sr-test", "prefix": prefix, "endpoint": endpoint,
            "credentialsSecretRef": {"name": "s3-credentials"}}})
    };

    let (a, dir) = crate::replication::cluster().await;
    s3_credentials(&a).await;
    let rules = a.storage_rules();
    let running_a = operator(&a, "cluster-a", rules.clone());
    Api::<RecoveryVault>::namespaced(a.client(), "apps")
        .create(&PostParams::default(), &{
            let mut v = live_vault(dir.path(), json!({}));
            v.spec.target.storage = serde_json::from_value(bucket(&link.endpoint)).unwrap();
            v
        })
        .await
        .unwrap();
    let volumes = database(&a).await;
    let agents_a: Vec<Agent> = ["node-a1", "node-a2", "node-b1"]
        .iter()
        .map(|n| agent(&a, n, rules.clone()))
        .collect();
    write_version(&volumes, 1);
    let workloads_a = protect(&a).await;
    let first = first_point(&workloads_a)
        .await
        .latest_replicated_point
        .expect("the first point");

    // The link between A and the bucket goes down; A runs on and asks for a point it cannot
    // write.
    link.cut();
    let request = |token: &'static str| {
        let workloads_a = workloads_a.clone();
        async move {
            workloads_a
                .patch(
                    "db",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"siterecovery.io/request-point": token}}})),
                )
                .await
                .unwrap();
        }
    };
    request("during-the-partition").await;

    // B fails over from the bucket and fences A out.
    let b = standby(dir.path(), &bucket(&endpoint), "apps").await;
    let running_b = operator(&b, "cluster-b", rules.clone());
    let agents_b: Vec<Agent> = ["node-b1", "node-c1"]
        .iter()
        .map(|n| agent(&b, n, rules.clone()))
        .collect();
    let rig_b = crate::rig::failover::run(
        &b,
        "apps",
        BTreeMap::from([("zone-b".to_string(), "node-b1".to_string())]),
    );
    let failovers_b: Api<Failover> = Api::namespaced(b.client(), "apps");
    failovers_b
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
                "metadata": {"name": "region", "namespace": "apps"},
                "spec": {"workloadName": "db", "vaultName": "vault", "recoveryPoint": {"id": first.id}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(120), "FailedOver=True in B", || async {
        let s = failovers_b.get("region").await.ok()?.status?;
        (condition(&s.conditions, "FailedOver")?.0 == "True").then_some(())
    })
    .await;

    // Cut off, A has written nothing, says why, claims nothing it does not know, and serves on.
    let s = eventually(
        Duration::from_secs(150),
        "A says its point failed",
        || async {
            let s = workloads_a.get("db").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.status == site_recovery::api::ConditionStatus::False)
                .then_some(s)
        },
    )
    .await;
    println!(
        "A during the partition: {:?}",
        s.conditions
            .iter()
            .map(|c| (&c.r#type, &c.status, &c.reason, &c.message))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        s.latest_replicated_point.as_ref().map(|p| &p.id),
        Some(&first.id)
    );
    assert!(
        condition(&s.conditions, "Fenced").is_none_or(|c| c.0 != "True"),
        "A cannot have seen the fence"
    );
    let replicas = || async {
        Api::<StatefulSet>::namespaced(a.client(), "apps")
            .get("db")
            .await
            .ok()
            .and_then(|s| s.spec?.replicas)
    };
    assert_eq!(replicas().await, Some(2), "A serves on while cut off");

    // The link is back: A's next point finds the fence.
    link.heal();
    request("after-the-partition").await;
    let fenced = eventually(Duration::from_secs(150), "Fenced=True in A", || async {
        let s = workloads_a.get("db").await.ok()?.status?;
        let (status, _, message) = condition(&s.conditions, "Fenced")?;
        (status == "True").then(|| message.to_string())
    })
    .await;
    assert!(fenced.contains("cluster-b"), "{fenced}");
    eventually(Duration::from_secs(30), "A's copy stopped", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    let s = workloads_a.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        s.latest_replicated_point.map(|p| p.id),
        Some(first.id.clone()),
        "A wrote no point"
    );
    // In the bucket, the workload's only point is still the one B failed over from: nothing of
    // A's arrived after the fence.
    let vaults_b: Api<RecoveryVault> = Api::namespaced(b.client(), "apps");
    let listed = eventually(Duration::from_secs(90), "B's vault lists db", || async {
        let s = vaults_b.get("vault").await.ok()?.status?;
        s.discovered
            .into_iter()
            .find(|w| w.name == "db" && w.fenced_by.is_some())
    })
    .await;
    assert_eq!(
        (listed.latest_point.as_str(), listed.fenced_by.as_deref()),
        (first.id.as_str(), Some("cluster-b")),
        "{listed:?}"
    );
    running_a.stop().await;
    running_b.stop().await;
    for x in agents_a.into_iter().chain(agents_b) {
        x.kill();
    }
    rig_b.abort();
}
