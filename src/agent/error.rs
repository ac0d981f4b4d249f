//! Why an agent could not carry out a capture or a restore. Each variant names the object or
//! path and what to do; its text becomes the agent's report message, and from there the
//! workload's or the Failover's condition.

use std::path::PathBuf;

use crate::repository::RepoError;
use crate::vault_access::AccessError;

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A request to the API server failed; `what` names the object ("reading
    /// PersistentVolume pv-1", "listing pods in apps").
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "claim {claim}: PersistentVolume {volume} is a hostPath volume at {path}, outside --kubelet-root {}; the agent reads only below the kubelet root: use a local or CSI PersistentVolume",
        .kubelet_root.display()
    )]
    HostPathVolume {
        claim: String,
        volume: String,
        path: String,
        kubelet_root: PathBuf,
    },
    #[error(
        "claim {claim}: PersistentVolume {volume} is neither CSI nor local; the agent cannot find its mount"
    )]
    UnsupportedVolume { claim: String, volume: String },
    /// The `--kubelet-root` the agent was started with cannot be resolved.
    #[error("--kubelet-root {}: {source}", .kubelet_root.display())]
    KubeletRoot {
        kubelet_root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A mount directory cannot be resolved.
    #[error("{}: {source}", .path.display())]
    Unresolvable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} resolves to {}, outside --kubelet-root {}; refusing to read it",
        .path.display(), .real.display(), .kubelet_root.display()
    )]
    OutsideKubeletRoot {
        path: PathBuf,
        real: PathBuf,
        kubelet_root: PathBuf,
    },
    #[error(
        "claim {claim} is a block claim (volumeMode Block); {} resolves to {}, which is not a block device; refusing to read or write it",
        .path.display(), .real.display()
    )]
    NotABlockDevice {
        claim: String,
        path: PathBuf,
        real: PathBuf,
    },
    /// The vault's key or credentials are not (yet) usable by the agents.
    #[error("RecoveryVault {vault}: {source}")]
    VaultAccess {
        vault: String,
        #[source]
        source: AccessError,
    },
    /// A repository operation failed; `during` says which ("cache location", "writing to the
    /// cache location", "claim data-0 from volume data-db-0 of point …").
    #[error("{during}: {source}")]
    Repository {
        during: String,
        #[source]
        source: RepoError,
    },
    #[error("claim {claim}: emptying an interrupted restore: {source}")]
    ClearInterrupted {
        claim: String,
        #[source]
        source: std::io::Error,
    },
    #[error("claim {claim}: the restore did not complete")]
    RestoreIncomplete { claim: String },
}

impl WorkError {
    /// The `map_err` of an API request about `what`.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| WorkError::Api { what, source }
    }

    /// The `map_err` of a repository operation.
    pub fn repository(during: impl Into<String>) -> impl FnOnce(RepoError) -> Self {
        let during = during.into();
        move |source| WorkError::Repository { during, source }
    }

    /// The `map_err` of resolving vault `vault`'s access.
    pub fn vault(vault: &str) -> impl FnOnce(AccessError) -> Self + '_ {
        move |source| WorkError::VaultAccess {
            vault: vault.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_claim_volume_and_what_to_use_instead() {
        let host_path = WorkError::HostPathVolume {
            claim: "data-db-0".into(),
            volume: "pv-1".into(),
            path: "/srv/data".into(),
            kubelet_root: "/var/lib/kubelet".into(),
        };
        assert_eq!(
            host_path.to_string(),
            "claim data-db-0: PersistentVolume pv-1 is a hostPath volume at /srv/data, outside --kubelet-root /var/lib/kubelet; the agent reads only below the kubelet root: use a local or CSI PersistentVolume"
        );
        let outside = WorkError::OutsideKubeletRoot {
            path: "/var/lib/kubelet/pods/u".into(),
            real: "/etc".into(),
            kubelet_root: "/var/lib/kubelet".into(),
        };
        assert_eq!(
            outside.to_string(),
            "/var/lib/kubelet/pods/u resolves to /etc, outside --kubelet-root /var/lib/kubelet; refusing to read it"
        );
        let incomplete = WorkError::RestoreIncomplete {
            claim: "data-db-failover-0".into(),
        };
        assert_eq!(
            incomplete.to_string(),
            "claim data-db-failover-0: the restore did not complete"
        );
    }
}
