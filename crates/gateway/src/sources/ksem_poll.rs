//! The poller: reads slow data (and fallback copies of push regions) from the KSEM's
//! Modbus TCP slave into the image.
//!
//! Owns one persistent upstream connection (tokio-modbus TCP client) and the schedule of
//! every polled region. A region is read in chunks of at most 125 registers and committed to
//! the [`Image`] only when every chunk arrived, so a counter across a chunk boundary is never
//! torn. Every request has a timeout; a broken connection is re-established with jittered
//! exponential backoff (1 s … 30 s). It runs in its own task and only writes the image, so it
//! can never delay the push server or the RTU slave.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::Slave;
use tokio_modbus::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PollConfig, MAX_READ};
use crate::image::Image;
use crate::link::reopen::Backoff;
use crate::ops::journal::{self, Journal};
use crate::sources::schedule::Slot;

/// Counters of the poll side.
#[derive(Debug, Default)]
pub struct PollStats {
    /// The upstream connection is up.
    pub connected: AtomicBool,
    /// Connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Regions read completely and committed.
    pub regions_ok: AtomicU64,
    /// Region reads that failed (timeout, I/O, exception, malformed reply).
    pub regions_failed: AtomicU64,
    /// Region reads done as fallback for a push region.
    pub fallback_polls: AtomicU64,
    /// Region reads dropped because a push landed in the region while they ran.
    pub superseded: AtomicU64,
    /// The last failure and why, for the status page.
    pub last_error: Mutex<Option<String>>,
    /// The last connect error while the poller cannot connect (cleared on connect): the
    /// real cause when regions only show the socket error of their last read.
    pub connect_error: Mutex<Option<String>>,
    /// Per region (by name): reads by result and the last error (status page, metrics).
    pub by_region: Mutex<std::collections::BTreeMap<String, RegionPollCounts>>,
}

/// Poll reads of one region by result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionPollCounts {
    /// Reads committed.
    pub ok: u64,
    /// Discarded: a push landed in the region while the read ran.
    pub superseded: u64,
    /// Reads that timed out.
    pub timeout: u64,
    /// Reads the KSEM refused with an exception.
    pub exception: u64,
    /// Connection or protocol errors.
    pub transport: u64,
    /// The last failure and when it happened.
    pub last_error: Option<(String, std::time::SystemTime)>,
}

