//! What a tenant's vault may point its storage at. The operator and the agents (root, with the
//! storage root mounted) apply the same rules, set by the chart: filesystem locations stay in
//! the vault namespace's directory below the storage root; object-store endpoints are `https`
//! unless insecure endpoints are allowed; a vault uses only the credentials of its own Secret
//! unless the platform's ambient identity (environment, instance metadata, workload identity) is
//! explicitly lent to vaults.

use std::path::{Component, Path, PathBuf};

use crate::api::vault::Storage;

/// Where filesystem locations live when no root is configured: the examples' paths are below it.
pub const DEFAULT_FILESYSTEM_ROOT: &str = "/var/lib/site-recovery";

/// The rules of one installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRules {
    /// Filesystem locations of a vault in namespace `ns` must be directories below
    /// `<filesystem_root>/<ns>/`.
    pub filesystem_root: PathBuf,
    /// `http://` endpoints are accepted (test servers, emulators).
    pub allow_insecure_endpoints: bool,
    /// A vault without credentials in its Secret may use the identity of the pod or node.
    pub allow_ambient_credentials: bool,
}

impl Default for StorageRules {
    fn default() -> Self {
        Self {
            filesystem_root: PathBuf::from(DEFAULT_FILESYSTEM_ROOT),
            allow_insecure_endpoints: false,
            allow_ambient_credentials: false,
        }
    }
}

impl StorageRules {
    /// The directory of `namespace`'s filesystem locations.
    pub fn namespace_dir(&self, namespace: &str) -> PathBuf {
        self.filesystem_root.join(namespace)
    }

