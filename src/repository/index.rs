//! The chunk index in memory and its files in storage: loading it, bringing it up to date, and
//! compacting it.
//!
//! Writers add index files (one per few packs of a snapshot, one per replicated point) and
//! never rewrite one, so a location that many agents write to gathers them by the thousand,
//! and every refresh lists them all: at N workloads, a round of points listed O(N²) names.
//! Compaction merges them in tiers: small files once there are [`SMALL_FILES_AT`] of them,
//! middle-sized ones [`MIDDLE_FILES_AT`] at a time; larger ones stay until a garbage
//! collection rewrites the index whole. One merge reads at most [`MERGE_BUDGET`] bytes. The
//! merged file is written before the files it replaces are deleted, so that the files present
//! always name every pack that they named before, and it names those files, so that a reader
//! that knew them can tell a merge (nothing lost: read the new file) from a garbage collection
//! (packs may be gone: read everything again).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::format::{self, ChunkId, IndexFile, SUPERSEDES_MAX};
use super::lock::Lock;
use super::{RepoError, Repository};
use crate::storage::{Location, StorageError, layout};

/// Index files smaller than this (as stored) are the small tier: a few parts' or points'.
pub const SMALL: u64 = 32 << 10;
/// Files from [`SMALL`] up to this size are the middle tier (a snapshot's file for 16 full
/// packs is about 400 KiB); larger ones are left to garbage collection.
pub const MIDDLE: u64 = 512 << 10;
/// Small files are merged once this many exist.
pub const SMALL_FILES_AT: usize = 256;
/// Middle-sized files are merged this many at a time, once this many exist.
pub const MIDDLE_FILES_AT: usize = 16;
/// The most one merge reads (as stored): more than 256 small or 16 middle-sized files, so that
/// a merge always leaves its tier smaller, and little enough for the operator's memory.
pub const MERGE_BUDGET: u64 = 8 << 20;
/// A load that finds a listed index file gone, and in no file it read, lists again this many
/// times, waiting a little longer each time (a merge is deleting what it replaced).
const LOAD_ATTEMPTS: u32 = 5;

/// How many of the index files listed last are in each tier compaction merges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub small: usize,
    pub middle: usize,
}

