//! `bench lan`: does the inverter notice the house reading the meter? In-process: the
//! simulated KSEM pushing at 5 Hz, the real gateway (RTU slave on a pty pair, opened by
//! path on its own thread as a real device is, the real turnaround, the meter's
//! `tcp_server:`), the bench as the inverter. The RTU reads run twice, without and then
//! with N LAN clients each reading `registers` at `rate` Hz; the report shows the RTU
//! percentiles of both runs side by side and the LAN read latency. Starts and stops
//! everything it runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_modbus::client::Reader as _;
use tokio_util::sync::CancellationToken;

use super::header::RunHeader;
use super::hist::{LatencyHist, Percentiles};
use super::rtu::{bench_rtu, RtuBenchReport};
use super::{
    phase_cells, phase_reads, ratio, round3, ser_duration_ms, BENCH_REGIONS, PHASE_COLUMNS,
    PHASE_SIZES, PTY_NOTE,
};

/// What `bench lan` does.
#[derive(Debug, Clone, Serialize)]
pub struct LanBenchOptions {
    /// LAN clients reading at once.
    pub clients: usize,
    /// Reads per second of each client.
    pub rate_hz: f64,
    /// Registers per LAN read (from address 0: totals and phases).
    pub registers: u16,
    /// RTU requests per range and case.
    pub count: u64,
    /// The RTU slave's turnaround (gateway.yaml: 1750us).
    #[serde(serialize_with = "ser_duration_ms")]
    pub turnaround: Duration,
    /// Show progress bars on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for LanBenchOptions {
    fn default() -> Self {
        LanBenchOptions {
            clients: 32,
            rate_hz: 10.0,
            registers: 125,
            count: 2000,
            turnaround: Duration::from_micros(1750),
            progress: false,
        }
    }
}

/// The LAN readers' side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LanReaders {
    /// Clients that connected.
    pub connected: u64,
    /// Reads answered with data.
    pub ok: u64,
    /// Reads answered with an exception or failed.
    pub failed: u64,
    /// Reads per second achieved, all clients.
    pub reads_per_s: f64,
    /// Request sent → reply received, successful reads.
    pub latency: Percentiles,
}

/// Result of [`bench_lan`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanBenchReport {
    /// The command, the machine and how to read the numbers.
    #[serde(flatten)]
    pub run: RunHeader,
    /// LAN clients of the loaded run.
    pub clients: usize,
    /// Reads per second of each.
    pub rate_hz: f64,
    /// Registers per LAN read.
    pub registers: u16,
    /// RTU reads, no LAN clients.
    pub rtu_without: RtuBenchReport,
    /// RTU reads with the LAN clients reading.
    pub rtu_with: RtuBenchReport,
    /// The LAN clients during the loaded run.
    pub lan: LanReaders,
    /// RTU turnaround p99 with ÷ without (the target: ≤ 1.3).
    pub turnaround_p99_ratio: f64,
    /// RTU total p99 with ÷ without.
    pub total_p99_ratio: f64,
}

/// The bench's gateway: the `bench e2e` regions, the real turnaround, the RTU slave on
/// `device` (a pty's path), the meter's `tcp_server:` with room for every client.
fn lan_config(
    ksem_slave: SocketAddr,
    device: &str,
    opts: &LanBenchOptions,
) -> anyhow::Result<airbridge::config::Config> {
    let turnaround_us = opts.turnaround.as_micros();
    let max = opts.clients + 4;
    let yaml = format!(
        "rtu: {{device: '{device}', baud: 38400, stop_bits: 2, unit_id: 1, turnaround: {turnaround_us}us}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: 8}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: {max}}}
{BENCH_REGIONS}"
    );
    Ok(airbridge::config::parse(&yaml, "bench lan")?.config)
}

