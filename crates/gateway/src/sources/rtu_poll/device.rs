//! One device on the RTU bus as the poller sees it: its regions' schedule, whether it
//! answers (online, or offline and only probed with its own backoff), and its counters.
//! Several devices share one bus and one [`super::RtuPoller`]; each keeps its own state
//! here, so a silent device never changes another's. Touches its own counters and logs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::RtuPollStats;
use crate::config::RtuPollConfig;
use crate::link::reopen::Backoff;
use crate::sources::schedule::Slot;

/// A region on a device's schedule.
#[derive(Debug)]
pub(super) struct Task {
    /// The region and when it is due.
    pub(super) slot: Slot,
    /// Read function code (3 or 4).
    pub(super) fc: u8,
}

/// Whether a device answers.
#[derive(Debug)]
pub(super) enum Link {
    /// Answering; consecutive failed reads so far.
    Online { failures: u32 },
    /// Silent: only probes, at `next_probe`.
    Offline { next_probe: Instant },
}

/// One device on the bus.
pub(super) struct PolledDevice {
    /// `devices[].name`; empty in the one-device form (its logs stay as they were).
    pub(super) name: String,
    /// Its RS485 address.
    pub(super) unit: u8,
    /// One schedule entry per region.
    pub(super) tasks: Vec<Task>,
    /// Whether it answers.
    pub(super) link: Link,
    /// Delay between probes while it is offline.
    pub(super) probe: Backoff,
    /// Logged `online`; `None` before the first verdict.
    pub(super) said_online: Option<bool>,
    /// Its own counters (`devices:`); `None` in the one-device form, where the bus
    /// counters are the device's.
    pub(super) stats: Option<Arc<RtuPollStats>>,
}

/// What the bus and every device count: the bus total and, with `devices:`, the device's.
pub(super) struct Counts<'a> {
    /// The bus counters (`/status` `rtu_poll`, the metrics without a device label).
    pub(super) bus: &'a RtuPollStats,
    /// The device's own, if it has any.
    pub(super) device: Option<&'a RtuPollStats>,
}

impl Counts<'_> {
    /// Add one to counter `f` of the bus and of the device.
    pub(super) fn bump(&self, f: fn(&RtuPollStats) -> &AtomicU64) {
        f(self.bus).fetch_add(1, Relaxed);
        if let Some(d) = self.device {
            f(d).fetch_add(1, Relaxed);
        }
    }

    /// Record `msg` as the last error of the bus and of the device.
    pub(super) fn set_error(&self, msg: &str) {
        for s in std::iter::once(self.bus).chain(self.device) {
            if let Ok(mut g) = s.last_error.lock() {
                *g = Some(msg.to_string());
            }
        }
    }
}

impl PolledDevice {
    /// A device that has not answered yet, polled at once.
    pub(super) fn new(
        name: String,
        unit: u8,
        tasks: Vec<Task>,
        probe_max: Duration,
        stats: Option<Arc<RtuPollStats>>,
    ) -> Self {
        PolledDevice {
            name,
            unit,
            tasks,
            link: Link::Online { failures: 0 },
            probe: Backoff::new(Duration::from_secs(1), probe_max),
            said_online: None,
            stats,
        }
    }

    /// The index of its most overdue region, while it is online.
    pub(super) fn due_task(&self, now: Instant) -> Option<(Instant, usize)> {
        if !matches!(self.link, Link::Online { .. }) {
            return None;
        }
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.slot.next <= now)
            .min_by_key(|(_, t)| t.slot.next)
            .map(|(i, t)| (t.slot.next, i))
    }

    /// When it next needs the bus: its next poll, or its next probe while offline.
    pub(super) fn wake(&self) -> Option<Instant> {
        match self.link {
            Link::Offline { next_probe } => Some(next_probe),
            Link::Online { .. } => self.tasks.iter().map(|t| t.slot.next).min(),
        }
    }

    /// Its probe is due.
    pub(super) fn probe_due(&self, now: Instant) -> Option<Instant> {
        match self.link {
            Link::Offline { next_probe } if next_probe <= now => Some(next_probe),
            _ => None,
        }
    }

    /// Every region due now (after a probe answered, or a reopen).
    pub(super) fn all_due(&mut self, now: Instant) {
        for t in &mut self.tasks {
            t.slot.next = now;
        }
    }

    /// It answered something: online. `bus` is the serial device, for the log.
    pub(super) fn answered(&mut self, bus: &str) {
        self.link = Link::Online { failures: 0 };
        self.probe.reset();
        if let Some(s) = &self.stats {
            s.online.store(true, Relaxed);
        }
        if self.said_online != Some(true) {
            if self.name.is_empty() {
                tracing::info!(device = %bus, unit = self.unit, "RTU device online");
            } else {
                tracing::info!(device = %bus, unit = self.unit, name = %self.name, "RTU device online");
            }
            self.said_online = Some(true);
        }
    }

    /// A read got no valid reply (after its retries); offline after `offline_after` in a row.
    pub(super) fn failed_read(&mut self, now: Instant, cfg: &RtuPollConfig, bus: &RtuPollStats) {
        let failures = match self.link {
            Link::Online { failures } => failures + 1,
            Link::Offline { .. } => return,
        };
        if failures < cfg.offline_after {
            self.link = Link::Online { failures };
            return;
        }
        Counts {
            bus,
            device: self.stats.as_deref(),
        }
        .bump(|s| &s.went_offline);
        if let Some(s) = &self.stats {
            s.online.store(false, Relaxed);
        }
        let wait = self.probe.next_delay();
        self.link = Link::Offline {
            next_probe: now + wait,
        };
        if self.said_online != Some(false) {
            let (path, probe_max) = (&cfg.device, cfg.probe_max);
            if self.name.is_empty() {
                tracing::warn!(device = %path, unit = self.unit, failures, probe_max = ?probe_max, "RTU device offline: no valid reply; probing with backoff");
            } else {
                tracing::warn!(device = %path, unit = self.unit, name = %self.name, failures, probe_max = ?probe_max, "RTU device offline: no valid reply; probing with backoff");
            }
            self.said_online = Some(false);
        }
    }

    /// A probe got no answer: the next one after a longer wait.
    pub(super) fn probe_failed(&mut self, now: Instant) {
        self.link = Link::Offline {
            next_probe: now + self.probe.next_delay(),
        };
    }

    /// The port is gone: offline until it is open again and the device answers.
    pub(super) fn reset(&mut self, now: Instant) {
        if let Some(s) = &self.stats {
            s.online.store(false, Relaxed);
        }
        self.link = Link::Online { failures: 0 };
        self.probe.reset();
        self.all_due(now);
        self.said_online = Some(false);
    }

    /// It is offline (its writes are refused at once).
    pub(super) fn is_offline(&self) -> bool {
        matches!(self.link, Link::Offline { .. })
    }

    /// It answers.
    pub(super) fn is_online(&self) -> bool {
        self.said_online == Some(true) && !self.is_offline()
    }
}
