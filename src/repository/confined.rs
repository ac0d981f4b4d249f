//! Opening files inside a volume without ever leaving it. The agent runs as root over trees a
//! workload controls, so nothing here opens a path it has not confined: every open is relative
//! to a directory descriptor, refuses symlinks (`O_NOFOLLOW`; `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` for nested paths, or a walk one component at a time
//! where the kernel lacks it), stays on the volume's filesystem, and checks that what it opened
//! is what the scan saw (device and inode).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::format::{FileData, MAX_WARNINGS, Node, NodeKind};
use super::tree::NAME_MAX;

/// Directories nested deeper than this are not descended into (and said so in the warnings):
/// each level holds one descriptor while the scan is below it.
pub const MAX_DEPTH: usize = 512;

fn io(e: Errno) -> std::io::Error {
    e.into()
}

/// Opens a directory by a path the caller trusts (a mount the agent found below the kubelet
/// root, a restore target the CLI user named), refusing a symlink as its last component.
pub fn open_dir(path: &Path) -> std::io::Result<File> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(io)
}

/// Opens `rel` (a normal relative path, "" for the root itself) below `root` without following
/// any symlink and without leaving the root's filesystem.
pub fn open_beneath(root: &File, rel: &str, flags: OFlags) -> std::io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if rel.is_empty() {
        return rustix::fs::openat(root, ".", flags, Mode::empty())
            .map(File::from)
            .map_err(io);
    }
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) | Err(Errno::PERM) => walk(root, rel, flags),
        other => other.map(File::from).map_err(io),
    }
}

/// The same as `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, one component at a time.
fn walk(root: &File, rel: &str, flags: OFlags) -> std::io::Result<File> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dev = rustix::fs::fstat(root).map_err(io)?.st_dev;
    let mut parts = rel.split('/').peekable();
    let mut dir: Option<File> = None;
    while let Some(part) = parts.next() {
        if part.is_empty() || part == "." || part == ".." {
            return Err(io(Errno::INVAL));
        }
        let at = dir.as_ref().unwrap_or(root);
        let last = parts.peek().is_none();
        let fd = rustix::fs::openat(
            at,
            part,
            if last { flags } else { dir_flags },
            Mode::empty(),
        )
        .map(File::from)
        .map_err(io)?;
        if rustix::fs::fstat(&fd).map_err(io)?.st_dev != dev {
            return Err(io(Errno::XDEV));
        }
        if last {
            return Ok(fd);
        }
        dir = Some(fd);
    }
    Err(io(Errno::INVAL))
}

/// `(device, inode)`: what identifies a file across an open.
pub fn identity(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Opens the regular file `(dev, ino)` that was at `rel` below `root` (a scan saw it, a restore
/// made it): `None` when the name now holds something else (replaced, turned into a symlink,
/// FIFO or directory since).
pub fn open_known_file(
    root: &File,
    rel: &str,
    flags: OFlags,
    (dev, ino): (u64, u64),
) -> std::io::Result<Option<File>> {
    let file = match open_beneath(root, rel, flags | OFlags::NONBLOCK | OFlags::NOCTTY) {
        Ok(f) => f,
        Err(e) if changed(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&file).map_err(io)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || identity(&st) != (dev, ino) {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Errors that mean "the tree changed under us", not "the volume cannot be read".
fn changed(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV | Errno::ISDIR | Errno::NXIO)
    )
}

/// A scanned tree: its nodes in pre-order (names in byte order), the descriptor of its root
/// for the reads that follow, and what was left out.
pub struct Scan {
    pub root: File,
    pub dev: u64,
    pub nodes: Vec<Node>,
    pub skipped: u64,
    pub warnings: Vec<String>,
}

impl Scan {
    pub fn skip(&mut self, path: &str, why: &str) {
        self.skipped += 1;
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(format!("{path}: {why}"));
        }
    }
}

struct Frame {
    rel: String,
    dir: File,
    names: Vec<Vec<u8>>,
    next: usize,
}

impl Frame {
    fn open(rel: String, dir: File) -> std::io::Result<Self> {
        let mut names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&dir)
            .map_err(io)?
            .filter_map(|e| match e {
                Ok(e) => {
                    let n = e.file_name().to_bytes();
                    (n != b"." && n != b"..").then(|| Ok(n.to_vec()))
                }
                Err(e) => Some(Err(io(e))),
            })
            .collect::<std::io::Result<_>>()?;
        names.sort();
        Ok(Self {
            rel,
            dir,
            names,
            next: 0,
        })
    }
}

/// Walks a volume with directory descriptors, never following a symlink and never leaving its
/// filesystem. Directories, regular files, symlinks and hard links are recorded; FIFOs,
/// sockets, devices, names that are not UTF-8 and entries that change while being looked at
/// are skipped and counted.
pub fn scan_tree(root: &Path) -> Result<Scan, std::io::Error> {
    let dir = open_dir(root)?;
    let st = rustix::fs::fstat(&dir).map_err(io)?;
    let root_node = node(String::new(), &st, NodeKind::Dir, xattrs(&dir));
    let mut scan = Scan {
        root: dir.try_clone()?,
        dev: st.st_dev,
        nodes: vec![root_node],
        skipped: 0,
        warnings: vec![],
    };
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![Frame::open(String::new(), dir)?];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        let deep = stack.len() >= MAX_DEPTH;
        let frame = stack.last().expect("looked at above");
        if let Some(sub) = scan_entry(&mut scan, &mut links, frame, name, deep)? {
            stack.push(sub);
        }
    }
    Ok(scan)
}

