//! What a manifest may say about a volume tree, checked after every decode. Manifests are
//! authenticated, but every tenant holds its own vault's key and can write a well-formed one, so
//! a restore trusts none of it: every path is a sequence of normal components, the nodes come in
//! the order a scan writes them (pre-order, names in byte order: no duplicates), every node's
//! parent is a directory named before it, and a hard link names a regular file stored before it.

use std::collections::HashSet;

use super::format::{FileData, Manifest, Node, NodeKind, VolumeContent};
use super::restore::INCOMPLETE_MARKER;

/// Longest path a node may have, and longest name of one component (Linux's limits).
pub const PATH_MAX: usize = 4096;
pub const NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 64 << 10;

/// Checks everything a restore relies on; the error names the volume and the node.
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    if let Some(origin) = &m.origin {
        super::origin::check_origin(origin)?;
    }
    let mut names = HashSet::new();
    for v in &m.volumes {
        if v.name.is_empty() || v.name.len() > 253 || !names.insert(v.name.as_str()) {
            return Err(format!(
                "volume name {:?} is empty, too long or given twice",
                v.name
            ));
        }
        match &v.content {
            VolumeContent::Raw(data) => {
                check_extents(data).map_err(|e| format!("volume {}: {e}", v.name))?
            }
            VolumeContent::Tree(nodes) => {
                check_tree(nodes).map_err(|e| format!("volume {}: {e}", v.name))?
            }
        }
    }
    Ok(())
}

fn check_extents(data: &FileData) -> Result<(), String> {
    let sum = data
        .extents
        .iter()
        .try_fold(0u64, |sum, e| sum.checked_add(e.length as u64));
    if sum != Some(data.size) {
        return Err(format!(
            "extents add up to {sum:?} bytes, not the {} the file has",
            data.size
        ));
    }
    Ok(())
}

/// Whether `path` is a relative path of normal components (no "", ".", "..", NUL).
pub fn is_normal_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= PATH_MAX
        && path.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.len() <= NAME_MAX && !c.contains('\0')
        })
}

