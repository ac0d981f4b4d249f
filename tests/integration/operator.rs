//! The operator's controllers against the rig, end to end and watch-driven.

use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::json;
use site_recovery::api::conditions::find;
use site_recovery::api::{RecoveryVault, ReplicatedWorkload};
use site_recovery::operator::{self, Settings, Shutdown};

use crate::rig::{Rig, eventually};

pub const OPERATOR_NS: &str = "site-recovery-system";

pub struct Running {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

pub async fn start_operator(rig: &Rig, leader_election: bool) -> Running {
    let mut settings = Settings::new(OPERATOR_NS);
    settings.leader_election = leader_election;
    settings.identity = "test-operator".into();
    settings.storage = rig.storage_rules();
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(operator::run(rig.operator_client(), settings, shutdown));
    Running { stop, task }
}

/// Three nodes in three zones of two regions, the chart's RBAC, a vault key in `apps`.
pub(crate) async fn cluster() -> (Rig, tempfile::TempDir) {
    let rig = Rig::start().await;
    rig.apply_crds().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.namespace("apps").await;
    rig.node("node-a1", "zone-a", "region-1").await;
    rig.node("node-b1", "zone-b", "region-1").await;
    rig.node("node-c1", "zone-c", "region-2").await;
    rig.secret("apps", "vault-key", &[("key", &[7u8; 32])])
        .await;
    let dir = rig.vault_dir("apps");
    (rig, dir)
}

pub fn vault(
    name: &str,
    redundancy: &str,
    cache_zone: &str,
    target_zone: &str,
    dir: &std::path::Path,
) -> RecoveryVault {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "redundancy": redundancy,
            "cache": {"zone": cache_zone, "storage": {"filesystem": {"path": dir.join(name).join("cache")}}},
            "target": {"zone": target_zone, "storage": {"filesystem": {"path": dir.join(name).join("target")}}},
            "encryption": {"keySecretRef": {"name": "vault-key"}},
        },
    }))
    .unwrap()
}

pub fn condition<'a>(
    conditions: &'a [site_recovery::api::Condition],
    t: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    find(conditions, t).map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

#[tokio::test]
async fn vault_ready_and_separation_reported() {
    let (rig, dir) = cluster().await;
    let running = start_operator(&rig, true).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    vaults
        .create(
            &PostParams::default(),
            &vault("good", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    // Region redundancy with both locations in zone-a: admission cannot see regions, the operator can.
    vaults
        .create(
            &PostParams::default(),
            &vault("same-zone", "Region", "zone-a", "zone-a", dir.path()),
        )
        .await
        .unwrap();

    let good = eventually(Duration::from_secs(20), "vault good Ready", || async {
        let v = vaults.get("good").await.ok()?;
        let s = v.status?;
        (condition(&s.conditions, "Ready")?.0 == "True").then_some(s)
    })
    .await;
    assert_eq!(
        condition(&good.conditions, "Separated").unwrap().1,
        "Separated"
    );
    assert_eq!(
        condition(&good.conditions, "StorageReachable").unwrap().0,
        "True"
    );
    assert!(
        dir.path().join("good/cache").is_dir(),
        "the operator created the cache directory"
    );
    assert_eq!(good.observed_generation, Some(1));

    let bad = eventually(
        Duration::from_secs(20),
        "vault same-zone Separated=False",
        || async {
            let s = vaults.get("same-zone").await.ok()?.status?;
            (condition(&s.conditions, "Separated")?.0 == "False").then_some(s)
        },
    )
    .await;
    let (_, reason, message) = condition(&bad.conditions, "Separated").unwrap();
    assert_eq!(reason, "SameZone");
    assert!(message.contains("both in zone zone-a"), "{message}");
    assert_eq!(
        condition(&bad.conditions, "Ready").unwrap().1,
        "NotSeparated"
    );

    // Events reached the API.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(rig.client(), "apps");
    let list = events.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("VaultReady")),
        "a VaultReady event"
    );
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("VaultNotReady")
                && e.type_.as_deref() == Some("Warning"))
    );

    // Node labels change: zone-b moves to region-2, and a Region vault across a/b becomes separated.
    vaults
        .create(
            &PostParams::default(),
            &vault("regional", "Region", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "regional SameRegion", || async {
        let s = vaults.get("regional").await.ok()?.status?;
        (condition(&s.conditions, "Separated")?.1 == "SameRegion").then_some(())
    })
    .await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(rig.client());
    nodes
        .patch(
            "node-b1",
            &Default::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"topology.kubernetes.io/region": "region-2"}}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "regional separated after relabel",
        || async {
            let s = vaults.get("regional").await.ok()?.status?;
            (condition(&s.conditions, "Separated")?.0 == "True").then_some(())
        },
    )
    .await;
    running.stop().await;
}

