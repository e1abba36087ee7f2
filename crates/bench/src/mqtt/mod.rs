//! `bench mqtt`: does the inverter notice MQTT? One run, three phases, against the real
//! gateway binary (`airbridge run`, spawned from this executable) whose RTU slave opens one
//! end of a pty pair by path; the bench is the inverter on the other end, the simulated
//! KSEM (in this process) pushes at 5 Hz and answers the polls, and a Mosquitto of the
//! bench's own (127.0.0.1, a free port, a config it writes) is the broker:
//!
//! 1. MQTT off: a gateway without `mqtt:`;
//! 2. MQTT publishing: a second gateway, the same config plus `mqtt:` (short interval,
//!    discovery on), measured once it is connected and has published;
//! 3. broker killed: the same gateway, Mosquitto SIGKILLed early in the phase and left
//!    down, the gateway reconnecting with backoff.
//!
//! `mqtt:` takes a restart, so phase 1 has a gateway process of its own; both start the
//! same way and settle as long before they are measured. The gateway's MQTT counters come
//! from its `/metrics`; a subscriber in the bench counts what the broker really delivered.
//! Every process it starts, it stops: on drop (an error, Ctrl-C in the runner), and by
//! `PR_SET_PDEATHSIG` if the bench itself is killed.
//!
//! The files: `procs` (child processes, the run's directory, Mosquitto) · `gateway` (the
//! gateway under test: config, start, `/metrics`). This file: the options, the report, the
//! phase runner and the markdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airbridge_sim::ksem;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::header::RunHeader;
use super::rtu::{bench_rtu, RtuBenchOptions, RtuBenchReport};
use super::{
    phase_cells, phase_reads, ratio, ser_duration_ms, PHASE_COLUMNS, PHASE_SIZES, PTY_NOTE,
};

mod gateway;
mod procs;

use gateway::{gateway_yaml, scrape, start_gateway, wait_metrics, Running};
pub use procs::find_mosquitto;
use procs::{free_port, start_broker, Proc, TempDir};

/// The KSEM profile the MQTT gateway decodes with (written next to its config).
const KSEM_PROFILE: &str = include_str!("../../../../profiles/ksem-g2.yaml");
/// Base topic of the bench gateway.
const TOPIC: &str = "airbridge-bench";
/// How long a gateway, the broker or the first publish may take to come up.
const PATIENCE: Duration = Duration::from_secs(20);
/// Quiet time after a gateway is ready and before it is measured (the same in every phase).
const SETTLE: Duration = Duration::from_millis(1000);

/// What `bench mqtt` does.
#[derive(Debug, Clone, Serialize)]
pub struct MqttBenchOptions {
    /// RTU requests per range and phase.
    pub count: u64,
    /// `mqtt.interval` of the publishing gateway.
    #[serde(rename = "interval_ms", serialize_with = "ser_duration_ms")]
    pub interval: Duration,
    /// The RTU slave's turnaround (gateway.yaml: 1750us).
    #[serde(rename = "turnaround_ms", serialize_with = "ser_duration_ms")]
    pub turnaround: Duration,
    /// The gateway binary to run (`airbridge`; default: this executable).
    pub gateway: PathBuf,
    /// The Mosquitto binary (default: on PATH, /usr/sbin, /usr/local/sbin).
    pub mosquitto: Option<PathBuf>,
    /// Show progress bars on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl MqttBenchOptions {
    /// Defaults with `gateway` as the binary to run.
    pub fn new(gateway: PathBuf) -> Self {
        MqttBenchOptions {
            count: 2000,
            interval: Duration::from_millis(200),
            turnaround: Duration::from_micros(1750),
            gateway,
            mosquitto: None,
            progress: false,
        }
    }
}

/// The gateway's MQTT counters, as `/metrics` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MqttCounters {
    /// `airbridge_mqtt_connected`: 1 while connected.
    pub connected: u64,
    /// `airbridge_mqtt_connects_total{result="ok"}`.
    pub connects: u64,
    /// `airbridge_mqtt_connects_total{result="failed"}`: failed attempts and lost connections.
    pub failures: u64,
    /// `airbridge_mqtt_published_total`: messages handed to the client.
    pub published: u64,
    /// `airbridge_mqtt_dropped_total`: states dropped on a full queue.
    pub dropped: u64,
}

