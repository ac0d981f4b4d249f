//! Restoring a point: into a directory (a tree volume) or a file (a raw image). Packs are
//! fetched in parallel, every chunk is authenticated on opening (AES-GCM bound to its id), and
//! holes are skipped so sparse files stay sparse. Fail closed: a directory restore carries a
//! marker file until the last byte and attribute are in place, a raw image is written beside
//! its target and renamed at the end; an interrupted restore never looks finished.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::format::{self, ChunkId, FileData, Manifest, NodeKind, VolumeContent};
use super::snapshot::{Progress, ProgressFn};
use super::{ChunkLocation, RepoError, Repository, pack_name};
use crate::storage::layout;

/// Present in a restore target until the restore completed.
pub const INCOMPLETE_MARKER: &str = ".site-recovery-restore-incomplete";

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Which volume of a multi-volume point.
    pub volume: Option<String>,
    /// Flush the restored data to disk before reporting success.
    pub sync: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
    pub packs_read: u64,
}

/// One chunk to place: where in which file.
struct Placement {
    file: u32,
    offset: u64,
    id: ChunkId,
    at: ChunkLocation,
}

pub async fn restore(
    repo: &Repository,
    point: &str,
    target: &Path,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    let manifest = repo.manifest(point).await?;
    let volume = pick_volume(&manifest, options.volume.as_deref())?;
    match &volume.content {
        VolumeContent::Raw(data) => {
            let partial = PathBuf::from(format!("{}.partial", target.display()));
            let files = vec![(partial.clone(), data.clone())];
            let stats = restore_data(repo, &manifest, files, progress).await?;
            if options.sync {
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| RepoError::io(&partial, e))?;
            }
            std::fs::rename(&partial, target).map_err(|e| RepoError::io(target, e))?;
            Ok(stats)
        }
        VolumeContent::Tree(nodes) => {
            std::fs::create_dir_all(target).map_err(|e| RepoError::io(target, e))?;
            let marker = target.join(INCOMPLETE_MARKER);
            std::fs::write(&marker, manifest.id.as_bytes())
                .map_err(|e| RepoError::io(&marker, e))?;
            // Directories and empty files first, then data, then links and metadata.
            let mut files = Vec::new();
            for n in nodes {
                let path = target.join(&n.path);
                match &n.kind {
                    NodeKind::Dir => {
                        std::fs::create_dir_all(&path).map_err(|e| RepoError::io(&path, e))?
                    }
                    NodeKind::File(data) => files.push((path, data.clone())),
                    _ => {}
                }
            }
            let stats = restore_data(repo, &manifest, files, progress).await?;
            for n in nodes {
                let path = target.join(&n.path);
                match &n.kind {
                    NodeKind::Symlink(to) => {
                        let _ = std::fs::remove_file(&path);
                        std::os::unix::fs::symlink(to, &path)
                            .map_err(|e| RepoError::io(&path, e))?;
                    }
                    NodeKind::HardLink(first) => {
                        let _ = std::fs::remove_file(&path);
                        std::fs::hard_link(target.join(first), &path)
                            .map_err(|e| RepoError::io(&path, e))?;
                    }
                    _ => {}
                }
            }
            let root = unsafe { libc::geteuid() } == 0;
            // Attributes deepest first, so that setting a directory's mtime comes after its content.
            for n in nodes.iter().rev() {
                let path = target.join(&n.path);
                let is_link = matches!(n.kind, NodeKind::Symlink(_));
                if matches!(n.kind, NodeKind::HardLink(_)) {
                    continue;
                }
                if root {
                    std::os::unix::fs::lchown(&path, Some(n.uid), Some(n.gid))
                        .map_err(|e| RepoError::io(&path, e))?;
                }
                if !is_link {
                    for (name, value) in &n.xattrs {
                        let _ = xattr::set(&path, name, value);
                    }
                    std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(n.mode & 0o7777),
                    )
                    .map_err(|e| RepoError::io(&path, e))?;
                }
                let mtime = filetime::FileTime::from_unix_time(
                    n.mtime_ns.div_euclid(1_000_000_000),
                    n.mtime_ns.rem_euclid(1_000_000_000) as u32,
                );
                filetime::set_symlink_file_times(&path, mtime, mtime)
                    .map_err(|e| RepoError::io(&path, e))?;
            }
            if options.sync {
                let dir = std::fs::File::open(target).map_err(|e| RepoError::io(target, e))?;
                if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
                    return Err(RepoError::io(target, std::io::Error::last_os_error()));
                }
            }
            std::fs::remove_file(&marker).map_err(|e| RepoError::io(&marker, e))?;
            Ok(stats)
        }
    }
}

