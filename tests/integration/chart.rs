//! The Helm chart rendered by the real helm binary (see `rig::chart`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::rig::chart::helm;

fn render(args: &[&str]) -> Vec<Value> {
    crate::rig::chart::render_as("sr", args)
}

fn kinds(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

#[test]
fn crds_follow_crds_enabled_and_are_kept_on_uninstall() {
    let on = render(&[]);
    let crds = kinds(&on, "CustomResourceDefinition");
    assert_eq!(crds.len(), 3);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    let off = render(&["--set", "crds.enabled=false"]);
    assert!(kinds(&off, "CustomResourceDefinition").is_empty());
    assert!(
        !kinds(&off, "Deployment").is_empty(),
        "the operator is still installed"
    );
}

#[test]
fn rbac_is_least_privilege() {
    let docs = render(&[]);
    for role in kinds(&docs, "ClusterRole")
        .iter()
        .chain(kinds(&docs, "Role").iter())
    {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().unwrap();
                assert!(
                    !values.iter().any(|v| v == "*"),
                    "{}: wildcard in {field}",
                    role["metadata"]["name"]
                );
            }
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            // Cluster-wide, Secrets are only read by the names vaults give (and created and
            // deleted by name, a region failover recreating those a workload's pods use), never
            // listed or watched; in the release namespace the operator manages the Secrets it
            // hands to the agents.
            if role["kind"] == "ClusterRole"
                && rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "secrets")
            {
                assert!(
                    verbs
                        .iter()
                        .all(|v| ["get", "create", "delete"].contains(v)),
                    "secrets are read by name only, never listed or watched: {verbs:?}"
                );
                assert!(
                    role["metadata"]["name"] != "sr-site-recovery-agent",
                    "agents never read Secrets cluster-wide"
                );
            }
        }
    }
    let operator = kinds(&docs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "sr-site-recovery-operator")
        .unwrap();
    let events = operator["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "events")
        .unwrap();
    assert_eq!(events["verbs"], serde_json::json!(["create", "patch"]));
}

#[test]
fn agent_daemonset_reads_the_kubelet_pods_directory() {
    let docs = render(&["--set", "agent.kubeletRoot=/var/lib/k0s/kubelet"]);
    let ds = &kinds(&docs, "DaemonSet")[0];
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/var/lib/k0s/kubelet/pods");
    assert_eq!(mount["mountPropagation"], "HostToContainer");
    assert_eq!(
        ds["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"],
        "/var/lib/k0s/kubelet/pods"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["tolerations"][0]["operator"],
        "Exists"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"agent") && args.contains(&"--kubelet-root=/var/lib/k0s/kubelet"),
        "{args:?}"
    );
}

#[test]
fn the_agent_may_freeze_filesystems_only_when_the_chart_says_so() {
    let caps = |docs: &[serde_json::Value]| -> Vec<String> {
        let ds = &kinds(docs, "DaemonSet")[0];
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str().map(String::from))
            .collect()
    };
    let plain = render(&[]);
    assert!(
        !caps(&plain).contains(&"SYS_ADMIN".to_string()),
        "{:?}",
        caps(&plain)
    );
    let freezing = render(&["--set", "agent.freeze.enabled=true"]);
    assert!(caps(&freezing).contains(&"SYS_ADMIN".to_string()));
    // The freeze records live on the host, where a restarted agent finds them.
    let ds = &kinds(&freezing, "DaemonSet")[0];
    let state = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .expect("a state volume");
    assert_eq!(state["hostPath"]["path"], "/var/lib/site-recovery-agent");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--state-dir=/var/lib/site-recovery-agent"),
        "{args}"
    );
}

