use super::*;

fn statefulset() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "apps", "uid": "u", "resourceVersion": "7",
            "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"kind": "X", "name": "y", "uid": "z"}],
            "labels": {"app": "db"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a",
                "siterecovery.io/replicas-before-failover": "2"}},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {
                "nodeName": "node-a1",
                "serviceAccountName": "db-sa",
                "imagePullSecrets": [{"name": "registry"}],
                "containers": [{"name": "db", "image": "db:1",
                    "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "password", "key": "b"}}}],
                    "envFrom": [{"configMapRef": {"name": "env"}}, {"secretRef": {"name": "env-secret"}}]}],
                "initContainers": [{"name": "init", "image": "i", "envFrom": [{"configMapRef": {"name": "init"}}]}],
                "volumes": [
                    {"name": "c", "configMap": {"name": "files"}},
                    {"name": "s", "secret": {"secretName": "tls"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj"}}, {"secret": {"name": "proj-secret"}}]}},
                    {"name": "e", "emptyDir": {}}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
        "status": {"replicas": 2, "readyReplicas": 2},
    })
}

#[test]
fn a_stored_workload_keeps_its_spec_and_loses_what_its_cluster_gave_it() {
    let s = strip_workload(&statefulset());
    assert_eq!(
        s["metadata"],
        json!({"name": "db", "namespace": "apps", "labels": {"app": "db"}, "annotations": {"team": "a"}})
    );
    assert!(s.get("status").is_none());
    assert!(s["spec"]["template"]["spec"].get("nodeName").is_none());
    assert_eq!(s["spec"]["replicas"], 2);
    assert_eq!(
        s["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
}

#[test]
fn every_reference_of_a_pod_template_is_found() {
    let (maps, secrets, account) = references(&statefulset()["spec"]["template"]["spec"]);
    assert_eq!(
        maps.into_iter().collect::<Vec<_>>(),
        ["env", "files", "init", "proj", "settings"]
    );
    assert_eq!(
        secrets.into_iter().collect::<Vec<_>>(),
        ["env-secret", "password", "proj-secret", "registry", "tls"]
    );
    assert_eq!(account.as_deref(), Some("db-sa"));
    let (_, _, default) = references(&json!({"serviceAccountName": "default"}));
    assert_eq!(
        default, None,
        "every namespace has its default ServiceAccount"
    );
}

#[test]
fn a_stored_service_loses_its_addresses_and_node_ports() {
    let s = strip_service(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "uid": "u"},
        "spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "selector": {"app": "db"},
            "ports": [{"port": 80, "nodePort": 30080}]}}));
    assert_eq!(
        s["spec"],
        json!({"type": "NodePort", "selector": {"app": "db"}, "ports": [{"port": 80}]})
    );
    let headless = strip_service(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}),
    );
    assert_eq!(headless["spec"], json!({"clusterIP": "None"}));
}

#[test]
fn services_are_carried_when_they_select_the_pods_or_govern_the_statefulset() {
    let w = statefulset();
    let by_selector = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "db"}}});
    let governing = json!({"metadata": {"name": "db"}, "spec": {}});
    let other = json!({"metadata": {"name": "x"}, "spec": {"selector": {"app": "other"}}});
    let everything = json!({"metadata": {"name": "y"}, "spec": {"selector": {}}});
    assert!(selects(&by_selector, &w));
    assert!(selects(&governing, &w));
    assert!(!selects(&other, &w));
    assert!(
        !selects(&everything, &w),
        "an empty selector selects nothing"
    );
}

fn definition() -> Definition {
    Definition {
        workload: strip_workload(&statefulset()),
        services: vec![
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": {}}),
        ],
        config_maps: vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}}),
        ],
        secrets: vec![
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "password"}, "data": {"b": "Mg=="}}),
        ],
        service_accounts: vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "db-sa"}}),
        ],
        claims: vec![
            json!({"name": "data-db-0", "spec": {"resources": {"requests": {"storage": "1Gi"}}}}),
        ],
        omitted: vec![],
    }
}

#[test]
fn a_definition_round_trips_and_its_companions_come_in_creation_order() {
    let d = definition();
    let back = Definition::parse(&d.to_bytes(), WorkloadKind::StatefulSet, "db").unwrap();
    assert_eq!(back, d);
    let kinds: Vec<Kind> = back.companions().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            Kind::ServiceAccount,
            Kind::ConfigMap,
            Kind::Secret,
            Kind::Service
        ]
    );
    assert_eq!(
        back.claim("data-db-0").unwrap()["resources"]["requests"]["storage"],
        "1Gi"
    );
}

#[test]
fn a_definition_too_large_leaves_out_config_maps_first_and_says_so() {
    let mut d = definition();
    d.config_maps = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
        "data": {"blob": "x".repeat(MAX_DEFINITION)}}),
    ];
    let bytes = d.to_bytes();
    assert!(bytes.len() <= MAX_DEFINITION);
    let back = Definition::parse(&bytes, WorkloadKind::StatefulSet, "db").unwrap();
    assert!(back.config_maps.is_empty());
    assert_eq!(
        back.secrets.len(),
        1,
        "the Secrets fit once the ConfigMaps are out"
    );
    assert!(
        back.omitted[0].starts_with("configMaps big"),
        "{:?}",
        back.omitted
    );
}

#[test]
fn a_stored_definition_of_another_shape_is_refused_with_what_was_expected() {
    let d = definition();
    let wrong_name =
        Definition::parse(&d.to_bytes(), WorkloadKind::StatefulSet, "web").unwrap_err();
    assert!(wrong_name.contains("not web"), "{wrong_name}");
    let wrong_kind = Definition::parse(&d.to_bytes(), WorkloadKind::Deployment, "db").unwrap_err();
    assert!(wrong_kind.contains("not a Deployment"), "{wrong_kind}");
    let mut bad = definition();
    bad.secrets[0]["metadata"]["name"] = json!("../../etc");
    let e = Definition::parse(&bad.to_bytes(), WorkloadKind::StatefulSet, "db").unwrap_err();
    assert!(e.contains("Secret"), "{e}");
    let mut disguised = definition();
    disguised.config_maps[0]["kind"] = json!("ClusterRoleBinding");
    assert!(Definition::parse(&disguised.to_bytes(), WorkloadKind::StatefulSet, "db").is_err());
    assert!(Definition::parse(b"[1,2]", WorkloadKind::StatefulSet, "db").is_err());
    // A field a restore writes into that is not an object (labels a string, a spec a list)
    // would make it panic: refused, naming the field.
    let mut misshapen = definition();
    misshapen.workload["spec"]["template"]["metadata"]["labels"] = json!("app=db");
    let e = Definition::parse(&misshapen.to_bytes(), WorkloadKind::StatefulSet, "db").unwrap_err();
    assert!(
        e.contains("spec.template.metadata.labels") && e.contains("an object was expected"),
        "{e}"
    );
    let mut misshapen = definition();
    misshapen.services[0]["metadata"]["labels"] = json!([1]);
    let e = Definition::parse(&misshapen.to_bytes(), WorkloadKind::StatefulSet, "db").unwrap_err();
    assert!(e.contains("Service \"db\" holds metadata.labels"), "{e}");
    let huge = vec![b' '; MAX_DEFINITION + 1];
    assert!(
        Definition::parse(&huge, WorkloadKind::StatefulSet, "db")
            .unwrap_err()
            .contains("at most")
    );
}
