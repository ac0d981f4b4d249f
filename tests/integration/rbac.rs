//! The rig authorizes as a cluster does, so a verb the code needs and the chart lacks fails a
//! test: these tests show the check itself can fail, and what a denial looks like.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use site_recovery::api::RecoveryVault;

use crate::operator::{OPERATOR_NS, start_operator, vault};
use crate::rig::chart::{AGENT_SA, OPERATOR_SA, rbac_documents};
use crate::rig::{Rig, eventually};

#[tokio::test]
async fn a_verb_missing_from_the_chart_fails_the_scenario_with_the_real_403() {
    let rig = Rig::start().await;
    rig.apply_crds().await;
    rig.namespace(OPERATOR_NS).await;
    rig.namespace("apps").await;
    rig.node("node-a1", "zone-a", "region-1").await;
    rig.node("node-b1", "zone-b", "region-1").await;
    rig.secret("apps", "vault-key", &[("key", &[7u8; 32])])
        .await;
    // The chart's roles, less one verb: the operator may no longer write vault status.
    let mut docs = rbac_documents(&[]);
    let mut removed = false;
    for doc in docs.iter_mut().filter(|d| d["kind"] == "ClusterRole") {
        for rule in doc["rules"].as_array_mut().unwrap() {
            if rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!("recoveryvaults/status"))
            {
                rule["verbs"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|v| v != "patch");
                removed = true;
            }
        }
    }
    assert!(removed, "the chart grants patch on recoveryvaults/status");
    rig.install_rbac(docs).await;
    rig.expect_denials();

    let dir = tempfile::tempdir().unwrap();
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    vaults
        .create(
            &PostParams::default(),
            &vault("vault", "Zone", "zone-a", "zone-b", dir.path()),
        )
        .await
        .unwrap();
    let operator = format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}");
    let denied = eventually(Duration::from_secs(20), "a denied status write", || async {
        rig.denied().into_iter().find(|(who, _)| *who == operator)
    })
    .await;
    assert_eq!(
        denied.1,
        format!(
            "recoveryvaults.siterecovery.io \"vault\" is forbidden: User \"{operator}\" cannot patch resource \"recoveryvaults/status\" in API group \"siterecovery.io\" in the namespace \"apps\""
        )
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = vaults.get("vault").await.unwrap().status;
    assert!(
        status.is_none_or(|s| s.conditions.is_empty()),
        "the scenario fails: the vault never shows a condition"
    );
    running.stop().await;
}

#[tokio::test]
async fn the_agent_cannot_read_secrets_cluster_wide_nor_list_what_it_does_not_need() {
    let rig = Rig::start().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.expect_denials();
    rig.secret("kube-system", "bootstrap-token", &[("token", b"secret")])
        .await;
    let agent = rig.agent_client();
    let err = Api::<Secret>::namespaced(agent.clone(), "kube-system")
        .list(&Default::default())
        .await
        .unwrap_err();
    let who = format!("system:serviceaccount:{OPERATOR_NS}:{AGENT_SA}");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(s.reason, "Forbidden");
            assert_eq!(
                s.message,
                format!(
                    "secrets is forbidden: User \"{who}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
                )
            );
        }
        other => panic!("expected a 403, got {other}"),
    }
    let err = Api::<Service>::all(agent)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at the cluster scope"), "{err}");
    // An unknown token is not anybody.
    let mut config = kube::Config::new(rig.url().parse().unwrap());
    config.auth_info.token = Some("forged".to_string().into());
    let stranger = kube::Client::try_from(config).unwrap();
    let err = Api::<Service>::all(stranger)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );
}
