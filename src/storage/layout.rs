//! Every key in a storage location, in one place. A location holds one repository:
//!
//! ```text
//! <prefix>/config                 repository description (plaintext JSON: format, version, key wrapping)
//! <prefix>/data/<xx>/<pack-id>    packs of encrypted chunks, sharded by the id's first byte
//! <prefix>/index/<index-id>       encrypted indexes: which pack holds which chunk
//! <prefix>/points/<point-id>      encrypted recovery-point manifests, written last
//! <prefix>/locks/<lock-id>        markers of writers in flight (snapshot, replicate, prune)
//! ```

use object_store::path::Path;

pub const CONFIG: &str = "config";
pub const DATA: &str = "data";
pub const INDEX: &str = "index";
pub const POINTS: &str = "points";
pub const LOCKS: &str = "locks";

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

pub fn lock(prefix: &Path, id: &str) -> Path {
    prefix.clone().join(LOCKS).join(id)
}

pub fn dir(prefix: &Path, kind: &str) -> Path {
    prefix.clone().join(kind)
}
