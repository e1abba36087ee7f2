//! Modbus RTU master (client) side, generic over any byte stream.
//!
//! Owns the stream side of a master: recognising where a reply ends (expected length, or
//! a 5-byte CRC-valid exception), per-request timeouts, and discarding stale input so a
//! late reply is never taken as the answer to the next request. Encoding and the reply
//! parser are the pure [`airbridge_modbus::master`]. Used by the KSTAR poller
//! ([`crate::sources::rtu_poll`]), the simulated inverter and the bench tool (which
//! measures turnaround with [`RtuMaster::transact`]).
//!
//! May touch: [`airbridge_modbus`] and the stream it is given. Nothing else: no serial-port
//! setup, no gateway state.
//!
//! Unit 0 (broadcast) is not supported: a broadcast gets no reply, so a
//! transaction on it would always time out.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{timeout, timeout_at, Instant};

use airbridge_modbus::crc::frame_crc_ok;
use airbridge_modbus::master::{
    encode_read, encode_write_multiple, encode_write_single, expected_reply_len, parse_read_reply,
    EXCEPTION_LEN, MAX_FRAME_LEN,
};

/// The master's error type (defined with the reply parser that produces most of them).
pub use airbridge_modbus::master::ReplyError;

/// Default quiet window used to discard stale input after a timeout or a bad frame.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_millis(5);
/// Upper bound on bytes discarded in one drain, so a babbling line cannot stall us.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// One request/reply exchange as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The raw reply: either the expected normal length or a 5-byte exception frame.
    /// Its CRC has been checked; its content has not.
    pub reply: Vec<u8>,
    /// After the request was written.
    pub sent_at: Instant,
    /// When the read returning the first reply byte completed.
    pub first_byte_at: Instant,
    /// When the read returning the last reply byte completed.
    pub last_byte_at: Instant,
}

impl Transaction {
    /// Turnaround: request written → first reply byte.
    pub fn turnaround(&self) -> Duration {
        self.first_byte_at.saturating_duration_since(self.sent_at)
    }

    /// Whole exchange: request written → last reply byte.
    pub fn total(&self) -> Duration {
        self.last_byte_at.saturating_duration_since(self.sent_at)
    }

    /// True when the reply is an exception frame.
    pub fn is_exception(&self) -> bool {
        self.reply.len() == EXCEPTION_LEN && self.reply.get(1).is_some_and(|f| f & 0x80 != 0)
    }
}

/// What the line needs before the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The last reply was taken off the line whole: only what is buffered is stale.
    Clean,
    /// A garbled reply: discard until quiet for the drain window.
    Garbled,
    /// A timeout or an exchange dropped half-way: its reply may still come. Discard until
    /// quiet for the late-reply window.
    Late,
}

/// Modbus RTU master over any byte stream (serial port, pty, TCP converter, in-memory pipe).
///
/// One request at a time; every request has a timeout. A reply is matched to its request
/// by unit, function (or its exception), its own length (the byte count of an FC03/FC04
/// reply, 5 for an exception) and CRC, hunting through the input for it: nothing relies on
/// inter-byte silence, which ptys and TCP converters do not keep. Before every request
/// whatever is buffered is discarded at no wait; after a timeout (or a dropped exchange)
/// everything until the line has been quiet for the late-reply window, so a late reply is
/// never taken as the answer to the next request of the same shape (give it at least the
/// timeout); after a garbled reply, until quiet for the drain window.
#[derive(Debug)]
pub struct RtuMaster<S> {
    /// The line (serial port, pty, TCP socket, in-memory pipe).
    stream: S,
    /// Request written → complete reply, per request.
    timeout: Duration,
    /// Quiet time that ends a drain after a garbled reply.
    drain_window: Duration,
    /// Quiet time that ends a drain after a timeout (default: the drain window; the KSTAR
    /// poller sets `rtu_poll.late_reply_window`, at least its timeout).
    late_window: Duration,
    /// What the line needs before the next request.
    line: Line,
    /// Stale bytes thrown away so far (for counters and tests).
    discarded: u64,
}

/// Where a reply lies in what arrived, or why none will.
enum Found {
    /// A CRC-valid reply for the request at `start..start + len`.
    Reply { start: usize, len: usize },
    /// The frame at the head is complete, has the right header and a bad CRC.
    BadCrcAtHead,
    /// Nothing yet.
    Nothing,
}

