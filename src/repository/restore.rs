//! Restoring a point: into a directory (a tree volume) or a file (a raw image). Packs are
//! fetched in parallel, every chunk is authenticated on opening (AES-GCM bound to its id), and
//! holes are skipped so sparse files stay sparse. A tree is confined to its target: the
//! manifest was checked on decoding (`super::tree`), and every entry is made relative to a
//! directory descriptor without following symlinks, so no manifest and nothing already in the
//! target can make a restore write outside it. Fail closed: a directory restore carries a
//! marker file until the last byte and attribute are in place, a raw image is written beside
//! its target and renamed at the end; an interrupted restore never looks finished.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::format::{self, ChunkId, FileData, Manifest, Node, NodeKind, VolumeContent};
use super::snapshot::{Progress, ProgressFn};
use super::{ChunkLocation, RepoError, Repository, confined, pack_name};
use crate::storage::layout;

/// Present in a restore target until the restore completed.
pub const INCOMPLETE_MARKER: &str = ".site-recovery-restore-incomplete";

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Which volume of a multi-volume point.
    pub volume: Option<String>,
    /// Flush the restored data to disk before reporting success.
    pub sync: bool,
    /// The target holds an older copy of the volume: reuse its files, write only the extents
    /// that differ, remove what the point does not hold (see `in_place`).
    pub in_place: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
    pub packs_read: u64,
    /// Files whose setuid or setgid bit was not restored.
    pub setid_cleared: u64,
    /// Extended attributes outside `user.*` and POSIX ACLs, not restored.
    pub xattrs_skipped: u64,
    /// Bytes written into files (less than `bytes` in place: extents already there are not).
    pub bytes_written: u64,
    /// In place: entries of the target the point does not hold, removed.
    pub removed: u64,
}

/// One chunk to place: where in which file.
struct Placement {
    file: u32,
    offset: u64,
    id: ChunkId,
    at: ChunkLocation,
}

/// A pack, and the chunks to place from it.
type PackPlacements = (ChunkId, Vec<Placement>);

pub async fn restore(
    repo: &Repository,
    point: &str,
    target: &Path,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    let manifest = repo.manifest(point).await?;
    let volume = pick_volume(&manifest, options.volume.as_deref())?;
    let target_kind = std::fs::metadata(target).ok().map(|m| m.file_type());
    let is_device = target_kind.is_some_and(|t| t.is_block_device());
    match &volume.content {
        VolumeContent::Raw(data) if is_device => {
            restore_device(repo, &manifest, data, target, options, progress).await
        }
        VolumeContent::Raw(_) if target_kind.is_some_and(|t| t.is_dir()) => {
            Err(RepoError::Invalid(format!(
                "volume {} of point {point} is a raw image (a block volume); {} is a directory: restore it into a block device or a file",
                volume.name,
                target.display()
            )))
        }
        VolumeContent::Tree(_) if is_device => Err(RepoError::Invalid(format!(
            "volume {} of point {point} is a filesystem tree; {} is a block device: restore it into a directory (a claim with volumeMode Filesystem)",
            volume.name,
            target.display()
        ))),
        VolumeContent::Raw(data) => {
            let partial = PathBuf::from(format!("{}.partial", target.display()));
            // A fresh file: never one planted at the name, never through a symlink.
            let _ = std::fs::remove_file(&partial);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&partial)
                .map_err(|e| RepoError::io(&partial, e))?;
            file.set_len(data.size)
                .map_err(|e| RepoError::io(&partial, e))?;
            let stats = restore_data(
                repo,
                &manifest,
                target,
                Files::new(
                    vec![Restored::Open {
                        file,
                        path: partial.clone(),
                    }],
                    false,
                ),
                &[data],
                &[None],
                progress,
            )
            .await?;
            if options.sync {
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| RepoError::io(&partial, e))?;
            }
            std::fs::rename(&partial, target).map_err(|e| RepoError::io(target, e))?;
            Ok(stats)
        }
        VolumeContent::Tree(nodes) => {
            restore_tree(repo, &manifest, nodes, target, options, progress).await
        }
    }
}

