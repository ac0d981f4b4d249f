//! `Failover`: brings a protected workload up in the target zone from a recovery point (phase
//! one), then commits it (phase two).

use jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};

/// A failover of one ReplicatedWorkload.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "siterecovery.io",
    version = "v1alpha1",
    kind = "Failover",
    namespaced,
    status = "FailoverStatus",
    shortname = "fo",
    category = "siterecovery",
    cel,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workloadName"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Point","type":"string","jsonPath":".status.resolvedPoint.id"}"#,
    printcolumn = r#"{"name":"Committed","type":"boolean","jsonPath":".spec.commit"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("!oldSelf.commit || self.commit").message("spec.commit cannot change from true to false: a committed failover is final"),
    validation = kube::core::Rule::new("!oldSelf.commit || (has(self.recoveryPoint) == has(oldSelf.recoveryPoint) && (!has(self.recoveryPoint) || self.recoveryPoint == oldSelf.recoveryPoint))").message("spec.recoveryPoint cannot change once spec.commit is true"),
    validation = kube::core::Rule::new("self.mode != 'Test' || !self.commit").message("spec.commit cannot be true when spec.mode is Test: a drill is never committed"),
    validation = kube::core::Rule::new("self.mode == 'Test' || (!has(self.testNamespace) && !has(self.verification))").message("spec.testNamespace and spec.verification apply to mode Test only"),
    validation = kube::core::Rule::new("self.mode != 'Planned' || !has(self.recoveryPoint) || (has(self.recoveryPoint.latest) && self.recoveryPoint.latest)").message("spec.recoveryPoint does not apply to mode Planned: its point is the final one, taken after the source stops"),
    validation = kube::core::Rule::new("!has(self.vaultName) || self.mode != 'Planned'").message("spec.mode Planned stops the source, which needs the cluster that protects the workload: a failover from spec.vaultName alone is Unplanned or Test"),
    validation = kube::core::Rule::new("has(self.vaultName) || !has(self.existingObjects)").message("spec.existingObjects applies only with spec.vaultName"),
    validation = kube::core::Rule::new("has(self.vaultName) || !has(self.workloadNamespace)").message("spec.workloadNamespace applies only with spec.vaultName (a ReplicatedWorkload's Failover lives in its namespace)"),
    validation = kube::core::Rule::new("has(oldSelf.workloadNamespace) == has(self.workloadNamespace)").message("spec.workloadNamespace is immutable"),
    validation = kube::core::Rule::new("has(oldSelf.vaultName) == has(self.vaultName) && (!has(self.vaultName) || self.vaultName == oldSelf.vaultName)").message("spec.vaultName is immutable")
)]
pub struct FailoverSpec {
    /// Name of the ReplicatedWorkload, in this namespace, to fail over (with `vaultName`: of the
    /// workload, as the vault's status lists it).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.workloadName is immutable"))]
    pub workload_name: String,
    /// A region failover, in a cluster that did not protect the workload: the RecoveryVault, in
    /// this namespace, whose target location holds the workload's points (its status lists
    /// them under `discovered`). `workloadName` then names the workload as found there, and the
    /// workload comes back under its own names in this namespace. No ReplicatedWorkload is
    /// needed, nor the protecting cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub vault_name: Option<String>,
    /// With `vaultName`: the namespace the workload ran in (the vault's status lists it), when
    /// it is not this one. The workload comes back there under its own names, and the namespace
    /// is created when it does not exist (a standby cluster after a region loss is often empty).
    /// Only a Failover in the operator's namespace may name another namespace: whoever may
    /// create Failovers there may restore into any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = kube::core::Rule::new("self == oldSelf").message("spec.workloadNamespace is immutable"),
        validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.workloadNamespace must be a DNS label: lower-case letters, digits and '-'")
    )]
    pub workload_namespace: Option<String>,
    /// With `vaultName`: what to do with an object of the workload's (its StatefulSet or
    /// Deployment, a Service, ConfigMap, Secret or ServiceAccount it uses) that already exists
    /// here, e.g. deployed by GitOps: `Use` it as it is (the default; a workload found at zero
    /// replicas is scaled up), or `Refuse` to go on while one exists. A claim that exists is
    /// never written into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_objects: Option<ExistingObjects>,
    /// The recovery point to fail over to; the latest when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<PointSelector>,
    /// Planned, Unplanned or Test.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.mode is immutable: delete the Failover and create a new one"))]
    pub mode: FailoverMode,
    /// Phase two: commit the failover; points of the workload are then deleted.
    #[serde(default)]
    pub commit: bool,
    /// Zone to bring the workload up in; the vault's target zone when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.targetZone is immutable"))]
    pub target_zone: Option<String>,
    /// Test mode: the namespace the drill's copy runs in, created (isolated by a NetworkPolicy)
    /// and deleted with the Failover; `<name>-drill` when omitted. Never an existing namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = kube::core::Rule::new("self == oldSelf").message("spec.testNamespace is immutable"),
        validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.testNamespace must be a DNS label: lower-case letters, digits and '-'")
    )]
    pub test_namespace: Option<String>,
    /// Test mode: a Job run in the drill's namespace once the copy is Ready (to reach the copy
    /// through its Service, say); the drill is `Verified` when the Job succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// What a failover from a vault does with objects that already exist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ExistingObjects {
    #[default]
    Use,
    Refuse,
}

