//! The contract: custom resource types, conditions and event reasons. No client code lives here.

pub mod conditions;
pub mod failover;
pub mod names;
pub mod policy;
pub mod reasons;
pub mod registration;
pub mod vault;
pub mod work;
pub mod workload;

#[cfg(test)]
mod cel_tests;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use conditions::{Condition, ConditionStatus};
pub use failover::{Failover, FailoverMode, FailoverSpec, FailoverStatus, PointSelector};
pub use vault::{RecoveryVault, RecoveryVaultSpec, RecoveryVaultStatus, Redundancy};
pub use workload::{ReplicatedWorkload, ReplicatedWorkloadSpec, ReplicatedWorkloadStatus};

pub const GROUP: &str = "siterecovery.io";
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in the order they are printed and installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        RecoveryVault::crd(),
        ReplicatedWorkload::crd(),
        Failover::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `site-recovery crd` prints it.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize to YAML"));
    }
    out
}

/// The chart's CRD template: the same CRDs, kept on `helm uninstall` (deleting a CRD deletes
/// every vault, workload and failover with it), installed only when `crds.enabled`.
pub fn crds_chart_template() -> String {
    let mut out = String::from("{{- if .Values.crds.enabled }}\n");
    for mut crd in crds() {
        crd.metadata.annotations =
            Some([("helm.sh/resource-policy".to_string(), "keep".to_string())].into());
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize to YAML"));
    }
    out.push_str("{{- end }}\n");
    out
}

/// Where the generated copies live in the repository.
pub const CRDS_FILE: &str = "crds/site-recovery.crds.yaml";
pub const CHART_CRDS_FILE: &str = "charts/site-recovery/templates/crds.yaml";
