//! MQTT for Home Assistant: publish what the gateway sees, with discovery and honest
//! availability.
//!
//! Owns the connection to the broker (rumqttc over TCP or rustls), its reconnect loop
//! (backoff 1-30 s, one error line per change of state) and the publishing rules:
//!
//! - `<topic>/status`: `online` (retained) while connected; the broker's last will, and a
//!   clean stop, set `offline`.
//! - `<topic>/<region>/availability`: `online` while the region is fresh by its own
//!   `max_age`, `offline` once it is stale or before it was filled (retained). A fresh state
//!   is published *before* `online`, so Home Assistant never shows an old value as live.
//! - `<topic>/<region>/state`: the region's named values as JSON ([`state`]), at most once
//!   per `interval` and only when they changed (so counters and identity go out when they
//!   change), never while the region is stale, never before it was filled.
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

pub mod commands;
pub mod discovery;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Map, Value as Json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::control::profile::Profile;
use crate::image::Image;
use crate::link::reopen::Backoff;
use commands::Commands;
use discovery::{Device, Topics};
use state::RegionPlan;

/// Keys whose values name the device; discovery waits until the regions holding them were
/// filled once (the serial number without limit: it is the device's identity).
const DEVICE_KEYS: &[&str] = &[
    "serial_number",
    "serial",
    "vendor_name",
    "product_name",
    "firmware_version",
    "inverter_model",
    "machine_model",
    "inverter_model_name",
    "arm_version",
];

