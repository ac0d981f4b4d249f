//! Taking a recovery point: a streaming pipeline with bounded memory.
//!
//! ```text
//! reader thread ──batches (≤ 2 × 4 MiB)──▶ hash ∥ → dedup → compress+seal ∥ → packer ──packs (handed over, 2 uploading)──▶ uploader
//! ```
//!
//! Files whose size, mtime, ctime and inode match the parent point are not read again. The
//! uploader writes an index file after every few packs; the manifest is written last, with a
//! conditional create, so a point exists only once every byte it references is durable. A
//! writer killed at any instant leaves packs no manifest references; the next run adopts them
//! (their headers say what they hold) instead of uploading them again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use bytes::Bytes;
use rayon::prelude::*;

use super::chunker::{self, is_zero};
use super::crypto::Keys;
use super::format::{
    self, ChunkId, Consistency, Extent, FileData, Manifest, Node, NodeKind, PackEntry, Stats,
    VolumeContent, VolumeManifest,
};
use super::lock::Lock;
use super::{ChunkLocation, RepoError, Repository, confined};
use crate::storage::{Location, layout};
use rustix::fs::OFlags;

/// Pack size the packer aims for.
pub const PACK_TARGET: usize = 8 << 20;
/// Bytes the reader hands over at a time.
const BATCH_TARGET: usize = 4 << 20;
/// Packs per index file.
const PACKS_PER_INDEX: usize = 16;

/// What to capture for one volume.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory tree (a mounted volume).
    Tree(PathBuf),
    /// A file or block device, stored as one raw image.
    Raw(PathBuf),
}

#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    pub workload: String,
    pub consistency: Consistency,
    pub source_zone: Option<String>,
    /// Take the parent from the newest point of the same workload (metadata-based reuse).
    pub use_parent: bool,
    /// Write a part of a multi-node point instead of a point (see [`super::parts`]).
    pub part: Option<super::parts::PartOf>,
    /// The point the parent probably is (the workload's newest, as its status says).
    pub parent_hint: Option<String>,
}

/// Bytes done of the total, reported as the snapshot proceeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A read that returns nothing for this long fails the point (a stalled network filesystem, a
/// device that stopped answering) instead of holding it forever.
pub const READ_STALL: Duration = Duration::from_secs(120);

/// A file whose content must be read.
struct Work {
    /// For messages; a raw image is opened by it.
    path: PathBuf,
    size: u64,
    /// Where a tree's file is: below the tree's root descriptor, and what it must still be.
    at: Option<TreeFile>,
}

struct TreeFile {
    root: Arc<std::fs::File>,
    rel: String,
    dev: u64,
    ino: u64,
}

struct Piece {
    work: u32,
    data: Bytes,
}

type Batch = Result<Vec<Piece>, RepoError>;

pub async fn snapshot(
    repo: &mut Repository,
    volumes: Vec<(String, Source)>,
    options: &SnapshotOptions,
    progress: Option<ProgressFn>,
) -> Result<Manifest, RepoError> {
    if let Some(part) = &options.part
        && let Some(done) = repo.part(&part.point, &part.name).await?
    {
        // Already written by an earlier run that was interrupted before it could report.
        return Ok(done);
    }
    let lock = Lock::acquire(&repo.location, "snapshot", false).await?;
    let result = snapshot_locked(repo, volumes, options, progress, &lock).await;
    let released = lock.release().await;
    let manifest = result?;
    released?;
    Ok(manifest)
}

