//! Property tests of the push server's request handling (CI's stand-in for the
//! `push_server` fuzz target): the same harness and model (`tests/common/check_push.rs`), a
//! real `PushServer` on 127.0.0.1, fed MBAP streams built from KSEM-like writes, reads,
//! writes outside the push regions, other function codes, malformed headers and noise.

use crate::check_push;

use std::sync::OnceLock;

use proptest::prelude::*;

static HARNESS: OnceLock<check_push::Harness> = OnceLock::new();

fn harness() -> &'static check_push::Harness {
    HARNESS.get_or_init(check_push::Harness::start)
}

fn mbap(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut b = tid.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    b.push(unit);
    b.extend_from_slice(pdu);
    b
}

/// Addresses near the region edges (0, 40, 148, 512, 792, 8192, 8250) and anywhere.
fn address() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![0u16, 39, 40, 146, 147, 148, 511, 512, 791, 792, 8191, 8192, 8249, 8250]),
        2 => 0u16..200,
        1 => 500u16..800,
        1 => any::<u16>(),
    ]
}

/// One request PDU.
fn pdu() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // FC16, well formed.
        4 => (address(), prop::collection::vec(any::<u16>(), 0..=125)).prop_map(|(a, v)| {
            let mut p = vec![16];
            p.extend_from_slice(&a.to_be_bytes());
            p.extend_from_slice(&(v.len() as u16).to_be_bytes());
            p.push(2 * v.len() as u8);
            v.iter().for_each(|w| p.extend_from_slice(&w.to_be_bytes()));
            p
        }),
        // FC06.
        2 => (address(), any::<u16>()).prop_map(|(a, v)| {
            let mut p = vec![6];
            p.extend_from_slice(&a.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
            p
        }),
        // FC03/FC04 with any count.
        3 => (prop_oneof![Just(3u8), Just(4u8)], address(), prop_oneof![1u16..=125, any::<u16>()])
            .prop_map(|(f, a, c)| {
                let mut p = vec![f];
                p.extend_from_slice(&a.to_be_bytes());
                p.extend_from_slice(&c.to_be_bytes());
                p
            }),
        // Anything else, including malformed PDUs of the above.
        2 => prop::collection::vec(any::<u8>(), 1..12),
    ]
}

/// The model is not vacuous: a KSEM push, reads, refused writes and an unknown function
/// each move the counter they should (checked against the model by `check`).
#[test]
fn the_model_sees_every_kind_of_request() {
    let h = harness();
    let mut fc16 = vec![16, 0, 0, 0, 28, 56];
    (0..28u16).for_each(|w| fc16.extend_from_slice(&(w * 3).to_be_bytes()));
    let mut data = mbap(1, 1, &fc16);
    data.extend(mbap(2, 1, &[3, 0, 0, 0, 28]));
    data.extend(mbap(3, 1, &[16, 0x20, 0, 0, 1, 2, 0, 7]));
    data.extend(mbap(4, 1, &[0x11]));
    data.extend(mbap(5, 1, &[4, 0, 0, 0, 0]));
    let before = (
        h.stats()
            .writes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        h.stats().reads.load(std::sync::atomic::Ordering::Relaxed),
        h.stats()
            .writes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        h.stats()
            .bad_requests
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    h.check(&data);
    let after = (
        h.stats()
            .writes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        h.stats().reads.load(std::sync::atomic::Ordering::Relaxed),
        h.stats()
            .writes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        h.stats()
            .bad_requests
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    // Other tests share the harness; each check runs alone, so at least these moved.
    assert!(
        after.0 > before.0 && after.1 > before.1 && after.2 > before.2 && after.3 >= before.3 + 2
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Streams of requests, some with a malformed header or trailing noise.
    #[test]
    fn requests_are_answered_as_the_model_says(
        reqs in prop::collection::vec((any::<u16>(), any::<u8>(), pdu()), 0..12),
        tail in prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..20)],
        bad_header in prop::option::of((any::<prop::sample::Index>(), 0usize..7, any::<u8>())),
    ) {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for (tid, unit, pdu) in &reqs {
            starts.push(data.len());
            data.extend(mbap(*tid, *unit, pdu));
        }
        if let (Some((i, off, v)), false) = (bad_header, starts.is_empty()) {
            let at = starts[i.index(starts.len())] + off;
            data[at] = v;
        }
        data.extend(tail);
        harness().check(&data);
    }

    /// Arbitrary bytes, as the fuzz target gets them.
    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness().check(&data);
    }
}

/// tokio-modbus 0.17 computes an FC16 header's `quantity * 2` in u16: quantity ≥ 0x8000
/// overflows (a panic of the connection task in debug builds, a rejected frame in release).
/// Either way the connection is closed, nothing is written, and the server keeps serving.
#[test]
fn an_fc16_quantity_that_overflows_only_closes_the_connection() {
    let h = harness();
    h.check(&mbap(7, 1, &[16, 0, 0, 0x80, 0x00, 0x00]));
    h.check(&mbap(8, 1, &[16, 0, 0, 0x80, 0x01, 0x02, 0, 1]));
    h.check(&mbap(9, 1, &[6, 0, 1, 0, 9]));
}

/// tokio-modbus 0.17 decodes FC15 by indexing `quantity` bits into `byte count` bytes without
/// checking one against the other: a panic (index out of bounds) in release builds too, found
/// by `fuzz/fuzz_targets/push_server.rs`. It ends only that connection's task.
#[test]
fn an_fc15_with_more_coils_than_bytes_only_closes_the_connection() {
    let h = harness();
    h.check(&mbap(10, 1, &[15, 0, 0, 0, 100, 1, 0xFF]));
    h.check(&mbap(11, 1, &[3, 0, 0, 0, 10]));
}

/// That containment relies on unwinding: with `panic = "abort"` a KSEM (or anyone it lets in)
/// could kill the gateway with one frame. Keep the release profile unwinding.
#[test]
fn the_release_profile_unwinds() {
    let manifest = include_str!("../../Cargo.toml");
    assert!(
        !manifest.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("").replace(' ', "");
            l == "panic=\"abort\""
        }),
        "panic = \"abort\" would turn tokio-modbus decoder panics into a remote crash"
    );
}
