//! `airbridge`: the command line. A thin layer over the library: parse arguments, set up
//! logging, call into `airbridge::*`, turn errors into exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use airbridge::app::supervisor::shutdown_signal;
use airbridge::config;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "airbridge",
    version,
    about = "Modbus gateway: a KSEM G2 on Ethernet → a Plenticore on RS485, or RS485 devices (KSTAR) → Modbus TCP clients on the LAN",
    long_about = "Modbus gateway appliance. Two directions, one config file (/etc/airbridge/gateway.yaml):\n  \
        • KSEM G2 smart meter on Ethernet (it pushes, we poll) → Kostal Plenticore on RS485 Modbus RTU;\n  \
        • RS485 devices such as KSTAR inverters (polled as RTU master) → LAN clients on Modbus TCP.\n\
        Start with `airbridge check`, then `airbridge run` (or the systemd unit); `airbridge demo` shows both without hardware."
)]
struct Cli {
    // What to do (a plain comment: a doc here would change --help).
    #[command(subcommand)]
    command: Command,
    /// Log line format on stderr: text, or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = airbridge::ops::logging::LogFormat::Text)]
    log_format: airbridge::ops::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config file (the same default as `check`).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config: print the effective settings and warnings (also about this
    /// machine: missing serial device, privileged port); exit 1 if unusable.
    Check {
        /// The config file (the same default as `run`; `-c gateway.yaml` for the example in
        /// a checkout).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Simulated KSEM, gateway and simulated inverter in one process over a pseudo-terminal.
    Demo {
        /// Stop after this long (e.g. 30s); default: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Household seed of the simulated KSEM.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead: a simulated device of this profile (e.g. profiles/kstar-hybrid.yaml) →
        /// gateway (RTU poller + TCP server) → TCP client.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Serve the status page (/, /status, /metrics, /journal) here, e.g. 127.0.0.1:8080
        /// (KSEM demo).
        #[arg(long)]
        status: Option<SocketAddr>,
        /// Publish the simulated meter to this MQTT broker, e.g. 127.0.0.1:1883 (KSEM demo;
        /// topic airbridge-demo, Home Assistant discovery on).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
    },
    /// Run a simulated device.
    #[command(subcommand)]
    Simulate(Simulate),
    /// Register profiles (profiles/*.yaml).
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Measure latency, throughput, data age and resources (see README).
    #[command(subcommand)]
    Bench(airbridge::tools::bench::BenchCmd),
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Validate a profile and list its registers.
    Show { file: PathBuf },
}

#[derive(Subcommand)]
enum Simulate {
    /// A KSEM G2: Modbus TCP slave with the full map, pushing 0..27 and 40..145 with FC16.
    Ksem {
        /// Where the Modbus TCP slave listens.
        #[arg(long, default_value = "127.0.0.1:5021")]
        listen: SocketAddr,
        /// The gateway's push listener.
        #[arg(long)]
        push_to: Option<SocketAddr>,
        /// Measuring cycle and push period.
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        interval: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A device on RS485 answering as a register profile describes it (e.g. a KSTAR inverter).
    Device {
        /// The register profile, e.g. profiles/kstar-hybrid.yaml.
        #[arg(long)]
        profile: PathBuf,
        /// Serial device (or pseudo-terminal) to answer on.
        #[arg(long)]
        device: String,
        /// RS485 address(es) to answer: one device per address on the same bus, e.g.
        /// `--unit 1,2` (1..247, each once).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        unit: Vec<u8>,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Pace every reply as a real bus at --baud would (8N1: the request's and the
        /// reply's time on the wire): a pty or socat delivers at once, so poll intervals
        /// measured on one need the wire put back.
        #[arg(long)]
        wire_time: bool,
        /// Stop after this long; default: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// A Plenticore: RTU master reading 8244, then 0..147 every interval.
    Inverter {
        /// Serial device (or pseudo-terminal) to poll on.
        #[arg(long)]
        device: String,
        #[arg(long, default_value_t = 1)]
        unit: u8,
        #[arg(long, default_value = "160ms", value_parser = parse_duration)]
        interval: Duration,
        #[arg(long, default_value_t = 38400)]
        baud: u32,
        /// Stop after this long; default: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        quiet_on_closed_pipe();
    }
    airbridge::ops::logging::init(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => block_on(airbridge::app::supervisor::run(config)),
        Command::Demo {
            profile: Some(_),
            status: Some(_),
            ..
        } => {
            eprintln!("error: --status goes with the KSEM demo; the --profile demo prints its values instead");
            ExitCode::from(2)
        }
        Command::Demo {
            profile: Some(_),
            mqtt: Some(_),
            ..
        } => {
            eprintln!("error: --mqtt goes with the KSEM demo, not with --profile");
            ExitCode::from(2)
        }
        Command::Demo {
            duration,
            seed,
            profile: Some(profile),
            status: None,
            mqtt: None,
        } => block_on(demo_profile(profile, duration, seed)),
        Command::Demo {
            duration,
            seed,
            profile: None,
            status,
            mqtt,
        } => block_on(demo(duration, seed, status, mqtt)),
        Command::Simulate(Simulate::Device {
            profile,
            device,
            unit,
            baud,
            seed,
            wire_time,
            duration,
        }) => block_on(simulate_device(
            profile,
            device,
            unit,
            (baud, wire_time),
            seed,
            duration,
        )),
        Command::Simulate(Simulate::Ksem {
            listen,
            push_to,
            interval,
            seed,
        }) => {
            let opts = airbridge::tools::sim::ksem::KsemSimOptions {
                listen,
                push_to,
                interval,
                seed,
            };
            block_on(async move {
                let cancel = CancellationToken::new();
                let sim = airbridge::tools::sim::ksem::start(opts, cancel.clone()).await?;
                println!(
                    "simulated KSEM: Modbus TCP slave on {}{}",
                    sim.slave_addr(),
                    push_to
                        .map(|p| format!(", pushing to {p}"))
                        .unwrap_or_default()
                );
                tokio::select! {
                    r = sim.wait() => r,
                    () = shutdown_signal() => { cancel.cancel(); Ok(()) }
                }
            })
        }
        Command::Simulate(Simulate::Inverter {
            device,
            unit,
            interval,
            baud,
            duration,
        }) => block_on(simulate_inverter(device, unit, interval, baud, duration)),
        Command::Bench(cmd) => block_on(airbridge::tools::bench::run(cmd)),
        Command::Profile(ProfileCmd::Show { file }) => {
            match airbridge::control::profile::load(&file) {
                Ok(p) => {
                    print_out(&p.show());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Write to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    runtime()
        .and_then(|rt| rt.block_on(f))
        .map_or_else(report, |()| ExitCode::SUCCESS)
}

fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("airbridge: {e:#}");
    ExitCode::FAILURE
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the RTU slave never waits behind a burst of push connections.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            let mut text = loaded.config.describe();
            for w in loaded
                .warnings
                .iter()
                .chain(&config::host_warnings(&loaded.config, path))
            {
                text.push_str(&format!("warning: {w}\n"));
            }
            text.push_str(&format!("{}: usable\n", path.display()));
            print_out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(
    duration: Option<Duration>,
    seed: u64,
    status: Option<SocketAddr>,
    mqtt: Option<String>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let opts = airbridge::tools::demo::DemoOptions {
        duration,
        seed,
        status,
        mqtt,
        ..Default::default()
    };
    let run = airbridge::tools::demo::run(opts, cancel.clone());
    tokio::pin!(run);
    let summary = tokio::select! {
        r = &mut run => r?,
        () = shutdown_signal() => { cancel.cancel(); run.await? }
    };
    if summary.inverter.replies == 0 {
        anyhow::bail!("the simulated inverter got no reply at all");
    }
    Ok(())
}

async fn simulate_inverter(
    device: String,
    unit: u8,
    interval: Duration,
    baud: u32,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use airbridge::tools::sim::inverter::{self, InverterOptions, InverterStats};
    use std::sync::Arc;
    let rtu = config::RtuConfig::master_line(device, baud, 8, config::Parity::None, 2, unit);
    let stream = airbridge::link::serial::open(&rtu)?;
    let cancel = CancellationToken::new();
    let stats = Arc::new(InverterStats::default());
    let opts = InverterOptions {
        unit,
        interval,
        ..Default::default()
    };
    let task = tokio::spawn(inverter::run(
        stream,
        opts,
        Arc::clone(&stats),
        cancel.clone(),
    ));
    every_second_until_stopped(duration, || {
        let c = stats.snapshot();
        let view = stats.last_view().map_or_else(
            || "no data yet".to_string(),
            |v| {
                format!(
                    "grid {:+.1} W  L1 {:.1} V  L2 {:.1} V  L3 {:.1} V",
                    v.grid_power_w, v.voltages_v[0], v.voltages_v[1], v.voltages_v[2]
                )
            },
        );
        println!(
            "{view}  | replies {} exceptions {} timeouts {} bad frames {}",
            c.replies, c.exceptions, c.timeouts, c.bad_frames
        );
    })
    .await;
    cancel.cancel();
    let _ = task.await;
    Ok(())
}

async fn demo_profile(
    profile: PathBuf,
    duration: Option<Duration>,
    seed: u64,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let run = airbridge::tools::demo::run_kstar(&profile, duration, seed, true, cancel.clone());
    tokio::pin!(run);
    let summary = tokio::select! {
        r = &mut run => r?,
        () = shutdown_signal() => { cancel.cancel(); run.await? }
    };
    if summary.reads_ok == 0 {
        anyhow::bail!("the TCP client got no data at all");
    }
    Ok(())
}

async fn simulate_device(
    profile: PathBuf,
    device: String,
    units: Vec<u8>,
    (baud, wire_time): (u32, bool),
    seed: u64,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use airbridge::tools::sim::device::{self, Device, DeviceOptions};
    use std::sync::atomic::Ordering::Relaxed;
    let mut seen = std::collections::BTreeSet::new();
    for &u in &units {
        if !(1..=247).contains(&u) || !seen.insert(u) {
            anyhow::bail!("--unit {u}: each RS485 address must be 1..247 and given once");
        }
    }
    let prof = airbridge::control::profile::load(&profile)?;
    let name = prof.name.clone();
    let line = config::RtuConfig::master_line(
        device.clone(),
        baud,
        8,
        config::Parity::None,
        1,
        units.first().copied().unwrap_or(1),
    );
    let stream = airbridge::link::serial::open(&line)?;
    let devices: Vec<_> = units
        .iter()
        .zip(seed..)
        .map(|(&unit, seed)| {
            Device::new(
                prof.clone(),
                DeviceOptions {
                    unit,
                    seed,
                    wire: wire_time.then_some((baud, 10)),
                    ..Default::default()
                },
            )
        })
        .collect();
    let list: Vec<String> = units.iter().map(ToString::to_string).collect();
    let which = if units.len() == 1 { "unit" } else { "units" };
    let paced = if wire_time {
        ", replies paced to the wire"
    } else {
        ""
    };
    println!(
        "simulated {name}: {which} {} on {device} at {baud} 8N1{paced}",
        list.join(", ")
    );
    let cancel = CancellationToken::new();
    let bus = devices.clone();
    let c = cancel.clone();
    let task = tokio::spawn(async move { device::serve_bus(stream, &bus, c).await });
    every_second_until_stopped(duration, || {
        let lines: Vec<String> = devices
            .iter()
            .map(|d| {
                let s = &d.stats;
                format!(
                    "requests {} reads {} writes {} exceptions {}",
                    s.requests.load(Relaxed),
                    s.reads.load(Relaxed),
                    s.writes.load(Relaxed),
                    s.exceptions.load(Relaxed)
                )
            })
            .collect();
        match lines.as_slice() {
            [one] => println!("{one}"),
            many => {
                let per: Vec<String> = units
                    .iter()
                    .zip(many)
                    .map(|(u, l)| format!("unit {u}: {l}"))
                    .collect();
                println!("{}", per.join(" | "));
            }
        }
    })
    .await;
    cancel.cancel();
    match task.await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(anyhow::anyhow!("device task: {e}")),
    }
}

/// Call `report` every second until SIGINT/SIGTERM or, if given, `duration` has passed.
async fn every_second_until_stopped(duration: Option<Duration>, mut report: impl FnMut()) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = shutdown_signal() => break,
            () = &mut end => break,
            _ = tick.tick() => report(),
        }
    }
}

/// A tool's output into a pipe that closed (`airbridge demo | head`) ends it quietly, as any
/// Unix tool ends, instead of a panic in `println!`. Not for `run`: the gateway writes only to
/// sockets (sent without SIGPIPE) and devices, and a vanished peer is an error it handles.
fn quiet_on_closed_pipe() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
