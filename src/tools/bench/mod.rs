//! `airbridge bench`: measure the gateway the way the reference tools in
//! `shared/bench-tools` do, so the numbers are comparable.
//!
//! - [`bench_rtu`]: act as the inverter (RTU master), FC03 round-robin over ranges,
//!   turnaround (→ first reply byte) and total (→ last reply byte) per request.
//! - [`bench_push`]: act as the KSEM push (FC16 groups 0..27 and 40..145) over N
//!   connections, write latency and throughput.
//! - [`bench_age`]: data age, push acknowledged → first RTU reply carrying that sequence.
//! - [`bench_e2e`]: all of it against the real gateway in-process over a pty pair.
//!
//! Timing reference (as `rtu_bench.py`): the timestamp taken immediately *before* the
//! single `write()` of the request. Timestamps are [`std::time::Instant`]
//! (CLOCK_MONOTONIC), taken right around the I/O calls; nothing is logged or allocated
//! per request in the measuring loops. Latencies are recorded in nanoseconds into
//! [`hdrhistogram`] (3 significant digits) and reported in microseconds.
//!
//! May touch: the stream / sockets it is given; [`bench_e2e`] also starts the simulated
//! KSEM, the gateway and the simulated inverter (like [`crate::tools::demo`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::modbus::crc::{append_crc, frame_crc_ok};
use crate::modbus::master::{encode_read, EXCEPTION_LEN, MAX_FRAME_LEN};

/// Function code of the reads (FC03, as the Plenticore).
const FC_READ: u8 = 0x03;
/// Function code of the pushes.
const FC_WRITE_MULTIPLE: u8 = 0x10;
/// Quiet window used to discard stale input after a timeout or a bad frame.
const DRAIN_WINDOW: Duration = Duration::from_millis(5);
/// The KSEM push groups (start, count): 0..27 and 40..145.
pub const PUSH_GROUPS: [(u16, u16); 2] = crate::tools::sim::ksem::PUSH_GROUPS;
/// What a pseudo-terminal cannot tell apart.
pub const PTY_NOTE: &str =
    "on a pseudo-terminal there is no baud timing: these numbers are processing latency, not wire time";

// ---------------------------------------------------------------------------------------
// Histograms and percentiles

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct LatencyHist(Histogram<u64>);

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        LatencyHist(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds"),
        )
    }

    /// Record one latency (saturating at the upper bound).
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns);
    }

    /// Add another histogram's samples.
    pub fn add(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Percentiles in microseconds.
    pub fn summary(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Percentiles {
            n: self.0.len(),
            min_us: us(self.0.min()),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p99_9_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: (self.0.mean() / 100.0).round() / 10.0,
        }
    }
}

/// Latency distribution in microseconds (0.1 µs resolution; values are hdrhistogram
/// bucket values, i.e. exact to 3 significant digits). All zero when `n` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub n: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    /// `p50/p90/p99/p99.9/max` in µs, or `-` without samples.
    pub fn compact(&self) -> String {
        if self.n == 0 {
            return "-".to_string();
        }
        format!(
            "{}/{}/{}/{}/{}",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p99_9_us),
            fmt_us(self.max_us)
        )
    }
}

/// Microseconds for a table: one decimal below 100 µs, whole numbers above.
pub fn fmt_us(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

// ---------------------------------------------------------------------------------------
// Progress bars

/// A progress bar on stderr, hidden when `visible` is false (`--json`, or stderr is not a
/// terminal).
pub fn progress_bar(visible: bool, len: u64, message: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:32} [{elapsed_precise}] {wide_bar} {pos}/{len}")
    {
        pb.set_style(style);
    }
    pb.set_message(message.to_string());
    pb
}

// ---------------------------------------------------------------------------------------
// RTU: one exchange

/// Outcome of one RTU request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtuStatus {
    Ok,
    /// No byte within the timeout.
    Timeout,
    /// Some bytes, but not a complete frame, within the timeout.
    Partial,
    /// A CRC-valid exception reply with this code.
    Exception(u8),
    BadCrc,
    /// CRC-valid but wrong unit, function, byte count or length.
    BadFrame,
}

/// One request/reply as measured.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub status: RtuStatus,
    /// Immediately before the `write()` of the request (the reference point).
    pub t_pre: Instant,
    /// When the read returning the first reply byte completed.
    pub t_first: Option<Instant>,
    /// When the read completing the frame returned.
    pub t_last: Option<Instant>,
    /// Reply length in bytes (valid prefix of the buffer).
    pub len: usize,
}

/// Read whatever is already buffered, without waiting (a single poll). Returns the number
/// of bytes discarded.
async fn discard_buffered<S: AsyncRead + Unpin>(
    stream: &mut S,
    scratch: &mut [u8],
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(scratch);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Ready(Ok(0)),
            }
        })
        .await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// Discard input until the line has been quiet for `window` (after trouble).
async fn drain_quiet<S: AsyncRead + Unpin>(
    stream: &mut S,
    scratch: &mut [u8],
    window: Duration,
) -> std::io::Result<usize> {
    let mut total = 0;
    while total < 64 * 1024 {
        match tokio::time::timeout(window, stream.read(scratch)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(total)
}

/// Validate a complete read reply without allocating.
fn check_read_reply(unit: u8, function: u8, count: u16, frame: &[u8]) -> RtuStatus {
    if frame.len() < EXCEPTION_LEN || !frame_crc_ok(frame) {
        return RtuStatus::BadCrc;
    }
    if frame[0] != unit {
        return RtuStatus::BadFrame;
    }
    if frame[1] == function | 0x80 {
        return if frame.len() == EXCEPTION_LEN {
            RtuStatus::Exception(frame[2])
        } else {
            RtuStatus::BadFrame
        };
    }
    let want = 2 * usize::from(count);
    if frame[1] != function || usize::from(frame[2]) != want || frame.len() != 5 + want {
        return RtuStatus::BadFrame;
    }
    RtuStatus::Ok
}

/// Send one prepared read request and collect the reply into `buf`.
///
/// The reply length is taken from the frame (5 for an exception, 3 + byte count + 2
/// otherwise), as `mbrtu.py` does; then the frame is validated. I/O errors end the run.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8; 8],
    count: u16,
    timeout: Duration,
    buf: &mut [u8; MAX_FRAME_LEN + 8],
) -> std::io::Result<Exchange> {
    let t_pre = Instant::now();
    stream.write_all(request).await?;
    // No flush: on a serial port it is tcdrain(), which would block until the bytes
    // are on the wire and delay the first read; a pty has nothing to flush.
    let deadline = tokio::time::Instant::from_std(t_pre + timeout);
    let mut len = 0usize;
    let mut t_first = None;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf[len..])).await {
            Err(_) => {
                return Ok(Exchange {
                    status: if len == 0 {
                        RtuStatus::Timeout
                    } else {
                        RtuStatus::Partial
                    },
                    t_pre,
                    t_first,
                    t_last: None,
                    len,
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream closed while waiting for a reply",
                ))
            }
            Ok(Ok(n)) => n,
        };
        let now = Instant::now();
        t_first.get_or_insert(now);
        len += n;
        let need = if len >= 2 && buf[1] & 0x80 != 0 {
            Some(EXCEPTION_LEN)
        } else if len >= 3 {
            Some(5 + usize::from(buf[2]))
        } else {
            None
        };
        if let Some(need) = need {
            if len >= need || len >= MAX_FRAME_LEN {
                let status = if len == need {
                    check_read_reply(request[0], request[1], count, &buf[..len])
                } else {
                    RtuStatus::BadFrame
                };
                return Ok(Exchange {
                    status,
                    t_pre,
                    t_first,
                    t_last: Some(now),
                    len,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// bench rtu

/// A register range `start:count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegRange {
    pub start: u16,
    pub count: u16,
}

impl std::str::FromStr for RegRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, c) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: write a range as start:count, e.g. 0:74"))?;
        let start = a.trim().parse().map_err(|e| format!("`{s}`: start: {e}"))?;
        let count: u16 = c.trim().parse().map_err(|e| format!("`{s}`: count: {e}"))?;
        if !(1..=125).contains(&count) {
            return Err(format!("`{s}`: count must be 1..=125"));
        }
        if u32::from(start) + u32::from(count) > 65_536 {
            return Err(format!("`{s}`: range ends beyond register 65535"));
        }
        Ok(RegRange { start, count })
    }
}

