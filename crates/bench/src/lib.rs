//! `airbridge bench`: measure the gateway the way the reference tools in
//! `shared/bench-tools` do, so the numbers are comparable.
//!
//! - [`bench_rtu`]: act as the inverter (RTU master), FC03 round-robin over ranges,
//!   turnaround (→ first reply byte) and total (→ last reply byte) per request.
//! - [`bench_push`]: act as the KSEM push (FC16 groups 0..27 and 40..145) over N
//!   connections, write latency and throughput.
//! - [`bench_age`]: data age, push acknowledged → first RTU reply carrying that sequence.
//! - [`bench_e2e`]: all of it against the real gateway in-process over a pty pair.
//! - [`bench_lan`]: the RTU percentiles without and with LAN readers on the meter's
//!   `tcp_server:`, and the LAN read latency.
//! - [`bench_mqtt`]: the RTU percentiles of the real gateway binary with MQTT off, MQTT
//!   publishing to a Mosquitto of its own, and that broker SIGKILLed, in one run.
//!
//! Timing reference (as `rtu_bench.py`): the timestamp taken immediately *before* the
//! single `write()` of the request. Timestamps are [`std::time::Instant`]
//! (CLOCK_MONOTONIC), taken right around the I/O calls; nothing is logged or allocated
//! per request in the measuring loops. Latencies are recorded in nanoseconds into
//! [`hdrhistogram`] (3 significant digits) and reported in microseconds.
//!
//! The files: `hist` (histograms, percentiles) · `exchange` (one RTU read on the wire,
//! judged by the master's [`airbridge_modbus::master::validate_read_reply`]) · `guard` (the
//! look before `push` and `age` write into a gateway: refuse a real KSEM's data unless
//! `--live`, then touch only reserved words) · `rtu`, `push`, `age`, `e2e`, `lan`, `mqtt`
//! (the six benches) · `process` (CPU and memory from `/proc`) · `header` (what every
//! report opens with) · `report` (markdown) · `cli` (arguments and runners). This file: the map, the constants and the
//! small helpers they share (progress bars, the pacer of a rated loop, a phase's reads,
//! the TCP connect every writing bench uses).
//!
//! What it takes from the crates below: from `airbridge-modbus` the FC03 encoder, the
//! master's reply validator, the CRC and the wire timing; from `airbridge-gateway` the
//! config parser, the gateway itself (started in this process by `e2e` and `lan`, its image
//! awaited until warm), the RTU master's drain of stray bytes and the serial line opener;
//! from `airbridge-sim` the simulated KSEM (household, slave, pusher) and inverter.
//!
//! May touch: the stream / sockets it is given; [`bench_e2e`] and [`bench_lan`] also start
//! the simulated KSEM and the gateway (`e2e` also the simulated inverter, as
//! `airbridge demo` does); [`bench_mqtt`] starts `airbridge run` and `mosquitto` as child
//! processes and stops them.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use airbridge_modbus::crc::append_crc;

/// Function code of the reads (FC03, as the Plenticore).
const FC_READ: u8 = 0x03;
/// Function code of the pushes.
const FC_WRITE_MULTIPLE: u8 = 0x10;
/// The KSEM push groups (start, count): 0..27 and 40..145.
pub const PUSH_GROUPS: [(u16, u16); 2] = airbridge_sim::ksem::PUSH_GROUPS;
/// The regions of every bench gateway: the KSEM map, push regions fresh for an hour (an
/// idle phase must not go silent), energy pushed and polled, identity polled once.
pub const BENCH_REGIONS: &str = "regions:
  - {name: totals,   start: 0,    count: 40,  source: push, max_age: 1h, on_stale: silence}
  - {name: phases,   start: 40,   count: 108, source: push, max_age: 1h, on_stale: silence}
  - {name: energy,   start: 512,  count: 280, source: [push, poll], every: 10s, max_age: 5m, on_stale: serve}
  - {name: identity, start: 8192, count: 57,  source: poll, every: 1h}
  - {name: spec_version, start: 8249, count: 1, source: static, values: {8249: 7}}
";
/// What a pseudo-terminal cannot tell apart.
pub const PTY_NOTE: &str =
    "on a pseudo-terminal there is no baud timing: these numbers are processing latency, not wire time";

mod age;
mod cli;
mod e2e;
mod exchange;
mod guard;
mod header;
mod hist;
mod lan;
mod mqtt;
mod process;
mod push;
mod report;
mod rtu;

