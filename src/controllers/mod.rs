//! The three controllers, one folder per kind with the same steps:
//! `observe` (reads) → `plan` (pure: spec + observed + now → plan) → `apply` (writes) →
//! `status` (writes only when different). Shared plumbing lives here: the context, the error
//! enum, per-object backoff and the status/event writers.

pub mod backoff;
pub mod context;
pub mod definition;
pub mod error;
pub mod events;
pub mod failover;
pub mod jobs;
pub mod objects;
pub mod shape;
pub mod store;
pub mod triggers;
pub mod vault;
pub mod workload;

pub use context::Context;
pub use error::Error;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Deletes an object the operator created; one already gone is fine (every cleanup repeats).
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Node affinity that pins a pod to a zone (`null`: anywhere).
pub fn zone_affinity(zone: Option<&str>) -> serde_json::Value {
    match zone {
        Some(z) => {
            serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": crate::api::registration::ZONE_LABEL, "operator": "In", "values": [z]}]}
            ]}}})
        }
        None => serde_json::Value::Null,
    }
}

/// The one claim a [`claim_pod`] mounts, as volume `name`.
#[derive(Clone, Copy, Debug)]
pub struct ClaimVolume<'a> {
    pub name: &'a str,
    pub claim: &'a str,
    pub read_only: bool,
    /// A block claim (`volumeMode: Block`): attached as a device at `/dev/<name>`, which the
    /// kubelet publishes for the agent under `pods/<uid>/volumeDevices`.
    pub block: bool,
}

/// A pod of the operator's reader image whose only job is to mount one claim, at
/// `/<volume>` (a device at `/dev/<volume>`), on a node where the agent reads or fills it:
/// non-root, no token, no privileges, never restarted; pinned to `zone` when given.
pub fn claim_pod(
    image: &str,
    metadata: serde_json::Value,
    container: &str,
    volume: ClaimVolume<'_>,
    zone: Option<&str>,
) -> serde_json::Value {
    let ClaimVolume {
        name,
        claim,
        read_only,
        block,
    } = volume;
    let mut container = serde_json::json!({
        "name": container, "image": image,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
    });
    if block {
        container["volumeDevices"] =
            serde_json::json!([{"name": name, "devicePath": format!("/dev/{name}")}]);
    } else {
        container["volumeMounts"] = serde_json::json!([{"name": name, "mountPath": format!("/{name}"), "readOnly": read_only}]);
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "affinity": zone_affinity(zone),
            "automountServiceAccountToken": false,
            "restartPolicy": "Never",
            // What the Pod Security "restricted" level asks, so that these pods run in any
            // namespace the workload runs in (a drill's namespace copies the source's level).
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        },
    })
}

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "site-recovery-operator";

/// An event the plan asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

impl PlannedEvent {
    pub fn normal(reason: impl Into<String>, action: &str, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        }
    }
    pub fn warning(reason: impl Into<String>, action: &str, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        }
    }
}

/// Publishes planned events about `obj`. Event failures are logged, never fatal: an event is a
/// courtesy, the status is the record.
pub async fn publish_events<K>(ctx: &Context, obj: &K, events: &[PlannedEvent])
where
    K: Resource<DynamicType = ()>,
{
    let reference = obj.object_ref(&());
    for e in events {
        let note: String = e.note.chars().take(1000).collect();
        let event = events::Published {
            warning: e.warning,
            reason: &e.reason,
            action: &e.action,
            note: &note,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, reason = %e.reason, "could not publish event");
        }
    }
}

/// Writes `status` with server-side apply on the status subresource, unless it equals what the
/// object already has. Returns whether a write happened.
pub async fn write_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(true)
}