/// Parse `0:74,74:74,8192:58`.
pub fn parse_ranges(s: &str) -> Result<Vec<RegRange>, String> {
    s.split(',').map(str::parse).collect()
}

/// What `bench rtu` does.
#[derive(Debug, Clone, Serialize)]
pub struct RtuBenchOptions {
    pub unit: u8,
    pub ranges: Vec<RegRange>,
    /// Requests per range.
    pub count: u64,
    /// Requests per second (all ranges together); `None`: back to back.
    pub rate: Option<f64>,
    #[serde(serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    #[serde(skip)]
    pub progress: ProgressBar,
}

impl Default for RtuBenchOptions {
    fn default() -> Self {
        RtuBenchOptions {
            unit: 1,
            ranges: vec![
                RegRange {
                    start: 0,
                    count: 74,
                },
                RegRange {
                    start: 74,
                    count: 74,
                },
                RegRange {
                    start: 8192,
                    count: 58,
                },
            ],
            count: 2000,
            rate: None,
            timeout: Duration::from_millis(500),
            progress: ProgressBar::hidden(),
        }
    }
}

fn ser_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Counts and latencies of one range (or of all of them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RtuRangeReport {
    /// `start:count`, or `all`.
    pub range: String,
    pub registers: u16,
    pub requests: u64,
    pub ok: u64,
    pub timeouts: u64,
    pub partial: u64,
    /// Exception replies by code.
    pub exceptions: BTreeMap<u8, u64>,
    pub bad_crc: u64,
    pub bad_frame: u64,
    /// Bytes found buffered before a request (late or extra reply bytes).
    pub stray_bytes: u64,
    /// Request write → first reply byte (successful requests).
    pub turnaround: Percentiles,
    /// Request write → last reply byte (successful requests).
    pub total: Percentiles,
}

impl RtuRangeReport {
    pub fn bad_frames(&self) -> u64 {
        self.bad_crc + self.bad_frame
    }
    pub fn exception_count(&self) -> u64 {
        self.exceptions.values().sum()
    }
}

/// Result of [`bench_rtu`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RtuBenchReport {
    pub unit: u8,
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub ranges: Vec<RtuRangeReport>,
    pub all: RtuRangeReport,
    /// Measuring reference.
    pub reference: String,
}

#[derive(Default)]
struct RangeAcc {
    report: RtuRangeReport,
    turnaround: LatencyHist,
    total: LatencyHist,
}

impl RangeAcc {
    fn count(&mut self, ex: &Exchange) {
        let r = &mut self.report;
        r.requests += 1;
        match ex.status {
            RtuStatus::Ok => {
                r.ok += 1;
                if let (Some(f), Some(l)) = (ex.t_first, ex.t_last) {
                    self.turnaround
                        .record(f.saturating_duration_since(ex.t_pre));
                    self.total.record(l.saturating_duration_since(ex.t_pre));
                }
            }
            RtuStatus::Timeout => r.timeouts += 1,
            RtuStatus::Partial => r.partial += 1,
            RtuStatus::Exception(c) => *r.exceptions.entry(c).or_default() += 1,
            RtuStatus::BadCrc => r.bad_crc += 1,
            RtuStatus::BadFrame => r.bad_frame += 1,
        }
    }

    fn finish(mut self) -> RtuRangeReport {
        self.report.turnaround = self.turnaround.summary();
        self.report.total = self.total.summary();
        self.report
    }
}

fn merge_ranges(accs: &[RangeAcc]) -> RtuRangeReport {
    let mut all = RangeAcc::default();
    for a in accs {
        let (r, t) = (&a.report, &mut all.report);
        t.requests += r.requests;
        t.ok += r.ok;
        t.timeouts += r.timeouts;
        t.partial += r.partial;
        t.bad_crc += r.bad_crc;
        t.bad_frame += r.bad_frame;
        t.stray_bytes += r.stray_bytes;
        for (c, n) in &r.exceptions {
            *t.exceptions.entry(*c).or_default() += n;
        }
        all.turnaround.add(&a.turnaround);
        all.total.add(&a.total);
    }
    all.report.range = "all".into();
    all.finish()
}

