//! Reopen-with-backoff: the one loop that keeps a device (a serial port) served for as long
//! as the gateway runs, whatever happens to it, and the [`Backoff`] it waits with. The
//! device itself is a [`Reopenable`]: how to open it, how to serve an open stream, and what to do
//! while waiting; so the RTU slave and the RTU poller share the loop, and tests inject
//! failures and in-memory streams. Touches only the counters it is given.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter: each delay doubles from `min` up to `max`, and the
/// actual wait is drawn from [delay, 1.5 × delay] (never above `max`) so that reconnects of
/// several gateways (or sources) do not synchronise.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay, and the one after [`Backoff::reset`].
    min: Duration,
    /// The cap: no wait is longer.
    max: Duration,
    /// The lower bound of the next wait.
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The reconnect policy of the upstream sources: 1 s up to 30 s.
    pub fn upstream() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The reopen policy of local devices: 0.5 s up to 10 s.
    pub fn device() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// The next wait; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        (d + (d / 2).mul_f64(fastrand::f64())).min(self.max)
    }

    /// The lower bound of the wait [`Backoff::next_delay`] would return now.
    #[cfg(test)]
    pub fn peek_bound(&self) -> Duration {
        self.next
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A session that lasted this long was healthy: the backoff and the error log start over.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// A device the [`run`] loop keeps open.
pub trait Reopenable {
    /// The open device.
    type Stream;

    /// What the logs call it (`serial device`, `RTU bus`).
    fn label(&self) -> &'static str;

    /// What the logs name as its path (`rtu.device`).
    fn path(&self) -> String;

    /// Open the device (a tty, or connect to a `tcp://` converter); the error says why not.
    fn open(&mut self) -> impl Future<Output = anyhow::Result<Self::Stream>> + Send;

    /// Serve an open stream until `cancel` fires (`Ok`) or it ends (`Ok`) or fails (`Err`).
    fn serve(
        &mut self,
        stream: Self::Stream,
        cancel: &CancellationToken,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// After every failed open and every session: the device is gone for now.
    fn gone(&mut self) {}

    /// Work to do while waiting to reopen (the poller refuses queued writes). Resolves after
    /// each piece of work and is called again; must be cancel-safe; pends forever when there
    /// is nothing left to do, so the wait ends only by its timer or `cancel`.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// The counters the loop keeps for a device.
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Counted at every successful open.
    pub opens: &'a AtomicU64,
    /// Counted at every failed open and every session that ended.
    pub failures: &'a AtomicU64,
    /// Beaten while the loop waits to reopen: the supervisor's proof it runs.
    pub heartbeat: &'a AtomicU64,
}

/// Open `device` and serve it; when it cannot be opened, ends or fails, wait with
/// [`Backoff::device`] (reset after a [`HEALTHY_SESSION`]) and open it again, forever. The
/// first failure of a streak is logged at error, repeats at debug. Returns only on `cancel`.
pub async fn run<D: Reopenable>(
    device: &mut D,
    counters: Counters<'_>,
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::device();
    let mut failing = false;
    let label = device.label();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let opening = tokio::select! {
            () = cancel.cancelled() => return,
            r = device.open() => r,
        };
        let outcome = match opening {
            Ok(stream) => {
                counters.opens.fetch_add(1, Relaxed);
                tracing::info!(device = %device.path(), "{label} open");
                let opened = Instant::now();
                let r = device.serve(stream, cancel).await;
                if cancel.is_cancelled() {
                    return;
                }
                if opened.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                    failing = false;
                }
                match r {
                    Ok(()) => "the device closed (end of stream)".to_string(),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        counters.failures.fetch_add(1, Relaxed);
        device.gone();
        let wait = backoff.next_delay();
        if failing {
            tracing::debug!(?wait, "{label} still unavailable: {outcome}");
        } else {
            tracing::error!(device = %device.path(), "{label} unavailable: {outcome}; retrying with backoff up to 10s");
            failing = true;
        }
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            tokio::select! {
                () = cancel.cancelled() => return,
                () = crate::ops::heartbeat::sleep_beating(left, counters.heartbeat) => break,
                () = device.idle() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, DuplexStream};

    #[test]
    fn doubles_within_bounds_with_jitter() {
        let mut b = Backoff::upstream();
        let mut bound = Duration::from_secs(1);
        for _ in 0..10 {
            let d = b.next_delay();
            let hi = (bound * 3 / 2).min(Duration::from_secs(30));
            assert!(d >= bound && d <= hi, "{d:?} not in [{bound:?}, {hi:?}]");
            bound = (bound * 2).min(Duration::from_secs(30));
        }
        assert_eq!(b.peek_bound(), Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1500));
    }

    /// A device that fails to open `fail_opens` times, then gives streams whose other end
    /// is dropped after `session` (so each session ends by end of stream).
    struct Flaky {
        fail_opens: u32,
        session: Duration,
        /// When each open was tried.
        tries: Vec<Instant>,
        gone: u32,
        idle_calls: u32,
    }

    impl Flaky {
        fn new(fail_opens: u32, session: Duration) -> Self {
            Flaky {
                fail_opens,
                session,
                tries: Vec::new(),
                gone: 0,
                idle_calls: 0,
            }
        }
    }

    /// Run the loop on `dev` until `d` has passed.
    async fn run_for(dev: &mut Flaky, counts: &Counts, d: Duration) {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
        run(dev, counts.counters(), &cancel).await;
    }

    impl Reopenable for Flaky {
        type Stream = DuplexStream;
        fn label(&self) -> &'static str {
            "test device"
        }
        fn path(&self) -> String {
            "/dev/test".into()
        }
        async fn open(&mut self) -> anyhow::Result<DuplexStream> {
            self.tries.push(Instant::now());
            if self.fail_opens > 0 {
                self.fail_opens -= 1;
                anyhow::bail!("no such device");
            }
            let (ours, theirs) = tokio::io::duplex(64);
            let session = self.session;
            tokio::spawn(async move {
                tokio::time::sleep(session).await;
                drop(theirs);
            });
            Ok(ours)
        }
        async fn serve(
            &mut self,
            mut stream: DuplexStream,
            cancel: &CancellationToken,
        ) -> io::Result<()> {
            let mut buf = [0u8; 8];
            tokio::select! {
                () = cancel.cancelled() => Ok(()),
                r = stream.read(&mut buf) => r.map(|_| ()),
            }
        }
        fn gone(&mut self) {
            self.gone += 1;
        }
        async fn idle(&mut self) {
            // Work that finishes at once, as a closed write queue does: it must not end the
            // wait nor the loop.
            self.idle_calls += 1;
            if self.idle_calls > 3 {
                std::future::pending::<()>().await;
            }
        }
    }

    struct Counts {
        opens: AtomicU64,
        failures: AtomicU64,
        heartbeat: AtomicU64,
    }

    impl Counts {
        fn new() -> Self {
            Counts {
                opens: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                heartbeat: AtomicU64::new(0),
            }
        }
        fn counters(&self) -> Counters<'_> {
            Counters {
                opens: &self.opens,
                failures: &self.failures,
                heartbeat: &self.heartbeat,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_missing_device_forever_with_growing_waits_and_beats() {
        let mut dev = Flaky::new(8, Duration::from_secs(3600));
        let counts = Counts::new();
        run_for(&mut dev, &counts, Duration::from_secs(120)).await;
        assert_eq!(dev.tries.len(), 9, "8 failures, then the open that works");
        assert_eq!(counts.failures.load(Relaxed), 8);
        assert_eq!(counts.opens.load(Relaxed), 1);
        assert_eq!(dev.gone, 8);
        let gaps: Vec<Duration> = dev.tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_millis(500) && gaps[0] <= Duration::from_millis(750));
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(10)),
            "{gaps:?}"
        );
        assert!(
            gaps[7] >= Duration::from_secs(10),
            "capped at 10 s: {gaps:?}"
        );
        // At least one beat per second of waiting.
        let waited: Duration = gaps.iter().sum();
        assert!(counts.heartbeat.load(Relaxed) >= waited.as_secs());
    }

    #[tokio::test(start_paused = true)]
    async fn short_sessions_keep_backing_off_and_a_long_one_resets() {
        let mut dev = Flaky::new(0, Duration::from_millis(100));
        let counts = Counts::new();
        run_for(&mut dev, &counts, Duration::from_secs(40)).await;
        let gaps: Vec<Duration> = dev.tries.windows(2).map(|w| w[1] - w[0]).collect();
        // A device that opens but dies at once is not hammered every 0.5 s.
        assert!(gaps.len() >= 4, "{gaps:?}");
        assert!(gaps[4] >= Duration::from_secs(8), "{gaps:?}");
        // Every session that ended counts as a failure; cancel may end the last one.
        let (opens, failures) = (counts.opens.load(Relaxed), counts.failures.load(Relaxed));
        assert!(
            failures == opens || failures + 1 == opens,
            "{opens} {failures}"
        );
        assert_eq!(opens as usize, dev.tries.len());

        // A session of 10 s or more resets the backoff: the next reopen is quick.
        dev.session = HEALTHY_SESSION;
        dev.tries.clear();
        run_for(&mut dev, &counts, Duration::from_secs(11)).await;
        assert_eq!(dev.tries.len(), 2, "{:?}", dev.tries);
        let gap = dev.tries[1] - dev.tries[0];
        assert!(
            gap <= HEALTHY_SESSION + Duration::from_millis(750),
            "{gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_work_that_ends_at_once_does_not_stop_the_retries() {
        let mut dev = Flaky::new(2, Duration::from_secs(3600));
        let counts = Counts::new();
        run_for(&mut dev, &counts, Duration::from_secs(30)).await;
        assert_eq!(counts.opens.load(Relaxed), 1, "opened after two failures");
        assert!(dev.idle_calls >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_wait() {
        let mut dev = Flaky::new(u32::MAX, Duration::ZERO);
        let counts = Counts::new();
        let cancel = CancellationToken::new();
        cancel.cancel();
        run(&mut dev, counts.counters(), &cancel).await;
        assert!(dev.tries.is_empty());
    }
}
