//! The on-storage format (see docs/repository-format.md): the plaintext config, pack headers,
//! index files and point manifests, and their binary encodings. Decoding never trusts its
//! input: every length is checked and every error says what was malformed.

use serde::{Deserialize, Serialize};

use super::RepoError;
use super::crypto::{self, KEY_LEN, Keys, Kind};

pub const FORMAT: &str = "site-recovery/repository";
/// Version 2 authenticates the config and declares the plaintext size of every compressed blob.
pub const VERSION: u32 = 2;
pub const COMPRESSION: &str = "zstd";
pub const CIPHER: &str = "aes-256-gcm, per-blob key blake3-keyed(data key, salt)";
pub const CHUNK_ID: &str = "blake3-keyed";
pub const KEY_DERIVATION: &str = "blake3-derive-key";

/// The most bytes each kind of object may have in storage; a larger one is refused before its
/// body is read. Chosen from what the writers produce (see docs/repository-format.md).
pub mod limits {
    pub const CONFIG: u64 = 64 << 10;
    pub const LOCK: u64 = 4 << 10;
    /// A pack: 8 MiB of chunks, one chunk over, and its header.
    pub const PACK: u64 = 64 << 20;
    /// A manifest's or index's plaintext, and so their sealed objects.
    pub const MANIFEST: u64 = 128 << 20;
    pub const INDEX: u64 = 256 << 20;
    /// A chunk's plaintext: the largest block or content-defined chunk a config may ask for.
    pub const CHUNK: u32 = 16 << 20;
    /// A workload's definition carried in a point's origin.
    pub const DEFINITION: usize = 1 << 20;
    /// A sealed fence record.
    pub const FENCE: u64 = 4 << 10;
}
/// zstd level of chunks: see docs/repository-format.md for the measurements.
pub const COMPRESSION_LEVEL: i32 = 1;
pub const PACK_MAGIC: &[u8; 4] = b"SRPK";

pub type ChunkId = [u8; 32];

/// How data is cut into chunks. Recorded in the config so every writer of a repository cuts
/// the same way (which is what makes deduplication across writers work).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Chunking {
    /// Files at least this large (and raw images) are cut into fixed, aligned blocks.
    pub block_threshold: u64,
    pub block_size: u32,
    /// Smaller files are cut by content (FastCDC 2020) with these bounds.
    pub cdc_min: u32,
    pub cdc_avg: u32,
    pub cdc_max: u32,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            block_threshold: 4 << 20,
            block_size: 16 << 10,
            cdc_min: 4 << 10,
            cdc_avg: 16 << 10,
            cdc_max: 64 << 10,
        }
    }
}

/// The master key, sealed with the key-encryption key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    pub key_derivation: String,
    pub sealed: String,
}

/// `<prefix>/config`: plaintext, so that a foreign or newer repository is recognised before
/// anything is decrypted or written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub format: String,
    pub version: u32,
    /// Random id; cache and target of one vault hold the same repository (same id and keys).
    pub id: String,
    pub chunking: Chunking,
    pub compression: String,
    pub cipher: String,
    pub chunk_id: String,
    pub master_key: WrappedKey,
}

