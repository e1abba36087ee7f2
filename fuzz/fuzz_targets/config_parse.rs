//! Config and profile parsing on arbitrary text: never a panic, errors name the origin,
//! and whatever is accepted satisfies the invariants of `tests/common/check_config.rs`.
#![no_main]

#[path = "../../tests/common/check_config.rs"]
mod check_config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_config::check_bytes(data);
});
