//! The operator ↔ agent protocol, as data.
//!
//! - The operator starts a point by writing `status.pointInProgress` of the ReplicatedWorkload
//!   (id, requested consistency, capture method, claims).
//! - Each agent watches ReplicatedWorkloads, reads the claims of the point that are mounted on
//!   its node (the workload's own pods for `Live`, the reader pods of the point for `CSI`) and
//!   writes one *part* into the cache location under its node's name.
//! - The agent reports on its own registration Lease, in the `siterecovery.io/work` annotation:
//!   one entry per workload with a point in flight (Running, Done, Failed, bytes, message).
//! - When reports cover every claim, the operator assembles the parts into the point, copies it
//!   to the target, prunes, and records the point in the workload's status.
//!
//! Every step is idempotent: a part is written with a conditional create (a restarted agent finds
//! its part and reports Done), assembly and replication skip what exists, temporary objects have
//! deterministic names.

use serde::{Deserialize, Serialize};

/// Annotation of a ReplicatedWorkload asking for a point now: any new value starts one (once
/// nothing is in flight), e.g. `kubectl annotate rw db siterecovery.io/request-point=$(date +%s) --overwrite`.
pub const POINT_REQUEST_ANNOTATION: &str = "siterecovery.io/request-point";

/// Annotation of the registration Lease that carries the agent's reports.
pub const WORK_ANNOTATION: &str = "siterecovery.io/work";
/// Labels of the temporary objects of a CSI capture.
pub const POINT_LABEL: &str = "siterecovery.io/point";
pub const WORKLOAD_LABEL: &str = "siterecovery.io/replicated-workload";
pub const CLAIM_LABEL: &str = "siterecovery.io/claim";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkState {
    Running,
    Done,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WorkKind {
    /// A part of a ReplicatedWorkload's point (`workload` names the ReplicatedWorkload).
    #[default]
    Capture,
    /// Volumes of a Failover's restore (`workload` names the Failover).
    Restore,
}

/// An agent's report on one workload's point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentWork {
    #[serde(default)]
    pub kind: WorkKind,
    pub namespace: String,
    pub workload: String,
    pub point: String,
    pub state: WorkState,
    /// Claims (the workload's names) this agent captured.
    #[serde(default)]
    pub claims: Vec<String>,
    /// The consistency the part really has.
    #[serde(default)]
    pub consistency: String,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes the part added to the cache (after deduplication, compression, encryption).
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Restores: the uid of the Failover, so that a report never counts for a later Failover
    /// that reuses the name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// Reads the reports in a Lease's annotations; a malformed annotation reads as none.
pub fn parse_reports(text: Option<&String>) -> Vec<AgentWork> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Lower-case, DNS-safe form of a point id (point ids carry an upper-case `T` and `Z`).
pub fn point_label(point: &str) -> String {
    point.to_ascii_lowercase()
}

/// Name of the VolumeSnapshot, temporary claim and reader pod of one claim of a CSI point.
pub fn temporary_name(claim: &str, point: &str) -> String {
    let base = format!("sr-{}-{claim}", point_label(point));
    if base.len() <= 63 {
        return base;
    }
    // Pods and labels allow 63 characters: keep the point and a hash of the claim.
    let digest = blake3::hash(claim.as_bytes()).to_hex();
    format!("sr-{}-{}", point_label(point), &digest[..16])
}

/// The claim the agent reads for `claim`: the claim itself (Live) or the point's temporary claim
/// restored from its VolumeSnapshot (CSI).
pub fn read_claim(method: crate::api::vault::SnapshotMethod, claim: &str, point: &str) -> String {
    match method {
        crate::api::vault::SnapshotMethod::Live => claim.to_string(),
        crate::api::vault::SnapshotMethod::Csi => temporary_name(claim, point),
    }
}

/// Label of a Failover's writer pods and target claims.
pub const FAILOVER_LABEL: &str = "siterecovery.io/failover";
/// The uid of the Failover that made an object: an object left by an earlier Failover of the
/// same name is never taken for this one's.
pub const FAILOVER_UID_LABEL: &str = "siterecovery.io/failover-uid";
/// On a pod that holds a stopped workload's claims mounted (read-only) so that its final
/// point can be read: the ReplicatedWorkload it holds them for.
pub const HOLD_LABEL: &str = "siterecovery.io/holds-for";

/// The holder pod of volume `index` of a planned failover.
pub fn holder_name(failover: &str, index: usize) -> String {
    format!("sr-hold-{failover}-{index}")
}

/// Name of the writer pod that fills `target_claim` for a failover.
pub fn writer_name(failover: &str, index: usize) -> String {
    format!("sr-restore-{failover}-{index}")
}
