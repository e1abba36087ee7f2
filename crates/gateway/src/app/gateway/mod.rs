//! The gateway: wires sources → image → servers and supervises them.
//!
//! Owns the tasks and the shutdown: the push server, the poller, the RTU slave (on its own
//! thread and runtime; re-opening its serial device with backoff when it cannot be opened
//! or disappears), the LAN servers and a monitor that logs state changes (ready, region
//! stale/fresh). Everything is stopped by one
//! [`CancellationToken`]. It reads the config and hands each role its part; the roles only
//! meet in the [`Image`].
//!
//! The files: `kstar` (the RTU poller, the LAN TCP server and their write queue),
//! `rtu_thread` (the RTU slave's own thread and its serial device). This file: the start
//! (push server, KSEM poller, meter TCP server, MQTT, status page, journal dump) and the
//! running gateway's task set.

mod kstar;
mod rtu_thread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::handles::Handles;
use crate::config::Config;
use crate::image::Image;
use crate::ops::journal::Journal;
use crate::servers::rtu_slave::RtuSlave;
use crate::sources::ksem_poll::Poller;
use crate::sources::push::PushServer;
use kstar::{start_kstar, write_deadline, MqttWrites};
use rtu_thread::spawn_rtu_thread;

/// A byte stream the RTU slave can serve (a serial port, a pseudo-terminal, a test pipe).
pub trait RtuStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> RtuStream for T {}

/// Where the RTU slave gets its stream.
pub enum RtuPort {
    /// Open `rtu.device` from the config; re-open with backoff if it fails or disappears.
    Device,
    /// Serve this stream until it ends (demo, tests).
    Stream(Box<dyn RtuStream>),
    /// No RTU slave (the config has no `rtu:` section).
    Off,
}

/// Where the RTU poller (`rtu_poll:`) gets its bus.
pub enum BusPort {
    /// Open `rtu_poll.device`; re-open with backoff if it fails or disappears.
    Device,
    /// Poll the device on this stream until it ends (demo, tests).
    Stream(Box<dyn RtuStream>),
}

/// Optional parts of a start.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Decode the status page's key values with this profile instead of `config.profile`
    /// (the demo's built-in KSEM profile).
    pub profile: Option<crate::control::profile::Profile>,
}

