//! `airbridge`: the command line. Parses arguments, sets up logging, hands each subcommand
//! to its crate (`run` and `check` to the gateway, `demo` and `simulate` to the simulators,
//! `bench` to the bench) and turns errors into exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use airbridge::config;
use airbridge::ops::logging::LogFormat;
use airbridge_sim::commands;
use clap::{Parser, Subcommand};

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
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
}

/// `--log-format`: the gateway's [`LogFormat`] as the command line names it (the gateway
/// crate has no clap).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
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
    Bench(airbridge_bench::BenchCmd),
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
    airbridge::ops::logging::init(cli.log_format.into());
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => block_on(airbridge::app::supervisor::run(config)),
        Command::Demo {
            duration,
            seed,
            profile,
            status,
            mqtt,
        } => demo(duration, seed, profile, status, mqtt),
        Command::Simulate(what) => simulate(what),
        Command::Bench(cmd) => block_on(airbridge_bench::run(cmd)),
        Command::Profile(ProfileCmd::Show { file }) => profile_show(&file),
    }
}

/// `airbridge demo`: the KSEM demo, or with `--profile` the device demo, which takes
/// neither `--status` nor `--mqtt` (exit 2 if given).
fn demo(
    duration: Option<Duration>,
    seed: u64,
    profile: Option<PathBuf>,
    status: Option<SocketAddr>,
    mqtt: Option<String>,
) -> ExitCode {
    let Some(profile) = profile else {
        return block_on(commands::demo(duration, seed, status, mqtt));
    };
    if status.is_some() {
        eprintln!(
            "error: --status goes with the KSEM demo; the --profile demo prints its values instead"
        );
        return ExitCode::from(2);
    }
    if mqtt.is_some() {
        eprintln!("error: --mqtt goes with the KSEM demo, not with --profile");
        return ExitCode::from(2);
    }
    block_on(commands::demo_profile(profile, duration, seed))
}

/// `airbridge simulate …`: one simulator until Ctrl-C (or `--duration`).
fn simulate(what: Simulate) -> ExitCode {
    match what {
        Simulate::Device {
            profile,
            device,
            unit,
            baud,
            seed,
            wire_time,
            duration,
        } => block_on(commands::device(
            profile,
            device,
            unit,
            (baud, wire_time),
            seed,
            duration,
        )),
        Simulate::Ksem {
            listen,
            push_to,
            interval,
            seed,
        } => block_on(commands::ksem(airbridge_sim::ksem::KsemSimOptions {
            listen,
            push_to,
            interval,
            seed,
        })),
        Simulate::Inverter {
            device,
            unit,
            interval,
            baud,
            duration,
        } => block_on(commands::inverter(device, unit, interval, baud, duration)),
    }
}

/// `airbridge profile show FILE`: the profile's registers, or why it does not load.
fn profile_show(file: &std::path::Path) -> ExitCode {
    match airbridge::control::profile::load(file) {
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

/// A tool's output into a pipe that closed (`airbridge demo | head`) ends it quietly, as any
/// Unix tool ends, instead of a panic in `println!`. Not for `run`: the gateway writes only to
/// sockets (sent without SIGPIPE) and devices, and a vanished peer is an error it handles.
fn quiet_on_closed_pipe() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