#[test]
fn optional_service_monitor_and_values_schema() {
    assert!(kinds(&render(&[]), "ServiceMonitor").is_empty());
    assert_eq!(
        kinds(
            &render(&["--set", "metrics.serviceMonitor.enabled=true"]),
            "ServiceMonitor"
        )
        .len(),
        1
    );
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/site-recovery");
    let out = Command::new(helm())
        .args([
            "template",
            "sr",
            chart.to_str().unwrap(),
            "--set",
            "agent.leaseDurationSeconds=1",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "values.schema.json rejects a 1s lease"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leaseDurationSeconds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments of the first container of the one `kind` the chart renders.
fn args_of(docs: &[Value], kind: &str) -> Vec<String> {
    kinds(docs, kind)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

#[test]
fn operator_and_agent_get_the_same_storage_rules() {
    let defaults = render(&[]);
    for kind in ["Deployment", "DaemonSet"] {
        let args = args_of(&defaults, kind);
        for wanted in [
            "--filesystem-root=/var/lib/site-recovery",
            "--allow-insecure-endpoints=false",
            "--allow-ambient-credentials=false",
        ] {
            assert!(args.iter().any(|a| a == wanted), "{kind}: {args:?}");
        }
    }
    let set = render(&[
        "--set",
        "filesystemStorage.hostPath=/srv/dr",
        "--set",
        "storage.allowInsecureEndpoints=true",
    ]);
    for kind in ["Deployment", "DaemonSet"] {
        let args = args_of(&set, kind);
        assert!(
            args.iter().any(|a| a == "--filesystem-root=/srv/dr")
                && args.iter().any(|a| a == "--allow-insecure-endpoints=true"),
            "{kind}: {args:?}"
        );
    }
}

#[test]
fn the_failover_source_hold_follows_failover_hold_source() {
    let named = |docs: &[Value], kind: &str| {
        kinds(docs, kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"] == "sr-site-recovery-hold-failover-source")
            .collect::<Vec<_>>()
    };
    let on = render(&[]);
    let policy = &named(&on, "ValidatingAdmissionPolicy")[0];
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["operations"], serde_json::json!(["UPDATE"]));
    assert_eq!(
        rule["resources"],
        serde_json::json!(["statefulsets", "deployments"])
    );
    let conditions = policy["spec"]["matchConditions"].to_string();
    assert!(
        conditions.contains("siterecovery.io/held-by-failover")
            && conditions
                .contains("system:serviceaccount:site-recovery-system:sr-site-recovery-operator"),
        "{conditions}"
    );
    let validation = &policy["spec"]["validations"][0];
    assert_eq!(validation["reason"], "Forbidden");
    assert!(
        validation["messageExpression"]
            .as_str()
            .unwrap()
            .contains("oldObject.metadata.annotations['siterecovery.io/held-by-failover']")
    );
    let binding = &named(&on, "ValidatingAdmissionPolicyBinding")[0];
    assert_eq!(
        binding["spec"]["policyName"],
        "sr-site-recovery-hold-failover-source"
    );
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert!(
        binding["spec"]["matchResources"].is_null(),
        "every namespace"
    );
    let off = render(&["--set", "failover.holdSource=false"]);
    assert!(named(&off, "ValidatingAdmissionPolicy").is_empty());
    assert!(named(&off, "ValidatingAdmissionPolicyBinding").is_empty());
    assert_eq!(
        kinds(&off, "ValidatingAdmissionPolicy").len(),
        1,
        "the agents' own-lease policy stays"
    );
    // And the other way round.
    let lease_off = render(&["--set", "agent.ownLeaseOnly=false"]);
    assert_eq!(named(&lease_off, "ValidatingAdmissionPolicy").len(), 1);
    assert_eq!(
        kinds(&lease_off, "ValidatingAdmissionPolicy").len(),
        2,
        "the holds of StatefulSets and Deployments, and of VirtualMachines"
    );
    // A VirtualMachine is held halted.
    let vm = kinds(&on, "ValidatingAdmissionPolicy")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "sr-site-recovery-hold-failover-source-vm")
        .expect("the VirtualMachine hold");
    let rule = &vm["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(
        (&rule["apiGroups"], &rule["resources"]),
        (
            &serde_json::json!(["kubevirt.io"]),
            &serde_json::json!(["virtualmachines"])
        )
    );
    assert!(
        vm["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("object.spec.runStrategy == 'Halted'")
    );
}
