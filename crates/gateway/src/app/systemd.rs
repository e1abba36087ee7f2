//! systemd integration (`Type=notify`): readiness, watchdog and the status line.
//!
//! Owns what the gateway tells the service manager through `sd_notify`: `READY=1` once the
//! image is warm (never before: until then the inverter gets silence, and `systemctl start`
//! waits), `WATCHDOG=1` only while the supervisor runs (it sends it) *and* the RTU serving
//! loop and (in a config with `rtu_poll:`) the RTU poll loop show a recent heartbeat
//! ([`Liveness`]) — not tied to the meter's freshness, since a restart would not fix a dead
//! KSEM — and `STATUS=` with the gateway state ([`crate::app::status::state::assess`], as the status page) and the age of every region. It only
//! reads the gateway's handles. Without `NOTIFY_SOCKET` (not under systemd) it only logs.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

use crate::app::handles::Handles;
use crate::image::Image;
use crate::ops::heartbeat::{Liveness, STALL_LIMIT};

/// Age as the status line shows it: `0.2s`, `41s`, `12m`, `3h`.
fn age(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 120.0 {
        format!("{}s", d.as_secs())
    } else if s < 7200.0 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}h", d.as_secs() / 3600)
    }
}

/// `STATUS=` text: state, then each region's age (`never` before its first write, `stale`
/// past its `max_age`), then the inverter's counters.
pub fn status_line(handles: &Handles, now: Instant) -> String {
    let image: &Image = &handles.image;
    let snap = image.load_full();
    let mut parts = Vec::with_capacity(image.specs().len());
    for (i, spec) in image.specs().iter().enumerate() {
        let fixed = image
            .freshness(i)
            .is_some_and(|f| f.max_age == Duration::MAX);
        let text = match image.age(&snap, i, now) {
            None => "never".to_string(),
            Some(_) if fixed => "fixed".to_string(),
            Some(a) if image.is_stale(&snap, i, now) => format!("{} stale", age(a)),
            Some(a) => age(a),
        };
        parts.push(format!("{} {text}", spec.name));
    }
    let st = crate::app::status::state::assess(handles, now);
    let state = format!("{}: {}", st.label(), st.detail());
    let rtu = &handles.rtu;
    format!(
        "{state}; ages: {}; inverter: {} replies, {} exceptions, {} silent (stale)",
        parts.join(", "),
        rtu.replies.load(Relaxed),
        rtu.exceptions.load(Relaxed),
        rtu.silent_stale.load(Relaxed),
    )
}

/// Talks to systemd on behalf of the supervisor; call [`Notifier::tick`] every
/// [`Notifier::period`] from the supervising loop.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set: systemd listens (without it every notify is skipped).
    enabled: bool,
    /// `WatchdogSec=` as systemd passed it: the ping period derives from it; `None`: no pings.
    watchdog: Option<Duration>,
    /// `READY=1` was sent, so it goes out once.
    ready: bool,
    /// Judges the RTU slave's heartbeat, so a hung serving loop stops the pings and
    /// systemd restarts the gateway.
    liveness: Liveness,
    /// Judges the RTU poller's heartbeat the same way (watched in a config with `rtu_poll:`).
    poll_liveness: Liveness,
    /// Withhold the watchdog ping when the RTU serving loop stops beating. Off for a
    /// config without an RTU slave (KSTAR): there the supervisor's own tick is the proof.
    watch_rtu_slave: bool,
    /// The stall was logged, so a long stall logs once, not every period.
    said_stalled: bool,
    /// A failed notify was logged, so a broken socket logs once, not every period.
    said_error: bool,
}

