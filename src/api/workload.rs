//! `ReplicatedWorkload`: marks a StatefulSet or Deployment for protection by a vault.

use jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use super::policy::ReplicationPolicyOverride;

/// Protects a workload's volumes with recovery points in a vault.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "siterecovery.io",
    version = "v1alpha1",
    kind = "ReplicatedWorkload",
    namespaced,
    status = "ReplicatedWorkloadStatus",
    shortname = "rw",
    category = "siterecovery",
    cel,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Vault","type":"string","jsonPath":".spec.vaultName"}"#,
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workloadRef.name"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.sourceZone"}"#,
    printcolumn = r#"{"name":"Protected","type":"string","jsonPath":".status.conditions[?(@.type==\"Protected\")].status"}"#,
    printcolumn = r#"{"name":"RPO","type":"integer","jsonPath":".status.rpoSeconds"}"#,
    printcolumn = r#"{"name":"Latest","type":"date","jsonPath":".status.latestReplicatedPoint.time"}"#,
    printcolumn = r#"{"name":"In flight","type":"string","jsonPath":".status.pointInProgress.id","priority":1}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedWorkloadSpec {
    /// Name of the RecoveryVault, in this namespace, that stores the points.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.vaultName is immutable: create a new ReplicatedWorkload to use another vault"))]
    pub vault_name: String,
    /// The protected workload.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.workloadRef is immutable: create a new ReplicatedWorkload to protect another workload"))]
    pub workload_ref: WorkloadRef,
    /// Claim names to protect; every claim the workload's pods mount when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    pub volumes: Option<Vec<String>>,
    /// Hooks and filesystem freeze for app-consistent points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistency: Option<AppConsistency>,
    /// Override of the vault's replication policy for this workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_policy: Option<ReplicationPolicyOverride>,
    /// What to do when another cluster failed the workload over and fenced this one out of the
    /// vault's target location (a region that comes back, a partition that heals):
    /// `ScaleToZero` (the default) stops this copy, so that two copies never serve one
    /// workload; `Keep` leaves it running (points stop either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_fenced: Option<OnFenced>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum OnFenced {
    #[default]
    ScaleToZero,
    Keep,
}

/// A StatefulSet, Deployment or KubeVirt VirtualMachine (`kubevirt.io/v1`) in this namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    StatefulSet,
    Deployment,
    /// A KubeVirt VirtualMachine: its disks (claims and DataVolumes) form the consistency group;
    /// it runs as one virt-launcher pod.
    VirtualMachine,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::VirtualMachine => "VirtualMachine",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "StatefulSet" => Some(WorkloadKind::StatefulSet),
            "Deployment" => Some(WorkloadKind::Deployment),
            "VirtualMachine" => Some(WorkloadKind::VirtualMachine),
            _ => None,
        }
    }

    /// The apiVersion of objects of this kind.
    pub fn api_version(self) -> &'static str {
        match self {
            WorkloadKind::StatefulSet | WorkloadKind::Deployment => "apps/v1",
            WorkloadKind::VirtualMachine => "kubevirt.io/v1",
        }
    }
}

/// What wraps the capture instant of an app-consistent point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppConsistency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Freeze the volumes' filesystems (FIFREEZE), on every node that mounts one, for the
    /// instant the snapshots of an app-consistent point are cut (CSI vaults; after the pre
    /// hooks, before the post hooks). The agents need CAP_SYS_ADMIN (chart: `agent.freeze`).
    #[serde(default)]
    pub freeze_filesystems: bool,
    /// No filesystem stays frozen longer: each agent thaws at this bound whatever happens, and
    /// a point whose snapshots were not cut within it is not AppConsistent (Go duration).
    #[serde(default = "default_freeze_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("freezeTimeout must be a duration between 1s and 60s, e.g. 10s"))]
    pub freeze_timeout: String,
}

fn default_freeze_timeout() -> String {
    "10s".into()
}

impl Default for AppConsistency {
    fn default() -> Self {
        Self {
            hooks: None,
            freeze_filesystems: false,
            freeze_timeout: default_freeze_timeout(),
        }
    }
}

/// Commands run in the workload's pods before and after the capture instant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub pre: Vec<ExecHook>,
    /// Always run, also after a failed capture.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub post: Vec<ExecHook>,
}

/// A command executed in a container of every pod of the workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecHook {
    #[schemars(length(min = 1, max = 63))]
    pub container: String,
    #[schemars(length(min = 1, max = 32), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// How long the command may run (Go duration).
    #[serde(default = "default_hook_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) > duration('0s') && duration(self) <= duration('1h')").message("hook timeout must be a duration between 1ms and 1h, e.g. 30s"))]
    pub timeout: String,
}

fn default_hook_timeout() -> String {
    "30s".into()
}

/// Observed state of a protected workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedWorkloadStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Zone the workload's volumes are in now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_zone: Option<String>,
    /// The fence another cluster wrote into the target location, as found before the last
    /// point (cleared once a point may start again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// When this cluster first found that fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_since: Option<jiff::Timestamp>,
    /// Zone of the vault's target location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_zone: Option<String>,
    /// Every protected volume and where it is mounted.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub volumes: Vec<VolumeStatus>,
    /// The newest point durable in the target location: the RPO is measured from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_replicated_point: Option<PointRef>,
    /// The newest point of any consistency (Live points without a freeze are `FileLevel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_point: Option<PointRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_crash_consistent_point: Option<PointRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_app_consistent_point: Option<PointRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_point: Option<Timestamp>,
    /// Now minus the time of the newest point durable in the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The point being taken now: the work the agents carry out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_progress: Option<PointInProgress>,
    /// The last `siterecovery.io/request-point` value a point was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_point_request: Option<String>,
    /// The outcome of the last point that was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<PointAttempt>,
}

/// A recovery point in flight. Agents read it (they write nothing here) and report on their
/// registration Lease; the operator assembles, replicates and records the point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointInProgress {
    pub id: String,
    /// `CrashConsistent` or `AppConsistent`: what was asked for. The point records what it got.
    pub consistency: String,
    pub method: crate::api::vault::SnapshotMethod,
    /// The capture instant the point is named for.
    pub started: Timestamp,
    /// Claims the point covers.
    #[schemars(length(max = 256))]
    pub claims: Vec<String>,
    /// Why the consistency asked for was not reached (a failed pre hook), if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Hooks that failed without lowering the consistency (post hooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 2048)))]
    pub warnings: Vec<String>,
    /// The agents' bytes done when they last changed, and when: a point whose reports stop
    /// moving fails after a while instead of waiting forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress: Option<ProgressMark>,
}

/// How far the agents' reports of a point had come, and when they got there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressMark {
    pub bytes_done: u64,
    pub time: Timestamp,
}

/// How the last started point ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointAttempt {
    pub id: String,
    pub started: Timestamp,
    pub consistency: String,
    pub succeeded: bool,
    #[serde(default)]
    pub message: String,
}

/// A protected claim and the node and zone it is mounted in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// A recovery point as the status reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointRef {
    pub id: String,
    pub time: Timestamp,
    /// Whether the point is durable in the target location.
    pub replicated: bool,
    /// CrashConsistent, AppConsistent or FileLevel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub consistency: String,
}

/// Bytes of the point in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub total_bytes: u64,
    pub bytes_done: u64,
}
