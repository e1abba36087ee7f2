//! `airbridge bench …`: the clap arguments, their parsers, and the runners that print a
//! table or one JSON object. Touches stdout, stderr (progress) and the devices named.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use airbridge::config::{Parity, RtuConfig};

use super::age::{bench_age, AgeBenchOptions};
use super::e2e::{bench_e2e, E2eOptions};
use super::guard::LivePolicy;
use super::hist::fmt_us;
use super::push::{bench_push, PushBenchOptions};
use super::report::{e2e_markdown, fmt_exceptions, rtu_table};
use super::rtu::{bench_rtu, bits_per_char, is_pty, wire_time, RegRange, RtuBenchOptions};
use super::{progress_bar, round1, PTY_NOTE};

/// `airbridge bench …`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Act as the inverter: FC03 round-robin over ranges, turnaround and total per request.
    Rtu(RtuArgs),
    /// Act as the KSEM push: FC16 0..27 and 40..145 over N connections, write latency.
    /// Refuses a gateway that serves a real KSEM's data unless --live.
    Push(PushArgs),
    /// Data age: push a sequence number, poll it back over RTU. Refuses a gateway that
    /// serves a real KSEM's data unless --live.
    Age(AgeArgs),
    /// Everything, in-process: simulated KSEM + real gateway over a pty pair.
    E2e(E2eArgs),
    /// Does the inverter notice the house reading the meter? RTU percentiles without and
    /// with LAN readers on the meter's tcp_server, in-process.
    Lan(LanArgs),
    /// Does the inverter notice MQTT? RTU percentiles of the real gateway binary with MQTT
    /// off, publishing to a Mosquitto the bench starts, and that broker SIGKILLed.
    Mqtt(MqttArgs),
}

/// `bench mqtt` arguments.
#[derive(Debug, clap::Args)]
pub struct MqttArgs {
    /// RTU requests per range (10, 74, 125 registers) and phase.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// `mqtt.interval` of the publishing gateway.
    #[arg(long, default_value = "200ms", value_parser = parse_dur)]
    pub interval: Duration,
    /// The RTU slave's turnaround.
    #[arg(long, default_value = "1750us", value_parser = parse_dur)]
    pub turnaround: Duration,
    /// The Mosquitto binary (default: on PATH, /usr/sbin, /usr/local/sbin).
    #[arg(long)]
    pub mosquitto: Option<std::path::PathBuf>,
    /// The gateway binary to run (default: this executable).
    #[arg(long)]
    pub gateway: Option<std::path::PathBuf>,
    /// One JSON object on stdout instead of markdown.
    #[arg(long)]
    pub json: bool,
}

/// `bench lan` arguments.
#[derive(Debug, clap::Args)]
pub struct LanArgs {
    /// LAN clients reading at once.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Reads per second of each client (Hz).
    #[arg(long, default_value = "10", value_parser = parse_hz)]
    pub rate: f64,
    /// Registers per LAN read (from address 0).
    #[arg(long, default_value_t = 125)]
    pub registers: u16,
    /// RTU requests per range (10, 74, 125 registers) and run.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// The RTU slave's turnaround.
    #[arg(long, default_value = "1750us", value_parser = parse_dur)]
    pub turnaround: Duration,
    /// One JSON object on stdout instead of markdown.
    #[arg(long)]
    pub json: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    airbridge::config::parse_duration(s)
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
    /// Unit id to read from.
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
    /// How long to push (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub duration: Duration,
    /// Parallel push connections (the gateway's push.max_connections limits them).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// MBAP unit id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// One JSON object on stdout instead of tables (durations in the `_s`/`_ms`/`_us` unit
    /// their key names).
    #[arg(long)]
    pub json: bool,
    /// Run even though the gateway serves a real KSEM's data: the sequence then goes only
    /// into the reserved words 28..39 (the inverter reads a non-zero reserved word during
    /// the run) and every other word is written back as the image holds it.
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, clap::Args)]
pub struct AgeArgs {
    /// Serial device or pseudo-terminal (the inverter's end).
    #[arg(long)]
    pub device: String,
    /// The gateway's push listener, HOST:PORT.
    #[arg(long)]
    pub push_to: String,
    /// How long the reader polls (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub duration: Duration,
    /// Sequence pushes per second.
    #[arg(long, default_value = "5", value_parser = parse_hz)]
    pub rate: f64,
    /// Unit id of the pushes and the reads.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Line speed (8N2).
    #[arg(long, default_value_t = 38400)]
    pub baud: u32,
    /// One JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run even though the gateway serves a real KSEM's data: the sequence then goes only
    /// into the reserved words 28..39 (the inverter reads a non-zero reserved word during
    /// the run) and every other word is written back as the image holds it.
    #[arg(long)]
    pub live: bool,
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
    /// One JSON object on stdout instead of markdown.
    #[arg(long)]
    pub json: bool,
}