/// A raw image into the block device `target` (a block claim): written in place, as a device
/// cannot be renamed into. Every block is compared first, so that only those that differ are
/// fetched and written, and a range the image leaves unallocated is zeroed where the device
/// does not already read zeros: the device ends up holding the image whatever it held before
/// (a fresh claim, or the original a failback returns to). The device must be at least as large
/// as the image; what lies beyond it is left as it is.
async fn restore_device(
    repo: &Repository,
    manifest: &Manifest,
    data: &FileData,
    target: &Path,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    use std::io::Seek;
    // A name that leads to the device (a kubelet's publish link, /dev/disk/by-id) is resolved
    // once; what is opened is then checked to be a block device.
    let real = target
        .canonicalize()
        .map_err(|e| RepoError::io(target, e))?;
    let mut device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&real)
        .map_err(|e| RepoError::io(target, e))?;
    // What was opened, not what the name pointed at before.
    let st = rustix::fs::fstat(&device).map_err(|e| RepoError::io(target, e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
        return Err(RepoError::Invalid(format!(
            "{} is no longer a block device",
            target.display()
        )));
    }
    let size = device
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| RepoError::io(target, e))?;
    if size < data.size {
        return Err(RepoError::Invalid(format!(
            "block device {} holds {size} bytes; the image of point {} needs {}: the claim must be at least as large as the source",
            target.display(),
            manifest.id,
            data.size
        )));
    }
    let compared = {
        let (device, data, keys) = (
            device.try_clone().map_err(|e| RepoError::io(target, e))?,
            data.clone(),
            repo.keys.clone(),
        );
        tokio::task::spawn_blocking(move || in_place::unchanged(&device, &data, &keys))
            .await
            .map_err(|e| RepoError::Invalid(format!("device comparison panicked: {e}")))?
            .map_err(|e| RepoError::io(target, e))?
    };
    let mut stats = restore_data(
        repo,
        manifest,
        target,
        Files::new(
            vec![Restored::Open {
                file: device.try_clone().map_err(|e| RepoError::io(target, e))?,
                path: target.to_path_buf(),
            }],
            false,
        ),
        &[data],
        &[Some(compared.kept)],
        progress,
    )
    .await?;
    stats.bytes_written += compared.zeroed;
    if options.sync {
        device.sync_all().map_err(|e| RepoError::io(target, e))?;
    }
    Ok(stats)
}

/// A tree volume into the directory `target`: entries, then data, then attributes, the
/// incomplete marker removed last.
async fn restore_tree(
    repo: &Repository,
    manifest: &Manifest,
    nodes: &[Node],
    target: &Path,
    options: &RestoreOptions,
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    std::fs::create_dir_all(target).map_err(|e| RepoError::io(target, e))?;
    let root = Arc::new(confined::open_dir(target).map_err(|e| RepoError::io(target, e))?);
    let tree = TreeWriter {
        root: root.clone(),
        target,
        as_root: rustix::process::geteuid().is_root(),
    };
    tree.replace_file(INCOMPLETE_MARKER)?
        .write_all(manifest.id.as_bytes())
        .map_err(|e| tree.error(INCOMPLETE_MARKER, e))?;
    // Every entry first (directories, files at their size, links), then the data, then
    // ownership, modes, attributes and times, deepest first.
    let count = nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::File(_)))
        .count();
    let mut files = Vec::with_capacity(count);
    let mut contents: Vec<&FileData> = Vec::with_capacity(count);
    // In place: the files reused, by their index in `files`.
    let mut reused = Vec::new();
    let mut removed = 0;
    if options.in_place {
        let keep: std::collections::HashSet<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
        removed = tree.remove_stale(&keep)?;
    }
    for n in &nodes[1..] {
        match &n.kind {
            NodeKind::Dir => tree.make_dir(&n.path)?,
            NodeKind::File(data) => {
                let existing = if options.in_place {
                    tree.reuse_file(&n.path, data.size)?
                } else {
                    None
                };
                // Closed again at once (a volume can hold more files than a process
                // may keep open); the data pass reopens it beneath the root and checks
                // it is still this inode.
                let identity = match existing {
                    Some(r) => {
                        reused.push((files.len(), r.file));
                        r.identity
                    }
                    None => {
                        let f = tree.replace_file(&n.path)?;
                        f.set_len(data.size).map_err(|e| tree.error(&n.path, e))?;
                        let st =
                            rustix::fs::fstat(&f).map_err(|e| tree.error(&n.path, e.into()))?;
                        confined::identity(&st)
                    }
                };
                let file = Restored::Beneath {
                    root: root.clone(),
                    rel: n.path.clone(),
                    identity,
                };
                files.push(file);
                contents.push(data);
            }
            NodeKind::Symlink(to) => tree.make_symlink(&n.path, to)?,
            NodeKind::HardLink(first) => tree.make_hard_link(&n.path, first)?,
        }
    }
    // What the reused files already hold, compared on every core.
    let compared: Vec<_> = reused
        .into_par_iter()
        .map(|(i, f)| (i, in_place::unchanged(&f, contents[i], &repo.keys)))
        .collect();
    let mut keep: Vec<Option<Vec<bool>>> = vec![None; files.len()];
    let mut zeroed = 0;
    for (i, result) in compared {
        let c = result.map_err(|e| RepoError::io(&files[i].path(target), e))?;
        keep[i] = Some(c.kept);
        zeroed += c.zeroed;
    }
    // A restore that must be durable waits for the device anyway: its large files skip the
    // page cache (`output`). Without `sync`, write-back lets the restore end before the disk
    // has its data, which costs the copy and returns sooner.
    let files = Files::new(files, options.sync);
    let mut stats = restore_data(repo, manifest, target, files, &contents, &keep, progress).await?;
    stats.bytes_written += zeroed;
    stats.removed = removed;
    for n in nodes.iter().rev() {
        tree.set_attributes(n, &mut stats)?;
    }
    if options.sync {
        rustix::fs::syncfs(&tree.root).map_err(|e| RepoError::io(target, e.into()))?;
    }
    rustix::fs::unlinkat(&tree.root, INCOMPLETE_MARKER, rustix::fs::AtFlags::empty())
        .map_err(|e| tree.error(INCOMPLETE_MARKER, e.into()))?;
    Ok(stats)
}

