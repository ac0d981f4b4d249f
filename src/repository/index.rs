//! The chunk index in memory and its files in storage: loading it, bringing it up to date, and
//! compacting it.
//!
//! Writers add index files (one per few packs of a snapshot, one per replicated point) and
//! never rewrite one, so a location that many agents write to gathers them by the thousand,
//! and every refresh lists them all: at N workloads, a round of points listed O(N²) names.
//! Compaction keeps their number bounded. Small files are merged into one once there are
//! [`SMALL_FILES_AT`] of them, middle-sized ones once there are [`MIDDLE_FILES_AT`]; larger
//! ones stay until a garbage collection rewrites the index whole. The merged file is written
//! before the files it replaces are deleted, so that the files present always name every pack
//! that they named before, and it names those files, so that a reader that knew them can tell
//! a merge (nothing lost: read the new file) from a garbage collection (packs may be gone:
//! read everything again).

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::format::{self, IndexFile, SUPERSEDES_MAX};
use super::lock::Lock;
use super::{RepoError, Repository};
use crate::storage::{Location, StorageError, layout};

/// Index files smaller than this (as stored) are the small tier: a part's or a point's.
pub const SMALL: u64 = 256 << 10;
/// Files from [`SMALL`] up to this size are the middle tier; larger ones are left to garbage
/// collection. Sixteen of them merge into at most 32 MiB, well within the index limit.
pub const MIDDLE: u64 = 2 << 20;
/// Small files are merged once this many exist.
pub const SMALL_FILES_AT: usize = 256;
/// Middle-sized files are merged once this many exist.
pub const MIDDLE_FILES_AT: usize = 16;
/// A load that finds a listed index file gone (merged meanwhile) lists again this many times.
const LOAD_ATTEMPTS: usize = 4;

/// How many of the index files listed last are in each tier compaction merges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub small: usize,
    pub middle: usize,
}

impl Tiers {
    fn of(listed: &[(Path, u64)]) -> Self {
        let mut tiers = Tiers::default();
        for (_, size) in listed {
            if *size < SMALL {
                tiers.small += 1;
            } else if *size < MIDDLE {
                tiers.middle += 1;
            }
        }
        tiers
    }

    /// Whether a compaction would merge anything.
    pub fn due(&self) -> bool {
        self.small >= SMALL_FILES_AT || self.middle >= MIDDLE_FILES_AT
    }
}

/// What one compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// Index files merged (and deleted).
    pub merged: usize,
    /// The key of the file that replaced them.
    pub into: String,
    pub packs: usize,
}

/// The file name of an index key (the content hash), as a compaction names what it merged:
/// independent of the location's prefix.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn is_not_found(e: &RepoError) -> bool {
    matches!(e, RepoError::Storage(StorageError::NotFound { .. }))
}

