//! Moving points from one location to another (cache → target): only the packs holding chunks
//! the destination lacks are copied, an index for them is written, and the manifest goes last
//! with a conditional create. Idempotent and resumable: packs already at the destination are
//! skipped, and a point already there is left alone.

use std::collections::HashSet;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::format::{self, ChunkId};
use super::lock::Lock;
use super::{RepoError, Repository, pack_name};
use crate::storage::{Location, StorageError, layout};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicateStats {
    pub points_copied: u64,
    pub points_present: u64,
    pub packs_copied: u64,
    pub bytes_copied: u64,
}

/// Up to this many points are copied without listing the destination's points first.
const FEW_POINTS: usize = 16;

/// Copies `points` (ids) from `source` to `dest`. `dest` must hold the same repository (or be
/// initialised as its replica first, see [`Repository::init_replica`]).
pub async fn replicate(
    source: &Repository,
    dest: &mut Repository,
    points: &[String],
) -> Result<ReplicateStats, RepoError> {
    if source.config.id != dest.config.id {
        return Err(RepoError::Foreign {
            location: dest.location.name().into(),
            reason: format!(
                "it holds repository {}, not {}",
                dest.config.id, source.config.id
            ),
        });
    }
    let lock = Lock::acquire(&dest.location, "replicate", false).await?;
    let result = replicate_locked(source, dest, points, &lock).await;
    let released = lock.release().await;
    let stats = result?;
    released?;
    Ok(stats)
}

async fn replicate_locked(
    source: &Repository,
    dest: &mut Repository,
    points: &[String],
    lock: &Lock,
) -> Result<ReplicateStats, RepoError> {
    dest.refresh_index().await?;
    // A few points (one workload's newest) are not worth listing every point of the location
    // for: one already there needs no pack (its chunks are in the index) and its manifest is
    // written only if absent.
    let present: HashSet<String> = if points.len() > FEW_POINTS {
        dest.point_ids().await?.into_iter().collect()
    } else {
        HashSet::new()
    };
    let mut stats = ReplicateStats::default();
    for id in points {
        if present.contains(id) {
            stats.points_present += 1;
            continue;
        }
        let manifest = source.manifest(id).await?;
        let needed = packs_needed(source, dest, &manifest, id)?;
        let copied: Vec<CopiedPack> = futures::stream::iter(needed)
            .map(|pack| copy_pack(source, &dest.location, pack))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        if !copied.is_empty() {
            let packs: Vec<_> = copied.iter().map(|(p, e, _)| (*p, e.clone())).collect();
            let key = dest.write_index(packs.clone()).await?;
            for (p, e) in &packs {
                dest.add_pack(p, e);
            }
            dest.wrote_index(key);
        }
        stats.packs_copied += copied.len() as u64;
        stats.bytes_copied += copied.iter().map(|(_, _, s)| s).sum::<u64>();
        lock.ensure_held()?;
        let key = layout::point(dest.location.prefix(), id);
        match dest
            .location
            .put_new(
                &key,
                Bytes::from(format::encode_manifest(&dest.keys, &manifest)),
            )
            .await
        {
            Ok(()) => stats.points_copied += 1,
            Err(StorageError::AlreadyExists { .. }) => stats.points_present += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stats)
}

/// The packs of `source` that hold the chunks of `manifest` (point `id`) that `dest` lacks,
/// each once.
fn packs_needed(
    source: &Repository,
    dest: &Repository,
    manifest: &format::Manifest,
    id: &str,
) -> Result<Vec<ChunkId>, RepoError> {
    let mut needed: Vec<ChunkId> = Vec::new();
    let mut seen = HashSet::new();
    for chunk in manifest.chunks() {
        if dest.chunks.contains_key(chunk) {
            continue;
        }
        let at = source.chunks.get(chunk).ok_or_else(|| RepoError::Corrupt {
            object: format!(
                "{}/{}",
                source.location.name(),
                layout::point(source.location.prefix(), id)
            ),
            reason: format!(
                "chunk {} is in no index or pack of the source",
                hex::encode(chunk)
            ),
        })?;
        let pack = source.packs[at.pack as usize];
        if seen.insert(pack) {
            needed.push(pack);
        }
    }
    Ok(needed)
}

/// A pack copied: its id, its entries (for the destination's index) and its size.
type CopiedPack = (ChunkId, Vec<format::PackEntry>, u64);

/// Copies one pack of `source` to `dest_location` once it authenticated; a pack already there
/// is left as it is.
async fn copy_pack(
    source: &Repository,
    dest_location: &Location,
    pack: ChunkId,
) -> Result<CopiedPack, RepoError> {
    let key = layout::pack(source.location.prefix(), &pack_name(&pack));
    let bytes = source.location.get_max(&key, format::limits::PACK).await?;
    // Never copy what does not authenticate: the header must open with our key.
    let entries = format::read_pack_header(
        &source.keys,
        &format!("{}/{}", source.location.name(), key),
        &bytes,
    )?;
    if blake3::hash(&bytes).as_bytes() != &pack {
        return Err(RepoError::Corrupt {
            object: format!("{}/{}", source.location.name(), key),
            reason: "pack content does not match its name".into(),
        });
    }
    let size = bytes.len() as u64;
    let dest_key = layout::pack(dest_location.prefix(), &pack_name(&pack));
    match dest_location.put_new(&dest_key, bytes).await {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok((pack, entries, size))
}
