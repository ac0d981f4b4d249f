//! Opening a vault's two repositories with the credentials and key its Secrets hold. Shared by
//! the operator (assembly, replication, retention) and the agents (captures, restores).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::location::Options;
use super::{Location, StorageRules};
use crate::api::vault::{RecoveryVaultSpec, SecretKeyRef, Storage};
use crate::repository::{RepoError, Repository};

/// The placeholder key the examples once carried. Anyone who has read them holds it: a vault
/// encrypted with it is not encrypted.
pub const PLACEHOLDER_KEY: &str = "REPLACE-ME-with-at-least-32-random-bytes-000000";

/// Whether `key` is the old placeholder or a variant of it (any key containing `REPLACE-ME`).
pub fn is_placeholder_key(key: &[u8]) -> bool {
    key.windows(b"REPLACE-ME".len()).any(|w| w == b"REPLACE-ME")
}

/// What the vault condition says of a placeholder key.
pub fn placeholder_key_message(name: &str, key: &str) -> String {
    format!(
        "spec.encryption.keySecretRef: key {key:?} of Secret {name} is the examples' placeholder, which anyone can read; replace it with random bytes (kubectl create secret generic {name} --from-literal={key}=$(openssl rand -base64 48))"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{field}: Secret {name} not found in namespace {namespace}")]
    SecretNotFound {
        field: &'static str,
        name: String,
        namespace: String,
    },
    #[error("{field}: Secret {name} has no key {key}")]
    KeyMissing {
        field: &'static str,
        name: String,
        key: String,
    },
    #[error("{}", placeholder_key_message(name, key))]
    PlaceholderKey { name: String, key: String },
    /// The storage spec breaks the installation's rules; the message names the field.
    #[error("{message}")]
    NotAllowed { message: String },
    #[error("{field}: {message}")]
    Storage {
        field: &'static str,
        message: String,
    },
    #[error("reading Secrets: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Repository(#[from] RepoError),
}

/// A vault's locations and key, ready to open repositories.
#[derive(Clone)]
pub struct VaultAccess {
    pub cache: Location,
    pub target: Location,
    pub key: Vec<u8>,
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|ByteString(b)| b.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

async fn location(
    secrets: &Api<Secret>,
    namespace: &str,
    field: &'static str,
    storage: &Storage,
    rules: &StorageRules,
) -> Result<Location, AccessError> {
    // Refused before any Secret is read.
    rules
        .check(field, namespace, storage)
        .map_err(|message| AccessError::NotAllowed { message })?;
    let mut credentials = Options::new();
    if let Some(secret) = storage.credentials_secret() {
        let found =
            secrets
                .get_opt(&secret.name)
                .await?
                .ok_or_else(|| AccessError::SecretNotFound {
                    field,
                    name: secret.name.clone(),
                    namespace: namespace.into(),
                })?;
        for (k, ByteString(v)) in found.data.unwrap_or_default() {
            credentials.insert(k, String::from_utf8_lossy(&v).into_owned());
        }
        credentials.extend(found.string_data.unwrap_or_default());
    }
    Location::from_vault_storage(storage, &credentials, namespace, field, rules).map_err(|e| {
        AccessError::Storage {
            field,
            message: e.to_string(),
        }
    })
}

async fn key(
    secrets: &Api<Secret>,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Vec<u8>, AccessError> {
    let field = "spec.encryption.keySecretRef";
    let secret = secrets
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| AccessError::SecretNotFound {
            field,
            name: r.name.clone(),
            namespace: namespace.into(),
        })?;
    let value = secret_value(&secret, &r.key).ok_or_else(|| AccessError::KeyMissing {
        field,
        name: r.name.clone(),
        key: r.key.clone(),
    })?;
    if is_placeholder_key(&value) {
        return Err(AccessError::PlaceholderKey {
            name: r.name.clone(),
            key: r.key.clone(),
        });
    }
    Ok(value)
}

impl VaultAccess {
    pub async fn resolve(
        client: &Client,
        namespace: &str,
        spec: &RecoveryVaultSpec,
        rules: &StorageRules,
    ) -> Result<Self, AccessError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        Ok(Self {
            cache: location(
                &secrets,
                namespace,
                "spec.cache.storage",
                &spec.cache.storage,
                rules,
            )
            .await?,
            target: location(
                &secrets,
                namespace,
                "spec.target.storage",
                &spec.target.storage,
                rules,
            )
            .await?,
            key: key(&secrets, namespace, &spec.encryption.key_secret_ref).await?,
        })
    }

    /// Opens the cache repository, creating it (and the target as its replica) on first use. A
    /// location holding a foreign repository, or one the key does not open, is refused as it is.
    pub async fn open_cache(&self) -> Result<Repository, RepoError> {
        match Repository::open(self.cache.clone(), &self.key).await {
            Ok(repo) => Ok(repo),
            Err(RepoError::NotARepository { .. }) => {
                match Repository::init(self.cache.clone(), &self.key).await {
                    Ok(repo) => Ok(repo),
                    // Another process created it first.
                    Err(RepoError::Invalid(_)) => {
                        Repository::open(self.cache.clone(), &self.key).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the target repository, initialising it as a replica of `cache` when empty.
    pub async fn open_target(&self, cache: &Repository) -> Result<Repository, RepoError> {
        cache.init_replica(self.target.clone()).await?;
        Repository::open(self.target.clone(), &self.key).await
    }
}