/// Act as the inverter on `stream`: FC03 round-robin over `opts.ranges`, `opts.count`
/// requests per range. Runs on anything (serial port, pty, in-memory pipe).
pub async fn bench_rtu<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    opts: &RtuBenchOptions,
) -> anyhow::Result<RtuBenchReport> {
    anyhow::ensure!(!opts.ranges.is_empty(), "no ranges to read");
    let requests: Vec<[u8; 8]> = opts
        .ranges
        .iter()
        .map(|r| encode_read(opts.unit, FC_READ, r.start, r.count))
        .collect();
    let mut accs: Vec<RangeAcc> = opts
        .ranges
        .iter()
        .map(|r| RangeAcc {
            report: RtuRangeReport {
                range: format!("{}:{}", r.start, r.count),
                registers: r.count,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let total = opts.count * opts.ranges.len() as u64;
    opts.progress.set_length(total);
    let period = opts
        .rate
        .filter(|r| *r > 0.0 && r.is_finite())
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut buf = [0u8; MAX_FRAME_LEN + 8];
    let mut scratch = [0u8; 512];
    let mut dirty = false;
    let mut prev: Option<usize> = None;
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    for i in 0..total {
        let idx = (i % opts.ranges.len() as u64) as usize;
        if let Some(p) = period {
            tokio::time::sleep_until(next).await;
            next += p;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now; // behind: do not burst to catch up
            }
        }
        let stray = if dirty {
            drain_quiet(&mut stream, &mut scratch, DRAIN_WINDOW).await?
        } else {
            discard_buffered(&mut stream, &mut scratch).await?
        };
        if let Some(p) = prev {
            accs[p].report.stray_bytes += stray as u64;
        }
        let ex = exchange(
            &mut stream,
            &requests[idx],
            opts.ranges[idx].count,
            opts.timeout,
            &mut buf,
        )
        .await?;
        dirty = ex.status != RtuStatus::Ok && !matches!(ex.status, RtuStatus::Exception(_));
        accs[idx].count(&ex);
        prev = Some(idx);
        if i % 64 == 63 {
            opts.progress.set_position(i + 1);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stray = drain_quiet(&mut stream, &mut scratch, Duration::from_millis(20)).await?;
    if let Some(p) = prev {
        accs[p].report.stray_bytes += stray as u64;
    }
    opts.progress.set_position(total);
    opts.progress.finish_and_clear();
    let all = merge_ranges(&accs);
    Ok(RtuBenchReport {
        unit: opts.unit,
        requests: total,
        elapsed_s: round3(elapsed),
        requests_per_s: round1(total as f64 / elapsed.max(1e-9)),
        ranges: accs.into_iter().map(RangeAcc::finish).collect(),
        all,
        reference: "timestamp immediately before the write() of the request".into(),
    })
}

/// Serial line: bits per character at 8 data bits (start + 8 + parity + stop).
pub fn bits_per_char(parity: bool, stop_bits: u8) -> u32 {
    1 + 8 + u32::from(parity) + u32::from(stop_bits)
}

/// Theoretical time on the wire of `bytes` at `baud` (8N2 unless told otherwise).
pub fn wire_time(bytes: usize, baud: u32, bits_per_char: u32) -> Duration {
    Duration::from_secs_f64(bytes as f64 * f64::from(bits_per_char) / f64::from(baud.max(1)))
}

/// True when `device` looks like a pseudo-terminal: a `/dev/pts/*` path (also behind a
/// symlink, as socat's `link=`), `/dev/ptmx`, or "pty" in the name.
pub fn is_pty(device: &str) -> bool {
    let real = std::fs::canonicalize(device)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    [device, real.as_str()]
        .iter()
        .any(|d| d.starts_with("/dev/pts/") || d == &"/dev/ptmx")
        || std::path::Path::new(device)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("pty"))
}

/// Markdown table of an RTU report. `wire` = (baud, bits per char) on a real UART.
pub fn rtu_table(report: &RtuBenchReport, wire: Option<(u32, u32)>) -> String {
    let mut s = String::new();
    let wire_cols = wire.is_some();
    s.push_str("| range | requests | ok | timeouts | exceptions | bad frames | stray B | turnaround p50/p90/p99/p99.9/max µs | total p50/p90/p99/p99.9/max µs |");
    if wire_cols {
        s.push_str(" wire: request / reply µs |");
    }
    s.push('\n');
    s.push_str("|---|---|---|---|---|---|---|---|---|");
    if wire_cols {
        s.push_str("---|");
    }
    s.push('\n');
    for r in report.ranges.iter().chain(std::iter::once(&report.all)) {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.range,
            r.requests,
            r.ok,
            r.timeouts + r.partial,
            fmt_exceptions(&r.exceptions),
            r.bad_frames(),
            r.stray_bytes,
            r.turnaround.compact(),
            r.total.compact()
        );
        if let Some((baud, bpc)) = wire {
            if r.range == "all" {
                s.push_str(" |");
            } else {
                let req = wire_time(8, baud, bpc);
                let rep = wire_time(5 + 2 * usize::from(r.registers), baud, bpc);
                let _ = write!(
                    s,
                    " {:.0} / {:.0} |",
                    req.as_secs_f64() * 1e6,
                    rep.as_secs_f64() * 1e6
                );
            }
        }
        s.push('\n');
    }
    s
}

fn fmt_exceptions(e: &BTreeMap<u8, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(c, n)| format!("{n}×{c:02}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// bench push

/// What `bench push` does.
#[derive(Debug, Clone, Serialize)]
pub struct PushBenchOptions {
    pub target: SocketAddr,
    /// Push cycles (group 0..27 then 40..145) per second per connection; `None`: as fast
    /// as possible.
    pub rate: Option<f64>,
    #[serde(serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    pub connections: usize,
    pub unit: u8,
    #[serde(serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    #[serde(skip)]
    pub progress: ProgressBar,
    /// Stop early when cancelled (in addition to `duration`).
    #[serde(skip)]
    pub stop: CancellationToken,
}

impl PushBenchOptions {
    pub fn new(target: SocketAddr) -> Self {
        PushBenchOptions {
            target,
            rate: None,
            duration: Duration::from_secs(10),
            connections: 1,
            unit: 1,
            timeout: Duration::from_secs(1),
            progress: ProgressBar::hidden(),
            stop: CancellationToken::new(),
        }
    }
}

/// Result of [`bench_push`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushBenchReport {
    pub connections: usize,
    /// Cycles per second per connection (`null`: max).
    pub rate: Option<f64>,
    pub elapsed_s: f64,
    pub writes_ok: u64,
    /// Exception replies by code.
    pub exceptions: BTreeMap<u8, u64>,
    /// Timeouts, I/O errors, connect failures and malformed replies.
    pub errors: u64,
    pub reconnects: u64,
    pub writes_per_s: f64,
    pub registers_per_s: f64,
    /// Request sent (before write) → complete response received, successful writes.
    pub latency: Percentiles,
}

#[derive(Default)]
struct PushAcc {
    ok: u64,
    regs: u64,
    exceptions: BTreeMap<u8, u64>,
    errors: u64,
    reconnects: u64,
    hist: LatencyHist,
}

/// Encode an FC16 request with MBAP header into `out`; returns its length.
fn encode_fc16_tcp(out: &mut [u8], tid: u16, unit: u8, address: u16, values: &[u16]) -> usize {
    let n = values.len();
    let pdu_len = 6 + 2 * n;
    out[0..2].copy_from_slice(&tid.to_be_bytes());
    out[2..4].copy_from_slice(&0u16.to_be_bytes());
    out[4..6].copy_from_slice(&((pdu_len + 1) as u16).to_be_bytes());
    out[6] = unit;
    out[7] = FC_WRITE_MULTIPLE;
    out[8..10].copy_from_slice(&address.to_be_bytes());
    out[10..12].copy_from_slice(&(n as u16).to_be_bytes());
    out[12] = (2 * n) as u8;
    for (i, v) in values.iter().enumerate() {
        out[13 + 2 * i..15 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    7 + pdu_len
}

/// Outcome of one FC16 write.
enum WriteOutcome {
    Ok,
    Exception(u8),
    /// A reply that does not answer the request (connection must be dropped).
    Bad,
}

/// One FC16 write, strictly request → response. Returns the outcome; I/O errors and
/// timeouts as `Err`.
async fn push_write(
    sock: &mut TcpStream,
    tx: &mut [u8],
    tid: u16,
    unit: u8,
    address: u16,
    values: &[u16],
    timeout: Duration,
) -> std::io::Result<(WriteOutcome, Instant, Instant)> {
    let len = encode_fc16_tcp(tx, tid, unit, address, values);
    let mut hdr = [0u8; 7];
    let mut body = [0u8; 260];
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + timeout);
    let io = async {
        sock.write_all(&tx[..len]).await?;
        sock.read_exact(&mut hdr).await?;
        let blen = usize::from(u16::from_be_bytes([hdr[4], hdr[5]])).saturating_sub(1);
        if blen == 0 || blen > body.len() {
            return Ok(None);
        }
        sock.read_exact(&mut body[..blen]).await?;
        Ok::<_, std::io::Error>(Some(blen))
    };
    let blen = tokio::time::timeout_at(deadline, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "push write timed out"))??;
    let t1 = Instant::now();
    let Some(blen) = blen else {
        return Ok((WriteOutcome::Bad, t0, t1));
    };
    let body = &body[..blen];
    if u16::from_be_bytes([hdr[0], hdr[1]]) != tid || hdr[2] != 0 || hdr[3] != 0 {
        return Ok((WriteOutcome::Bad, t0, t1));
    }
    if body[0] == FC_WRITE_MULTIPLE | 0x80 && blen == 2 {
        return Ok((WriteOutcome::Exception(body[1]), t0, t1));
    }
    let mut want = [0u8; 5];
    want[0] = FC_WRITE_MULTIPLE;
    want[1..3].copy_from_slice(&address.to_be_bytes());
    want[3..5].copy_from_slice(&(values.len() as u16).to_be_bytes());
    if body != want {
        return Ok((WriteOutcome::Bad, t0, t1));
    }
    Ok((WriteOutcome::Ok, t0, t1))
}

async fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let sock = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// One push connection until `stop`.
async fn push_connection(opts: PushBenchOptions, conn: usize, stop: CancellationToken) -> PushAcc {
    let mut acc = PushAcc::default();
    let mut tx = [0u8; 7 + 6 + 2 * 125];
    // Values: group 0..27 carries a per-connection 32-bit sequence in words 0..1, the
    // rest a changing pattern; so does 40..145.
    let mut groups: Vec<(u16, Vec<u16>)> = PUSH_GROUPS
        .iter()
        .map(|&(a, n)| (a, vec![0u16; usize::from(n)]))
        .collect();
    let period = opts
        .rate
        .filter(|r| *r > 0.0 && r.is_finite())
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut seq: u32 = (conn as u32) << 24;
    let mut tid: u16 = 0;
    let mut first = true;
    let mut next = tokio::time::Instant::now();
    'outer: while !stop.is_cancelled() {
        if !first {
            acc.reconnects += 1;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        first = false;
        let mut sock = match connect(opts.target, opts.timeout).await {
            Ok(s) => s,
            Err(_) => {
                acc.errors += 1;
                continue;
            }
        };
        while !stop.is_cancelled() {
            if let Some(p) = period {
                tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    () = tokio::time::sleep_until(next) => {}
                }
                next += p;
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now;
                }
            }
            seq = seq.wrapping_add(1);
            for (address, words) in &mut groups {
                words[0] = (seq >> 16) as u16;
                words[1] = seq as u16;
                for (i, w) in words.iter_mut().enumerate().skip(2) {
                    *w = (seq as u16).wrapping_add(i as u16);
                }
                tid = tid.wrapping_add(1);
                match push_write(
                    &mut sock,
                    &mut tx,
                    tid,
                    opts.unit,
                    *address,
                    words,
                    opts.timeout,
                )
                .await
                {
                    Ok((WriteOutcome::Ok, t0, t1)) => {
                        acc.ok += 1;
                        acc.regs += words.len() as u64;
                        acc.hist.record(t1.saturating_duration_since(t0));
                    }
                    Ok((WriteOutcome::Exception(c), _, _)) => {
                        *acc.exceptions.entry(c).or_default() += 1;
                    }
                    Ok((WriteOutcome::Bad, _, _)) | Err(_) => {
                        acc.errors += 1;
                        continue 'outer; // reconnect: a late reply would confuse tids
                    }
                }
            }
        }
    }
    acc
}

/// Act as the KSEM push: `opts.connections` connections, each alternately writing FC16
/// group 0..27 and 40..145 with changing values, for `opts.duration` (or until
/// `opts.stop`).
pub async fn bench_push(opts: &PushBenchOptions) -> anyhow::Result<PushBenchReport> {
    anyhow::ensure!(opts.connections > 0, "at least one connection");
    let stop = opts.stop.child_token();
    let started = Instant::now();
    let tasks: Vec<_> = (0..opts.connections)
        .map(|c| tokio::spawn(push_connection(opts.clone(), c, stop.clone())))
        .collect();
    let ms = opts.duration.as_millis() as u64;
    opts.progress.set_length(ms);
    let end = tokio::time::Instant::from_std(started + opts.duration);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => opts.progress.set_position(started.elapsed().as_millis() as u64),
        }
    }
    stop.cancel();
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = PushAcc::default();
    for t in tasks {
        let a = t.await.context("push connection task")?;
        total.ok += a.ok;
        total.regs += a.regs;
        total.errors += a.errors;
        total.reconnects += a.reconnects;
        for (c, n) in a.exceptions {
            *total.exceptions.entry(c).or_default() += n;
        }
        total.hist.add(&a.hist);
    }
    opts.progress.finish_and_clear();
    Ok(PushBenchReport {
        connections: opts.connections,
        rate: opts.rate,
        elapsed_s: round3(elapsed),
        writes_ok: total.ok,
        exceptions: total.exceptions,
        errors: total.errors,
        reconnects: total.reconnects,
        writes_per_s: round1(total.ok as f64 / elapsed.max(1e-9)),
        registers_per_s: round1(total.regs as f64 / elapsed.max(1e-9)),
        latency: total.hist.summary(),
    })
}

