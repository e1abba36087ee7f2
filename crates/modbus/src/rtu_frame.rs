//! RTU slave-side framer: delimits Modbus RTU frames on a shared RS485 bus for one
//! slave unit id.
//!
//! Owns: a fixed [`MAX_ADU`]-byte buffer, the unit id it answers for, and its counters
//! ([`FramerStats`]). It decides where frames start and end (by function-code length
//! tables and CRC, plus a CRC scan for function codes of unknown length), classifies
//! each frame (a request for us, a broadcast, or foreign traffic: other units' requests
//! and any response, including our own echo), and throws away garbage.
//!
//! May touch: nothing. It is pure: bytes in, frames out. No I/O, no clock (the caller
//! reports line silence through [`Framer::on_silence`]), no heap allocation, and no
//! panic on any input.
//!
//! Caller protocol: `push` bytes, drain `next_frame()` until it returns `None`, push
//! whatever `push` did not take, repeat; call `on_silence()` when the line has been
//! silent for the inter-frame timeout (t3.5).
//!
//! Limits of a framer without timing: a response that is byte-identical to a request
//! (FC05/06/08/22 echo of our own reply on a half-duplex bus) is classified as a request;
//! the slave must suppress its own echo by comparison with what it sent.

use super::crc::frame_crc_ok;

/// Largest RTU frame (ADU), in bytes.
pub const MAX_ADU: usize = 256;

/// A request addressed to our unit id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// FC03/FC04 read, 8-byte request addressed to our unit.
    Read {
        function: u8,
        address: u16,
        count: u16,
    },
    /// Any other function code addressed to our unit (FC01/02/05/06/15/16, unknown codes...).
    /// The slave answers these with exception 01.
    Other { function: u8 },
}

/// One delimited, CRC-valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A CRC-valid request addressed to our unit id.
    Request(Request),
    /// A CRC-valid frame that is not a request for us: another unit's request, or any response
    /// (including responses carrying our own unit id, e.g. our own echo on a half-duplex bus).
    Foreign { unit: u8, function: u8 },
    /// A CRC-valid request to unit 0 (broadcast): never answered.
    Broadcast { function: u8 },
}

/// Counters kept by a [`Framer`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramerStats {
    /// `Frame::Request` yielded.
    pub requests: u64,
    /// `Frame::Foreign` yielded.
    pub foreign: u64,
    /// `Frame::Broadcast` yielded.
    pub broadcast: u64,
    /// A plausible complete frame at the head (known function code) whose CRC failed.
    pub crc_errors: u64,
    /// Bytes discarded while hunting for a frame (not counting `on_silence` discards).
    pub garbage_bytes: u64,
    /// Partial frames dropped by `on_silence()`.
    pub partial_discarded: u64,
    /// Times the buffer was full without a frame at its head (bytes were then dropped).
    pub oversize: u64,
}

/// Which way a frame travels: decides its classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Master to slave: what the RTU slave answers.
    Request,
    /// Slave to master: what the master waits for.
    Response,
}

/// Length of one candidate interpretation of the bytes at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// This many bytes (already checked to be `<= MAX_ADU`).
    Known(usize),
    /// The byte(s) giving the length have not arrived yet.
    NeedMore,
    /// This interpretation cannot apply.
    Never,
}

/// Verdict on the bytes at the head of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// A CRC-valid frame of this length.
    Frame(usize, Kind),
    /// No valid frame yet, but some interpretation needs more bytes.
    Wait,
    /// The head cannot start a frame. `plausible`: it looked like a known frame whose
    /// CRC failed.
    Dead { plausible: bool },
}

/// Function codes with a length table (rule 1); anything else in 1..=0x7F is scanned by CRC.
fn known_fc(f: u8) -> bool {
    matches!(f, 1..=8 | 11 | 12 | 15 | 16 | 17 | 22 | 23 | 24)
}

fn cap(len: usize) -> Len {
    if len <= MAX_ADU {
        Len::Known(len)
    } else {
        Len::Never
    }
}

/// `base + b[idx]`, or `NeedMore` when `b[idx]` has not arrived.
fn counted(b: &[u8], idx: usize, base: usize) -> Len {
    match b.get(idx) {
        Some(&c) => cap(base + usize::from(c)),
        None => Len::NeedMore,
    }
}

/// Length of the request frame at the head of `b` (unit id to CRC), by the framer's own
/// rule, for other readers of requests (the device simulator); [`Len::NeedMore`] until the
/// function code is there.
pub fn request_frame_len(b: &[u8]) -> Len {
    match b.get(1) {
        Some(&f) => request_len(f, b),
        None => Len::NeedMore,
    }
}

/// Length of a request with function code `f` (the unit id is not looked at).
fn request_len(f: u8, b: &[u8]) -> Len {
    match f {
        1..=6 | 8 => Len::Known(8),
        15 | 16 => counted(b, 6, 9),
        7 | 11 | 12 | 17 => Len::Known(4),
        22 => Len::Known(10),
        23 => counted(b, 10, 13),
        24 => Len::Known(6),
        _ => Len::Never,
    }
}

