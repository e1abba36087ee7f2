//! Publishing: one tick's discovery, availability and state for every HA device, by the
//! rules in the [module doc](super), and the non-blocking hand-off of each message to the
//! client (counted in [`super::MqttStats`]).
//!
//! May touch: the rumqttc client it is given (`try_publish` only, never waiting) and the
//! [`crate::image::Image`] through snapshots.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use super::discovery::{self, HaDevice};
use super::session::{Session, UnitSession};
use super::{MqttServer, Unit};

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
    "arm_version_input",
];

/// How long discovery waits for device details other than a serial number.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

impl MqttServer {
    /// One tick: for every device, discovery when due, then availability and state; on a
    /// new connection then `<topic>/status` `online`, once every region's availability
    /// went out (a region whose `offline` or fresh state did not fit the client's queue
    /// holds it back to the next tick).
    pub(super) fn publish(&self, client: &AsyncClient, s: &mut Session) {
        let snap = self.image.load_full();
        let now = Instant::now();
        for (u, us) in self.units.iter().zip(&mut s.units) {
            self.publish_unit(client, u, us, &snap, now, s.started);
        }
        let decided = |us: &UnitSession| us.online.iter().all(Option::is_some);
        if !s.announced && s.units.iter().all(decided) {
            let t = self.topics.gateway();
            s.announced = self.send(client, t, "online", true, QoS::AtMostOnce);
        }
    }

    /// One device's tick: discovery when due, then per region availability and state.
    pub(super) fn publish_unit(
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
                    HaDevice::new(&u.profile_name, &u.short_name, &u.topics.node, &values)
                } else {
                    HaDevice::named(&u.name, &u.profile_name, &u.topics.node, &values)
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
    pub(super) fn discover(&self, client: &AsyncClient, u: &Unit, device: &HaDevice) -> bool {
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
    pub(super) fn send(
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

    pub(super) fn send_json(&self, client: &AsyncClient, topic: String, body: &Json) {
        if !self.send(client, topic, body.to_string(), false, QoS::AtMostOnce) {
            tracing::warn!(
                "mqtt: a command result could not be published (not connected or queue full)"
            );
        }
    }
}
