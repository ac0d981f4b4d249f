//! Carries out a decision's actions in order, each idempotent; the first that fails ends the
//! pass (its facts are not recorded, and the next pass decides again). The one long action, the
//! commit's deletion of the points, is started as a background job whose outcome the next
//! passes observe.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::decide::Action;
use super::manifests::Place;
use super::observe::commit_key;
use super::{HELD_BY_ANNOTATION, REPLICAS_ANNOTATION};
use crate::api::work::{FAILOVER_UID_LABEL, POINT_REQUEST_ANNOTATION};
use crate::api::{Failover, ReplicatedWorkload};
use crate::controllers::objects::{
    Kind, ObjectName, create_if_absent, delete_if_mine, delete_labelled,
};
use crate::controllers::store::StoreError;
use crate::controllers::{Context, Error};

pub async fn act(ctx: &Context, f: &Failover, actions: &[Action]) -> Result<(), Error> {
    let uid = f.uid().unwrap_or_default();
    // Where the workload runs: the Failover's namespace, or its `spec.workloadNamespace`.
    let namespace = f.workload_namespace();
    let client = &ctx.client;
    for action in actions {
        match action {
            Action::AddFinalizer => {
                let mut list = f.finalizers().to_vec();
                list.push(super::FINALIZER.into());
                // With the resourceVersion: a finalizer list changed meanwhile is not clobbered.
                patch_failover(
                    ctx,
                    f,
                    json!({"metadata": {"finalizers": list, "resourceVersion": f.resource_version()}}),
                )
                .await?;
            }
            Action::RemoveFinalizer => {
                let rest: Vec<&String> = f
                    .finalizers()
                    .iter()
                    .filter(|x| *x != super::FINALIZER)
                    .collect();
                patch_failover(ctx, f, json!({"metadata": {"finalizers": rest}})).await?;
                ctx.jobs.forget(&commit_key(f));
            }
            Action::Create(m) => create_if_absent(client, m, FAILOVER_UID_LABEL, &uid).await?,
            Action::CreateOrUse(m) => create_or_use(client, m).await?,
            Action::Fence => fence(ctx, f).await?,
            Action::DeleteCopy { kind, name, of } => {
                let api = kind.api(client, Some(&namespace));
                let copy = api.get_opt(name).await.map_err(Error::Kube)?;
                let is_copy = copy
                    .is_some_and(|c| c.annotations().get(super::COPY_OF_ANNOTATION) == Some(of));
                if is_copy {
                    crate::controllers::delete_if_present(&api, name).await?;
                }
            }
            Action::Delete(name) => delete_if_mine(client, name, FAILOVER_UID_LABEL, &uid).await?,
            Action::TearDown(place) => tear_down(ctx, &uid, place).await?,
            Action::DeleteLabelled { namespace } => delete_made(ctx, &uid, namespace).await?,
            Action::ScaleSource {
                kind,
                name,
                replicas,
                note,
            } => {
                // The hold names this Failover while the note is kept; both go together.
                let held_by = note.map(|_| f.name_any());
                Kind::workload(*kind)
                    .api(client, Some(&namespace))
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({
                            "metadata": {"annotations": {
                                REPLICAS_ANNOTATION: note.map(|n| n.to_string()),
                                HELD_BY_ANNOTATION: held_by,
                            }},
                            "spec": crate::controllers::shape::scale(*kind, *replicas),
                        })),
                    )
                    .await
                    .map_err(Error::Kube)?;
            }
            Action::RequestPoint { workload, token } => {
                Api::<ReplicatedWorkload>::namespaced(client.clone(), &namespace)
                    .patch(
                        workload,
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"metadata": {"annotations": {POINT_REQUEST_ANNOTATION: token}}}),
                        ),
                    )
                    .await
                    .map_err(Error::Kube)?;
            }
            Action::StartCommit => start_commit(ctx, f).await,
        }
    }
    Ok(())
}

