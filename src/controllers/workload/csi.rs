//! CSI captures: VolumeSnapshots of every claim of a point, taken together; each exposed as a
//! temporary claim restored from its snapshot and mounted by a reader pod in the claim's zone,
//! where the agent of the pod's node reads it. Names are deterministic
//! ([`crate::api::work::temporary_name`]) and every object carries the point's labels, so each
//! step is idempotent and [`cleanup`] finds everything, also after a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::ReplicatedWorkload;
use crate::api::work::{CLAIM_LABEL, POINT_LABEL, WORKLOAD_LABEL, point_label, temporary_name};
use crate::api::workload::{PointInProgress, VolumeStatus};
use crate::controllers::objects::{claim_size, create_owned_if_absent};
use crate::controllers::{ClaimVolume, Context, Error, claim_pod, delete_if_present};

/// How long a snapshot may take to become ready before its point is given up.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

fn snapshots(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
    Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "volumesnapshots"),
    )
}

fn labels(rw: &ReplicatedWorkload, point: &str, claim: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            "site-recovery".into(),
        ),
        (WORKLOAD_LABEL.into(), rw.name_any()),
        (POINT_LABEL.into(), point_label(point)),
        // Claim names may be longer than a label value: such a label only informs.
        (
            CLAIM_LABEL.into(),
            crate::api::names::label_value_or_digest(claim),
        ),
    ])
}

/// Owned by the workload, so that deleting it collects them. Without `blockOwnerDeletion`:
/// setting it needs update on the owner's finalizers where OwnerReferencesPermissionEnforcement
/// is enabled, and nothing here needs foreground deletion. None for an object without a uid.
fn owner(rw: &ReplicatedWorkload) -> serde_json::Value {
    match rw.controller_owner_ref(&()) {
        Some(mut o) => {
            o.block_owner_deletion = None;
            json!([o])
        }
        None => json!([]),
    }
}

/// Metadata of the temporary object `name` of `claim` for point `point`.
fn metadata(rw: &ReplicatedWorkload, point: &str, claim: &str, name: &str) -> serde_json::Value {
    json!({
        "name": name, "namespace": rw.namespace().unwrap_or_default(),
        "labels": labels(rw, point, claim), "ownerReferences": owner(rw),
    })
}

/// An object built here from JSON, or why not (never a panic: parts of it come from the API).
fn object<K: serde::de::DeserializeOwned>(
    kind: &str,
    name: &str,
    value: serde_json::Value,
) -> Result<K, String> {
    serde_json::from_value(value).map_err(|e| format!("{kind} {name} cannot be built: {e}"))
}

/// The size of the claim a snapshot is restored into: the snapshot's `status.restoreSize` (a
/// quantity), else the source claim's request, else 1Gi. A restoreSize that is not a quantity
/// is the snapshot controller's error, said as such.
pub fn restore_size(
    snapshot: &str,
    restore_size: Option<&serde_json::Value>,
    requested: Option<&str>,
) -> Result<String, String> {
    match restore_size {
        Some(serde_json::Value::String(q)) if !q.is_empty() => Ok(q.clone()),
        None | Some(serde_json::Value::Null) => {
            Ok(requested.map_or_else(|| "1Gi".to_string(), str::to_string))
        }
        Some(other) => {
            let shown: String = other.to_string().chars().take(64).collect();
            Err(format!(
                "VolumeSnapshot {snapshot} reports status.restoreSize {shown}, which is not a quantity such as 10Gi; check the snapshot controller"
            ))
        }
    }
}

/// Whether the VolumeSnapshot API is served, checked before hooks quiesce anything.
pub async fn api_available(ctx: &Context, rw: &ReplicatedWorkload) -> Result<(), String> {
    let namespace = rw.namespace().unwrap_or_default();
    match snapshots(ctx, &namespace)
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
            "RecoveryVault {}: spec.snapshotMethod is CSI, but the VolumeSnapshot API (snapshot.storage.k8s.io/v1) is not installed in this cluster: install the external-snapshotter and a VolumeSnapshotClass, or use snapshotMethod: Live",
            rw.spec.vault_name
        )),
        Err(e) => Err(format!("listing VolumeSnapshots: {e}")),
    }
}