#[tokio::test]
async fn registered_flips_with_agent_registration() {
    let (rig, dir) = cluster().await;
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    vaults
        .create(
            &PostParams::default(),
            &vault("vault", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    rig.statefulset("apps", "db", &["data"], &["node-a1", "node-b1"])
        .await;
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    let rw: ReplicatedWorkload = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
    }))
    .unwrap();
    workloads.create(&PostParams::default(), &rw).await.unwrap();

    let status = eventually(
        Duration::from_secs(20),
        "Registered=False NoAgentOnNode",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            (condition(&s.conditions, "Registered")?.1 == "NoAgentOnNode").then_some(s)
        },
    )
    .await;
    let claims: Vec<_> = status
        .volumes
        .iter()
        .map(|v| (v.claim_name.as_str(), v.node.as_deref(), v.zone.as_deref()))
        .collect();
    assert_eq!(
        claims,
        [
            ("data-db-0", Some("node-a1"), Some("zone-a")),
            ("data-db-1", Some("node-b1"), Some("zone-b"))
        ]
    );

    // The real agent runs on both nodes: Registered flips to True, driven by the Lease watch.
    let agent = |node: &str| {
        let settings = site_recovery::agent::AgentSettings {
            node_name: node.into(),
            namespace: OPERATOR_NS.into(),
            lease_duration_seconds: 3,
            kubelet_root: rig.kubelet_root.path().to_path_buf(),
            storage: rig.storage_rules(),
            state_dir: rig.agent_state_dir(node),
        };
        let (stop, shutdown) = Shutdown::new();
        (
            stop,
            tokio::spawn(site_recovery::agent::run(
                rig.agent_client_on(node),
                settings,
                shutdown.wait(),
            )),
        )
    };
    let (stop_a, agent_a) = agent("node-a1");
    let (_stop_b, _agent_b) = agent("node-b1");
    let status = eventually(Duration::from_secs(10), "Registered=True", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (condition(&s.conditions, "Registered")?.0 == "True").then_some(s)
    })
    .await;
    assert_eq!(condition(&status.conditions, "Ready").unwrap().0, "True");
    // The registration carries the node's zone as the agent read it from the Node.
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(rig.client(), OPERATOR_NS)
            .get("site-recovery-agent-node-b1")
            .await
            .unwrap();
    assert_eq!(
        lease
            .metadata
            .annotations
            .unwrap()
            .get("siterecovery.io/zone")
            .map(String::as_str),
        Some("zone-b")
    );
    // Registered stays True across renewals (3s leases renewed every second).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = workloads.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        condition(&s.conditions, "Registered").unwrap().0,
        "True",
        "renewals keep the agent registered"
    );
    // node-a1's agent stops: after its 3s duration the workload shows AgentLost.
    let _ = stop_a.send(true);
    agent_a.await.unwrap().unwrap();
    let status = eventually(
        Duration::from_secs(15),
        "Registered=False AgentLost",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            (condition(&s.conditions, "Registered")?.1 == "AgentLost").then_some(s)
        },
    )
    .await;
    assert!(
        condition(&status.conditions, "Registered")
            .unwrap()
            .2
            .contains("node-a1")
    );
    assert_eq!(
        condition(&status.conditions, "Ready").unwrap().1,
        "NotRegistered"
    );
    // Deleting the vault is seen through the shared vault watch: the workload says so.
    vaults.delete("vault", &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "Ready=False VaultNotFound",
        || async {
            let s = workloads.get("db").await.ok()?.status?;
            (condition(&s.conditions, "Ready")?.1 == "VaultNotFound").then_some(())
        },
    )
    .await;
    running.stop().await;
}

