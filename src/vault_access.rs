//! Opening a vault's two repositories with the credentials and key its Secrets hold. Shared by
//! the operator (assembly, replication, retention), the agents (captures, restores) and the
//! plugin. The operator reads the tenant's Secrets; agents read only the copy the operator hands
//! them in its own namespace, so a compromised node never reads Secrets cluster-wide.
//!
//! This is the layer above `storage` and `repository` that may talk to the API server: those
//! two stay free of kube (see `layers.rs`).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::vault::{RecoveryVaultSpec, SecretKeyRef, Storage};
use crate::repository::{RepoError, Repository};
use crate::storage::location::Options;
use crate::storage::{Location, StorageRules};

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
    #[error(
        "the operator has not handed this vault's key and credentials to the agents yet (Secret {namespace}/{name}); it does once the vault's Secrets are valid"
    )]
    NotHanded { name: String, namespace: String },
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

/// The Secrets of one namespace as one pass reads them: each is read once, however many fields
/// name it (a vault's key and credentials are often one Secret, and its controller reads them
/// both to check them and to hand them to the agents).
pub struct SecretReader {
    api: Api<Secret>,
    read: std::sync::Mutex<std::collections::HashMap<String, Option<Secret>>>,
}

impl SecretReader {
    pub fn new(client: &Client, namespace: &str) -> Self {
        SecretReader {
            api: Api::namespaced(client.clone(), namespace),
            read: Default::default(),
        }
    }

    pub async fn get_opt(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        if let Some(known) = self.read.lock().expect("secret reader").get(name) {
            return Ok(known.clone());
        }
        let found = self.api.get_opt(name).await?;
        self.read
            .lock()
            .expect("secret reader")
            .insert(name.to_string(), found.clone());
        Ok(found)
    }
}

/// The Secret `name` that `field` of a vault in `namespace` names.
async fn get_secret(
    secrets: &SecretReader,
    namespace: &str,
    field: &'static str,
    name: &str,
) -> Result<Secret, AccessError> {
    secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| AccessError::SecretNotFound {
            field,
            name: name.into(),
            namespace: namespace.into(),
        })
}

/// The credentials a storage spec's Secret holds (none when it names no Secret).
async fn credentials(
    secrets: &SecretReader,
    namespace: &str,
    field: &'static str,
    storage: &Storage,
) -> Result<Options, AccessError> {
    let mut credentials = Options::new();
    if let Some(secret) = storage.credentials_secret() {
        let found = get_secret(secrets, namespace, field, &secret.name).await?;
        for (k, ByteString(v)) in found.data.unwrap_or_default() {
            credentials.insert(k, String::from_utf8_lossy(&v).into_owned());
        }
        credentials.extend(found.string_data.unwrap_or_default());
    }
    Ok(credentials)
}

fn location(
    credentials: &Options,
    namespace: &str,
    field: &'static str,
    storage: &Storage,
    rules: &StorageRules,
) -> Result<Location, AccessError> {
    // Refused before anything is opened.
    rules
        .check(field, namespace, storage)
        .map_err(|message| AccessError::NotAllowed { message })?;
    Location::from_vault_storage(storage, credentials, namespace, field, rules).map_err(|e| {
        AccessError::Storage {
            field,
            message: e.to_string(),
        }
    })
}

/// The Secret in the operator's namespace through which the operator hands one vault's key and
/// storage credentials to the agents: agents read Secrets only there, never a tenant's.
pub fn handed_secret_name(vault_uid: &str) -> String {
    format!("sr-vault-{vault_uid}")
}

/// Label of handed Secrets: the vault's uid.
pub const HANDED_LABEL: &str = "siterecovery.io/handed-vault";

/// What a handed Secret holds: the key under `key`, each credential of the cache's and the
/// target's Secret under `cache.<name>` and `target.<name>`. Read from the vault's Secrets,
/// with the checks `resolve` makes (the placeholder key is never handed on).
pub async fn handed_data(
    secrets: &SecretReader,
    namespace: &str,
    spec: &RecoveryVaultSpec,
) -> Result<std::collections::BTreeMap<String, ByteString>, AccessError> {
    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "key".to_string(),
        ByteString(key(secrets, namespace, &spec.encryption.key_secret_ref).await?),
    );
    for (role, field, storage) in [
        ("cache", "spec.cache.storage", &spec.cache.storage),
        ("target", "spec.target.storage", &spec.target.storage),
    ] {
        for (k, v) in credentials(secrets, namespace, field, storage).await? {
            data.insert(format!("{role}.{k}"), ByteString(v.into_bytes()));
        }
    }
    Ok(data)
}