impl Chunking {
    /// Bounds every field: a config is read before anything is authenticated, and its numbers
    /// size buffers and divide offsets.
    pub fn check(&self) -> Result<(), String> {
        use fastcdc::v2020 as cdc;
        let b = self.block_size;
        if !b.is_power_of_two() || !(4096..=(8 << 20)).contains(&b) {
            return Err(format!(
                "chunking.blockSize {b}: expected a power of two from 4096 to 8388608"
            ));
        }
        // Files below the threshold are read whole into memory.
        if self.block_threshold < b as u64 || self.block_threshold > 64 << 20 {
            return Err(format!(
                "chunking.blockThreshold {}: expected blockSize ({b}) to 67108864",
                self.block_threshold
            ));
        }
        let (min, avg, max) = (
            self.cdc_min as usize,
            self.cdc_avg as usize,
            self.cdc_max as usize,
        );
        if !(cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
            || !(cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
            || !(cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
            || min > avg
            || avg > max
        {
            return Err(format!(
                "chunking.cdcMin/cdcAvg/cdcMax {min}/{avg}/{max}: expected {}..={} ≤ {}..={} ≤ {}..={}",
                cdc::MINIMUM_MIN,
                cdc::MINIMUM_MAX,
                cdc::AVERAGE_MIN,
                cdc::AVERAGE_MAX,
                cdc::MAXIMUM_MIN,
                cdc::MAXIMUM_MAX
            ));
        }
        Ok(())
    }
}

impl Config {
    pub fn new(secret: &[u8]) -> (Self, Keys) {
        let master: [u8; KEY_LEN] = crypto::random_bytes();
        let id = hex::encode(crypto::random_bytes::<16>());
        let mut config = Self {
            format: FORMAT.into(),
            version: VERSION,
            id,
            chunking: Chunking::default(),
            compression: COMPRESSION.into(),
            cipher: CIPHER.into(),
            chunk_id: CHUNK_ID.into(),
            master_key: WrappedKey {
                key_derivation: KEY_DERIVATION.into(),
                sealed: String::new(),
            },
        };
        let kek = crypto::key_encryption_key(secret);
        let sealed = crypto::seal(&kek, Kind::MasterKey, &config.authenticated(), &master);
        config.master_key.sealed = hex::encode(sealed);
        (config, Keys::from_master(&master))
    }

    /// What the wrapped master key is bound to: every field but the wrapped key itself. A config
    /// altered in storage no longer unlocks, so its fields are trusted once `unlock` succeeded.
    fn authenticated(&self) -> Vec<u8> {
        let c = &self.chunking;
        format!(
            "{}\n{}\n{}\n{} {} {} {} {}\n{}\n{}\n{}\n{}",
            self.format,
            self.version,
            self.id,
            c.block_threshold,
            c.block_size,
            c.cdc_min,
            c.cdc_avg,
            c.cdc_max,
            self.compression,
            self.cipher,
            self.chunk_id,
            self.master_key.key_derivation
        )
        .into_bytes()
    }

    /// Reads a config; refuses foreign and newer formats without touching anything.
    pub fn parse(location: &str, bytes: &[u8]) -> Result<Self, RepoError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| RepoError::Foreign {
                location: location.into(),
                reason: "config is not JSON".into(),
            })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(RepoError::Foreign {
                location: location.into(),
                reason: format!(
                    "config.format is {}, not {FORMAT:?}",
                    value
                        .get("format")
                        .map(|f| f.to_string())
                        .unwrap_or_else(|| "missing".into())
                ),
            });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != VERSION as u64 {
            return Err(RepoError::UnsupportedVersion {
                location: location.into(),
                found: version,
                supported: VERSION,
            });
        }
        let config: Self = serde_json::from_value(value).map_err(|e| RepoError::Foreign {
            location: location.into(),
            reason: format!("config: {e}"),
        })?;
        config.check().map_err(|reason| RepoError::Foreign {
            location: location.into(),
            reason: format!("config.{reason}"),
        })?;
        Ok(config)
    }

    /// Every field must be one this build writes, or within the bounds it can work with.
    fn check(&self) -> Result<(), String> {
        if self.id.len() != 32 || !self.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("id {:?}: expected 32 hex digits", self.id));
        }
        for (field, found, expected) in [
            ("compression", &self.compression, COMPRESSION),
            ("cipher", &self.cipher, CIPHER),
            ("chunkId", &self.chunk_id, CHUNK_ID),
            (
                "masterKey.keyDerivation",
                &self.master_key.key_derivation,
                KEY_DERIVATION,
            ),
        ] {
            if found != expected {
                return Err(format!("{field} {found:?}: expected {expected:?}"));
            }
        }
        // kind, salt, 32-byte key, tag: hex.
        if self.master_key.sealed.len() != 2 * (crypto::OVERHEAD + KEY_LEN) {
            return Err("masterKey.sealed: not a wrapped 32-byte key".into());
        }
        self.chunking.check()
    }

    pub fn unlock(&self, location: &str, secret: &[u8]) -> Result<Keys, RepoError> {
        let sealed = hex::decode(&self.master_key.sealed).map_err(|_| RepoError::Foreign {
            location: location.into(),
            reason: "config.masterKey.sealed is not hex".into(),
        })?;
        let kek = crypto::key_encryption_key(secret);
        let master =
            crypto::open(&kek, Kind::MasterKey, &self.authenticated(), &sealed).map_err(|_| {
                RepoError::WrongKey {
                    location: location.into(),
                }
            })?;
        let master: [u8; KEY_LEN] = master.try_into().map_err(|_| RepoError::WrongKey {
            location: location.into(),
        })?;
        Ok(Keys::from_master(&master))
    }
}