/// Reads and authenticates the index files `keys`, eight at a time.
async fn read_files(
    location: &Location,
    keys: &super::crypto::Keys,
    names: Vec<Path>,
) -> Result<Vec<(String, IndexFile)>, RepoError> {
    futures::stream::iter(names)
        .map(|key| async move {
            let bytes = location.get_max(&key, format::limits::INDEX).await?;
            let name = format!("{}/{}", location.name(), key);
            Ok::<_, RepoError>((key.to_string(), format::decode_index(keys, &name, &bytes)?))
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}

impl Repository {
    fn index_dir(&self) -> Path {
        layout::dir(self.location.prefix(), layout::INDEX)
    }

    fn add_file(&mut self, key: String, file: &IndexFile) {
        for (pack, entries) in &file.packs {
            self.add_pack(pack, entries);
        }
        self.index_files.push(key);
    }

    /// Records an index file this handle wrote itself, whose packs it has added: the next
    /// refresh need not read it back. It counts as a small file until the next listing says
    /// otherwise (a compaction lists before it merges).
    pub fn wrote_index(&mut self, key: String) {
        if !self.index_files.contains(&key) {
            self.index_files.push(key);
            self.index_tiers.small += 1;
        }
    }

    /// Reads every index file, then adopts packs that no index names yet (a writer that was
    /// killed after uploading them): their headers say what they hold, so the next run reuses
    /// them instead of uploading again. Unreadable orphans (torn uploads) are ignored. A file
    /// listed but gone when read was merged meanwhile: the merged file was written first, so
    /// listing again finds it.
    pub async fn load_index(&mut self) -> Result<(), RepoError> {
        let mut attempt = 1;
        loop {
            match self.load_index_once().await {
                Err(e) if is_not_found(&e) && attempt < LOAD_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    /// How many times this handle has read every index file (an open, a refresh that found
    /// the index rewritten, a prune): what the cost tests count.
    pub fn full_index_loads(&self) -> u64 {
        self.full_loads
    }

    async fn load_index_once(&mut self) -> Result<(), RepoError> {
        self.full_loads += 1;
        self.packs.clear();
        self.pack_numbers.clear();
        self.chunks.clear();
        self.index_files.clear();
        self.unreadable_packs.clear();
        self.adopted = 0;
        let listed = self.location.list(&self.index_dir()).await?;
        self.index_tiers = Tiers::of(&listed);
        let keys = listed.into_iter().map(|(k, _)| k).collect();
        for (key, file) in read_files(&self.location, &self.keys, keys).await? {
            self.add_file(key, &file);
        }
        let stored = self.list_packs().await?;
        let orphans: Vec<(format::ChunkId, u64)> = stored
            .into_iter()
            .filter(|(id, _)| !self.has_pack(id))
            .collect();
        for (pack, size) in orphans {
            match self.read_pack_header(&pack, size).await {
                Ok(entries) => {
                    self.add_pack(&pack, &entries);
                    self.adopted += 1;
                }
                Err(e) => self.unreadable_packs.push((pack, e.to_string())),
            }
        }
        Ok(())
    }

    /// Brings the index up to date as cheaply as it can: only the index files not read before
    /// are read (a writer's next part costs what it adds, not the whole repository), when every
    /// file read before is still there or was merged into one of them. Otherwise (a garbage
    /// collection rewrote the index and may have deleted packs, or a pack was adopted outside
    /// any index that a prune may have deleted) it is read again whole. Called under a lock
    /// (snapshot, replicate), which garbage collection excludes.
    pub async fn refresh_index(&mut self) -> Result<(), RepoError> {
        if self.index_files.is_empty() || self.adopted > 0 {
            return self.load_index().await;
        }
        let listed = self.location.list(&self.index_dir()).await?;
        let known: HashSet<&str> = self.index_files.iter().map(|k| file_name(k)).collect();
        let present: HashSet<&str> = listed.iter().filter_map(|(k, _)| k.filename()).collect();
        let vanished: Vec<String> = known
            .iter()
            .filter(|n| !present.contains(*n))
            .map(|n| n.to_string())
            .collect();
        let new: Vec<Path> = listed
            .iter()
            .filter(|(k, _)| k.filename().is_none_or(|n| !known.contains(n)))
            .map(|(k, _)| k.clone())
            .collect();
        let tiers = Tiers::of(&listed);
        let files = match read_files(&self.location, &self.keys, new).await {
            Ok(files) => files,
            // Merged since it was listed.
            Err(e) if is_not_found(&e) => return self.load_index().await,
            Err(e) => return Err(e),
        };
        let merged: HashSet<&str> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().map(String::as_str))
            .collect();
        if vanished.iter().any(|v| !merged.contains(v.as_str())) {
            return self.load_index().await;
        }
        let vanished: HashSet<String> = vanished.into_iter().collect();
        self.index_files
            .retain(|k| !vanished.contains(file_name(k)));
        for (key, file) in files {
            self.add_file(key, &file);
        }
        self.index_tiers = tiers;
        Ok(())
    }

    /// Whether the index files listed last call for a compaction.
    pub fn compaction_due(&self) -> bool {
        self.index_tiers.due()
    }

    /// Merges a tier of index files into one, if one is full, under `lock` (shared suffices:
    /// only garbage collection must not run meanwhile, and it takes an exclusive lock). The
    /// merged file holds exactly what the files it replaces held, read again from storage, and
    /// is written before they are deleted. `None` when no tier is full, or when a file listed
    /// was gone when read (another compaction merged it).
    pub async fn compact_index(&mut self, lock: &Lock) -> Result<Option<Compaction>, RepoError> {
        let listed = self.location.list(&self.index_dir()).await?;
        self.index_tiers = Tiers::of(&listed);
        let tier = |low: u64, high: u64| -> Vec<Path> {
            listed
                .iter()
                .filter(|(_, size)| (low..high).contains(size))
                .map(|(k, _)| k.clone())
                .take(SUPERSEDES_MAX)
                .collect()
        };
        let chosen = if self.index_tiers.small >= SMALL_FILES_AT {
            tier(0, SMALL)
        } else if self.index_tiers.middle >= MIDDLE_FILES_AT {
            tier(SMALL, MIDDLE)
        } else {
            return Ok(None);
        };
        let files = match read_files(&self.location, &self.keys, chosen).await {
            Ok(files) => files,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut seen = HashSet::new();
        let mut merged = IndexFile::default();
        for (key, file) in &files {
            merged.supersedes.push(file_name(key).to_string());
            for (pack, entries) in &file.packs {
                if seen.insert(*pack) {
                    merged.packs.push((*pack, entries.clone()));
                }
            }
        }
        // A lock that could not be refreshed may have let a garbage collection start: a file
        // written now could name the packs it deletes.
        lock.ensure_held()?;
        let into = super::write_index_file(&self.location, &self.keys, &merged).await?;
        let replaced: HashSet<&str> = files
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != into)
            .collect();
        self.location
            .delete_all(replaced.iter().map(|k| Path::from(*k)).collect())
            .await?;
        self.index_files.retain(|k| !replaced.contains(k.as_str()));
        for (pack, entries) in &merged.packs {
            self.add_pack(pack, entries);
        }
        self.wrote_index(into.clone());
        // The merged file's tier is known at the next listing.
        self.index_tiers = Tiers::of(
            &listed
                .into_iter()
                .filter(|(k, _)| !replaced.contains(k.as_ref()))
                .collect::<Vec<_>>(),
        );
        Ok(Some(Compaction {
            merged: replaced.len(),
            into,
            packs: merged.packs.len(),
        }))
    }

    /// [`Repository::compact_index`] when the last listing calls for it, under a shared lock
    /// of its own.
    pub async fn compact_if_due(&mut self) -> Result<Option<Compaction>, RepoError> {
        if !self.compaction_due() {
            return Ok(None);
        }
        let lock = Lock::acquire(&self.location, "compact", false).await?;
        let result = self.compact_index(&lock).await;
        let released = lock.release().await;
        let compaction = result?;
        released?;
        Ok(compaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::format::{PackEntry, decode_index_plaintext};

    /// An index plaintext as `encode_index` seals it: declared size, then zstd.
    fn sized(raw: &[u8]) -> Vec<u8> {
        let mut out = (raw.len() as u64).to_le_bytes().to_vec();
        out.extend(zstd::bulk::compress(raw, 3).unwrap());
        out
    }

    fn packs() -> Vec<(format::ChunkId, Vec<PackEntry>)> {
        vec![(
            [7; 32],
            vec![PackEntry {
                id: [9; 32],
                offset: 0,
                length: 40,
                raw_length: 12,
            }],
        )]
    }

    #[test]
    fn a_merged_index_names_what_it_replaced_and_older_readers_still_read_its_packs() {
        let merged = IndexFile {
            packs: packs(),
            supersedes: vec!["a".repeat(64), "b".repeat(64)],
        };
        let mut raw = postcard::to_stdvec(&merged).unwrap();
        raw.extend(postcard::to_stdvec(&merged.supersedes).unwrap());
        assert_eq!(decode_index_plaintext(&sized(&raw)).unwrap(), merged);
        // What a reader that predates merging decodes: the packs, the names ignored.
        let old: IndexFile = postcard::from_bytes(&raw).unwrap();
        assert_eq!(old.packs, merged.packs);
        // A file without names (every file before merging existed) names nothing.
        let plain = postcard::to_stdvec(&IndexFile {
            packs: packs(),
            supersedes: vec![],
        })
        .unwrap();
        assert!(
            decode_index_plaintext(&sized(&plain))
                .unwrap()
                .supersedes
                .is_empty()
        );
    }

    #[test]
    fn bytes_after_the_names_or_too_many_or_too_long_names_are_refused() {
        let raw = |names: &Vec<String>, tail: &[u8]| {
            let mut raw = postcard::to_stdvec(&IndexFile {
                packs: packs(),
                supersedes: vec![],
            })
            .unwrap();
            raw.extend(postcard::to_stdvec(names).unwrap());
            raw.extend_from_slice(tail);
            sized(&raw)
        };
        let err = decode_index_plaintext(&raw(&vec!["a".into()], b"xx")).unwrap_err();
        assert!(err.contains("2 bytes after the names"), "{err}");
        let many = vec!["a".to_string(); SUPERSEDES_MAX + 1];
        let err = decode_index_plaintext(&raw(&many, b"")).unwrap_err();
        assert!(err.contains("names 4097 merged index files"), "{err}");
        let err = decode_index_plaintext(&raw(&vec!["a".repeat(300)], b"")).unwrap_err();
        assert!(err.contains("name of 300 bytes"), "{err}");
        // A tail that is not a list of names at all.
        let mut bad = postcard::to_stdvec(&IndexFile::default()).unwrap();
        bad.push(0xff);
        let err = decode_index_plaintext(&sized(&bad)).unwrap_err();
        assert!(err.contains("the names of the merged index files"), "{err}");
    }

    #[test]
    fn tiers_count_small_and_middle_files_and_leave_large_ones() {
        let listed: Vec<(Path, u64)> = [10, SMALL - 1, SMALL, MIDDLE - 1, MIDDLE, 1 << 30]
            .into_iter()
            .enumerate()
            .map(|(i, size)| (Path::from(format!("index/{i}")), size))
            .collect();
        assert_eq!(
            Tiers::of(&listed),
            Tiers {
                small: 2,
                middle: 2
            }
        );
        assert!(!Tiers::of(&listed).due());
        assert!(
            Tiers {
                small: SMALL_FILES_AT,
                middle: 0
            }
            .due()
        );
        assert!(
            Tiers {
                small: 0,
                middle: MIDDLE_FILES_AT
            }
            .due()
        );
    }
}
