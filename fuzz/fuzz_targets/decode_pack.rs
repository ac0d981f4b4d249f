//! A pack's trailer is not authenticated and its header is decoded after decryption: neither
//! may panic (a length past the pack, entries pointing outside it), whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::crypto::Keys;
use site_recovery::repository::format::{decode_pack_header_plaintext, read_pack_header};

fuzz_target!(|data: &[u8]| {
    let keys = Keys::from_master(&[7u8; 32]);
    let _ = read_pack_header(&keys, "fuzz", data);
    let body = data.first().map_or(0, |b| *b as usize * 4096);
    let _ = decode_pack_header_plaintext(data, body);
});
