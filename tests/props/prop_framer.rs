//! Property tests of the RTU framer (CI's stand-in for the `rtu_framer` fuzz target, which
//! needs cargo-fuzz and is not assumed on CI): the fuzz target's invariants on arbitrary bytes
//! (same checker, `tests/common/check_framer.rs`), and bus-level properties: any split of a
//! frame, garbage and foreign traffic between our requests, back-to-back frames.

use crate::check_framer;

use airbridge_modbus::rtu_frame::{Frame, Framer, Request};
use check_framer::{read_request, with_crc, Case, Op};
use proptest::prelude::*;

/// One thing on the bus.
#[derive(Debug, Clone)]
enum Seg {
    /// A read request to our unit.
    OurRead(u8, u16, u16),
    /// A write of registers to our unit (answered with an exception by the slave).
    OurWrite(u16, Vec<u16>),
    /// Another master's read request to another unit.
    OtherRead(u8, u8, u16, u16),
    /// Another unit's read response with this many registers.
    OtherResponse(u8, u8, u8),
    /// A broadcast FC06 or FC16 write.
    Broadcast(bool, u16, Vec<u16>),
    /// Line noise.
    Garbage(Vec<u8>),
}

const OURS: u8 = 1;

fn other_unit() -> impl Strategy<Value = u8> {
    prop_oneof![2u8..=247, Just(255u8)]
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => (prop_oneof![Just(3u8), Just(4u8)], any::<u16>(), 1u16..=125)
            .prop_map(|(f, a, c)| Seg::OurRead(f, a, c)),
        1 => (any::<u16>(), prop::collection::vec(any::<u16>(), 1..=10))
            .prop_map(|(a, v)| Seg::OurWrite(a, v)),
        2 => (other_unit(), prop_oneof![Just(3u8), Just(4u8)], any::<u16>(), 1u16..=125)
            .prop_map(|(u, f, a, c)| Seg::OtherRead(u, f, a, c)),
        2 => (other_unit(), prop_oneof![Just(3u8), Just(4u8)], 1u8..=125)
            .prop_map(|(u, f, n)| Seg::OtherResponse(u, f, n)),
        1 => (any::<bool>(), any::<u16>(), prop::collection::vec(any::<u16>(), 1..=4))
            .prop_map(|(s, a, v)| Seg::Broadcast(s, a, v)),
        2 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Seg::Garbage),
    ]
}

fn write_multiple(unit: u8, address: u16, values: &[u16]) -> Vec<u8> {
    let mut b = vec![unit, 16];
    b.extend_from_slice(&address.to_be_bytes());
    b.extend_from_slice(&(values.len() as u16).to_be_bytes());
    b.push(2 * values.len() as u8);
    for v in values {
        b.extend_from_slice(&v.to_be_bytes());
    }
    with_crc(b)
}

/// The bytes of a segment and the frame the framer must yield for it (none for garbage).
fn encode(s: &Seg) -> (Vec<u8>, Option<Frame>) {
    match s {
        Seg::OurRead(f, a, c) => (
            read_request(OURS, *f, *a, *c),
            Some(Frame::Request(Request::Read {
                function: *f,
                address: *a,
                count: *c,
            })),
        ),
        Seg::OurWrite(a, v) => (
            write_multiple(OURS, *a, v),
            Some(Frame::Request(Request::Other { function: 16 })),
        ),
        Seg::OtherRead(u, f, a, c) => (
            read_request(*u, *f, *a, *c),
            Some(Frame::Foreign {
                unit: *u,
                function: *f,
            }),
        ),
        Seg::OtherResponse(u, f, n) => {
            let mut b = vec![*u, *f, 2 * n];
            b.extend((0..2 * u16::from(*n)).map(|i| (i * 37) as u8));
            (
                with_crc(b),
                Some(Frame::Foreign {
                    unit: *u,
                    function: *f,
                }),
            )
        }
        Seg::Broadcast(single, a, v) => {
            if *single {
                let mut b = vec![0, 6];
                b.extend_from_slice(&a.to_be_bytes());
                b.extend_from_slice(&v[0].to_be_bytes());
                (with_crc(b), Some(Frame::Broadcast { function: 6 }))
            } else {
                (
                    write_multiple(0, *a, v),
                    Some(Frame::Broadcast { function: 16 }),
                )
            }
        }
        Seg::Garbage(g) => (g.clone(), None),
    }
}

