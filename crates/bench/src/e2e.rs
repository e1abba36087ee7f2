//! `bench e2e`: the whole series in-process — simulated KSEM, the real gateway over a
//! pty pair, the simulated inverter — and the start-to-ready measurement. Starts and stops
//! everything it runs (as `airbridge demo` does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use airbridge::image::Image;
use airbridge_sim::{inverter, ksem};

use super::age::{bench_age, AgeBenchOptions, AgeReport};
use super::guard::LivePolicy;
use super::header::RunHeader;
use super::hist::{LatencyHist, Percentiles};
use super::process::{process_cpu_time, process_memory_kib};
use super::push::{bench_push, PushBenchOptions, PushBenchReport};
use super::rtu::{bench_rtu, RtuBenchOptions, RtuBenchReport};
use super::{progress_bar, round1, round3, ser_duration_ms, BENCH_REGIONS, PTY_NOTE, PUSH_GROUPS};

/// What `bench e2e` does.
#[derive(Debug, Clone, Serialize)]
pub struct E2eOptions {
    /// RTU requests per range and load case.
    pub count: u64,
    /// Length of the data-age, push-throughput and nominal-load phases.
    #[serde(rename = "duration_ms", serialize_with = "ser_duration_ms")]
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
            read_sizes: super::PHASE_SIZES.to_vec(),
            startup_runs: 20,
            progress: false,
        }
    }
}

/// One RTU load case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eRtuCase {
    /// What load the gateway was under.
    pub case: String,
    /// The RTU reads' numbers under that load.
    pub rtu: RtuBenchReport,
    /// The flood's own numbers, for the flood case.
    pub push: Option<PushBenchReport>,
}

/// CPU and memory at nominal load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NominalLoad {
    /// The simulated KSEM's push period.
    pub push_interval_ms: u64,
    /// The simulated inverter's poll period.
    pub poll_interval_ms: u64,
    /// Wall time of the phase.
    pub elapsed_s: f64,
    /// Process CPU (user + system) over the phase, % of one core.
    pub cpu_pct: f64,
    /// Resident memory at the end (KiB).
    pub vm_rss_kib: u64,
    /// Peak resident memory (KiB).
    pub vm_hwm_kib: u64,
    /// Inverter requests during the phase.
    pub inverter_requests: u64,
    /// Inverter replies during the phase.
    pub inverter_replies: u64,
    /// Inverter timeouts during the phase.
    pub inverter_timeouts: u64,
    /// Pushes acknowledged during the phase.
    pub pushes_ok: u64,
}

/// Gateway counters at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayCounters {
    /// RTU replies sent.
    pub rtu_replies: u64,
    /// RTU exception replies sent.
    pub rtu_exceptions: u64,
    /// RTU requests left unanswered: data stale.
    pub rtu_silent_stale: u64,
    /// RTU requests left unanswered: not warm yet.
    pub rtu_silent_warmup: u64,
    /// RTU frames dropped for a bad CRC.
    pub rtu_crc_errors: u64,
    /// Bytes discarded as line noise.
    pub rtu_garbage_bytes: u64,
    /// Partial frames discarded.
    pub rtu_partial_discarded: u64,
    /// Push writes accepted.
    pub push_writes_ok: u64,
    /// Push writes refused.
    pub push_writes_refused: u64,
    /// Push connections refused at the connection limit.
    pub push_refused_limit: u64,
    /// Push connections accepted.
    pub push_connections_accepted: u64,
}

/// Result of [`bench_e2e`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eReport {
    /// The command, the machine and how to read the numbers.
    #[serde(flatten)]
    pub run: RunHeader,
    /// RTU reads per load case.
    pub rtu: Vec<E2eRtuCase>,
    /// The data-age phase.
    pub age: AgeReport,
    /// Push throughput at 1 and 4 connections.
    pub push: Vec<PushBenchReport>,
    /// CPU and memory at nominal load.
    pub nominal: NominalLoad,
    /// Start to ready.
    pub startup: StartupReport,
    /// The gateway's own counters at the end.
    pub gateway: GatewayCounters,
}

/// Start to ready, with the sources answering at once: the simulated KSEM's slave is
/// already listening and one push of both groups is sent as soon as the push listener is
/// bound. Covers bind, connect, the first poll of every polled region and the commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartupReport {
    /// Gateway starts measured.
    pub runs: u64,
    /// `Gateway::start` called → every region filled (READY).
    pub start_to_ready: Percentiles,
    /// `Gateway::start` called → the last polled region committed.
    pub start_to_polled: Percentiles,
    /// The push acknowledged → READY (0 when the push was the first to arrive).
    pub push_ack_to_ready: Percentiles,
}

