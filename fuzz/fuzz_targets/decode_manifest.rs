//! Manifest decoding after decryption: any bytes either decode or are refused, never a panic,
//! an unbounded allocation or a hang. Both layers are fuzzed: the sized zstd frame and, directly,
//! the binary manifest encoding behind it together with the tree checks a restore relies on.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::format::{Manifest, decode_manifest_plaintext};
use site_recovery::repository::tree::check_manifest;

fuzz_target!(|data: &[u8]| {
    let _ = decode_manifest_plaintext(data);
    if let Ok(m) = postcard::from_bytes::<Manifest>(data) {
        let _ = check_manifest(&m);
    }
});
