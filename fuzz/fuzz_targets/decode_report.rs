//! Agents' reports travel in an annotation of their registration Lease, which a compromised
//! node could write: the operator's decoder refuses anything malformed or oversized without
//! panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::api::work::decode_reports;

fuzz_target!(|data: &[u8]| {
    let _ = decode_reports(data);
});