// ---------------------------------------------------------------------------------------
// bench age

/// What `bench age` does.
#[derive(Debug, Clone, Serialize)]
pub struct AgeBenchOptions {
    pub push_to: SocketAddr,
    pub unit: u8,
    /// Sequence pushes per second.
    pub rate: f64,
    #[serde(serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    /// RTU reply timeout (and push write timeout).
    #[serde(serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    #[serde(skip)]
    pub progress: ProgressBar,
}

impl AgeBenchOptions {
    pub fn new(push_to: SocketAddr) -> Self {
        AgeBenchOptions {
            push_to,
            unit: 1,
            rate: 5.0,
            duration: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
            progress: ProgressBar::hidden(),
        }
    }
}

/// Result of [`bench_age`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgeReport {
    pub rate: f64,
    pub elapsed_s: f64,
    pub pushes_ok: u64,
    pub push_errors: u64,
    /// Pushes acknowledged inside the RTU observation window.
    pub pushes_in_window: u64,
    /// Of those, seen in an RTU reply.
    pub pushes_measured: u64,
    /// Of those, never seen before the reader stopped.
    pub pushes_unseen_at_end: u64,
    /// Ages that were negative (the reply carrying the sequence arrived before its push's
    /// acknowledgement) and were clamped to 0.
    pub negative_clamped: u64,
    /// RTU reads that were sent after push k was acknowledged but still carried < k.
    pub stale_after_ack_reads: u64,
    pub reads_ok: u64,
    pub reads_not_ok: u64,
    /// Push acknowledged → last byte of the first RTU reply carrying its sequence (or newer).
    pub age: Percentiles,
    /// Push sent → same reply.
    pub age_from_push_send: Percentiles,
    /// Interval between successive RTU replies.
    pub read_period: Percentiles,
}

/// Data age: push a 32-bit sequence into registers 0..1 (FC16 of group 0..27) at
/// `opts.rate`; poll registers 0..1 over RTU back to back on `stream`; age = push
/// acknowledged → last byte of the first reply with sequence ≥ k.
pub async fn bench_age<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    opts: &AgeBenchOptions,
) -> anyhow::Result<AgeReport> {
    anyhow::ensure!(opts.rate > 0.0 && opts.rate.is_finite(), "rate must be > 0");
    let mut buf = [0u8; MAX_FRAME_LEN + 8];
    let mut scratch = [0u8; 512];
    let request = encode_read(opts.unit, FC_READ, 0, 2);
    let word32 = |b: &[u8]| u32::from_be_bytes([b[3], b[4], b[5], b[6]]);

    // Start above whatever registers 0..1 hold now.
    discard_buffered(&mut stream, &mut scratch).await?;
    let first = exchange(&mut stream, &request, 2, opts.timeout, &mut buf).await?;
    let current = if first.status == RtuStatus::Ok {
        word32(&buf)
    } else {
        0
    };
    let base = if current > u32::MAX / 2 {
        1
    } else {
        current + 1
    };
    // (Reads before the first push are ignored by the analysis, so `base` only has to be
    // above what the registers held before.)

    let stop = CancellationToken::new();
    let (target, unit, rate, ptimeout) = (opts.push_to, opts.unit, opts.rate, opts.timeout);
    let pstop = stop.clone();
    let expected = (opts.duration.as_secs_f64() * rate) as usize + 16;
    // (seq, sent, acked) of every acknowledged push.
    let pusher = tokio::spawn(async move {
        let mut log: Vec<(u32, Instant, Instant)> = Vec::with_capacity(expected);
        let mut errors = 0u64;
        let mut tx = [0u8; 7 + 6 + 2 * 125];
        let (address, n) = PUSH_GROUPS[0];
        let mut words = vec![0u16; usize::from(n)];
        let mut seq = base;
        let mut tid = 0u16;
        let mut sock = None;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = pstop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if sock.is_none() {
                match connect(target, ptimeout).await {
                    Ok(s) => sock = Some(s),
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                }
            }
            let Some(s) = sock.as_mut() else { continue };
            words[0] = (seq >> 16) as u16;
            words[1] = seq as u16;
            tid = tid.wrapping_add(1);
            match push_write(s, &mut tx, tid, unit, address, &words, ptimeout).await {
                Ok((WriteOutcome::Ok, t0, t1)) => {
                    log.push((seq, t0, t1));
                    seq += 1;
                }
                Ok((WriteOutcome::Exception(_), _, _)) => errors += 1,
                Ok((WriteOutcome::Bad, _, _)) | Err(_) => {
                    errors += 1;
                    sock = None;
                }
            }
        }
        (log, errors)
    });

    // The reader: registers 0..1 back to back. (t_pre, t_last, seq) of every good reply.
    let mut reads: Vec<(Instant, Instant, u32)> =
        Vec::with_capacity((opts.duration.as_secs_f64() * 20_000.0) as usize);
    let mut not_ok = 0u64;
    let started = Instant::now();
    let end = started + opts.duration;
    let ms = opts.duration.as_millis() as u64;
    opts.progress.set_length(ms);
    let mut dirty = false;
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if dirty {
            drain_quiet(&mut stream, &mut scratch, DRAIN_WINDOW).await?;
        } else {
            discard_buffered(&mut stream, &mut scratch).await?;
        }
        let ex = exchange(&mut stream, &request, 2, opts.timeout, &mut buf).await?;
        match (ex.status, ex.t_last) {
            (RtuStatus::Ok, Some(t_last)) => {
                reads.push((ex.t_pre, t_last, word32(&buf)));
                dirty = false;
            }
            (s, _) => {
                not_ok += 1;
                dirty = !matches!(s, RtuStatus::Exception(_));
            }
        }
        i += 1;
        if i.is_multiple_of(256) {
            opts.progress
                .set_position(started.elapsed().as_millis() as u64);
        }
    }
    stop.cancel();
    let (pushes, push_errors) = pusher.await.context("age pusher task")?;
    let elapsed = started.elapsed().as_secs_f64();
    opts.progress.finish_and_clear();
    let mut report = age_analysis(&pushes, &reads);
    report.rate = opts.rate;
    report.elapsed_s = round3(elapsed);
    report.pushes_ok = pushes.len() as u64;
    report.push_errors = push_errors;
    report.reads_not_ok = not_ok;
    Ok(report)
}

