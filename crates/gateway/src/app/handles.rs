//! The shared state of a running gateway: the image and the counters of every source and
//! server, the config in force, and the frame journal. Everything that observes the gateway
//! (status page, systemd, reload, tests) reads it through [`Handles`]; nothing here runs.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, PushConfig};
use crate::image::Image;
use crate::ops::journal::Journal;
use crate::servers::lan::TcpStats;
use crate::servers::mqtt::MqttStats;
use crate::servers::rtu_slave::RtuStats;
use crate::sources::ksem_poll::PollStats;
use crate::sources::push::PushStats;
use crate::sources::rtu_poll::RtuPollStats;

/// Shared handles on a running gateway.
#[derive(Clone)]
pub struct Handles {
    /// The register image every source writes and every server reads.
    pub image: Arc<Image>,
    /// The push server's counters (KSEM writes).
    pub push: Arc<PushStats>,
    /// The KSEM poller's counters.
    pub poll: Arc<PollStats>,
    /// The RTU slave's counters (the inverter's requests), including its heartbeat.
    pub rtu: Arc<RtuStats>,
    /// The KSTAR RTU poller's counters.
    pub rtu_poll: Arc<RtuPollStats>,
    /// The Modbus TCP server's counters (LAN clients).
    pub tcp: Arc<TcpStats>,
    /// The MQTT publisher's connection state and counters (idle without `mqtt:`).
    pub mqtt: Arc<MqttStats>,
    /// The config in force; hot reload goes through it ([`crate::app::reload::apply`]).
    pub live: Arc<Live>,
    /// The last frames seen on every link (`/journal`, SIGUSR1).
    pub journal: Arc<Journal>,
}

/// The config in force, and where its live parts are read.
#[derive(Debug)]
pub struct Live {
    /// The config in force; the KSEM poller follows it through a receiver.
    pub(crate) config: watch::Sender<Arc<Config>>,
    /// The push server's live settings, once it runs.
    pub(crate) push: OnceLock<Arc<ArcSwap<PushConfig>>>,
}

impl Live {
    pub fn new(config: Config) -> Self {
        Live {
            config: watch::Sender::new(Arc::new(config)),
            push: OnceLock::new(),
        }
    }

    /// Where the push server reads its settings (see `PushServer::settings`).
    pub fn attach_push(&self, settings: Arc<ArcSwap<PushConfig>>) {
        let _ = self.push.set(settings);
    }

    /// The config in force (as started, plus reloads applied since).
    pub fn current(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
    }

    /// A receiver that sees every applied reload (the poller follows one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }
}
