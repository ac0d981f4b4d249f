//! Keys and sealed blobs. A repository has one random 32-byte master key, stored in `config`
//! wrapped by a key-encryption key derived from the vault's Secret. From the master key come a
//! chunk-id key (keyed BLAKE3, so ids reveal nothing about content) and a data key. Every blob
//! is sealed with AES-256-GCM under its own key, `BLAKE3-keyed(data key, random salt)`, so nonce
//! reuse cannot happen however many blobs a repository holds; the additional data binds a
//! blob to its kind and name (a chunk's id, a point's id), so blobs cannot be swapped.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::Rng;

pub const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
/// Bytes a sealed blob adds to its plaintext: kind, salt, tag.
pub const OVERHEAD: usize = 1 + SALT_LEN + 16;

/// What a sealed blob is; part of its authenticated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Chunk = b'c',
    PackHeader = b'h',
    Index = b'i',
    Manifest = b'm',
    MasterKey = b'k',
    /// A fence record (`fences/…`), bound to its workload and epoch.
    Fence = b'f',
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "authentication failed: the data was modified, is not from this repository, or the key is wrong"
    )]
    Authentication,
    #[error("blob is too short or of the wrong kind")]
    Malformed,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

/// The key that wraps a repository's master key, derived from a Secret's bytes.
pub fn key_encryption_key(secret: &[u8]) -> [u8; KEY_LEN] {
    blake3::derive_key(
        "site-recovery 2026 repository key-encryption-key v1",
        secret,
    )
}

fn cipher(key: &[u8; KEY_LEN], salt: &[u8]) -> Aes256Gcm {
    let blob_key = blake3::keyed_hash(key, salt);
    Aes256Gcm::new(blob_key.as_bytes().into())
}

/// Seals `plaintext` under `key`: `kind || salt || AES-256-GCM(ciphertext || tag)`.
pub fn seal(key: &[u8; KEY_LEN], kind: Kind, name: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = random_bytes();
    let mut aad = Vec::with_capacity(1 + name.len());
    aad.push(kind as u8);
    aad.extend_from_slice(name);
    let body = cipher(key, &salt)
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of in-memory data cannot fail");
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(kind as u8);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&body);
    out
}

/// Seals in place: `buf` holds `kind || salt || plaintext` as [`seal_prefix`] and the caller left
/// them; the plaintext is encrypted where it is and the tag appended. Saves a copy per chunk.
#[allow(deprecated)]
pub fn seal_in_place(key: &[u8; KEY_LEN], kind: Kind, name: &[u8], buf: &mut Vec<u8>) {
    use aes_gcm::aead::AeadInPlace;
    let mut aad = Vec::with_capacity(1 + name.len());
    aad.push(kind as u8);
    aad.extend_from_slice(name);
    let salt: [u8; SALT_LEN] = buf[1..1 + SALT_LEN]
        .try_into()
        .expect("prefix written by seal_prefix");
    let tag = cipher(key, &salt)
        .encrypt_in_place_detached(&Nonce::default(), &aad, &mut buf[1 + SALT_LEN..])
        .expect("AES-GCM encryption of in-memory data cannot fail");
    buf.extend_from_slice(&tag);
}

/// Starts a blob for [`seal_in_place`]: `kind || fresh salt`.
pub fn seal_prefix(kind: Kind, capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(OVERHEAD + capacity);
    buf.push(kind as u8);
    buf.extend_from_slice(&random_bytes::<SALT_LEN>());
    buf
}

/// Opens a sealed blob into `buf` (reused across calls) and returns the plaintext.
#[allow(deprecated)]
pub fn open_into<'a>(
    key: &[u8; KEY_LEN],
    kind: Kind,
    name: &[u8],
    sealed: &[u8],
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], CryptoError> {
    use aes_gcm::aead::AeadInPlace;
    if sealed.len() < OVERHEAD || sealed[0] != kind as u8 {
        return Err(CryptoError::Malformed);
    }
    let (salt, body) = sealed[1..].split_at(SALT_LEN);
    let (ciphertext, tag) = body.split_at(body.len() - 16);
    let tag = aes_gcm::Tag::try_from(tag).map_err(|_| CryptoError::Malformed)?;
    let mut aad = Vec::with_capacity(1 + name.len());
    aad.push(kind as u8);
    aad.extend_from_slice(name);
    buf.clear();
    buf.extend_from_slice(ciphertext);
    cipher(key, salt)
        .decrypt_in_place_detached(&Nonce::default(), &aad, buf, &tag)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(&buf[..])
}

/// Opens a blob sealed by [`seal`] with the same key, kind and name.
pub fn open(
    key: &[u8; KEY_LEN],
    kind: Kind,
    name: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < OVERHEAD || sealed[0] != kind as u8 {
        return Err(CryptoError::Malformed);
    }
    let (salt, body) = sealed[1..].split_at(SALT_LEN);
    let mut aad = Vec::with_capacity(1 + name.len());
    aad.push(kind as u8);
    aad.extend_from_slice(name);
    cipher(key, salt)
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Authentication)
}

/// The working keys of an open repository.
#[derive(Clone)]
pub struct Keys {
    pub id_key: [u8; KEY_LEN],
    pub data_key: [u8; KEY_LEN],
}

impl Keys {
    pub fn from_master(master: &[u8; KEY_LEN]) -> Self {
        Self {
            id_key: blake3::derive_key("site-recovery 2026 chunk-id v1", master),
            data_key: blake3::derive_key("site-recovery 2026 data v1", master),
        }
    }

    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id_key, data).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_detect_tampering_swaps_and_wrong_keys() {
        let key = [1u8; 32];
        let sealed = seal(&key, Kind::Chunk, b"id-a", b"hello world");
        assert_eq!(
            open(&key, Kind::Chunk, b"id-a", &sealed).unwrap(),
            b"hello world"
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            open(&key, Kind::Chunk, b"id-a", &flipped),
            Err(CryptoError::Authentication)
        ));
        assert!(
            open(&key, Kind::Chunk, b"id-b", &sealed).is_err(),
            "bound to its name"
        );
        assert!(
            open(&key, Kind::Manifest, b"id-a", &sealed).is_err(),
            "bound to its kind"
        );
        assert!(
            open(&[2u8; 32], Kind::Chunk, b"id-a", &sealed).is_err(),
            "wrong key"
        );
        assert_ne!(
            seal(&key, Kind::Chunk, b"x", b"same"),
            seal(&key, Kind::Chunk, b"x", b"same"),
            "fresh salt per blob"
        );
    }

    #[test]
    fn chunk_ids_depend_on_the_key() {
        let a = Keys::from_master(&[1; 32]);
        let b = Keys::from_master(&[2; 32]);
        assert_ne!(a.chunk_id(b"data"), b.chunk_id(b"data"));
        assert_ne!(a.chunk_id(b"data"), *blake3::hash(b"data").as_bytes());
    }
}
