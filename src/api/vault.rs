//! `RecoveryVault`: where recovery points live (a cache location near the source zone and a
//! target location in another zone or region) and the replication policy.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use super::policy::ReplicationPolicy;

/// A recovery vault: the cache and target locations of recovery points, how far apart they must
/// be, how volumes are captured and how often.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "siterecovery.io",
    version = "v1alpha1",
    kind = "RecoveryVault",
    namespaced,
    status = "RecoveryVaultStatus",
    shortname = "rv",
    category = "siterecovery",
    cel,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Redundancy","type":"string","jsonPath":".spec.redundancy"}"#,
    printcolumn = r#"{"name":"Cache","type":"string","jsonPath":".spec.cache.zone"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.zone"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":0}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.redundancy == 'Machine' || (has(self.cache.zone) && has(self.target.zone))").message("spec.cache.zone and spec.target.zone are required when spec.redundancy is Zone or Region"),
    validation = kube::core::Rule::new("self.redundancy != 'Zone' || !has(self.cache.zone) || !has(self.target.zone) || self.cache.zone != self.target.zone").message("spec.target.zone must differ from spec.cache.zone when spec.redundancy is Zone"),
    validation = kube::core::Rule::new("self.redundancy != 'Region' || !has(self.cache.region) || !has(self.target.region) || self.cache.region != self.target.region").message("spec.target.region must differ from spec.cache.region when spec.redundancy is Region"),
    validation = kube::core::Rule::new("self.snapshotMethod == 'CSI' || !has(self.volumeSnapshotClassName)").message("spec.volumeSnapshotClassName is only valid when spec.snapshotMethod is CSI")
)]
pub struct RecoveryVaultSpec {
    /// The separation cache and target must have: Machine, Zone or Region.
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Storage near the source zone, where agents write recovery points first.
    pub cache: Location,
    /// Storage in another zone or region, from which failover restores.
    pub target: Location,
    /// How volumes are captured at a point in time.
    #[serde(default)]
    pub snapshot_method: SnapshotMethod,
    /// VolumeSnapshotClass for `CSI` captures; the driver's default class when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// The key that encrypts recovery points at rest.
    pub encryption: Encryption,
    /// How often points are taken and how long they are kept.
    #[serde(default)]
    pub replication_policy: ReplicationPolicy,
    /// StorageClass of the claims a failover creates, by zone (e.g. `zone-b: ssd-zone-b`); a
    /// zone not listed gets the source claim's class.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub storage_classes: std::collections::BTreeMap<String, String>,
}

/// The separation between cache and target, after the seed's Machine / Zone / Region scenarios.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema,
)]
pub enum Redundancy {
    /// Different storage locations suffice.
    Machine,
    /// Cache and target in different availability zones.
    #[default]
    Zone,
    /// Cache and target in different regions.
    Region,
}

impl Redundancy {
    pub fn as_str(self) -> &'static str {
        match self {
            Redundancy::Machine => "Machine",
            Redundancy::Zone => "Zone",
            Redundancy::Region => "Region",
        }
    }
}

/// How a volume is captured.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SnapshotMethod {
    /// VolumeSnapshots of all volumes together, read through temporary claims.
    #[default]
    #[serde(rename = "CSI")]
    Csi,
    /// The workload's own mounts are read; points carry the consistency they really have.
    Live,
}

/// One storage location and where it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Availability zone (`topology.kubernetes.io/zone`) the location is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub zone: Option<String>,
    /// Region (`topology.kubernetes.io/region`); derived from node labels when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    pub storage: Storage,
}

/// Exactly one storage backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.filesystem) ? 1 : 0) + (has(self.volumeClaim) ? 1 : 0) + (has(self.s3) ? 1 : 0) + (has(self.azureBlob) ? 1 : 0) + (has(self.gcs) ? 1 : 0) == 1").message("storage must set exactly one of filesystem, volumeClaim, s3, azureBlob or gcs"))]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<VolumeClaimStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<AzureBlobStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
}

