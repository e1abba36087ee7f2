//! `airbridge`: the command line. A thin layer over the library: parse arguments, set up
//! logging, call into `airbridge::*`, turn errors into exit codes.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use airbridge::config;
use airbridge::gateway::{Gateway, RtuPort};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "airbridge",
    version,
    about = "Modbus gateway: KSEM G2 on Ethernet → Plenticore on RS485"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "/etc/airbridge/gateway.yaml")]
        config: PathBuf,
    },
    /// Validate a config: print the effective settings and warnings; exit 1 if unusable.
    Check {
        #[arg(long, short, default_value = "gateway.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => runtime()
            .and_then(|rt| rt.block_on(run(config)))
            .map_or_else(report, |()| ExitCode::SUCCESS),
    }
}

fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("airbridge: {e:#}");
    ExitCode::FAILURE
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
            print!("{}", loaded.config.describe());
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            println!("{}: usable", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&path)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cancel = CancellationToken::new();
    let gateway = Gateway::start(loaded.config, RtuPort::Device, cancel.clone()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    gateway.join(Duration::from_secs(3)).await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
