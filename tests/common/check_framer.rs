//! Invariants of the RTU request framer under an arbitrary byte stream in arbitrary chunks.
//!
//! Shared by the libFuzzer target `fuzz/fuzz_targets/rtu_framer.rs` and the proptest suite
//! `tests/props/prop_framer.rs` (included by path in both), so CI checks exactly what the fuzzer
//! checks. Every violation panics with what went wrong.
//!
//! Checked, while feeding the stream the way the RTU slave does (push, drain, push the rest;
//! `on_silence` where the stream says the line went quiet):
//! - the framer never buffers more than one maximum frame ([`MAX_ADU`]);
//! - `push` always makes progress once drained (no stuck buffer);
//! - every frame it yields is a run of bytes of the stream that ends exactly where the framer
//!   stopped consuming, starts after the previous frame, has a valid CRC and carries the unit
//!   and function code it was classified with; requests are for our unit only (never unit 0);
//! - its counters agree with what it yielded;
//! - after any of that, a silence, then a valid read request to our unit (in arbitrary
//!   chunks) is yielded exactly, and nothing else.
#![allow(dead_code)]

use airbridge_modbus::crc::{crc16, frame_crc_ok};
use airbridge_modbus::rtu_frame::{Frame, Framer, FramerStats, Request, MAX_ADU};

/// One step of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// These bytes arrive in one read.
    Bytes(Vec<u8>),
    /// The line is silent for the frame timeout.
    Silence,
}

/// A whole case: the framer's unit, the stream, and the request that must be recognised
/// after it (function 3 or 4, address, count), delivered in chunks of these sizes.
#[derive(Debug, Clone)]
pub struct Case {
    pub unit: u8,
    pub ops: Vec<Op>,
    pub follow: (u8, u16, u16),
    pub follow_chunks: Vec<usize>,
}

/// What a run saw (for coverage statistics in the property tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub requests: u64,
    pub foreign: u64,
    pub broadcast: u64,
    pub stats: FramerStats,
}

/// An 8-byte read request with its CRC.
pub fn read_request(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
    let mut f = vec![unit, function];
    f.extend_from_slice(&address.to_be_bytes());
    f.extend_from_slice(&count.to_be_bytes());
    with_crc(f)
}

/// `body` followed by its CRC-16/MODBUS, low byte first.
pub fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let c = crc16(&body).to_le_bytes();
    body.extend_from_slice(&c);
    body
}

/// Decode raw fuzz bytes into a case: byte 0 the unit, bytes 1..3 the seed of the chunking
/// (chunk sizes 1..=64 and where silences fall), bytes 3..5 the follow-up request's address,
/// the rest the stream. Seeds made of real frames after five header bytes stay meaningful.
pub fn decode(data: &[u8]) -> Case {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let unit = byte(0);
    let mut rng =
        XorShift(0x9E37_79B9_7F4A_7C15 ^ u64::from(u16::from_le_bytes([byte(1), byte(2)])));
    let address = u16::from_be_bytes([byte(3), byte(4)]);
    let stream = data.get(5..).unwrap_or(&[]);
    let mut ops = Vec::new();
    let mut rest = stream;
    // One chunk in four is followed by a silence; the seed decides which.
    while !rest.is_empty() {
        let n = (1 + rng.below(64) as usize).min(rest.len());
        ops.push(Op::Bytes(rest[..n].to_vec()));
        rest = &rest[n..];
        if rng.below(4) == 0 {
            ops.push(Op::Silence);
        }
    }
    let function = if rng.below(2) == 0 { 3 } else { 4 };
    let count = 1 + rng.below(125) as u16;
    let follow_chunks = (0..8).map(|_| 1 + rng.below(8) as usize).collect();
    Case {
        unit,
        ops,
        follow: (function, address, count),
        follow_chunks,
    }
}

struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The state of one run: the framer and everything it was given.
struct Run {
    f: Framer,
    /// Every byte the framer accepted, in order.
    stream: Vec<u8>,
    /// End (in `stream`) of the last frame yielded or the last point everything was dropped.
    floor: usize,
    seen: Seen,
}