/// Creates the point's VolumeSnapshots, one per claim, back to back: the capture instant.
pub async fn take_snapshots(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    class: Option<&str>,
) -> Result<(), String> {
    let namespace = rw.namespace().unwrap_or_default();
    let api = snapshots(ctx, &namespace);
    for claim in &point.claims {
        let mut spec = json!({"source": {"persistentVolumeClaimName": claim}});
        if let Some(class) = class {
            spec["volumeSnapshotClassName"] = json!(class);
        }
        let name = temporary_name(claim, &point.id);
        let obj: DynamicObject = object(
            "VolumeSnapshot",
            &name,
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": metadata(rw, &point.id, claim, &name),
                "spec": spec,
            }),
        )?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(format!(
                    "RecoveryVault {}: spec.snapshotMethod is CSI, but the VolumeSnapshot API (snapshot.storage.k8s.io/v1) is not installed in this cluster: install the external-snapshotter and a VolumeSnapshotClass, or use snapshotMethod: Live",
                    rw.spec.vault_name
                ));
            }
            Err(e) => {
                return Err(format!(
                    "creating VolumeSnapshot {}: {e}",
                    temporary_name(claim, &point.id)
                ));
            }
        }
    }
    Ok(())
}

/// Waits until the snapshot controller has cut every snapshot of the point (`creationTime` set,
/// or ready, or failed), so that post hooks resume the application only after the capture
/// instant. Gives up after `limit`; the point then goes on, and its snapshots may postdate the
/// post hooks (said in the returned message).
pub async fn wait_until_cut(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    limit: std::time::Duration,
) -> Result<(), String> {
    let namespace = rw.namespace().unwrap_or_default();
    let api = snapshots(ctx, &namespace);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut pending = Vec::new();
        for claim in &point.claims {
            let name = temporary_name(claim, &point.id);
            let snap = api.get_opt(&name).await.map_err(|e| e.to_string())?;
            let status = snap.as_ref().and_then(|s| s.data.get("status"));
            let cut = status.is_some_and(|s| {
                s.get("creationTime").is_some_and(|t| !t.is_null())
                    || s.get("readyToUse").and_then(|r| r.as_bool()) == Some(true)
                    || s.get("error").is_some_and(|e| !e.is_null())
            });
            if !cut {
                pending.push(name);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "VolumeSnapshot(s) {} were not cut within {}s of their creation; the post hooks ran anyway",
                pending.join(", "),
                limit.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Where the exposure of a point's snapshots stands.
pub enum Exposure {
    /// Waiting for snapshots to be ready or claims to be bound.
    Pending,
    /// A snapshot failed: the point cannot complete.
    Failed(String),
}

/// Exposes every ready snapshot as a temporary claim and a reader pod in the claim's zone.
pub async fn expose(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    volumes: &[VolumeStatus],
    now: jiff::Timestamp,
) -> Result<Exposure, Error> {
    let namespace = rw.namespace().unwrap_or_default();
    let snaps = snapshots(ctx, &namespace);
    for claim in &point.claims {
        let name = temporary_name(claim, &point.id);
        let Some(snap) = snaps.get_opt(&name).await.map_err(Error::Kube)? else {
            return Ok(Exposure::Failed(format!(
                "VolumeSnapshot {name} of claim {claim} disappeared before it was read"
            )));
        };
        let status = snap.data.get("status");
        match snapshot_ready(status, &name, claim, point, now) {
            Err(message) => return Ok(Exposure::Failed(message)),
            Ok(false) => continue,
            Ok(true) => {}
        }
        let zone = volumes
            .iter()
            .find(|v| &v.claim_name == claim)
            .and_then(|v| v.zone.as_deref());
        if let Some(message) = expose_one(ctx, rw, point, claim, status, zone).await? {
            return Ok(Exposure::Failed(message));
        }
    }
    Ok(Exposure::Pending)
}

/// Whether the snapshot is ready to read; why the point cannot complete when it failed or
/// waited too long.
fn snapshot_ready(
    status: Option<&serde_json::Value>,
    name: &str,
    claim: &str,
    point: &PointInProgress,
    now: jiff::Timestamp,
) -> Result<bool, String> {
    if let Some(message) = status
        .and_then(|s| s.get("error"))
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
    {
        return Err(format!(
            "VolumeSnapshot {name} of claim {claim} failed: {message}"
        ));
    }
    if status
        .and_then(|s| s.get("readyToUse"))
        .and_then(|r| r.as_bool())
        == Some(true)
    {
        return Ok(true);
    }
    let waited = Duration::try_from(now.duration_since(point.started)).unwrap_or_default();
    if waited > SNAPSHOT_TIMEOUT {
        return Err(format!(
            "VolumeSnapshot {name} of claim {claim} is not ready after {}s: check that a VolumeSnapshotClass serves the claim's CSI driver (spec.volumeSnapshotClassName of the vault) and the snapshot controller's logs",
            SNAPSHOT_TIMEOUT.as_secs()
        ));
    }
    Ok(false)
}

/// The temporary claim restored from a ready snapshot of `claim`, and the reader pod that mounts
/// it in the claim's zone; why not, when the source or the snapshot says something unusable.
async fn expose_one(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
    claim: &str,
    status: Option<&serde_json::Value>,
    zone: Option<&str>,
) -> Result<Option<String>, Error> {
    let namespace = rw.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = temporary_name(claim, &point.id);
    let source = claims.get_opt(claim).await.map_err(Error::Kube)?;
    let Some(source_spec) = source.and_then(|c| c.spec) else {
        return Ok(Some(format!(
            "claim {claim} disappeared while its point was taken"
        )));
    };
    let requested = claim_size(Some(&source_spec));
    let size = match restore_size(
        &name,
        status.and_then(|s| s.get("restoreSize")),
        Some(&requested),
    ) {
        Ok(size) => size,
        Err(message) => return Ok(Some(message)),
    };
    let temp = object::<PersistentVolumeClaim>(
        "PersistentVolumeClaim",
        &name,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata(rw, &point.id, claim, &name),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": source_spec.storage_class_name,
                "volumeMode": source_spec.volume_mode.clone(),
                "resources": {"requests": {"storage": size}},
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name},
            },
        }),
    );
    let reader = object::<Pod>(
        "Pod",
        &name,
        claim_pod(
            &ctx.reader_image,
            metadata(rw, &point.id, claim, &name),
            "reader",
            ClaimVolume {
                name: "snapshot",
                claim: &name,
                read_only: true,
                block: source_spec.volume_mode.as_deref() == Some("Block"),
            },
            zone,
        ),
    );
    let (temp, reader) = match (temp, reader) {
        (Ok(t), Ok(r)) => (t, r),
        (Err(message), _) | (_, Err(message)) => return Ok(Some(message)),
    };
    create_owned_if_absent(&claims, &temp).await?;
    create_owned_if_absent(
        &Api::<Pod>::namespaced(ctx.client.clone(), &namespace),
        &reader,
    )
    .await?;
    Ok(None)
}

