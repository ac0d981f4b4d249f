//! Large writes to a filesystem location that bypass the page cache (`O_DIRECT`).
//!
//! A pack is written once, fsynced, and read again only by a replication or a restore. Copying
//! it into the page cache first cost more system time than hashing, compressing and encrypting
//! it (`perf` of a 4 GiB snapshot: a quarter of all samples in `copy_folio_from_iter_atomic`;
//! more on a virtual machine, where fresh page-cache pages fault in the host's memory), and the
//! cached copy evicts pages worth keeping. Direct writes go from a small aligned buffer to the
//! device instead.
//!
//! Staging and publishing are object_store's `LocalFileSystem`'s, so that both write the same
//! way side by side: the object is written to `{path}#{n}` (which its listings skip), fsynced,
//! then renamed over the destination (replace) or hard-linked to it (create only), and the
//! directory is fsynced. A filesystem that refuses `O_DIRECT` (tmpfs on older kernels, some
//! FUSE mounts) is reported as [`Outcome::Unsupported`] before anything is written, and the
//! caller writes through the page cache instead.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Objects (and restored files) smaller than this go through the page cache: the bounce
/// buffer, the extra syscalls and the device's latency would cost more than the copy they save.
pub const MIN: usize = 1 << 20;
/// Memory and file-offset alignment of every direct write: a multiple of every logical block
/// size in use (512 and 4096).
pub const ALIGN: usize = 4096;
/// How much one direct write carries (the bounce buffer's size).
pub const BLOCK: usize = 1 << 20;

/// Whether `e` is the kernel's refusal of direct I/O: on open, by a filesystem without it; on
/// a write, by a device that wants a coarser alignment than [`ALIGN`].
pub fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Mode {
    /// Replace whatever is at the destination.
    Replace,
    /// Fail with [`Outcome::Exists`] if the destination exists.
    Create,
}

#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    Written,
    /// Create only, and the destination exists; nothing was changed.
    Exists,
    /// This filesystem does not take direct writes; nothing was written.
    Unsupported,
}

/// A zeroed heap buffer of a fixed size whose first byte sits on an [`ALIGN`] boundary, as
/// `O_DIRECT` wants of the memory it transfers.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Writes `data` durably at `dest` without the page cache (see the module's docs).
pub(super) fn put(dest: &Path, data: &[u8], mode: Mode) -> io::Result<Outcome> {
    let Some((file, staging)) = stage(dest)? else {
        return Ok(Outcome::Unsupported);
    };
    let written = match write_all(&file, data) {
        // Opened, but the device wants a coarser alignment than ALIGN.
        Err(e) if refused(&e) => Ok(Outcome::Unsupported),
        Err(e) => Err(e),
        Ok(()) => file.sync_all().and_then(|()| {
            drop(file);
            publish(&staging, dest, mode)
        }),
    };
    if !matches!(written, Ok(Outcome::Written)) {
        let _ = std::fs::remove_file(&staging);
    }
    written
}

/// Creates a fresh staging file next to `dest`, opened for direct writes; `None` if the
/// filesystem refuses them.
fn stage(dest: &Path) -> io::Result<Option<(File, PathBuf)>> {
    let mut n = 1u32;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => return Ok(Some((f, path))),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => create_parents(&path)?,
            // Refused flags; a failed create_new with O_DIRECT leaves no file behind.
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `data` from offset 0 in aligned blocks; the last block is padded with zeros and the
/// file cut back to `data.len()`.
fn write_all(file: &File, data: &[u8]) -> io::Result<()> {
    let mut bounce = AlignedBuf::new(BLOCK);
    let buf = bounce.as_mut_slice();
    for (i, piece) in data.chunks(BLOCK).enumerate() {
        buf[..piece.len()].copy_from_slice(piece);
        let padded = piece.len().next_multiple_of(ALIGN);
        buf[piece.len()..padded].fill(0);
        file.write_all_at(&buf[..padded], (i * BLOCK) as u64)?;
    }
    if !data.len().is_multiple_of(ALIGN) {
        file.set_len(data.len() as u64)?;
    }
    Ok(())
}

fn publish(staging: &Path, dest: &Path, mode: Mode) -> io::Result<Outcome> {
    match mode {
        Mode::Replace => std::fs::rename(staging, dest)?,
        Mode::Create => match std::fs::hard_link(staging, dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(staging);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Outcome::Exists),
            Err(e) => return Err(e),
        },
    }
    sync_dir(dest.parent().unwrap_or(Path::new("/")))?;
    Ok(Outcome::Written)
}

/// Creates the missing directories above `path`, fsyncing each whose entries changed.
fn create_parents(path: &Path) -> io::Result<()> {
    let parent = path.parent().ok_or(ErrorKind::NotFound)?;
    let mut existing = parent;
    while !existing.exists() {
        existing = existing.parent().ok_or(ErrorKind::NotFound)?;
    }
    std::fs::create_dir_all(parent)?;
    let mut dir = parent;
    loop {
        sync_dir(dir)?;
        if dir == existing {
            return Ok(());
        }
        dir = dir.parent().ok_or(ErrorKind::NotFound)?;
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_bytes_of_any_length_and_publishes_only_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 5 * ALIGN + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let dest = dir.path().join(format!("a/b/{len}"));
            match put(&dest, &data, Mode::Create).unwrap() {
                Outcome::Written => assert_eq!(std::fs::read(&dest).unwrap(), data, "{len}"),
                // A filesystem without direct writes (the caller falls back): nothing left.
                Outcome::Unsupported => assert!(!dest.exists()),
                Outcome::Exists => panic!("{len}: fresh destination reported as existing"),
            }
        }
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains('#')),
            "staging files left behind: {names:?}"
        );
    }

    #[test]
    fn create_refuses_an_existing_object_and_replace_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pack");
        std::fs::write(&dest, b"old").unwrap();
        let new = vec![7u8; BLOCK + 3];
        let created = put(&dest, &new, Mode::Create).unwrap();
        if created == Outcome::Unsupported {
            return;
        }
        assert_eq!(created, Outcome::Exists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(put(&dest, &new, Mode::Replace).unwrap(), Outcome::Written);
        assert_eq!(std::fs::read(&dest).unwrap(), new);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