impl RegionPollCounts {
    /// `(result label, count)` as in `/metrics`.
    pub fn by_result(&self) -> [(&'static str, u64); 5] {
        [
            ("ok", self.ok),
            ("superseded", self.superseded),
            ("timeout", self.timeout),
            ("exception", self.exception),
            ("transport", self.transport),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A polled region: every `every`.
    Regular,
    /// A push region's fallback: every `every`, but only while no push arrived for `max_age`.
    Fallback { max_age: Duration },
}

#[derive(Debug)]
struct Task {
    /// The region, its interval, and when it is next read (after a success: last + every;
    /// after a failure: a retry).
    slot: Slot,
    /// Regular poll or push fallback.
    kind: Kind,
    /// Retry delay after a failed read.
    retry: Backoff,
    /// A fallback task whose last commit fed the region (logged once at info each way).
    feeding: Option<Instant>,
}

/// Why a region read failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No reply within the poll timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection or the Modbus TCP framing failed.
    #[error("{0}")]
    Transport(#[from] tokio_modbus::Error),
    /// The KSEM answered with a Modbus exception.
    #[error("exception {0}")]
    Exception(tokio_modbus::ExceptionCode),
    /// The reply carries another number of registers than asked for.
    #[error("reply has {got} registers, asked for {want}")]
    Length { got: usize, want: u16 },
    /// The reply is of another kind (function) than the request.
    #[error("reply of another kind than the request")]
    Unexpected,
}

impl PollError {
    /// The connection can no longer be trusted (a late reply could be taken for the next).
    fn breaks_connection(&self) -> bool {
        !matches!(self, PollError::Exception(_))
    }
}

/// What was last logged about the connection to the KSEM: each change is logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkLogged {
    /// Nothing yet.
    Unknown,
    /// "poller connected, reading regions".
    Up,
    /// "poller cannot connect" or "poller lost the connection".
    Down,
}

/// The upstream connection and when to try the next one.
struct Upstream {
    /// The connection, while up.
    conn: Option<Context>,
    /// Connection backoff: grows with every failed connect or broken connection, and is
    /// reset only once a region was read, so a KSEM that accepts and then fails is not
    /// hammered with reconnects.
    backoff: Backoff,
    /// No connect before this.
    reconnect_at: Instant,
    /// What was last logged about the connection.
    logged: LinkLogged,
}

impl Upstream {
    fn new() -> Self {
        Upstream {
            conn: None,
            backoff: Backoff::upstream(),
            reconnect_at: Instant::now(),
            logged: LinkLogged::Unknown,
        }
    }
}

/// The upstream poller.
pub struct Poller {
    /// The `poll:` section (timeout follows reloads).
    cfg: PollConfig,
    /// One schedule entry per region.
    tasks: Vec<Task>,
    /// Where complete regions are committed.
    image: Arc<Image>,
    /// The poll side's counters.
    stats: Arc<PollStats>,
    /// Reloaded configs (see [`Poller::follow`]).
    updates: Option<tokio::sync::watch::Receiver<Arc<Config>>>,
    /// Records every region read, when set.
    journal: Option<Arc<Journal>>,
}

impl Poller {
    /// Poll tasks for every polled region and every push region with `fallback_poll`.
    /// `None` when the config has no `poll:` section.
    pub fn new(config: &Config, image: Arc<Image>, stats: Arc<PollStats>) -> Option<Self> {
        let cfg = config.poll.clone()?;
        let now = Instant::now();
        let tasks = config
            .regions
            .iter()
            .filter_map(|r| {
                let region = image.region_index(&r.name)?;
                let (every, kind) = match (r.every, r.fallback_poll) {
                    (Some(e), _) if r.source.poll => (e, Kind::Regular),
                    (_, Some(f)) => (f, Kind::Fallback { max_age: r.max_age }),
                    _ => return None,
                };
                Some(Task {
                    slot: Slot::new(region, r, every, now),
                    kind,
                    retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                    feeding: None,
                })
            })
            .collect();
        Some(Poller {
            cfg,
            tasks,
            image,
            stats,
            updates: None,
            journal: None,
        })
    }

    /// Follow reloaded configs: each new one sets the poll intervals (`every`,
    /// `fallback_poll`), fallback `max_age` and `poll.timeout` from its next wake on, keeping
    /// the connection. Host, unit and which regions are polled stay as started.
    pub fn follow(mut self, updates: tokio::sync::watch::Receiver<Arc<Config>>) -> Self {
        self.updates = Some(updates);
        self
    }

    fn apply_update(&mut self) {
        let Some(rx) = &mut self.updates else { return };
        let cfg = Arc::clone(&rx.borrow_and_update());
        if let Some(p) = &cfg.poll {
            self.cfg.timeout = p.timeout;
        }
        for t in &mut self.tasks {
            let Some(r) = cfg.regions.iter().find(|r| r.name == t.slot.name) else {
                continue;
            };
            let every = match t.kind {
                Kind::Regular => r.every,
                Kind::Fallback { .. } => r.fallback_poll,
            };
            if let Some(every) = every {
                if every != t.slot.every && !t.slot.failing {
                    // Re-time the next read from the last one.
                    t.slot.next = t
                        .slot
                        .next
                        .checked_sub(t.slot.every)
                        .map_or(t.slot.next, |last| last + every);
                }
                t.slot.every = every;
            }
            if let Kind::Fallback { max_age } = &mut t.kind {
                *max_age = r.max_age;
            }
        }
    }

    /// Record every region read in `journal`.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Count a region read by result and journal it.
    fn note(&self, i: usize, started: Instant, done: Instant, result: Result<bool, &PollError>) {
        let Some(t) = self.tasks.get(i) else { return };
        let action = match result {
            Ok(true) => journal::Action::Polled {
                bytes: t.slot.count.saturating_mul(2),
            },
            Ok(false) => journal::Action::Superseded,
            Err(PollError::Timeout(_)) => {
                journal::Action::PollFailed(journal::PollFailure::Timeout)
            }
            Err(PollError::Exception(c)) => {
                journal::Action::PollFailed(journal::PollFailure::Exception(u8::from(*c)))
            }
            Err(_) => journal::Action::PollFailed(journal::PollFailure::Transport),
        };
        if let Ok(mut m) = self.stats.by_region.lock() {
            let c = m.entry(t.slot.name.clone()).or_default();
            match action {
                journal::Action::Polled { .. } => c.ok += 1,
                journal::Action::Superseded => c.superseded += 1,
                journal::Action::PollFailed(journal::PollFailure::Timeout) => c.timeout += 1,
                journal::Action::PollFailed(journal::PollFailure::Exception(_)) => c.exception += 1,
                _ => c.transport += 1,
            }
            if let Err(e) = result {
                c.last_error = Some((e.to_string(), std::time::SystemTime::now()));
            }
        }
        if let Some(j) = &self.journal {
            j.record(&journal::Record {
                at: started.into_std(),
                link: journal::Link::Poll,
                dir: journal::Dir::Out,
                unit: self.cfg.unit_id,
                function: 3,
                address: t.slot.start,
                count: t.slot.count,
                action,
                latency: done.saturating_duration_since(started),
            });
        }
    }

    /// When task `t` is next due, given the pushes seen so far.
    fn due(&self, t: &Task) -> Instant {
        match t.kind {
            Kind::Regular => t.slot.next,
            Kind::Fallback { max_age } => {
                let snap = self.image.load();
                let pushed = snap
                    .regions
                    .get(t.slot.region)
                    .and_then(|r| r.pushed)
                    .unwrap_or(self.image.created());
                // Due once pushes have been missing for longer than max_age.
                t.slot.next.max(pushed + max_age + Duration::from_millis(1))
            }
        }
    }

    /// Run until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        if self.tasks.is_empty() {
            cancel.cancelled().await;
            return;
        }
        let mut upstream = Upstream::new();
        loop {
            self.note_pushes_back();
            let Some(due) = self.tasks.iter().map(|t| self.due(t)).min() else {
                return;
            };
            let wake = if upstream.conn.is_none() {
                due.max(upstream.reconnect_at)
            } else {
                due
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
                more = config_changed(&mut self.updates) => {
                    if more {
                        self.apply_update();
                    } else {
                        self.updates = None;
                    }
                    continue;
                }
            }
            if self.tasks.iter().all(|t| self.due(t) > Instant::now()) {
                continue; // a push arrived meanwhile and postponed a fallback poll
            }
            if upstream.conn.is_none() && !self.reconnect(&mut upstream).await {
                continue;
            }
            if self.poll_due(&mut upstream, &cancel).await.is_break() {
                return;
            }
        }
    }