async fn key(
    secrets: &SecretReader,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Vec<u8>, AccessError> {
    let field = "spec.encryption.keySecretRef";
    let secret = get_secret(secrets, namespace, field, &r.name).await?;
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
        let secrets = SecretReader::new(client, namespace);
        let (cache, target) = ("spec.cache.storage", "spec.target.storage");
        Ok(Self {
            cache: location(
                &credentials(&secrets, namespace, cache, &spec.cache.storage).await?,
                namespace,
                cache,
                &spec.cache.storage,
                rules,
            )?,
            target: location(
                &credentials(&secrets, namespace, target, &spec.target.storage).await?,
                namespace,
                target,
                &spec.target.storage,
                rules,
            )?,
            key: key(&secrets, namespace, &spec.encryption.key_secret_ref).await?,
        })
    }

    /// The agents' way in: the vault's key and credentials from the Secret the operator handed
    /// on in `handed_namespace` (see [`handed_secret_name`]), the locations from the vault's
    /// spec under the agent's own storage rules.
    pub async fn resolve_handed(
        client: &Client,
        handed_namespace: &str,
        vault: &crate::api::RecoveryVault,
        rules: &StorageRules,
    ) -> Result<Self, AccessError> {
        use kube::ResourceExt;
        let namespace = vault.namespace().unwrap_or_default();
        let name = handed_secret_name(&vault.uid().unwrap_or_default());
        let field = "spec.encryption.keySecretRef";
        let handed = Api::<Secret>::namespaced(client.clone(), handed_namespace)
            .get_opt(&name)
            .await?
            .ok_or_else(|| AccessError::NotHanded {
                name: name.clone(),
                namespace: handed_namespace.into(),
            })?;
        let data = handed.data.unwrap_or_default();
        let part = |role: &str| -> Options {
            let prefix = format!("{role}.");
            data.iter()
                .filter_map(|(k, ByteString(v))| {
                    let k = k.strip_prefix(&prefix)?;
                    Some((k.to_string(), String::from_utf8_lossy(v).into_owned()))
                })
                .collect()
        };
        let key = data
            .get("key")
            .map(|ByteString(b)| b.clone())
            .ok_or_else(|| AccessError::KeyMissing {
                field,
                name: name.clone(),
                key: "key".into(),
            })?;
        if is_placeholder_key(&key) {
            return Err(AccessError::PlaceholderKey {
                name,
                key: "key".into(),
            });
        }
        let spec = &vault.spec;
        Ok(Self {
            cache: location(
                &part("cache"),
                &namespace,
                "spec.cache.storage",
                &spec.cache.storage,
                rules,
            )?,
            target: location(
                &part("target"),
                &namespace,
                "spec.target.storage",
                &spec.target.storage,
                rules,
            )?,
            key,
        })
    }

    /// Opens the cache repository, creating it on first use: as a replica of the target's when
    /// the target holds one (a standby cluster's vault), else new (and the target then becomes
    /// its replica). A location holding a foreign repository, or one the key does not open, is
    /// refused as it is.
    pub async fn open_cache(&self) -> Result<Repository, RepoError> {
        match Repository::open(self.cache.clone(), &self.key).await {
            Ok(repo) => Ok(repo),
            Err(RepoError::NotARepository { .. }) => {
                // A standby cluster's new cache (or a re-protection's) joins the repository the
                // target already holds, so that points written here replicate there.
                match Repository::open(self.target.clone(), &self.key).await {
                    Ok(target) => {
                        target.init_replica(self.cache.clone()).await?;
                        return Repository::open(self.cache.clone(), &self.key).await;
                    }
                    Err(RepoError::NotARepository { .. }) => {}
                    Err(e) => return Err(e),
                }
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