/// The offline part of the data-age analysis (as `dataage.py`): `pushes` are
/// (seq, sent, acked), `reads` (request start, last reply byte, seq) in time order.
pub fn age_analysis(
    pushes: &[(u32, Instant, Instant)],
    reads: &[(Instant, Instant, u32)],
) -> AgeReport {
    let mut r = AgeReport {
        reads_ok: reads.len() as u64,
        ..Default::default()
    };
    let (Some(first), Some(last)) = (reads.first(), reads.last()) else {
        return r;
    };
    // Reads that started before the first push was sent cannot carry a pushed sequence.
    let first_sent = pushes.iter().map(|p| p.1).min().unwrap_or(first.0);
    let t0 = first.0.max(first_sent);
    let reads: Vec<_> = reads.iter().copied().filter(|r| r.0 >= t0).collect();
    let reads = &reads[..];
    let t_last_send = last.0;
    let mut ages = LatencyHist::new();
    let mut from_send = LatencyHist::new();
    let mut sorted: Vec<&(u32, Instant, Instant)> = pushes.iter().collect();
    sorted.sort_by_key(|p| p.0);
    let mut j = 0;
    for &&(seq, ts, td) in &sorted {
        if td < t0 || td >= t_last_send {
            continue;
        }
        r.pushes_in_window += 1;
        while j < reads.len() && reads[j].2 < seq {
            j += 1;
        }
        let Some(read) = reads.get(j) else {
            r.pushes_unseen_at_end += 1;
            continue;
        };
        r.pushes_measured += 1;
        if read.1 < td {
            r.negative_clamped += 1;
        }
        ages.record(read.1.saturating_duration_since(td));
        from_send.record(read.1.saturating_duration_since(ts));
    }
    // Read-your-writes: the newest sequence acknowledged before each read was sent.
    let mut by_ack: Vec<(Instant, u32)> = pushes.iter().map(|p| (p.2, p.0)).collect();
    by_ack.sort();
    let (mut k, mut newest) = (0, None::<u32>);
    for &(t_send, _, seq) in reads {
        while k < by_ack.len() && by_ack[k].0 <= t_send {
            newest = Some(newest.map_or(by_ack[k].1, |n| n.max(by_ack[k].1)));
            k += 1;
        }
        if newest.is_some_and(|n| seq < n) {
            r.stale_after_ack_reads += 1;
        }
    }
    let mut period = LatencyHist::new();
    for w in reads.windows(2) {
        period.record(w[1].1.saturating_duration_since(w[0].1));
    }
    r.age = ages.summary();
    r.age_from_push_send = from_send.summary();
    r.read_period = period.summary();
    r
}

// ---------------------------------------------------------------------------------------
// Process statistics

/// CPU time (user + system) of this process, from /proc/self/stat.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// (VmRSS, VmHWM) of this process in KiB, from /proc/self/status.
pub fn process_memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ---------------------------------------------------------------------------------------
// bench e2e

/// What `bench e2e` does.
#[derive(Debug, Clone, Serialize)]
pub struct E2eOptions {
    /// RTU requests per range and load case.
    pub count: u64,
    /// Length of the data-age, push-throughput and nominal-load phases.
    #[serde(serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    /// Connections of the push flood during the RTU reads.
    pub flood_connections: usize,
    /// Register counts read from address 0 (round-robin).
    pub read_sizes: Vec<u16>,
    /// Gateway starts for the start-to-ready measurement.
    pub startup_runs: u64,
    /// Show progress bars on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for E2eOptions {
    fn default() -> Self {
        E2eOptions {
            count: 2000,
            duration: Duration::from_secs(10),
            flood_connections: 4,
            read_sizes: vec![10, 74, 125],
            startup_runs: 20,
            progress: false,
        }
    }
}

/// One RTU load case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eRtuCase {
    pub case: String,
    pub rtu: RtuBenchReport,
    /// The flood's own numbers, for the flood case.
    pub push: Option<PushBenchReport>,
}

/// CPU and memory at nominal load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NominalLoad {
    pub push_interval_ms: u64,
    pub poll_interval_ms: u64,
    pub elapsed_s: f64,
    /// Process CPU (user + system) over the phase, % of one core.
    pub cpu_pct: f64,
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
    pub inverter_requests: u64,
    pub inverter_replies: u64,
    pub inverter_timeouts: u64,
    pub pushes_ok: u64,
}

/// Gateway counters at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayCounters {
    pub rtu_replies: u64,
    pub rtu_exceptions: u64,
    pub rtu_silent_stale: u64,
    pub rtu_silent_warmup: u64,
    pub rtu_crc_errors: u64,
    pub rtu_garbage_bytes: u64,
    pub rtu_partial_discarded: u64,
    pub push_writes_ok: u64,
    pub push_writes_refused: u64,
    pub push_refused_limit: u64,
    pub push_connections_accepted: u64,
}

/// Result of [`bench_e2e`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eReport {
    pub command: String,
    pub cpus: usize,
    pub notes: Vec<String>,
    pub rtu: Vec<E2eRtuCase>,
    pub age: AgeReport,
    pub push: Vec<PushBenchReport>,
    pub nominal: NominalLoad,
    pub startup: StartupReport,
    pub gateway: GatewayCounters,
}

/// Start to ready, with the sources answering at once: the simulated KSEM's slave is
/// already listening and one push of both groups is sent as soon as the push listener is
/// bound. Covers bind, connect, the first poll of every polled region and the commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartupReport {
    pub runs: u64,
    /// `Gateway::start` called → every region filled (READY).
    pub start_to_ready: Percentiles,
    /// `Gateway::start` called → the last polled region committed.
    pub start_to_polled: Percentiles,
    /// The push acknowledged → READY (0 when the push was the first to arrive).
    pub push_ack_to_ready: Percentiles,
}

/// Push both groups once, as the KSEM does right after connecting.
async fn push_both_groups_once(target: SocketAddr) -> anyhow::Result<()> {
    use tokio_modbus::client::Writer as _;
    let mut ctx = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_modbus::client::tcp::connect(target),
    )
    .await
    .context("push connect timed out")?
    .context("push connect")?;
    for (start, count) in PUSH_GROUPS {
        let words = vec![1u16; usize::from(count)];
        tokio::time::timeout(
            Duration::from_secs(5),
            ctx.write_multiple_registers(start, &words),
        )
        .await
        .context("push write timed out")?
        .context("push write")?
        .map_err(|e| anyhow::anyhow!("push write refused: {e}"))?;
    }
    Ok(())
}

/// Measure [`StartupReport`] over `runs` gateway starts against one simulated KSEM.
pub async fn measure_startup(ksem_slave: SocketAddr, runs: u64) -> anyhow::Result<StartupReport> {
    use crate::app::gateway::{Gateway, RtuPort};
    let (mut ready, mut polled, mut after_push) =
        (LatencyHist::new(), LatencyHist::new(), LatencyHist::new());
    for _ in 0..runs {
        let cancel = CancellationToken::new();
        let (_inv_end, gw_end) = tokio_serial::SerialStream::pair()
            .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))?;
        let config = e2e_config(ksem_slave, 4)?;
        let poll_regions: Vec<usize> = config
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source.poll)
            .map(|(i, _)| i)
            .collect();
        let t0 = tokio::time::Instant::now();
        let gateway =
            Gateway::start(config, RtuPort::Stream(Box::new(gw_end)), cancel.clone()).await?;
        let push_addr = gateway
            .push_addr
            .ok_or_else(|| anyhow::anyhow!("bench gateway has no push listener"))?;
        let image = Arc::clone(&gateway.handles.image);
        push_both_groups_once(push_addr).await?;
        let t_push = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), image.wait_warm())
            .await
            .map_err(|_| anyhow::anyhow!("the gateway did not warm up within 10 s"))?;
        let t_ready = tokio::time::Instant::now();
        let snap = image.load_full();
        let last_poll = poll_regions
            .iter()
            .filter_map(|&i| snap.regions.get(i).and_then(|r| r.written))
            .max()
            .unwrap_or(t_ready);
        ready.record(t_ready - t0);
        polled.record(last_poll.saturating_duration_since(t0));
        after_push.record(t_ready.saturating_duration_since(t_push));
        cancel.cancel();
        gateway.join(Duration::from_secs(2)).await;
    }
    Ok(StartupReport {
        runs,
        start_to_ready: ready.summary(),
        start_to_polled: polled.summary(),
        push_ack_to_ready: after_push.summary(),
    })
}