/// A check of the drill's copy, run as a Job next to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The command; the Job succeeds when it exits 0.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// How long the Job may run, e.g. `10m` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub timeout: Option<String>,
}

/// Exactly one way of choosing a recovery point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("(has(self.latest) ? 1 : 0) + (has(self.latestAppConsistent) ? 1 : 0) + (has(self.id) ? 1 : 0) + (has(self.time) ? 1 : 0) == 1").message("recoveryPoint must set exactly one of latest, latestAppConsistent, id or time"),
    validation = kube::core::Rule::new("(!has(self.latest) || self.latest) && (!has(self.latestAppConsistent) || self.latestAppConsistent)").message("recoveryPoint.latest and recoveryPoint.latestAppConsistent can only be true; set another selector instead")
)]
pub struct PointSelector {
    /// The newest point durable in the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// The newest app-consistent point durable in the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_app_consistent: Option<bool>,
    /// A point id, as listed by `site-recovery points`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub id: Option<String>,
    /// The newest point taken at or before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FailoverMode {
    /// Stop the source, take and replicate a final point, then fail over: no data lost.
    Planned,
    /// The source is gone: fail over to an existing point.
    #[default]
    Unplanned,
    /// A drill: a copy in an isolated namespace; the source is untouched.
    Test,
}

/// Observed state of a failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The point the failover restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_point: Option<ResolvedPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_zone: Option<String>,
    /// Steps taken, oldest first.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub timeline: Vec<TimelineStep>,
    /// Seconds from the start of the outage (the source stopped, in Planned mode; the restore
    /// started, otherwise) until the workload was Ready in the target zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// The restore in flight or done: which claims are filled from which volume of the point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,
    /// Planned mode: when the last pod of the source stopped; the final point is taken after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_stopped: Option<Timestamp>,
    /// Replicas of the source workload before it was scaled to zero (restored on cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_replicas: Option<i32>,
    /// The workload running in the target zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_workload: Option<String>,
    /// A failover from `spec.vaultName`: the workload as its point describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<FoundWorkload>,
    /// A failback: the workload is a failover's copy, and this is the original it replaced
    /// (held at zero replicas, its claims kept), which comes back instead of a new copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_to: Option<String>,
}

/// A workload found in a vault's target location, as its recovery point describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoundWorkload {
    /// StatefulSet or Deployment, and its name.
    pub kind: String,
    pub name: String,
    /// The cluster that protected it: its name, and the uid of its kube-system namespace.
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub cluster_uid: String,
    /// The workload existed here and was used (scaled from zero), not created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existed: bool,
    /// The objects restored beside it (`Kind/name`); a rollback deletes those this Failover made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub objects: Vec<String>,
}

