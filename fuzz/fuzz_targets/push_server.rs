//! The push server's request handling (MBAP + PDU), end to end: a real in-process
//! `PushServer` on loopback; every input is sent on a fresh connection and checked against
//! a model by `tests/common/check_push.rs` (shared with `tests/prop_push.rs`).
#![no_main]

#[path = "../../tests/common/check_push.rs"]
mod check_push;

use std::sync::OnceLock;

static HARNESS: OnceLock<check_push::Harness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(check_push::Harness::start).check(data);
});