/// The bench's gateway config: like [`crate::tools::demo::demo_config`], but turnaround 0, push
/// regions that stay fresh for an hour (the idle case must not go silent) and no
/// fallback poll (it would overwrite the pushed sequence numbers).
pub fn e2e_config(
    ksem_slave: SocketAddr,
    max_connections: usize,
) -> anyhow::Result<crate::config::Config> {
    let yaml = format!(
        "rtu: {{device: in-process-pty, baud: 38400, stop_bits: 2, unit_id: 1, turnaround: 0}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: {max_connections}}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
regions:
  - {{name: totals,   start: 0,    count: 40,  source: push, max_age: 1h, on_stale: silence}}
  - {{name: phases,   start: 40,   count: 108, source: push, max_age: 1h, on_stale: silence}}
  - {{name: energy,   start: 512,  count: 280, source: [push, poll], every: 10s, max_age: 5m, on_stale: serve}}
  - {{name: identity, start: 8192, count: 57,  source: poll, every: 1h}}
  - {{name: spec_version, start: 8249, count: 1, source: static, values: {{8249: 7}}}}
"
    );
    Ok(crate::config::parse(&yaml, "bench e2e")?.config)
}

/// Run `bench_rtu` on an owned stream in its own task and give the stream back.
async fn rtu_task<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    opts: RtuBenchOptions,
) -> anyhow::Result<(S, RtuBenchReport)> {
    tokio::spawn(async move {
        let r = bench_rtu(&mut stream, &opts).await;
        r.map(|r| (stream, r))
    })
    .await
    .context("RTU bench task")?
}

