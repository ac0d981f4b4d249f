//! Agents' reports and queued points travel in annotations of their registration Lease, which
//! a compromised node could write: the operator's decoders refuse anything malformed or
//! oversized without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::api::work::{decode_queued, decode_reports};

fuzz_target!(|data: &[u8]| {
    let _ = decode_reports(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_queued(Some(&text.to_string()));
    }
});
