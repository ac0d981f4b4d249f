//! The recovery-point repository: content-defined and block-aligned chunking, keyed-BLAKE3 chunk
//! ids, zstd compression, AES-256-GCM sealing, packs with self-describing headers, index files,
//! and one manifest per point written last. The format is described in
//! docs/repository-format.md. This module never imports the controllers.

pub mod chunker;
pub mod confined;
pub mod crypto;
pub mod fence;
pub mod format;
pub mod index;
pub mod lock;
pub mod origin;
pub mod parts;
pub mod prune;
pub mod replicate;
pub mod restore;
pub mod snapshot;
pub mod tree;
pub mod verify;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::storage::{Location, StorageError, layout};
use crypto::Keys;
use format::{ChunkId, Config, IndexFile, Manifest, PackEntry};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{location}: no repository here (no config); run `site-recovery repo init` first")]
    NotARepository { location: String },
    #[error("{location}: refusing a foreign repository: {reason}")]
    Foreign { location: String, reason: String },
    #[error(
        "{location}: repository format version {found} is not supported (this build reads version {supported}); upgrade site-recovery"
    )]
    UnsupportedVersion {
        location: String,
        found: u64,
        supported: u32,
    },
    #[error("{location}: the key does not open this repository")]
    WrongKey { location: String },
    #[error("{object}: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("point {0} not found")]
    PointNotFound(String),
    #[error("{location}: {reason}")]
    Locked { location: String, reason: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        RepoError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Where a chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// An open repository in one location.
pub struct Repository {
    pub location: Location,
    pub config: Config,
    pub keys: Keys,
    /// Pack ids, indexed by `ChunkLocation::pack`.
    pub packs: Vec<ChunkId>,
    pack_numbers: HashMap<ChunkId, u32>,
    pub chunks: HashMap<ChunkId, ChunkLocation>,
    /// Index files read (keys), to replace them after a prune.
    pub index_files: Vec<String>,
    /// Of the index files listed last, how many are in each tier compaction merges.
    index_tiers: index::Tiers,
    /// Packs no index names whose header could not be read, and why: never deleted.
    pub unreadable_packs: Vec<(ChunkId, String)>,
    /// Packs no index named that the last full load adopted from their headers.
    adopted: usize,
    /// How many times this handle read every index file.
    full_loads: u64,
}

/// Repositories this process opened (each open reads the config and loads the whole index).
static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times this process has called [`Repository::open`]: the cost tests state what a
/// reconcile costs in opens.
pub fn opened() -> u64 {
    OPENED.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn pack_name(id: &ChunkId) -> String {
    hex::encode(id)
}

impl Repository {
    /// Creates a repository, refusing to touch a location that already holds one.
    pub async fn init(location: Location, secret: &[u8]) -> Result<Self, RepoError> {
        check_secret(secret)?;
        let (config, keys) = Config::new(secret);
        let bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        match location
            .put_new(&layout::config(location.prefix()), Bytes::from(bytes))
            .await
        {
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = location
                    .get_max(&layout::config(location.prefix()), format::limits::CONFIG)
                    .await?;
                Config::parse(location.name(), &existing)?;
                return Err(RepoError::Invalid(format!(
                    "{}: a repository already exists here",
                    location.name()
                )));
            }
            other => other?,
        }
        Ok(Self::new(location, config, keys))
    }

    /// Creates `location` as a replica of this repository: same config, so same keys and ids.
    pub async fn init_replica(&self, location: Location) -> Result<(), RepoError> {
        let key = layout::config(location.prefix());
        let bytes = serde_json::to_vec_pretty(&self.config).expect("config serializes");
        match location.put_new(&key, Bytes::from(bytes)).await {
            Ok(()) => Ok(()),
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = Config::parse(
                    location.name(),
                    &location.get_max(&key, format::limits::CONFIG).await?,
                )?;
                if existing.id != self.config.id {
                    return Err(RepoError::Foreign {
                        location: location.name().into(),
                        reason: format!(
                            "it holds repository {}, not {}",
                            existing.id, self.config.id
                        ),
                    });
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a repository: reads its config (refusing foreign or newer ones), unlocks the
    /// master key and loads the index.
    pub async fn open(location: Location, secret: &[u8]) -> Result<Self, RepoError> {
        OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = match location
            .get_max(&layout::config(location.prefix()), format::limits::CONFIG)
            .await
        {
            Ok(bytes) => Config::parse(location.name(), &bytes)?,
            Err(StorageError::NotFound { .. }) => {
                return Err(RepoError::NotARepository {
                    location: location.name().into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let keys = config.unlock(location.name(), secret)?;
        let mut repo = Self::new(location, config, keys);
        repo.load_index().await?;
        Ok(repo)
    }

    /// The same repository without its chunk index: enough to list and read points, cheap to
    /// make, and independent of the original (which may be busy writing).
    pub fn reader(&self) -> Self {
        Self::new(
            self.location.clone(),
            self.config.clone(),
            self.keys.clone(),
        )
    }

    fn new(location: Location, config: Config, keys: Keys) -> Self {
        Self {
            location,
            config,
            keys,
            packs: vec![],
            pack_numbers: HashMap::new(),
            chunks: HashMap::new(),
            index_files: vec![],
            index_tiers: index::Tiers::default(),
            unreadable_packs: vec![],
            adopted: 0,
            full_loads: 0,
        }
    }

    fn pack_number(&mut self, pack: &ChunkId) -> u32 {
        if let Some(n) = self.pack_numbers.get(pack) {
            return *n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(*pack);
        self.pack_numbers.insert(*pack, n);
        n
    }

    pub fn add_pack(&mut self, pack: &ChunkId, entries: &[PackEntry]) {
        let n = self.pack_number(pack);
        for e in entries {
            self.chunks.entry(e.id).or_insert(ChunkLocation {
                pack: n,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
    }

    pub fn has_pack(&self, pack: &ChunkId) -> bool {
        self.pack_numbers.contains_key(pack)
    }

    /// Every pack in storage with its size.
    pub async fn list_packs(&self) -> Result<Vec<(ChunkId, u64)>, RepoError> {
        let listed = self
            .location
            .list(&layout::dir(self.location.prefix(), layout::DATA))
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, size)| {
                let name = key.filename()?;
                let bytes = hex::decode(name).ok()?;
                Some((bytes.try_into().ok()?, size))
            })
            .collect())
    }

    pub async fn read_pack_header(
        &self,
        pack: &ChunkId,
        size: u64,
    ) -> Result<Vec<PackEntry>, RepoError> {
        let key = layout::pack(self.location.prefix(), &pack_name(pack));
        let name = format!("{}/{}", self.location.name(), key);
        if !(8..=format::limits::PACK).contains(&size) {
            return Err(RepoError::Corrupt {
                object: name,
                reason: format!(
                    "a pack of {size} bytes (packs have 8 to {} bytes)",
                    format::limits::PACK
                ),
            });
        }
        let trailer = self.location.get_range(&key, size - 8..size).await?;
        let len = format::pack_header_length(&name, &trailer)? as u64;
        if len + 8 > size {
            return Err(RepoError::Corrupt {
                object: name,
                reason: "pack header length exceeds the pack".into(),
            });
        }
        let tail = self.location.get_range(&key, size - 8 - len..size).await?;
        format::parse_pack_header(&self.keys, &name, &tail, (size - 8 - len) as usize)
    }

    pub async fn write_index(
        &self,
        packs: Vec<(ChunkId, Vec<PackEntry>)>,
    ) -> Result<String, RepoError> {
        write_index(&self.location, &self.keys, packs).await
    }

    /// Ids of the points in this location, oldest first (ids sort by time).
    pub async fn point_ids(&self) -> Result<Vec<String>, RepoError> {
        let listed = self
            .location
            .list(&layout::dir(self.location.prefix(), layout::POINTS))
            .await?;
        let mut ids: Vec<String> = listed
            .into_iter()
            .filter_map(|(k, _)| k.filename().map(String::from))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        let key = layout::point(self.location.prefix(), id);
        let bytes = match self.location.get_max(&key, format::limits::MANIFEST).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Err(RepoError::PointNotFound(id.into())),
            Err(e) => return Err(e.into()),
        };
        format::decode_manifest(
            &self.keys,
            id,
            &format!("{}/{}", self.location.name(), key),
            &bytes,
        )
    }

    /// Every point, oldest first.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, RepoError> {
        let ids = self.point_ids().await?;
        futures::stream::iter(ids)
            .map(|id| async move { self.manifest(&id).await })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Resolves `latest` or an id prefix to a point id.
    pub async fn resolve_point(&self, wanted: &str) -> Result<String, RepoError> {
        let ids = self.point_ids().await?;
        if wanted == "latest" {
            return ids.last().cloned().ok_or_else(|| {
                RepoError::PointNotFound("latest (the repository has no points)".into())
            });
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(wanted)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RepoError::PointNotFound(wanted.into())),
            _ => Err(RepoError::Invalid(format!(
                "point prefix {wanted} matches {} points",
                matches.len()
            ))),
        }
    }

    /// Chunks every point, and every part of a point in flight, references.
    pub async fn referenced_chunks(&self) -> Result<HashSet<ChunkId>, RepoError> {
        let mut used = HashSet::new();
        for m in self.manifests().await? {
            used.extend(m.chunks().copied());
        }
        for m in self.all_parts().await? {
            used.extend(m.chunks().copied());
        }
        Ok(used)
    }
}

/// Writes an index file naming `packs` and returns its key. The name is the hash of the bytes,
/// so writing the same index twice is harmless.
pub async fn write_index(
    location: &Location,
    keys: &Keys,
    packs: Vec<(ChunkId, Vec<PackEntry>)>,
) -> Result<String, RepoError> {
    write_index_file(
        location,
        keys,
        &IndexFile {
            packs,
            supersedes: vec![],
        },
    )
    .await
}

async fn write_index_file(
    location: &Location,
    keys: &Keys,
    index: &IndexFile,
) -> Result<String, RepoError> {
    let bytes = format::encode_index(keys, index)?;
    let name = hex::encode(blake3::hash(&bytes).as_bytes());
    let key = layout::index(location.prefix(), &name);
    location.put(&key, Bytes::from(bytes)).await?;
    Ok(key.to_string())
}

/// The key-encryption secret must carry enough entropy to stand in for a key.
pub fn check_secret(secret: &[u8]) -> Result<(), RepoError> {
    if secret.len() < 32 {
        return Err(RepoError::Invalid(format!(
            "the repository key must be at least 32 bytes, got {}",
            secret.len()
        )));
    }
    Ok(())
}

/// A new point id: sortable by time, unique by a random suffix.
pub fn new_point_id(time: jiff::Timestamp) -> String {
    format!(
        "{}-{}",
        time.strftime("%Y%m%dT%H%M%S%.3fZ")
            .to_string()
            .replace('.', ""),
        hex::encode(crypto::random_bytes::<4>())
    )
}