/// One LAN client: connect, then read `registers` from 0 at `rate_hz` until `stop`.
async fn reader(
    addr: SocketAddr,
    opts: (f64, u16),
    stop: CancellationToken,
    counts: Arc<(AtomicU64, AtomicU64, AtomicU64)>,
) -> LatencyHist {
    let (rate_hz, registers) = opts;
    let mut hist = LatencyHist::new();
    let Ok(mut ctx) = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1)).await
    else {
        return hist;
    };
    counts.0.fetch_add(1, Relaxed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_hz));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Spread the clients over the period instead of a burst on every tick.
    tokio::time::sleep(Duration::from_secs_f64(fastrand::f64() / rate_hz)).await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.read_holding_registers(0, registers),
        )
        .await;
        match r {
            Ok(Ok(Ok(words))) if words.len() == usize::from(registers) => {
                hist.record(t0.elapsed());
                counts.1.fetch_add(1, Relaxed);
            }
            _ => {
                counts.2.fetch_add(1, Relaxed);
            }
        }
    }
    hist
}

/// Run the comparison. `command` is printed with the results.
pub async fn bench_lan(opts: &LanBenchOptions, command: String) -> anyhow::Result<LanBenchReport> {
    use airbridge::app::gateway::{Gateway, RtuPort};
    use airbridge_sim::ksem;

    anyhow::ensure!(
        opts.rate_hz > 0.0 && opts.rate_hz.is_finite(),
        "--rate must be > 0"
    );
    anyhow::ensure!(
        (1..=airbridge::config::MAX_READ).contains(&opts.registers),
        "--registers must be 1..125"
    );
    let mut run = RunHeader::begin(command);
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let ksem = ksem::start(ksem::KsemSimOptions::default(), cancel.clone()).await?;
    // The gateway opens the pty by path on its RTU thread, as it opens a real device.
    let (mut inv_end, gw_end, device) = super::pty_by_path()?;
    let config = lan_config(ksem.slave_addr(), &device, opts)?;
    let gateway = Gateway::start(config, RtuPort::Device, cancel.clone()).await?;
    let push_addr = gateway
        .push_addr
        .ok_or_else(|| anyhow::anyhow!("bench gateway has no push listener"))?;
    let tcp_addr = gateway
        .tcp_addr
        .ok_or_else(|| anyhow::anyhow!("bench gateway has no tcp_server"))?;
    super::e2e::warm_up(push_addr, &gateway.handles.image).await?;
    // The KSEM pushes at 5 Hz through both runs, as in the field.
    let pusher = tokio::spawn(ksem::run_pusher(
        push_addr,
        Duration::from_millis(200),
        ksem.model(),
        cancel.child_token(),
        Arc::new(ksem::PushStats::default()),
    ));
    // Let the RTU thread open the device and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rtu_opts = |label: &str| phase_reads(&PHASE_SIZES, opts.count, opts.progress, label);

    let rtu_without = bench_rtu(&mut inv_end, &rtu_opts("RTU reads, no LAN readers")).await?;
    let readers = LanLoad::start(tcp_addr, opts, &cancel).await;
    let label = format!("RTU reads, {} LAN readers", opts.clients);
    let rtu_with = bench_rtu(&mut inv_end, &rtu_opts(&label)).await?;
    let lan = readers.finish().await;
    cancel.cancel();
    let _ = pusher.await;
    gateway.join(Duration::from_secs(2)).await;
    drop(gw_end);
    drop(ksem);

    run.notes = lan_notes(opts, run.cpus);
    Ok(LanBenchReport {
        run,
        clients: opts.clients,
        rate_hz: opts.rate_hz,
        registers: opts.registers,
        turnaround_p99_ratio: ratio(
            rtu_with.all.turnaround.p99_us,
            rtu_without.all.turnaround.p99_us,
        ),
        total_p99_ratio: ratio(rtu_with.all.total.p99_us, rtu_without.all.total.p99_us),
        rtu_without,
        rtu_with,
        lan,
    })
}

/// The LAN clients of the loaded run, reading while the RTU reads are measured.
struct LanLoad {
    readers: tokio::task::JoinSet<LatencyHist>,
    /// Connected, reads ok, reads failed: all clients.
    counts: Arc<(AtomicU64, AtomicU64, AtomicU64)>,
    stop: CancellationToken,
    /// Reads ok when the measurement began, and when.
    ok0: u64,
    t0: Instant,
}

