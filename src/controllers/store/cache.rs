//! The open stores of the vaults, one per vault uid, kept for the life of the operator. An
//! entry is replaced when the vault's generation changes (its spec names other storage or
//! Secrets) or when one of its Secrets changes (resourceVersion): a check of the Secrets'
//! metadata at most every [`RECHECK`], and only when a store is asked for, so an idle
//! reconcile costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::repo::RepoStore;
use super::{PointStore, StoreError};
use crate::api::RecoveryVault;
use crate::controllers::Context;
use crate::vault_access::VaultAccess;

/// How long the Secrets behind an open store are trusted unchanged without a look.
pub const RECHECK: Duration = Duration::from_secs(10);

/// What an open store was opened from.
#[derive(Clone, Debug, PartialEq)]
struct Fingerprint {
    generation: Option<i64>,
    /// Each Secret the vault names, with its resourceVersion (`None`: not found).
    secrets: Vec<(String, Option<String>)>,
}

struct Entry {
    fingerprint: Fingerprint,
    checked: Instant,
    store: Arc<RepoStore>,
}

#[derive(Default)]
pub struct VaultStores {
    entries: Mutex<HashMap<String, Entry>>,
}

/// The Secrets a vault's spec names: its key and each location's credentials.
fn secret_names(vault: &RecoveryVault) -> Vec<String> {
    let spec = &vault.spec;
    let mut names = vec![spec.encryption.key_secret_ref.name.clone()];
    for storage in [&spec.cache.storage, &spec.target.storage] {
        if let Some(s) = storage.credentials_secret() {
            names.push(s.name.clone());
        }
    }
    names.sort();
    names.dedup();
    names
}

impl VaultStores {
    /// The store of `vault`, opened from its Secrets when there is none or they changed.
    pub async fn get(
        &self,
        ctx: &Context,
        vault: &RecoveryVault,
    ) -> Result<Arc<dyn PointStore>, StoreError> {
        let uid = vault.uid().unwrap_or_default();
        let generation = vault.metadata.generation;
        let known = {
            let entries = self.lock();
            entries.get(&uid).map(|e| {
                let fresh = e.fingerprint.generation == generation && e.checked.elapsed() < RECHECK;
                (fresh, e.fingerprint.clone(), e.store.clone())
            })
        };
        if let Some((true, _, store)) = &known {
            return Ok(store.clone());
        }
        let fingerprint = fingerprint(ctx, vault).await?;
        if let Some((_, was, store)) = known
            && was == fingerprint
        {
            if let Some(e) = self.lock().get_mut(&uid) {
                e.checked = Instant::now();
            }
            return Ok(store);
        }
        let namespace = vault.namespace().unwrap_or_default();
        count_reads(ctx, "resolve", fingerprint.secrets.len());
        let access = VaultAccess::resolve(&ctx.client, &namespace, &vault.spec, &ctx.storage)
            .await
            .map_err(|e| StoreError::Vault(e.to_string()))?;
        let store = Arc::new(RepoStore::new(
            access,
            ctx.metrics.replication.repository_opens.clone(),
        ));
        self.lock().insert(
            uid,
            Entry {
                fingerprint,
                checked: Instant::now(),
                store: store.clone(),
            },
        );
        Ok(store)
    }

    /// Closes the stores of vaults that no longer exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|uid, _| live(uid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn fingerprint(ctx: &Context, vault: &RecoveryVault) -> Result<Fingerprint, StoreError> {
    let namespace = vault.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let names = secret_names(vault);
    count_reads(ctx, "check", names.len());
    let mut versions = Vec::with_capacity(names.len());
    for name in names {
        let version = match secrets.get_metadata_opt(&name).await {
            Ok(found) => found.and_then(|m| m.resource_version()),
            Err(e) => return Err(StoreError::Vault(format!("reading Secrets: {e}"))),
        };
        versions.push((name, version));
    }
    Ok(Fingerprint {
        generation: vault.metadata.generation,
        secrets: versions,
    })
}

fn count_reads(ctx: &Context, purpose: &'static str, n: usize) {
    ctx.metrics
        .replication
        .secret_reads
        .get_or_create(&crate::metrics::PurposeLabels { purpose })
        .inc_by(n as u64);
}
