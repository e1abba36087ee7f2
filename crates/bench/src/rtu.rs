//! `bench rtu`: act as the inverter, FC03 round-robin over register ranges; counts and
//! latency histograms per range. Touches only the stream it is given.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::{exchange, Exchange, RtuStatus};
use super::hist::{LatencyHist, Percentiles};
use super::{round1, round3, ser_duration_ms, Pacer, FC_READ};
use airbridge::link::rtu_master::{drain_quiet, DEFAULT_DRAIN_WINDOW as DRAIN_WINDOW};
use airbridge_modbus::master::{encode_read, MAX_FRAME_LEN};

/// A register range `start:count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegRange {
    /// First register.
    pub start: u16,
    /// Registers (1..=125).
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
    /// Unit id to read from.
    pub unit: u8,
    /// Ranges read round-robin.
    pub ranges: Vec<RegRange>,
    /// Requests per range.
    pub count: u64,
    /// Requests per second (all ranges together); `None`: back to back.
    pub rate: Option<f64>,
    /// Reply timeout.
    #[serde(rename = "timeout_ms", serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    /// Progress on stderr (hidden by default).
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

/// Counts and latencies of one range (or of all of them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RtuRangeReport {
    /// `start:count`, or `all`.
    pub range: String,
    /// Registers per request.
    pub registers: u16,
    /// Requests sent.
    pub requests: u64,
    /// Valid replies.
    pub ok: u64,
    /// No byte within the timeout.
    pub timeouts: u64,
    /// Some bytes, not a whole frame, within the timeout.
    pub partial: u64,
    /// Exception replies by code.
    pub exceptions: BTreeMap<u8, u64>,
    /// Replies whose CRC did not match.
    pub bad_crc: u64,
    /// CRC-valid replies that do not answer the request.
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
    /// Unit id read from.
    pub unit: u8,
    /// Requests sent over all ranges.
    pub requests: u64,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Per range, in the order given.
    pub ranges: Vec<RtuRangeReport>,
    /// All ranges together.
    pub all: RtuRangeReport,
    /// Measuring reference.
    pub reference: String,
}

#[derive(Default)]
struct RangeAcc {
    /// Counts (latencies filled in at the end).
    report: RtuRangeReport,
    /// Request write → first reply byte, successful requests.
    turnaround: LatencyHist,
    /// Request write → last reply byte, successful requests.
    total: LatencyHist,
}

impl RangeAcc {
    /// Nothing counted yet for `r`, named `start:count`.
    fn for_range(r: &RegRange) -> Self {
        RangeAcc {
            report: RtuRangeReport {
                range: format!("{}:{}", r.start, r.count),
                registers: r.count,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Count one exchange (and its latencies when it succeeded).
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
    let mut accs: Vec<RangeAcc> = opts.ranges.iter().map(RangeAcc::for_range).collect();
    let total = opts.count * opts.ranges.len() as u64;
    opts.progress.set_length(total);
    let mut buf = [0u8; MAX_FRAME_LEN + 8];
    let mut scratch = [0u8; 512];
    let mut dirty = false;
    let mut prev: Option<usize> = None;
    let started = Instant::now();
    let mut pacer = Pacer::new(opts.rate);
    for i in 0..total {
        let idx = (i % opts.ranges.len() as u64) as usize;
        pacer.wait().await;
        let window = if dirty { DRAIN_WINDOW } else { Duration::ZERO };
        let stray = drain_quiet(&mut stream, &mut scratch, window).await?;
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

/// Theoretical time on the wire of `bytes` at `baud` (the config's one rule).
pub use airbridge_modbus::timing::wire_time;

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
