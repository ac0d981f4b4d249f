//! One abstraction over the places recovery points live: a local directory (the embedded
//! default, also a mounted volume), S3-compatible buckets, Azure Blob containers and Google
//! Cloud Storage, all through `object_store`. object_store retries transient errors itself;
//! nothing here adds a second retry layer. Errors that leave this module are cleaned of secrets.
//!
//! A leaf: it imports neither the repository nor kube nor any component (`layers.rs` checks);
//! reading a vault's Secrets to open its locations is `crate::vault_access`.

pub mod layout;
pub mod location;
pub mod redact;
pub mod rules;

pub use location::{Location, LocationSpec, StorageError};
pub use rules::StorageRules;