mod in_place;
mod output;
mod writer;
use output::{Files, Output};
use writer::{Restored, TreeWriter};

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

/// Fills files already created at their size (holes stay holes), pack by pack; a file is open
/// only while a pack writes it.
/// `kept[i]`: which extents of file `i` are already in place (written in place).
async fn restore_data(
    repo: &Repository,
    manifest: &Manifest,
    target: &Path,
    mut files: Files,
    contents: &[&FileData],
    kept: &[Option<Vec<bool>>],
    progress: Option<ProgressFn>,
) -> Result<RestoreStats, RepoError> {
    files.large = contents.iter().map(|c| c.size >= output::LARGE).collect();
    let bytes = contents
        .iter()
        .flat_map(|c| &c.extents)
        .filter(|e| e.chunk.is_some())
        .map(|e| e.length as u64)
        .sum();
    let (packs, total) = placements_by_pack(repo, manifest, target, &files.files, contents, kept)?;
    let stats = RestoreStats {
        files: files.files.len() as u64,
        bytes,
        bytes_written: total,
        packs_read: packs.len() as u64,
        ..Default::default()
    };
    let writer = PackWriter {
        handle: tokio::runtime::Handle::current(),
        location: repo.location.clone(),
        keys: repo.keys.clone(),
        target: target.to_path_buf(),
        files,
        done: std::sync::atomic::AtomicU64::new(0),
        total,
        progress,
    };
    tokio::task::spawn_blocking(move || writer.write_all(&packs))
        .await
        .map_err(|e| RepoError::Invalid(format!("restore task panicked: {e}")))??;
    Ok(stats)
}

/// How many packs are announced to storage ahead of the writers (`Location::prefetch`), shared
/// among them: a cold restore waits on reads, and this keeps reads in flight without holding
/// more packs in memory (the kernel reads them into its page cache). 8 packs, up to 64 MiB.
const PREFETCH_PACKS: usize = 8;