/// One phase of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqttPhase {
    /// What MQTT was doing.
    pub phase: String,
    /// The gateway had an `mqtt:` section (false in phase 1: its counters stay 0).
    pub mqtt: bool,
    /// The RTU reads during the phase.
    pub rtu: RtuBenchReport,
    /// The gateway's counters when the RTU reads began.
    pub start: MqttCounters,
    /// … and when they ended.
    pub end: MqttCounters,
    /// Messages on `airbridge-bench/#` the broker delivered to the bench's subscriber
    /// during the phase (0 without MQTT).
    pub delivered: u64,
    /// Phase 3: when, after the RTU reads began, the broker was SIGKILLed.
    pub broker_killed_after_ms: Option<f64>,
}

/// Result of [`bench_mqtt`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqttBenchReport {
    /// The command, the machine and how to read the numbers.
    #[serde(flatten)]
    pub run: RunHeader,
    /// `mqtt.interval` of phases 2 and 3.
    pub interval_ms: f64,
    /// MQTT off, MQTT publishing, broker killed (in that order).
    pub phases: Vec<MqttPhase>,
    /// RTU turnaround p99, publishing ÷ off.
    pub publishing_turnaround_p99_ratio: f64,
    /// RTU total p99, publishing ÷ off.
    pub publishing_total_p99_ratio: f64,
    /// RTU turnaround p99, broker killed ÷ off.
    pub broker_down_turnaround_p99_ratio: f64,
    /// RTU total p99, broker killed ÷ off.
    pub broker_down_total_p99_ratio: f64,
}

// ---------------------------------------------------------------------------------------
// The broker's side: what it really delivered.

/// Subscribe to `airbridge-bench/#` on the broker and count the messages; ends when the
/// broker goes away or `stop`.
async fn subscriber(port: u16, count: Arc<AtomicU64>, stop: CancellationToken) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new("airbridge-bench-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 16);
    if client
        .try_subscribe(format!("{TOPIC}/#"), QoS::AtMostOnce)
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    count.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run.

/// Run the three phases. `command` is printed with the results.
pub async fn bench_mqtt(
    opts: &MqttBenchOptions,
    command: String,
) -> anyhow::Result<MqttBenchReport> {
    let mut run = RunHeader::begin(command);
    let mosquitto = opts
        .mosquitto
        .clone()
        .or_else(find_mosquitto)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "mosquitto not found on PATH or in /usr/sbin (apt-get install mosquitto, or --mosquitto PATH)"
            )
        })?;
    let dir = TempDir::new()?;
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let ksem = ksem::start(ksem::KsemSimOptions::default(), cancel.clone()).await?;
    // The gateway opens the pty by path on its RTU thread, as it opens a real device.
    let (inverter, gw_end, device) = super::pty_by_path()?;
    let broker_port = free_port()?;
    let broker = start_broker(&mosquitto, &dir.0, broker_port).await?;
    let profile = dir.0.join("ksem-g2.yaml");
    std::fs::write(&profile, KSEM_PROFILE)?;
    let mut rig = Rig {
        opts,
        dir: &dir.0,
        device,
        inverter,
        slave: ksem.slave_addr(),
        model: ksem.model(),
        cancel: &cancel,
        broker,
        broker_port,
        profile,
    };

    let off = rig.mqtt_off().await?;
    let (publishing, mut gw, subscriber) = rig.mqtt_publishing().await?;
    let killed = rig
        .broker_killed(
            gw.ports.status,
            publishing.rtu.elapsed_s,
            &subscriber.delivered,
        )
        .await?;
    subscriber.stop.cancel();
    gw.pusher.cancel();
    gw.proc.stop().await;
    drop(gw_end);
    cancel.cancel();
    drop(ksem);

    run.notes = mqtt_notes(opts, run.cpus);
    Ok(MqttBenchReport::new(
        run,
        opts.interval,
        vec![off, publishing, killed],
    ))
}

impl MqttBenchReport {
    /// The report of `phases` (off, publishing, broker killed) with their p99 ratios.
    fn new(run: RunHeader, interval: Duration, phases: Vec<MqttPhase>) -> Self {
        let p99 = |i: usize, turnaround: bool| {
            phases.get(i).map_or(f64::NAN, |p| {
                if turnaround {
                    p.rtu.all.turnaround.p99_us
                } else {
                    p.rtu.all.total.p99_us
                }
            })
        };
        MqttBenchReport {
            run,
            interval_ms: interval.as_millis() as f64,
            publishing_turnaround_p99_ratio: ratio(p99(1, true), p99(0, true)),
            publishing_total_p99_ratio: ratio(p99(1, false), p99(0, false)),
            broker_down_turnaround_p99_ratio: ratio(p99(2, true), p99(0, true)),
            broker_down_total_p99_ratio: ratio(p99(2, false), p99(0, false)),
            phases,
        }
    }
}

