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
    Request,
    Response,
}

/// Length of one candidate interpretation of the bytes at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
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
    start: usize,
    end: usize,
    unit: u8,
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
        let req = valid(request_len(f, b));
        if let Some(l) = req {
            if self.is_ours(unit) {
                // Preferred over any response interpretation: no need to check it.
                return Head::Frame(l, Kind::Request);
            }
        }
        let resp = valid(response_len(f, b));
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
        let f = match b {
            [_, f, ..] => *f,
            _ => return Kind::Request,
        };
        let len = Len::Known(b.len());
        if f & 0x80 != 0 {
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