#[tokio::test]
async fn failover_reports_why_it_cannot_start_and_refuses_duplicates() {
    let (rig, dir) = cluster().await;
    let running = start_operator(&rig, false).await;
    let failovers: Api<site_recovery::api::Failover> = Api::namespaced(rig.client(), "apps");
    let failover = |name: &str| -> site_recovery::api::Failover {
        serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"workloadName": "db", "recoveryPoint": {"latest": true}},
        }))
        .unwrap()
    };
    failovers
        .create(&PostParams::default(), &failover("first"))
        .await
        .unwrap();
    let reason = |name: &'static str, want: &'static str| {
        let failovers = failovers.clone();
        async move {
            eventually(
                Duration::from_secs(20),
                &format!("{name} Ready reason {want}"),
                || async {
                    let s = failovers.get(name).await.ok()?.status?;
                    let c = condition(&s.conditions, "Ready")?;
                    (c.1 == want).then(|| c.2.to_string())
                },
            )
            .await
        }
    };
    let message = reason("first", "WorkloadNotFound").await;
    assert!(message.contains("spec.workloadName"), "{message}");

    // The workload appears (unprotected: no recovery point yet).
    Api::<RecoveryVault>::namespaced(rig.client(), "apps")
        .create(
            &PostParams::default(),
            &vault("vault", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    rig.statefulset("apps", "db", &["data"], &["node-a1"]).await;
    let rw: ReplicatedWorkload = serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}},
    }))
    .unwrap();
    Api::<ReplicatedWorkload>::namespaced(rig.client(), "apps")
        .create(&PostParams::default(), &rw)
        .await
        .unwrap();
    reason("first", "WorkloadNotProtected").await;

    // A second Failover of the same workload is refused; deleting the first frees it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    failovers
        .create(&PostParams::default(), &failover("second"))
        .await
        .unwrap();
    let message = reason("second", "DuplicateFailover").await;
    assert!(
        message.contains("Failover first already handles workload db"),
        "{message}"
    );
    let s = failovers.get("first").await.unwrap().status.unwrap();
    assert_eq!(
        condition(&s.conditions, "Ready").unwrap().1,
        "WorkloadNotProtected"
    );
    assert_eq!(
        condition(&s.conditions, "FailedOver").unwrap().1,
        "NotStarted"
    );
    assert_eq!(
        condition(&s.conditions, "Committed").unwrap().1,
        "NotCommitted"
    );
    failovers
        .delete("first", &Default::default())
        .await
        .unwrap();
    reason("second", "WorkloadNotProtected").await;
    running.stop().await;
}

#[tokio::test]
async fn malformed_object_is_reported_without_stopping_the_controller() {
    // A cluster whose RecoveryVault CRD is looser than ours (version skew): the API accepts a
    // vault our types cannot read.
    let rig = Rig::start().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.namespace("apps").await;
    rig.node("node-a1", "zone-a", "region-1").await;
    rig.node("node-b1", "zone-b", "region-1").await;
    rig.secret("apps", "vault-key", &[("key", &[7u8; 32])])
        .await;
    let mut loose =
        serde_json::to_value(<RecoveryVault as kube::CustomResourceExt>::crd()).unwrap();
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    rig.create(loose).await;
    for crd in [
        <ReplicatedWorkload as kube::CustomResourceExt>::crd(),
        <site_recovery::api::Failover as kube::CustomResourceExt>::crd(),
    ] {
        rig.create(serde_json::to_value(crd).unwrap()).await;
    }
    rig.create(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": "broken", "namespace": "apps"},
        "spec": {"redundancy": "Planet", "cache": {"zone": "zone-a"}},
    }))
    .await;
    let dir = rig.vault_dir("apps");
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    vaults
        .create(
            &PostParams::default(),
            &vault("good", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the good vault Ready despite a malformed one",
        || async {
            let s = vaults.get("good").await.ok()?.status?;
            (condition(&s.conditions, "Ready")?.0 == "True").then_some(())
        },
    )
    .await;
    let raw: Api<kube::core::DynamicObject> = Api::namespaced_with(
        rig.client(),
        "apps",
        &kube::core::ApiResource::erase::<RecoveryVault>(&()),
    );
    let broken = eventually(
        Duration::from_secs(20),
        "the malformed vault's status",
        || async {
            let o = raw.get("broken").await.ok()?;
            let c = o.data["status"]["conditions"][0].clone();
            (c["reason"] == "InvalidSpec").then_some(c)
        },
    )
    .await;
    assert_eq!(broken["status"], "False");
    let message = broken["message"].as_str().unwrap();
    assert!(
        message.contains("spec.cache: missing field `storage`"),
        "the message names the field: {message}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(rig.client(), "apps");
    let list = events.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidObject")),
        "an InvalidObject event"
    );
    running.stop().await;
}