/// Which kind a temporary object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Temporary {
    Pod,
    Claim,
    Snapshot,
}

/// The kinds of a namespace's temporary objects, to list and delete them.
struct Temporaries {
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    snapshots: Api<DynamicObject>,
}

impl Temporaries {
    fn of(ctx: &Context, namespace: &str) -> Self {
        Self {
            pods: Api::namespaced(ctx.client.clone(), namespace),
            claims: Api::namespaced(ctx.client.clone(), namespace),
            snapshots: snapshots(ctx, namespace),
        }
    }

    /// Every object of the three kinds that `lp` selects and that is not being deleted, with
    /// its labels.
    async fn list(
        &self,
        lp: &ListParams,
    ) -> Result<Vec<(Temporary, String, BTreeMap<String, String>)>, Error> {
        fn live<K>(
            kind: Temporary,
            items: Vec<kube::core::PartialObjectMeta<K>>,
        ) -> impl Iterator<Item = (Temporary, String, BTreeMap<String, String>)> {
            items
                .into_iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .map(move |o| {
                    let name = o.metadata.name.unwrap_or_default();
                    (kind, name, o.metadata.labels.unwrap_or_default())
                })
        }
        let mut found: Vec<_> = live(
            Temporary::Pod,
            self.pods
                .list_metadata(lp)
                .await
                .map_err(Error::Kube)?
                .items,
        )
        .collect();
        found.extend(live(
            Temporary::Claim,
            self.claims
                .list_metadata(lp)
                .await
                .map_err(Error::Kube)?
                .items,
        ));
        match self.snapshots.list_metadata(lp).await {
            Ok(list) => found.extend(live(Temporary::Snapshot, list.items)),
            // No snapshot API in this cluster: there is nothing of ours to delete.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::Kube(e)),
        }
        Ok(found)
    }