/// Hunt `buf` for the reply to a request of `unit`/`fc` whose normal reply is
/// `expected_len` bytes: the first offset where unit, function (or exception), the frame's
/// own length and the CRC all fit. A header whose frame is not complete yet ends the hunt
/// (more bytes are needed); one with a bad CRC is skipped.
fn find_reply(buf: &[u8], unit: u8, fc: u8, expected_len: usize) -> Found {
    let mut head_bad = false;
    for start in 0..buf.len() {
        let rest = &buf[start..];
        if rest.first() != Some(&unit) {
            continue;
        }
        let len = match rest.get(1) {
            Some(&f) if f == fc | 0x80 => EXCEPTION_LEN,
            Some(&f) if f == fc && (fc == 3 || fc == 4) => match rest.get(2) {
                // A read reply is as long as its byte count says, whatever was asked.
                Some(&n) => (5 + usize::from(n)).min(MAX_FRAME_LEN),
                None => continue,
            },
            Some(&f) if f == fc => expected_len,
            _ => continue,
        };
        // The earliest plausible header is still arriving: wait for it rather than take a
        // CRC-valid look-alike from inside its data.
        let Some(frame) = rest.get(..len) else {
            return Found::Nothing;
        };
        if frame_crc_ok(frame) {
            return Found::Reply { start, len };
        }
        if start == 0 {
            head_bad = true;
        }
    }
    if head_bad {
        Found::BadCrcAtHead
    } else {
        Found::Nothing
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtuMaster<S> {
    /// A master with the given reply timeout and the default drain window, after a garbled
    /// reply and after a timeout alike. A master whose requests can share a shape (the KSTAR
    /// poller) sets a late-reply window of at least the timeout
    /// ([`RtuMaster::with_late_reply_window`]).
    pub fn new(stream: S, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            drain_window: DEFAULT_DRAIN_WINDOW,
            late_window: DEFAULT_DRAIN_WINDOW,
            line: Line::Clean,
            discarded: 0,
        }
    }

    /// Change the quiet window used to discard stale input after a garbled reply.
    pub fn with_drain_window(mut self, window: Duration) -> Self {
        self.drain_window = window;
        self
    }

    /// Change the quiet window used to discard a late reply after a timeout.
    pub fn with_late_reply_window(mut self, window: Duration) -> Self {
        self.late_window = window;
        self
    }

    /// The reply timeout (request written → complete reply).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Change the reply timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Total stale bytes discarded so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably (careful: bypasses the framing).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Give the stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Send `request` as is and collect its reply: a CRC-valid frame from the request's
    /// unit with its function (an FC03/FC04 reply as long as its byte count says, others
    /// `expected_len` bytes), or a 5-byte exception frame (function | 0x80). Bytes before
    /// it are discarded.
    ///
    /// A frame at the head with the right header and a bad CRC is [`ReplyError::BadCrc`];
    /// the content is not checked. An exception frame is returned as `Ok` here (see
    /// [`Transaction::is_exception`]).
    pub async fn transact(
        &mut self,
        request: &[u8],
        expected_len: usize,
    ) -> Result<Transaction, ReplyError> {
        if request.len() < 4 {
            return Err(ReplyError::BadFrame(format!(
                "request of {} bytes is too short",
                request.len()
            )));
        }
        if !(EXCEPTION_LEN..=MAX_FRAME_LEN).contains(&expected_len) {
            return Err(ReplyError::BadFrame(format!(
                "expected reply length {expected_len} outside {EXCEPTION_LEN}..={MAX_FRAME_LEN}"
            )));
        }
        let (unit, fc) = (request[0], request[1]);

        self.discard_stale().await?;

        // Late until a reply has been taken off the line completely; this also covers a
        // caller dropping this future half-way (e.g. on cancellation).
        self.line = Line::Late;
        self.send(request).await?;
        let sent_at = Instant::now();
        let deadline = sent_at + self.timeout;

        let mut buf: Vec<u8> = Vec::with_capacity(expected_len);
        let mut chunk = [0u8; MAX_FRAME_LEN];
        let mut first_byte_at = None;
        loop {
            let n = match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    if !buf.is_empty() {
                        tracing::debug!(
                            len = buf.len(),
                            expected_len,
                            "RTU reply incomplete at timeout"
                        );
                    }
                    return Err(ReplyError::Timeout);
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream closed while waiting for a reply",
                    )
                    .into());
                }
                Ok(Ok(n)) => n,
            };
            let now = Instant::now();
            let first = *first_byte_at.get_or_insert(now);
            buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
            match find_reply(&buf, unit, fc, expected_len) {
                Found::Reply { start, len } => {
                    if start > 0 {
                        tracing::debug!(bytes = start, "RTU master skipped input before the reply");
                        self.discarded += start as u64;
                    }
                    // Anything after the reply is stale: the next request discards it.
                    self.line = if buf.len() > start + len {
                        Line::Garbled
                    } else {
                        Line::Clean
                    };
                    return Ok(Transaction {
                        reply: buf[start..start + len].to_vec(),
                        sent_at,
                        first_byte_at: first,
                        last_byte_at: now,
                    });
                }
                Found::BadCrcAtHead => {
                    self.line = Line::Garbled;
                    return Err(ReplyError::BadCrc);
                }
                Found::Nothing => {}
            }
            // A babbling line: keep the tail, where a reply could still begin.
            if buf.len() > 2 * MAX_FRAME_LEN {
                let cut = buf.len() - MAX_FRAME_LEN;
                buf.drain(..cut);
                self.discarded += cut as u64;
            }
        }
    }

    /// Read `count` registers (FC03/FC04) from `unit` starting at `address`.
    ///
    /// A `count` whose reply would exceed 256 bytes (more than 125 registers) is
    /// refused locally with [`ReplyError::BadFrame`]; otherwise `count` is sent as
    /// is, and a slave's exception comes back as [`ReplyError::Exception`].
    pub async fn read(
        &mut self,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ReplyError> {
        let request = encode_read(unit, function, address, count);
        let tx = self
            .transact(&request, expected_reply_len(function, count))
            .await?;
        let parsed = parse_read_reply(unit, function, count, &tx.reply);
        if matches!(parsed, Err(ReplyError::BadFrame(_) | ReplyError::BadCrc)) {
            self.line = Line::Garbled;
        }
        parsed
    }

    /// Write one register (FC06); the slave must echo the request.
    pub async fn write_single(
        &mut self,
        unit: u8,
        address: u16,
        value: u16,
    ) -> Result<(), ReplyError> {
        let request = encode_write_single(unit, address, value);
        let tx = self.transact(&request, request.len()).await?;
        if tx.is_exception() {
            return Err(ReplyError::Exception(tx.reply[2]));
        }
        if tx.reply != request {
            self.line = Line::Garbled;
            return Err(ReplyError::BadFrame(format!(
                "FC06 echo {:02X?} differs from request {:02X?}",
                tx.reply, request
            )));
        }
        Ok(())
    }

    /// Write registers (FC16); the slave must confirm address and count.
    pub async fn write_multiple(
        &mut self,
        unit: u8,
        address: u16,
        values: &[u16],
    ) -> Result<(), ReplyError> {
        let request = encode_write_multiple(unit, address, values)
            .ok_or_else(|| ReplyError::BadFrame(format!("FC16 of {} registers", values.len())))?;
        let tx = self.transact(&request, 8).await?;
        if tx.is_exception() {
            return Err(ReplyError::Exception(tx.reply[2]));
        }
        if tx.reply.get(..6) != request.get(..6) {
            self.line = Line::Garbled;
            return Err(ReplyError::BadFrame(format!(
                "FC16 reply {:02X?} does not confirm the request",
                tx.reply
            )));
        }
        Ok(())
    }

    async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        // No flush: a tty has no user-space buffer, and its flush is a blocking tcdrain that
        // would hold a runtime worker until the request is on the wire.
        self.stream.write_all(request).await
    }

    /// Discard input that is not an answer to the request about to be sent:
    /// always whatever is already buffered; after a garbled reply everything until the
    /// line has been quiet for the drain window, after a timeout for the late-reply window.
    async fn discard_stale(&mut self) -> Result<(), ReplyError> {
        let window = match self.line {
            Line::Clean => Duration::ZERO,
            Line::Garbled => self.drain_window,
            Line::Late => self.late_window.max(self.drain_window),
        };
        let mut scratch = [0u8; MAX_FRAME_LEN];
        let total = drain_quiet(&mut self.stream, &mut scratch, window).await?;
        if total > 0 {
            tracing::debug!(bytes = total, "RTU master discarded stale input");
            self.discarded += total as u64;
        }
        self.line = Line::Clean;
        Ok(())
    }
}