pub use age::{age_analysis, bench_age, AgeBenchOptions, AgeReport};
pub use cli::{run, AgeArgs, BenchCmd, E2eArgs, LanArgs, MqttArgs, PushArgs, PushRate, RtuArgs};
pub use e2e::{
    bench_e2e, e2e_config, measure_startup, E2eOptions, E2eReport, E2eRtuCase, GatewayCounters,
    NominalLoad, StartupReport,
};
pub use exchange::{Exchange, RtuStatus};
pub use guard::{LivePolicy, RESERVED};
pub use header::RunHeader;
pub use hist::{fmt_us, LatencyHist, Percentiles};
pub use lan::{bench_lan, lan_markdown, LanBenchOptions, LanBenchReport, LanReaders};
pub use mqtt::{
    bench_mqtt, find_mosquitto, mqtt_markdown, MqttBenchOptions, MqttBenchReport, MqttCounters,
    MqttPhase,
};
pub use process::{process_cpu_time, process_memory_kib};
pub use push::{bench_push, PushBenchOptions, PushBenchReport};
pub use report::{e2e_markdown, rtu_table};
pub use rtu::{
    bench_rtu, bits_per_char, is_pty, parse_ranges, wire_time, RegRange, RtuBenchOptions,
    RtuBenchReport, RtuRangeReport,
};

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
// Small shared helpers

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `with ÷ without`, rounded to 3 decimals; NaN when there is nothing to divide by.
pub(crate) fn ratio(with: f64, without: f64) -> f64 {
    if without > 0.0 {
        round3(with / without)
    } else {
        f64::NAN
    }
}

/// Paces a loop to a rate: [`Pacer::wait`] sleeps until the next slot; a loop that fell
/// behind goes on from now instead of bursting to catch up. Without a rate it never waits.
/// Allocation-free.
pub(crate) struct Pacer {
    /// Time between slots; `None`: as fast as possible.
    period: Option<Duration>,
    /// The next slot.
    next: tokio::time::Instant,
}

impl Pacer {
    /// Slots at `rate` per second from now (`None`, 0 or not finite: no pacing).
    pub(crate) fn new(rate: Option<f64>) -> Self {
        Pacer {
            period: rate
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: tokio::time::Instant::now(),
        }
    }

    /// True when it has a rate to keep.
    pub(crate) fn is_paced(&self) -> bool {
        self.period.is_some()
    }

    /// Sleep until the next slot and move the one after it a period on.
    pub(crate) async fn wait(&mut self) {
        let Some(p) = self.period else { return };
        tokio::time::sleep_until(self.next).await;
        self.next += p;
        let now = tokio::time::Instant::now();
        if self.next < now {
            self.next = now; // behind: do not burst to catch up
        }
    }
}

/// Register counts the in-one-run benches read from address 0, round-robin.
pub const PHASE_SIZES: [u16; 3] = [10, 74, 125];

/// The RTU reads of one phase of an in-one-run bench: FC03 from address 0 with `sizes`
/// registers round-robin, `count` each, back to back, 500 ms reply timeout.
pub(crate) fn phase_reads(
    sizes: &[u16],
    count: u64,
    progress: bool,
    label: &str,
) -> rtu::RtuBenchOptions {
    rtu::RtuBenchOptions {
        unit: 1,
        ranges: sizes
            .iter()
            .map(|&count| rtu::RegRange { start: 0, count })
            .collect(),
        count,
        rate: None,
        timeout: Duration::from_millis(500),
        progress: progress_bar(progress, count * sizes.len() as u64, label),
    }
}

/// Header cells of [`phase_cells`].
pub(crate) const PHASE_COLUMNS: &str = "requests | ok | timeouts | bad frames | turnaround p50/p90/p99/p99.9/max µs | total p50/p90/p99/p99.9/max µs";

/// One phase's RTU reads (all ranges) as table cells, [`PHASE_COLUMNS`].
pub(crate) fn phase_cells(a: &rtu::RtuRangeReport) -> String {
    format!(
        "{} | {} | {} | {} | {} | {}",
        a.requests,
        a.ok,
        a.timeouts + a.partial,
        a.bad_frames(),
        a.turnaround.compact(),
        a.total.compact()
    )
}

/// A pty pair for a gateway that opens its device by path, as it opens a real one: the
/// inverter's end, the gateway's end (keep it open, unused, so the pty lives as long as
/// the bench, across gateway restarts) and that end's path.
pub(crate) fn pty_by_path() -> anyhow::Result<(
    tokio_serial::SerialStream,
    tokio_serial::SerialStream,
    String,
)> {
    use tokio_serial::SerialPort as _;
    let (inv_end, gw_end) = tokio_serial::SerialStream::pair()
        .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))?;
    let device = gw_end
        .name()
        .ok_or_else(|| anyhow::anyhow!("the pseudo-terminal has no path"))?;
    Ok((inv_end, gw_end, device))
}

/// Append a CRC (re-exported for tests building frames).
pub fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&[0, 0]);
    let n = body.len();
    append_crc(&mut v, n);
    v
}

pub(crate) fn ser_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A TCP connection to `target` within `timeout`, without Nagle (every bench that writes
/// into a gateway: push, age, and the guard's look before them).
pub(crate) async fn connect(
    target: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    sock.set_nodelay(true)?;
    Ok(sock)
}