/// Start the simulated KSEM and the real gateway over a pty pair in this process and run
/// the whole series. `command` is the command line to print with the results.
pub async fn bench_e2e(opts: &E2eOptions, command: String) -> anyhow::Result<E2eReport> {
    use crate::app::gateway::{Gateway, RtuPort};
    use crate::tools::sim::{inverter, ksem};
    use std::sync::atomic::Ordering::Relaxed;

    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let ksem = ksem::start(ksem::KsemSimOptions::default(), cancel.clone()).await?;
    let startup = measure_startup(ksem.slave_addr(), opts.startup_runs).await?;
    let (mut inv_end, gw_end) = tokio_serial::SerialStream::pair()
        .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))?;
    let config = e2e_config(ksem.slave_addr(), opts.flood_connections.max(4) + 4)?;
    let gateway = Gateway::start(config, RtuPort::Stream(Box::new(gw_end)), cancel.clone()).await?;
    let push_addr = gateway
        .push_addr
        .ok_or_else(|| anyhow::anyhow!("bench gateway has no push listener"))?;
    let handles = gateway.handles.clone();

    // Warm-up: one push of both groups, then wait until every region is filled.
    let mut warm = PushBenchOptions::new(push_addr);
    warm.duration = Duration::from_millis(300);
    warm.rate = Some(5.0);
    let w = bench_push(&warm).await?;
    anyhow::ensure!(w.writes_ok > 0, "warm-up push failed: {w:?}");
    tokio::time::timeout(Duration::from_secs(10), handles.image.wait_warm())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the gateway did not warm up within 10 s (poll of the simulated KSEM failed?)"
            )
        })?;

    let ranges: Vec<RegRange> = opts
        .read_sizes
        .iter()
        .map(|&count| RegRange { start: 0, count })
        .collect();
    let rtu_opts = |label: &str| RtuBenchOptions {
        unit: 1,
        ranges: ranges.clone(),
        count: opts.count,
        rate: None,
        timeout: Duration::from_millis(500),
        progress: progress_bar(opts.progress, opts.count * ranges.len() as u64, label),
    };
    let mut cases = Vec::new();

    // 1. Push idle.
    let (s, rep) = rtu_task(inv_end, rtu_opts("RTU reads, push idle")).await?;
    inv_end = s;
    cases.push(E2eRtuCase {
        case: "push idle".into(),
        rtu: rep,
        push: None,
    });

    // 2. Under a 5 Hz push (the simulated KSEM's pusher, 200 ms).
    let push5 = cancel.child_token();
    let push5_stats = Arc::new(ksem::PushStats::default());
    let pusher = tokio::spawn(ksem::run_pusher(
        push_addr,
        Duration::from_millis(200),
        ksem.model(),
        push5.clone(),
        Arc::clone(&push5_stats),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, rep) = rtu_task(inv_end, rtu_opts("RTU reads, 5 Hz push")).await?;
    inv_end = s;
    push5.cancel();
    let _ = pusher.await;
    cases.push(E2eRtuCase {
        case: "5 Hz push".into(),
        rtu: rep,
        push: None,
    });

    // 3. Under a push flood.
    let mut flood = PushBenchOptions::new(push_addr);
    flood.connections = opts.flood_connections;
    flood.duration = Duration::from_secs(3600);
    let flood_stop = flood.stop.clone();
    let flood_task = tokio::spawn(async move { bench_push(&flood).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let label = format!("RTU reads, flood ×{}", opts.flood_connections);
    let (s, rep) = rtu_task(inv_end, rtu_opts(&label)).await?;
    inv_end = s;
    flood_stop.cancel();
    let flood_rep = flood_task.await.context("flood task")??;
    cases.push(E2eRtuCase {
        case: format!("push flood ({} conn, max rate)", opts.flood_connections),
        rtu: rep,
        push: Some(flood_rep),
    });

    // 4. Data age at 5 Hz.
    let mut age_opts = AgeBenchOptions::new(push_addr);
    age_opts.duration = opts.duration;
    age_opts.progress = progress_bar(opts.progress, 0, "data age, 5 Hz push");
    let (s, age) = tokio::spawn(async move {
        let r = bench_age(&mut inv_end, &age_opts).await;
        r.map(|r| (inv_end, r))
    })
    .await
    .context("age task")??;
    inv_end = s;

    // 5. Push throughput, 1 and 4 connections, max rate, RTU idle.
    let mut push = Vec::new();
    for n in [1usize, 4] {
        let mut p = PushBenchOptions::new(push_addr);
        p.connections = n;
        p.duration = opts.duration;
        p.progress = progress_bar(opts.progress, 0, &format!("push throughput, {n} conn"));
        push.push(bench_push(&p).await?);
    }

    // 6. Nominal load: 5 Hz push, inverter polling every 160 ms.
    let nominal_cancel = cancel.child_token();
    let push_stats = Arc::new(ksem::PushStats::default());
    let pusher = tokio::spawn(ksem::run_pusher(
        push_addr,
        Duration::from_millis(200),
        ksem.model(),
        nominal_cancel.clone(),
        Arc::clone(&push_stats),
    ));
    let inv_stats = Arc::new(inverter::InverterStats::default());
    let inv = tokio::spawn(inverter::run(
        inv_end,
        inverter::InverterOptions::default(),
        Arc::clone(&inv_stats),
        nominal_cancel.clone(),
    ));
    let pb = progress_bar(
        opts.progress,
        opts.duration.as_millis() as u64,
        "nominal load (CPU, RSS)",
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // settle
    let cpu0 = process_cpu_time();
    let t0 = Instant::now();
    let stats0 = inv_stats.snapshot();
    let push0 = push_stats.snapshot().writes_ok;
    while t0.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_millis(100).min(opts.duration)).await;
        pb.set_position(t0.elapsed().as_millis() as u64);
    }
    let cpu1 = process_cpu_time();
    let elapsed = t0.elapsed();
    let stats1 = inv_stats.snapshot();
    let push1 = push_stats.snapshot().writes_ok;
    let (rss, hwm) = process_memory_kib().unwrap_or((0, 0));
    pb.finish_and_clear();
    nominal_cancel.cancel();
    let _ = inv.await;
    let _ = pusher.await;
    let cpu_pct = match (cpu0, cpu1) {
        (Some(a), Some(b)) => round1((b - a).as_secs_f64() / elapsed.as_secs_f64() * 100.0),
        _ => f64::NAN,
    };
    let nominal = NominalLoad {
        push_interval_ms: 200,
        poll_interval_ms: 160,
        elapsed_s: round3(elapsed.as_secs_f64()),
        cpu_pct,
        vm_rss_kib: rss,
        vm_hwm_kib: hwm,
        inverter_requests: stats1.requests - stats0.requests,
        inverter_replies: stats1.replies - stats0.replies,
        inverter_timeouts: stats1.timeouts - stats0.timeouts,
        pushes_ok: push1 - push0,
    };

    let r = &handles.rtu;
    let p = &handles.push;
    let gw = GatewayCounters {
        rtu_replies: r.replies.load(Relaxed),
        rtu_exceptions: r.exceptions.load(Relaxed),
        rtu_silent_stale: r.silent_stale.load(Relaxed),
        rtu_silent_warmup: r.silent_warmup.load(Relaxed),
        rtu_crc_errors: r.crc_errors.load(Relaxed),
        rtu_garbage_bytes: r.garbage_bytes.load(Relaxed),
        rtu_partial_discarded: r.partial_discarded.load(Relaxed),
        push_writes_ok: p.writes_ok.load(Relaxed),
        push_writes_refused: p.writes_refused.load(Relaxed),
        push_refused_limit: p.refused_limit.load(Relaxed),
        push_connections_accepted: p.connections_accepted.load(Relaxed),
    };
    cancel.cancel();
    gateway.join(Duration::from_secs(2)).await;
    drop(ksem);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let notes = vec![
        format!("in-process: simulated KSEM, gateway and bench share one process, one tokio runtime (2 worker threads) and {cpus} CPUs; the bench competes with the gateway for them"),
        format!("RTU over a pseudo-terminal pair: {PTY_NOTE}; at 38400 8N2 an FC03 request takes 2.3 ms on the wire and a 74-register reply 43.8 ms"),
        "latency reference: timestamp immediately before the write() of the request (as rtu_bench.py); turnaround = → first reply byte, total = → last reply byte".into(),
        "gateway config: turnaround 0, push regions max_age 1h (no staleness during the idle case), no fallback poll".into(),
        "RSS/HWM and CPU are of the whole process: they include the bench, the simulated KSEM and the simulated inverter".into(),
    ];
    Ok(E2eReport {
        command,
        cpus,
        notes,
        rtu: cases,
        age,
        push,
        nominal,
        startup,
        gateway: gw,
    })
}

/// The e2e results as markdown, ready to paste into the README.
pub fn e2e_markdown(r: &E2eReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Measured with `{}`.\n", r.command);
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str("\n**RTU reads (FC03 from address 0, back to back)**\n\n");
    s.push_str("| load | registers | requests | ok | timeouts | exceptions | bad frames | turnaround p50/p90/p99/p99.9/max µs | total p50/p90/p99/p99.9/max µs |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for c in &r.rtu {
        for x in &c.rtu.ranges {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.case,
                x.registers,
                x.requests,
                x.ok,
                x.timeouts + x.partial,
                fmt_exceptions(&x.exceptions),
                x.bad_frames(),
                x.turnaround.compact(),
                x.total.compact()
            );
        }
    }
    s.push_str("\n**Data age and push**\n\n");
    s.push_str("| measurement | n | p50/p90/p99/p99.9/max µs | notes |\n|---|---|---|---|\n");
    let a = &r.age;
    let _ = writeln!(
        s,
        "| data age: push ack → first RTU reply with that sequence ({} Hz push, reader polling 0..1 back to back) | {} | {} | {} clamped to 0 (seen before the ack); {} unseen at end; {} stale-after-ack reads; read period p50 {} µs |",
        a.rate,
        a.pushes_measured,
        a.age.compact(),
        a.negative_clamped,
        a.pushes_unseen_at_end,
        a.stale_after_ack_reads,
        fmt_us(a.read_period.p50_us)
    );
    for c in &r.rtu {
        if let Some(p) = &c.push {
            let _ = writeln!(
                s,
                "| push write latency during the RTU flood case ({} conn) | {} | {} | {:.0} writes/s; {} errors; exceptions {} |",
                p.connections,
                p.writes_ok,
                p.latency.compact(),
                p.writes_per_s,
                p.errors,
                fmt_exceptions(&p.exceptions)
            );
        }
    }
    for p in &r.push {
        let _ = writeln!(
            s,
            "| push throughput, {} conn, max rate, RTU idle | {} | {} | **{:.0} writes/s** ({:.0} registers/s); {} errors; exceptions {} |",
            p.connections,
            p.writes_ok,
            p.latency.compact(),
            p.writes_per_s,
            p.registers_per_s,
            p.errors,
            fmt_exceptions(&p.exceptions)
        );
    }
    let n = &r.nominal;
    s.push_str("\n**Resources at nominal load** (5 Hz push, inverter polling 0..74 + 74..74 every 160 ms)\n\n");
    s.push_str("| CPU (% of one core) | VmRSS | VmHWM | inverter requests / replies / timeouts | pushes |\n|---|---|---|---|---|\n");
    let _ = writeln!(
        s,
        "| {:.1} % over {:.1} s | {} KiB | {} KiB | {} / {} / {} | {} |",
        n.cpu_pct,
        n.elapsed_s,
        n.vm_rss_kib,
        n.vm_hwm_kib,
        n.inverter_requests,
        n.inverter_replies,
        n.inverter_timeouts,
        n.pushes_ok
    );
    s.push_str("\n(CPU and memory include the bench itself, the simulated KSEM and the simulated inverter: an upper bound for the gateway.)\n");
    let st = &r.startup;
    let _ = writeln!(
        s,
        "\n**Start to ready** ({} starts; KSEM slave already listening, one push sent as soon as the listener is bound)\n\n| measurement | p50/p90/p99/p99.9/max µs |\n|---|---|\n| start → last polled region committed | {} |\n| start → ready (every region filled) | {} |\n| push acknowledged → ready | {} |",
        st.runs,
        st.start_to_polled.compact(),
        st.start_to_ready.compact(),
        st.push_ack_to_ready.compact()
    );
    s
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Append a CRC (re-exported for tests building frames).
pub fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&[0, 0]);
    let n = body.len();
    append_crc(&mut v, n);
    v
}

// ---------------------------------------------------------------------------------------
// Command line

/// `airbridge bench …`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Act as the inverter: FC03 round-robin over ranges, turnaround and total per request.
    Rtu(RtuArgs),
    /// Act as the KSEM push: FC16 0..27 and 40..145 over N connections, write latency.
    Push(PushArgs),
    /// Data age: push a sequence number, poll it back over RTU.
    Age(AgeArgs),
    /// Everything, in-process: simulated KSEM + real gateway over a pty pair.
    E2e(E2eArgs),
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// `--rate` of `bench push`: Hz, or `max` (`None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushRate(pub Option<f64>);

fn parse_push_rate(s: &str) -> Result<PushRate, String> {
    parse_rate(s).map(PushRate)
}

fn parse_rate(s: &str) -> Result<Option<f64>, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let r: f64 = s
        .parse()
        .map_err(|e| format!("`{s}`: a rate in Hz or `max` ({e})"))?;
    if r > 0.0 && r.is_finite() {
        Ok(Some(r))
    } else {
        Err(format!("`{s}`: the rate must be > 0"))
    }
}