    /// Connect to the KSEM; `false` (after counting, logging and scheduling the retry) when
    /// that failed.
    async fn reconnect(&self, upstream: &mut Upstream) -> bool {
        match self.connect().await {
            Ok(c) => {
                upstream.conn = Some(c);
                self.stats.connected.store(true, Relaxed);
                self.stats.connects.fetch_add(1, Relaxed);
                if let Ok(mut g) = self.stats.connect_error.lock() {
                    *g = None;
                }
                tracing::debug!(host = %self.cfg.host, "poller connected");
                true
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Relaxed);
                let wait = upstream.backoff.next_delay();
                upstream.reconnect_at = Instant::now() + wait;
                if upstream.logged != LinkLogged::Down {
                    tracing::warn!(host = %self.cfg.host, "poller cannot connect: {e}; retrying with backoff up to 30s");
                    upstream.logged = LinkLogged::Down;
                }
                let msg = format!("connect {}: {e}", self.cfg.host);
                if let Ok(mut g) = self.stats.connect_error.lock() {
                    *g = Some(msg.clone());
                }
                self.set_error(msg);
                false
            }
        }
    }

    /// One poll round: read every region due now, in order, while the connection holds.
    /// Breaks when `cancel` fired.
    async fn poll_due(
        &mut self,
        upstream: &mut Upstream,
        cancel: &CancellationToken,
    ) -> ControlFlow<()> {
        let now = Instant::now();
        for i in 0..self.tasks.len() {
            let Some(ctx) = upstream.conn.as_mut() else {
                break;
            };
            if self.due(&self.tasks[i]) > now {
                continue;
            }
            let t = &self.tasks[i];
            let started = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => return ControlFlow::Break(()),
                r = read_region(ctx, t.slot.start, t.slot.count, self.cfg.timeout) => r,
            };
            let done = Instant::now();
            match result {
                Ok(words) => {
                    self.commit(i, &words, started, done);
                    self.link_up(upstream);
                    self.read_ok(i, done);
                }
                Err(e) => {
                    self.read_failed(i, started, done, &e);
                    if e.breaks_connection() {
                        self.link_lost(upstream, &e, done);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Commit the words read for task `i` to the image, and count what became of them.
    fn commit(&mut self, i: usize, words: &[u16], started: Instant, done: Instant) {
        let Some(t) = self.tasks.get(i) else { return };
        match self.image.commit_poll(t.slot.region, words, started, done) {
            Ok(true) => {
                self.note(i, started, done, Ok(true));
                self.stats.regions_ok.fetch_add(1, Relaxed);
                let Some(t) = self.tasks.get_mut(i) else {
                    return;
                };
                if matches!(t.kind, Kind::Fallback { .. }) {
                    self.stats.fallback_polls.fetch_add(1, Relaxed);
                    if t.feeding.is_none() {
                        tracing::info!(region = %t.slot.name, "the KSEM is not pushing region {}: serving it from the fallback poll every {:?}", t.slot.name, t.slot.every);
                    }
                    t.feeding = Some(done);
                }
            }
            // A push landed meanwhile: it is newer than what we read.
            Ok(false) => {
                self.note(i, started, done, Ok(false));
                self.stats.superseded.fetch_add(1, Relaxed);
            }
            // The region's length is fixed by the config; cannot happen.
            Err(e) => tracing::error!(region = %t.slot.name, "poll commit: {e}"),
        }
    }

    /// A region was read: the connection works (say so once), the backoff starts over.
    fn link_up(&self, upstream: &mut Upstream) {
        upstream.backoff.reset();
        if upstream.logged != LinkLogged::Up {
            tracing::info!(host = %self.cfg.host, "poller connected, reading regions");
            upstream.logged = LinkLogged::Up;
        }
    }

    /// The read broke the connection: drop it (say so once) and reconnect with backoff.
    fn link_lost(&self, upstream: &mut Upstream, e: &PollError, done: Instant) {
        if upstream.logged != LinkLogged::Down {
            tracing::warn!(host = %self.cfg.host, "poller lost the connection: {e}; reconnecting with backoff up to 30s");
            upstream.logged = LinkLogged::Down;
        }
        upstream.conn = None;
        upstream.reconnect_at = done + upstream.backoff.next_delay();
        self.stats.connected.store(false, Relaxed);
    }

    /// Task `i` was read: it recovered if it was failing; next read after its interval.
    fn read_ok(&mut self, i: usize, done: Instant) {
        let Some(t) = self.tasks.get_mut(i) else {
            return;
        };
        if t.slot.failing {
            tracing::info!(region = %t.slot.name, "poll of region recovered");
        }
        t.slot.failing = false;
        t.retry.reset();
        t.slot.next = done + t.slot.every;
    }

    /// Task `i`'s read failed: count it, warn once, retry with backoff (at most `every`).
    fn read_failed(&mut self, i: usize, started: Instant, done: Instant, e: &PollError) {
        self.note(i, started, done, Err(e));
        self.stats.regions_failed.fetch_add(1, Relaxed);
        let Some(t) = self.tasks.get_mut(i) else {
            return;
        };
        if !t.slot.failing {
            tracing::warn!(region = %t.slot.name, start = t.slot.start, count = t.slot.count, "poll failed: {e}");
        }
        t.slot.failing = true;
        t.slot.next = done + t.retry.next_delay().min(t.slot.every);
        let msg = format!("region {}: {e}", t.slot.name);
        self.set_error(msg);
    }

    /// Log once when the KSEM pushes again into a region the fallback poll was feeding.
    fn note_pushes_back(&mut self) {
        let snap = self.image.load();
        for t in &mut self.tasks {
            let Some(fed) = t.feeding else { continue };
            if snap
                .regions
                .get(t.slot.region)
                .and_then(|r| r.pushed)
                .is_some_and(|p| p > fed)
            {
                tracing::info!(region = %t.slot.name, "the KSEM pushes region {} again: fallback poll idle", t.slot.name);
                t.feeding = None;
            }
        }
    }

    fn set_error(&self, msg: String) {
        if let Ok(mut g) = self.stats.last_error.lock() {
            *g = Some(msg);
        }
    }

    async fn connect(&self) -> anyhow::Result<Context> {
        let stream = tokio::time::timeout(self.cfg.timeout, TcpStream::connect(&self.cfg.host))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {:?}", self.cfg.timeout))??;
        let _ = stream.set_nodelay(true);
        Ok(tokio_modbus::client::tcp::attach_slave(
            stream,
            Slave(self.cfg.unit_id),
        ))
    }
}

/// A new config arrived (`true`), or the sender is gone (`false`); never without updates.
async fn config_changed(updates: &mut Option<tokio::sync::watch::Receiver<Arc<Config>>>) -> bool {
    match updates {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Read `count` holding registers at `start` in chunks of at most 125; all or nothing.
pub async fn read_region(
    ctx: &mut Context,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, PollError> {
    let mut words = Vec::with_capacity(usize::from(count));
    let mut addr = u32::from(start);
    let end = addr + u32::from(count);
    while addr < end {
        let n = (end - addr).min(u32::from(MAX_READ)) as u16;
        let a = addr as u16;
        // `call` rather than `read_holding_registers`: the latter only debug-asserts the
        // length, which would panic the task on a short reply in debug builds.
        let response = tokio::time::timeout(timeout, ctx.call(Request::ReadHoldingRegisters(a, n)))
            .await
            .map_err(|_| PollError::Timeout(timeout))??
            .map_err(PollError::Exception)?;
        let Response::ReadHoldingRegisters(chunk) = response else {
            return Err(PollError::Unexpected);
        };
        if chunk.len() != usize::from(n) {
            return Err(PollError::Length {
                got: chunk.len(),
                want: n,
            });
        }
        words.extend_from_slice(&chunk);
        addr += u32::from(n);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// How the fake KSEM answers an FC03 request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `address` per register.
        Words,
        /// One register fewer than asked.
        Short,
        /// Exception 02.
        Exception,
        /// Nothing.
        Silent,
    }

    /// A Modbus TCP slave on `s`; counts the requests (and their sizes) it got.
    async fn ksem(mut s: DuplexStream, answer: Answer, seen: Arc<Mutex<Vec<u16>>>) {
        let mut req = [0u8; 12];
        while s.read_exact(&mut req).await.is_ok() {
            let [t0, t1, _, _, _, _, unit, _fc, ah, al, nh, nl] = req;
            let (a, n) = (u16::from_be_bytes([ah, al]), u16::from_be_bytes([nh, nl]));
            if let Ok(mut v) = seen.lock() {
                v.push(n);
            }
            let pdu: Vec<u8> = match answer {
                Answer::Silent => continue,
                Answer::Exception => vec![0x83, 0x02],
                Answer::Words | Answer::Short => {
                    let n = if matches!(answer, Answer::Short) {
                        n - 1
                    } else {
                        n
                    };
                    let mut p = vec![0x03, (n * 2) as u8];
                    for r in a..a + n {
                        p.extend_from_slice(&r.to_be_bytes());
                    }
                    p
                }
            };
            let len = (pdu.len() + 1) as u16;
            let mut out = vec![t0, t1, 0, 0];
            out.extend_from_slice(&len.to_be_bytes());
            out.push(unit);
            out.extend_from_slice(&pdu);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn client(answer: Answer) -> (Context, Arc<Mutex<Vec<u16>>>) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(ksem(theirs, answer, Arc::clone(&seen)));
        (
            tokio_modbus::client::tcp::attach_slave(ours, Slave(1)),
            seen,
        )
    }

    const T: Duration = Duration::from_millis(500);

    #[tokio::test(start_paused = true)]
    async fn a_region_is_read_in_chunks_of_at_most_125_and_assembled_in_order() {
        let (mut ctx, seen) = client(Answer::Words);
        let words = read_region(&mut ctx, 1000, 300, T)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(words, (1000..1300).collect::<Vec<u16>>());
        assert_eq!(
            *seen.lock().unwrap_or_else(|p| p.into_inner()),
            vec![125, 125, 50]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_replies_exceptions_and_silence_are_errors_not_data() {
        let (mut ctx, _) = client(Answer::Short);
        let e = read_region(&mut ctx, 0, 10, T).await.err();
        assert!(
            matches!(e, Some(PollError::Length { got: 9, want: 10 })),
            "{e:?}"
        );
        assert!(e.is_some_and(|e| e.breaks_connection()));

        let (mut ctx, _) = client(Answer::Exception);
        let e = read_region(&mut ctx, 0, 10, T).await.err();
        assert!(matches!(e, Some(PollError::Exception(_))), "{e:?}");
        assert!(
            e.is_some_and(|e| !e.breaks_connection()),
            "the KSEM answered: keep the connection"
        );

        let (mut ctx, _) = client(Answer::Silent);
        let e = read_region(&mut ctx, 0, 10, T).await.err();
        assert!(matches!(e, Some(PollError::Timeout(t)) if t == T), "{e:?}");
    }
}
