//! The KSTAR side of a start: the RTU poller (`rtu_poll:`) and the TCP server for LAN
//! clients (`tcp_server:` without a meter), joined by one write queue whose per-device
//! policies MQTT commands share; and how long a write may wait for its outcome.
//!
//! May touch: the config, the [`Handles`] it is given and the gateway's task set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::BusPort;
use crate::app::handles::Handles;
use crate::config::Config;
use crate::control::writes::{WritePolicy, QUEUE_DEPTH};
use crate::servers::modbus_tcp::{LanDevice, TcpServer};
use crate::sources::rtu_poll::RtuPoller;

/// Start the RTU poller (`rtu_poll:`) and the TCP server for LAN clients (`tcp_server:`),
/// joined by the write queue. Returns where the TCP server listens.
pub(super) async fn start_kstar(
    config: &Config,
    handles: &Handles,
    bus: BusPort,
    tasks: &mut JoinSet<&'static str>,
    cancel: &CancellationToken,
    mqtt_writes: &mut Vec<Option<MqttWrites>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let (queue, jobs) = tokio::sync::mpsc::channel(QUEUE_DEPTH);
    // Each device's write policy: its profile and `writable:` list (the one-device form's
    // top-level ones are its device's).
    let mut policies = Vec::with_capacity(config.devices.len());
    for d in &config.devices {
        policies.push(match (&d.profile, d.writable.is_empty()) {
            (Some(p), false) => {
                let profile = crate::control::profile::load(&p.path)?;
                let policy = WritePolicy::new(profile, &d.writable)
                    .map_err(|(line, m)| anyhow::anyhow!("writable (line {line}): {m}"))?;
                Some(Arc::new(policy))
            }
            _ => None,
        });
    }
    let mut tcp_addr = None;
    // A KSEM config's `tcp_server:` is the meter's read-only server (`start_meter_tcp`).
    if let Some(tcp_cfg) = config
        .tcp_server
        .clone()
        .filter(|_| config.rtu_poll.is_some())
    {
        let devices = config
            .devices
            .iter()
            .zip(&policies)
            .map(|(d, p)| LanDevice {
                units: d.tcp_unit_id.clone(),
                writes: p.as_ref().map(|p| (Arc::clone(p), queue.clone())),
            })
            .collect();
        let server = TcpServer::bind(
            tcp_cfg,
            Arc::clone(&handles.image),
            Arc::clone(&handles.tcp),
            devices,
            write_deadline(config),
        )
        .await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "tcp server listening");
        tcp_addr = Some(addr);
        let c = cancel.clone();
        tasks.spawn(async move {
            server.run(c).await;
            "tcp server"
        });
    }
    // MQTT commands: each device's own policy, into the same queue as the TCP writes.
    *mqtt_writes = policies
        .iter()
        .map(|p| p.as_ref().map(|p| (Arc::clone(p), queue.clone())))
        .collect();
    drop(queue);
    if let Some(mut poller) = RtuPoller::new(
        config,
        Arc::clone(&handles.image),
        Arc::clone(&handles.rtu_poll),
        jobs,
    ) {
        let c = cancel.clone();
        match bus {
            BusPort::Device => {
                tasks.spawn(async move {
                    poller.run_device(c).await;
                    "RTU poller"
                });
            }
            BusPort::Stream(stream) => {
                tasks.spawn(async move {
                    if let Err(e) = poller.serve(stream, &c).await {
                        tracing::error!("RTU bus stream failed: {e}");
                    }
                    c.cancelled().await;
                    "RTU poller"
                });
            }
        }
    }
    Ok(tcp_addr)
}

/// What MQTT commands need from the KSTAR side: the write policy and the write queue.
pub(super) type MqttWrites = (Arc<WritePolicy>, crate::control::writes::WriteQueue);

/// How long a LAN client's write may wait for its outcome: `write_timeout` in the queue
/// (older writes are dropped unsent, with 0B), then the gap, the drain of a late reply and
/// the reply timeout of its own transaction, plus a margin for the outcome to travel back.
pub(super) fn write_deadline(config: &Config) -> Duration {
    let Some(p) = &config.rtu_poll else {
        return Duration::from_secs(5);
    };
    p.write_timeout + p.gap + p.late_reply_window + p.timeout + Duration::from_millis(500)
}