/// The Secret `s3-credentials` in `apps`, with the S3 test server's credentials.
pub(crate) async fn s3_credentials(rig: &Rig) {
    rig.secret(
        "apps",
        "s3-credentials",
        &[
            ("AWS_ACCESS_KEY_ID", b"test"),
            ("AWS_SECRET_ACCESS_KEY", b"s3-secret-value-0001"),
        ],
    )
    .await;
}

#[tokio::test]
async fn object_store_vaults_are_probed_with_their_credentials() {
    let (rig, _dir) = cluster().await;
    let s3 = std::env::var("SITE_RECOVERY_TEST_S3_ENDPOINT")
        .expect("run with `bash scripts/test.sh`: it starts the S3 and Azure servers");
    let azure = std::env::var("SITE_RECOVERY_TEST_AZURE_ENDPOINT")
        .expect("run with `bash scripts/test.sh`");
    s3_credentials(&rig).await;
    rig.secret(
        "apps",
        "azure-credentials",
        &[("accountKey", crate::object_stores::AZURITE_KEY.as_bytes())],
    )
    .await;
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    rig.secret(
        "apps",
        "azure-wrong",
        &[("accountKey", wrong_key.as_bytes())],
    )
    .await;
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    let vault = |name: &str, azure_secret: &str| -> RecoveryVault {
        serde_json::from_value(json!({
            "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {
                "redundancy": "Zone",
                "cache": {"zone": "zone-a", "storage": {"s3": {"bucket": "sr-test", "prefix": name, "endpoint": s3, "credentialsSecretRef": {"name": "s3-credentials"}}}},
                "target": {"zone": "zone-b", "storage": {"azureBlob": {"container": "sr-test", "prefix": name, "accountName": "devstoreaccount1", "endpoint": azure, "credentialsSecretRef": {"name": azure_secret}}}},
                "encryption": {"keySecretRef": {"name": "vault-key"}},
            },
        }))
        .unwrap()
    };
    vaults
        .create(
            &PostParams::default(),
            &vault("objects", "azure-credentials"),
        )
        .await
        .unwrap();
    vaults
        .create(&PostParams::default(), &vault("denied", "azure-wrong"))
        .await
        .unwrap();
    let good = eventually(
        Duration::from_secs(30),
        "the object-store vault Ready",
        || async {
            let s = vaults.get("objects").await.ok()?.status?;
            (condition(&s.conditions, "Ready")?.0 == "True").then_some(s)
        },
    )
    .await;
    assert_eq!(
        condition(&good.conditions, "StorageReachable").unwrap().1,
        "StorageReachable"
    );
    let bad = eventually(
        Duration::from_secs(30),
        "the denied vault StorageUnreachable",
        || async {
            let s = vaults.get("denied").await.ok()?.status?;
            (condition(&s.conditions, "StorageReachable")?.1 == "StorageUnreachable").then_some(s)
        },
    )
    .await;
    let message = condition(&bad.conditions, "StorageReachable").unwrap().2;
    assert!(
        message.starts_with("target location: az://devstoreaccount1/sr-test/denied"),
        "{message}"
    );
    assert!(!message.contains(wrong_key), "the key leaked: {message}");
    // The storage's own answer (an XML error body, request details) stays in the log: the
    // status says the status code and the object.
    assert!(
        message.contains("HTTP 403") && message.contains("config"),
        "{message}"
    );
    for verbatim in [
        "<?xml",
        "Server returned",
        "AuthenticationFailed",
        "RequestId",
    ] {
        assert!(
            !message.contains(verbatim),
            "a storage body reached the status: {message}"
        );
    }
    assert!(message.len() < 300, "{message}");
    running.stop().await;
}

