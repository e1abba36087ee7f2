//! Heartbeats: how a long-running loop shows the supervisor it is alive. A loop counts
//! beats on an `AtomicU64` (at least every [`HEARTBEAT`], also while it waits on purpose:
//! [`sleep_beating`]); the supervisor judges the counter with [`Liveness`]. Touches nothing
//! but the counter it is given.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// How often the RTU serving loop beats while idle (see `RtuStats::heartbeat`).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The serving loop counts as stalled after this long without a beat.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Decides from a heartbeat counter whether a loop is alive: it is while the counter moved
/// within `limit`. The clock is passed in.
#[derive(Debug)]
pub struct Liveness {
    /// The counter as last observed.
    beats: u64,
    /// When the counter last moved.
    changed: Instant,
    /// How long the counter may stand still before the loop counts as stalled.
    limit: Duration,
}

impl Liveness {
    pub fn new(limit: Duration, now: Instant) -> Self {
        Liveness {
            beats: 0,
            changed: now,
            limit,
        }
    }

    /// Observe the counter at `now`; `true` while alive.
    pub fn observe(&mut self, beats: u64, now: Instant) -> bool {
        if beats != self.beats {
            self.beats = beats;
            self.changed = now;
        }
        now.saturating_duration_since(self.changed) <= self.limit
    }

    /// Time since the counter last moved.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.changed)
    }
}

/// Sleep `d`, beating `heartbeat` every [`HEARTBEAT`] meanwhile (a loop that waits on
/// purpose, e.g. before re-opening the serial device, is alive).
pub async fn sleep_beating(d: Duration, heartbeat: &AtomicU64) {
    let end = Instant::now() + d;
    loop {
        heartbeat.fetch_add(1, Relaxed);
        let now = Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep_until(end.min(now + HEARTBEAT)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_counter_with_a_controlled_clock() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(10), t0);
        assert!(
            l.observe(0, t0 + Duration::from_secs(5)),
            "within the limit"
        );
        assert!(l.observe(1, t0 + Duration::from_secs(9)));
        assert!(
            l.observe(1, t0 + Duration::from_secs(19)),
            "10 s after the beat"
        );
        assert!(!l.observe(1, t0 + Duration::from_secs(20)), "stalled");
        assert_eq!(
            l.silent_for(t0 + Duration::from_secs(20)),
            Duration::from_millis(11_000)
        );
        assert!(l.observe(2, t0 + Duration::from_secs(21)), "beats again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_loop_still_beats() {
        let hb = AtomicU64::new(0);
        sleep_beating(Duration::from_millis(3500), &hb).await;
        // At 0, 1, 2, 3 and at the end (3.5 s).
        assert_eq!(hb.load(Relaxed), 5);
    }
}