    /// Deletes one; an absent one is fine (without the snapshot API, a snapshot's delete is a
    /// 404 too).
    async fn delete(&self, kind: Temporary, name: &str) -> Result<(), Error> {
        match kind {
            Temporary::Pod => delete_if_present(&self.pods, name).await,
            Temporary::Claim => delete_if_present(&self.claims, name).await,
            Temporary::Snapshot => delete_if_present(&self.snapshots, name).await,
        }
    }
}

/// Deletes every temporary object of the workload's points (it is idle: none is in use), found
/// by the workload's label. Returns how many objects were asked to go.
pub async fn cleanup(ctx: &Context, rw: &ReplicatedWorkload) -> Result<usize, Error> {
    let temporaries = Temporaries::of(ctx, &rw.namespace().unwrap_or_default());
    let selector = format!("{WORKLOAD_LABEL}={}", rw.name_any());
    let found = temporaries
        .list(&ListParams::default().labels(&selector))
        .await?;
    for (kind, name, _) in &found {
        temporaries.delete(*kind, name).await?;
    }
    Ok(found.len())
}

/// Deletes the snapshots, temporary claims and reader pods of `point` (one of each per claim,
/// named by [`temporary_name`]); absent ones are fine.
pub async fn remove_point_objects(
    ctx: &Context,
    rw: &ReplicatedWorkload,
    point: &PointInProgress,
) -> Result<(), Error> {
    let temporaries = Temporaries::of(ctx, &rw.namespace().unwrap_or_default());
    for claim in &point.claims {
        let name = temporary_name(claim, &point.id);
        for kind in [Temporary::Pod, Temporary::Claim, Temporary::Snapshot] {
            temporaries.delete(kind, &name).await?;
        }
    }
    Ok(())
}

/// A namespace's temporary objects by workload name.
type ByWorkload = HashMap<String, Vec<(Temporary, String)>>;