impl Run {
    /// Feed `bytes` as the RTU slave does; returns the frames yielded.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut stuck = 0;
        while !rest.is_empty() {
            let n = self.f.push(rest);
            assert!(n <= rest.len(), "push took {n} of {}", rest.len());
            self.stream.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            assert!(
                self.f.buffered() <= MAX_ADU,
                "buffered {}",
                self.f.buffered()
            );
            while let Some(fr) = self.f.next_frame() {
                assert!(self.f.buffered() <= MAX_ADU);
                let end = self.stream.len() - self.f.buffered();
                self.check(fr, end);
                out.push(fr);
            }
            stuck = if n == 0 { stuck + 1 } else { 0 };
            assert!(
                stuck < 2,
                "push takes nothing even after draining: buffer stuck"
            );
        }
        out
    }

    fn silence(&mut self) -> Option<Frame> {
        let end = self.stream.len();
        let fr = self.f.on_silence();
        if let Some(fr) = fr {
            self.check(fr, end);
        }
        assert_eq!(self.f.buffered(), 0, "silence leaves the buffer empty");
        self.floor = end;
        fr
    }

    /// `fr` was yielded and ends at `end` in the stream.
    fn check(&mut self, fr: Frame, end: usize) {
        assert!(
            end >= self.floor && end <= self.stream.len(),
            "{fr:?} ends at {end}, before the previous frame's end {}",
            self.floor
        );
        let window = &self.stream[self.floor..end];
        let ours = self.f.unit();
        // The frame's bytes: some suffix of `window` of a plausible length with a valid CRC.
        let found = |first: u8, function: u8, exact: Option<usize>| {
            (4..=window.len().min(MAX_ADU))
                .filter(|l| exact.is_none_or(|e| e == *l))
                .any(|l| {
                    let b = &window[window.len() - l..];
                    b[0] == first && b[1] == function && frame_crc_ok(b)
                })
        };
        match fr {
            Frame::Request(req) => {
                assert!(
                    ours != 0,
                    "a request yielded by a framer for unit 0: {fr:?}"
                );
                match req {
                    Request::Read {
                        function,
                        address,
                        count,
                    } => {
                        assert!(matches!(function, 3 | 4), "{fr:?}");
                        let want = read_request(ours, function, address, count);
                        assert!(
                            window.ends_with(&want),
                            "{fr:?} is not the 8 bytes before {end}: {:02X?}",
                            &window[window.len().saturating_sub(8)..]
                        );
                    }
                    Request::Other { function } => {
                        assert!(
                            found(ours, function, None),
                            "{fr:?}: no CRC-valid frame ends at {end}"
                        );
                    }
                }
                self.seen.requests += 1;
            }
            Frame::Foreign { unit, function } => {
                assert!(
                    found(unit, function, None),
                    "{fr:?}: no CRC-valid frame ends at {end}"
                );
                self.seen.foreign += 1;
            }
            Frame::Broadcast { function } => {
                assert!(
                    found(0, function, None),
                    "{fr:?}: no CRC-valid frame ends at {end}"
                );
                self.seen.broadcast += 1;
            }
        }
        self.floor = end;
    }
}

/// Run `case` and check every invariant; panics on the first violation.
pub fn check(case: &Case) -> Seen {
    let mut run = Run {
        f: Framer::new(case.unit),
        stream: Vec::new(),
        floor: 0,
        seen: Seen::default(),
    };
    for op in &case.ops {
        match op {
            Op::Bytes(b) => {
                run.feed(b);
            }
            Op::Silence => {
                run.silence();
            }
        }
    }
    run.silence();

    // Counters agree with what was yielded.
    let st = run.f.stats();
    assert_eq!(
        (st.requests, st.foreign, st.broadcast),
        (run.seen.requests, run.seen.foreign, run.seen.broadcast),
        "counters disagree with the frames yielded"
    );

    // Recovery: after any garbage and a silence, a valid request is recognised.
    let (function, address, count) = case.follow;
    let req = read_request(case.unit, function, address, count);
    let mut got = Vec::new();
    let mut rest = &req[..];
    for &n in case.follow_chunks.iter().chain(std::iter::repeat(&8)) {
        if rest.is_empty() {
            break;
        }
        let n = n.clamp(1, rest.len());
        got.extend(run.feed(&rest[..n]));
        rest = &rest[n..];
    }
    let want = if case.unit == 0 {
        Frame::Broadcast { function }
    } else {
        Frame::Request(Request::Read {
            function,
            address,
            count,
        })
    };
    assert_eq!(
        got,
        vec![want],
        "the request after the silence was not recognised"
    );
    assert_eq!(run.f.buffered(), 0, "bytes left over after the request");
    run.seen.stats = run.f.stats();
    run.seen
}