/// Where a chunk lives inside a pack.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u32,
    /// Sealed length in the pack.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// One index file: the entries of some packs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct IndexFile {
    pub packs: Vec<(ChunkId, Vec<PackEntry>)>,
    /// A compaction's output names the index files (the ids their names are) whose entries it
    /// holds and which it deleted after writing it, so that a reader who knew them can tell
    /// that they were merged, not collected (see `Repository::refresh_index`). Encoded after
    /// `packs`, which readers that predate it decode alone; empty in every other index file.
    #[serde(skip)]
    pub supersedes: Vec<ChunkId>,
}

/// The most index files one compaction names as merged.
pub const SUPERSEDES_MAX: usize = 4096;

/// Appends the sealed header and trailer that make a pack self-describing.
pub fn finish_pack(keys: &Keys, mut body: Vec<u8>, entries: &[PackEntry]) -> Vec<u8> {
    let header = postcard::to_stdvec(entries).expect("pack entries serialize");
    let sealed = crypto::seal(&keys.data_key, Kind::PackHeader, b"", &header);
    body.extend_from_slice(&sealed);
    body.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    body.extend_from_slice(PACK_MAGIC);
    body
}

/// Reads the entries of a pack from its header (the last bytes of the pack).
pub fn read_pack_header(keys: &Keys, name: &str, pack: &[u8]) -> Result<Vec<PackEntry>, RepoError> {
    let len = pack_header_length(name, pack)?;
    // The trailer is not authenticated: its length is checked before it is used.
    let Some(body_len) = pack.len().checked_sub(8).and_then(|n| n.checked_sub(len)) else {
        return Err(RepoError::Corrupt {
            object: name.into(),
            reason: format!(
                "pack header length {len} exceeds the pack ({} bytes)",
                pack.len()
            ),
        });
    };
    parse_pack_header(keys, name, &pack[body_len..], body_len)
}

/// The sealed header's length, from a pack's last 8 bytes.
pub fn pack_header_length(name: &str, tail: &[u8]) -> Result<usize, RepoError> {
    if tail.len() < 8 || &tail[tail.len() - 4..] != PACK_MAGIC {
        return Err(RepoError::Corrupt {
            object: name.into(),
            reason: "no pack trailer (truncated or not a pack)".into(),
        });
    }
    Ok(u32::from_le_bytes(
        tail[tail.len() - 8..tail.len() - 4]
            .try_into()
            .expect("4 bytes"),
    ) as usize)
}

/// Parses `sealed header || trailer`, checking entries against the body length before it.
pub fn parse_pack_header(
    keys: &Keys,
    name: &str,
    tail: &[u8],
    body_len: usize,
) -> Result<Vec<PackEntry>, RepoError> {
    let corrupt = |why: String| RepoError::Corrupt {
        object: name.into(),
        reason: why,
    };
    let len = pack_header_length(name, tail)?;
    if len.checked_add(8) != Some(tail.len()) {
        return Err(corrupt("pack header length does not match the pack".into()));
    }
    let plain = crypto::open(&keys.data_key, Kind::PackHeader, b"", &tail[..len])
        .map_err(|e| corrupt(format!("pack header: {e}")))?;
    decode_pack_header_plaintext(&plain, body_len).map_err(corrupt)
}

/// Decodes a pack header after decryption and checks it against the body before it (a fuzz
/// target's entry point).
pub fn decode_pack_header_plaintext(
    plain: &[u8],
    body_len: usize,
) -> Result<Vec<PackEntry>, String> {
    let entries: Vec<PackEntry> =
        postcard::from_bytes(plain).map_err(|e| format!("pack header: {e}"))?;
    if entries
        .iter()
        .any(|e| e.offset as usize + e.length as usize > body_len)
    {
        return Err("pack header points outside the pack".into());
    }
    check_raw_lengths(&entries, "pack header")?;
    Ok(entries)
}

/// Seals an index; refused when it is larger than any reader accepts ([`limits::INDEX`]),
/// so that no writer stores an index that would make the repository unreadable.
pub fn encode_index(keys: &Keys, index: &IndexFile) -> Result<Vec<u8>, RepoError> {
    encode_index_within(keys, index, limits::INDEX)
}