#[tokio::test]
async fn vault_storage_outside_the_tenants_lane_is_invalid_spec() {
    let (rig, dir) = cluster().await;
    s3_credentials(&rig).await;
    // This operator is installed as a production chart is: https only, no ambient identity.
    let mut settings = Settings::new(OPERATOR_NS);
    settings.leader_election = false;
    settings.storage = site_recovery::storage::StorageRules {
        allow_insecure_endpoints: false,
        ..rig.storage_rules()
    };
    let (stop, shutdown) = Shutdown::new();
    let running = Running {
        stop,
        task: tokio::spawn(operator::run(rig.operator_client(), settings, shutdown)),
    };
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    let elsewhere = tempfile::tempdir().unwrap();
    let other_tenant = rig.storage_root.path().join("other").join("cache");
    let spec = |cache: serde_json::Value, target: serde_json::Value| -> serde_json::Value {
        json!({
            "redundancy": "Zone",
            "cache": {"zone": "zone-a", "storage": cache},
            "target": {"zone": "zone-b", "storage": target},
            "encryption": {"keySecretRef": {"name": "vault-key"}},
        })
    };
    let fs = |p: &std::path::Path| json!({"filesystem": {"path": p}});
    let cases = [
        (
            "outside",
            spec(fs(&dir.path().join("c")), fs(elsewhere.path())),
            "spec.target.storage.filesystem.path: ",
        ),
        (
            "other-tenant",
            spec(fs(&other_tenant), fs(&dir.path().join("t"))),
            "spec.cache.storage.filesystem.path: ",
        ),
        (
            "plain-http",
            spec(
                json!({"s3": {"bucket": "sr-test", "endpoint": "http://127.0.0.1:9", "credentialsSecretRef": {"name": "s3-credentials"}}}),
                fs(&dir.path().join("t2")),
            ),
            "spec.cache.storage.s3.endpoint: \"http://127.0.0.1:9\" is not https",
        ),
        (
            "ambient",
            spec(
                fs(&dir.path().join("c3")),
                json!({"azureBlob": {"container": "sr-test", "accountName": "acct", "endpoint": "https://127.0.0.1:9"}}),
            ),
            "spec.target.storage.azureBlob.credentialsSecretRef: required",
        ),
    ];
    for (name, spec, _) in &cases {
        rig.create(
            json!({"apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
            "metadata": {"name": name, "namespace": "apps"}, "spec": spec}),
        )
        .await;
    }
    for (name, _, field) in &cases {
        let status = eventually(Duration::from_secs(20), "InvalidSpec", || async {
            let s = vaults.get(name).await.ok()?.status?;
            (condition(&s.conditions, "Ready")?.1 == "InvalidSpec").then_some(s)
        })
        .await;
        let (_, _, message) = condition(&status.conditions, "Ready").unwrap();
        assert!(message.contains(field), "{name}: {message}");
        assert!(
            message.contains("expected")
                || message.contains("required")
                || message.contains("https"),
            "{name}: {message}"
        );
    }
    // Nothing was created or probed outside the namespace's directory.
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert!(!rig.storage_root.path().join("other").exists());
    // Admission refuses a path that climbs, naming the field and what is expected.
    let climb = dir.path().join("..").join("..").join("other").join("cache");
    let refused = rig
        .try_create_or_keep(
            json!({"apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
            "metadata": {"name": "climb", "namespace": "apps"},
            "spec": spec(fs(&climb), fs(&dir.path().join("t4")))}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("spec.cache.storage.filesystem.path") && refused.contains("'..'"),
        "{refused}"
    );
    running.stop().await;
}

#[tokio::test]
async fn hostile_objects_get_conditions_and_the_operator_serves_on() {
    let (rig, dir) = cluster().await;
    rig.secret(
        "apps",
        "placeholder-key",
        &[(
            "key",
            site_recovery::vault_access::PLACEHOLDER_KEY.as_bytes(),
        )],
    )
    .await;
    // node-c1's registration was renewed at the end of time, for ever, with a report annotation
    // that is not one; node-b1's carries a renewTime Kubernetes accepts and a timestamp cannot
    // hold; node-a1's is an ordinary one.
    use site_recovery::api::registration::*;
    let lease = |node: &str, renewed: &str, duration: i64| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node), "namespace": OPERATOR_NS,
                "labels": {COMPONENT_LABEL: COMPONENT_VALUE, NODE_LABEL: node},
                "annotations": {ZONE_ANNOTATION: "zone-a", site_recovery::api::work::WORK_ANNOTATION: "[".repeat(300_000)}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": renewed}})
    };
    rig.create(lease("node-c1", "9999-12-30T21:59:59.000000Z", 2147483647))
        .await;
    rig.create(lease("node-b1", "9999-12-31T23:59:59.000000Z", 30))
        .await;
    rig.register_agent(OPERATOR_NS, "node-a1", "zone-a", 30)
        .await;
    rig.statefulset("apps", "db", &["data"], &["node-a1", "node-c1"])
        .await;
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    let mut placeholder = vault("placeholder", "Zone", "zone-a", "zone-b", dir.path());
    placeholder.spec.encryption.key_secret_ref.name = "placeholder-key".into();
    vaults
        .create(&PostParams::default(), &placeholder)
        .await
        .unwrap();
    vaults
        .create(
            &PostParams::default(),
            &vault("vault", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    let long = "x".repeat(64);
    rig.create(
        json!({"apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": long, "namespace": "apps"},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}}}),
    )
    .await;
    rig.create(
        json!({"apiVersion": "siterecovery.io/v1alpha1", "kind": "Failover",
        "metadata": {"name": long, "namespace": "apps"},
        "spec": {"workloadName": long}}),
    )
    .await;
    let ready = |kind: &'static str, name: String| {
        let client = rig.client();
        async move {
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                client,
                "apps",
                &kube::api::ApiResource::from_gvk_with_plural(
                    &kube::api::GroupVersionKind::gvk("siterecovery.io", "v1alpha1", kind),
                    &crate::rig::plural_of(kind),
                ),
            );
            let o = api.get(&name).await.ok()?;
            let c = o.data["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            Some((
                c["reason"].as_str()?.to_string(),
                c["message"].as_str()?.to_string(),
            ))
        }
    };
    let (reason, message) = eventually(Duration::from_secs(20), "the placeholder refused", || {
        let r = ready("RecoveryVault", "placeholder".into());
        async move { r.await.filter(|(r, _)| r != "VaultReady" && !r.is_empty()) }
    })
    .await;
    assert_eq!(reason, "PlaceholderKey", "{message}");
    assert!(message.contains("openssl rand"), "{message}");
    for kind in ["ReplicatedWorkload", "Failover"] {
        let (reason, message) = eventually(Duration::from_secs(20), "InvalidSpec at once", || {
            let r = ready(kind, long.clone());
            async move { r.await.filter(|(r, _)| r == "InvalidSpec") }
        })
        .await;
        assert!(
            message.starts_with("metadata.name: ") && message.contains("at most 63"),
            "{kind} {reason}: {message}"
        );
    }
    // Everything else is served as before: the good vault is Ready, the workload on node-a1 and
    // node-c1 sees both registrations (the unreadable one of node-b1 stopped no watch).
    rig.create(
        json!({"apiVersion": "siterecovery.io/v1alpha1", "kind": "ReplicatedWorkload",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"vaultName": "vault", "workloadRef": {"kind": "StatefulSet", "name": "db"}}}),
    )
    .await;
    let workloads: Api<ReplicatedWorkload> = Api::namespaced(rig.client(), "apps");
    eventually(Duration::from_secs(20), "db Registered", || async {
        let s = workloads.get("db").await.ok()?.status?;
        (condition(&s.conditions, "Registered")?.0 == "True").then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "the good vault Ready", || {
        let r = ready("RecoveryVault", "vault".into());
        async move { r.await.filter(|(r, _)| r == "VaultReady") }
    })
    .await;
    let failovers: Api<site_recovery::api::Failover> = Api::namespaced(rig.client(), "apps");
    assert!(
        failovers
            .get(&long)
            .await
            .unwrap()
            .metadata
            .finalizers
            .is_none(),
        "nothing was started for a name that cannot label what it makes"
    );
    assert!(!running.task.is_finished(), "the operator did not panic");
    running.stop().await;
}