fn live_policy(live: bool) -> LivePolicy {
    if live {
        LivePolicy::Preserve
    } else {
        LivePolicy::Refuse
    }
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
    airbridge::link::serial::open(&RtuConfig::master_line(
        device.to_string(),
        baud,
        8,
        Parity::None,
        2,
        unit,
    ))
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
        BenchCmd::Lan(a) => run_lan(a).await,
        BenchCmd::Mqtt(a) => run_mqtt(a).await,
    }
}

async fn run_rtu(a: RtuArgs) -> anyhow::Result<()> {
    let stream = open_serial(&a.device, a.baud, a.unit)?;
    let pty = is_pty(&a.device);
    let total = a.count * a.ranges.len() as u64;
    if !a.json && !show_progress(a.json) {
        // No progress bar off a terminal: say once what is going on, so a pipe is not silent.
        eprintln!(
            "bench rtu: {total} requests on {} (timeout {} each); the report follows when they are done",
            a.device,
            humantime::format_duration(a.timeout)
        );
    }
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
    let failed = rtu_failure(&report.all);
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
        }))?;
        failed.map_or(Ok(()), Err)
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
        failed.map_or(Ok(()), Err)
    }
}

/// The bench failed when requests got no valid reply (timeouts, CRC, bad frames):
/// exceptions are answers and do not count.
fn rtu_failure(all: &super::rtu::RtuRangeReport) -> Option<anyhow::Error> {
    let lost = all.timeouts + all.partial + all.bad_crc + all.bad_frame;
    (lost > 0).then(|| {
        anyhow::anyhow!(
            "{lost} of {} requests got no valid reply ({} timed out, {} partial, {} bad CRC, {} bad frames): check wiring, baud and unit id",
            all.requests,
            all.timeouts,
            all.partial,
            all.bad_crc,
            all.bad_frame
        )
    })
}

async fn run_push(a: PushArgs) -> anyhow::Result<()> {
    let target = resolve(&a.target).await?;
    let mut opts = PushBenchOptions::new(target);
    opts.rate = a.rate.0;
    opts.duration = a.duration;
    opts.connections = a.connections;
    opts.unit = a.unit;
    opts.live = live_policy(a.live);
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
    opts.live = live_policy(a.live);
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

async fn run_lan(a: LanArgs) -> anyhow::Result<()> {
    let opts = super::LanBenchOptions {
        clients: a.clients,
        rate_hz: a.rate,
        registers: a.registers,
        count: a.count,
        turnaround: a.turnaround,
        progress: show_progress(a.json),
    };
    let report = super::bench_lan(&opts, command_line()).await?;
    if a.json {
        print_json(&report)
    } else {
        print!("{}", super::lan_markdown(&report));
        Ok(())
    }
}

async fn run_mqtt(a: MqttArgs) -> anyhow::Result<()> {
    let gateway = match a.gateway {
        Some(g) => g,
        None => std::env::current_exe().context("cannot find this executable; --gateway PATH")?,
    };
    let mut opts = super::MqttBenchOptions::new(gateway);
    opts.count = a.count;
    opts.interval = a.interval;
    opts.turnaround = a.turnaround;
    opts.mosquitto = a.mosquitto;
    opts.progress = show_progress(a.json);
    // Ctrl-C drops the bench, and with it every process it started.
    let report = tokio::select! {
        r = super::bench_mqtt(&opts, command_line()) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the gateway and mosquitto were stopped"),
    };
    let lost = report.phases.iter().find_map(|p| rtu_failure(&p.rtu.all));
    if a.json {
        print_json(&report)?;
    } else {
        print!("{}", super::mqtt_markdown(&report));
    }
    lost.map_or(Ok(()), Err)
}