/// `(parent, name)` of a normal path; the root's children have the parent "".
pub fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn check_tree(nodes: &[Node]) -> Result<(), String> {
    let Some(root) = nodes.first() else {
        return Err("the tree has no root".into());
    };
    if !root.path.is_empty() || root.kind != NodeKind::Dir {
        return Err(format!(
            "the first node is {:?}, not the root directory",
            root.path
        ));
    }
    check_attributes(root)?;
    let mut dirs: HashSet<&str> = HashSet::from([""]);
    let mut files: HashSet<&str> = HashSet::new();
    let mut previous = "";
    for n in &nodes[1..] {
        let path = n.path.as_str();
        let bad = |why: &str| format!("node {path:?}: {why}");
        if !is_normal_path(path) {
            return Err(bad(
                "not a relative path of normal components (no absolute path, '.', '..', empty or over-long names)",
            ));
        }
        if path == INCOMPLETE_MARKER {
            return Err(bad("a name the restore reserves"));
        }
        // Pre-order with names in byte order, component by component: strictly increasing.
        if previous.split('/').cmp(path.split('/')) != std::cmp::Ordering::Less
            && !previous.is_empty()
        {
            return Err(bad(&format!(
                "comes after {previous:?}: nodes are out of order or given twice"
            )));
        }
        previous = path;
        let (parent, _) = split_parent(path);
        if !dirs.contains(parent) {
            return Err(bad("its parent is not a directory named before it"));
        }
        check_attributes(n).map_err(|e| bad(&e))?;
        match &n.kind {
            NodeKind::Dir => {
                dirs.insert(path);
            }
            NodeKind::File(data) => {
                check_extents(data).map_err(|e| bad(&e))?;
                files.insert(path);
            }
            NodeKind::Symlink(to) => {
                if to.is_empty() || to.len() > PATH_MAX || to.contains('\0') {
                    return Err(bad("a symlink target that is empty, too long or has NUL"));
                }
            }
            NodeKind::HardLink(first) => {
                if !files.contains(first.as_str()) {
                    return Err(bad(&format!(
                        "a hard link to {first:?}, which is not a regular file stored before it"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_attributes(n: &Node) -> Result<(), String> {
    for (name, value) in &n.xattrs {
        if name.is_empty() || name.len() > NAME_MAX || name.contains('\0') {
            return Err(format!("extended attribute name {name:?} is not valid"));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(format!(
                "extended attribute {name} has {} bytes, more than {XATTR_VALUE_MAX}",
                value.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::format::{Consistency, Stats, VolumeManifest};

    fn node(path: &str, kind: NodeKind) -> Node {
        Node {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            xattrs: vec![],
        }
    }

    fn file() -> NodeKind {
        NodeKind::File(FileData::default())
    }

    fn manifest(nodes: Vec<Node>) -> Manifest {
        Manifest {
            id: "p".into(),
            time: String::new(),
            workload: "w".into(),
            consistency: Consistency::FileLevel,
            source_zone: None,
            parent: None,
            volumes: vec![VolumeManifest {
                name: "data".into(),
                content: VolumeContent::Tree(nodes),
            }],
            stats: Stats::default(),
            origin: None,
        }
    }

    fn check(paths: &[(&str, NodeKind)]) -> Result<(), String> {
        let mut nodes = vec![node("", NodeKind::Dir)];
        nodes.extend(paths.iter().map(|(p, k)| node(p, k.clone())));
        check_manifest(&manifest(nodes))
    }

    #[test]
    fn a_scanned_tree_passes() {
        check(&[
            ("a", NodeKind::Dir),
            ("a/b", file()),
            ("a/c", NodeKind::Dir),
            ("a/c/d", NodeKind::Symlink("/etc/passwd".into())),
            ("a-x", NodeKind::HardLink("a/b".into())),
            ("b", file()),
        ])
        .unwrap();
    }

    #[test]
    fn hostile_paths_are_refused_with_the_path_named() {
        let cases: Vec<(Vec<(&str, NodeKind)>, &str)> = vec![
            (vec![("/etc/cron.d/x", file())], "normal components"),
            (vec![("../../etc/passwd", file())], "normal components"),
            (vec![("a", NodeKind::Dir), ("a/../../x", file())], "normal"),
            (vec![("a//b", file())], "normal components"),
            (vec![("./a", file())], "normal components"),
            (
                vec![("x", file()), ("x", NodeKind::Symlink("/".into()))],
                "twice",
            ),
            (vec![("b", file()), ("a", file())], "out of order"),
            (vec![("a/b", file())], "parent is not a directory"),
            (
                vec![("a", file()), ("a/b", file())],
                "parent is not a directory",
            ),
            (
                vec![("x", NodeKind::HardLink("/etc/shadow".into()))],
                "hard link",
            ),
            (vec![("x", NodeKind::HardLink("../y".into()))], "hard link"),
            (
                vec![("a", NodeKind::Dir), ("b", NodeKind::HardLink("a".into()))],
                "hard link",
            ),
            (
                vec![("y", NodeKind::HardLink("z".into())), ("z", file())],
                "hard link",
            ),
            (vec![(INCOMPLETE_MARKER, file())], "reserves"),
        ];
        for (paths, expected) in cases {
            let err = check(&paths).unwrap_err();
            assert!(err.contains(expected), "{paths:?}: {err}");
            assert!(err.contains("volume data"), "{err}");
        }
    }

    #[test]
    fn extents_must_add_up_to_the_size() {
        let data = FileData {
            size: 10,
            extents: vec![crate::repository::format::Extent {
                chunk: None,
                length: 4,
            }],
        };
        let err = check(&[("f", NodeKind::File(data))]).unwrap_err();
        assert!(err.contains("not the 10"), "{err}");
    }

    #[test]
    fn the_root_comes_first() {
        let err = check_manifest(&manifest(vec![node("a", file())])).unwrap_err();
        assert!(err.contains("root"), "{err}");
    }
}
