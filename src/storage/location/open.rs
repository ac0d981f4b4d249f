//! Opening a location: one function per backend, each building its object store from the
//! location's options and, where the installation allows it, the environment.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::{Location, LocationSpec, Options, StorageError};
use crate::storage::redact::redact;

/// What opening a location may fall back on beyond its options.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fallback {
    /// Environment variables and the stores' own credential chains (instance metadata,
    /// workload identity, credential files).
    pub(super) environment: bool,
    /// `http://` endpoints.
    pub(super) allow_http: bool,
}

impl Fallback {
    pub(super) const AMBIENT: Self = Self {
        environment: true,
        allow_http: true,
    };
}

/// The option keys whose values are secrets, scrubbed from every error of the location.
const SECRET_KEYS: [&str; 6] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "accountKey",
    "sasToken",
    "serviceAccountKey",
    "AZURE_STORAGE_ACCOUNT_KEY",
];

/// A location's options as a backend reads them, with what it may fall back on.
struct Settings<'a> {
    options: &'a Options,
    fallback: Fallback,
    /// The secret values among the settings.
    secrets: Vec<String>,
}

impl<'a> Settings<'a> {
    fn new(options: &'a Options, fallback: Fallback) -> Self {
        let mut settings = Self {
            options,
            fallback,
            secrets: vec![],
        };
        settings.secrets = SECRET_KEYS
            .iter()
            .filter_map(|k| settings.get(&[k]))
            .collect();
        settings
    }

    /// The first of `keys` that is set, in the options or (with the fallback) the environment.
    fn get(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| {
            self.options.get(*k).cloned().or_else(|| {
                self.fallback
                    .environment
                    .then(|| std::env::var(k).ok())
                    .flatten()
            })
        })
    }

    /// Refuses an `http://` endpoint unless the installation allows them.
    fn check_endpoint(&self, endpoint: &str) -> Result<(), StorageError> {
        if !self.fallback.allow_http && endpoint.to_ascii_lowercase().starts_with("http://") {
            return Err(StorageError::NotAllowed(format!(
                "endpoint {endpoint:?} is not https; this installation accepts only https endpoints"
            )));
        }
        Ok(())
    }

    /// A builder's error, cleaned of the secrets.
    fn config(&self, e: object_store::Error) -> StorageError {
        StorageError::Config(redact(
            &e.to_string(),
            &self.secrets.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    }
}

/// Without the ambient identity, a store must be given credentials explicitly: the builders
/// would otherwise ask instance metadata or read files for them.
fn missing_credentials(what: &str) -> StorageError {
    StorageError::Config(format!(
        "the credentials Secret has no {what}; this installation does not lend its own cloud identity to vaults"
    ))
}

/// A backend's store, the location's prefix in it, and its name for messages.
struct Opened {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    name: String,
    /// The same store, when it is a directory of this machine.
    local: Option<Arc<LocalFileSystem>>,
}

impl Location {
    pub(super) fn open_with(
        spec: &LocationSpec,
        options: &Options,
        fallback: Fallback,
    ) -> Result<Self, StorageError> {
        let settings = Settings::new(options, fallback);
        let opened = match spec {
            LocationSpec::Filesystem(path) => filesystem(path, &settings)?,
            LocationSpec::S3 { bucket, prefix } => s3(bucket, prefix, &settings)?,
            LocationSpec::Azure { container, prefix } => azure(container, prefix, &settings)?,
            LocationSpec::Gcs { bucket, prefix } => gcs(bucket, prefix, &settings)?,
        };
        Ok(Self {
            store: opened.store,
            prefix: Path::from(opened.prefix.as_str()),
            name: opened.name,
            secrets: Arc::new(settings.secrets),
            local: opened.local,
        })
    }
}

fn filesystem(path: &std::path::Path, settings: &Settings) -> Result<Opened, StorageError> {
    std::fs::create_dir_all(path).map_err(|e| {
        StorageError::Config(format!(
            "{}: cannot create the directory: {e}",
            path.display()
        ))
    })?;
    // fsync: a put returns only once the file and its directory entry are on disk, so a
    // manifest written after its packs is never durable before them.
    let fs = LocalFileSystem::new_with_prefix(path)
        .map_err(|e| settings.config(e))?
        .with_automatic_cleanup(true)
        .with_fsync(true);
    let fs = Arc::new(fs);
    Ok(Opened {
        store: fs.clone(),
        prefix: String::new(),
        name: format!("file://{}", path.display()),
        local: Some(fs),
    })
}

fn s3(bucket: &str, prefix: &str, settings: &Settings) -> Result<Opened, StorageError> {
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    if let Some(endpoint) = settings.get(&["endpoint", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]) {
        settings.check_endpoint(&endpoint)?;
        b = b
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    b = b.with_region(
        settings
            .get(&["region", "AWS_REGION", "AWS_DEFAULT_REGION"])
            .unwrap_or_else(|| "us-east-1".into()),
    );
    if let (Some(id), Some(secret)) = (
        settings.get(&["AWS_ACCESS_KEY_ID"]),
        settings.get(&["AWS_SECRET_ACCESS_KEY"]),
    ) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    } else if !settings.fallback.environment {
        return Err(missing_credentials(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    if let Some(token) = settings.get(&["AWS_SESSION_TOKEN"]) {
        b = b.with_token(token);
    }
    Ok(Opened {
        store: Arc::new(b.build().map_err(|e| settings.config(e))?),
        prefix: prefix.to_string(),
        name: format!("s3://{bucket}/{prefix}"),
        local: None,
    })
}

fn azure(container: &str, prefix: &str, settings: &Settings) -> Result<Opened, StorageError> {
    let account = settings
        .get(&["accountName", "AZURE_STORAGE_ACCOUNT_NAME"])
        .ok_or_else(|| {
            StorageError::Config("azure location needs an account name (accountName)".into())
        })?;
    let mut b = MicrosoftAzureBuilder::new()
        .with_account(&account)
        .with_container_name(container);
    if let Some(endpoint) = settings.get(&["endpoint", "AZURE_STORAGE_ENDPOINT"]) {
        settings.check_endpoint(&endpoint)?;
        b = b
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let Some(key) = settings.get(&["accountKey", "AZURE_STORAGE_ACCOUNT_KEY"]) {
        b = b.with_access_key(key);
    } else if let Some(sas) = settings.get(&["sasToken", "AZURE_STORAGE_SAS_TOKEN"]) {
        b = b.with_sas_authorization(sas_pairs(&sas));
    } else if !settings.fallback.environment {
        return Err(missing_credentials("accountKey or sasToken"));
    }
    Ok(Opened {
        store: Arc::new(b.build().map_err(|e| settings.config(e))?),
        prefix: prefix.to_string(),
        name: format!("az://{account}/{container}/{prefix}"),
        local: None,
    })
}

/// A SAS token's query pairs (`?sv=...&sig=...`, the leading `?` optional).
fn sas_pairs(sas: &str) -> Vec<(String, String)> {
    sas.trim_start_matches('?')
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn gcs(bucket: &str, prefix: &str, settings: &Settings) -> Result<Opened, StorageError> {
    let mut b = GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
    if let Some(key) = settings.get(&["serviceAccountKey", "GOOGLE_SERVICE_ACCOUNT_KEY"]) {
        b = b.with_service_account_key(key);
    } else if !settings.fallback.environment {
        return Err(missing_credentials("serviceAccountKey"));
    }
    Ok(Opened {
        store: Arc::new(b.build().map_err(|e| settings.config(e))?),
        prefix: prefix.to_string(),
        name: format!("gs://{bucket}/{prefix}"),
        local: None,
    })
}