impl Notifier {
    /// Read `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = if enabled {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        Notifier {
            enabled,
            watchdog,
            ready: false,
            liveness: Liveness::new(STALL_LIMIT, Instant::now()),
            poll_liveness: Liveness::new(STALL_LIMIT, Instant::now()),
            watch_rtu_slave: true,
            said_stalled: false,
            said_error: false,
        }
    }

    /// Whether the watchdog follows the RTU serving loop's heartbeat (default: yes). Turn it
    /// off when the config runs no RTU slave, or the watchdog would restart a healthy
    /// gateway every `WatchdogSec`.
    pub fn watch_rtu_slave(mut self, on: bool) -> Self {
        self.watch_rtu_slave = on;
        self
    }

    /// Under systemd (`NOTIFY_SOCKET` set).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog interval systemd asked for (`WatchdogSec=`).
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to call [`Notifier::tick`]: every second, or a third of the watchdog
    /// interval if that is shorter.
    pub fn period(&self) -> Duration {
        let base = Duration::from_secs(1);
        self.watchdog
            .map_or(base, |w| base.min(w / 3).max(Duration::from_millis(10)))
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if !self.said_error {
                tracing::warn!("cannot notify systemd: {e}");
                self.said_error = true;
            }
        }
    }

    /// One supervision step: `READY=1` once warm, `STATUS=`, and `WATCHDOG=1` if the RTU
    /// serving loop and the RTU poll loop (when configured) beat recently.
    pub fn tick(&mut self, handles: &Handles) {
        let now = Instant::now();
        let status = status_line(handles, now);
        if !self.ready && handles.image.load().warm {
            self.ready = true;
            self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else {
            self.send(&[NotifyState::Status(&status)]);
        }
        let poller = handles
            .live
            .current()
            .rtu_poll
            .is_some()
            .then(|| handles.rtu_poll.heartbeat.load(Relaxed));
        match self.stalled(handles.rtu.heartbeat.load(Relaxed), poller, now) {
            None => {
                if self.said_stalled {
                    tracing::info!("the RTU loops run again; watchdog pings resume");
                    self.said_stalled = false;
                }
                if self.watchdog.is_some() {
                    self.send(&[NotifyState::Watchdog]);
                }
            }
            Some((which, silent)) => {
                if !self.said_stalled {
                    self.said_stalled = true;
                    tracing::error!(
                        ?silent,
                        "the {which} is stuck; withholding the watchdog ping so that systemd restarts the gateway"
                    );
                }
            }
        }
    }

    /// Which watched loop stalled (and for how long), given the RTU slave's heartbeat and
    /// the RTU poller's (`None`: no poller configured); `None` while the ping may be sent.
    fn stalled(
        &mut self,
        slave: u64,
        poller: Option<u64>,
        now: Instant,
    ) -> Option<(&'static str, Duration)> {
        // Observe both every tick, so a counter is judged from its last move.
        let slave_ok = !self.watch_rtu_slave || self.liveness.observe(slave, now);
        let poller_ok = poller.is_none_or(|b| self.poll_liveness.observe(b, now));
        if !slave_ok {
            Some(("RTU serving loop", self.liveness.silent_for(now)))
        } else if !poller_ok {
            Some(("RTU poll loop", self.poll_liveness.silent_for(now)))
        } else {
            None
        }
    }

    /// Tell systemd the reload is done (after SIGHUP).
    pub fn reloaded(&mut self, outcome: &str) {
        let ready = if self.ready {
            vec![NotifyState::Ready]
        } else {
            Vec::new()
        };
        let mut states = ready;
        states.push(NotifyState::Status(outcome));
        self.send(&states);
    }

    /// `STOPPING=1` at shutdown.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn without_an_rtu_slave_the_watchdog_does_not_wait_for_its_heartbeat() {
        let t0 = Instant::now();
        let mut with = Notifier::from_env();
        let mut without = Notifier::from_env().watch_rtu_slave(false);
        for n in [with.stalled(0, None, t0), without.stalled(0, None, t0)] {
            assert_eq!(n, None, "alive at start");
        }
        // The heartbeat never moves (a KSTAR config runs no RTU slave loop).
        let later = t0 + STALL_LIMIT * 2;
        assert_eq!(
            with.stalled(0, None, later).map(|s| s.0),
            Some("RTU serving loop"),
            "a silent RTU loop withholds the ping"
        );
        assert_eq!(
            without.stalled(0, None, later),
            None,
            "no RTU slave: nothing to wait for"
        );
    }

    #[test]
    fn with_an_rtu_poller_the_watchdog_waits_for_its_heartbeat() {
        let t0 = Instant::now();
        let mut n = Notifier::from_env().watch_rtu_slave(false);
        let step = STALL_LIMIT / 2;
        assert_eq!(n.stalled(0, Some(1), t0), None);
        assert_eq!(n.stalled(0, Some(2), t0 + step), None, "beats");
        assert_eq!(
            n.stalled(0, Some(2), t0 + step * 3),
            None,
            "within the limit"
        );
        assert_eq!(
            n.stalled(0, Some(2), t0 + step * 4),
            Some(("RTU poll loop", step * 3)),
            "a poller that stopped beating withholds the ping"
        );
        assert_eq!(n.stalled(0, Some(3), t0 + step * 5), None, "beats again");
    }

    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(Duration::from_millis(230)), "0.2s");
        assert_eq!(age(Duration::from_secs(41)), "41s");
        assert_eq!(age(Duration::from_secs(12 * 60 + 5)), "12m");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 10)), "3h");
    }
}