/// How to read `bench mqtt`'s numbers, on `cpus` CPUs.
fn mqtt_notes(opts: &MqttBenchOptions, cpus: usize) -> Vec<String> {
    vec![
        format!("the real gateway binary (`{} run`), restarted between phase 1 and 2 because `mqtt:` takes a restart; both gateways have the same config but for `mqtt:`, start the same way and settle {} ms before they are measured", opts.gateway.display(), SETTLE.as_millis()),
        format!("on {cpus} CPUs shared by the gateway, the bench (as the inverter, the simulated KSEM pushing at 5 Hz, an MQTT subscriber) and Mosquitto"),
        format!("RTU over a pseudo-terminal pair opened by path: {PTY_NOTE}"),
        format!("turnaround {} µs as configured: it is part of every RTU turnaround", opts.turnaround.as_micros()),
        "MQTT counters from the gateway's /metrics at the start and end of each phase's RTU reads; `delivered` counts what the broker passed on to the bench's subscriber on airbridge-bench/#".into(),
    ]
}

/// The bench's subscriber: what it counted, and its stop.
struct Subscriber {
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// What the three phases share.
struct Rig<'a> {
    opts: &'a MqttBenchOptions,
    /// The run's directory: configs, logs, the profile.
    dir: &'a Path,
    /// The path of the gateway's end of the pty.
    device: String,
    /// The bench's end of the pty: the inverter.
    inverter: tokio_serial::SerialStream,
    /// The simulated KSEM's slave, which the gateway polls.
    slave: SocketAddr,
    /// The simulated KSEM's household, which its pushers push.
    model: ksem::SharedModel,
    cancel: &'a CancellationToken,
    /// Mosquitto: up for phases 1 and 2, SIGKILLed in phase 3.
    broker: Proc,
    broker_port: u16,
    /// The KSEM profile in `dir`, for the publishing gateway.
    profile: PathBuf,
}

