//! Every key in a storage location, in one place. A location holds one repository:
//!
//! ```text
//! <prefix>/config                 repository description (plaintext JSON: format, version, key wrapping)
//! <prefix>/data/<xx>/<pack-id>    packs of encrypted chunks, sharded by the id's first byte
//! <prefix>/index/<index-id>       encrypted indexes: which pack holds which chunk
//! <prefix>/points/<point-id>      encrypted recovery-point manifests, written last
//! <prefix>/parts/<point-id>/<part> manifests of one node's volumes of a point being taken
//! <prefix>/locks/<lock-id>        markers of writers in flight (snapshot, replicate, prune)
//! <prefix>/fences/<namespace>/<name>/<epoch> sealed fence records: which cluster may write
//!                                 points of a workload (epoch: 20 decimal digits); kept forever
//! ```

use object_store::path::Path;

pub const CONFIG: &str = "config";
pub const DATA: &str = "data";
pub const INDEX: &str = "index";
pub const POINTS: &str = "points";
pub const LOCKS: &str = "locks";
pub const PARTS: &str = "parts";
pub const FENCES: &str = "fences";
/// Digits of a fence's epoch in its key: every u64, zero-padded, so names sort by epoch.
pub const EPOCH_DIGITS: usize = 20;

pub fn config(prefix: &Path) -> Path {
    prefix.clone().join(CONFIG)
}

pub fn pack(prefix: &Path, id: &str) -> Path {
    prefix
        .clone()
        .join(DATA)
        .join(&id[..2.min(id.len())])
        .join(id)
}

pub fn index(prefix: &Path, id: &str) -> Path {
    prefix.clone().join(INDEX).join(id)
}

pub fn point(prefix: &Path, id: &str) -> Path {
    prefix.clone().join(POINTS).join(id)
}

pub fn part(prefix: &Path, point: &str, part: &str) -> Path {
    prefix.clone().join(PARTS).join(point).join(part)
}

pub fn parts_of(prefix: &Path, point: &str) -> Path {
    prefix.clone().join(PARTS).join(point)
}

pub fn lock(prefix: &Path, id: &str) -> Path {
    prefix.clone().join(LOCKS).join(id)
}

/// The fences of one workload. `namespace` and `name` must be Kubernetes names (the caller
/// checks them, see `repository::origin::split_workload`): they are single path segments.
pub fn fences_of(prefix: &Path, namespace: &str, name: &str) -> Path {
    prefix.clone().join(FENCES).join(namespace).join(name)
}

/// One fence of a workload (see [`fences_of`]).
pub fn fence(prefix: &Path, namespace: &str, name: &str, epoch: u64) -> Path {
    fences_of(prefix, namespace, name).join(epoch_name(epoch))
}

/// A fence's key below the prefix, which its seal is bound to: the same in every replica.
pub fn fence_name(namespace: &str, name: &str, epoch: u64) -> String {
    format!("{FENCES}/{namespace}/{name}/{}", epoch_name(epoch))
}

pub fn epoch_name(epoch: u64) -> String {
    format!("{epoch:0width$}", width = EPOCH_DIGITS)
}

/// The epoch a fence's file name gives: exactly [`EPOCH_DIGITS`] decimal digits, within u64.
pub fn parse_epoch(name: &str) -> Option<u64> {
    if name.len() != EPOCH_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

pub fn dir(prefix: &Path, kind: &str) -> Path {
    prefix.clone().join(kind)
}
