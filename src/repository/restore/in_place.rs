//! Restoring a tree volume into a directory that already holds an older copy of it (a failback
//! into the claims a failover retained): a file that is there is reused, and of its extents only
//! those whose bytes differ from the point's (compared by chunk id, the keyed hash of their
//! plaintext) are fetched and written; entries the point does not hold are removed. Confined as
//! every restore is: descriptors below the root, nothing followed, hard-linked files replaced
//! rather than written through.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, FileType, OFlags};
use rustix::io::Errno;

use super::INCOMPLETE_MARKER;
use super::writer::TreeWriter;
use crate::repository::crypto::Keys;
use crate::repository::format::FileData;
use crate::repository::{RepoError, confined};

/// How much of an existing file is read at once to compare it.
const COMPARE_BUFFER: usize = 1 << 20;

/// An existing file written in place, and the inode it must still be when the data pass
/// reopens it.
pub(super) struct Reused {
    pub(super) file: std::fs::File,
    pub(super) identity: (u64, u64),
}

/// Which extents of a reused file are already the point's, and the bytes zeroed to make a hole.
pub(super) struct Compared {
    pub(super) kept: Vec<bool>,
    pub(super) zeroed: u64,
}

impl TreeWriter<'_> {
    /// The regular file at `rel` to write in place, at `size`, with its identity; `None` when
    /// there is none to reuse (nothing there, another kind of entry, or a file with other
    /// names: writing it would change them too).
    pub(super) fn reuse_file(&self, rel: &str, size: u64) -> Result<Option<Reused>, RepoError> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.error(rel, e.into())),
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                    || st.st_nlink != 1 =>
            {
                return Ok(None);
            }
            Ok(_) => {}
        }
        let file = confined::open_beneath(&self.root, rel, OFlags::RDWR | OFlags::NONBLOCK)
            .map_err(|e| self.error(rel, e))?;
        let st = rustix::fs::fstat(&file).map_err(|e| self.error(rel, e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
            return Ok(None);
        }
        file.set_len(size).map_err(|e| self.error(rel, e))?;
        Ok(Some(Reused {
            identity: confined::identity(&st),
            file,
        }))
    }

    /// Removes every entry below the root that `keep` (the point's paths) does not name; a
    /// directory that is not kept goes with everything in it. The number of entries removed.
    pub(super) fn remove_stale(&self, keep: &HashSet<&str>) -> Result<u64, RepoError> {
        let mut removed = 0;
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = confined::open_beneath(&self.root, &rel, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| self.error(&rel, e))?;
            for (name, is_dir) in entries(&dir).map_err(|e| self.error(&rel, e))? {
                let path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if keep.contains(path.as_str()) || path == INCOMPLETE_MARKER {
                    if is_dir {
                        stack.push(path);
                    }
                    continue;
                }
                removed += self.remove_all(&dir, &path, &name, is_dir)?;
            }
        }
        Ok(removed)
    }

    /// Removes `name` of `dir` (at `rel`), a directory with its contents.
    fn remove_all(
        &self,
        dir: &std::fs::File,
        rel: &str,
        name: &str,
        is_dir: bool,
    ) -> Result<u64, RepoError> {
        if !is_dir {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| self.error(rel, e.into()))?;
            return Ok(1);
        }
        let sub = confined::open_beneath(&self.root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.error(rel, e))?;
        let mut removed = 0;
        for (child, child_dir) in entries(&sub).map_err(|e| self.error(rel, e))? {
            removed += self.remove_all(&sub, &format!("{rel}/{child}"), &child, child_dir)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| self.error(rel, e.into()))?;
        Ok(removed + 1)
    }
}

/// The names in a directory (`.` and `..` left out) and whether each is a directory, by
/// `lstat`: a symlink is an entry like a file, never followed. A name that is not UTF-8 cannot
/// be in a point and is removed like any other stale entry.
fn entries(dir: &std::fs::File) -> std::io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let reader = rustix::fs::Dir::read_from(dir)?;
    for entry in reader {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Ok(name) = String::from_utf8(bytes.to_vec()) else {
            // Removed by its bytes: a point's paths are UTF-8, so such a name is stale (a
            // directory of that name must be empty to go; else the restore fails, naming it).
            let raw = entry.file_name();
            rustix::fs::unlinkat(dir, raw, AtFlags::empty())
                .or_else(|_| rustix::fs::unlinkat(dir, raw, AtFlags::REMOVEDIR))?;
            continue;
        };
        let st = match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push((
            name,
            FileType::from_raw_mode(st.st_mode) == FileType::Directory,
        ));
    }
    Ok(out)
}

/// Which extents of `data` the reused `file` already holds (a chunk whose bytes hash to its id,
/// a hole that reads as zeros); a hole that does not is zeroed here. The bytes zeroed.
pub(super) fn unchanged(
    file: &std::fs::File,
    data: &FileData,
    keys: &Keys,
) -> std::io::Result<Compared> {
    let mut flags = Vec::with_capacity(data.extents.len());
    let mut zeroed = 0;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for e in &data.extents {
        let len = e.length as usize;
        buf.resize(len, 0);
        let got = read_full(file, &mut buf, offset)?;
        let same = match e.chunk {
            Some(id) => got == len && keys.chunk_id(&buf) == id,
            None => buf[..got].iter().all(|b| *b == 0),
        };
        if e.chunk.is_none() && !same {
            let zeros = vec![0u8; len.min(COMPARE_BUFFER)];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len());
                file.write_all_at(&zeros[..n], offset + at as u64)?;
                at += n;
            }
            zeroed += len as u64;
        }
        flags.push(same || e.chunk.is_none());
        offset += e.length as u64;
    }
    Ok(Compared {
        kept: flags,
        zeroed,
    })
}

/// Reads up to `buf.len()` bytes at `offset` (fewer at the end of the file).
fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
