//! The push server's request handling (MBAP + PDU), end to end: a real in-process
//! `PushServer` on loopback; every input is sent on a fresh connection and checked against
//! a model by `tests/common/check_push.rs` (shared with `tests/props/prop_push.rs`).
//!
//! tokio-modbus 0.17's request decoder panics on some hostile headers (FC15 with more coils
//! than its bytes carry: an index out of bounds; FC16/FC23 quantities >= 0x8000 in builds with
//! overflow checks). Such a panic ends only that connection's task (tokio contains it; the
//! release profile unwinds), which the checker verifies: the connection closes, nothing is
//! written, the slot is freed and the server keeps serving. So panics located in
//! tokio-modbus's codec are counted here instead of aborting; any other panic aborts.
#![no_main]

#[path = "../../tests/common/check_push.rs"]
mod check_push;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

static HARNESS: OnceLock<check_push::Harness> = OnceLock::new();
static CONTAINED: AtomicU64 = AtomicU64::new(0);

fn harness() -> &'static check_push::Harness {
    HARNESS.get_or_init(|| {
        let abort = std::panic::take_hook(); // libFuzzer's: report and abort
        std::panic::set_hook(Box::new(move |info| {
            let upstream = info.location().is_some_and(|l| {
                l.file().contains("tokio-modbus") && l.file().ends_with("codec/mod.rs")
            });
            if upstream {
                let n = CONTAINED.fetch_add(1, Relaxed) + 1;
                if n.is_power_of_two() {
                    eprintln!("contained tokio-modbus codec panics so far: {n} ({info})");
                }
                return;
            }
            abort(info);
        }));
        check_push::Harness::start()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness().check(data);
});