/// [`encode_index`] with another limit (a test's).
pub(crate) fn encode_index_within(
    keys: &Keys,
    index: &IndexFile,
    max: u64,
) -> Result<Vec<u8>, RepoError> {
    let mut plain = postcard::to_stdvec(index).expect("index serializes");
    if !index.supersedes.is_empty() {
        plain.extend(postcard::to_stdvec(&index.supersedes).expect("names serialize"));
    }
    if plain.len() as u64 > max {
        return Err(RepoError::Invalid(format!(
            "an index of {} bytes ({} packs) is more than the {max} a reader accepts; it was not written",
            plain.len(),
            index.packs.len(),
        )));
    }
    let mut sized = (plain.len() as u64).to_le_bytes().to_vec();
    sized.extend(zstd::bulk::compress(&plain, 3).expect("zstd compresses in memory"));
    Ok(crypto::seal(&keys.data_key, Kind::Index, b"", &sized))
}

pub fn decode_index(keys: &Keys, name: &str, bytes: &[u8]) -> Result<IndexFile, RepoError> {
    let corrupt = |why: String| RepoError::Corrupt {
        object: name.into(),
        reason: why,
    };
    let plain = crypto::open(&keys.data_key, Kind::Index, b"", bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    decode_index_plaintext(&plain).map_err(corrupt)
}

/// Decodes an index after decryption (a fuzz target's entry point).
pub fn decode_index_plaintext(plain: &[u8]) -> Result<IndexFile, String> {
    let raw = decompress_sized(plain, limits::INDEX as usize)?;
    let (mut index, rest): (IndexFile, _) =
        postcard::take_from_bytes(&raw).map_err(|e| format!("index: {e}"))?;
    for (pack, entries) in &index.packs {
        check_raw_lengths(entries, &format!("index (pack {})", hex::encode(pack)))?;
    }
    if !rest.is_empty() {
        // 32 bytes of input per name: what the list holds is no larger than what was read.
        let (names, rest): (Vec<ChunkId>, _) = postcard::take_from_bytes(rest)
            .map_err(|e| format!("index: the names of the merged index files: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "index: {} bytes after the names of the merged index files",
                rest.len()
            ));
        }
        if names.len() > SUPERSEDES_MAX {
            return Err(format!(
                "index: names {} merged index files, more than {SUPERSEDES_MAX}",
                names.len()
            ));
        }
        index.supersedes = names;
    }
    Ok(index)
}

/// No entry may promise a chunk plaintext larger than any config can make (it sizes buffers).
fn check_raw_lengths(entries: &[PackEntry], what: &str) -> Result<(), String> {
    match entries.iter().find(|e| e.raw_length > limits::CHUNK) {
        Some(e) => Err(format!(
            "{what} gives chunk {} a plaintext of {} bytes, more than {}",
            hex::encode(e.id),
            e.raw_length,
            limits::CHUNK
        )),
        None => Ok(()),
    }
}

/// Decompresses `declared size (u64 LE) || zstd data`. The declared size is authenticated with
/// the blob; it must be within `limit` and the data must decompress to exactly that many bytes,
/// so no input makes us allocate more than the smaller of the two.
pub fn decompress_sized(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let (size, body) = data
        .split_first_chunk::<8>()
        .ok_or("too short for its declared size")?;
    let size = u64::from_le_bytes(*size);
    if size > limit as u64 {
        return Err(format!(
            "declares {size} bytes of plaintext, more than the {limit} allowed"
        ));
    }
    let size = size as usize;
    let mut out = Vec::with_capacity(size);
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
    d.decompress_to_buffer(body, &mut out)
        .map_err(|e| format!("zstd (declared {size} bytes): {e}"))?;
    if out.len() != size {
        return Err(format!(
            "decompresses to {} bytes, not the {size} declared",
            out.len()
        ));
    }
    Ok(out)
}

/// What a recovery point can be trusted for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// All volumes captured at one instant (snapshots taken together).
    CrashConsistent,
    /// Captured while the application was quiesced (hooks or filesystem freeze).
    AppConsistent,
    /// Files read one by one from a live filesystem: each file is whole, the set is not an instant.
    FileLevel,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::CrashConsistent => "CrashConsistent",
            Consistency::AppConsistent => "AppConsistent",
            Consistency::FileLevel => "FileLevel",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "crash" | "crashconsistent" => Ok(Self::CrashConsistent),
            "app" | "appconsistent" => Ok(Self::AppConsistent),
            "file" | "filelevel" => Ok(Self::FileLevel),
            _ => Err(format!("{s:?}: expected crash, app or file")),
        }
    }
}

