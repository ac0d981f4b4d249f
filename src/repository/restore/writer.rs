//! The tree writer of a restore: entries made below one directory descriptor, never through a
//! path, with their attributes set on descriptors.

use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::RestoreStats;
use crate::repository::format::{Node, NodeKind};
use crate::repository::{RepoError, confined, tree};

/// Writes a tree below one directory descriptor: every entry is made in its parent's descriptor
/// (opened beneath the root without following symlinks), nothing already at a name is followed,
/// and attributes are set on descriptors (or with `AT_SYMLINK_NOFOLLOW` for symlinks).
pub(super) struct TreeWriter<'a> {
    pub(super) root: Arc<std::fs::File>,
    pub(super) target: &'a Path,
    /// Ownership is restored only by root.
    pub(super) as_root: bool,
}

/// A file the data pass fills.
pub(super) enum Restored {
    /// Kept open (a raw image or a block device: one file).
    Open {
        file: std::fs::File,
        path: std::path::PathBuf,
    },
    /// Created by the tree pass: reopened below the root, and refused unless it is still the
    /// inode the restore created.
    Beneath {
        root: Arc<std::fs::File>,
        rel: String,
        identity: (u64, u64),
    },
}

impl Restored {
    pub(super) fn open(&self) -> std::io::Result<std::fs::File> {
        match self {
            Restored::Open { file, .. } => file.try_clone(),
            Restored::Beneath {
                root,
                rel,
                identity,
            } => reopen(root, rel, *identity, OFlags::WRONLY),
        }
    }

    /// Opened for writes that bypass the page cache (`O_DIRECT`); `None` for a kept-open file
    /// (raw images and devices are written through the page cache).
    pub(super) fn open_direct(&self) -> std::io::Result<Option<std::fs::File>> {
        match self {
            Restored::Open { .. } => Ok(None),
            Restored::Beneath {
                root,
                rel,
                identity,
            } => reopen(root, rel, *identity, OFlags::WRONLY | OFlags::DIRECT).map(Some),
        }
    }

    /// Its path, for messages (`target`: the directory a tree is restored into). Made only when
    /// needed: a tree of many files keeps one relative name per file, not two paths.
    pub(super) fn path(&self, target: &std::path::Path) -> std::path::PathBuf {
        match self {
            Restored::Open { path, .. } => path.clone(),
            Restored::Beneath { rel, .. } => target.join(rel),
        }
    }
}

/// A file the tree pass created, opened again with `flags` below the root; refused unless it
/// is still the inode the restore created.
fn reopen(
    root: &std::fs::File,
    rel: &str,
    identity: (u64, u64),
    flags: OFlags,
) -> std::io::Result<std::fs::File> {
    confined::open_known_file(root, rel, flags, identity)?
        .ok_or_else(|| std::io::Error::other("replaced while the restore was writing it"))
}

