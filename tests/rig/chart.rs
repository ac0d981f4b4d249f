//! The Helm chart, rendered by the real helm binary (`HELM`, or `.tools/helm` as
//! scripts/install-tools.sh leaves it), and its RBAC installed into the rig: tests run the
//! operator and agents as the chart's ServiceAccounts, under the chart's own roles.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The namespace the chart is rendered for (the release namespace).
pub const RELEASE_NAMESPACE: &str = "site-recovery-system";
/// The release name; with it the chart names everything `site-recovery-*`.
pub const RELEASE: &str = "site-recovery";
/// The chart's ServiceAccounts, in the release namespace.
pub const OPERATOR_SA: &str = "site-recovery-operator";
pub const AGENT_SA: &str = "site-recovery-agent";

pub fn helm() -> PathBuf {
    let from_env = std::env::var_os("HELM").map(PathBuf::from);
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/helm");
    from_env.or_else(|| local.exists().then_some(local)).expect(
        "helm not found: run `bash scripts/test.sh` (it installs helm) or set HELM to a helm binary",
    )
}

/// `helm template <release> charts/site-recovery --namespace site-recovery-system <args>`, as
/// documents.
pub fn render_as(release: &str, args: &[&str]) -> Vec<Value> {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/site-recovery");
    let out = Command::new(helm())
        .args([
            "template",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NAMESPACE,
        ])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The chart's ServiceAccounts, roles, bindings and admission policies (what `kubectl apply` of
/// the rendered chart would create to control access).
pub fn rbac_documents(args: &[&str]) -> Vec<Value> {
    render_as(RELEASE, args)
        .into_iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                )
            )
        })
        .collect()
}
