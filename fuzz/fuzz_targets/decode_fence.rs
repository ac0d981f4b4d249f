//! Fence records decide which cluster may write a workload's points: decoding one after
//! decryption is bounded and never panics, and one that names another workload or epoch is
//! refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::fence::decode_fence_plaintext;

fuzz_target!(|data: &[u8]| {
    let _ = decode_fence_plaintext(data, "apps/db", 1);
});