/// Discard input from `stream` (through `scratch`) and return how many bytes went.
///
/// With a zero `window`: only what is already buffered, one poll per read, no timer. With
/// a window: everything until the line has been quiet that long. At most
/// 64 KiB either way, so a babbling line cannot stall the caller. The one drain of every
/// master ([`RtuMaster`] and the bench).
pub async fn drain_quiet<S: AsyncRead + Unpin>(
    stream: &mut S,
    scratch: &mut [u8],
    window: Duration,
) -> io::Result<usize> {
    let mut total = 0usize;
    while total < MAX_DRAIN_BYTES {
        let n = if window.is_zero() {
            std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Ready(Ok(0)),
                }
            })
            .await?
        } else {
            match timeout(window, stream.read(scratch)).await {
                Err(_) => 0,
                Ok(r) => r?,
            }
        };
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airbridge_modbus::crc::append_crc;
    use std::future::Future;
    use tokio::io::{duplex, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    /// Build a normal FC03/FC04 reply for `words`.
    fn reply(unit: u8, function: u8, words: &[u16]) -> Vec<u8> {
        let mut out = vec![unit, function, (words.len() * 2) as u8];
        for w in words {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&[0, 0]);
        let len = out.len() - 2;
        append_crc(&mut out, len);
        out
    }

    fn exception(unit: u8, function: u8, code: u8) -> Vec<u8> {
        let mut out = vec![unit, function | 0x80, code, 0, 0];
        append_crc(&mut out, 3);
        out
    }

    /// Read one 8-byte request from the responder side.
    async fn next_request(s: &mut DuplexStream) -> Option<[u8; 8]> {
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.ok()?;
        Some(req)
    }

    fn req_address(req: &[u8; 8]) -> u16 {
        u16::from_be_bytes([req[2], req[3]])
    }

    fn req_count(req: &[u8; 8]) -> u16 {
        u16::from_be_bytes([req[4], req[5]])
    }

    /// Responder answering FC03 with word = address + i.
    async fn echo_responder(mut s: DuplexStream) {
        while let Some(req) = next_request(&mut s).await {
            assert!(frame_crc_ok(&req));
            let a = req_address(&req);
            let words: Vec<u16> = (0..req_count(&req)).map(|i| a.wrapping_add(i)).collect();
            if s.write_all(&reply(req[0], req[1], &words)).await.is_err() {
                return;
            }
        }
    }

    const LIMIT: Duration = Duration::from_secs(5);

    /// What the fake device sends back for a request.
    type Answer = Box<dyn FnOnce(&[u8; 8]) -> Vec<u8> + Send>;

    /// A normal reply of `w` to whatever was asked.
    fn words(w: &'static [u16]) -> Answer {
        Box::new(move |req| reply(req[0], req[1], w))
    }

    /// A device answering the next requests in turn: wait `after`, then send the answer.
    /// The handle gives its end back, so the link stays open until the test ends.
    fn device(script: Vec<(Duration, Answer)>) -> (DuplexStream, JoinHandle<DuplexStream>) {
        let (a, mut b) = duplex(1024);
        let handle = tokio::spawn(async move {
            for (after, answer) in script {
                let req = next_request(&mut b).await.unwrap();
                if !after.is_zero() {
                    sleep(after).await;
                }
                b.write_all(&answer(&req)).await.unwrap();
            }
            b
        });
        (a, handle)
    }

    /// `f`, failing the test if it takes longer than [`LIMIT`].
    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(LIMIT, f).await.unwrap()
    }

    #[tokio::test]
    async fn good_reply() {
        let (a, b) = duplex(1024);
        let responder = tokio::spawn(echo_responder(b));
        let mut m = RtuMaster::new(a, Duration::from_millis(500));
        let words = within(m.read(1, 3, 100, 4)).await.unwrap();
        assert_eq!(words, vec![100, 101, 102, 103]);

        let tx = within(m.transact(&encode_read(1, 3, 7, 1), 7))
            .await
            .unwrap();
        assert_eq!(tx.reply, reply(1, 3, &[7]));
        assert!(tx.sent_at <= tx.first_byte_at && tx.first_byte_at <= tx.last_byte_at);
        assert!(!tx.is_exception());
        drop(m);
        responder.await.unwrap();
    }

    #[tokio::test]
    async fn exception_reply() {
        let answer: Answer = Box::new(|req| exception(req[0], req[1], 0x02));
        let (a, responder) = device(vec![(Duration::ZERO, answer)]);
        let mut m = RtuMaster::new(a, Duration::from_millis(500));
        let r = within(m.read(1, 3, 300, 10)).await;
        assert!(matches!(r, Err(ReplyError::Exception(2))), "{r:?}");
        let _b = responder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        let (a, b) = duplex(1024);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let start = Instant::now();
        let r = within(m.read(1, 3, 0, 10)).await;
        assert!(matches!(r, Err(ReplyError::Timeout)), "{r:?}");
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_millis(200));
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_crc_then_recovers() {
        let bad_crc: Answer = Box::new(|req| {
            let mut r = reply(req[0], req[1], &[1, 2]);
            let last = r.len() - 1;
            r[last] ^= 0xFF;
            r
        });
        // The second request gets a good answer.
        let (a, responder) = device(vec![
            (Duration::ZERO, bad_crc),
            (Duration::ZERO, words(&[3, 4])),
        ]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let r = within(m.read(1, 3, 0, 2)).await;
        assert!(matches!(r, Err(ReplyError::BadCrc)), "{r:?}");
        let r = within(m.read(1, 3, 0, 2)).await;
        assert_eq!(r.unwrap(), vec![3, 4]);
        let _b = responder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reply_in_chunks() {
        let (a, mut b) = duplex(1024);
        let responder = tokio::spawn(async move {
            let req = next_request(&mut b).await.unwrap();
            let words: Vec<u16> = (0..74).collect();
            let r = reply(req[0], req[1], &words);
            for chunk in r.chunks(17) {
                b.write_all(chunk).await.unwrap();
                b.flush().await.unwrap();
                sleep(Duration::from_millis(3)).await;
            }
            b
        });
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let tx = within(m.transact(&encode_read(1, 3, 0, 74), 153))
            .await
            .unwrap();
        assert_eq!(tx.reply.len(), 153);
        assert!(tx.total() >= Duration::from_millis(24), "{:?}", tx.total());
        let words = parse_read_reply(1, 3, 74, &tx.reply).unwrap();
        assert_eq!(words, (0..74).collect::<Vec<u16>>());
        let _b = responder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn late_reply_is_discarded() {
        // First request: answer after the master has given up; second: promptly.
        let (a, responder) = device(vec![
            (Duration::from_millis(150), words(&[0x1111])),
            (Duration::ZERO, words(&[0x2222])),
        ]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let r = within(m.read(1, 3, 1, 1)).await;
        assert!(matches!(r, Err(ReplyError::Timeout)), "{r:?}");
        // The poll interval passes; the late reply lands in the meantime.
        sleep(Duration::from_millis(100)).await;
        let r = within(m.read(1, 3, 2, 1)).await;
        assert_eq!(r.unwrap(), vec![0x2222]);
        assert_eq!(m.discarded_bytes(), 7);
        let _b = responder.await.unwrap();
    }

    /// Issue 15: a reply 1.5 x timeout late (after the old 5 ms drain, before the late-reply
    /// window ends) must not be taken as the answer to the next request of the same shape.
    #[tokio::test(start_paused = true)]
    async fn late_reply_within_the_window_is_not_the_next_answer() {
        let (a, responder) = device(vec![
            (Duration::from_millis(150), words(&[0x1111])),
            (Duration::ZERO, words(&[0x2222])),
        ]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100))
            .with_late_reply_window(Duration::from_millis(100));
        let r = within(m.read(1, 3, 1, 1)).await;
        assert!(matches!(r, Err(ReplyError::Timeout)), "{r:?}");
        // The next request goes out at once (no poll interval in between).
        let r = within(m.read(1, 3, 2, 1)).await;
        assert_eq!(r.unwrap(), vec![0x2222]);
        let _b = responder.await.unwrap();
    }

    /// A short CRC-valid reply (byte count below the request's) ends at its own length:
    /// a bad frame at once, not a timeout.
    #[tokio::test(start_paused = true)]
    async fn short_valid_reply_is_read_to_its_own_length() {
        let (a, responder) = device(vec![(Duration::ZERO, words(&[1, 2]))]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let start = Instant::now();
        let r = within(m.read(1, 3, 0, 10)).await;
        assert!(matches!(r, Err(ReplyError::BadFrame(_))), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "waited for the timeout"
        );
        let _b = responder.await.unwrap();
    }

    /// Without inter-byte silence (TCP converters, ptys) the reply is found by unit,
    /// function, length and CRC: noise and another unit's frame before it are skipped.
    #[tokio::test(start_paused = true)]
    async fn reply_is_hunted_by_unit_function_length_and_crc() {
        let noisy: Answer = Box::new(|req| {
            let mut out = vec![0x00, 0xFF, req[0]];
            out.extend_from_slice(&reply(7, req[1], &[0x0707]));
            out.extend_from_slice(&reply(req[0], req[1], &[0x4242]));
            out
        });
        let (a, responder) = device(vec![(Duration::ZERO, noisy)]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let r = within(m.read(1, 3, 0, 1)).await;
        assert_eq!(r.unwrap(), vec![0x4242]);
        assert_eq!(m.discarded_bytes(), 3 + 7);
        let _b = responder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_transaction_leaves_master_draining() {
        let (a, responder) = device(vec![
            (Duration::from_millis(52), words(&[0x1111])),
            (Duration::ZERO, words(&[0x2222])),
        ]);
        let mut m = RtuMaster::new(a, Duration::from_secs(1));
        // The caller gives up after 50 ms (e.g. cancellation) and retries at once;
        // the first answer lands within the drain window and must not be taken.
        let dropped = tokio::time::timeout(Duration::from_millis(50), m.read(1, 3, 1, 1)).await;
        assert!(dropped.is_err());
        let r = within(m.read(1, 3, 2, 1)).await;
        assert_eq!(r.unwrap(), vec![0x2222]);
        let _b = responder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn write_single_echo_and_exception() {
        let echo: Answer = Box::new(|req| req.to_vec());
        let refuse: Answer = Box::new(|req| exception(req[0], req[1], 3));
        let (a, responder) = device(vec![(Duration::ZERO, echo), (Duration::ZERO, refuse)]);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        within(m.write_single(1, 4004, 85)).await.unwrap();
        let r = within(m.write_single(1, 4004, 200)).await;
        assert!(matches!(r, Err(ReplyError::Exception(3))), "{r:?}");
        let _b = responder.await.unwrap();
    }

    #[tokio::test]
    async fn closed_stream_is_io_error() {
        let (a, b) = duplex(64);
        drop(b);
        let mut m = RtuMaster::new(a, Duration::from_millis(100));
        let r = within(m.read(1, 3, 0, 1)).await;
        assert!(matches!(r, Err(ReplyError::Io(_))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_zero_window_takes_only_what_is_buffered() {
        let (mut a, mut b) = duplex(1024);
        b.write_all(&[0xAA; 10]).await.unwrap();
        let mut scratch = [0u8; 4];
        let start = Instant::now();
        assert_eq!(
            drain_quiet(&mut a, &mut scratch, Duration::ZERO)
                .await
                .unwrap(),
            10
        );
        assert_eq!(
            drain_quiet(&mut a, &mut scratch, Duration::ZERO)
                .await
                .unwrap(),
            0
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "a zero window never waits");
        // With a window, bytes arriving inside it are taken too.
        let late = tokio::spawn(async move {
            sleep(Duration::from_millis(3)).await;
            b.write_all(&[0x55; 6]).await.unwrap();
            b
        });
        let window = Duration::from_millis(5);
        assert_eq!(drain_quiet(&mut a, &mut scratch, window).await.unwrap(), 6);
        let _b = late.await.unwrap();
    }
}