/// Records one entry of `frame`'s directory; a directory to descend into comes back as the next
/// frame (`deep`: the scan is as deep as it goes, and records the directory only).
fn scan_entry(
    scan: &mut Scan,
    links: &mut HashMap<(u64, u64), String>,
    frame: &Frame,
    name: Vec<u8>,
    deep: bool,
) -> std::io::Result<Option<Frame>> {
    let join = |n: &str| {
        if frame.rel.is_empty() {
            n.to_string()
        } else {
            format!("{}/{n}", frame.rel)
        }
    };
    let name = match String::from_utf8(name) {
        Ok(n) => n,
        Err(e) => {
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            scan.skip(&join(&shown), "the name is not UTF-8");
            return Ok(None);
        }
    };
    let rel = join(&name);
    if name.len() > NAME_MAX || rel.len() > super::tree::PATH_MAX {
        scan.skip(&rel, "the name is too long");
        return Ok(None);
    }
    let st = match rustix::fs::statat(&frame.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if st.st_dev != scan.dev {
        scan.skip(&rel, "another filesystem is mounted here");
        return Ok(None);
    }
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => return scan_dir(scan, frame, &name, rel, &st, deep),
        FileType::Symlink => scan_symlink(scan, frame, &name, rel, &st)?,
        FileType::RegularFile => scan_file(scan, links, frame, &name, rel, &st)?,
        _ => scan.skip(
            &rel,
            "a FIFO, socket or device node holds no data to recover",
        ),
    }
    Ok(None)
}

/// Records a directory; its frame comes back to descend into unless the scan is `deep`.
fn scan_dir(
    scan: &mut Scan,
    frame: &Frame,
    name: &str,
    rel: String,
    st: &Stat,
    deep: bool,
) -> std::io::Result<Option<Frame>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let Some(sub) = open_same(&frame.dir, name, flags, st)? else {
        scan.skip(&rel, "changed while being read");
        return Ok(None);
    };
    let attrs = xattrs(&sub);
    scan.nodes.push(node(rel.clone(), st, NodeKind::Dir, attrs));
    if deep {
        scan.skip(&rel, "nested too deep; its contents are not in this point");
        return Ok(None);
    }
    Frame::open(rel, sub).map(Some)
}

fn scan_symlink(
    scan: &mut Scan,
    frame: &Frame,
    name: &str,
    rel: String,
    st: &Stat,
) -> std::io::Result<()> {
    let target = match rustix::fs::readlinkat(&frame.dir, name, Vec::new()) {
        Ok(t) => t,
        Err(Errno::NOENT | Errno::INVAL) => {
            scan.skip(&rel, "changed while being read");
            return Ok(());
        }
        Err(e) => return Err(io(e)),
    };
    let Ok(target) = target.into_string() else {
        scan.skip(&rel, "the symlink's target is not UTF-8");
        return Ok(());
    };
    scan.nodes
        .push(node(rel, st, NodeKind::Symlink(target), vec![]));
    Ok(())
}

/// Records a regular file at its size (the data pass reads it), or a hard link to the first
/// path of its inode.
fn scan_file(
    scan: &mut Scan,
    links: &mut HashMap<(u64, u64), String>,
    frame: &Frame,
    name: &str,
    rel: String,
    st: &Stat,
) -> std::io::Result<()> {
    if st.st_nlink > 1
        && let Some(first) = links.get(&identity(st))
    {
        let kind = NodeKind::HardLink(first.clone());
        scan.nodes.push(node(rel, st, kind, vec![]));
        return Ok(());
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let Some(file) = open_same(&frame.dir, name, flags, st)? else {
        scan.skip(&rel, "changed while being read");
        return Ok(());
    };
    if st.st_nlink > 1 {
        links.insert(identity(st), rel.clone());
    }
    let data = FileData {
        size: st.st_size as u64,
        extents: vec![],
    };
    scan.nodes
        .push(node(rel, st, NodeKind::File(data), xattrs(&file)));
    Ok(())
}

/// Opens `name` in `dir` without following it, `None` unless it is still the entry `st` saw.
fn open_same(dir: &File, name: &str, flags: OFlags, st: &Stat) -> std::io::Result<Option<File>> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(f) => File::from(f),
        Err(e) if changed(&io(e)) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let now = rustix::fs::fstat(&file).map_err(io)?;
    if identity(&now) != identity(st) {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Extended attributes of an open file or directory.
fn xattrs(f: &File) -> Vec<(String, Vec<u8>)> {
    use xattr::FileExt;
    let Ok(names) = f.list_xattr() else {
        return vec![];
    };
    names
        .filter_map(|n| {
            let value = f.get_xattr(&n).ok().flatten()?;
            Some((n.into_string().ok()?, value))
        })
        .collect()
}

fn node(path: String, st: &Stat, kind: NodeKind, xattrs: Vec<(String, Vec<u8>)>) -> Node {
    Node {
        path,
        kind,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        // Saturating: a workload can set any time, and a time cannot be allowed to panic.
        mtime_ns: st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec as i64),
        ctime_ns: st
            .st_ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_ctime_nsec as i64),
        inode: st.st_ino,
        xattrs,
    }
}
