//! Index and pack-header decoding after decryption: refuse or decode, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::format::{IndexFile, PackEntry, decode_index_plaintext};

fuzz_target!(|data: &[u8]| {
    let _ = decode_index_plaintext(data);
    let _ = postcard::from_bytes::<IndexFile>(data);
    let _ = postcard::from_bytes::<Vec<PackEntry>>(data);
});