async fn snapshot_locked(
    repo: &mut Repository,
    volumes: Vec<(String, Source)>,
    options: &SnapshotOptions,
    progress: Option<ProgressFn>,
    lock: &Lock,
) -> Result<Manifest, RepoError> {
    let time = jiff::Timestamp::now();
    // Packs indexed since the index was read (another writer) are added; a handle opened
    // just now reads nothing again.
    repo.refresh_index().await?;
    let parent = if options.use_parent {
        parent_of(repo, &options.workload, options.parent_hint.as_deref()).await?
    } else {
        None
    };

    // Scan every volume; decide per file whether its content must be read.
    let chunking = repo.config.chunking.clone();
    let parent_nodes: HashMap<(String, String), FileData> = parent
        .iter()
        .flat_map(|m| m.volumes.iter())
        .flat_map(|v| match &v.content {
            VolumeContent::Tree(nodes) => nodes
                .iter()
                .filter_map(|n| match &n.kind {
                    NodeKind::File(f) => Some(((v.name.clone(), reuse_key(n)), f.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            VolumeContent::Raw(_) => vec![],
        })
        .collect();
    let known = &repo.chunks;
    let parent_usable = |f: &FileData| {
        f.extents
            .iter()
            .all(|e| e.chunk.is_none_or(|c| known.contains_key(&c)))
    };

    let mut work: Vec<Work> = Vec::new();
    // (volume, node index) of each work item; usize::MAX node = raw image.
    let mut work_targets: Vec<(usize, usize)> = Vec::new();
    let mut manifests: Vec<VolumeManifest> = Vec::new();
    let mut stats = Stats::default();
    for (v, (name, source)) in volumes.iter().enumerate() {
        match source {
            Source::Raw(path) => {
                let size = raw_size(path)?;
                stats.files += 1;
                stats.bytes += size;
                work.push(Work {
                    path: path.clone(),
                    size,
                    at: None,
                });
                work_targets.push((v, usize::MAX));
                manifests.push(VolumeManifest {
                    name: name.clone(),
                    content: VolumeContent::Raw(FileData::default()),
                });
            }
            Source::Tree(root) => {
                let scan = confined::scan_tree(root).map_err(|e| RepoError::io(root, e))?;
                stats.note_skipped(
                    scan.skipped,
                    scan.warnings.iter().map(|w| format!("{name}: {w}")),
                );
                let tree_root = Arc::new(scan.root);
                let mut nodes = scan.nodes;
                for (i, node) in nodes.iter_mut().enumerate() {
                    let key = (name.clone(), reuse_key(node));
                    if let NodeKind::File(data) = &mut node.kind {
                        stats.files += 1;
                        stats.bytes += data.size;
                        match parent_nodes.get(&key) {
                            Some(previous)
                                if previous.size == data.size && parent_usable(previous) =>
                            {
                                *data = previous.clone()
                            }
                            _ => {
                                work.push(Work {
                                    path: root.join(&node.path),
                                    size: data.size,
                                    at: Some(TreeFile {
                                        root: tree_root.clone(),
                                        rel: node.path.clone(),
                                        dev: scan.dev,
                                        ino: node.inode,
                                    }),
                                });
                                work_targets.push((v, i));
                            }
                        }
                    }
                }
                manifests.push(VolumeManifest {
                    name: name.clone(),
                    content: VolumeContent::Tree(nodes),
                });
            }
        }
    }
    let total: u64 = work.iter().map(|w| w.size).sum();
    stats.bytes_read = total;

    // The data pipeline, on blocking threads, with the index moved in and back out.
    let known = std::mem::take(&mut repo.chunks);
    let handle = tokio::runtime::Handle::current();
    let location = repo.location.clone();
    let keys = repo.keys.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let out = run_pipeline(
            &handle, &location, &keys, &chunking, &known, work, progress, total,
        );
        (known, out)
    })
    .await
    .map_err(|e| RepoError::Invalid(format!("snapshot pipeline panicked: {e}")))?;
    let (known, result) = outcome;
    repo.chunks = known;
    let mut result = result?;
    // The index grows by the new chunks at once, without rehashing through doublings, and the
    // pipeline's copy of the entries is released as they are added.
    repo.chunks.reserve(result.new_chunks as usize);
    for (pack, entries) in result.packs.drain(..) {
        repo.add_pack(&pack, &entries);
    }
    for key in result.index_files.drain(..) {
        repo.wrote_index(key);
    }
    stats.new_chunks = result.new_chunks;
    stats.stored_bytes_added = result.stored_bytes;

    // Files that changed between the scan and their read are left out of the point.
    let mut gone: HashMap<usize, HashSet<usize>> = HashMap::new();
    for &w in &result.changed {
        let (v, i) = work_targets[w];
        gone.entry(v).or_default().insert(i);
    }
    // Put each file's extents in its node.
    for ((v, i), extents) in work_targets.into_iter().zip(result.extents) {
        let data = FileData {
            size: extents.iter().map(|e| e.length as u64).sum(),
            extents,
        };
        match (&mut manifests[v].content, i) {
            (VolumeContent::Raw(f), usize::MAX) => *f = data,
            (VolumeContent::Tree(nodes), i) => nodes[i].kind = NodeKind::File(data),
            _ => unreachable!("raw images have no nodes"),
        }
    }
    for (v, indices) in gone {
        let VolumeManifest { name, content } = &mut manifests[v];
        if let VolumeContent::Tree(nodes) = content {
            drop_changed(nodes, &indices, name, &mut stats);
        }
    }

    let (id, time) = match &options.part {
        Some(part) => (part.point.clone(), part.time),
        None => (super::new_point_id(time), time),
    };
    let manifest = Manifest {
        id,
        time: time.to_string(),
        workload: options.workload.clone(),
        consistency: options.consistency,
        source_zone: options.source_zone.clone(),
        parent: parent.map(|p| p.id),
        volumes: manifests,
        stats,
        // Agents write parts and points without an origin: the operator gives it at assembly.
        origin: None,
    };
    // A garbage collection may have judged a lock that could not be refreshed stale.
    lock.ensure_held()?;
    if let Some(part) = &options.part {
        return repo.write_part(&part.name, &manifest).await;
    }
    let key = layout::point(repo.location.prefix(), &manifest.id);
    repo.location
        .put_new(
            &key,
            Bytes::from(format::encode_manifest(&repo.keys, &manifest)),
        )
        .await?;
    Ok(manifest)
}

/// The newest point of `workload`, if any.
/// The parent of a new point of `workload`: the point `hint` names when it is there and of
/// that workload (one manifest read, however many other workloads share the repository), else
/// the newest point of the workload.
async fn parent_of(
    repo: &Repository,
    workload: &str,
    hint: Option<&str>,
) -> Result<Option<Manifest>, RepoError> {
    let named = hint.filter(|id| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
    });
    if let Some(id) = named {
        match repo.manifest(id).await {
            Ok(m) if m.workload == workload => return Ok(Some(m)),
            Ok(_) | Err(RepoError::PointNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    latest_of(repo, workload).await
}

pub async fn latest_of(repo: &Repository, workload: &str) -> Result<Option<Manifest>, RepoError> {
    for id in repo.point_ids().await?.iter().rev() {
        let m = repo.manifest(id).await?;
        if m.workload == workload {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Removes the files that changed between scan and read (and the hard links to them), saying so
/// in the point's warnings.
fn drop_changed(nodes: &mut Vec<Node>, indices: &HashSet<usize>, volume: &str, stats: &mut Stats) {
    let removed: HashSet<String> = indices.iter().map(|&i| nodes[i].path.clone()).collect();
    let mut i = 0;
    nodes.retain(|n| {
        let keep = !indices.contains(&i)
            && !matches!(&n.kind, NodeKind::HardLink(first) if removed.contains(first));
        i += 1;
        if !keep {
            stats.note_skipped(
                1,
                [format!("{volume}: {}: changed while being read", n.path)],
            );
        }
        keep
    });
}

/// Files are matched with the parent point by path and the metadata that changes with content.
fn reuse_key(n: &Node) -> String {
    format!("{}\0{}\0{}\0{}", n.path, n.mtime_ns, n.ctime_ns, n.inode)
}

fn raw_size(path: &Path) -> Result<u64, RepoError> {
    use std::io::Seek;
    open_raw(path)?
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| RepoError::io(path, e))
}

/// Opens a raw image: a regular file or a block device, never a pipe or a character device,
/// whose open or reads could block or never end.
fn open_raw(path: &Path) -> Result<std::fs::File, RepoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| RepoError::io(path, e))?;
    let st = rustix::fs::fstat(&file).map_err(|e| RepoError::io(path, e.into()))?;
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile | rustix::fs::FileType::BlockDevice => Ok(file),
        other => Err(RepoError::Io {
            path: path.display().to_string(),
            message: format!(
                "a raw image must be a regular file or a block device, not a {other:?}"
            ),
        }),
    }
}

struct PipelineResult {
    extents: Vec<Vec<Extent>>,
    /// Work items whose file was no longer the one scanned.
    changed: Vec<usize>,
    packs: Vec<(ChunkId, Vec<PackEntry>)>,
    /// The index files written for `packs`.
    index_files: Vec<String>,
    new_chunks: u64,
    stored_bytes: u64,
}

#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    handle: &tokio::runtime::Handle,
    location: &Location,
    keys: &Keys,
    chunking: &format::Chunking,
    known: &HashMap<ChunkId, ChunkLocation>,
    work: Vec<Work>,
    progress: Option<ProgressFn>,
    total: u64,
) -> Result<PipelineResult, RepoError> {
    let n = work.len();
    let (batch_tx, batch_rx) = sync_channel::<Batch>(1);
    let (pack_tx, pack_rx) = sync_channel::<(ChunkId, Vec<u8>, Vec<PackEntry>)>(0);
    let reading = Arc::new(Reading::default());
    // Not scoped: a read stuck in the kernel must not hold the point; the thread is left to end
    // by itself (its next send fails) when the read returns.
    let reader = {
        let chunking = chunking.clone();
        let reading = reading.clone();
        std::thread::spawn(move || read_all(work, &chunking, batch_tx, &reading))
    };
    std::thread::scope(|scope| {
        let uploader = scope.spawn(|| upload_all(handle, location, keys, pack_rx));

        let mut extents: Vec<Vec<Extent>> = vec![Vec::new(); n];
        let mut pending: HashSet<ChunkId> = HashSet::new();
        let mut packer = Packer::default();
        let mut new_chunks = 0u64;
        let mut done = 0u64;
        let mut failure = None;
        let mut stalled = false;
        loop {
            let batch = match batch_rx.recv_timeout(READ_STALL) {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let path = reading.path.lock().map(|p| p.clone()).unwrap_or_default();
                    failure = Some(RepoError::Io {
                        path: path.display().to_string(),
                        message: format!(
                            "no data could be read for {} s (a stalled filesystem or device?); the point is given up",
                            READ_STALL.as_secs()
                        ),
                    });
                    stalled = true;
                    break;
                }
            };
            let ids: Vec<Option<ChunkId>> = batch
                .par_iter()
                .map(|p| (!is_zero(&p.data)).then(|| keys.chunk_id(&p.data)))
                .collect();
            let mut fresh = Vec::new();
            for (i, piece) in batch.iter().enumerate() {
                extents[piece.work as usize].push(Extent {
                    chunk: ids[i],
                    length: piece.data.len() as u32,
                });
                if let Some(id) = ids[i]
                    && !known.contains_key(&id)
                    && pending.insert(id)
                {
                    fresh.push(i);
                }
                done += piece.data.len() as u64;
            }
            let sealed: Vec<(ChunkId, Vec<u8>, u32)> = fresh
                .par_iter()
                .map_init(
                    || None,
                    |compressor, &i| {
                        let id = ids[i].expect("fresh chunks have ids");
                        let data = &batch[i].data;
                        (
                            id,
                            format::seal_chunk(keys, &id, data, compressor),
                            data.len() as u32,
                        )
                    },
                )
                .collect();
            new_chunks += sealed.len() as u64;
            for (id, blob, raw) in sealed {
                packer.add(id, blob, raw);
                if packer.body.len() >= PACK_TARGET && pack_tx.send(packer.finish(keys)).is_err() {
                    break;
                }
            }
            if let Some(p) = &progress {
                p(Progress {
                    bytes_done: done,
                    bytes_total: total,
                });
            }
        }
        if failure.is_none() && !packer.entries.is_empty() {
            let _ = pack_tx.send(packer.finish(keys));
        }
        drop(pack_tx);
        drop(batch_rx);
        let read_result = if stalled {
            Ok(())
        } else {
            reader
                .join()
                .unwrap_or_else(|_| Err(RepoError::Invalid("the volume reader panicked".into())))
        };
        let upload_result = uploader
            .join()
            .unwrap_or_else(|_| Err(RepoError::Invalid("the pack uploader panicked".into())));
        if let Some(e) = failure {
            return Err(e);
        }
        read_result?;
        let (packs, stored_bytes, index_files) = upload_result?;
        let changed =
            std::mem::take(&mut *reading.changed.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(PipelineResult {
            changed,
            extents,
            packs,
            index_files,
            new_chunks,
            stored_bytes,
        })
    })
}

/// What the reader is doing, for the watchdog and for the files it had to leave out.
#[derive(Default)]
struct Reading {
    path: Mutex<PathBuf>,
    changed: Mutex<Vec<usize>>,
}

/// Opens a work item: a tree's file below its root descriptor, checked to be the file the scan
/// saw (`None` when it is not any more), or a raw image by its path.
fn open_work(w: &Work) -> Result<Option<std::fs::File>, RepoError> {
    match &w.at {
        Some(t) => confined::open_known_file(&t.root, &t.rel, OFlags::RDONLY, (t.dev, t.ino))
            .map_err(|e| RepoError::io(&w.path, e)),
        None => open_raw(&w.path).map(Some),
    }
}

/// Reads every work item in order, never more than its scanned size, and hands over batches of
/// pieces.
fn read_all(
    work: Vec<Work>,
    chunking: &format::Chunking,
    tx: SyncSender<Batch>,
    reading: &Reading,
) -> Result<(), RepoError> {
    use std::io::Read;
    let mut batch: Vec<Piece> = Vec::new();
    let mut batch_bytes = 0usize;
    let block = chunking.block_size as usize;
    let buffer = (BATCH_TARGET / block).max(1) * block;
    for (i, w) in work.iter().enumerate() {
        if let Ok(mut p) = reading.path.lock() {
            p.clone_from(&w.path);
        }
        let push =
            |pieces: Vec<(u64, Bytes)>, batch: &mut Vec<Piece>, batch_bytes: &mut usize| -> bool {
                for (_, data) in pieces {
                    *batch_bytes += data.len();
                    batch.push(Piece {
                        work: i as u32,
                        data,
                    });
                }
                if *batch_bytes >= BATCH_TARGET {
                    *batch_bytes = 0;
                    return tx.send(Ok(std::mem::take(batch))).is_ok();
                }
                true
            };
        let result: Result<(), RepoError> = (|| {
            let Some(file) = open_work(w)? else {
                if let Ok(mut c) = reading.changed.lock() {
                    c.push(i);
                }
                return Ok(());
            };
            let mut file = file.take(w.size);
            if w.at.is_none() || w.size >= chunking.block_threshold {
                let mut offset = 0u64;
                loop {
                    let pieces = chunker::read_blocks(&mut file, offset, buffer, block)
                        .map_err(|e| RepoError::io(&w.path, e))?;
                    if pieces.is_empty() {
                        break;
                    }
                    let read: u64 = pieces.iter().map(|(_, d)| d.len() as u64).sum();
                    offset += read;
                    if !push(pieces, &mut batch, &mut batch_bytes) {
                        return Ok(());
                    }
                    if read < buffer as u64 {
                        break;
                    }
                }
            } else {
                let mut data = Vec::with_capacity(w.size as usize);
                file.read_to_end(&mut data)
                    .map_err(|e| RepoError::io(&w.path, e))?;
                let pieces = chunker::cut_by_content(Bytes::from(data), chunking);
                push(pieces, &mut batch, &mut batch_bytes);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.send(Err(e));
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch));
    }
    Ok(())
}

#[derive(Default)]
struct Packer {
    body: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Packer {
    fn add(&mut self, id: ChunkId, blob: Vec<u8>, raw_length: u32) {
        self.entries.push(PackEntry {
            id,
            offset: self.body.len() as u32,
            length: blob.len() as u32,
            raw_length,
        });
        self.body.extend_from_slice(&blob);
    }

    fn finish(&mut self, keys: &Keys) -> (ChunkId, Vec<u8>, Vec<PackEntry>) {
        let entries = std::mem::take(&mut self.entries);
        let body = std::mem::replace(&mut self.body, Vec::with_capacity(PACK_TARGET + (1 << 20)));
        let pack = format::finish_pack(keys, body, &entries);
        (*blake3::hash(&pack).as_bytes(), pack, entries)
    }
}

/// The packs uploaded, their bytes, and the index files written for them.
type Uploaded = (Vec<(ChunkId, Vec<PackEntry>)>, u64, Vec<String>);
type UploadTask = tokio::task::JoinHandle<Result<(ChunkId, Vec<PackEntry>, u64), RepoError>>;

/// Uploads packs (two in flight) and writes an index file every few packs and at the end.
fn upload_all(
    handle: &tokio::runtime::Handle,
    location: &Location,
    keys: &Keys,
    rx: Receiver<(ChunkId, Vec<u8>, Vec<PackEntry>)>,
) -> Result<Uploaded, RepoError> {
    let mut all = Vec::new();
    let mut index_files = Vec::new();
    let mut unindexed = Vec::new();
    let mut stored = 0u64;
    let mut in_flight: std::collections::VecDeque<UploadTask> = Default::default();
    let mut first_error = None;
    let mut settle = |h: UploadTask,
                      unindexed: &mut Vec<(ChunkId, Vec<PackEntry>)>,
                      first_error: &mut Option<RepoError>| {
        match handle.block_on(h) {
            Ok(Ok((id, entries, size))) => {
                stored += size;
                unindexed.push((id, entries));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(RepoError::Invalid(format!("upload task failed: {e}")));
            }
        }
    };
    for (id, pack, entries) in rx.iter() {
        if first_error.is_some() {
            continue;
        }
        let loc = location.clone();
        in_flight.push_back(handle.spawn(async move {
            let size = pack.len() as u64;
            let key = layout::pack(loc.prefix(), &super::pack_name(&id));
            loc.put(&key, Bytes::from(pack)).await?;
            Ok((id, entries, size))
        }));
        if in_flight.len() >= 2 {
            settle(
                in_flight.pop_front().expect("non-empty"),
                &mut unindexed,
                &mut first_error,
            );
        }
        if unindexed.len() >= PACKS_PER_INDEX && first_error.is_none() {
            let batch = std::mem::take(&mut unindexed);
            index_files.push(handle.block_on(super::write_index(location, keys, batch.clone()))?);
            all.extend(batch);
        }
    }
    while let Some(h) = in_flight.pop_front() {
        settle(h, &mut unindexed, &mut first_error);
    }
    // Even after a failure, index what did arrive: the next run reuses it.
    if !unindexed.is_empty() {
        index_files.push(handle.block_on(super::write_index(location, keys, unindexed.clone()))?);
        all.extend(unindexed);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((all, stored, index_files)),
    }
}
