//! The one judgement of what the gateway does for its clients right now, never greener than
//! the truth. The status page, `/status`, `/metrics` and the systemd `Status:` line all
//! show [`assess`]'s answer; nothing else decides a state. Reads the handles only.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::time::Instant;

use crate::app::handles::Handles;
use crate::config::{Config, OnStale};
use crate::image::Snapshot;

/// What the gateway does for its clients, worst first in [`assess`]'s order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The RS485 adapter cannot be opened: nobody on that line gets an answer.
    NoRs485Device {
        /// The configured device path.
        device: String,
        /// Why the last open failed (or the device vanished), when known.
        error: Option<String>,
    },
    /// Not every region was filled yet (silence meanwhile), and the sources are healthy.
    WarmingUp {
        /// Regions that never got data.
        waiting: Vec<String>,
    },
    /// A region is older than its `max_age`: the inverter gets silence (KSEM), LAN clients
    /// get exception 0B (KSTAR).
    Silent {
        /// Who gets what instead of the data: "the inverter gets silence", "LAN clients get
        /// exception 0B".
        clients: &'static str,
        /// The stale regions whose policy is not `serve`.
        regions: Vec<String>,
        /// Why they are stale (push missing, poller down), as far as known.
        cause: String,
    },
    /// The KSEM poller cannot reach the KSEM (the cause is its connect error, not the last
    /// socket error of a region).
    PollerDown {
        /// The connect error (or the last error when connected but failing).
        cause: String,
        /// Regions that never got data (empty once warm).
        waiting: Vec<String>,
    },
    /// Serving, but these push regions are fed by the fallback poll: the KSEM is not pushing.
    ServingFallback {
        /// The push regions whose last write came from the fallback poll.
        regions: Vec<String>,
    },
    /// Every region fresh, every source delivering.
    Serving,
}

/// Every state id, in the order of [`State`] (metrics export one gauge per id).
pub const STATE_IDS: [&str; 6] = [
    "no_rs485_device",
    "warming_up",
    "silent_stale",
    "poller_down",
    "serving_fallback",
    "serving",
];

impl State {
    /// A stable id (`/status` `state.id`, the `state` label in `/metrics`).
    pub fn id(&self) -> &'static str {
        match self {
            State::NoRs485Device { .. } => "no_rs485_device",
            State::WarmingUp { .. } => "warming_up",
            State::Silent { .. } => "silent_stale",
            State::PollerDown { .. } => "poller_down",
            State::ServingFallback { .. } => "serving_fallback",
            State::Serving => "serving",
        }
    }

    /// `ok` (green), `warn` (amber) or `bad` (red): the badge colour.
    pub fn level(&self) -> &'static str {
        match self {
            State::Serving => "ok",
            State::ServingFallback { .. } | State::WarmingUp { .. } => "warn",
            State::PollerDown { waiting, .. } if waiting.is_empty() => "warn",
            _ => "bad",
        }
    }

    /// The badge text.
    pub fn label(&self) -> &'static str {
        match self {
            State::NoRs485Device { .. } => "no RS485 device",
            State::WarmingUp { .. } => "warming up",
            State::Silent { .. } => "silent: data stale",
            State::PollerDown { .. } => "poller down",
            State::ServingFallback { .. } => "serving from fallback poll",
            State::Serving => "serving",
        }
    }

    /// One sentence: what is going on and where to look.
    pub fn detail(&self) -> String {
        match self {
            State::NoRs485Device { device, error } => format!(
                "cannot open {device}{}; the line gets no answers (is the adapter plugged in? `ls -l /dev/serial/by-id/`)",
                error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            State::WarmingUp { waiting } => format!(
                "no reply until every region was filled once; waiting for {}",
                waiting.join(", ")
            ),
            State::Silent {
                clients,
                regions,
                cause,
            } => format!(
                "{clients}: {} older than max_age; {cause}",
                regions.join(", ")
            ),
            State::PollerDown { cause, waiting } if waiting.is_empty() => {
                format!("the KSEM poller cannot read: {cause}")
            }
            State::PollerDown { cause, waiting } => format!(
                "the KSEM poller cannot read: {cause}; waiting for {}",
                waiting.join(", ")
            ),
            State::ServingFallback { regions } => format!(
                "the KSEM is not pushing; {} served from the fallback poll",
                regions.join(", ")
            ),
            State::Serving => "every region fresh".to_string(),
        }
    }

    /// `/status` `state`.
    pub fn to_json(&self) -> Json {
        json!({"id": self.id(), "label": self.label(), "level": self.level(), "detail": self.detail()})
    }
}

/// The push region `i` was last written by the fallback poll (the KSEM stopped pushing).
pub fn fed_by_fallback(config: &Config, snap: &Snapshot, name: &str, i: usize) -> bool {
    let fallback = config
        .regions
        .iter()
        .any(|r| r.name == name && r.fallback_poll.is_some());
    fallback
        && snap
            .regions
            .get(i)
            .is_some_and(|r| match (r.written, r.pushed) {
                (Some(w), Some(p)) => w > p,
                (Some(_), None) => true,
                (None, _) => false,
            })
}