    /// `path` (a vault's `storage.filesystem.path`) when it names a directory below the
    /// namespace's directory, written plainly: absolute, no `.` or `..` component, no empty
    /// component (`//`). `field` names the spec field in the message.
    pub fn confine(&self, field: &str, namespace: &str, path: &str) -> Result<PathBuf, String> {
        let expected = || {
            format!(
                "a directory below {}/ written without '.', '..' or '//', e.g. {}/cache",
                self.namespace_dir(namespace).display(),
                self.namespace_dir(namespace).display()
            )
        };
        let plain = path.starts_with('/')
            && !path.contains('\0')
            && path
                .trim_end_matches('/')
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            return Err(format!(
                "{field}: {path:?} is not a plain absolute path; expected {}",
                expected()
            ));
        }
        let wanted = Path::new(path.trim_end_matches('/'));
        let dir = lexical(&self.namespace_dir(namespace));
        if namespace.is_empty()
            || namespace.contains('/')
            || !wanted.starts_with(&dir)
            || wanted == dir
        {
            return Err(format!(
                "{field}: {path:?} is outside this namespace's storage; expected {}",
                expected()
            ));
        }
        Ok(wanted.to_path_buf())
    }

    /// The checks a storage spec must pass before anything opens it: where filesystem paths
    /// are, the scheme of endpoints, and that a credentials Secret is named when the ambient
    /// identity is not lent. `field` is `spec.cache.storage` or `spec.target.storage`.
    pub fn check(&self, field: &str, namespace: &str, storage: &Storage) -> Result<(), String> {
        if let Some(fs) = &storage.filesystem {
            self.confine(&format!("{field}.filesystem.path"), namespace, &fs.path)?;
        }
        let endpoints = [
            (
                "s3",
                storage.s3.as_ref().and_then(|s| s.endpoint.as_deref()),
            ),
            (
                "azureBlob",
                storage
                    .azure_blob
                    .as_ref()
                    .and_then(|a| a.endpoint.as_deref()),
            ),
        ];
        for (backend, endpoint) in endpoints {
            if let Some(e) = endpoint {
                self.endpoint(&format!("{field}.{backend}.endpoint"), e)?;
            }
        }
        if !self.allow_ambient_credentials && storage.credentials_secret().is_none() {
            let backend = if storage.s3.is_some() {
                Some(("s3", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
            } else if storage.azure_blob.is_some() {
                Some(("azureBlob", "accountKey or sasToken"))
            } else if storage.gcs.is_some() {
                Some(("gcs", "serviceAccountKey"))
            } else {
                None
            };
            if let Some((backend, keys)) = backend {
                return Err(format!(
                    "{field}.{backend}.credentialsSecretRef: required: name a Secret with {keys}; this installation does not lend its own cloud identity to vaults (allowAmbientCredentials is off)"
                ));
            }
        }
        Ok(())
    }

    /// An endpoint's scheme: `https`, or `http` when insecure endpoints are allowed.
    pub fn endpoint(&self, field: &str, endpoint: &str) -> Result<(), String> {
        let lower = endpoint.to_ascii_lowercase();
        if lower.starts_with("https://")
            || (self.allow_insecure_endpoints && lower.starts_with("http://"))
        {
            Ok(())
        } else if lower.starts_with("http://") {
            Err(format!(
                "{field}: {endpoint:?} is not https; this installation accepts only https endpoints (allowInsecureEndpoints is off)"
            ))
        } else {
            Err(format!("{field}: {endpoint:?} is not an https:// URL"))
        }
    }
}

/// `path` with `.` components dropped and `..` applied, without touching the filesystem (the
/// configured root is written by the operator's installer, and still read plainly).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> StorageRules {
        StorageRules {
            filesystem_root: "/srv/sr".into(),
            ..Default::default()
        }
    }

    #[test]
    fn filesystem_paths_stay_in_the_namespace_directory() {
        let r = rules();
        let f = "spec.cache.storage.filesystem.path";
        assert_eq!(
            r.confine(f, "apps", "/srv/sr/apps/cache"),
            Ok("/srv/sr/apps/cache".into())
        );
        assert_eq!(
            r.confine(f, "apps", "/srv/sr/apps/a/b/"),
            Ok("/srv/sr/apps/a/b".into())
        );
        for (path, says) in [
            ("/srv/sr/apps/../other/cache", "not a plain absolute path"),
            ("/srv/sr/apps/./cache", "not a plain absolute path"),
            ("/srv/sr/apps//cache", "not a plain absolute path"),
            ("/srv/sr/apps/cache/..", "not a plain absolute path"),
            ("srv/sr/apps/cache", "not a plain absolute path"),
            ("/srv/sr/other/cache", "outside this namespace's storage"),
            ("/srv/sr/apps", "outside this namespace's storage"),
            ("/srv/sr/apps-2/cache", "outside this namespace's storage"),
            ("/etc", "outside this namespace's storage"),
            ("/var/lib/kubelet/pods", "outside this namespace's storage"),
        ] {
            let e = r.confine(f, "apps", path).unwrap_err();
            assert!(e.starts_with(f) && e.contains(says), "{path}: {e}");
            assert!(e.contains("below /srv/sr/apps/"), "{path}: {e}");
        }
        // A root given with a trailing slash or dots still confines to the same directory.
        let odd = StorageRules {
            filesystem_root: "/srv/./sr/".into(),
            ..Default::default()
        };
        assert!(odd.confine(f, "apps", "/srv/sr/apps/cache").is_ok());
    }

    #[test]
    fn endpoints_are_https_unless_allowed_and_credentials_are_the_vaults_own() {
        let storage = |v: serde_json::Value| -> Storage { serde_json::from_value(v).unwrap() };
        let r = rules();
        let http = storage(
            serde_json::json!({"s3": {"bucket": "bkt", "endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "c"}}}),
        );
        let e = r.check("spec.target.storage", "apps", &http).unwrap_err();
        assert!(
            e.starts_with("spec.target.storage.s3.endpoint: ") && e.contains("not https"),
            "{e}"
        );
        let allowed = StorageRules {
            allow_insecure_endpoints: true,
            ..rules()
        };
        assert_eq!(allowed.check("spec.target.storage", "apps", &http), Ok(()));
        let anonymous =
            storage(serde_json::json!({"azureBlob": {"container": "c", "accountName": "acct"}}));
        let e = r
            .check("spec.cache.storage", "apps", &anonymous)
            .unwrap_err();
        assert!(
            e.starts_with("spec.cache.storage.azureBlob.credentialsSecretRef: required"),
            "{e}"
        );
        let ambient = StorageRules {
            allow_ambient_credentials: true,
            ..rules()
        };
        assert_eq!(
            ambient.check("spec.cache.storage", "apps", &anonymous),
            Ok(())
        );
        let gopher = storage(
            serde_json::json!({"s3": {"bucket": "bkt", "endpoint": "gopher://x", "credentialsSecretRef": {"name": "c"}}}),
        );
        assert!(allowed.check("f", "apps", &gopher).is_err());
    }
}