/// Warms up a bench's own gateway: pushes for 300 ms at 5 Hz, then waits (at most 10 s)
/// until every region is filled.
pub(super) async fn warm_up(push_addr: SocketAddr, image: &Image) -> anyhow::Result<()> {
    let mut warm = PushBenchOptions::new(push_addr);
    warm.live = LivePolicy::Owned; // our own gateway, fed by our own simulator
    warm.duration = Duration::from_millis(300);
    warm.rate = Some(5.0);
    let w = bench_push(&warm).await?;
    anyhow::ensure!(w.writes_ok > 0, "warm-up push failed: {w:?}");
    tokio::time::timeout(Duration::from_secs(10), image.wait_warm())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the gateway did not warm up within 10 s (poll of the simulated KSEM failed?)"
            )
        })
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
    use airbridge::app::gateway::{Gateway, RtuPort};
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

/// The bench's gateway config: like the KSEM demo's (`airbridge demo`), but turnaround 0, push
/// regions that stay fresh for an hour (the idle case must not go silent) and no
/// fallback poll (it would overwrite the pushed sequence numbers).
pub fn e2e_config(
    ksem_slave: SocketAddr,
    max_connections: usize,
) -> anyhow::Result<airbridge::config::Config> {
    let yaml = format!(
        "rtu: {{device: in-process-pty, baud: 38400, stop_bits: 2, unit_id: 1, turnaround: 0}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: {max_connections}}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
{BENCH_REGIONS}"
    );
    Ok(airbridge::config::parse(&yaml, "bench e2e")?.config)
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
    use airbridge::app::gateway::{Gateway, RtuPort};

    let mut run = RunHeader::begin(command);
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let ksem = ksem::start(ksem::KsemSimOptions::default(), cancel.clone()).await?;
    let startup = measure_startup(ksem.slave_addr(), opts.startup_runs).await?;
    let (inv_end, gw_end) = tokio_serial::SerialStream::pair()
        .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))?;
    let config = e2e_config(ksem.slave_addr(), opts.flood_connections.max(4) + 4)?;
    let gateway = Gateway::start(config, RtuPort::Stream(Box::new(gw_end)), cancel.clone()).await?;
    let push_addr = gateway
        .push_addr
        .ok_or_else(|| anyhow::anyhow!("bench gateway has no push listener"))?;
    warm_up(push_addr, &gateway.handles.image).await?;
    let series = Series {
        opts,
        push_addr,
        model: ksem.model(),
        cancel: &cancel,
    };
    let (inv_end, rtu) = series.rtu_cases(inv_end).await?;
    let (inv_end, age) = series.data_age(inv_end).await?;
    let push = series.push_throughput().await?;
    let nominal = series.nominal_load(inv_end).await;
    let gw = GatewayCounters::of(&gateway);
    cancel.cancel();
    gateway.join(Duration::from_secs(2)).await;
    drop(ksem);

    run.notes = e2e_notes(run.cpus);
    Ok(E2eReport {
        run,
        rtu,
        age,
        push,
        nominal,
        startup,
        gateway: gw,
    })
}

/// How to read `bench e2e`'s numbers, on `cpus` CPUs.
fn e2e_notes(cpus: usize) -> Vec<String> {
    vec![
        format!("in-process: simulated KSEM, gateway and bench share one process, one tokio runtime (2 worker threads) plus the RTU slave's own thread, and {cpus} CPUs; the bench competes with the gateway for them"),
        format!("RTU over a pseudo-terminal pair: {PTY_NOTE}; at 38400 8N2 an FC03 request takes 2.3 ms on the wire and a 74-register reply 43.8 ms"),
        "latency reference: timestamp immediately before the write() of the request (as rtu_bench.py); turnaround = → first reply byte, total = → last reply byte".into(),
        "gateway config: turnaround 0, push regions max_age 1h (no staleness during the idle case), no fallback poll".into(),
        "RSS/HWM and CPU are of the whole process: they include the bench, the simulated KSEM and the simulated inverter".into(),
    ]
}

impl GatewayCounters {
    /// The gateway's counters as they stand.
    fn of(gateway: &airbridge::app::gateway::Gateway) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &gateway.handles.rtu;
        let p = &gateway.handles.push;
        GatewayCounters {
            rtu_replies: r.replies.load(Relaxed),
            rtu_exceptions: r.exceptions.load(Relaxed),
            rtu_silent_stale: r.silent_stale.load(Relaxed),
            rtu_silent_warmup: r.silent_warmup.load(Relaxed),
            rtu_crc_errors: r.crc_errors.load(Relaxed),
            rtu_garbage_bytes: r.garbage_bytes.load(Relaxed),
            rtu_partial_discarded: r.partial_discarded.load(Relaxed),
            push_writes_ok: p.writes_ok.load(Relaxed),
            push_writes_refused: p.writes_refused.load(Relaxed),
            push_refused_limit: p.front.refused_limit.load(Relaxed),
            push_connections_accepted: p.front.accepted.load(Relaxed),
        }
    }
}

/// The phases of `bench e2e` against one warm gateway; each takes the inverter's end of
/// the pty and gives it back.
struct Series<'a> {
    opts: &'a E2eOptions,
    /// The gateway's push listener.
    push_addr: SocketAddr,
    /// The simulated KSEM's household, for its pusher.
    model: ksem::SharedModel,
    /// The run's token: a phase's pushers and inverter stop with a child of it.
    cancel: &'a CancellationToken,
}

