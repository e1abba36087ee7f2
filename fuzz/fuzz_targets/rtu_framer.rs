//! The RTU request framer under arbitrary byte streams in arbitrary chunks, with the
//! invariants of `tests/common/check_framer.rs` asserted on every input (the same checker
//! the proptest suite `tests/props/prop_framer.rs` runs in CI).
#![no_main]

#[path = "../../tests/common/check_framer.rs"]
mod check_framer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_framer::check(&check_framer::decode(data));
});