/// A run of a file's bytes: a chunk, or a hole of zeros.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub chunk: Option<ChunkId>,
    pub length: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct FileData {
    pub size: u64,
    pub extents: Vec<Extent>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File(FileData),
    Symlink(String),
    /// Another name of a file stored earlier in the tree (by its path).
    HardLink(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Path relative to the volume root, `/`-separated; "" is the root.
    pub path: String,
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum VolumeContent {
    Tree(Vec<Node>),
    Raw(FileData),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeManifest {
    pub name: String,
    pub content: VolumeContent,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// Bytes read and chunked (not reused from the parent point by metadata).
    pub bytes_read: u64,
    /// Chunks and bytes this point added to the repository (after compression and encryption).
    pub new_chunks: u64,
    pub stored_bytes_added: u64,
    /// Entries left out (FIFOs, sockets, devices, names that are not UTF-8, files that changed
    /// between scan and read) and the first few of them by name.
    pub skipped: u64,
    pub warnings: Vec<String>,
}

/// How many left-out entries a point names; the rest are only counted.
pub const MAX_WARNINGS: usize = 16;

impl Stats {
    /// Counts `count` entries left out, naming the first few of `warnings`.
    pub fn note_skipped(&mut self, count: u64, warnings: impl IntoIterator<Item = String>) {
        self.skipped += count;
        let room = MAX_WARNINGS.saturating_sub(self.warnings.len());
        self.warnings.extend(warnings.into_iter().take(room));
    }
}

/// One recovery point: written last, so that it exists only once everything it references is
/// durable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub id: String,
    /// RFC 3339 capture time.
    pub time: String,
    pub workload: String,
    pub consistency: Consistency,
    pub source_zone: Option<String>,
    pub parent: Option<String>,
    pub volumes: Vec<VolumeManifest>,
    pub stats: Stats,
    /// Who protected the workload, and its definition, so that a standby cluster can fail it
    /// over from the target location alone. `None` in parts and in points written before
    /// origins existed. Must stay the last field: see [`super::origin::decode_manifest_bytes`].
    pub origin: Option<Origin>,
}

/// Where a point comes from: the protecting cluster and the workload as it was defined there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The protecting cluster: the uid of its kube-system namespace, and a human name.
    pub cluster_uid: String,
    pub cluster_name: String,
    /// "StatefulSet" or "Deployment" (later "VirtualMachine"): kept as a string, checked by the
    /// caller.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The workload's definition as JSON (opaque to the repository): at most
    /// [`limits::DEFINITION`] bytes, a JSON object.
    pub definition: Vec<u8>,
}

impl Manifest {
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.volumes.iter().flat_map(|v| {
            let files: Box<dyn Iterator<Item = &FileData>> = match &v.content {
                VolumeContent::Raw(f) => Box::new(std::iter::once(f)),
                VolumeContent::Tree(nodes) => {
                    Box::new(nodes.iter().filter_map(|n| match &n.kind {
                        NodeKind::File(f) => Some(f),
                        _ => None,
                    }))
                }
            };
            files.flat_map(|f| f.extents.iter().filter_map(|e| e.chunk.as_ref()))
        })
    }
}

pub fn encode_manifest(keys: &Keys, m: &Manifest) -> Vec<u8> {
    encode_manifest_as(keys, &m.id, m)
}

/// Encodes a manifest bound to `name` (its point id, or `<point>/<part>` for a part).
pub fn encode_manifest_as(keys: &Keys, name: &str, m: &Manifest) -> Vec<u8> {
    // Serialized straight into the compressor: a large volume's manifest never exists
    // uncompressed in memory.
    let mut buf = crypto::seal_prefix(Kind::Manifest, 1 << 20);
    let at = buf.len();
    buf.extend_from_slice(&[0; 8]);
    let encoder = zstd::stream::Encoder::new(&mut buf, 3).expect("zstd encoder");
    let counted = postcard::to_io(m, Counting(encoder, 0)).expect("manifest serializes");
    let size = counted.1 as u64;
    counted.0.finish().expect("zstd finishes in memory");
    buf[at..at + 8].copy_from_slice(&size.to_le_bytes());
    crypto::seal_in_place(&keys.data_key, Kind::Manifest, name.as_bytes(), &mut buf);
    buf
}

