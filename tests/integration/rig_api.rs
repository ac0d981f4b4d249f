//! The rig answers the real kube client the way a kube-apiserver does.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use site_recovery::api::RecoveryVault;

use crate::rig::{Rig, eventually};

fn vault(name: &str, cache: &str, target: &str) -> RecoveryVault {
    serde_json::from_value(json!({
        "apiVersion": "siterecovery.io/v1alpha1", "kind": "RecoveryVault",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "cache": {"zone": cache, "storage": {"filesystem": {"path": "/tmp/c"}}},
            "target": {"zone": target, "storage": {"filesystem": {"path": "/tmp/t"}}},
            "encryption": {"keySecretRef": {"name": "key"}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_generation_and_status_subresource() {
    let rig = Rig::start().await;
    rig.apply_crds().await;
    let api: Api<RecoveryVault> = Api::namespaced(rig.client(), "default");
    let created = api
        .create(&PostParams::default(), &vault("v1", "zone-a", "zone-b"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is dropped on create");
    // Schema defaults were applied by the server.
    assert_eq!(
        created.spec.replication_policy.crash_consistent_frequency,
        "5m"
    );

    // A status write does not bump generation and ignores spec.
    let mut with_status = created.clone();
    with_status.status = Some(Default::default());
    with_status.status.as_mut().unwrap().observed_generation = Some(1);
    with_status.spec.cache.zone = Some("zone-x".into());
    let after = api
        .replace_status("v1", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(after.metadata.generation, Some(1));
    assert_eq!(after.spec.cache.zone.as_deref(), Some("zone-a"));
    assert_eq!(after.status.unwrap().observed_generation, Some(1));

    // A spec change bumps generation; a stale resourceVersion is a 409.
    let patched = api
        .patch(
            "v1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"target": {"zone": "zone-c"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let stale = api
        .replace("v1", &PostParams::default(), &created)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{stale:?}"
    );

    // CEL admission: same zone with Zone redundancy is rejected with the field named.
    let err = api
        .create(&PostParams::default(), &vault("bad", "zone-a", "zone-a"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a Status")
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("spec.target.zone must differ from spec.cache.zone"),
        "{}",
        status.message
    );

    // Field selector on metadata.name, label-less list.
    let listed = api
        .list(&ListParams::default().fields("metadata.name=v1"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    api.delete("v1", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("v1").await.unwrap().is_none());
}

#[tokio::test]
async fn watcher_follows_changes_and_recovers_from_410() {
    let rig = Rig::start().await;
    // No bookmarks: the watcher's last resourceVersion stays at the last vault event.
    rig.set_bookmark_interval(Duration::from_secs(600));
    rig.apply_crds().await;
    let api: Api<RecoveryVault> = Api::namespaced(rig.client(), "default");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let task = tokio::spawn(
        watcher(api.clone(), watcher::Config::default().timeout(2))
            .default_backoff()
            .applied_objects()
            .for_each(move |v| {
                // A 410 surfaces as one error item; the watcher then relists.
                if let Ok(v) = v {
                    log.lock().unwrap().push(format!(
                        "{}@{}",
                        kube::ResourceExt::name_any(&v),
                        v.metadata.resource_version.clone().unwrap_or_default()
                    ));
                }
                futures::future::ready(())
            }),
    );
    api.create(&PostParams::default(), &vault("a", "zone-a", "zone-b"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the watcher to see vault a",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.starts_with("a@"))
                .then_some(())
        },
    )
    .await;
    // The watch cache forgets while the watch is open: the next re-watch gets 410 and the
    // watcher relists.
    // Other writes move the cluster's resourceVersion past it, then the watch cache forgets.
    rig.namespace("other").await;
    rig.expire_watch_cache();
    api.create(&PostParams::default(), &vault("b", "zone-a", "zone-b"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the watcher to see vault b after a compaction",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.starts_with("b@"))
                .then_some(())
        },
    )
    .await;
    assert!(
        rig.expired_watches() >= 1,
        "the re-watch from the old resourceVersion got 410 Expired"
    );
    task.abort();
    let _ = task.await;
    let stream = watcher(api, watcher::Config::default())
        .applied_objects()
        .take(2);
    let names: Vec<_> =
        tokio::time::timeout(Duration::from_secs(5), stream.try_collect::<Vec<_>>())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(names.len(), 2);
}

/// A ValidatingAdmissionPolicy denies as the API server's plugin does: the message from
/// messageExpression (falling back to message, then to the expression), the reason and its code
/// (Invalid, 422, when none is set), the message again as the one cause; a subresource is
/// matched only when named; a false match condition skips the policy even when another fails;
/// an expression that cannot be evaluated denies under failurePolicy Fail.
#[tokio::test]
async fn admission_policies_deny_as_the_api_server_does() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let rig = Rig::start().await;
    rig.apply_document(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "guard"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["statefulsets"]}]},
            "matchConditions": [
                // Fails to evaluate where the next one is false.
                {"name": "broken-where-unguarded", "expression": "oldObject.metadata.labels['guarded'] != 'no' || oldObject.metadata.nothing"},
                {"name": "guarded", "expression": "has(oldObject.metadata.labels) && 'guarded' in oldObject.metadata.labels && oldObject.metadata.labels['guarded'] != 'no'"},
            ],
            "validations": [
                {"expression": "!has(object.metadata.labels.error) || object.spec.nothing == 1"},
                {"expression": "object.spec.replicas <= 1",
                    "messageExpression": "request.kind.kind + ' ' + request.name + ' may not have ' + string(object.spec.replicas) + ' replicas'"},
                {"expression": "!('two' in object.metadata.labels)", "messageExpression": "'two\\nlines'",
                    "message": "no label two", "reason": "Forbidden"},
                {"expression": "!('bare' in object.metadata.labels)"},
            ],
        },
    }))
    .await;
    rig.apply_document(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "guard-all"},
        "spec": {"policyName": "guard", "validationActions": ["Deny"]},
    }))
    .await;
    let set = |name: &str, labels: serde_json::Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        })
    };
    rig.create(set("db", json!({"guarded": "yes"}))).await;
    rig.create(set("free", json!({}))).await;
    let sets: Api<StatefulSet> = Api::namespaced(rig.client(), "default");
    let patch = |name: &'static str, p: serde_json::Value| {
        let sets = sets.clone();
        async move {
            match sets
                .patch(name, &PatchParams::default(), &Patch::Merge(p))
                .await
            {
                Ok(_) => None,
                Err(kube::Error::Api(s)) => Some(s),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let prefix = "statefulsets.apps \"db\" is forbidden: ValidatingAdmissionPolicy 'guard' with binding 'guard-all' denied request: ";
    let s = patch("db", json!({"spec": {"replicas": 3}})).await.unwrap();
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        format!("{prefix}StatefulSet db may not have 3 replicas")
    );
    let details = s.details.unwrap();
    assert_eq!(
        details.causes[0].message,
        s.message.split_once("is forbidden: ").unwrap().1
    );
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("db", "statefulsets")
    );
    // A multi-line messageExpression falls back to the message; the reason sets the code.
    let s = patch("db", json!({"metadata": {"labels": {"two": "x"}}}))
        .await
        .unwrap();
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(s.message, format!("{prefix}no label two"));
    let s = patch("db", json!({"metadata": {"labels": {"bare": "x"}}}))
        .await
        .unwrap();
    assert_eq!(
        s.message,
        format!("{prefix}failed expression: !('bare' in object.metadata.labels)")
    );
    // An evaluation error denies (failurePolicy Fail), with the policy named.
    let s = patch("db", json!({"metadata": {"labels": {"error": "x"}}}))
        .await
        .unwrap();
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(s.message.starts_with(prefix), "{}", s.message);
    // The status subresource is not the resource; an object without the label is not matched,
    // and neither is one whose false condition comes before a failing one.
    rig.patch_status(
        "apps/v1",
        "StatefulSet",
        Some("default"),
        "db",
        json!({"status": {"replicas": 5}}),
    )
    .await;
    assert!(
        patch("free", json!({"spec": {"replicas": 3}}))
            .await
            .is_none()
    );
    assert!(
        patch("db", json!({"metadata": {"labels": {"guarded": "no"}}}))
            .await
            .is_none()
    );
    assert!(
        patch("db", json!({"spec": {"replicas": 3}}))
            .await
            .is_none()
    );
}
