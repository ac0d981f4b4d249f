//! The contract: custom resource types, conditions and event reasons. No client code lives here.

pub mod conditions;
pub mod failover;
pub mod policy;
pub mod reasons;
pub mod registration;
pub mod vault;
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