/// Where every stored chunk of `contents` goes (the files in the order of `files`), grouped by
/// the pack that holds it, and the bytes they add up to. Holes place nothing.
fn placements_by_pack(
    repo: &Repository,
    manifest: &Manifest,
    target: &Path,
    files: &[Restored],
    contents: &[&FileData],
    kept: &[Option<Vec<bool>>],
) -> Result<(Vec<PackPlacements>, u64), RepoError> {
    let mut by_pack: HashMap<u32, Vec<Placement>> = HashMap::new();
    let mut total = 0u64;
    for (i, (file, data)) in files.iter().zip(contents).enumerate() {
        let mut offset = 0u64;
        let kept = kept.get(i).and_then(Option::as_ref);
        for (n, e) in data.extents.iter().enumerate() {
            if kept.is_some_and(|k| k.get(n) == Some(&true)) {
                offset += e.length as u64;
                continue;
            }
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
                        file.path(target).display()
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
    // In the order the packs were indexed, about the order they were written: neighbours on
    // disk, and the files they fill, close together.
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_unstable_by_key(|(p, _)| *p);
    let packs = packs
        .into_iter()
        .map(|(p, v)| (repo.packs[p as usize], v))
        .collect();
    Ok((packs, total))
}

/// What a writer thread reuses from pack to pack: the pack read, a chunk's plaintext, and the
/// run of a large file on its way past the page cache (`output`).
#[derive(Default)]
struct Scratch {
    pack: Vec<u8>,
    chunk: format::ChunkScratch,
    run: Option<crate::storage::location::AlignedBuf>,
}

/// Writes packs' chunks into the files being restored, from the blocking pool's threads.
struct PackWriter {
    handle: tokio::runtime::Handle,
    location: crate::storage::Location,
    keys: super::crypto::Keys,
    /// Where a tree is restored (for messages).
    target: PathBuf,
    files: Files,
    /// Bytes written so far, by every thread.
    done: std::sync::atomic::AtomicU64,
    total: u64,
    progress: Option<ProgressFn>,
}

impl PackWriter {
    /// Writes every pack from as many threads as the pool has (`RAYON_NUM_THREADS` sets it);
    /// stops at the first error. Each writer takes its own stretch of the packs, in order, so
    /// that the packs announced ahead are the next it reads and two writers rarely fill the
    /// same file at once (a file's writes are serialised by its inode lock, and writers waiting
    /// on it spin); a writer done with its stretch helps with the one with the most left.
    fn write_all(&self, packs: &[PackPlacements]) -> Result<(), RepoError> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let writers = rayon::current_num_threads().clamp(1, packs.len().max(1));
        let ahead = (PREFETCH_PACKS / writers).max(1);
        // Stretch w: packs[w * len / writers ..], its next pack in `next[w]`.
        let bound = |w: usize| w * packs.len() / writers;
        let next: Vec<AtomicUsize> = (0..writers).map(|w| AtomicUsize::new(bound(w))).collect();
        let failed = AtomicBool::new(false);
        for w in 0..writers {
            for (pack, _) in &packs[bound(w)..bound(w + 1).min(bound(w) + ahead)] {
                self.prefetch(pack);
            }
        }
        let take = |w: usize| {
            let i = next[w].fetch_add(1, Ordering::Relaxed);
            (i < bound(w + 1)).then_some(i)
        };
        let left = |w: usize| bound(w + 1).saturating_sub(next[w].load(Ordering::Relaxed));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..writers)
                .map(|own| {
                    let (take, left, failed) = (&take, &left, &failed);
                    s.spawn(move || {
                        let mut scratch = Scratch::default();
                        let mut w = own;
                        while !failed.load(Ordering::Relaxed) {
                            let Some(i) = take(w) else {
                                // Help the stretch with the most packs left, if any.
                                match (0..writers).max_by_key(|&v| left(v)) {
                                    Some(v) if left(v) > 0 => {
                                        w = v;
                                        continue;
                                    }
                                    _ => break,
                                }
                            };
                            // Every pack is taken once, so each is announced once.
                            if i + ahead < bound(w + 1) {
                                self.prefetch(&packs[i + ahead].0);
                            }
                            let (pack, placements) = &packs[i];
                            if let Err(e) = self.write_pack(&mut scratch, pack, placements) {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| RepoError::Invalid("a restore writer panicked".into()))?
            })
        })
    }

    fn prefetch(&self, pack: &ChunkId) {
        let key = layout::pack(self.location.prefix(), &pack_name(pack));
        self.handle.block_on(self.location.prefetch(&key));
    }

    /// Fetches `pack` and writes its `placements`, authenticating each chunk; one file open at
    /// a time, the pack's chunks in file order.
    fn write_pack(
        &self,
        scratch: &mut Scratch,
        pack: &ChunkId,
        placements: &[Placement],
    ) -> Result<(), RepoError> {
        let key = layout::pack(self.location.prefix(), &pack_name(pack));
        let name = format!("{}/{}", self.location.name(), key);
        self.location.read_once_blocking(
            &self.handle,
            &key,
            format::limits::PACK,
            &mut scratch.pack,
        )?;
        let bytes = &scratch.pack;
        let mut placements: Vec<&Placement> = placements.iter().collect();
        placements.sort_by_key(|p| (p.file, p.offset));
        let mut out = Output::new(&self.files, &mut scratch.run);
        let failed = |(i, e): (u32, std::io::Error)| {
            RepoError::io(&self.files.files[i as usize].path(&self.target), e)
        };
        for p in placements {
            let start = p.at.offset as usize;
            let end = start + p.at.length as usize;
            let sealed = bytes.get(start..end).ok_or_else(|| RepoError::Corrupt {
                object: name.clone(),
                reason: format!("chunk {} lies outside the pack", hex::encode(p.id)),
            })?;
            let data = format::open_chunk_into(
                &self.keys,
                &p.id,
                p.at.raw_length,
                sealed,
                &mut scratch.chunk,
            )
            .map_err(|e| RepoError::Corrupt {
                object: name.clone(),
                reason: format!("chunk {}: {e}", hex::encode(p.id)),
            })?;
            out.write(p.file, p.offset, data).map_err(failed)?;
            self.written(data.len() as u64);
        }
        out.finish().map_err(failed)
    }

    fn written(&self, bytes: u64) {
        let now = self
            .done
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        if let Some(f) = &self.progress {
            f(Progress {
                bytes_done: now,
                bytes_total: self.total,
            });
        }
    }
}
