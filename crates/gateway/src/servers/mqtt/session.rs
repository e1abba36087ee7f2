//! One connection to the broker: the event loop from the first connect attempt until it
//! fails or the gateway stops ([`MqttServer::session`]), what happens on a ConnAck, on a
//! message from the broker (Home Assistant's birth, a command) and on a clean stop, and
//! the per-connection record of what went out ([`Session`]).
//!
//! May touch: the rumqttc client and event loop it is given; commands go to their write
//! queue through [`super::commands`]. Publishing itself is [`super::publish`]'s.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Packet, QoS};
use serde_json::{Map, Value as Json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::broker::{describe, refused};
use super::{commands, MqttServer};
use crate::link::reopen::Backoff;

impl MqttServer {
    /// One connection: from the first connect attempt until it fails or `cancel`.
    pub(super) async fn session(
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

    /// After a ConnAck: subscriptions, then everything published afresh. `<topic>/status`
    /// `online` goes out only after every region's availability did (in
    /// [`MqttServer::publish`]): `offline` unless a fresh state went out first, so the
    /// `online` a region kept from before a stop, a kill or a broker restart is never seen
    /// together with `status online`.
    pub(super) fn on_connect(self: &Arc<Self>, client: &AsyncClient, s: &mut Session) {
        if let Some(t) = self.topics.ha_status() {
            let _ = client.try_subscribe(t, QoS::AtLeastOnce);
        }
        for u in self.units.iter().filter(|u| u.commands.is_some()) {
            let _ = client.try_subscribe(u.topics.commands(), QoS::AtLeastOnce);
        }
        self.publish(client, s);
    }

    pub(super) fn new_session(&self) -> Session {
        Session {
            connected: false,
            announced: false,
            started: Instant::now(),
            units: self
                .units
                .iter()
                .map(|u| UnitSession::new(u.plan.len()))
                .collect(),
        }
    }

    /// A message from the broker: Home Assistant's birth, or a command.
    pub(super) fn incoming(
        self: &Arc<Self>,
        client: &AsyncClient,
        s: &mut Session,
        p: rumqttc::Publish,
    ) {
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
            let out = commands::CommandResult::Refused(
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

    /// A clean stop: every region `offline`, then `status offline` (all retained), then
    /// disconnect, within about a second. The regions first, so that no `online` is left on
    /// the broker for the next start or a restarting Home Assistant to take as current.
    pub(super) async fn goodbye(&self, client: &AsyncClient, events: &mut EventLoop) {
        let farewell = async {
            for u in &self.units {
                for r in &u.plan {
                    let t = u.topics.availability(&r.name);
                    let _ = client.publish(t, QoS::AtMostOnce, true, "offline").await;
                }
            }
            let t = self.topics.gateway();
            let _ = client.publish(t, QoS::AtMostOnce, true, "offline").await;
            let _ = client.disconnect().await;
        };
        // The event loop must run meanwhile: it drains the client's queue onto the wire.
        let flush = async {
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let both = async { tokio::join!(farewell, flush) };
        let _ = tokio::time::timeout(Duration::from_secs(1), both).await;
    }
}

/// What a connection's session ended with.
pub(super) enum Ended {
    /// The gateway is stopping: do not reconnect.
    Cancelled,
    /// The connection failed or dropped (why, for the log): reconnect after a backoff.
    Failed(String),
}

/// What one connection has published (reset at every connect).
pub(super) struct Session {
    /// A ConnAck was received.
    pub(super) connected: bool,
    /// `<topic>/status` `online` went out (after every region's availability).
    pub(super) announced: bool,
    /// When the connection attempt began (bounds the wait for device details).
    pub(super) started: Instant,
    /// Per HA device (as [`MqttServer::units`]): what went out for it.
    pub(super) units: Vec<UnitSession>,
}

/// What one connection has published for one HA device.
pub(super) struct UnitSession {
    /// The discovery configs went out on this connection.
    pub(super) discovery_sent: bool,
    /// Forget the states sent, so that the next due tick sends them all again.
    pub(super) resend: bool,
    /// Per plan region: the availability last published.
    pub(super) online: Vec<Option<bool>>,
    /// Per plan region: the state last published.
    pub(super) last: Vec<Option<Map<String, Json>>>,
    /// Per plan region: when it was published.
    pub(super) last_sent: Vec<Option<Instant>>,
}

impl UnitSession {
    pub(super) fn new(regions: usize) -> Self {
        UnitSession {
            discovery_sent: false,
            resend: false,
            online: vec![None; regions],
            last: vec![None; regions],
            last_sent: vec![None; regions],
        }
    }
}