impl Rig<'_> {
    /// The RTU reads of a phase, labelled for the progress bar.
    fn reads(&self, label: &str) -> RtuBenchOptions {
        phase_reads(&PHASE_SIZES, self.opts.count, self.opts.progress, label)
    }

    /// Phase 1, MQTT off: a gateway of its own, without `mqtt:`; stopped after the phase.
    async fn mqtt_off(&mut self) -> anyhow::Result<MqttPhase> {
        let (device, slave, turnaround) = (&self.device, self.slave, self.opts.turnaround);
        let yaml = |ports| gateway_yaml(device, slave, ports, turnaround, None);
        let mut gw = start_gateway(
            self.opts,
            self.dir,
            "off",
            yaml,
            self.model.clone(),
            self.cancel,
        )
        .await?;
        tokio::time::sleep(SETTLE).await;
        let (start, _) = scrape(gw.ports.status).await?;
        let reads = self.reads("RTU reads, MQTT off");
        let rtu = bench_rtu(&mut self.inverter, &reads).await?;
        let (end, _) = scrape(gw.ports.status).await?;
        gw.pusher.cancel();
        gw.proc.stop().await;
        Ok(MqttPhase {
            phase: "MQTT off".into(),
            mqtt: false,
            rtu,
            start,
            end,
            delivered: 0,
            broker_killed_after_ms: None,
        })
    }

    /// Phase 2, MQTT publishing: the same config plus `mqtt:`, measured once connected and past
    /// discovery. The gateway and the subscriber go on into phase 3.
    async fn mqtt_publishing(&mut self) -> anyhow::Result<(MqttPhase, Running, Subscriber)> {
        let interval_ms = self.opts.interval.as_millis();
        let section = format!(
            "broker: 'mqtt://127.0.0.1:{}', client_id: airbridge-bench, topic: {TOPIC}, interval: {interval_ms}ms, discovery: homeassistant",
            self.broker_port
        );
        let (device, slave, turnaround) = (&self.device, self.slave, self.opts.turnaround);
        let mqtt = Some((section.as_str(), self.profile.as_path()));
        let yaml = |ports| gateway_yaml(device, slave, ports, turnaround, mqtt);
        let sub = Subscriber {
            delivered: Arc::new(AtomicU64::new(0)),
            stop: self.cancel.child_token(),
        };
        tokio::spawn(subscriber(
            self.broker_port,
            Arc::clone(&sub.delivered),
            sub.stop.clone(),
        ));
        let mut gw = start_gateway(
            self.opts,
            self.dir,
            "mqtt",
            yaml,
            self.model.clone(),
            self.cancel,
        )
        .await?;
        let status = gw.ports.status;
        // Connected and past discovery: more than the first burst went out.
        let first = wait_metrics(&mut gw.proc, status, "publishing", |c, _| {
            c.connected == 1 && c.published > 0
        })
        .await?;
        wait_metrics(&mut gw.proc, status, "publishing states", |c, _| {
            c.published > first.published
        })
        .await?;
        tokio::time::sleep(SETTLE).await;
        let (start, _) = scrape(status).await?;
        let d0 = sub.delivered.load(Relaxed);
        let reads = self.reads("RTU reads, MQTT publishing");
        let rtu = bench_rtu(&mut self.inverter, &reads).await?;
        let (end, _) = scrape(status).await?;
        let phase = MqttPhase {
            phase: format!("MQTT publishing ({interval_ms} ms interval, discovery on)"),
            mqtt: true,
            rtu,
            start,
            end,
            delivered: sub.delivered.load(Relaxed) - d0,
            broker_killed_after_ms: None,
        };
        Ok((phase, gw, sub))
    }

    /// Phase 3, the broker SIGKILLed a tenth into the phase (`phase2_s` long), down for the rest
    /// of it; the publishing gateway's status at `status`.
    async fn broker_killed(
        &mut self,
        status: SocketAddr,
        phase2_s: f64,
        delivered: &AtomicU64,
    ) -> anyhow::Result<MqttPhase> {
        let kill_after = Duration::from_secs_f64((phase2_s / 10.0).clamp(0.05, 2.0));
        let (start, _) = scrape(status).await?;
        let d0 = delivered.load(Relaxed);
        let t0 = Instant::now();
        let broker = &mut self.broker;
        let kill = async {
            tokio::time::sleep(kill_after).await;
            broker.kill();
            t0.elapsed()
        };
        let phase3 = phase_reads(
            &PHASE_SIZES,
            self.opts.count,
            self.opts.progress,
            "RTU reads, broker killed",
        );
        let (rtu, killed_at) = tokio::join!(bench_rtu(&mut self.inverter, &phase3), kill);
        let rtu = rtu?;
        let (end, _) = scrape(status).await?;
        Ok(MqttPhase {
            phase: "broker killed (SIGKILL), down for the rest of the phase".into(),
            mqtt: true,
            rtu,
            start,
            end,
            delivered: delivered.load(Relaxed) - d0,
            broker_killed_after_ms: Some((killed_at.as_secs_f64() * 1e4).round() / 10.0),
        })
    }
}

/// The report as markdown: the three phases' RTU percentiles and MQTT counters side by side.
pub fn mqtt_markdown(r: &MqttBenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = r.run.markdown();
    let _ = writeln!(
        s,
        "\n| phase | RTU {PHASE_COLUMNS} | MQTT published | delivered by the broker | connects ok / failed | connected at end |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &r.phases {
        let (c0, c1) = (&p.start, &p.end);
        let phase = match p.broker_killed_after_ms {
            Some(ms) => format!("{} (killed {ms} ms in)", p.phase),
            None => p.phase.clone(),
        };
        let mqtt = if p.mqtt {
            format!(
                "{} | {} | {} / {} | {}",
                c1.published.saturating_sub(c0.published),
                p.delivered,
                c1.connects.saturating_sub(c0.connects),
                c1.failures.saturating_sub(c0.failures),
                if c1.connected == 1 { "yes" } else { "no" },
            )
        } else {
            "- | - | - | no `mqtt:`".into()
        };
        let _ = writeln!(s, "| {phase} | {} | {mqtt} |", phase_cells(&p.rtu.all));
    }
    let _ = writeln!(
        s,
        "\nRTU p99 ÷ MQTT off: publishing turnaround {}, total {}; broker killed turnaround {}, total {}",
        r.publishing_turnaround_p99_ratio,
        r.publishing_total_p99_ratio,
        r.broker_down_turnaround_p99_ratio,
        r.broker_down_total_p99_ratio
    );
    s
}