/// The temporary objects a predecessor left in a namespace, by workload: listed once, by the
/// first workload of the namespace to be swept after this operator started, and taken by each
/// workload's first sweep. One listing per kind and namespace instead of three per workload:
/// with thousands of workloads, each label-selected list makes the API server filter every
/// pod and claim of the namespace.
#[derive(Default)]
pub struct Leftovers {
    /// Per namespace, its listing once made: each behind a lock of its own, so that one
    /// namespace's listing does not hold up the others' sweeps.
    namespaces: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ByWorkload>>>>>,
    /// Workloads (`namespace/name`) that took theirs: a later sweep of theirs lists anew.
    taken: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Leftovers {
    fn of(&self, namespace: &str) -> Arc<tokio::sync::Mutex<Option<ByWorkload>>> {
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_string())
            .or_default()
            .clone()
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next sweep of `key` (`namespace/name`) lists its objects anew: this operator made
    /// some since the namespace's listing (a capture that failed after its first snapshots).
    pub fn list_anew(&self, key: &str) {
        self.taken().insert(key.to_string());
    }
}

/// The workload `key` (`namespace/name`) is swept again at its next idle step, by a listing
/// made then: this operator may have made temporary objects of it that no status names (a
/// point whose start was not recorded, a capture that failed after its first snapshots) or
/// that could not be deleted by name.
pub fn sweep_anew(ctx: &Context, key: &str) {
    ctx.leftovers.list_anew(key);
    ctx.swept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
}

/// The namespace's temporary objects, by the workload their label names.
async fn list_leftovers(temporaries: &Temporaries) -> Result<ByWorkload, Error> {
    let all = temporaries
        .list(&ListParams::default().labels(WORKLOAD_LABEL))
        .await?;
    let mut found = ByWorkload::new();
    for (kind, name, mut labels) in all {
        if let Some(w) = labels.remove(WORKLOAD_LABEL) {
            found.entry(w).or_default().push((kind, name));
        }
    }
    Ok(found)
}

/// The first sweep of `rw` after this operator started: deletes what a predecessor left of its
/// points (the workload is idle: every temporary object of it is a stray), from the
/// namespace's one listing. Objects made after that listing are this operator's own, which the
/// sweeps at the end of their points remove. Returns how many were deleted.
pub async fn sweep_leftovers(ctx: &Context, rw: &ReplicatedWorkload) -> Result<usize, Error> {
    let namespace = rw.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", rw.name_any());
    if ctx.leftovers.taken().contains(&key) {
        // Swept again (a capture failed since): what is there now is this operator's own.
        return cleanup(ctx, rw).await;
    }
    let temporaries = Temporaries::of(ctx, &namespace);
    let listing = ctx.leftovers.of(&namespace);
    let mine = {
        let mut listed = listing.lock().await;
        if listed.is_none() {
            *listed = Some(list_leftovers(&temporaries).await?);
        }
        listed
            .as_mut()
            .and_then(|m| m.remove(&rw.name_any()))
            .unwrap_or_default()
    };
    for (i, (kind, name)) in mine.iter().enumerate() {
        if let Err(e) = temporaries.delete(*kind, name).await {
            // What is left stays listed for the next try.
            if let Some(m) = listing.lock().await.as_mut() {
                m.entry(rw.name_any())
                    .or_default()
                    .extend(mine[i..].iter().cloned());
            }
            return Err(e);
        }
    }
    ctx.leftovers.list_anew(&key);
    tracing::debug!(workload = %rw.name_any(), deleted = mine.len(), "swept what a predecessor left");
    Ok(mine.len())
}

#[cfg(test)]
mod tests {
    use super::restore_size;
    use serde_json::json;

    #[test]
    fn a_restore_size_that_is_not_a_quantity_is_an_error_not_a_panic() {
        assert_eq!(
            restore_size("s", Some(&json!("5Gi")), Some("1Gi")),
            Ok("5Gi".into())
        );
        assert_eq!(restore_size("s", None, Some("2Gi")), Ok("2Gi".into()));
        assert_eq!(
            restore_size("s", Some(&json!(null)), None),
            Ok("1Gi".into())
        );
        for odd in [
            json!(true),
            json!({"a": 1}),
            json!([1]),
            json!(5),
            json!(""),
        ] {
            let e = restore_size("sr-x", Some(&odd), Some("1Gi")).unwrap_err();
            assert!(
                e.contains("VolumeSnapshot sr-x") && e.contains("status.restoreSize"),
                "{e}"
            );
        }
    }
}
