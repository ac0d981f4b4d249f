//! Lock files are written by any holder of storage access: decoding one is bounded and never
//! panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::lock::decode_lock;

fuzz_target!(|data: &[u8]| {
    let _ = decode_lock(data);
});