pub fn pick_volume<'a>(
    m: &'a Manifest,
    wanted: Option<&str>,
) -> Result<&'a format::VolumeManifest, RepoError> {
    match wanted {
        Some(name) => m.volumes.iter().find(|v| v.name == name).ok_or_else(|| {
            let names: Vec<_> = m.volumes.iter().map(|v| v.name.as_str()).collect();
            RepoError::Invalid(format!(
                "point {} has no volume {name:?} (it has {names:?})",
                m.id
            ))
        }),
        None if m.volumes.len() == 1 => Ok(&m.volumes[0]),
        None => Err(RepoError::Invalid(format!(
            "point {} has {} volumes; name one with --volume",
            m.id,
            m.volumes.len()
        ))),
    }
}

/// Creates each file at its size (holes stay holes) and fills its chunks, pack by pack.
async fn restore_data(
    repo: &Repository,
    manifest: &Manifest,
    files: Vec<(PathBuf, FileData)>,
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    let mut by_pack: HashMap<u32, Vec<Placement>> = HashMap::new();
    let mut total = 0u64;
    for (i, (path, data)) in files.iter().enumerate() {
        let f = std::fs::File::create(path).map_err(|e| RepoError::io(path, e))?;
        f.set_len(data.size).map_err(|e| RepoError::io(path, e))?;
        let mut offset = 0u64;
        for e in &data.extents {
            if let Some(id) = e.chunk {
                let at = *repo.chunks.get(&id).ok_or_else(|| RepoError::Corrupt {
                    object: format!(
                        "{}/{}",
                        repo.location.name(),
                        layout::point(repo.location.prefix(), &manifest.id)
                    ),
                    reason: format!(
                        "chunk {} of {} is in no index or pack",
                        hex::encode(id),
                        path.display()
                    ),
                })?;
                by_pack.entry(at.pack).or_default().push(Placement {
                    file: i as u32,
                    offset,
                    id,
                    at,
                });
                total += e.length as u64;
            }
            offset += e.length as u64;
        }
    }
    let packs: Vec<(ChunkId, Vec<Placement>)> = by_pack
        .into_iter()
        .map(|(p, v)| (repo.packs[p as usize], v))
        .collect();
    let handle = tokio::runtime::Handle::current();
    let location = repo.location.clone();
    let keys = repo.keys.clone();
    let files = Arc::new(files);
    let stats = RestoreStats {
        files: files.len() as u64,
        bytes: total,
        packs_read: packs.len() as u64,
    };
    tokio::task::spawn_blocking(move || {
        let done = std::sync::atomic::AtomicU64::new(0);
        packs.par_iter().try_for_each_init(
            format::ChunkScratch::default,
            |scratch, (pack, placements)| {
                let key = layout::pack(location.prefix(), &pack_name(pack));
                let name = format!("{}/{}", location.name(), key);
                let bytes = handle.block_on(location.get(&key))?;
                let mut open: HashMap<u32, std::fs::File> = HashMap::new();
                for p in placements {
                    let start = p.at.offset as usize;
                    let end = start + p.at.length as usize;
                    let sealed = bytes.get(start..end).ok_or_else(|| RepoError::Corrupt {
                        object: name.clone(),
                        reason: format!("chunk {} lies outside the pack", hex::encode(p.id)),
                    })?;
                    let data =
                        format::open_chunk_into(&keys, &p.id, p.at.raw_length, sealed, scratch)
                            .map_err(|e| RepoError::Corrupt {
                                object: name.clone(),
                                reason: format!("chunk {}: {e}", hex::encode(p.id)),
                            })?;
                    let path = &files[p.file as usize].0;
                    let file = match open.entry(p.file) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => v.insert(
                            std::fs::OpenOptions::new()
                                .write(true)
                                .open(path)
                                .map_err(|e| RepoError::io(path, e))?,
                        ),
                    };
                    file.write_all_at(data, p.offset)
                        .map_err(|e| RepoError::io(path, e))?;
                    let now = done
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed)
                        + data.len() as u64;
                    if let Some(f) = &progress {
                        f(Progress {
                            bytes_done: now,
                            bytes_total: total,
                        });
                    }
                }
                Ok::<_, RepoError>(())
            },
        )
    })
    .await
    .map_err(|e| RepoError::Invalid(format!("restore task panicked: {e}")))??;
    Ok(stats)
}
