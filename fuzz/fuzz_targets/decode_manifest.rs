//! Manifest decoding after decryption: any bytes either decode or are refused, never a panic,
//! an unbounded allocation or a hang. Both layers are fuzzed: the zstd frame and, directly, the
//! binary manifest encoding behind it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::format::{Manifest, decode_manifest_plaintext};

fuzz_target!(|data: &[u8]| {
    let _ = decode_manifest_plaintext(data);
    let _ = postcard::from_bytes::<Manifest>(data);
});
