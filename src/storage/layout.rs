//! Every key in a storage location, in one place. A location holds one repository:
//!
//! ```text
//! <prefix>/config                 repository description (plaintext JSON: format, version, key wrapping)
//! <prefix>/data/<xx>/<pack-id>    packs of encrypted chunks, sharded by the id's first byte
//! <prefix>/index/<index-id>       encrypted indexes: which pack holds which chunk
//! <prefix>/points/<point-id>      encrypted recovery-point manifests, written last
//! <prefix>/parts/<point-id>/<part> manifests of one node's volumes of a point being taken
//! <prefix>/locks/<lock-id>        markers of writers in flight (snapshot, replicate, prune)
//! ```

use object_store::path::Path;

pub const CONFIG: &str = "config";
pub const DATA: &str = "data";
pub const INDEX: &str = "index";
pub const POINTS: &str = "points";
pub const LOCKS: &str = "locks";
pub const PARTS: &str = "parts";

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

pub fn dir(prefix: &Path, kind: &str) -> Path {
    prefix.clone().join(kind)
}