/// Why the KSEM poller cannot read, if it cannot: the connect error while disconnected.
pub fn poller_cause(h: &Handles, config: &Config) -> Option<String> {
    config.poll.as_ref()?;
    let p = &h.poll;
    if p.connected.load(Relaxed) || p.connect_failures.load(Relaxed) == 0 {
        return None;
    }
    let connect = p.connect_error.lock().ok().and_then(|g| g.clone());
    let last = p.last_error.lock().ok().and_then(|g| g.clone());
    Some(connect.or(last).unwrap_or_else(|| "not connected".into()))
}

/// Decide the state now.
pub fn assess(h: &Handles, now: Instant) -> State {
    let config = h.live.current();
    let image = &h.image;
    let snap = image.load_full();
    if let Some(state) = no_rs485_device(h, &config) {
        return state;
    }
    let poller = poller_cause(h, &config);
    let specs = image.specs();
    if !snap.warm {
        let waiting: Vec<String> = specs
            .iter()
            .zip(snap.regions.iter())
            .filter(|(_, r)| r.written.is_none())
            .map(|(s, _)| s.name.clone())
            .collect();
        return match poller {
            Some(cause) => State::PollerDown { cause, waiting },
            None => State::WarmingUp { waiting },
        };
    }
    if let Some(state) = silent(h, &config, &snap, now, poller.as_deref()) {
        return state;
    }
    if let Some(cause) = poller {
        return State::PollerDown {
            cause,
            waiting: Vec::new(),
        };
    }
    let fallback: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(i, s)| s.accepts_push && fed_by_fallback(&config, &snap, &s.name, *i))
        .map(|(_, s)| s.name.clone())
        .collect();
    if !fallback.is_empty() {
        return State::ServingFallback { regions: fallback };
    }
    State::Serving
}

/// [`State::NoRs485Device`] when the RTU slave's or the RTU poller's serial device cannot
/// be opened.
fn no_rs485_device(h: &Handles, config: &Config) -> Option<State> {
    if config.rtu_slave {
        let opens = h.rtu.device_opens.load(Relaxed);
        let failures = h.rtu.device_failures.load(Relaxed);
        if failures > 0 && opens <= failures {
            return Some(State::NoRs485Device {
                device: config.rtu.device.clone(),
                error: h.rtu.device_error.lock().ok().and_then(|g| g.clone()),
            });
        }
    }
    let p = config.rtu_poll.as_ref()?;
    let s = &h.rtu_poll;
    (s.device_failures.load(Relaxed) > 0 && !s.bus_open.load(Relaxed)).then(|| {
        State::NoRs485Device {
            device: p.device.clone(),
            error: None,
        }
    })
}

/// [`State::Silent`] when a region is stale and its policy is not `serve`.
fn silent(
    h: &Handles,
    config: &Config,
    snap: &Snapshot,
    now: Instant,
    poller: Option<&str>,
) -> Option<State> {
    let image = &h.image;
    let specs = image.specs();
    let silent: Vec<usize> = (0..specs.len())
        .filter(|&i| {
            image.is_stale(snap, i, now)
                && image
                    .freshness(i)
                    .is_some_and(|f| f.on_stale != OnStale::Serve)
        })
        .collect();
    if silent.is_empty() {
        return None;
    }
    Some(State::Silent {
        clients: if config.rtu_slave {
            "the inverter gets silence"
        } else {
            "LAN clients get exception 0B"
        },
        regions: silent.iter().map(|&i| specs[i].name.clone()).collect(),
        cause: silence_cause(h, config, snap, now, poller, &silent),
    })
}

/// Why the `silent` regions are stale, as far as known: missing pushes, the poller, RTU
/// devices that do not answer.
fn silence_cause(
    h: &Handles,
    config: &Config,
    snap: &Snapshot,
    now: Instant,
    poller: Option<&str>,
    silent: &[usize],
) -> String {
    let specs = h.image.specs();
    let mut cause = Vec::new();
    if silent.iter().any(|&i| specs[i].accepts_push) {
        let last_push = silent
            .iter()
            .filter_map(|&i| snap.regions[i].pushed)
            .max()
            .map(|t| now.saturating_duration_since(t));
        cause.push(match (h.push.front.open.load(Relaxed), last_push) {
            (0, _) => "no push connection: the KSEM is not pushing".to_string(),
            (_, Some(a)) => format!(
                "the KSEM is connected but its last push was {} ago",
                human(a)
            ),
            (_, None) => "the KSEM is connected but never pushed these registers".into(),
        });
    }
    if let Some(c) = poller {
        cause.push(format!("the poller cannot read: {c}"));
    }
    if config.rtu_poll.is_some() {
        cause.extend(rtu_devices_offline(h));
    }
    if cause.is_empty() {
        cause.push("their source delivers nothing newer".into());
    }
    cause.join("; ")
}

/// Which RS485 devices of the KSTAR bus do not answer, as a cause (`None` if all answer).
fn rtu_devices_offline(h: &Handles) -> Option<String> {
    let s = &h.rtu_poll;
    if s.devices().is_empty() {
        return (!s.online.load(Relaxed)).then(|| {
            "the RS485 device does not answer (wiring, address, baud; a KSG sleeps at night)".into()
        });
    }
    let offline: Vec<String> = s
        .devices()
        .iter()
        .filter(|d| !d.stats.online.load(Relaxed))
        .map(|d| format!("{} (unit {})", d.name, d.unit_id))
        .collect();
    (!offline.is_empty()).then(|| format!("not answering: {}", offline.join(", ")))
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}
