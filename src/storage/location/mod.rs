//! A storage location: an object store plus a prefix, opened from a URL or from a vault's
//! storage spec with credentials from a Secret.

//!
//! Opening, one function per backend, lives in `open`; the summary of a failed request that
//! statuses may show, in `summary`.

mod direct;
pub use direct::{
    ALIGN as DIRECT_ALIGN, AlignedBuf, BLOCK as DIRECT_BLOCK, MIN as DIRECT_MIN,
    refused as refuses_direct,
};
mod open;
mod summary;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::redact::redact;
use super::rules::StorageRules;
use crate::api::vault::Storage;
use open::Fallback;
use summary::summary;

/// What can go wrong with a location, already cleaned of secrets.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: {key} not found")]
    NotFound { location: String, key: String },
    #[error("{location}: {key} already exists")]
    AlreadyExists { location: String, key: String },
    #[error(
        "{location}: {key} is {size} bytes, more than the {max} an object of its kind may have"
    )]
    TooLarge {
        location: String,
        key: String,
        size: u64,
        max: u64,
    },
    /// Any other failure, as a short summary (kind, HTTP status, object key) that is safe for
    /// statuses and events; the storage's full answer goes to the log only.
    #[error("{location}: {message}")]
    Backend { location: String, message: String },
    #[error("storage configuration: {0}")]
    Config(String),
    /// The vault's storage spec breaks the installation's rules (see [`StorageRules`]).
    #[error("{0}")]
    NotAllowed(String),
}

/// Where a location is, in a form a CLI user can type.
#[derive(Clone, Debug, PartialEq)]
pub enum LocationSpec {
    /// `/path` or `file:///path`
    Filesystem(std::path::PathBuf),
    /// `s3://bucket/prefix` with `endpoint`, `region` and credentials from options/env
    S3 { bucket: String, prefix: String },
    /// `az://container/prefix` (account from options/env)
    Azure { container: String, prefix: String },
    /// `gs://bucket/prefix`
    Gcs { bucket: String, prefix: String },
}

impl LocationSpec {
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        let split = |rest: &str| {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            (bucket.to_string(), prefix.trim_matches('/').to_string())
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest);
            Ok(Self::S3 { bucket, prefix })
        } else if let Some(rest) = url
            .strip_prefix("az://")
            .or_else(|| url.strip_prefix("azure://"))
        {
            let (container, prefix) = split(rest);
            Ok(Self::Azure { container, prefix })
        } else if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = split(rest);
            Ok(Self::Gcs { bucket, prefix })
        } else if let Some(path) = url.strip_prefix("file://") {
            Ok(Self::Filesystem(path.into()))
        } else if !url.contains("://") && !url.is_empty() {
            Ok(Self::Filesystem(url.into()))
        } else {
            Err(StorageError::Config(format!(
                "location {url:?}: expected a path, file:///path, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix"
            )))
        }
    }
}

/// Options of object-store locations: endpoint, region, account, credentials. Keys follow the
/// Secret keys a vault's `credentialsSecretRef` names (`AWS_ACCESS_KEY_ID`, `accountKey`, ...).
pub type Options = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// A description without secrets, for messages.
    name: String,
    /// Secret values to scrub from every error.
    secrets: Arc<Vec<String>>,
    /// A directory of this machine: reads can be announced to the kernel ahead (`prefetch`),
    /// and large objects written without the page cache (`direct`).
    local: Option<Arc<LocalFileSystem>>,
}