fn parse_hz(s: &str) -> Result<f64, String> {
    match parse_rate(s)? {
        Some(r) => Ok(r),
        None => Err("a rate in Hz is needed here".into()),
    }
}

#[derive(Debug, clap::Args)]
pub struct RtuArgs {
    /// Serial device or pseudo-terminal (the inverter's end).
    #[arg(long)]
    pub device: String,
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Register ranges start:count, read round-robin.
    #[arg(long, default_value = "0:74,74:74,8192:58", value_delimiter = ',')]
    pub ranges: Vec<RegRange>,
    /// Requests per range.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Requests per second (all ranges together); default: back to back.
    #[arg(long, value_parser = parse_hz)]
    pub rate: Option<f64>,
    /// Line speed (8N2); on a pty it only matters for the printed wire times.
    #[arg(long, default_value_t = 38400)]
    pub baud: u32,
    /// Reply timeout.
    #[arg(long, default_value = "500ms", value_parser = parse_dur)]
    pub timeout: Duration,
    /// One JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The gateway's push listener, HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// Push cycles (0..27 then 40..145) per second per connection, or `max`.
    #[arg(long, default_value = "max", value_parser = parse_push_rate)]
    pub rate: PushRate,
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub duration: Duration,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// MBAP unit id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AgeArgs {
    /// Serial device or pseudo-terminal (the inverter's end).
    #[arg(long)]
    pub device: String,
    /// The gateway's push listener, HOST:PORT.
    #[arg(long)]
    pub push_to: String,
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub duration: Duration,
    /// Sequence pushes per second.
    #[arg(long, default_value = "5", value_parser = parse_hz)]
    pub rate: f64,
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    #[arg(long, default_value_t = 38400)]
    pub baud: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// RTU requests per range (10, 74, 125 registers) and load case.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Length of the data-age, push-throughput and nominal-load phases.
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub duration: Duration,
    /// Connections of the push flood during the RTU reads.
    #[arg(long, default_value_t = 4)]
    pub flood_connections: usize,
    #[arg(long)]
    pub json: bool,
}

fn show_progress(json: bool) -> bool {
    use std::io::IsTerminal as _;
    !json && std::io::stderr().is_terminal()
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut out = vec!["airbridge".to_string()];
    out.extend(args.into_iter().skip(1));
    out.join(" ")
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("{target}: not HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{target}: no address"))
}

fn open_serial(device: &str, baud: u32, unit: u8) -> anyhow::Result<tokio_serial::SerialStream> {
    crate::link::serial::open(&crate::config::RtuConfig {
        device: device.to_string(),
        baud,
        data_bits: 8,
        parity: crate::config::Parity::None,
        stop_bits: 2,
        unit_id: unit,
        turnaround: Duration::ZERO,
        frame_timeout: Duration::from_millis(20),
        input_registers: true,
        rs485: Default::default(),
    })
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Run `airbridge bench …`.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Rtu(a) => run_rtu(a).await,
        BenchCmd::Push(a) => run_push(a).await,
        BenchCmd::Age(a) => run_age(a).await,
        BenchCmd::E2e(a) => run_e2e(a).await,
    }
}

async fn run_rtu(a: RtuArgs) -> anyhow::Result<()> {
    let stream = open_serial(&a.device, a.baud, a.unit)?;
    let pty = is_pty(&a.device);
    let opts = RtuBenchOptions {
        unit: a.unit,
        ranges: a.ranges.clone(),
        count: a.count,
        rate: a.rate,
        timeout: a.timeout,
        progress: progress_bar(
            show_progress(a.json),
            a.count * a.ranges.len() as u64,
            "RTU reads",
        ),
    };
    let report = bench_rtu(stream, &opts).await?;
    let bpc = bits_per_char(false, 2);
    let note = if pty {
        PTY_NOTE.to_string()
    } else {
        format!("real UART at {} baud 8N2: measured times include the wire time of the request (before the gateway can start) and of the reply; a USB adapter adds its latency timer (FTDI default 16 ms, set 1 ms via /sys/bus/usb-serial/devices/*/latency_timer) to the first and last byte", a.baud)
    };
    if a.json {
        let wire: Vec<serde_json::Value> = report
            .ranges
            .iter()
            .map(|r| {
                serde_json::json!({
                    "range": r.range,
                    "request_us": round1(wire_time(8, a.baud, bpc).as_secs_f64() * 1e6),
                    "reply_us": round1(wire_time(5 + 2 * usize::from(r.registers), a.baud, bpc).as_secs_f64() * 1e6),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "command": command_line(),
            "device": a.device,
            "baud": a.baud,
            "pty": pty,
            "options": opts,
            "report": report,
            "theoretical_wire_time": wire,
            "note": note,
        }))
    } else {
        println!(
            "# {}\n{} requests in {:.1} s ({} req/s), unit {}, device {}\n",
            command_line(),
            report.requests,
            report.elapsed_s,
            report.requests_per_s,
            report.unit,
            a.device
        );
        print!("{}", rtu_table(&report, (!pty).then_some((a.baud, bpc))));
        println!("\nNote: {note}.");
        Ok(())
    }
}

async fn run_push(a: PushArgs) -> anyhow::Result<()> {
    let target = resolve(&a.target).await?;
    let mut opts = PushBenchOptions::new(target);
    opts.rate = a.rate.0;
    opts.duration = a.duration;
    opts.connections = a.connections;
    opts.unit = a.unit;
    opts.progress = progress_bar(show_progress(a.json), 0, "push");
    let report = bench_push(&opts).await?;
    if a.json {
        return print_json(&serde_json::json!({
            "command": command_line(),
            "options": opts,
            "report": report,
        }));
    }
    println!("# {}", command_line());
    println!("| connections | rate | writes ok | writes/s | registers/s | exceptions | errors | reconnects | latency p50/p90/p99/p99.9/max µs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
        report.connections,
        report.rate.map_or("max".into(), |r| format!("{r} Hz")),
        report.writes_ok,
        report.writes_per_s,
        report.registers_per_s,
        fmt_exceptions(&report.exceptions),
        report.errors,
        report.reconnects,
        report.latency.compact()
    );
    println!("\nLatency: request written → complete FC16 response read (loopback TCP).");
    Ok(())
}

async fn run_age(a: AgeArgs) -> anyhow::Result<()> {
    let target = resolve(&a.push_to).await?;
    let stream = open_serial(&a.device, a.baud, a.unit)?;
    let mut opts = AgeBenchOptions::new(target);
    opts.unit = a.unit;
    opts.rate = a.rate;
    opts.duration = a.duration;
    opts.progress = progress_bar(show_progress(a.json), 0, "data age");
    let report = bench_age(stream, &opts).await?;
    let pty = is_pty(&a.device);
    if a.json {
        return print_json(&serde_json::json!({
            "command": command_line(),
            "device": a.device,
            "pty": pty,
            "options": opts,
            "report": report,
        }));
    }
    println!("# {}", command_line());
    println!("| pushes measured | age p50/p90/p99/p99.9/max µs | from push sent µs | clamped to 0 | unseen at end | stale-after-ack reads | RTU reads ok / not ok | read period p50 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} / {} | {} |",
        report.pushes_measured,
        report.age.compact(),
        report.age_from_push_send.compact(),
        report.negative_clamped,
        report.pushes_unseen_at_end,
        report.stale_after_ack_reads,
        report.reads_ok,
        report.reads_not_ok,
        fmt_us(report.read_period.p50_us)
    );
    println!("\nAge: push acknowledged → last byte of the first RTU reply carrying its sequence (or newer); the reader polls 0..1 back to back, so about half a read period is the reader's share.");
    if pty {
        println!("Note: {PTY_NOTE}.");
    }
    Ok(())
}

async fn run_e2e(a: E2eArgs) -> anyhow::Result<()> {
    let opts = E2eOptions {
        count: a.count,
        duration: a.duration,
        flood_connections: a.flood_connections,
        progress: show_progress(a.json),
        ..Default::default()
    };
    let report = bench_e2e(&opts, command_line()).await?;
    if a.json {
        print_json(&report)
    } else {
        print!("{}", e2e_markdown(&report));
        Ok(())
    }
}