impl Tiers {
    fn of(listed: &[(Path, u64)]) -> Self {
        let mut tiers = Tiers::default();
        for (_, size) in listed.iter().filter(|(k, _)| name_id(k.as_ref()).is_some()) {
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

/// The id an index key's file name is (the hash of its bytes, in hex), as a compaction names
/// what it merged: independent of the location's prefix. `None` for a name no writer of ours
/// gives, which no merge touches.
fn name_id(key: &str) -> Option<ChunkId> {
    let name = key.rsplit('/').next()?;
    let mut id = [0u8; 32];
    hex::decode_to_slice(name, &mut id).ok()?;
    Some(id)
}

/// Which files of a listing one compaction merges: the small tier's smallest first when it is
/// full, else the middle tier's [`MIDDLE_FILES_AT`] smallest, within [`MERGE_BUDGET`]; none
/// when neither tier is full.
fn choose(listed: &[(Path, u64)]) -> Vec<Path> {
    let tiers = Tiers::of(listed);
    let (low, high, at_most) = if tiers.small >= SMALL_FILES_AT {
        (0, SMALL, SUPERSEDES_MAX)
    } else if tiers.middle >= MIDDLE_FILES_AT {
        (SMALL, MIDDLE, MIDDLE_FILES_AT)
    } else {
        return vec![];
    };
    let mut tier: Vec<&(Path, u64)> = listed
        .iter()
        .filter(|(k, size)| (low..high).contains(size) && name_id(k.as_ref()).is_some())
        .collect();
    tier.sort_by_key(|(_, size)| *size);
    let mut total = 0;
    tier.into_iter()
        .take(at_most)
        .take_while(|(_, size)| {
            total += size;
            total <= MERGE_BUDGET
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// One index file holding every entry of `files` and naming them. A pack named by several of
/// them gets the union of their entries: a garbage collection's index lists under a pack only
/// the chunks no other pack was chosen for, while a copy lists all of the pack's.
fn merge(files: Vec<(String, IndexFile)>) -> IndexFile {
    let mut merged = IndexFile::default();
    let mut at: HashMap<ChunkId, usize> = HashMap::new();
    let mut repeated = HashSet::new();
    for (key, file) in files {
        merged.supersedes.extend(name_id(&key));
        for (pack, entries) in file.packs {
            match at.entry(pack) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    merged.packs[*o.get()].1.extend(entries);
                    repeated.insert(*o.get());
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(merged.packs.len());
                    merged.packs.push((pack, entries));
                }
            }
        }
    }
    for i in repeated {
        let entries = &mut merged.packs[i].1;
        entries.sort_by_key(|e| e.id);
        entries.dedup_by_key(|e| e.id);
    }
    merged
}

/// Index files read, and the file names of those listed that were gone when read.
struct Read {
    files: Vec<(String, IndexFile)>,
    gone: Vec<String>,
}

impl Read {
    /// Whether every file gone, and every one of `also`, is named by a merged file read: its
    /// entries are in that file.
    fn covers(&self, also: &[String]) -> bool {
        let merged: HashSet<&ChunkId> = self
            .files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter())
            .collect();
        self.gone
            .iter()
            .chain(also)
            .all(|n| name_id(n).is_some_and(|id| merged.contains(&id)))
    }
}

/// Reads and authenticates the index files `names`, eight at a time.
async fn read_files(
    location: &Location,
    keys: &super::crypto::Keys,
    names: Vec<Path>,
) -> Result<Read, RepoError> {
    let read: Vec<Result<(String, IndexFile), String>> = futures::stream::iter(names)
        .map(|key| async move {
            match location.get_max(&key, format::limits::INDEX).await {
                Ok(bytes) => {
                    let name = format!("{}/{}", location.name(), key);
                    Ok(Ok((
                        key.to_string(),
                        format::decode_index(keys, &name, &bytes)?,
                    )))
                }
                Err(StorageError::NotFound { .. }) => Ok(Err(key.to_string())),
                Err(e) => Err(RepoError::from(e)),
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut out = Read {
        files: vec![],
        gone: vec![],
    };
    for r in read {
        match r {
            Ok(file) => out.files.push(file),
            Err(gone) => out.gone.push(gone),
        }
    }
    Ok(out)
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

    /// How many times this handle has read every index file (an open, a refresh that found
    /// the index rewritten, a prune): what the cost tests count.
    pub fn full_index_loads(&self) -> u64 {
        self.full_loads
    }

    /// Reads every index file, then adopts packs that no index names yet (a writer that was
    /// killed after uploading them): their headers say what they hold, so the next run reuses
    /// them instead of uploading again. Unreadable orphans (torn uploads) are ignored. A file
    /// listed but gone when read was merged meanwhile: when the merged file was listed too,
    /// its entries are there; otherwise the index is listed again, a little later each time.
    pub async fn load_index(&mut self) -> Result<(), RepoError> {
        let mut attempt = 1;
        loop {
            match self.load_index_once().await? {
                None => return Ok(()),
                Some(gone) if attempt >= LOAD_ATTEMPTS => {
                    return Err(RepoError::Storage(StorageError::NotFound {
                        location: self.location.name().into(),
                        key: gone,
                    }));
                }
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One load; `Some(file)` when a file listed was gone and no file read holds its entries.
    async fn load_index_once(&mut self) -> Result<Option<String>, RepoError> {
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
        let read = read_files(&self.location, &self.keys, keys).await?;
        if !read.covers(&[]) {
            return Ok(read.gone.into_iter().next());
        }
        for (key, file) in read.files {
            self.add_file(key, &file);
        }
        let stored = self.list_packs().await?;
        let orphans: Vec<(ChunkId, u64)> = stored
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
        Ok(None)
    }

    /// Brings the index up to date as cheaply as it can: only the index files not read before
    /// are read (a writer's next part costs what it adds, not the whole repository), when every
    /// file read before is still there or was merged into one of them. Otherwise (a garbage
    /// collection rewrote the index and may have deleted packs, or a pack was adopted outside
    /// any index that a prune may have deleted) it is read again whole. Writers call it under
    /// their lock, which garbage collection excludes; the operator's copy calls it on its
    /// source without one, where a collection meanwhile shows as files gone unmerged.
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
        let read = read_files(&self.location, &self.keys, new).await?;
        if !read.covers(&vanished) {
            return self.load_index().await;
        }
        let vanished: HashSet<String> = vanished.into_iter().collect();
        self.index_files
            .retain(|k| !vanished.contains(file_name(k)));
        for (key, file) in read.files {
            self.add_file(key, &file);
        }
        self.index_tiers = tiers;
        Ok(())
    }

    /// Whether the index files listed last call for a compaction.
    pub fn compaction_due(&self) -> bool {
        self.index_tiers.due()
    }

    /// Merges a full tier of index files into one (see [`choose`]), under `lock` (shared
    /// suffices: only garbage collection must not run meanwhile, and it takes an exclusive
    /// lock). The merged file holds exactly what the files it replaces held, read again from
    /// storage, and is written before they are deleted. `None` when no tier is full, or when a
    /// file listed was gone when read (another compaction merged it).
    pub async fn compact_index(&mut self, lock: &Lock) -> Result<Option<Compaction>, RepoError> {
        let listed = self.location.list(&self.index_dir()).await?;
        self.index_tiers = Tiers::of(&listed);
        let chosen = choose(&listed);
        if chosen.is_empty() {
            return Ok(None);
        }
        let read = read_files(&self.location, &self.keys, chosen).await?;
        if !read.gone.is_empty() {
            return Ok(None);
        }
        let replaced: Vec<String> = read.files.iter().map(|(k, _)| k.clone()).collect();
        let merged = merge(read.files);
        // A lock that could not be refreshed may have let a garbage collection start: a file
        // written now could name the packs it deletes.
        lock.ensure_held()?;
        let into = super::write_index_file(&self.location, &self.keys, &merged).await?;
        let replaced: HashSet<String> = replaced.into_iter().filter(|k| *k != into).collect();
        self.location
            .delete_all(replaced.iter().map(|k| Path::from(k.as_str())).collect())
            .await?;
        self.index_files.retain(|k| !replaced.contains(k));
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

/// The file name of an index key.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
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

    fn entry(id: u8) -> PackEntry {
        PackEntry {
            id: [id; 32],
            offset: id as u32 * 100,
            length: 40,
            raw_length: 12,
        }
    }

    fn packs() -> Vec<(ChunkId, Vec<PackEntry>)> {
        vec![([7; 32], vec![entry(9)])]
    }

    #[test]
    fn a_merged_index_names_what_it_replaced_and_older_readers_still_read_its_packs() {
        let merged = IndexFile {
            packs: packs(),
            supersedes: vec![[1; 32], [2; 32]],
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
    fn bytes_after_the_names_or_too_many_names_are_refused() {
        let raw = |names: &Vec<ChunkId>, tail: &[u8]| {
            let mut raw = postcard::to_stdvec(&IndexFile {
                packs: packs(),
                supersedes: vec![],
            })
            .unwrap();
            raw.extend(postcard::to_stdvec(names).unwrap());
            raw.extend_from_slice(tail);
            sized(&raw)
        };
        let err = decode_index_plaintext(&raw(&vec![[1; 32]], b"xx")).unwrap_err();
        assert!(err.contains("2 bytes after the names"), "{err}");
        let many = vec![[1; 32]; SUPERSEDES_MAX + 1];
        let err = decode_index_plaintext(&raw(&many, b"")).unwrap_err();
        assert!(err.contains("names 4097 merged index files"), "{err}");
        // A count that promises more names than there are bytes.
        let mut bad = postcard::to_stdvec(&IndexFile::default()).unwrap();
        bad.extend([0xff, 0xff, 0x03]);
        let err = decode_index_plaintext(&sized(&bad)).unwrap_err();
        assert!(err.contains("the names of the merged index files"), "{err}");
    }

    #[test]
    fn an_index_larger_than_a_reader_accepts_is_not_written() {
        let keys = crate::repository::format::Config::new(&[7; 32]).1;
        let index = IndexFile {
            packs: vec![([1; 32], vec![entry(1); 100])],
            supersedes: vec![[2; 32]; 10],
        };
        let err = format::encode_index_within(&keys, &index, 3_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("an index of 3855 bytes (1 packs) is more than the 3000 a reader accepts; it was not written"),
            "{err}"
        );
        let sealed = format::encode_index_within(&keys, &index, 4_000).unwrap();
        assert_eq!(format::decode_index(&keys, "i", &sealed).unwrap(), index);
    }

    fn listing(sizes: &[u64]) -> Vec<(Path, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                (Path::from(format!("index/{}", hex::encode(id))), *size)
            })
            .collect()
    }

    #[test]
    fn tiers_count_small_and_middle_files_and_leave_large_ones() {
        let mut listed = listing(&[10, SMALL - 1, SMALL, MIDDLE - 1, MIDDLE, 1 << 30]);
        // A name no writer of ours gives is counted in no tier.
        listed.push((Path::from("index/not-ours"), 10));
        assert_eq!(
            Tiers::of(&listed),
            Tiers {
                small: 2,
                middle: 2
            }
        );
        assert!(!Tiers::of(&listed).due());
        assert!(choose(&listed).is_empty());
    }

    #[test]
    fn a_merge_takes_a_full_tier_smallest_first_within_its_budget() {
        // 300 tiny files: all merged.
        assert_eq!(choose(&listing(&[100; 300])).len(), 300);
        // 300 small files of the largest size: as many as the budget allows, never fewer than
        // a full tier, so that a merge always leaves the tier below its threshold.
        let chosen = choose(&listing(&[SMALL - 1; 300])).len();
        assert!(chosen >= SMALL_FILES_AT, "{chosen}");
        assert!(chosen as u64 * (SMALL - 1) <= MERGE_BUDGET);
        // 40 middle files of 500 KiB and 255 small ones: the middle tier, 16 of its smallest.
        let mut sizes = vec![MIDDLE - (12 << 10); 40];
        sizes[5] = SMALL;
        sizes.extend(vec![100; 255]);
        let listed = listing(&sizes);
        let chosen = choose(&listed);
        assert_eq!(chosen.len(), MIDDLE_FILES_AT);
        assert!(chosen.contains(&listed[5].0), "the smallest first");
        let total: u64 = listed
            .iter()
            .filter(|(k, _)| chosen.contains(k))
            .map(|(_, s)| s)
            .sum();
        assert!(total <= MERGE_BUDGET, "{total}");
    }

    #[test]
    fn a_pack_named_by_several_files_keeps_the_union_of_their_entries() {
        let name = |b: u8| format!("index/{}", hex::encode([b; 32]));
        let gc = IndexFile {
            packs: vec![([7; 32], vec![entry(1)]), ([8; 32], vec![entry(2)])],
            supersedes: vec![],
        };
        let copy = IndexFile {
            packs: vec![([7; 32], vec![entry(1), entry(3)])],
            supersedes: vec![],
        };
        let merged = merge(vec![(name(1), gc), (name(2), copy)]);
        assert_eq!(merged.supersedes, vec![[1; 32], [2; 32]]);
        assert_eq!(
            merged.packs,
            vec![
                ([7; 32], vec![entry(1), entry(3)]),
                ([8; 32], vec![entry(2)])
            ]
        );
    }
}