impl LanLoad {
    /// Start `opts.clients` clients reading at `tcp_addr`, and give them a second to
    /// connect and reach their rate.
    async fn start(
        tcp_addr: SocketAddr,
        opts: &LanBenchOptions,
        cancel: &CancellationToken,
    ) -> Self {
        let stop = cancel.child_token();
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..opts.clients {
            readers.spawn(reader(
                tcp_addr,
                (opts.rate_hz, opts.registers),
                stop.clone(),
                Arc::clone(&counts),
            ));
        }
        // Every client connected and at its rate before measuring.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ok0 = counts.1.load(Relaxed);
        LanLoad {
            readers,
            counts,
            stop,
            ok0,
            t0: Instant::now(),
        }
    }

    /// Stop the clients: their counts, their rate since [`LanLoad::start`] returned, their
    /// latencies.
    async fn finish(mut self) -> LanReaders {
        let elapsed = self.t0.elapsed().as_secs_f64();
        let ok1 = self.counts.1.load(Relaxed);
        self.stop.cancel();
        let mut latency = LatencyHist::new();
        while let Some(h) = self.readers.join_next().await {
            if let Ok(h) = h {
                latency.add(&h);
            }
        }
        LanReaders {
            connected: self.counts.0.load(Relaxed),
            ok: self.counts.1.load(Relaxed),
            failed: self.counts.2.load(Relaxed),
            reads_per_s: round3((ok1 - self.ok0) as f64 / elapsed.max(1e-9)),
            latency: latency.summary(),
        }
    }
}

/// How to read `bench lan`'s numbers, on `cpus` CPUs.
fn lan_notes(opts: &LanBenchOptions, cpus: usize) -> Vec<String> {
    vec![
        format!("in-process on {cpus} CPUs: the simulated KSEM (pushing at 5 Hz), the gateway, the LAN readers and the bench share them; the RTU slave has its own thread"),
        format!("RTU over a pseudo-terminal pair opened by path: {PTY_NOTE}"),
        format!("turnaround {} µs as configured: it is part of every RTU turnaround", opts.turnaround.as_micros()),
        "LAN latency: request sent → reply received, over loopback".into(),
    ]
}

/// The report as markdown: the two RTU runs side by side, then the LAN readers.
pub fn lan_markdown(r: &LanBenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = r.run.markdown();
    let _ = writeln!(
        s,
        "\n| RTU reads (all ranges) | {PHASE_COLUMNS} |\n|---|---|---|---|---|---|---|"
    );
    for (case, rep) in [
        ("no LAN readers".to_string(), &r.rtu_without),
        (
            format!(
                "{} LAN readers × {} Hz × {} registers",
                r.clients, r.rate_hz, r.registers
            ),
            &r.rtu_with,
        ),
    ] {
        let _ = writeln!(s, "| {case} | {} |", phase_cells(&rep.all));
    }
    let _ = writeln!(
        s,
        "\np99 with ÷ without: turnaround {}, total {} (target ≤ 1.3)\n",
        r.turnaround_p99_ratio, r.total_p99_ratio
    );
    let l = &r.lan;
    let _ = writeln!(
        s,
        "LAN readers: {} connected, {} reads ok, {} failed, {} reads/s during the loaded run; latency p50/p90/p99/p99.9/max µs {}",
        l.connected,
        l.ok,
        l.failed,
        l.reads_per_s,
        l.latency.compact()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run, end to end: both RTU runs answered, the readers read, the report says it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_run_measures_both_cases_and_the_readers() {
        let opts = LanBenchOptions {
            clients: 4,
            rate_hz: 20.0,
            count: 40,
            ..LanBenchOptions::default()
        };
        let r = bench_lan(&opts, "bench lan (test)".into())
            .await
            .expect("bench runs");
        for rep in [&r.rtu_without, &r.rtu_with] {
            assert_eq!(rep.all.requests, 120);
            assert_eq!(rep.all.ok, 120, "{rep:?}");
            assert!(
                rep.all.turnaround.min_us >= 1750.0,
                "turnaround kept: {rep:?}"
            );
        }
        assert_eq!(r.lan.connected, 4);
        assert!(r.lan.ok > 0 && r.lan.failed == 0, "{:?}", r.lan);
        assert_eq!(r.lan.latency.n, r.lan.ok);
        assert!(r.turnaround_p99_ratio > 0.0);
        let md = lan_markdown(&r);
        assert!(
            md.contains("| 4 LAN readers × 20 Hz × 125 registers | 120 | 120 | 0 | 0 |"),
            "{md}"
        );
    }
}