async fn patch_failover(
    ctx: &Context,
    f: &Failover,
    patch: serde_json::Value,
) -> Result<(), Error> {
    Api::<Failover>::namespaced(ctx.client.clone(), &f.namespace().unwrap_or_default())
        .patch(&f.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// Removes what a failover created in its place: the copy, writer and holder pods, restored
/// claims, a drill's verification Job.
async fn tear_down(ctx: &Context, uid: &str, place: &Place) -> Result<(), Error> {
    let copy = ObjectName::new(place.copy_kind(), Some(&place.namespace), &place.copy);
    delete_if_mine(&ctx.client, &copy, FAILOVER_UID_LABEL, uid).await?;
    delete_made(ctx, uid, &place.namespace).await
}

async fn delete_made(ctx: &Context, uid: &str, namespace: &str) -> Result<(), Error> {
    for kind in [Kind::Job, Kind::Pod, Kind::Claim] {
        delete_labelled(&ctx.client, kind, namespace, FAILOVER_UID_LABEL, uid).await?;
    }
    Ok(())
}

/// How long one attempt at deleting the points may take; the next pass tries again.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Starts the deletion of every point of the workload in cache and target (phase two), unless
/// it runs. Idempotent: a commit interrupted halfway deletes what is left the next time.
async fn start_commit(ctx: &Context, f: &Failover) {
    let key = commit_key(f);
    if ctx.jobs.get(&key).is_some_and(|j| j.is_running()) {
        return;
    }
    let namespace = f.namespace().unwrap_or_default();
    let Some(vault_name) = vault_of(ctx, f) else {
        return;
    };
    let store = store_of(ctx, &namespace, &vault_name).await;
    // The points are kept under the workload's own name (the ReplicatedWorkload's, or the name
    // a failover from a vault found them under): the same in both cases.
    let workload = format!("{}/{}", f.workload_namespace(), f.spec.workload_name);
    ctx.jobs.start(&key, async move {
        let removed = tokio::time::timeout(COMMIT_TIMEOUT, store?.forget_workload(&workload)).await;
        let removed = removed.unwrap_or(Err(StoreError::Timeout {
            seconds: COMMIT_TIMEOUT.as_secs(),
        }))?;
        Ok(serde_json::Value::from(removed))
    });
}

/// The vault the Failover's points are in: `spec.vaultName`, else its ReplicatedWorkload's.
fn vault_of(ctx: &Context, f: &Failover) -> Option<String> {
    if let Some(v) = &f.spec.vault_name {
        return Some(v.clone());
    }
    let namespace = f.namespace().unwrap_or_default();
    ctx.stores
        .workloads
        .get(&ObjectRef::new(&f.spec.workload_name).within(&namespace))
        .and_then(|g| {
            g.0.as_ref()
                .ok()
                .map(|rw: &ReplicatedWorkload| rw.spec.vault_name.clone())
        })
}

async fn store_of(
    ctx: &Context,
    namespace: &str,
    vault: &str,
) -> Result<std::sync::Arc<dyn crate::controllers::store::PointStore>, StoreError> {
    let found = ctx
        .stores
        .vaults
        .get(&ObjectRef::new(vault).within(namespace))
        .and_then(|g| g.0.as_ref().ok().cloned());
    match found {
        Some(v) => ctx.point_stores.get(ctx, &v).await,
        None => Err(StoreError::Vault(format!(
            "RecoveryVault {vault} not found"
        ))),
    }
}

/// How long writing the fence may take; the pass fails otherwise and is tried again.
const FENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes this Failover's fence for the workload into the vault's target location: from now on
/// the cluster that protected it writes no point of it there.
async fn fence(ctx: &Context, f: &Failover) -> Result<(), Error> {
    let namespace = f.namespace().unwrap_or_default();
    let storage = |message: String| Error::Storage {
        location: "target".into(),
        message,
    };
    let vault = vault_of(ctx, f).ok_or_else(|| storage("no vault".into()))?;
    let store = store_of(ctx, &namespace, &vault)
        .await
        .map_err(|e| storage(e.to_string()))?;
    let workload = format!("{}/{}", f.workload_namespace(), f.spec.workload_name);
    let request = crate::controllers::store::FenceRequest {
        cluster_uid: ctx.cluster.uid.clone(),
        cluster_name: ctx.cluster.name.clone(),
        failover_uid: f.uid().unwrap_or_default(),
        time: crate::clock::now(),
    };
    let epoch = tokio::time::timeout(FENCE_TIMEOUT, store.fence(&workload, &request))
        .await
        .map_err(|_| {
            storage(format!(
                "the fence was not written within {}s",
                FENCE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| storage(e.to_string()))?;
    tracing::info!(%workload, epoch, "fenced the workload in the target location");
    Ok(())
}

/// Creates `m` unless an object of its name exists, whoever made it: that one is used as it is.
async fn create_or_use(
    client: &kube::Client,
    m: &crate::controllers::objects::Manifest,
) -> Result<(), Error> {
    let api = m.kind.api(client, m.namespace.as_deref());
    let object: kube::api::DynamicObject =
        serde_json::from_value(m.body.clone()).map_err(|e| Error::InvalidObject {
            kind: m.kind.name().into(),
            name: m.name.clone(),
            message: e.to_string(),
        })?;
    match api.create(&kube::api::PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}
