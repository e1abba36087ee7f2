//! MQTT for Home Assistant: publish what the gateway sees, with discovery and honest
//! availability.
//!
//! Owns the connection to the broker (rumqttc over TCP or rustls), its reconnect loop
//! (backoff 1-30 s, one error line per change of state) and the publishing rules:
//!
//! - `<topic>/status`: `online` (retained) while connected, sent on every connect only
//!   after every region's availability; the broker's last will, and a clean stop (after
//!   every region's `offline`), set `offline`.
//! - `<topic>/<region>/availability`: `online` while the region is fresh by its own
//!   `max_age`, `offline` once it is stale or before it was filled (retained). A fresh state
//!   is published *before* `online`, and on every connect each region is set (`offline`, or
//!   a fresh state and `online`) before `status online`, so an `online` left on the broker by
//!   a kill never meets `status online` over an old value: Home Assistant never shows an
//!   old value as live.
//! - `<topic>/<region>/state`: the region's named values as JSON ([`state`]), at most once
//!   per `interval` and only when they changed (so counters and identity go out when they
//!   change), never while the region is stale, never before it was filled. Not retained:
//!   a broker that keeps retained messages across its own restart would hand a restarting
//!   Home Assistant the value of before, under the `online` flags of before.
//! - Discovery configs ([`discovery`]), republished when Home Assistant announces `online`.
//! - Commands ([`commands`]), only with `mqtt.commands: true`.
//!
//! With `devices:` each device on the bus is its own Home Assistant device: its topics one
//! level down (`<topic>/<device>/<region>/state`, `…/availability`, `<topic>/<device>/set/…`),
//! its own discovery node, `device` block and entities, from its own profile; commands go
//! to its own write policy. `<topic>/status` stays the gateway's.
//!
//! It reads the [`Image`] through snapshots only and never waits on anything the RTU side
//! waits on: a broker that is down, slow or refusing costs the inverter nothing. Nothing
//! queues up while disconnected: each connection gets a fresh client, and a state that does
//! not fit the client's small queue is dropped (the newest state wins on the next tick).
//!
//! The files: `session` (one connection's event loop), `publish` (the publishing rules),
//! `broker` (connection options, TLS, error lines), [`state`], [`discovery`], [`commands`].
//! This file: the publisher's types, its construction and the reconnect loop.

mod broker;
pub mod commands;
pub mod discovery;
mod publish;
mod session;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::control::profile::Profile;
use crate::image::Image;
use crate::link::reopen::Backoff;
use commands::Commands;
use discovery::Topics;
use session::Ended;
use state::RegionPlan;

/// Counters of the MQTT publisher (`/metrics`).
#[derive(Debug, Default)]
pub struct MqttStats {
    /// 1 while connected to the broker, else 0.
    pub connected: AtomicU64,
    /// Successful connections (ConnAck accepted).
    pub connects: AtomicU64,
    /// Failed connection attempts and dropped connections.
    pub failures: AtomicU64,
    /// Messages handed to the client (state, availability, discovery, results).
    pub published: AtomicU64,
    /// State messages dropped because the client's queue was full (slow broker).
    pub dropped: AtomicU64,
    /// Commands received (any outcome).
    pub commands: AtomicU64,
}

/// What the publisher needs to know about one device on the bus (or the one device).
pub struct DeviceSource<'a> {
    /// `devices[].name`; empty for the one-device form (whose topics stay as they were).
    pub name: String,
    /// Its index in `Config::devices` (its regions carry it; 0 for the one device).
    pub index: usize,
    /// Its profile: the names, units and scales of its values.
    pub profile: &'a Profile,
    /// Its write policy and queue, with `mqtt.commands: true` and a `writable:` list.
    pub commands: Option<Commands>,
}

/// One Home Assistant device the publisher serves.
struct Unit {
    /// `devices[].name`, empty for the one-device form.
    name: String,
    /// Its topic layout.
    topics: Topics,
    /// The profile's name (device name and fallback model).
    profile_name: String,
    /// The profile's `short_name` (entity ids of the one-device form).
    short_name: String,
    /// Its regions with named values.
    plan: Vec<RegionPlan>,
    /// Writable registers that get a command entity (empty without commands).
    writable: Vec<crate::control::profile::Register>,
    /// `Some` with `mqtt.commands: true` and a write queue.
    commands: Option<Commands>,
}

/// The MQTT publisher of one gateway.
pub struct MqttServer {
    /// The `mqtt:` section.
    cfg: MqttConfig,
    /// The gateway's own topics (status, Home Assistant's birth).
    topics: Topics,
    /// What the servers read; snapshots only.
    image: Arc<Image>,
    /// The HA devices: one, or one per device of `devices:`.
    units: Vec<Unit>,
    /// Connection and publish counters, for `/metrics`.
    stats: Arc<MqttStats>,
}

impl MqttServer {
    /// A publisher with one HA device per entry of `devices` (`devices:`).
    pub fn with_devices(
        cfg: MqttConfig,
        image: Arc<Image>,
        devices: Vec<DeviceSource<'_>>,
        stats: Arc<MqttStats>,
    ) -> Self {
        let units = devices
            .into_iter()
            .map(|d| {
                let plan = state::plan_device(image.specs(), d.profile, d.index, &d.name);
                let commands = d.commands.filter(|_| cfg.commands);
                let writable = commands
                    .as_ref()
                    .map(|c| {
                        c.policy
                            .allowed()
                            .iter()
                            .filter_map(|n| c.policy.profile().get(n).cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                Unit {
                    topics: Topics::device(&cfg, &d.name),
                    name: d.name,
                    profile_name: d.profile.name.clone(),
                    short_name: d.profile.short_name.clone(),
                    plan,
                    writable,
                    commands,
                }
            })
            .collect();
        MqttServer {
            topics: Topics::new(&cfg),
            cfg,
            image,
            units,
            stats,
        }
    }

    /// Connect, publish, reconnect with backoff; until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let server = Arc::new(self);
        let mut backoff = Backoff::upstream();
        // The last problem logged as an error: the next identical one is only a debug line.
        let mut problem: Option<String> = None;
        let broker = format!("{}:{}", server.cfg.host, server.cfg.port);
        loop {
            let ended = match server.options() {
                Ok(opts) => {
                    let (client, events) = AsyncClient::new(opts, server.queue_capacity());
                    server
                        .session(client, events, &cancel, &mut problem, &mut backoff)
                        .await
                }
                Err(e) => Ended::Failed(e),
            };
            server.stats.connected.store(0, Relaxed);
            let why = match ended {
                Ended::Cancelled => return,
                Ended::Failed(why) => why,
            };
            server.stats.failures.fetch_add(1, Relaxed);
            let wait = backoff.next_delay();
            if problem.as_deref() == Some(why.as_str()) {
                tracing::debug!(%broker, ?wait, "mqtt: still failing: {why}");
            } else {
                tracing::error!(%broker, "mqtt: {why}; retrying with backoff up to 30s (the Modbus side is not affected)");
                problem = Some(why);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Room for one full set of messages (discovery, availability, states) and some results.
    fn queue_capacity(&self) -> usize {
        let per_unit = |u: &Unit| {
            let fields: usize = u.plan.iter().map(|r| r.fields.len()).sum();
            fields + u.writable.len() + 2 * u.plan.len()
        };
        self.units.iter().map(per_unit).sum::<usize>() + 64
    }
}
