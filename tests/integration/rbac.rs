//! The rig authorizes as a cluster does, so a verb the code needs and the chart lacks fails a
//! test: these tests show the check itself can fail, and what a denial looks like.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use site_recovery::api::RecoveryVault;

use crate::operator::{OPERATOR_NS, cluster, start_operator, vault};
use crate::rig::chart::{AGENT_SA, OPERATOR_SA, rbac_documents};
use crate::rig::{Rig, eventually};

#[tokio::test]
async fn a_verb_missing_from_the_chart_fails_the_scenario_with_the_real_403() {
    let (rig, dir) = cluster().await;
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
    let who = format!("system:serviceaccount:{OPERATOR_NS}:{AGENT_SA}");
    // `kubectl auth can-i get secrets -n kube-system --as=<agent>`: no.
    let err = Api::<Secret>::namespaced(agent.clone(), "kube-system")
        .get("bootstrap-token")
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                format!(
                    "secrets \"bootstrap-token\" is forbidden: User \"{who}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
                )
            );
        }
        other => panic!("expected a 403, got {other}"),
    }
    let err = Api::<Secret>::namespaced(agent.clone(), "kube-system")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot list resource \"secrets\""),
        "{err}"
    );
    // Only the Secrets the operator hands on, in its own namespace, by name.
    let handed = Api::<Secret>::namespaced(agent.clone(), OPERATOR_NS)
        .get_opt("sr-vault-none")
        .await
        .expect("the agent may read Secrets in the release namespace");
    assert!(handed.is_none());
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

#[tokio::test]
async fn vault_keys_are_handed_to_the_agents_in_the_release_namespace_and_removed_with_the_vault() {
    let (rig, dir) = cluster().await;
    let running = start_operator(&rig, false).await;
    let vaults: Api<RecoveryVault> = Api::namespaced(rig.client(), "apps");
    let mut uids = Vec::new();
    for name in ["one", "two"] {
        let v = vaults
            .create(
                &PostParams::default(),
                &vault(name, "Zone", "zone-a", "zone-b", dir.path()),
            )
            .await
            .unwrap();
        uids.push(v.metadata.uid.unwrap());
    }
    let handed: Api<Secret> = Api::namespaced(rig.client(), OPERATOR_NS);
    for uid in &uids {
        let s = eventually(Duration::from_secs(20), "the handed Secret", || async {
            handed.get_opt(&format!("sr-vault-{uid}")).await.ok()?
        })
        .await;
        assert_eq!(
            s.data.unwrap()["key"].0,
            vec![7u8; 32],
            "the agents get the vault's key"
        );
    }
    vaults.delete("one", &Default::default()).await.unwrap();
    // The next reconcile of any vault removes what the deleted one was handed.
    vaults
        .patch(
            "two",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the deleted vault's Secret removed",
        || async {
            handed
                .get_opt(&format!("sr-vault-{}", uids[0]))
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        handed
            .get_opt(&format!("sr-vault-{}", uids[1]))
            .await
            .unwrap()
            .is_some()
    );
    running.stop().await;
}

/// `(identity, scope, resource, verb)` for every grant.
type Grants = std::collections::BTreeSet<(String, String, String, String)>;

#[test]
fn the_readme_permission_table_is_the_charts_rbac() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Permissions")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a Permissions section");
    let mut documented = Grants::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("---"))
    {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        if cells[0] == "identity" {
            continue;
        }
        for resource in cells[2].split(", ") {
            let resource = resource.split(" (").next().unwrap();
            for verb in cells[3].split(", ") {
                documented.insert((
                    cells[0].into(),
                    cells[1].into(),
                    resource.into(),
                    verb.into(),
                ));
            }
        }
    }
    let docs = rbac_documents(&[]);
    let identity = |role_kind: &str, role: &str| {
        docs.iter()
            .filter(|d| {
                matches!(
                    d["kind"].as_str(),
                    Some("ClusterRoleBinding" | "RoleBinding")
                )
            })
            .find(|b| b["roleRef"]["kind"] == role_kind && b["roleRef"]["name"] == role)
            .and_then(|b| b["subjects"][0]["name"].as_str())
            .map(|sa| sa.trim_start_matches("site-recovery-").to_string())
            .unwrap_or_else(|| panic!("{role_kind} {role} is bound to nobody"))
    };
    let mut granted = Grants::new();
    for role in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        let kind = role["kind"].as_str().unwrap();
        let who = identity(kind, role["metadata"]["name"].as_str().unwrap());
        let scope = if kind == "ClusterRole" {
            "cluster"
        } else {
            "release namespace"
        };
        for rule in role["rules"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        who.clone(),
                        scope.into(),
                        resource.as_str().unwrap().into(),
                        verb.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    let missing: Vec<_> = granted.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&granted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "granted but not in the README: {missing:?}\nin the README but not granted: {extra:?}"
    );
}

#[tokio::test]
async fn an_agent_writes_only_its_own_nodes_registration() {
    use k8s_openapi::api::coordination::v1::Lease;
    let rig = Rig::start().await;
    rig.namespace(OPERATOR_NS).await;
    rig.install_chart_rbac(&[]).await;
    rig.expect_denials();
    let leases: Api<Lease> = Api::namespaced(rig.agent_client_on("node-a1"), OPERATOR_NS);
    let lease = |name: &str, node: &str| -> Lease {
        serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": OPERATOR_NS,
                "labels": {"app.kubernetes.io/component": "agent-registration", "siterecovery.io/node": node}},
            "spec": {"holderIdentity": node},
        }))
        .unwrap()
    };
    leases
        .create(
            &PostParams::default(),
            &lease("site-recovery-agent-node-a1", "node-a1"),
        )
        .await
        .expect("its own registration");
    for (name, node) in [
        ("site-recovery-agent-node-b1", "node-b1"),
        ("site-recovery-agent-node-b1", "node-a1"),
        ("site-recovery-agent-node-a1-x", "node-a1"),
        ("site-recovery-operator", "node-a1"),
    ] {
        let err = leases
            .create(&PostParams::default(), &lease(name, node))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 403, "{name}: {}", s.message);
                assert!(
                    s.message
                        .contains("ValidatingAdmissionPolicy 'site-recovery-agent-own-lease'")
                        && s.message
                            .contains("only the registration Lease of the node"),
                    "{name}: {}",
                    s.message
                );
            }
            other => panic!("{name}: expected a 403, got {other}"),
        }
    }
    // Relabelling its own Lease as another node's is refused too.
    let err = leases
        .patch(
            "site-recovery-agent-node-a1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"siterecovery.io/node": "node-b1"}}}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only the registration Lease"),
        "{err}"
    );
    // A token that names no node (minted outside a pod, or an older cluster) is not held back:
    // a compromised node holds its pods' bound tokens, which always name it.
    Api::<Lease>::namespaced(rig.agent_client(), OPERATOR_NS)
        .create(
            &PostParams::default(),
            &lease("site-recovery-agent-node-c1", "node-c1"),
        )
        .await
        .expect("a token without a node");
}
