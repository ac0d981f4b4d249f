//! Manifest decoding after decryption: any bytes either decode or are refused, never a panic,
//! an unbounded allocation or a hang. Both layers are fuzzed: the sized zstd frame and, directly,
//! the binary manifest encoding behind it (both layouts: with an origin, and the one before
//! origins) together with the tree and origin checks a restore and a failover rely on.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::format::decode_manifest_plaintext;
use site_recovery::repository::origin::decode_manifest_bytes;
use site_recovery::repository::tree::check_manifest;

fuzz_target!(|data: &[u8]| {
    let _ = decode_manifest_plaintext(data);
    if let Ok(m) = decode_manifest_bytes(data) {
        let _ = check_manifest(&m);
    }
});
