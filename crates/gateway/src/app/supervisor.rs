//! The supervisor: runs a gateway under the process's signals and systemd. Stops on SIGINT
//! or SIGTERM or when a task ends unexpectedly (exit non-zero, so the service manager
//! restarts it), reloads on SIGHUP, and tells systemd (ready, status, watchdog) every tick.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::gateway::{Gateway, RtuPort};
use crate::config;

/// Run the gateway of the config at `path` until a signal stops it or a task fails.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    // Before anything else: SIGHUP's default action would end the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let loaded = config::load(&path)?;
    let rtu_slave = loaded.config.rtu_slave;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    apply_log_level(&loaded.config.log.level);
    let cancel = CancellationToken::new();
    let mut gateway = Gateway::start(loaded.config, RtuPort::Device, cancel.clone()).await?;
    // The supervisor: stops on a signal or a failed task, reloads on SIGHUP, and tells
    // systemd (ready, status, watchdog) on every tick.
    let mut notifier = crate::app::systemd::Notifier::from_env().watch_rtu_slave(rtu_slave);
    if let Some(w) = notifier.watchdog() {
        tracing::info!(interval = ?w, "systemd watchdog enabled");
    }
    let mut tick = tokio::time::interval(notifier.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let failure = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            f = gateway.failed() => break Some(f),
            _ = hangup.recv() => {
                let said = match crate::app::reload::reload_file(&gateway.handles, &path) {
                    Ok(outcome) => outcome.to_string(),
                    Err(e) => format!("reload rejected: {e}"),
                };
                notifier.reloaded(&said);
            }
            _ = tick.tick() => notifier.tick(&gateway.handles),
        }
    };
    notifier.stopping();
    tracing::info!("shutting down");
    cancel.cancel();
    gateway.join(Duration::from_secs(3)).await;
    match failure {
        None => Ok(()),
        Some(f) => {
            tracing::error!("{f}");
            anyhow::bail!("{f}")
        }
    }
}

/// Apply the config's `log.level` (unless `RUST_LOG` is set).
fn apply_log_level(level: &str) {
    match crate::ops::logging::set_level(level) {
        Ok(crate::ops::logging::LevelChange::OverriddenByEnv) if level != "info" => {
            tracing::info!("RUST_LOG is set: log.level {level} is ignored");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("log.level: {e}"),
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
