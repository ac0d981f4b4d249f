//! One error enum for the controllers; each variant maps once to an event reason, a metric
//! label and a retry policy.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("storage location {location} is not usable: {message}")]
    Storage { location: String, message: String },
    #[error("{kind} {name} cannot be read: {message}")]
    InvalidObject {
        kind: String,
        name: String,
        message: String,
    },
    /// An object the controller would create exists and is not its own: it never adopts one.
    #[error("{object} exists and was not made by this object; delete or rename it")]
    NameTaken { object: String },
    /// A cache the decision is read from has not had its first full list yet (a watch the
    /// operator's permissions refuse never fills it: its log says so).
    #[error("the operator's caches of {caches} have not been filled from the API server yet")]
    CachesFilling { caches: String },
}

impl Error {
    /// CamelCase category: the Warning event's reason and the `error` metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Storage { .. } => "StorageError",
            Error::InvalidObject { .. } => "InvalidObject",
            Error::NameTaken { .. } => "NameInUse",
            Error::CachesFilling { .. } => "CachesFilling",
        }
    }

    /// The first retry delay; the backoff doubles it per consecutive failure.
    pub fn base_delay(&self) -> Duration {
        match self {
            // Conflicts and throttling clear quickly.
            Error::Kube(kube::Error::Api(s)) if s.code == 409 || s.code == 429 => {
                Duration::from_millis(200)
            }
            Error::Kube(_) => Duration::from_secs(1),
            Error::Storage { .. } => Duration::from_secs(5),
            // A malformed object changes only when a user edits it, which triggers a reconcile.
            Error::InvalidObject { .. } => Duration::from_secs(300),
            // Freed by a user (or an earlier owner's deletion finishing).
            Error::NameTaken { .. } => Duration::from_secs(5),
            Error::CachesFilling { .. } => Duration::from_secs(2),
        }
    }
}

/// A spec the API accepted that cannot take effect, naming the field to fix (invariant 4: it
/// shows as `Ready=False InvalidSpec` with this message). For the checks CEL cannot make, or
/// that a CRD installed without validation skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    /// The field's value cannot be read; `problem` says why (`"5x" is not a duration such as
    /// 30s, 5m or 1h30m`).
    #[error("{field}: {problem}")]
    Unreadable {
        field: &'static str,
        problem: String,
    },
    /// The field's value is below what the operator honours.
    #[error("{field} must be at least {minimum}")]
    BelowMinimum {
        field: &'static str,
        minimum: &'static str,
    },
    /// Of mutually exclusive fields, not exactly one is set.
    #[error("{field} must set exactly one of {choices}")]
    NotExactlyOne {
        field: &'static str,
        choices: &'static str,
    },
}

impl InvalidSpec {
    /// The field to fix, as `kubectl explain` spells it.
    pub fn field(&self) -> &'static str {
        match self {
            InvalidSpec::Unreadable { field, .. }
            | InvalidSpec::BelowMinimum { field, .. }
            | InvalidSpec::NotExactlyOne { field, .. } => field,
        }
    }
}
