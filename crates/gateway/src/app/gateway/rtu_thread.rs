//! The RTU slave's own OS thread and runtime ([`spawn_rtu_thread`]), and its serial device
//! (`rtu.device`) served through the one [`reopen`] loop, re-opened with backoff when it
//! cannot be opened or disappears.
//!
//! May touch: the thread and runtime it builds, the serial device named in the config, the
//! slave's device stats.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::RtuPort;
use crate::config::Config;
use crate::link::reopen::{self, Reopenable};
use crate::servers::rtu_slave::RtuSlave;

/// Run the RTU slave on its own OS thread, in a current-thread runtime of its own, so that
/// nothing else the gateway does (LAN readers, push floods, the status page) can delay a
/// reply to the inverter: the slave's precise turnaround wait sleeps its thread (up to
/// ~1 ms per reply), which on the shared two-worker runtime would block a worker every
/// other task needs, and its frames would queue behind other tasks. The serial device is
/// opened on that thread (its I/O is driven there); a [`RtuPort::Stream`] made elsewhere
/// keeps the driver of the runtime it was made in. A task in `tasks` ends when the thread
/// does, so [`super::Gateway::failed`] sees it end (or panic) as any other task.
pub(super) fn spawn_rtu_thread(
    port: RtuPort,
    slave: RtuSlave,
    config: &Config,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<&'static str>,
) -> anyhow::Result<()> {
    if matches!(port, RtuPort::Off) {
        return Ok(());
    }
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let (config, cancel) = (config.clone(), cancel.clone());
    std::thread::Builder::new()
        .name("rtu-slave".into())
        .spawn(move || {
            // Built (and dropped) on this thread: a runtime may not be dropped in async code.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("RTU slave: cannot build its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                match port {
                    RtuPort::Off => {}
                    RtuPort::Stream(stream) => {
                        if let Err(e) = slave.serve(stream, &cancel).await {
                            tracing::error!("RTU stream failed: {e}");
                        }
                    }
                    RtuPort::Device => serve_device(config, slave, cancel).await,
                }
            });
            // Dropped without a send when the thread panics: the task ends all the same.
            let _ = done.send(());
        })?;
    tasks.spawn(async move {
        let _ = ended.await;
        "RTU slave"
    });
    Ok(())
}

/// The RTU slave's serial device (`rtu.device`), for the [`reopen`] loop.
struct SlaveDevice {
    /// The `rtu:` section: the device's path and line settings.
    cfg: crate::config::RtuConfig,
    /// The slave that serves every stream the device gives.
    slave: RtuSlave,
}

impl Reopenable for SlaveDevice {
    type Stream = crate::link::line::Line;
    fn label(&self) -> &'static str {
        "serial device"
    }
    fn path(&self) -> String {
        self.cfg.device.clone()
    }
    async fn open(&mut self) -> anyhow::Result<Self::Stream> {
        let r = crate::link::line::open(&self.cfg).await;
        let error = r.as_ref().err().map(|e| format!("{e:#}"));
        if let Ok(mut g) = self.slave.stats().device_error.lock() {
            *g = error;
        }
        r
    }
    async fn serve(
        &mut self,
        stream: Self::Stream,
        cancel: &CancellationToken,
    ) -> std::io::Result<()> {
        let r = self.slave.serve(stream, cancel).await;
        if let Ok(mut g) = self.slave.stats().device_error.lock() {
            *g = Some(match &r {
                Ok(()) => "the device closed (unplugged?)".to_string(),
                Err(e) => e.to_string(),
            });
        }
        r
    }
}

/// Open the serial device and serve the inverter on it, reopening it with backoff.
async fn serve_device(config: Config, slave: RtuSlave, cancel: CancellationToken) {
    let stats = Arc::clone(slave.stats());
    let mut device = SlaveDevice {
        cfg: config.rtu,
        slave,
    };
    let counters = reopen::Counters {
        opens: &stats.device_opens,
        failures: &stats.device_failures,
        heartbeat: &stats.heartbeat,
    };
    reopen::run(&mut device, counters, &cancel).await;
}
