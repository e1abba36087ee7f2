//! The gateway: wires sources → image → servers and supervises them.
//!
//! Owns the tasks and the shutdown: the push server, the poller, the RTU slave (re-opening
//! its serial device with backoff when it cannot be opened or disappears) and a monitor that
//! logs state changes (ready, region stale/fresh). Everything is stopped by one
//! [`CancellationToken`]. It reads the config and hands each role its part; the roles only
//! meet in the [`Image`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::image::Image;
use crate::poll::{PollStats, Poller};
use crate::push::{PushServer, PushStats};
use crate::rtu::slave::{RtuSlave, RtuStats};
use crate::util::Backoff;

/// A byte stream the RTU slave can serve (a serial port, a pseudo-terminal, a test pipe).
pub trait RtuStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> RtuStream for T {}

/// Where the RTU slave gets its stream.
pub enum RtuPort {
    /// Open `rtu.device` from the config; re-open with backoff if it fails or disappears.
    Device,
    /// Serve this stream until it ends (demo, tests).
    Stream(Box<dyn RtuStream>),
}

/// Shared handles on a running gateway.
#[derive(Clone)]
pub struct Handles {
    pub image: Arc<Image>,
    pub push: Arc<PushStats>,
    pub poll: Arc<PollStats>,
    pub rtu: Arc<RtuStats>,
}

/// A running gateway.
pub struct Gateway {
    pub handles: Handles,
    /// Where the push server listens (resolved, so port 0 shows the real port).
    pub push_addr: Option<SocketAddr>,
    tasks: JoinSet<&'static str>,
}

impl Gateway {
    /// Bind the push server and start every task. Errors here (a busy port) are fatal;
    /// everything after start-up is retried instead.
    pub async fn start(
        config: Config,
        port: RtuPort,
        cancel: CancellationToken,
    ) -> anyhow::Result<Gateway> {
        let image = Arc::new(Image::new(&config.regions));
        let handles = Handles {
            image: Arc::clone(&image),
            push: Arc::default(),
            poll: Arc::default(),
            rtu: Arc::default(),
        };
        let mut tasks = JoinSet::new();
        let mut push_addr = None;
        if let Some(push_cfg) = config.push.clone() {
            let server =
                PushServer::bind(push_cfg, Arc::clone(&image), Arc::clone(&handles.push)).await?;
            let addr = server.local_addr()?;
            tracing::info!(%addr, "push server listening");
            push_addr = Some(addr);
            let c = cancel.clone();
            tasks.spawn(async move {
                server.run(c).await;
                "push server"
            });
        }
        if let Some(poller) = Poller::new(&config, Arc::clone(&image), Arc::clone(&handles.poll)) {
            let c = cancel.clone();
            tasks.spawn(async move {
                poller.run(c).await;
                "poller"
            });
        }
        let slave = RtuSlave::new(&config.rtu, Arc::clone(&image), Arc::clone(&handles.rtu));
        match port {
            RtuPort::Stream(stream) => {
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    if let Err(e) = slave.serve(stream, &cancel).await {
                        tracing::error!("RTU stream failed: {e}");
                    }
                    "RTU slave"
                });
            }
            RtuPort::Device => {
                let c = cancel.clone();
                let config = config.clone();
                tasks.spawn(async move {
                    serve_device(config, slave, c).await;
                    "RTU slave"
                });
            }
        }
        let c = cancel.clone();
        let img = Arc::clone(&image);
        tasks.spawn(async move {
            monitor(img, c).await;
            "monitor"
        });
        Ok(Gateway {
            handles,
            push_addr,
            tasks,
        })
    }

    /// Resolves when a task ended although nobody cancelled it: a bug (a panic, or a loop
    /// that gave up). The caller should stop the gateway and exit non-zero, so that the
    /// service manager restarts it, rather than run on with a part missing.
    pub async fn failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Ok(name)) => format!("the {name} task ended unexpectedly"),
            Some(Err(e)) if e.is_panic() => format!("a task panicked: {e}"),
            Some(Err(e)) => format!("a task was aborted: {e}"),
            None => std::future::pending().await,
        }
    }

    /// Wait for every task to end (after the cancel token fired), at most `grace`.
    pub async fn join(mut self, grace: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("tasks did not stop within {grace:?}; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// Open the serial device and serve it; on failure or disappearance retry with backoff.
async fn serve_device(config: Config, slave: RtuSlave, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut failing = false;
    loop {
        let outcome = match crate::serial::open(&config.rtu) {
            Ok(stream) => {
                slave.stats().device_opens.fetch_add(1, Relaxed);
                tracing::info!(device = %config.rtu.device, "serial device open, serving the inverter");
                failing = false;
                backoff.reset();
                let opened = Instant::now();
                let r = slave.serve(stream, &cancel).await;
                if cancel.is_cancelled() {
                    return;
                }
                if opened.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                match r {
                    Ok(()) => "the device closed (end of stream)".to_string(),
                    Err(e) => format!("{e}"),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        slave.stats().device_failures.fetch_add(1, Relaxed);
        let wait = backoff.next_delay();
        if failing {
            tracing::debug!(?wait, "serial device still unavailable: {outcome}");
        } else {
            tracing::error!(device = %config.rtu.device, "serial device unavailable: {outcome}; retrying with backoff up to 10s");
            failing = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Log state changes: ready (image warm) and each region going stale or fresh again.
async fn monitor(image: Arc<Image>, cancel: CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => return,
        () = image.wait_warm() => {}
    }
    let now = Instant::now();
    let snap = image.load_full();
    // The moment the last region was filled.
    let filled = snap
        .regions
        .iter()
        .filter_map(|r| r.written)
        .max()
        .unwrap_or(now);
    let since = filled.saturating_duration_since(image.created());
    tracing::info!(after = ?since, "ready: every region filled, serving the inverter");

    let mut stale: Vec<bool> = vec![false; image.specs().len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = image.load_full();
        let now = Instant::now();
        for (i, spec) in image.specs().iter().enumerate() {
            let is_stale = image.is_stale(&snap, i, now);
            if is_stale != stale[i] {
                stale[i] = is_stale;
                if is_stale {
                    tracing::warn!(region = %spec.name, max_age = ?spec.max_age, on_stale = spec.on_stale.as_str(), "region stale");
                } else {
                    tracing::info!(region = %spec.name, "region fresh again");
                }
            }
        }
    }
}