impl Location {
    /// Wraps any object store (tests use this to inject faults).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, name: impl Into<String>) -> Self {
        Self {
            store,
            prefix: Path::from(prefix),
            name: name.into(),
            secrets: Arc::new(vec![]),
            local: None,
        }
    }

    /// Opens a location a CLI user typed: options fall back to the environment (`AWS_*`,
    /// `AZURE_STORAGE_*`, ...) and to the store's own defaults (instance metadata), and
    /// `http://` endpoints are taken as given.
    pub fn open(spec: &LocationSpec, options: &Options) -> Result<Self, StorageError> {
        Self::open_with(spec, options, Fallback::AMBIENT)
    }

    /// The location of a vault's storage spec (`field` names it in messages, e.g.
    /// `spec.cache.storage`), held to the installation's `rules` for a vault in `namespace`;
    /// `credentials` are the data of its Secret, and the only credentials used unless the
    /// rules lend the ambient identity.
    pub fn from_vault_storage(
        storage: &Storage,
        credentials: &Options,
        namespace: &str,
        field: &str,
        rules: &StorageRules,
    ) -> Result<Self, StorageError> {
        rules
            .check(field, namespace, storage)
            .map_err(StorageError::NotAllowed)?;
        let mut options = credentials.clone();
        let spec = if let Some(fs) = &storage.filesystem {
            LocationSpec::Filesystem(
                rules
                    .confine(&format!("{field}.filesystem.path"), namespace, &fs.path)
                    .map_err(StorageError::NotAllowed)?,
            )
        } else if let Some(s3) = &storage.s3 {
            if let Some(e) = &s3.endpoint {
                options.insert("endpoint".into(), e.clone());
            }
            if let Some(r) = &s3.region {
                options.insert("region".into(), r.clone());
            }
            LocationSpec::S3 {
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone().unwrap_or_default(),
            }
        } else if let Some(az) = &storage.azure_blob {
            options.insert("accountName".into(), az.account_name.clone());
            if let Some(e) = &az.endpoint {
                options.insert("endpoint".into(), e.clone());
            }
            LocationSpec::Azure {
                container: az.container.clone(),
                prefix: az.prefix.clone().unwrap_or_default(),
            }
        } else if let Some(gcs) = &storage.gcs {
            LocationSpec::Gcs {
                bucket: gcs.bucket.clone(),
                prefix: gcs.prefix.clone().unwrap_or_default(),
            }
        } else if storage.volume_claim.is_some() {
            return Err(StorageError::Config(
                "volumeClaim storage is opened by the component that mounts the claim, as a filesystem path".into(),
            ));
        } else {
            return Err(StorageError::Config("storage sets no backend".into()));
        };
        Self::open_with(
            &spec,
            &options,
            Fallback {
                environment: rules.allow_ambient_credentials,
                allow_http: rules.allow_insecure_endpoints,
            },
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn error(&self, key: &Path, e: object_store::Error) -> StorageError {
        let key = key.to_string();
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                location: self.name.clone(),
                key,
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StorageError::AlreadyExists {
                location: self.name.clone(),
                key,
            },
            other => {
                let known: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
                let message = format!("{key}: {}", summary(&other));
                tracing::warn!(location = %self.name, %key, summary = %message, error = %redact(&other.to_string(), &known), "storage request failed");
                StorageError::Backend {
                    location: self.name.clone(),
                    message,
                }
            }
        }
    }

    pub async fn get(&self, key: &Path) -> Result<Bytes, StorageError> {
        let r = self.store.get(key).await.map_err(|e| self.error(key, e))?;
        r.bytes().await.map_err(|e| self.error(key, e))
    }

    /// Reads `key` whole, refusing an object larger than `max` bytes before reading its body:
    /// stored objects are untrusted, and their size is how an attacker exhausts memory.
    pub async fn get_max(&self, key: &Path, max: u64) -> Result<Bytes, StorageError> {
        let r = self.store.get(key).await.map_err(|e| self.error(key, e))?;
        if r.meta.size > max {
            return Err(self.too_large(key, r.meta.size, max));
        }
        let bytes = r.bytes().await.map_err(|e| self.error(key, e))?;
        if bytes.len() as u64 > max {
            return Err(self.too_large(key, bytes.len() as u64, max));
        }
        Ok(bytes)
    }

    fn too_large(&self, key: &Path, size: u64, max: u64) -> StorageError {
        StorageError::TooLarge {
            location: self.name.clone(),
            key: key.to_string(),
            size,
            max,
        }
    }

    /// Reads `key` whole into `buf` (replacing what it held), refusing an object larger than
    /// `max` before reading its body, as `get_max` does; for objects read once (a restore's
    /// packs). The caller keeps `buf`, so that reading many large objects allocates and faults
    /// in memory once, not once per object; on a filesystem location the object's pages are
    /// dropped from the page cache after the read. Blocking: a filesystem location is read on
    /// the calling thread, so call it from a thread of its own or of the blocking pool, never
    /// from a runtime worker.
    pub fn read_once_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        key: &Path,
        max: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let r = runtime
            .block_on(self.store.get(key))
            .map_err(|e| self.error(key, e))?;
        let size = r.meta.size;
        if size > max {
            return Err(self.too_large(key, size, max));
        }
        match r.payload {
            object_store::GetResultPayload::File(file, _) => {
                // The size listed, exactly: a file cut short since fails the read; what the
                // bytes say is for the caller to check (a pack's trailer, a blob's tag). Only
                // growth is zeroed: the read overwrites every byte.
                buf.resize(size as usize, 0);
                std::os::unix::fs::FileExt::read_exact_at(&file, buf, 0).map_err(|e| {
                    StorageError::Backend {
                        location: self.name.clone(),
                        message: format!("{key}: read failed: {e}"),
                    }
                })?;
                // Read once: its pages leave the page cache now rather than evict others (and
                // the next pages this process fills reuse them).
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            }
            object_store::GetResultPayload::Stream(mut stream) => runtime.block_on(async {
                buf.clear();
                buf.reserve(size as usize);
                while let Some(part) = stream.next().await {
                    let part = part.map_err(|e| self.error(key, e))?;
                    let grown = (buf.len() + part.len()) as u64;
                    if grown > max {
                        return Err(self.too_large(key, grown, max));
                    }
                    buf.extend_from_slice(&part);
                }
                Ok(())
            })?,
        }
        Ok(())
    }

    /// Announces that `key` will be read whole soon, so that a cold read overlaps other work:
    /// on a filesystem location the kernel starts reading the object into the page cache now
    /// (`posix_fadvise(WILLNEED)`, which costs this process no memory). Other backends do
    /// nothing. A failure is ignored: the read itself reports it.
    pub async fn prefetch(&self, key: &Path) {
        if self.local.is_none() {
            return;
        }
        if let Ok(r) = self.store.get(key).await
            && let object_store::GetResultPayload::File(file, _) = r.payload
        {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        }
    }

    pub async fn get_range(
        &self,
        key: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.store
            .get_range(key, range)
            .await
            .map_err(|e| self.error(key, e))
    }

    pub async fn size(&self, key: &Path) -> Result<u64, StorageError> {
        Ok(self
            .store
            .head(key)
            .await
            .map_err(|e| self.error(key, e))?
            .size)
    }

    pub async fn exists(&self, key: &Path) -> Result<bool, StorageError> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Writes `data` at `key`, replacing what is there.
    pub async fn put(&self, key: &Path, data: Bytes) -> Result<(), StorageError> {
        let Some(data) = self.put_direct(key, data, direct::Mode::Replace).await? else {
            return Ok(());
        };
        self.store
            .put(key, PutPayload::from(data))
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Writes `data` at `key` only if nothing is there: `AlreadyExists` otherwise.
    pub async fn put_new(&self, key: &Path, data: Bytes) -> Result<(), StorageError> {
        let Some(data) = self.put_direct(key, data, direct::Mode::Create).await? else {
            return Ok(());
        };
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(key, PutPayload::from(data), opts)
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Writes a large object to a filesystem location without the page cache; `None` once it
    /// is written, or the data back where the store must write it (another backend, a small
    /// object, or a filesystem without direct writes).
    async fn put_direct(
        &self,
        key: &Path,
        data: Bytes,
        mode: direct::Mode,
    ) -> Result<Option<Bytes>, StorageError> {
        let Some(fs) = &self.local else {
            return Ok(Some(data));
        };
        if data.len() < direct::MIN {
            return Ok(Some(data));
        }
        let dest = fs.path_to_filesystem(key).map_err(|e| self.error(key, e))?;
        let (outcome, data) =
            tokio::task::spawn_blocking(move || (direct::put(&dest, &data, mode), data))
                .await
                .map_err(|e| StorageError::Backend {
                    location: self.name.clone(),
                    message: format!("{key}: write task failed: {e}"),
                })?;
        match outcome {
            Ok(direct::Outcome::Written) => Ok(None),
            Ok(direct::Outcome::Unsupported) => Ok(Some(data)),
            Ok(direct::Outcome::Exists) => Err(StorageError::AlreadyExists {
                location: self.name.clone(),
                key: key.to_string(),
            }),
            Err(e) => {
                tracing::warn!(location = %self.name, %key, error = %e, "storage write failed");
                Err(StorageError::Backend {
                    location: self.name.clone(),
                    message: format!("{key}: write failed: {e}"),
                })
            }
        }
    }

    /// Every key below `dir` with its size.
    pub async fn list(&self, dir: &Path) -> Result<Vec<(Path, u64)>, StorageError> {
        self.store
            .list(Some(dir))
            .map_ok(|m| (m.location, m.size))
            .try_collect()
            .await
            .map_err(|e| self.error(dir, e))
    }

    /// Every key below `dir` with its size and the storage's own last-modified time (what lock
    /// staleness is judged by, so that no host's clock matters).
    pub async fn list_modified(
        &self,
        dir: &Path,
    ) -> Result<Vec<(Path, u64, jiff::Timestamp)>, StorageError> {
        self.store
            .list(Some(dir))
            .map_ok(|m| {
                let t = jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                (m.location, m.size, t)
            })
            .try_collect()
            .await
            .map_err(|e| self.error(dir, e))
    }

    pub async fn delete(&self, key: &Path) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Deletes many keys, a few at a time.
    pub async fn delete_all(&self, keys: Vec<Path>) -> Result<(), StorageError> {
        futures::stream::iter(keys)
            .map(|k| async move { self.delete(&k).await })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }
}
