//! Reads what the vault decision needs: node topology from the shared node cache, the storage
//! locations, and the Secrets the vault references.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;

use crate::api::vault::{Location as VaultLocation, RecoveryVaultSpec, SecretKeyRef, Storage};
use crate::controllers::context::NodeTopology;
use crate::controllers::{Context, Error};
use crate::storage::Location;
use crate::vault_access::SecretReader;

/// What was found at a storage location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageProbe {
    /// The spec breaks the installation's storage rules (a path outside the namespace's
    /// directory, an http endpoint, no credentials Secret); nothing was touched. The message
    /// names the field.
    Invalid(String),
    /// The directory exists and accepted a probe file.
    Writable,
    /// The directory does not exist yet.
    Missing,
    /// The location exists but cannot be used.
    Unusable(String),
    ClaimBound,
    ClaimNotBound(String),
    ClaimMissing,
    /// An object store that answered.
    ObjectStoreReachable,
    SecretMissing(String),
}

/// A Secret key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProbe {
    Present {
        len: usize,
    },
    /// The examples' placeholder (see [`crate::vault_access::is_placeholder_key`]).
    Placeholder,
    SecretMissing,
    KeyMissing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub nodes: Vec<NodeTopology>,
    pub cache: StorageProbe,
    pub target: StorageProbe,
    pub encryption_key: KeyProbe,
}

pub async fn observe(
    ctx: &Context,
    namespace: &str,
    spec: &RecoveryVaultSpec,
    secrets: &SecretReader,
) -> Result<Observed, Error> {
    let nodes = ctx.stores.node_topology();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(Observed {
        nodes,
        cache: probe_location(
            ctx,
            namespace,
            secrets,
            &claims,
            "spec.cache.storage",
            &spec.cache,
        )
        .await?,
        target: probe_location(
            ctx,
            namespace,
            secrets,
            &claims,
            "spec.target.storage",
            &spec.target,
        )
        .await?,
        encryption_key: probe_key(secrets, &spec.encryption.key_secret_ref).await?,
    })
}

async fn probe_location(
    ctx: &Context,
    namespace: &str,
    secrets: &SecretReader,
    claims: &Api<PersistentVolumeClaim>,
    field: &str,
    location: &VaultLocation,
) -> Result<StorageProbe, Error> {
    let storage = &location.storage;
    // Before anything is stat'ed, written or asked: a path outside the namespace's directory
    // is never probed (a probe writes a file), an http endpoint never called.
    if let Err(message) = ctx.storage.check(field, namespace, storage) {
        return Ok(StorageProbe::Invalid(message));
    }
    if let Some(fs) = &storage.filesystem {
        return Ok(
            match ctx
                .storage
                .confine(&format!("{field}.filesystem.path"), namespace, &fs.path)
            {
                Ok(path) => probe_directory(&path).await,
                Err(message) => StorageProbe::Invalid(message),
            },
        );
    }
    if let Some(vc) = &storage.volume_claim {
        return Ok(
            match claims.get_opt(&vc.claim_name).await.map_err(Error::Kube)? {
                None => StorageProbe::ClaimMissing,
                Some(pvc) => match pvc.status.and_then(|s| s.phase).as_deref() {
                    Some("Bound") => StorageProbe::ClaimBound,
                    phase => StorageProbe::ClaimNotBound(phase.unwrap_or("Pending").to_string()),
                },
            },
        );
    }
    let mut credentials = crate::storage::location::Options::new();
    if let Some(secret) = storage.credentials_secret() {
        let Some(found) = secrets.get_opt(&secret.name).await.map_err(Error::Kube)? else {
            return Ok(StorageProbe::SecretMissing(secret.name.clone()));
        };
        for (k, ByteString(v)) in found.data.unwrap_or_default() {
            credentials.insert(k, String::from_utf8_lossy(&v).into_owned());
        }
        credentials.extend(found.string_data.unwrap_or_default());
    }
    Ok(probe_object_store(storage, &credentials, namespace, field, &ctx.storage).await)
}

/// How long an object store may take to answer the probe.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Asks the object store for the repository config: any answer but an error (found or not
/// found) proves the endpoint, the credentials and the bucket or container.
async fn probe_object_store(
    storage: &Storage,
    credentials: &crate::storage::location::Options,
    namespace: &str,
    field: &str,
    rules: &crate::storage::StorageRules,
) -> StorageProbe {
    let location = match Location::from_vault_storage(storage, credentials, namespace, field, rules)
    {
        Ok(l) => l,
        Err(crate::storage::StorageError::NotAllowed(m)) => return StorageProbe::Invalid(m),
        Err(e) => return StorageProbe::Unusable(e.to_string()),
    };
    let key = crate::storage::layout::config(location.prefix());
    match tokio::time::timeout(PROBE_TIMEOUT, location.exists(&key)).await {
        Ok(Ok(_)) => StorageProbe::ObjectStoreReachable,
        Ok(Err(e)) => StorageProbe::Unusable(e.to_string()),
        Err(_) => StorageProbe::Unusable(format!(
            "{} did not answer within {}s",
            location.name(),
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Checks that `path` is a directory this process can create files in.
pub async fn probe_directory(path: &Path) -> StorageProbe {
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StorageProbe::Missing,
        Err(e) => StorageProbe::Unusable(format!("cannot stat {}: {e}", path.display())),
        Ok(m) if !m.is_dir() => {
            StorageProbe::Unusable(format!("{} is not a directory", path.display()))
        }
        Ok(_) => {
            let probe = path.join(format!(".site-recovery-probe-{}", std::process::id()));
            match tokio::fs::write(&probe, b"probe").await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&probe).await;
                    StorageProbe::Writable
                }
                Err(e) => {
                    StorageProbe::Unusable(format!("cannot write in {}: {e}", path.display()))
                }
            }
        }
    }
}

async fn probe_key(secrets: &SecretReader, key: &SecretKeyRef) -> Result<KeyProbe, Error> {
    let Some(secret) = secrets.get_opt(&key.name).await.map_err(Error::Kube)? else {
        return Ok(KeyProbe::SecretMissing);
    };
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key.key))
        .map(|ByteString(b)| b.as_slice());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(&key.key))
        .map(String::as_bytes);
    Ok(match from_data.or(from_string) {
        Some(k) if crate::vault_access::is_placeholder_key(k) => KeyProbe::Placeholder,
        Some(k) => KeyProbe::Present { len: k.len() },
        None => KeyProbe::KeyMissing,
    })
}