/// Extended attributes a restore sets: the user namespace and POSIX ACLs. `security.*` (file
/// capabilities, SELinux labels) and `trusted.*` would let a manifest grant privileges, as
/// setuid bits would.
fn restorable_xattr(name: &str) -> bool {
    name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

impl TreeWriter<'_> {
    pub(super) fn error(&self, rel: &str, e: std::io::Error) -> RepoError {
        RepoError::io(&self.target.join(rel), e)
    }

    pub(super) fn parent(&self, rel: &str) -> Result<(std::fs::File, String), RepoError> {
        let (parent, name) = tree::split_parent(rel);
        let dir = confined::open_beneath(&self.root, parent, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.error(parent, e))?;
        Ok((dir, name.to_string()))
    }

    /// Removes what is at `name` unless it is a directory (which is kept, or refused).
    pub(super) fn clear(
        &self,
        dir: &std::fs::File,
        rel: &str,
        name: &str,
        want_dir: bool,
    ) -> Result<bool, RepoError> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.error(rel, e.into())),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if want_dir {
                    Ok(true)
                } else {
                    Err(self.error(
                        rel,
                        std::io::Error::other("the restore target already has a directory here"),
                    ))
                }
            }
            Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map(|()| false)
                .map_err(|e| self.error(rel, e.into())),
        }
    }

    pub(super) fn make_dir(&self, rel: &str) -> Result<(), RepoError> {
        let (dir, name) = self.parent(rel)?;
        if !self.clear(&dir, rel, &name, true)? {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700))
                .map_err(|e| self.error(rel, e.into()))?;
        }
        Ok(())
    }

    /// A new, empty regular file at `rel` (whatever was there removed, never followed).
    pub(super) fn replace_file(&self, rel: &str) -> Result<std::fs::File, RepoError> {
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, rel, &name, false)?;
        rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map(std::fs::File::from)
        .map_err(|e| self.error(rel, e.into()))
    }

    pub(super) fn make_symlink(&self, rel: &str, to: &str) -> Result<(), RepoError> {
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, rel, &name, false)?;
        rustix::fs::symlinkat(to, &dir, name.as_str()).map_err(|e| self.error(rel, e.into()))
    }

    /// Another name for a file restored earlier (the manifest check made sure `first` is one);
    /// `linkat` without `AT_SYMLINK_FOLLOW` never follows a symlink at `first`.
    pub(super) fn make_hard_link(&self, rel: &str, first: &str) -> Result<(), RepoError> {
        let (dir, name) = self.parent(rel)?;
        let (first_dir, first_name) = self.parent(first)?;
        self.clear(&dir, rel, &name, false)?;
        rustix::fs::linkat(
            &first_dir,
            first_name.as_str(),
            &dir,
            name.as_str(),
            AtFlags::empty(),
        )
        .map_err(|e| self.error(rel, e.into()))
    }

    pub(super) fn set_attributes(
        &self,
        n: &Node,
        stats: &mut RestoreStats,
    ) -> Result<(), RepoError> {
        let as_root = self.as_root;
        let owner = (
            Some(rustix::fs::Uid::from_raw(n.uid)),
            Some(rustix::fs::Gid::from_raw(n.gid)),
        );
        let time = rustix::fs::Timespec {
            tv_sec: n.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: n.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        let times = rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        };
        let fail = |e: Errno| self.error(&n.path, e.into());
        let mode = match &n.kind {
            NodeKind::HardLink(_) => return Ok(()),
            NodeKind::Symlink(_) => {
                let (dir, name) = self.parent(&n.path)?;
                if as_root {
                    rustix::fs::chownat(
                        &dir,
                        name.as_str(),
                        owner.0,
                        owner.1,
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(fail)?;
                }
                return rustix::fs::utimensat(
                    &dir,
                    name.as_str(),
                    &times,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(fail);
            }
            // setgid on a directory only passes its group on; setuid means nothing there.
            NodeKind::Dir => n.mode & 0o3777,
            // setuid and setgid are never restored on files: see the README.
            NodeKind::File(_) => {
                if n.mode & 0o6000 != 0 {
                    stats.setid_cleared += 1;
                }
                n.mode & 0o1777
            }
        };
        let flags = match n.kind {
            NodeKind::Dir => OFlags::RDONLY | OFlags::DIRECTORY,
            _ => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        };
        let f = confined::open_beneath(&self.root, &n.path, flags)
            .map_err(|e| self.error(&n.path, e))?;
        if as_root {
            rustix::fs::fchown(&f, owner.0, owner.1).map_err(fail)?;
        }
        for (name, value) in &n.xattrs {
            if restorable_xattr(name) {
                use xattr::FileExt;
                // A filesystem without user xattrs loses them, as a copy would.
                let _ = f.set_xattr(name, value);
            } else {
                stats.xattrs_skipped += 1;
            }
        }
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(fail)?;
        rustix::fs::futimens(&f, &times).map_err(fail)
    }
}