impl Series<'_> {
    /// The RTU reads of a phase, labelled for the progress bar.
    fn reads(&self, label: &str) -> RtuBenchOptions {
        super::phase_reads(
            &self.opts.read_sizes,
            self.opts.count,
            self.opts.progress,
            label,
        )
    }

    /// The simulated KSEM's pusher at 5 Hz until `stop`.
    fn push_5hz(
        &self,
        stop: &CancellationToken,
        stats: &Arc<ksem::PushStats>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(ksem::run_pusher(
            self.push_addr,
            Duration::from_millis(200),
            self.model.clone(),
            stop.clone(),
            Arc::clone(stats),
        ))
    }

    /// Phases 1–3, the RTU reads under three loads: push idle, a 5 Hz push, a push flood.
    async fn rtu_cases<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        inv_end: S,
    ) -> anyhow::Result<(S, Vec<E2eRtuCase>)> {
        let mut cases = Vec::new();
        // 1. Push idle.
        let (inv_end, rep) = rtu_task(inv_end, self.reads("RTU reads, push idle")).await?;
        cases.push(E2eRtuCase {
            case: "push idle".into(),
            rtu: rep,
            push: None,
        });

        // 2. Under a 5 Hz push (the simulated KSEM's pusher, 200 ms).
        let push5 = self.cancel.child_token();
        let pusher = self.push_5hz(&push5, &Arc::new(ksem::PushStats::default()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (inv_end, rep) = rtu_task(inv_end, self.reads("RTU reads, 5 Hz push")).await?;
        push5.cancel();
        let _ = pusher.await;
        cases.push(E2eRtuCase {
            case: "5 Hz push".into(),
            rtu: rep,
            push: None,
        });

        // 3. Under a push flood.
        let n = self.opts.flood_connections;
        let mut flood = PushBenchOptions::new(self.push_addr);
        flood.live = LivePolicy::Owned;
        flood.connections = n;
        flood.duration = Duration::from_secs(3600);
        let flood_stop = flood.stop.clone();
        let flood_task = tokio::spawn(async move { bench_push(&flood).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let label = format!("RTU reads, flood ×{n}");
        let (inv_end, rep) = rtu_task(inv_end, self.reads(&label)).await?;
        flood_stop.cancel();
        let flood_rep = flood_task.await.context("flood task")??;
        cases.push(E2eRtuCase {
            case: format!("push flood ({n} conn, max rate)"),
            rtu: rep,
            push: Some(flood_rep),
        });
        Ok((inv_end, cases))
    }

    /// Phase 4: data age at 5 Hz.
    async fn data_age<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut inv_end: S,
    ) -> anyhow::Result<(S, AgeReport)> {
        let mut age_opts = AgeBenchOptions::new(self.push_addr);
        age_opts.live = LivePolicy::Owned;
        age_opts.duration = self.opts.duration;
        age_opts.progress = progress_bar(self.opts.progress, 0, "data age, 5 Hz push");
        tokio::spawn(async move {
            let r = bench_age(&mut inv_end, &age_opts).await;
            r.map(|r| (inv_end, r))
        })
        .await
        .context("age task")?
    }

    /// Phase 5: push throughput, 1 and 4 connections, max rate, RTU idle.
    async fn push_throughput(&self) -> anyhow::Result<Vec<PushBenchReport>> {
        let mut push = Vec::new();
        for n in [1usize, 4] {
            let mut p = PushBenchOptions::new(self.push_addr);
            p.live = LivePolicy::Owned;
            p.connections = n;
            p.duration = self.opts.duration;
            p.progress = progress_bar(self.opts.progress, 0, &format!("push throughput, {n} conn"));
            push.push(bench_push(&p).await?);
        }
        Ok(push)
    }

    /// Phase 6, nominal load: 5 Hz push, the simulated inverter polling every 160 ms on
    /// `inv_end`; CPU and memory of the process over the phase.
    async fn nominal_load<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        inv_end: S,
    ) -> NominalLoad {
        let duration = self.opts.duration;
        let nominal_cancel = self.cancel.child_token();
        let push_stats = Arc::new(ksem::PushStats::default());
        let pusher = self.push_5hz(&nominal_cancel, &push_stats);
        let inv_stats = Arc::new(inverter::InverterStats::default());
        let inv = tokio::spawn(inverter::run(
            inv_end,
            inverter::InverterOptions::default(),
            Arc::clone(&inv_stats),
            nominal_cancel.clone(),
        ));
        let pb = progress_bar(
            self.opts.progress,
            duration.as_millis() as u64,
            "nominal load (CPU, RSS)",
        );
        tokio::time::sleep(Duration::from_millis(500)).await; // settle
        let cpu0 = process_cpu_time();
        let t0 = Instant::now();
        let stats0 = inv_stats.snapshot();
        let push0 = push_stats.snapshot().writes_ok;
        while t0.elapsed() < duration {
            tokio::time::sleep(Duration::from_millis(100).min(duration)).await;
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
        NominalLoad {
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
        }
    }
}
