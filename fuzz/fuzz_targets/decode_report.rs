//! Agents' reports travel in an annotation of their registration Lease, which a compromised
//! node could write: the operator's decoder refuses anything malformed without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::api::work::parse_reports;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let _ = parse_reports(Some(&text));
});
