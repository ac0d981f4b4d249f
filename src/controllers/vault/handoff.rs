//! Handing a vault's key and storage credentials to the agents. Agents may read Secrets only in
//! the operator's namespace (one compromised node must not read every Secret of the cluster),
//! so the operator, which reads the tenant's Secrets, writes one Secret there per vault
//! (`vault_access::handed_secret_name`): written only when its content differs, removed once
//! its vault is gone (by the next vault reconcile, since a deleted vault has none of its own).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::RecoveryVault;
use crate::controllers::{Context, Error, FIELD_MANAGER};
use crate::vault_access::{HANDED_LABEL, SecretReader, handed_data, handed_secret_name};

/// Writes the vault's handed Secret when its Secrets are readable and valid; a vault whose
/// Secrets are not (its conditions say why) hands nothing, and what it handed before is removed.
pub async fn hand_over(
    ctx: &Context,
    vault: &RecoveryVault,
    read: &SecretReader,
) -> Result<(), Error> {
    let (Some(uid), Some(namespace)) = (vault.uid(), vault.namespace()) else {
        return Ok(());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = handed_secret_name(&uid);
    let existing = secrets.get_opt(&name).await.map_err(Error::Kube)?;
    let data = match handed_data(read, &namespace, &vault.spec).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(vault = %vault.name_any(), error = %e, "nothing to hand to the agents");
            if existing.is_some() {
                crate::controllers::delete_if_present(&secrets, &name).await?;
            }
            known(ctx, &uid, false);
            return Ok(());
        }
    };
    if existing.as_ref().and_then(|s| s.data.as_ref()) == Some(&data) {
        known(ctx, &uid, true);
        return Ok(());
    }
    let body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": name, "namespace": ctx.namespace,
            "labels": {HANDED_LABEL: uid, "app.kubernetes.io/managed-by": "site-recovery"},
            "annotations": {"siterecovery.io/vault": format!("{namespace}/{}", vault.name_any())},
        },
        "data": data,
    });
    secrets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::Kube)?;
    known(ctx, &uid, true);
    tracing::info!(vault = %vault.name_any(), secret = %name, "handed the vault's key and credentials to the agents");
    Ok(())
}

/// Notes that the handed Secret of vault `uid` exists (or not), once a sweep has listed them.
fn known(ctx: &Context, uid: &str, exists: bool) {
    if let Some(handed) = ctx.handed.lock().expect("handed lock").as_mut() {
        if exists {
            handed.insert(uid.to_string());
        } else {
            handed.remove(uid);
        }
    }
}

/// Removes handed Secrets whose vault no longer exists. Lists them only when one may be an
/// orphan: at the first sweep, or when a vault known to have one is gone.
pub async fn sweep(ctx: &Context) -> Result<(), Error> {
    let live: HashSet<String> = ctx
        .stores
        .vaults
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().and_then(|v| v.meta().uid.clone()))
        .collect();
    if ctx
        .handed
        .lock()
        .expect("handed lock")
        .as_ref()
        .is_some_and(|h| h.is_subset(&live))
    {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let handed = secrets
        .list_metadata(&ListParams::default().labels(HANDED_LABEL))
        .await
        .map_err(Error::Kube)?;
    let mut remaining = HashSet::new();
    for s in handed.items {
        let labels: BTreeMap<String, String> = s.metadata.labels.clone().unwrap_or_default();
        let Some(uid) = labels.get(HANDED_LABEL) else {
            continue;
        };
        if live.contains(uid) {
            remaining.insert(uid.clone());
        } else {
            crate::controllers::delete_if_present(&secrets, &s.name_any()).await?;
        }
    }
    *ctx.handed.lock().expect("handed lock") = Some(remaining);
    Ok(())
}
