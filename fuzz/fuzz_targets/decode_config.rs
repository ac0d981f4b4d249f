//! A repository's config is the one object read before anything is authenticated: any bytes
//! are refused or parsed into bounded fields, and unlocking never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use site_recovery::repository::format::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Config::parse("fuzz", data) {
        let _ = c.unlock("fuzz", b"0123456789abcdef0123456789abcdef");
    }
});