/// A running gateway.
pub struct Gateway {
    /// What the supervisor, reload and the status page observe.
    pub handles: Handles,
    /// Where the push server listens (resolved, so port 0 shows the real port).
    pub push_addr: Option<SocketAddr>,
    /// Where the TCP server for LAN clients listens (resolved).
    pub tcp_addr: Option<SocketAddr>,
    /// Where the status endpoint listens, when configured.
    pub status_addr: Option<SocketAddr>,
    /// Every task of the gateway, named, so a task that ends unexpectedly is reported.
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
        Self::start_full(
            config,
            port,
            BusPort::Device,
            cancel,
            StartOptions::default(),
        )
        .await
    }

    /// [`Gateway::start`] with the RTU poller's bus given too.
    pub async fn start_with_bus(
        config: Config,
        port: RtuPort,
        bus: BusPort,
        cancel: CancellationToken,
    ) -> anyhow::Result<Gateway> {
        Self::start_full(config, port, bus, cancel, StartOptions::default()).await
    }

    /// [`Gateway::start`] with [`StartOptions`].
    pub async fn start_with(
        config: Config,
        port: RtuPort,
        cancel: CancellationToken,
        options: StartOptions,
    ) -> anyhow::Result<Gateway> {
        Self::start_full(config, port, BusPort::Device, cancel, options).await
    }

    async fn start_full(
        config: Config,
        port: RtuPort,
        bus: BusPort,
        cancel: CancellationToken,
        options: StartOptions,
    ) -> anyhow::Result<Gateway> {
        let image = Arc::new(Image::new(&config.regions));
        let handles = Handles {
            image: Arc::clone(&image),
            push: Arc::default(),
            poll: Arc::default(),
            rtu: Arc::default(),
            rtu_poll: Arc::default(),
            tcp: Arc::default(),
            mqtt: Arc::default(),
            live: Arc::new(crate::app::handles::Live::new(config.clone())),
            journal: Arc::default(),
        };
        let mut tasks = JoinSet::new();
        let push_addr = start_push(&config, &handles, &mut tasks, &cancel).await?;
        start_poller(&config, &handles, &mut tasks, &cancel);
        let mut writes = Vec::new();
        let tcp_addr = match start_meter_tcp(&config, &handles, &mut tasks, &cancel).await? {
            Some(addr) => Some(addr),
            None => start_kstar(&config, &handles, bus, &mut tasks, &cancel, &mut writes).await?,
        };
        start_mqtt(
            &config,
            options.profile.as_ref(),
            &handles,
            writes,
            &mut tasks,
            &cancel,
        );
        let slave = RtuSlave::new(&config.rtu, Arc::clone(&image), Arc::clone(&handles.rtu))
            .with_journal(Arc::clone(&handles.journal));
        let port = if config.rtu_slave { port } else { RtuPort::Off };
        spawn_rtu_thread(port, slave, &config, &cancel, &mut tasks)?;
        let c = cancel.clone();
        tasks.spawn(async move {
            crate::ops::logging::flush_task(c).await;
            "log limiter"
        });
        let c = cancel.clone();
        let img = Arc::clone(&image);
        tasks.spawn(async move {
            crate::app::monitor::monitor(img, c).await;
            "monitor"
        });
        let status_addr = start_status(&config, options, &handles, &cancel, &mut tasks).await?;
        let (c, journal) = (cancel.clone(), Arc::clone(&handles.journal));
        tasks.spawn(async move {
            dump_journal_on_sigusr1(journal, c).await;
            "journal dump"
        });
        Ok(Gateway {
            handles,
            push_addr,
            tcp_addr,
            status_addr,
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

/// Bind the push server if the config has a `push:` section and start it. Returns where
/// it listens.
async fn start_push(
    config: &Config,
    handles: &Handles,
    tasks: &mut JoinSet<&'static str>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(push_cfg) = config.push.clone() else {
        return Ok(None);
    };
    let image = Arc::clone(&handles.image);
    let server = PushServer::bind(push_cfg, image, Arc::clone(&handles.push))
        .await?
        .with_journal(Arc::clone(&handles.journal));
    handles.live.attach_push(server.settings());
    let addr = server.local_addr()?;
    tracing::info!(%addr, "push server listening");
    let c = cancel.clone();
    tasks.spawn(async move {
        server.run(c).await;
        "push server"
    });
    Ok(Some(addr))
}

/// Start the KSEM poller if the config has a `poll:` section; it follows reloads.
fn start_poller(
    config: &Config,
    handles: &Handles,
    tasks: &mut JoinSet<&'static str>,
    cancel: &CancellationToken,
) {
    let image = Arc::clone(&handles.image);
    let Some(poller) = Poller::new(config, image, Arc::clone(&handles.poll)) else {
        return;
    };
    let poller = poller
        .with_journal(Arc::clone(&handles.journal))
        .follow(handles.live.subscribe());
    let c = cancel.clone();
    tasks.spawn(async move {
        poller.run(c).await;
        "poller"
    });
}

/// Start the meter's read-only TCP server for the house if this is a KSEM config with a
/// `tcp_server:` section (no `rtu_poll:`). Returns where it listens.
async fn start_meter_tcp(
    config: &Config,
    handles: &Handles,
    tasks: &mut JoinSet<&'static str>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    use crate::config::TcpServerConfig;
    use crate::servers::meter_tcp::MeterTcpServer;
    let Some(tcp_cfg) = config
        .tcp_server
        .clone()
        .filter(|_| TcpServerConfig::is_meter(config))
    else {
        return Ok(None);
    };
    let units = tcp_cfg.unit_id.to_string();
    let server = MeterTcpServer::bind(
        tcp_cfg,
        Arc::clone(&handles.image),
        Arc::clone(&handles.tcp),
    )
    .await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, units, "meter tcp server listening (read-only)");
    let c = cancel.clone();
    tasks.spawn(async move {
        server.run(c).await;
        "meter tcp server"
    });
    Ok(Some(addr))
}

/// Start the MQTT publisher if the config has `mqtt:`. It never fails the start: a profile
/// that does not load is logged and MQTT stays off (the Modbus side runs on). `writes`: per
/// device of the bus (as `config.devices`), its write policy and queue, if it takes writes.
fn start_mqtt(
    config: &Config,
    profile: Option<&crate::control::profile::Profile>,
    handles: &Handles,
    mut writes: Vec<Option<MqttWrites>>,
    tasks: &mut JoinSet<&'static str>,
    cancel: &CancellationToken,
) {
    use crate::servers::mqtt::{commands::Commands, DeviceSource, MqttServer};
    let Some(mqtt) = &config.mqtt else { return };
    let load = |r: Option<&crate::config::ProfileRef>| match r {
        Some(r) => crate::control::profile::load(&r.path).map_err(|e| e.to_string()),
        None => Err("no register profile".to_string()),
    };
    let deadline = write_deadline(config);
    let mut commands = |index: usize| {
        writes
            .get_mut(index)
            .and_then(Option::take)
            .map(|(policy, queue)| Commands {
                policy,
                queue,
                deadline,
                device: index,
            })
    };
    // `devices:`: one HA device per device of the bus, each from its own profile.
    let profiles: Vec<(String, usize, crate::control::profile::Profile)> = if config.named_devices()
    {
        let mut out = Vec::new();
        for (i, d) in config.devices.iter().enumerate() {
            match load(d.profile.as_ref()) {
                Ok(p) => out.push((d.name.clone(), i, p)),
                Err(e) => {
                    tracing::error!(device = %d.name, "mqtt: {e}; MQTT stays off");
                    return;
                }
            }
        }
        out
    } else {
        match profile
            .cloned()
            .map_or_else(|| load(config.profile.as_ref()), Ok)
        {
            Ok(p) => vec![(String::new(), 0, p)],
            Err(e) => {
                tracing::error!("mqtt: {e}; MQTT stays off");
                return;
            }
        }
    };
    let sources = profiles
        .iter()
        .map(|(name, index, profile)| DeviceSource {
            name: name.clone(),
            index: *index,
            profile,
            commands: commands(*index),
        })
        .collect();
    let server = MqttServer::with_devices(
        mqtt.clone(),
        Arc::clone(&handles.image),
        sources,
        Arc::clone(&handles.mqtt),
    );
    let c = cancel.clone();
    tasks.spawn(async move {
        server.run(c).await;
        "mqtt"
    });
}

/// Bind and start the status endpoint if the config has one. A busy port is fatal (as for
/// the push server); a profile that does not load only costs the decoded values.
async fn start_status(
    config: &Config,
    options: StartOptions,
    handles: &Handles,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<&'static str>,
) -> anyhow::Result<Option<SocketAddr>> {
    use crate::app::status::{StatusContext, StatusServer};
    let Some(status) = &config.status else {
        return Ok(None);
    };
    let profile = match (options.profile, &config.profile) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(r)) => crate::control::profile::load(&r.path)
            .map(Some)
            .map_err(|e| {
                tracing::warn!("status page: {e}; key values will not be decoded");
                e.to_string()
            }),
        (None, None) => Ok(None),
    };
    let ctx = Arc::new(StatusContext::new(
        handles.clone(),
        config.regions.clone(),
        profile,
    ));
    let server = StatusServer::bind(status.listen, ctx).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "status page on http://{addr}/");
    let c = cancel.clone();
    tasks.spawn(async move {
        server.run(c).await;
        "status server"
    });
    Ok(Some(addr))
}

/// On SIGUSR1, write the frame journal to the log (oldest first).
async fn dump_journal_on_sigusr1(journal: Arc<Journal>, cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sig = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGUSR1 (journal dump): {e}");
            cancel.cancelled().await;
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            s = sig.recv() => {
                if s.is_none() {
                    cancel.cancelled().await;
                    return;
                }
            }
        }
        let entries = journal.entries();
        tracing::info!(
            entries = entries.len(),
            recorded = journal.recorded(),
            dropped = journal.dropped(),
            "frame journal (SIGUSR1), oldest first"
        );
        for e in &entries {
            tracing::info!(target: "airbridge::ops::journal", "{e}");
        }
        tracing::info!("frame journal end");
    }
}