/// Counts the bytes written through it (a manifest's plaintext size, declared before its data).
struct Counting<W>(W, usize);

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1 += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Decodes and checks a manifest after decryption (a fuzz target's entry point).
pub fn decode_manifest_plaintext(plain: &[u8]) -> Result<Manifest, String> {
    let raw = decompress_sized(plain, limits::MANIFEST as usize)?;
    let m = super::origin::decode_manifest_bytes(&raw)?;
    super::tree::check_manifest(&m)?;
    Ok(m)
}

pub fn decode_manifest(
    keys: &Keys,
    id: &str,
    name: &str,
    bytes: &[u8],
) -> Result<Manifest, RepoError> {
    decode_manifest_as(keys, id, id, name, bytes)
}

/// Decodes a manifest sealed under `bound` (see [`encode_manifest_as`]) that must name point `id`.
pub fn decode_manifest_as(
    keys: &Keys,
    bound: &str,
    id: &str,
    name: &str,
    bytes: &[u8],
) -> Result<Manifest, RepoError> {
    let corrupt = |why: String| RepoError::Corrupt {
        object: name.into(),
        reason: why,
    };
    let plain = crypto::open(&keys.data_key, Kind::Manifest, bound.as_bytes(), bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    let m = decode_manifest_plaintext(&plain).map_err(corrupt)?;
    if m.id != id {
        return Err(corrupt(format!("manifest names itself {}, not {id}", m.id)));
    }
    Ok(m)
}

/// Seals one chunk: `flag || data`, where flag 1 means zstd-compressed, encrypted in place.
pub fn seal_chunk(
    keys: &Keys,
    id: &ChunkId,
    data: &[u8],
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
) -> Vec<u8> {
    let compressed = if worth_compressing(data) {
        let c = compressor.get_or_insert_with(|| {
            zstd::bulk::Compressor::new(COMPRESSION_LEVEL).expect("zstd level")
        });
        c.compress(data)
            .ok()
            .filter(|z| z.len() + z.len() / 32 < data.len())
    } else {
        None
    };
    let body: &[u8] = compressed.as_deref().unwrap_or(data);
    let mut buf = crypto::seal_prefix(Kind::Chunk, body.len() + 1);
    buf.push(u8::from(compressed.is_some()));
    buf.extend_from_slice(body);
    crypto::seal_in_place(&keys.data_key, Kind::Chunk, id, &mut buf);
    buf
}

/// Reusable buffers for opening chunks on one thread.
#[derive(Default)]
pub struct ChunkScratch {
    plain: Vec<u8>,
    out: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

/// Opens a sealed chunk into `scratch` and returns its plaintext.
pub fn open_chunk_into<'a>(
    keys: &Keys,
    id: &ChunkId,
    raw_length: u32,
    sealed: &[u8],
    scratch: &'a mut ChunkScratch,
) -> Result<&'a [u8], crypto::CryptoError> {
    if raw_length > limits::CHUNK {
        return Err(crypto::CryptoError::Malformed);
    }
    let plain = crypto::open_into(&keys.data_key, Kind::Chunk, id, sealed, &mut scratch.plain)?;
    match plain.first() {
        Some(0) if plain.len() - 1 == raw_length as usize => Ok(&scratch.plain[1..]),
        Some(1) => {
            let d = match &mut scratch.decompressor {
                Some(d) => d,
                None => scratch.decompressor.insert(
                    zstd::bulk::Decompressor::new().map_err(|_| crypto::CryptoError::Malformed)?,
                ),
            };
            scratch.out.clear();
            scratch.out.reserve(raw_length as usize);
            d.decompress_to_buffer(&scratch.plain[1..], &mut scratch.out)
                .map_err(|_| crypto::CryptoError::Malformed)?;
            if scratch.out.len() != raw_length as usize {
                return Err(crypto::CryptoError::Malformed);
            }
            Ok(&scratch.out[..])
        }
        _ => Err(crypto::CryptoError::Malformed),
    }
}

/// Opens a sealed chunk and returns its plaintext.
pub fn open_chunk(
    keys: &Keys,
    id: &ChunkId,
    raw_length: u32,
    sealed: &[u8],
) -> Result<Vec<u8>, crypto::CryptoError> {
    let mut scratch = ChunkScratch::default();
    open_chunk_into(keys, id, raw_length, sealed, &mut scratch).map(<[u8]>::to_vec)
}

/// A cheap entropy estimate on a sample: incompressible data (media, encrypted or already
/// compressed files) skips the compressor entirely.
pub fn worth_compressing(data: &[u8]) -> bool {
    if data.len() < 128 {
        return false;
    }
    let sample = &data[..data.len().min(4096)];
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy < 7.5
}