/// How long discovery waits for device details other than a serial number.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

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
    /// A publisher for `image` decoded through `profile` (the one-device form).
    pub fn new(
        cfg: MqttConfig,
        image: Arc<Image>,
        profile: &Profile,
        commands: Option<Commands>,
        stats: Arc<MqttStats>,
    ) -> Self {
        let one = DeviceSource {
            name: String::new(),
            index: 0,
            profile,
            commands,
        };
        Self::with_devices(cfg, image, vec![one], stats)
    }

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

    pub fn stats(&self) -> Arc<MqttStats> {
        Arc::clone(&self.stats)
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

    /// Connection options for one attempt (reads the password and CA files now).
    fn options(&self) -> Result<MqttOptions, String> {
        let c = &self.cfg;
        let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_last_will(LastWill::new(
            self.topics.gateway(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &c.username {
            let password = match &c.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read mqtt.password_file {}: {e}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if c.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(c)?,
            )));
        }
        Ok(o)
    }

    /// One connection: from the first connect attempt until it fails or `cancel`.
    async fn session(
        self: &Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        cancel: &CancellationToken,
        problem: &mut Option<String>,
        backoff: &mut Backoff,
    ) -> Ended {
        let mut s = self.new_session();
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let broker = format!("{}:{}", self.cfg.host, self.cfg.port);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    if s.connected {
                        self.goodbye(&client, &mut events).await;
                    }
                    return Ended::Cancelled;
                }
                _ = tick.tick(), if s.connected => self.publish(&client, &mut s),
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                        s = self.new_session();
                        s.connected = true;
                        self.stats.connected.store(1, Relaxed);
                        self.stats.connects.fetch_add(1, Relaxed);
                        backoff.reset();
                        if problem.take().is_some() {
                            tracing::info!(%broker, "mqtt: connected again");
                        } else {
                            tracing::info!(%broker, topic = %self.cfg.topic, "mqtt: connected");
                        }
                        self.on_connect(&client, &mut s);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return Ended::Failed(refused(ack.code));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => self.incoming(&client, &mut s, p),
                    Ok(_) => {}
                    Err(e) => return Ended::Failed(describe(&e)),
                }
            }
        }
    }

    /// After a ConnAck: `online`, subscriptions, and everything published afresh.
    fn on_connect(self: &Arc<Self>, client: &AsyncClient, s: &mut Session) {
        self.send(
            client,
            self.topics.gateway(),
            "online",
            true,
            QoS::AtMostOnce,
        );
        if let Some(t) = self.topics.ha_status() {
            let _ = client.try_subscribe(t, QoS::AtLeastOnce);
        }
        for u in self.units.iter().filter(|u| u.commands.is_some()) {
            let _ = client.try_subscribe(u.topics.commands(), QoS::AtLeastOnce);
        }
        self.publish(client, s);
    }

    fn new_session(&self) -> Session {
        Session {
            connected: false,
            started: Instant::now(),
            units: self
                .units
                .iter()
                .map(|u| UnitSession::new(u.plan.len()))
                .collect(),
        }
    }

    /// A message from the broker: Home Assistant's birth, or a command.
    fn incoming(self: &Arc<Self>, client: &AsyncClient, s: &mut Session, p: rumqttc::Publish) {
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if Some(&p.topic) == self.topics.ha_status().as_ref() {
            if payload.trim() == "online" {
                tracing::info!("mqtt: Home Assistant is online; republishing discovery and state");
                for us in &mut s.units {
                    us.discovery_sent = false;
                    us.last.iter_mut().for_each(|l| *l = None);
                    us.last_sent.iter_mut().for_each(|l| *l = None);
                }
                self.publish(client, s);
            }
            return;
        }
        let Some((k, commands, name)) = self.units.iter().enumerate().find_map(|(k, u)| {
            let commands = u.commands.as_ref()?;
            Some((k, commands, u.topics.command_name(&p.topic)?))
        }) else {
            return;
        };
        let topics = &self.units[k].topics;
        self.stats.commands.fetch_add(1, Relaxed);
        let name = name.to_string();
        if p.retain {
            // A retained command would be written again at every reconnect.
            tracing::warn!(source = "mqtt", register = %name, "write refused: retained command");
            let out = commands::Outcome::Refused(
                "retained commands are ignored (they would be written at every reconnect)".into(),
            );
            self.send_json(client, topics.result(&name), &out.json(&name, &payload));
            return;
        }
        let (me, client, commands) = (Arc::clone(self), client.clone(), commands.clone());
        tokio::spawn(async move {
            let out = commands.execute(&me.image, &name, &payload).await;
            let topic = me.units[k].topics.result(&name);
            me.send_json(&client, topic, &out.json(&name, &payload));
        });
    }

    /// One tick: for every device, discovery when due, then availability and state.
    fn publish(&self, client: &AsyncClient, s: &mut Session) {
        let snap = self.image.load_full();
        let now = Instant::now();
        for (u, us) in self.units.iter().zip(&mut s.units) {
            self.publish_unit(client, u, us, &snap, now, s.started);
        }
    }

    /// One device's tick: discovery when due, then per region availability and state.
    fn publish_unit(
        &self,
        client: &AsyncClient,
        u: &Unit,
        s: &mut UnitSession,
        snap: &crate::image::Snapshot,
        now: Instant,
        started: Instant,
    ) {
        let filled = |i: usize| snap.regions.get(i).is_some_and(|r| r.written.is_some());
        if !s.discovery_sent && u.topics.discovery.is_some() {
            let info: Vec<(usize, bool)> = u
                .plan
                .iter()
                .filter_map(|r| {
                    let serial = r.field("serial_number").or(r.field("serial")).is_some();
                    let info = DEVICE_KEYS.iter().any(|k| r.field(k).is_some());
                    info.then_some((r.index, serial))
                })
                .collect();
            let serial_ready = info.iter().all(|&(i, serial)| !serial || filled(i));
            let all_ready = info.iter().all(|&(i, _)| filled(i));
            if serial_ready && (all_ready || started.elapsed() >= DEVICE_WAIT) {
                let mut values = Map::new();
                for r in u.plan.iter().filter(|r| filled(r.index)) {
                    values.extend(r.payload(&snap.regions[r.index].words));
                }
                let device = if u.name.is_empty() {
                    Device::new(&u.profile_name, &u.topics.node, &values)
                } else {
                    Device::named(&u.name, &u.profile_name, &u.topics.node, &values)
                };
                s.discovery_sent = self.discover(client, u, &device);
                // Home Assistant subscribes to the state topics only after it has read the
                // configs: send every state again on the next tick.
                s.resend = s.discovery_sent;
            }
        }
        for (k, r) in u.plan.iter().enumerate() {
            let live = filled(r.index) && !self.image.is_stale(snap, r.index, now);
            if !live {
                if s.online[k] != Some(false) {
                    let t = u.topics.availability(&r.name);
                    if self.send(client, t, "offline", true, QoS::AtMostOnce) {
                        s.online[k] = Some(false);
                    }
                }
                continue;
            }
            let payload = r.payload(&snap.regions[r.index].words);
            let due = s.last_sent[k].is_none_or(|t| now.duration_since(t) >= self.cfg.interval);
            let going_online = s.online[k] != Some(true);
            if due && (going_online || s.last[k].as_ref() != Some(&payload)) {
                let body = Json::Object(payload.clone()).to_string();
                if self.send(
                    client,
                    u.topics.state(&r.name),
                    body,
                    false,
                    QoS::AtMostOnce,
                ) {
                    s.last[k] = Some(payload);
                    s.last_sent[k] = Some(now);
                } else {
                    self.stats.dropped.fetch_add(1, Relaxed);
                    continue;
                }
            } else if going_online {
                // `online` only right after a fresh state went out: wait until one may.
                continue;
            }
            if going_online {
                let t = u.topics.availability(&r.name);
                if self.send(client, t, "online", true, QoS::AtMostOnce) {
                    s.online[k] = Some(true);
                }
            }
        }
        if std::mem::take(&mut s.resend) {
            s.last.iter_mut().for_each(|l| *l = None);
        }
    }

    /// Every discovery config of one device; false if the client's queue was full (retried
    /// next tick).
    fn discover(&self, client: &AsyncClient, u: &Unit, device: &Device) -> bool {
        let mut all = true;
        let mut n = 0usize;
        for r in &u.plan {
            for f in &r.fields {
                if let Some((topic, cfg)) = discovery::sensor(&u.topics, device, r, f) {
                    all &= self.send(client, topic, cfg.to_string(), true, QoS::AtMostOnce);
                    n += 1;
                }
            }
        }
        for reg in &u.writable {
            let state = u
                .plan
                .iter()
                .find_map(|r| r.field(&reg.name).map(|f| (r, f)));
            if let Some((topic, cfg)) = discovery::command(&u.topics, device, reg, state) {
                all &= self.send(client, topic, cfg.to_string(), true, QoS::AtMostOnce);
                n += 1;
            }
        }
        tracing::info!(entities = n, device = %device.id, "mqtt: discovery published");
        all
    }

    /// Hand one message to the client without waiting; false if its queue is full. Every
    /// publish is QoS 0: over one TCP connection nothing is lost short of losing the
    /// connection, after which everything is published afresh; and no acknowledgements to
    /// wait for means no in-flight window that a slow broker could fill.
    fn send(
        &self,
        client: &AsyncClient,
        topic: String,
        payload: impl Into<Vec<u8>>,
        retain: bool,
        qos: QoS,
    ) -> bool {
        let ok = client.try_publish(topic, qos, retain, payload).is_ok();
        if ok {
            self.stats.published.fetch_add(1, Relaxed);
        }
        ok
    }

    fn send_json(&self, client: &AsyncClient, topic: String, body: &Json) {
        if !self.send(client, topic, body.to_string(), false, QoS::AtMostOnce) {
            tracing::warn!(
                "mqtt: a command result could not be published (not connected or queue full)"
            );
        }
    }

    /// A clean stop: `offline` (retained), then disconnect, within about a second.
    async fn goodbye(&self, client: &AsyncClient, events: &mut EventLoop) {
        let _ = client.try_publish(self.topics.gateway(), QoS::AtMostOnce, true, "offline");
        let _ = client.try_disconnect();
        let flush = async {
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
}

/// What a connection's session ended with.
enum Ended {
    /// The gateway is stopping: do not reconnect.
    Cancelled,
    /// The connection failed or dropped (why, for the log): reconnect after a backoff.
    Failed(String),
}

/// What one connection has published (reset at every connect).
struct Session {
    /// A ConnAck was received.
    connected: bool,
    /// When the connection attempt began (bounds the wait for device details).
    started: Instant,
    /// Per HA device (as [`MqttServer::units`]): what went out for it.
    units: Vec<UnitSession>,
}

/// What one connection has published for one HA device.
struct UnitSession {
    /// The discovery configs went out on this connection.
    discovery_sent: bool,
    /// Forget the states sent, so that the next due tick sends them all again.
    resend: bool,
    /// Per plan region: the availability last published.
    online: Vec<Option<bool>>,
    /// Per plan region: the state last published.
    last: Vec<Option<Map<String, Json>>>,
    /// Per plan region: when it was published.
    last_sent: Vec<Option<Instant>>,
}

impl UnitSession {
    fn new(regions: usize) -> Self {
        UnitSession {
            discovery_sent: false,
            resend: false,
            online: vec![None; regions],
            last: vec![None; regions],
            last_sent: vec![None; regions],
        }
    }
}

/// A clear line for a refused login.
fn refused(code: ConnectReturnCode) -> String {
    match code {
        ConnectReturnCode::BadUserNamePassword => {
            "the broker refused the login: bad user name or password (mqtt.username, mqtt.password_file)".into()
        }
        ConnectReturnCode::NotAuthorized => {
            "the broker refused the login: not authorized (mqtt.username, mqtt.password_file)".into()
        }
        ConnectReturnCode::BadClientId => "the broker refused the client id (mqtt.client_id)".into(),
        other => format!("the broker refused the connection: {other:?}"),
    }
}

/// A clear line for a connection error.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => refused(*code),
        ConnectionError::Io(io) => format!("broker unreachable: {io}"),
        ConnectionError::Tls(t) => format!("TLS failed: {t}"),
        ConnectionError::NetworkTimeout => "broker unreachable: connect timed out".into(),
        other => format!("connection lost: {other}"),
    }
}

/// The rustls client config: the configured CA, or the system's roots; ring as provider.
fn tls_config(c: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read mqtt.ca_file {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("mqtt.ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("mqtt.ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "mqtt.ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set mqtt.ca_file".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