/// Volumes of the point restored into new claims in the target zone, through writer pods that
/// agents fill. The claims reach the workload only once every one is restored and verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    pub point: String,
    pub started: Timestamp,
    #[schemars(length(max = 256))]
    pub volumes: Vec<VolumeRestore>,
    /// Where the new claims are, when not in the Failover's namespace (a drill's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Set once every volume is restored and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Timestamp>,
    /// Why the restore failed (the workload was not started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The Failover's generation the restore was started for: a later spec may switch points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestore {
    /// The claim (volume of the point) in the source zone.
    pub source_claim: String,
    /// The claim in the target zone: new, or (a failback) the original claim the workload
    /// left there, written in place.
    pub target_claim: String,
    /// The target claim existed (the original's, kept by an earlier failover): the agent
    /// writes only the extents that differ from the point, and removes what it does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPoint {
    pub id: String,
    pub time: Timestamp,
    pub consistency: String,
    /// The volumes (the source zone's claims) the point holds: what the failover restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub volumes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineStep {
    #[schemars(with = "String")]
    pub step: Milestone,
    pub time: Timestamp,
    #[serde(default)]
    pub message: String,
}

/// A step of a failover's timeline: what happened, recorded once (all but `PointSwitched`) after
/// the action that made it true succeeded. Serialized as its name; a name this version does not
/// know (written by a newer operator) is kept as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Milestone {
    /// Planned: the source was scaled to zero and its last pod stopped.
    SourceStopped,
    /// Planned: a point of the stopped claims was asked of the workload.
    FinalPointRequested,
    /// Planned: a point taken after the stop is in the target location.
    FinalPointReplicated,
    /// Claims and writer pods were made in the target zone.
    RestoreStarted,
    /// Every claim was restored and verified by the agents.
    Restored,
    RestoreFailed,
    /// `spec.recoveryPoint` changed between the phases: the copy was stopped, claims restored again.
    PointSwitched,
    /// The copy was created (and, but for a drill, the source scaled to zero).
    WorkloadStarted,
    /// Drill: the copy's pods are Ready.
    CopyReady,
    /// Drill: the verification Job (if any) succeeded.
    Verified,
    VerificationFailed,
    /// The copy's pods are Ready in the target zone.
    FailedOver,
    /// Phase two: the workload's points are deleted in cache and target.
    Committed,
    /// From a vault: the fence that keeps the protecting cluster from writing points is in the
    /// target location.
    Fenced,
    Other(String),
}

impl Milestone {
    pub const ALL: &'static [Milestone] = &[
        Milestone::SourceStopped,
        Milestone::FinalPointRequested,
        Milestone::FinalPointReplicated,
        Milestone::RestoreStarted,
        Milestone::Restored,
        Milestone::RestoreFailed,
        Milestone::PointSwitched,
        Milestone::WorkloadStarted,
        Milestone::CopyReady,
        Milestone::Verified,
        Milestone::VerificationFailed,
        Milestone::FailedOver,
        Milestone::Committed,
        Milestone::Fenced,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Milestone::SourceStopped => "SourceStopped",
            Milestone::FinalPointRequested => "FinalPointRequested",
            Milestone::FinalPointReplicated => "FinalPointReplicated",
            Milestone::RestoreStarted => "RestoreStarted",
            Milestone::Restored => "Restored",
            Milestone::RestoreFailed => "RestoreFailed",
            Milestone::PointSwitched => "PointSwitched",
            Milestone::WorkloadStarted => "WorkloadStarted",
            Milestone::CopyReady => "CopyReady",
            Milestone::Verified => "Verified",
            Milestone::VerificationFailed => "VerificationFailed",
            Milestone::FailedOver => "FailedOver",
            Milestone::Committed => "Committed",
            Milestone::Fenced => "Fenced",
            Milestone::Other(s) => s,
        }
    }
}

impl From<String> for Milestone {
    fn from(s: String) -> Self {
        Milestone::ALL
            .iter()
            .find(|m| m.as_str() == s)
            .cloned()
            .unwrap_or(Milestone::Other(s))
    }
}

impl From<Milestone> for String {
    fn from(m: Milestone) -> String {
        m.as_str().to_string()
    }
}

impl PartialEq<&str> for Milestone {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Milestone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Failover {
    /// The namespace of the workload (and of the points' key `<namespace>/<workload>`):
    /// `spec.workloadNamespace`, else the Failover's own.
    pub fn workload_namespace(&self) -> String {
        self.spec
            .workload_namespace
            .clone()
            .unwrap_or_else(|| kube::ResourceExt::namespace(self).unwrap_or_default())
    }
}

impl FailoverStatus {
    /// Whether the timeline records `m`.
    pub fn reached(&self, m: &Milestone) -> bool {
        self.timeline.iter().any(|t| &t.step == m)
    }
}