/// Length of a response with function code `f`.
fn response_len(f: u8, b: &[u8]) -> Len {
    if f & 0x80 != 0 {
        return Len::Known(5);
    }
    match f {
        1 | 2 => match b.get(2) {
            Some(&c) if c >= 1 => cap(5 + usize::from(c)),
            Some(_) => Len::Never,
            None => Len::NeedMore,
        },
        3 | 4 => match b.get(2) {
            Some(&c) if c >= 2 && c % 2 == 0 => cap(5 + usize::from(c)),
            Some(_) => Len::Never,
            None => Len::NeedMore,
        },
        5 | 6 | 15 | 16 | 8 | 11 => Len::Known(8),
        7 => Len::Known(5),
        12 | 17 | 23 => counted(b, 2, 5),
        22 => Len::Known(10),
        // Read FIFO queue: unit, fc, byte count (2), then `byte count` bytes (FIFO count
        // and values), CRC (2): 6 + byte count.
        24 => match (b.get(2), b.get(3)) {
            (Some(&hi), Some(&lo)) => cap(6 + usize::from(u16::from_be_bytes([hi, lo]))),
            _ => Len::NeedMore,
        },
        _ => Len::Never,
    }
}

/// Smallest `L >= 4` such that `b[..L]` is CRC-valid, in one pass: the CRC-16/MODBUS
/// register over a frame followed by its own CRC (low byte first) is 0.
fn crc_scan(b: &[u8]) -> Option<usize> {
    const MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    let mut digest = MODBUS.digest();
    for (i, byte) in b.iter().enumerate() {
        digest.update(core::slice::from_ref(byte));
        if i + 1 >= 4 && digest.clone().finalize() == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// Delimits RTU frames for one slave unit id. See the module documentation.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Buffered bytes are `buf[start..end]`.
    buf: [u8; MAX_ADU],
    /// First byte of the unframed input in `buf`.
    start: usize,
    /// One past the last byte received.
    end: usize,
    /// The unit id this slave answers for.
    unit: u8,
    /// What the framer saw and dropped.
    stats: FramerStats,
}

impl Framer {
    /// A framer answering for `unit`. Unit 0 is broadcast: a framer for unit 0 never
    /// yields `Frame::Request`.
    pub fn new(unit: u8) -> Self {
        Self {
            buf: [0; MAX_ADU],
            start: 0,
            end: 0,
            unit,
            stats: FramerStats::default(),
        }
    }

    /// Copy as many bytes as fit (never more than MAX_ADU buffered in total); returns how many
    /// were taken. The caller loops: push, drain next_frame(), push the rest.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(MAX_ADU - self.buffered());
        if take == 0 {
            return 0;
        }
        if self.end + take > MAX_ADU {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf[self.end..self.end + take].copy_from_slice(&bytes[..take]);
        self.end += take;
        take
    }

    /// Next complete frame at the head of the buffer, or None if more bytes are needed.
    /// Consumes the frame's bytes. Discards garbage while hunting. When the buffer is
    /// full and nothing is complete, it drops bytes so push() can take more.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let n = self.buffered();
            if n < 2 {
                return None;
            }
            match self.head() {
                Head::Frame(len, kind) => {
                    let frame = self.classify(&self.buf[self.start..self.start + len], kind);
                    self.consume(len);
                    self.count(frame);
                    return Some(frame);
                }
                Head::Wait if n < MAX_ADU => {
                    if let Some(i) = self.hunt_ahead() {
                        self.stats.garbage_bytes += i as u64;
                        self.consume(i);
                        let frame =
                            self.classify(&self.buf[self.start..self.start + 8], Kind::Request);
                        self.consume(8);
                        self.count(frame);
                        return Some(frame);
                    }
                    return None;
                }
                // A full buffer cannot be waiting (no candidate exceeds MAX_ADU); treat it
                // as dead anyway so progress is guaranteed.
                Head::Wait => self.drop_head(false, n),
                Head::Dead { plausible } => self.drop_head(plausible, n),
            }
        }
    }

    /// The line has been silent for the frame timeout: a buffered frame is now delimited.
    /// If the whole buffer is a CRC-valid frame (e.g. an unknown function code to our unit whose
    /// length we could not know), yield it (classified as usual); otherwise count it as
    /// partial_discarded and clear. Always leaves the buffer empty.
    ///
    /// Call it after draining `next_frame()`: only the whole buffer is considered.
    pub fn on_silence(&mut self) -> Option<Frame> {
        let data = &self.buf[self.start..self.end];
        let out = if data.len() >= 4 && frame_crc_ok(data) {
            let frame = self.classify(data, Self::whole_kind(data));
            self.count(frame);
            Some(frame)
        } else {
            if !data.is_empty() {
                self.stats.partial_discarded += 1;
            }
            None
        };
        self.start = 0;
        self.end = 0;
        out
    }

    /// Bytes currently buffered (at most [`MAX_ADU`]).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// A copy of the counters.
    pub fn stats(&self) -> FramerStats {
        self.stats
    }

    /// The unit id this framer answers for.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    fn is_ours(&self, unit: u8) -> bool {
        unit == self.unit && unit != 0
    }

    fn consume(&mut self, k: usize) {
        self.start = (self.start + k).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn drop_head(&mut self, plausible: bool, n: usize) {
        if plausible {
            self.stats.crc_errors += 1;
        }
        if n >= MAX_ADU {
            self.stats.oversize += 1;
        }
        self.stats.garbage_bytes += 1;
        self.consume(1);
    }

    fn count(&mut self, frame: Frame) {
        match frame {
            Frame::Request(_) => self.stats.requests += 1,
            Frame::Foreign { .. } => self.stats.foreign += 1,
            Frame::Broadcast { .. } => self.stats.broadcast += 1,
        }
    }

    /// Rule 2/4: evaluate every interpretation of the bytes at the head (needs >= 2 bytes).
    fn head(&self) -> Head {
        let b = &self.buf[self.start..self.end];
        let (unit, f) = match b {
            [u, f, ..] => (*u, *f),
            _ => return Head::Wait,
        };
        if f == 0 {
            return Head::Dead { plausible: false };
        }
        let exception = f & 0x80 != 0;
        if !exception && !known_fc(f) {
            // Unknown function code: the smallest CRC-valid prefix, if any.
            return match crc_scan(b) {
                Some(len) => Head::Frame(len, Kind::Request),
                None if b.len() >= MAX_ADU => Head::Dead { plausible: false },
                None => Head::Wait,
            };
        }
        let mut incomplete = false;
        let mut checked = false;
        let mut valid = |len: Len| match len {
            Len::Known(l) if l <= b.len() => {
                checked = true;
                frame_crc_ok(&b[..l]).then_some(l)
            }
            Len::Known(_) | Len::NeedMore => {
                incomplete = true;
                None
            }
            Len::Never => None,
        };
        let req_len = request_len(f, b);
        let req_pending = match req_len {
            Len::Known(l) => l > b.len(),
            Len::NeedMore => true,
            Len::Never => false,
        };
        let req = valid(req_len);
        if let Some(l) = req {
            if self.is_ours(unit) {
                // Preferred over any response interpretation: no need to check it.
                return Head::Frame(l, Kind::Request);
            }
        }
        if self.is_ours(unit) && req_pending {
            // A request for us that has not fully arrived wins over a shorter response
            // that happens to pass its CRC (found by fuzzing: `0B 03 02 00 00 20 ..` split
            // after 7 bytes reads as a CRC-valid FC03 response). A real response from our
            // unit is still delimited: by the bytes after it, or by the silence.
            return Head::Wait;
        }
        // Unit 0 is never a response: no slave has address 0 and none answers a broadcast.
        // (Found by property testing: a broadcast FC16 whose first 8 bytes happen to pass
        // the CRC of an FC16 response was taken as a foreign response when fed bytewise.)
        let resp = if unit == 0 {
            None
        } else {
            valid(response_len(f, b))
        };
        match (req, resp) {
            (Some(q), Some(r)) if r < q => Head::Frame(r, Kind::Response),
            (Some(q), _) => Head::Frame(q, Kind::Request),
            (None, Some(r)) => Head::Frame(r, Kind::Response),
            (None, None) if incomplete => Head::Wait,
            (None, None) => Head::Dead {
                plausible: checked && known_fc(f & 0x7F),
            },
        }
    }

    /// Rule 3: offset `i > 0` of a complete, CRC-valid FC03/FC04 request to our unit.
    fn hunt_ahead(&self) -> Option<usize> {
        if self.unit == 0 {
            return None;
        }
        let b = &self.buf[self.start..self.end];
        (1..b.len().saturating_sub(7)).find(|&i| {
            b.get(i..i + 8)
                .is_some_and(|w| w[0] == self.unit && matches!(w[1], 3 | 4) && frame_crc_ok(w))
        })
    }

    /// Interpretation of a whole, CRC-valid buffer delimited by silence.
    fn whole_kind(b: &[u8]) -> Kind {
        let (unit, f) = match b {
            [u, f, ..] => (*u, *f),
            _ => return Kind::Request,
        };
        let len = Len::Known(b.len());
        if unit == 0 {
            // Nobody answers from address 0: a broadcast, however malformed.
            Kind::Request
        } else if f & 0x80 != 0 {
            Kind::Response
        } else if request_len(f, b) == len {
            // Also when a response of the same length fits (rule 2: equal lengths, the
            // request wins, so a broadcast write stays a broadcast).
            Kind::Request
        } else if response_len(f, b) == len {
            Kind::Response
        } else {
            // Unknown function code, or a known one whose length fields do not fit: a
            // (possibly malformed) request; the slave answers our unit with an exception.
            Kind::Request
        }
    }

    /// Rule 2 classification of a delimited frame `b` (at least 2 bytes).
    fn classify(&self, b: &[u8], kind: Kind) -> Frame {
        let (unit, function) = match b {
            [u, f, ..] => (*u, *f),
            _ => {
                return Frame::Foreign {
                    unit: 0,
                    function: 0,
                }
            }
        };
        match kind {
            Kind::Response => Frame::Foreign { unit, function },
            Kind::Request if unit == 0 => Frame::Broadcast { function },
            Kind::Request if !self.is_ours(unit) => Frame::Foreign { unit, function },
            Kind::Request => match b {
                [_, 3 | 4, a0, a1, c0, c1, _, _] => Frame::Request(Request::Read {
                    function,
                    address: u16::from_be_bytes([*a0, *a1]),
                    count: u16::from_be_bytes([*c0, *c1]),
                }),
                _ => Frame::Request(Request::Other { function }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::crc::{append_crc, frame_crc_ok};
    use super::*;

    /// `body` followed by its CRC.
    fn with_crc(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(&[0, 0]);
        append_crc(&mut v, body.len());
        v
    }

    fn read_req(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
        let [a0, a1] = address.to_be_bytes();
        let [c0, c1] = count.to_be_bytes();
        with_crc(&[unit, function, a0, a1, c0, c1])
    }

    /// FC03/04 response carrying `regs` registers (values derived from the index).
    fn read_resp(unit: u8, function: u8, regs: u8) -> Vec<u8> {
        let mut body = vec![unit, function, regs * 2];
        for i in 0..regs {
            body.extend_from_slice(&[0x40u8.wrapping_add(i), 0x11u8.wrapping_mul(i)]);
        }
        with_crc(&body)
    }

    fn write_multiple(unit: u8, address: u16, values: &[u16]) -> Vec<u8> {
        let [a0, a1] = address.to_be_bytes();
        let mut body = vec![
            unit,
            16,
            a0,
            a1,
            0,
            values.len() as u8,
            2 * values.len() as u8,
        ];
        for v in values {
            body.extend_from_slice(&v.to_be_bytes());
        }
        with_crc(&body)
    }

    fn read(function: u8, address: u16, count: u16) -> Frame {
        Frame::Request(Request::Read {
            function,
            address,
            count,
        })
    }

    fn other(function: u8) -> Frame {
        Frame::Request(Request::Other { function })
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    enum Op {
        Bytes(Vec<u8>),
        Silence,
    }

    /// (name, our unit, input, frames expected, stats expected)
    type Case = (&'static str, u8, Vec<Op>, Vec<Frame>, FramerStats);
    use Op::{Bytes, Silence};

    /// Push everything (looping as the slave does), draining frames after every push.
    fn feed(f: &mut Framer, mut bytes: &[u8], out: &mut Vec<Frame>) {
        loop {
            let took = f.push(bytes);
            assert!(f.buffered() <= MAX_ADU);
            bytes = &bytes[took..];
            while let Some(fr) = f.next_frame() {
                out.push(fr);
            }
            if bytes.is_empty() {
                break;
            }
        }
    }

    /// A broadcast FC16 whose first 8 bytes pass the CRC of an FC16 response (found by
    /// tests/prop_framer.rs), fed byte by byte: still one broadcast, never a foreign response.
    #[test]
    fn a_broadcast_is_never_taken_for_a_response() {
        let frame = write_multiple(0, 46306, &[7936, 0, 0]);
        assert!(
            frame_crc_ok(&frame[..8]),
            "the case needs the CRC coincidence"
        );
        let mut f = Framer::new(1);
        let mut out = Vec::new();
        for b in &frame {
            feed(&mut f, std::slice::from_ref(b), &mut out);
        }
        out.extend(f.on_silence());
        assert_eq!(out, vec![Frame::Broadcast { function: 16 }]);
        // Delimited by silence as a whole, too.
        let mut f = Framer::new(1);
        let mut out = Vec::new();
        feed(&mut f, &frame, &mut out);
        out.extend(f.on_silence());
        assert_eq!(out, vec![Frame::Broadcast { function: 16 }]);
    }

    fn run(unit: u8, ops: &[Op]) -> (Vec<Frame>, FramerStats) {
        let mut f = Framer::new(unit);
        let mut out = Vec::new();
        for op in ops {
            match op {
                Bytes(b) => feed(&mut f, b, &mut out),
                Silence => {
                    out.extend(f.on_silence());
                    assert_eq!(f.buffered(), 0);
                }
            }
        }
        (out, f.stats())
    }

    fn stats(requests: u64, foreign: u64, broadcast: u64) -> FramerStats {
        FramerStats {
            requests,
            foreign,
            broadcast,
            ..FramerStats::default()
        }
    }

    const GOLDEN_FC04: &[u8] = &[0x01, 0x04, 0x0B, 0xB8, 0x00, 0x01, 0xB3, 0xCB];
    const GOLDEN_FC04_RESP: &[u8] = &[0x01, 0x04, 0x02, 0x00, 0x65, 0x79, 0x1B];
    const GOLDEN_FC03: &[u8] = &[0x01, 0x03, 0x0C, 0x80, 0x00, 0x01, 0x86, 0xB2];
    const GOLDEN_FC03_RESP: &[u8] = &[0x01, 0x03, 0x02, 0x4B, 0x53, 0xCE, 0x89];
    const GOLDEN_FC06: &[u8] = &[0x01, 0x06, 0x0F, 0xA4, 0x00, 0x55, 0x0B, 0x02];
    const GOLDEN_FC16_RESP: &[u8] = &[0x01, 0x10, 0x0C, 0xA7, 0x00, 0x07, 0x33, 0x78];
    /// The same response as printed in two vendor documents: CRC bytes swapped.
    const MISPRINTED_FC16_RESP: &[u8] = &[0x01, 0x10, 0x0C, 0xE4, 0x00, 0x07, 0xAC, 0xC2];
    const GOLDEN_FC16: &[u8] = &[
        0x01, 0x10, 0x0C, 0xA7, 0x00, 0x07, 0x0E, 0x31, 0x30, 0x31, 0x31, 0x30, 0x32, 0x31, 0x34,
        0x33, 0x30, 0x30, 0x30, 0x32, 0x30, 0x17, 0x2E,
    ];
    const GOLDEN_FC41: &[u8] = &[0x01, 0x41, 0x19, 0x64, 0x00, 0x01, 0xBA, 0x86];
    const STRAY_FC16_HEADER: &[u8] = &[0x01, 0x10, 0x00, 0x00, 0x00, 0x7B, 0xF6];

    #[test]
    fn goldens_are_what_the_tests_think() {
        for g in [
            GOLDEN_FC04,
            GOLDEN_FC04_RESP,
            GOLDEN_FC03,
            GOLDEN_FC03_RESP,
            GOLDEN_FC06,
            GOLDEN_FC16_RESP,
            GOLDEN_FC16,
            GOLDEN_FC41,
        ] {
            assert!(frame_crc_ok(g), "{g:02X?}");
        }
        assert!(!frame_crc_ok(MISPRINTED_FC16_RESP));
        assert_eq!(read_req(1, 4, 3000, 1), GOLDEN_FC04);
    }

    /// Found by `fuzz/fuzz_targets/rtu_framer.rs`: the first 7 bytes of this request to
    /// unit 11 are a CRC-valid FC03 response with byte count 2. Split after them, the
    /// request must still be recognised, and a real 7-byte response still delimited.
    #[test]
    fn a_request_split_where_its_prefix_is_a_valid_response() {
        let req = read_req(11, 3, 512, 32);
        assert!(
            frame_crc_ok(&req[..7]),
            "the coincidence this test is about"
        );
        let mut f = Framer::new(11);
        let mut got = Vec::new();
        feed(&mut f, &req[..7], &mut got);
        assert_eq!(got, vec![], "waits for the 8th byte");
        feed(&mut f, &req[7..], &mut got);
        assert_eq!(got, vec![read(3, 512, 32)]);
        // The same 7 bytes alone are a response from our unit: delimited by the silence,
        // or by the next frame.
        let mut f = Framer::new(11);
        let mut got = Vec::new();
        feed(&mut f, &req[..7], &mut got);
        got.extend(f.on_silence());
        let echo = Frame::Foreign {
            unit: 11,
            function: 3,
        };
        assert_eq!(got, vec![echo]);
        let mut got = Vec::new();
        feed(&mut f, &req[..7], &mut got);
        feed(&mut f, &read_req(11, 4, 1, 2), &mut got);
        assert_eq!(got, vec![echo, read(4, 1, 2)]);
    }

    #[test]
    fn table() {
        let r = read_req(1, 3, 100, 10);
        let mut bad = r.clone();
        bad[7] ^= 0x5A;
        let mut bad41 = GOLDEN_FC41.to_vec();
        bad41[7] ^= 0x01;
        let exc_ours = with_crc(&[1, 0x83, 0x02]);
        let exc_other = with_crc(&[5, 0x84, 0x0B]);
        let bcast06 = with_crc(&[0, 6, 0x0F, 0xA4, 0x00, 0x55]);
        let bcast16 = write_multiple(0, 0x1000, &[1, 2]);
        // FC16 to us whose byte count (5) claims more data than it carries: only silence
        // can delimit it.
        let malformed16 = with_crc(&[1, 16, 0, 0, 0, 1, 5, 0, 1]);

        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("fc03 read to us", 1,
             vec![Bytes(r.clone()), Silence],
             vec![read(3, 100, 10)], stats(1, 0, 0)),
            ("golden fc04 read", 1,
             vec![Bytes(GOLDEN_FC04.to_vec())],
             vec![read(4, 3000, 1)], stats(1, 0, 0)),
            ("golden fc03 read", 1,
             vec![Bytes(GOLDEN_FC03.to_vec())],
             vec![read(3, 3200, 1)], stats(1, 0, 0)),
            ("garbage before (hunted)", 1,
             vec![Bytes(cat(&[&[0x12, 0x34, 0x56], &r])), Silence],
             vec![read(3, 100, 10)],
             FramerStats { garbage_bytes: 3, ..stats(1, 0, 0) }),
            ("garbage before, pushed separately", 1,
             vec![Bytes(vec![0x12, 0x34, 0x56]), Bytes(r.clone()), Silence],
             vec![read(3, 100, 10)],
             FramerStats { garbage_bytes: 3, ..stats(1, 0, 0) }),
            ("garbage after: discarded on silence", 1,
             vec![Bytes(cat(&[&r, &[0xAA, 0x55, 0x01]])), Silence],
             vec![read(3, 100, 10)],
             FramerStats { partial_discarded: 1, ..stats(1, 0, 0) }),
            ("garbage inside: lost, next request after silence found", 1,
             vec![Bytes(cat(&[&r[..4], &[0xDE, 0xAD], &r[4..]])), Silence, Bytes(r.clone()), Silence],
             vec![read(3, 100, 10)],
             // 01 03 ... (crc error), 03 00 (FC 0), then 00 64 .. waits: partial.
             FramerStats { crc_errors: 1, garbage_bytes: 2, partial_discarded: 1, ..stats(1, 0, 0) }),
            ("bad crc then good frame", 1,
             vec![Bytes(bad.clone()), Bytes(r.clone())],
             vec![read(3, 100, 10)],
             // 01 03 (crc error), 03 00 (FC 0), 00 64 ... waits, then the hunt skips 6.
             FramerStats { crc_errors: 1, garbage_bytes: 8, ..stats(1, 0, 0) }),
            ("leading 0x00", 1,
             vec![Bytes(cat(&[&[0x00], &r]))],
             vec![read(3, 100, 10)],
             // `00 01 03 ..` read as a broadcast FC01 fails its CRC: one byte dropped.
             FramerStats { crc_errors: 1, garbage_bytes: 1, ..stats(1, 0, 0) }),
            ("leading 0x00 alone, then the request", 1,
             vec![Bytes(vec![0x00]), Bytes(r.clone())],
             vec![read(3, 100, 10)],
             FramerStats { crc_errors: 1, garbage_bytes: 1, ..stats(1, 0, 0) }),
            ("other unit's request and its 10-register response", 1,
             vec![Bytes(read_req(5, 3, 0, 10)), Bytes(read_resp(5, 3, 10)), Bytes(r.clone())],
             vec![Frame::Foreign { unit: 5, function: 3 }, Frame::Foreign { unit: 5, function: 3 },
                  read(3, 100, 10)],
             stats(1, 2, 0)),
            ("same, one chunk", 1,
             vec![Bytes(cat(&[&read_req(5, 3, 0, 10), &read_resp(5, 3, 10), &r]))],
             vec![Frame::Foreign { unit: 5, function: 3 }, Frame::Foreign { unit: 5, function: 3 },
                  read(3, 100, 10)],
             stats(1, 2, 0)),
            // A 7-byte response from our unit could be the start of a request for us: it is
            // delimited by what follows or by the silence.
            ("our own fc03 response (echo)", 1,
             vec![Bytes(read_resp(1, 3, 10)), Bytes(GOLDEN_FC03_RESP.to_vec()),
                  Bytes(GOLDEN_FC04_RESP.to_vec()), Silence],
             vec![Frame::Foreign { unit: 1, function: 3 }, Frame::Foreign { unit: 1, function: 3 },
                  Frame::Foreign { unit: 1, function: 4 }],
             stats(0, 3, 0)),
            ("request, then our echo, in one chunk", 1,
             vec![Bytes(cat(&[GOLDEN_FC03, GOLDEN_FC03_RESP])), Silence],
             vec![read(3, 3200, 1), Frame::Foreign { unit: 1, function: 3 }],
             stats(1, 1, 0)),
            ("exception responses", 1,
             vec![Bytes(cat(&[&exc_ours, &exc_other]))],
             vec![Frame::Foreign { unit: 1, function: 0x83 }, Frame::Foreign { unit: 5, function: 0x84 }],
             stats(0, 2, 0)),
            ("broadcast fc06 and fc16", 1,
             vec![Bytes(bcast06.clone()), Bytes(bcast16.clone())],
             vec![Frame::Broadcast { function: 6 }, Frame::Broadcast { function: 16 }],
             stats(0, 0, 2)),
            ("fc16 to us", 1,
             vec![Bytes(write_multiple(1, 0x0200, &[7, 8, 9])), Bytes(GOLDEN_FC16.to_vec())],
             vec![other(16), other(16)], stats(2, 0, 0)),
            ("fc16 response from our unit (echo)", 1,
             vec![Bytes(GOLDEN_FC16_RESP.to_vec()), Silence],
             vec![Frame::Foreign { unit: 1, function: 16 }], stats(0, 1, 0)),
            ("misprinted fc16 response: nothing", 1,
             vec![Bytes(MISPRINTED_FC16_RESP.to_vec()), Silence],
             vec![], FramerStats { partial_discarded: 1, ..stats(0, 0, 0) }),
            ("fc06 to us", 1,
             vec![Bytes(GOLDEN_FC06.to_vec())], vec![other(6)], stats(1, 0, 0)),
            ("unknown fc 0x41 found by crc scan", 1,
             vec![Bytes(GOLDEN_FC41.to_vec())], vec![other(0x41)], stats(1, 0, 0)),
            ("unknown fc 0x41, bad crc", 1,
             vec![Bytes(bad41), Silence],
             vec![], FramerStats { partial_discarded: 1, ..stats(0, 0, 0) }),
            ("unknown fc 0x2B to another unit", 1,
             vec![Bytes(with_crc(&[9, 0x2B, 0x0E, 0x01, 0x00])), Bytes(r.clone())],
             vec![Frame::Foreign { unit: 9, function: 0x2B }, read(3, 100, 10)], stats(1, 1, 0)),
            ("malformed fc16 delimited by silence", 1,
             vec![Bytes(malformed16), Silence], vec![other(16)], stats(1, 0, 0)),
            ("stray fc16 header, then a poll without silence", 1,
             vec![Bytes(STRAY_FC16_HEADER.to_vec()), Bytes(r.clone())],
             vec![read(3, 100, 10)], FramerStats { garbage_bytes: 7, ..stats(1, 0, 0) }),
            ("back to back in one chunk", 1,
             vec![Bytes(cat(&[&r, GOLDEN_FC04]))],
             vec![read(3, 100, 10), read(4, 3000, 1)], stats(2, 0, 0)),
            ("count 0 and 126 are still reads", 1,
             vec![Bytes(cat(&[&read_req(1, 3, 0, 0), &read_req(1, 4, 0, 126)]))],
             vec![read(3, 0, 0), read(4, 0, 126)], stats(2, 0, 0)),
            ("request to unit 247", 1,
             vec![Bytes(read_req(247, 3, 0, 2))],
             vec![Frame::Foreign { unit: 247, function: 3 }], stats(0, 1, 0)),
            ("unit 250 is a unit like any other", 250,
             vec![Bytes(read_req(250, 4, 7, 2)), Bytes(read_req(1, 4, 7, 2))],
             vec![read(4, 7, 2), Frame::Foreign { unit: 1, function: 4 }], stats(1, 1, 0)),
            ("a framer for unit 0 never yields requests", 0,
             vec![Bytes(read_req(0, 3, 0, 1))],
             vec![Frame::Broadcast { function: 3 }], stats(0, 0, 1)),
        ];

        for (name, unit, ops, frames, want) in cases {
            let (got, st) = run(unit, &ops);
            assert_eq!(got, frames, "{name}: frames");
            assert_eq!(st, want, "{name}: stats");
        }
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let cases: Vec<(Vec<u8>, Frame)> = vec![
            (read_req(1, 3, 100, 10), read(3, 100, 10)),
            (GOLDEN_FC04.to_vec(), read(4, 3000, 1)),
            (GOLDEN_FC16.to_vec(), other(16)),
            (GOLDEN_FC41.to_vec(), other(0x41)),
            (
                read_resp(5, 3, 10),
                Frame::Foreign {
                    unit: 5,
                    function: 3,
                },
            ),
            (
                read_resp(1, 4, 3),
                Frame::Foreign {
                    unit: 1,
                    function: 4,
                },
            ),
            (
                with_crc(&[0, 6, 0, 1, 0, 2]),
                Frame::Broadcast { function: 6 },
            ),
        ];
        for (bytes, want) in cases {
            for k in 1..bytes.len() {
                let mut f = Framer::new(1);
                assert_eq!(f.push(&bytes[..k]), k);
                assert_eq!(f.next_frame(), None, "{bytes:02X?} split at {k}");
                assert_eq!(f.push(&bytes[k..]), bytes.len() - k);
                assert_eq!(f.next_frame(), Some(want), "{bytes:02X?} split at {k}");
                assert_eq!(f.next_frame(), None);
                assert_eq!(f.buffered(), 0);
                assert_eq!(f.stats().garbage_bytes, 0);
            }
            // And one byte at a time.
            let mut f = Framer::new(1);
            let mut got = Vec::new();
            for b in &bytes {
                feed(&mut f, core::slice::from_ref(b), &mut got);
            }
            assert_eq!(got, vec![want], "{bytes:02X?} byte by byte");
        }
    }

    #[test]
    fn oversize_ff_noise() {
        let mut f = Framer::new(1);
        let mut got = Vec::new();
        for _ in 0..300 {
            feed(&mut f, &[0xFF], &mut got);
            assert!(f.buffered() <= MAX_ADU);
        }
        assert_eq!(got, vec![]);
        // `FF FF ..` reads as a 5-byte exception response that never validates.
        let st = f.stats();
        assert_eq!(st.crc_errors, 0);
        assert_eq!(st.garbage_bytes + f.buffered() as u64, 300);
        feed(&mut f, &read_req(1, 3, 9, 1), &mut got);
        assert_eq!(got, vec![read(3, 9, 1)]);
    }

    #[test]
    fn oversize_full_buffer_makes_progress() {
        // An unknown function code at the head can only be delimited by its CRC, so
        // `01 41 AA AA ..` waits until the buffer is full.
        let mut noise = vec![0x01, 0x41];
        noise.resize(300, 0xAA);
        let mut f = Framer::new(1);
        assert_eq!(f.push(&noise), MAX_ADU);
        assert_eq!(f.next_frame(), None);
        assert!(f.buffered() < MAX_ADU, "no room made");
        let st = f.stats();
        assert_eq!(st.oversize, 1);
        assert_eq!(st.garbage_bytes + f.buffered() as u64, MAX_ADU as u64);
        let mut got = Vec::new();
        feed(&mut f, &noise[MAX_ADU..], &mut got);
        feed(&mut f, &read_req(1, 4, 1, 2), &mut got);
        assert_eq!(got, vec![read(4, 1, 2)]);
        assert!(f.on_silence().is_none());
        assert_eq!(f.stats().oversize, 1);

        // Pushed in small chunks, the full buffer is hit and resolved the same way.
        let mut f = Framer::new(1);
        let mut got = Vec::new();
        for c in noise.chunks(7) {
            feed(&mut f, c, &mut got);
        }
        feed(&mut f, &read_req(1, 4, 1, 2), &mut got);
        assert_eq!(got, vec![read(4, 1, 2)]);
        assert!(f.stats().oversize >= 1);
    }

    #[test]
    fn push_never_overfills() {
        let mut f = Framer::new(1);
        let big = [0x01u8; 600];
        assert_eq!(f.push(&big), MAX_ADU);
        assert_eq!(f.push(&big), 0);
        assert_eq!(f.buffered(), MAX_ADU);
        assert!(f.on_silence().is_none());
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.stats().partial_discarded, 1);
        assert!(f.on_silence().is_none());
        assert_eq!(
            f.stats().partial_discarded,
            1,
            "empty silence is not a partial frame"
        );
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    #[test]
    fn crc_scan_finds_the_smallest_valid_prefix() {
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        for _ in 0..2000 {
            let mut b: Vec<u8> = (0..rng.below(12)).map(|_| rng.byte()).collect();
            if rng.below(2) == 0 {
                b = with_crc(&b);
            }
            b.extend((0..rng.below(12)).map(|_| rng.byte()));
            let want = (4..=b.len()).find(|&l| frame_crc_ok(&b[..l]));
            assert_eq!(crc_scan(&b), want, "{b:02X?}");
        }
    }

    /// Random garbage, foreign frames and our requests at random chunk boundaries, with a
    /// silence after every group.
    #[test]
    fn stress_shared_bus() {
        for (seed, ours) in [
            (0x9E37_79B9_7F4A_7C15u64, 1u8),
            (0xD1B5_4A32_D192_ED03, 250),
        ] {
            stress(seed, ours);
        }
    }

    fn stress(seed: u64, ours: u8) {
        let mut rng = XorShift(seed);
        let mut f = Framer::new(ours);
        let mut received = 0u64;
        let other_unit = |rng: &mut XorShift| loop {
            let u = rng.byte();
            if u != 0 && u != ours {
                return u;
            }
        };
        for group in 0..3000 {
            let mut bytes = Vec::new();
            // Our requests in this group: (request, must be received).
            let mut sent: Vec<(Frame, bool)> = Vec::new();
            let mut garbage_seen = false;
            for _ in 0..1 + rng.below(6) {
                match rng.below(12) {
                    0 | 1 => {
                        let n = 1 + rng.below(24);
                        bytes.extend((0..n).map(|_| rng.byte()));
                        garbage_seen = true;
                    }
                    2 => {
                        let u = other_unit(&mut rng);
                        let fc = [3, 4][rng.below(2) as usize];
                        let count = 1 + rng.below(125) as u16;
                        bytes.extend(read_req(u, fc, rng.next() as u16, count));
                    }
                    3 => {
                        let u = other_unit(&mut rng);
                        bytes.extend(read_resp(u, 3, 1 + rng.below(125) as u8));
                    }
                    4 => {
                        let u = other_unit(&mut rng);
                        let values = [rng.next() as u16, rng.next() as u16];
                        bytes.extend(write_multiple(u, rng.next() as u16, &values));
                    }
                    5 => {
                        // Our own echo: a read response or an exception from our unit.
                        if rng.below(2) == 0 {
                            bytes.extend(read_resp(ours, 4, 1 + rng.below(125) as u8));
                        } else {
                            bytes.extend(with_crc(&[ours, 0x83, 0x02]));
                        }
                    }
                    6 => bytes.extend(with_crc(&[0, 6, rng.byte(), rng.byte(), 0, 1])),
                    7 => {
                        let values = [rng.next() as u16];
                        bytes.extend(write_multiple(ours, rng.next() as u16, &values));
                        sent.push((other(16), !garbage_seen));
                    }
                    _ => {
                        let fc = [3, 4][rng.below(2) as usize];
                        let (address, count) = (rng.next() as u16, rng.below(130) as u16);
                        bytes.extend(read_req(ours, fc, address, count));
                        sent.push((read(fc, address, count), !garbage_seen));
                    }
                }
            }
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(64) as usize).min(rest.len());
                feed(&mut f, &rest[..n], &mut got);
                rest = &rest[n..];
            }
            got.extend(f.on_silence());
            assert_eq!(f.buffered(), 0);

            // Every request yielded was sent, in order; no must-receive request skipped.
            let ctx = format!("seed {seed:#x} unit {ours} group {group}: {bytes:02X?} -> {got:?}");
            let mut next = 0;
            for fr in got.iter().filter(|fr| matches!(fr, Frame::Request(_))) {
                let j = (next..sent.len())
                    .find(|&j| sent[j].0 == *fr)
                    .unwrap_or_else(|| panic!("invented request {fr:?}; {ctx}"));
                if let Some(k) = (next..j).find(|&k| sent[k].1) {
                    panic!("request {:?} lost; {ctx}", sent[k].0);
                }
                next = j + 1;
                received += 1;
            }
            if let Some(k) = (next..sent.len()).find(|&k| sent[k].1) {
                panic!("request {:?} lost; {ctx}", sent[k].0);
            }
        }
        let st = f.stats();
        assert_eq!(st.requests, received);
        assert!(received > 1000, "too few requests exercised: {received}");
        assert!(
            st.foreign > 1000 && st.broadcast > 100 && st.garbage_bytes > 1000,
            "{st:?}"
        );
    }
}