impl Storage {
    /// A short name of the backend, for messages.
    pub fn kind(&self) -> &'static str {
        if self.filesystem.is_some() {
            "filesystem"
        } else if self.volume_claim.is_some() {
            "volumeClaim"
        } else if self.s3.is_some() {
            "s3"
        } else if self.azure_blob.is_some() {
            "azureBlob"
        } else if self.gcs.is_some() {
            "gcs"
        } else {
            "none"
        }
    }

    /// Secrets this storage reads credentials from.
    pub fn credentials_secret(&self) -> Option<&SecretRef> {
        self.s3
            .as_ref()
            .and_then(|s| s.credentials_secret_ref.as_ref())
            .or_else(|| {
                self.azure_blob
                    .as_ref()
                    .and_then(|a| a.credentials_secret_ref.as_ref())
            })
            .or_else(|| {
                self.gcs
                    .as_ref()
                    .and_then(|g| g.credentials_secret_ref.as_ref())
            })
    }
}

/// CEL rule: a filesystem path is written plainly, so that its place is what it reads: absolute,
/// without `.`, `..` or empty (`//`) components. (Where it may be, below the installation's
/// storage root and the namespace's directory, the operator checks: admission cannot know.)
pub const PLAIN_PATH_RULE: &str = "self.matches('^(/([^/.][^/]*|[.][^/.][^/]*|[.][.][^/]+))+/?$')";
pub const PLAIN_PATH_MESSAGE: &str = "storage.filesystem.path must be an absolute path without '.', '..' or empty ('//') components, naming a directory below <storage root>/<vault namespace>/";

/// A directory on the operator's and agents' filesystem (the embedded default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStorage {
    /// Absolute path of the repository directory, below `<storage root>/<namespace>/` (the
    /// operator's `--filesystem-root`, `/var/lib/site-recovery` by default).
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    #[x_kube(validation = kube::core::Rule::new(PLAIN_PATH_RULE).message(PLAIN_PATH_MESSAGE))]
    pub path: String,
}

/// A PersistentVolumeClaim, mounted by the components that read or write the location.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimStorage {
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^[^/].*$"))]
    pub sub_path: Option<String>,
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// Endpoint URL of an S3-compatible server; AWS when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; the environment when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// An Azure Blob Storage container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureBlobStorage {
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    #[schemars(length(min = 3, max = 24))]
    pub account_name: String,
    /// Blob endpoint URL, for the storage emulator or sovereign clouds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Secret with `accountKey` or `sasToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A Google Cloud Storage bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// Secret with `serviceAccountKey` (JSON); workload identity when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A Secret in the vault's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key inside a Secret in the vault's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_key() -> String {
    "key".into()
}

/// Encryption of recovery points at rest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// The key-encryption key: at least 32 bytes of secret material.
    pub key_secret_ref: SecretKeyRef,
}

/// Observed state of a vault.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryVaultStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The separation measured from node labels: Machine, Zone or Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separation: Option<Redundancy>,
    /// Region of each location, as declared or derived from node labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_region: Option<String>,
    /// Space used in each location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<VaultUsage>,
    /// The workloads whose points the target location holds, whichever cluster protected them:
    /// what a standby cluster can fail over (a Failover with `spec.vaultName`). Listed about
    /// once a minute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub discovered: Vec<DiscoveredWorkload>,
    /// Why the target location could not be listed for `discovered`, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_error: Option<String>,
}

/// A workload found in a vault's target location.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredWorkload {
    pub namespace: String,
    pub name: String,
    /// StatefulSet or Deployment, as its newest point describes it (empty for points of an
    /// older version, which carry no definition).
    #[serde(default)]
    pub kind: String,
    /// The cluster that protected it (its name; the uid of its kube-system namespace).
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub cluster_uid: String,
    pub points: u32,
    pub latest_point: String,
    pub latest_point_time: jiff::Timestamp,
    /// The cluster that holds the workload's fence (failed it over), when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
}

/// Space and points in a vault's locations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_points: Option<u64>,
}