/// Feed `bytes` cut at `cuts` (sizes, cycled), as the RTU slave does.
fn feed(f: &mut Framer, bytes: &[u8], cuts: &[usize], out: &mut Vec<Frame>) {
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(8)
            .clamp(1, rest.len());
        i += 1;
        let mut chunk = &rest[..n];
        rest = &rest[n..];
        while !chunk.is_empty() {
            let k = f.push(chunk);
            chunk = &chunk[k..];
            while let Some(fr) = f.next_frame() {
                out.push(fr);
            }
        }
    }
}

/// `want` appears in `got` in order (other frames may sit between).
fn is_subsequence(want: &[Frame], got: &[Frame]) -> bool {
    let mut it = got.iter();
    want.iter().all(|w| it.any(|g| g == w))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The fuzz target's invariants, on arbitrary raw input decoded the same way.
    #[test]
    fn fuzz_invariants_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        check_framer::check(&check_framer::decode(&data));
    }

    /// The same invariants on structured streams: real frames, noise and silences mixed.
    #[test]
    fn fuzz_invariants_on_bus_traffic(
        unit in prop_oneof![Just(1u8), Just(0u8), Just(247u8), any::<u8>()],
        segs in prop::collection::vec((seg(), any::<bool>()), 0..12),
        cuts in prop::collection::vec(1usize..70, 1..8),
        follow in (prop_oneof![Just(3u8), Just(4u8)], any::<u16>(), 1u16..=125),
    ) {
        let mut ops = Vec::new();
        for (s, silence) in &segs {
            let (bytes, _) = encode(s);
            for c in bytes.chunks(cuts[ops.len() % cuts.len()]) {
                ops.push(Op::Bytes(c.to_vec()));
            }
            if *silence {
                ops.push(Op::Silence);
            }
        }
        check_framer::check(&Case { unit, ops, follow, follow_chunks: cuts.clone() });
    }

    /// A frame split at any boundary is yielded once, whole, and nothing else.
    #[test]
    fn any_split_of_a_frame(s in seg().prop_filter("a frame", |s| !matches!(s, Seg::Garbage(_))),
                            at in any::<prop::sample::Index>()) {
        let (bytes, want) = encode(&s);
        let k = at.index(bytes.len() - 1) + 1;
        let mut f = Framer::new(OURS);
        let mut got = Vec::new();
        feed(&mut f, &bytes[..k], &[k], &mut got);
        feed(&mut f, &bytes[k..], &[bytes.len()], &mut got);
        got.extend(f.on_silence());
        prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(f.stats().garbage_bytes, 0);
    }

    /// Frames separated by silences (as on a real bus), in arbitrary chunks, with noise and
    /// other masters' traffic between them: every frame is yielded, classified right, in order.
    #[test]
    fn garbage_and_foreign_traffic_between_silences(
        segs in prop::collection::vec(seg(), 1..20),
        cuts in prop::collection::vec(1usize..70, 1..8),
    ) {
        let mut f = Framer::new(OURS);
        let mut got = Vec::new();
        let mut want = Vec::new();
        for s in &segs {
            let (bytes, w) = encode(s);
            want.extend(w);
            feed(&mut f, &bytes, &cuts, &mut got);
            got.extend(f.on_silence());
        }
        prop_assert!(is_subsequence(&want, &got), "want {:?}\n got {:?}", want, got);
        // Nothing yielded as a request that was not sent as one, unless noise carried it.
        let garbage = segs.iter().any(|s| matches!(s, Seg::Garbage(_)));
        if !garbage {
            prop_assert_eq!(&got, &want);
        }
    }

    /// Back to back without any silence and without noise: every request of ours is found.
    #[test]
    fn back_to_back_frames_without_silence(
        segs in prop::collection::vec(seg().prop_filter("no noise", |s| !matches!(s, Seg::Garbage(_))), 1..20),
        cuts in prop::collection::vec(1usize..70, 1..8),
    ) {
        let mut f = Framer::new(OURS);
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for s in &segs {
            let (b, w) = encode(s);
            bytes.extend(b);
            if let Some(w @ Frame::Request(_)) = w {
                want.push(w);
            }
        }
        let mut got = Vec::new();
        feed(&mut f, &bytes, &cuts, &mut got);
        got.extend(f.on_silence());
        let requests: Vec<Frame> = got.into_iter().filter(|g| matches!(g, Frame::Request(_))).collect();
        prop_assert_eq!(requests, want);
    }
}
