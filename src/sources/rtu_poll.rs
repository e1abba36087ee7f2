//! The RTU poll source: an RTU master on a device's serial bus (KSTAR inverters).
//!
//! Owns the bus: one task, one request in flight, a configured silence (`gap`) between any
//! two requests. It reads every `rtu_poll` region with its function code (FC04 input, FC03
//! holding) in requests of at most 125 registers, commits a region to the [`Image`] only when
//! every chunk arrived, retries reads that got no valid reply, and after `offline_after`
//! failed reads in a row declares the device offline: regular polls stop and a single probe
//! is sent with backoff (1 s … `probe_max`) until the device answers again. Control writes
//! ([`WriteJob`]) are taken from a queue, at most one between two polls (so polling keeps its
//! rate under any write load), each sent at most once and only if it waited no longer than
//! `write_timeout`; their real outcome goes back to the client. Nothing is sent once
//! shutdown began. It touches the serial stream, the image and its own counters.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Function, RtuPollConfig, MAX_READ};
use crate::control::writes::{WriteJob, WriteOutcome, FC_WRITE_SINGLE};
use crate::image::Image;
use crate::link::reopen::{self, Backoff, Device};
use crate::link::rtu_master::{ReplyError, RtuMaster};
use crate::ops::heartbeat::HEARTBEAT;

/// Counters of the RTU poll side.
#[derive(Debug, Default)]
pub struct RtuPollStats {
    /// The device answers (false before the first answer and while offline).
    pub online: AtomicBool,
    /// Requests put on the bus (reads, writes, probes).
    pub requests: AtomicU64,
    /// Requests without a reply within `timeout`.
    pub timeouts: AtomicU64,
    /// Exception replies (the device answered, but refused).
    pub exceptions: AtomicU64,
    /// Replies with a bad CRC or of the wrong shape.
    pub bad_frames: AtomicU64,
    /// Reads repeated after a timeout or bad frame.
    pub retries: AtomicU64,
    /// Regions read completely and committed.
    pub regions_ok: AtomicU64,
    /// Region reads that failed after their retries.
    pub regions_failed: AtomicU64,
    /// Writes the device confirmed.
    pub writes_ok: AtomicU64,
    /// Writes the device refused (exception) or did not answer, or refused while offline.
    pub writes_failed: AtomicU64,
    /// Writes whose client had gone before the bus was free: not sent.
    pub writes_abandoned: AtomicU64,
    /// Writes dropped unsent: older than `rtu_poll.write_timeout` when the bus was free.
    pub writes_expired: AtomicU64,
    /// Probes of an offline device.
    pub probes: AtomicU64,
    /// Times the device went offline.
    pub went_offline: AtomicU64,
    /// The last failed region and why, for the status page.
    pub last_error: Mutex<Option<String>>,
    /// Beats of the polling loop (at least every [`HEARTBEAT`], also while the device is
    /// missing): the watchdog's and the status page's proof that the poller runs.
    pub heartbeat: AtomicU64,
    /// The serial device is open (false while it is missing and the loop waits to reopen).
    pub bus_open: AtomicBool,
    /// Times `rtu_poll.device` was opened (not counted for test streams).
    pub device_opens: AtomicU64,
    /// Times it could not be opened, or an open device failed or vanished.
    pub device_failures: AtomicU64,
}

#[derive(Debug)]
struct Task {
    /// The region's index in the image.
    region: usize,
    /// The region's name, for logs.
    name: String,
    /// First register.
    start: u16,
    /// Registers in the region.
    count: u16,
    /// Read function code (3 or 4).
    fc: u8,
    /// Poll interval.
    every: Duration,
    /// When the region is next due.
    next: Instant,
    /// The last read failed (logged once per streak).
    failing: bool,
}

/// Bus state.
#[derive(Debug)]
enum Link {
    /// Answering; consecutive failed reads so far.
    Online { failures: u32 },
    /// Silent: only probes, at `next_probe`.
    Offline { next_probe: Instant },
}

/// The RTU poller. Keeps its schedule and write queue across re-opens of the port.
pub struct RtuPoller {
    /// The `rtu_poll:` section.
    cfg: RtuPollConfig,
    /// One schedule entry per region.
    tasks: Vec<Task>,
    /// Where complete regions are committed.
    image: Arc<Image>,
    /// The poll side's counters.
    stats: Arc<RtuPollStats>,
    /// LAN clients' writes, taken between polls.
    writes: mpsc::Receiver<WriteJob>,
    /// Whether the device answers.
    link: Link,
    /// Delay between probes of an offline device.
    probe: Backoff,
    /// When the bus last went quiet (end of the last reply or timeout).
    quiet_since: Option<Instant>,
    /// Logged `online`; `None` before the first verdict.
    said_online: Option<bool>,
}

impl RtuPoller {
    /// A poller for every `rtu_poll` region; `None` without an `rtu_poll:` section.
    pub fn new(
        config: &Config,
        image: Arc<Image>,
        stats: Arc<RtuPollStats>,
        writes: mpsc::Receiver<WriteJob>,
    ) -> Option<Self> {
        let cfg = config.rtu_poll.clone()?;
        let now = Instant::now();
        let tasks = config
            .regions
            .iter()
            .filter(|r| r.source.rtu_poll)
            .filter_map(|r| {
                Some(Task {
                    region: image.region_index(&r.name)?,
                    name: r.name.clone(),
                    start: r.start,
                    count: r.count,
                    fc: r.function.unwrap_or(Function::Holding).read_code(),
                    every: r.every?,
                    next: now,
                    failing: false,
                })
            })
            .collect();
        let probe = Backoff::new(Duration::from_secs(1), cfg.probe_max);
        Some(RtuPoller {
            cfg,
            tasks,
            image,
            stats,
            writes,
            link: Link::Online { failures: 0 },
            probe,
            quiet_since: None,
            said_online: None,
        })
    }

    /// Open the configured serial device and poll it; re-open with backoff when it cannot be
    /// opened or fails, forever (whatever the write configuration). Runs until `cancel`.
    pub async fn run_device(mut self, cancel: CancellationToken) {
        let stats = Arc::clone(&self.stats);
        let counters = reopen::Counters {
            opens: &stats.device_opens,
            failures: &stats.device_failures,
            heartbeat: &stats.heartbeat,
        };
        reopen::run(&mut Bus(&mut self), counters, &cancel).await;
    }

    /// Poll the device on `stream` until `cancel` fires (`Ok`) or the stream fails (`Err`).
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let mut master = RtuMaster::new(stream, self.cfg.timeout)
            .with_late_reply_window(self.cfg.late_reply_window);
        let mut writes_open = true;
        // A write went on the bus since the last poll: a due poll goes before the next write.
        let mut wrote = false;
        self.stats.bus_open.store(true, Relaxed);
        loop {
            // Polls and probes return early on cancel without rescheduling; without this
            // check the loop would send them again and again instead of stopping.
            if cancel.is_cancelled() {
                return Ok(());
            }
            self.stats.heartbeat.fetch_add(1, Relaxed);
            let now = Instant::now();
            let probe_due = matches!(self.link, Link::Offline { next_probe } if next_probe <= now);
            let poll_due = match self.link {
                Link::Online { .. } => self.due_task(now),
                Link::Offline { .. } => None,
            };
            // At most one write between two polls of the schedule, so polling keeps its
            // rate under any write load; a write waits at most one region poll.
            if !wrote || (poll_due.is_none() && !probe_due) {
                if let Ok(job) = self.writes.try_recv() {
                    wrote = true;
                    let r = self.write(&mut master, job, cancel).await;
                    stop_on_cancel(r, cancel)?;
                    continue;
                }
            }
            wrote = false;
            if probe_due {
                let r = self.probe(&mut master, cancel).await;
                stop_on_cancel(r, cancel)?;
                continue;
            }
            if let Some(i) = poll_due {
                let r = self.poll_task(&mut master, i, cancel).await;
                stop_on_cancel(r, cancel)?;
                continue;
            }
            let wake = match self.link {
                Link::Offline { next_probe } => next_probe,
                Link::Online { .. } => self
                    .tasks
                    .iter()
                    .map(|t| t.next)
                    .min()
                    .unwrap_or(now + Duration::from_secs(3600)),
            }
            .min(now + HEARTBEAT);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake) => {}
                job = self.writes.recv(), if writes_open => match job {
                    Some(job) => {
                        wrote = true;
                        let r = self.write(&mut master, job, cancel).await;
                        stop_on_cancel(r, cancel)?;
                    }
                    None => writes_open = false,
                },
            }
        }
    }

    fn due_task(&self, now: Instant) -> Option<usize> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.next <= now)
            .min_by_key(|(_, t)| t.next)
            .map(|(i, _)| i)
    }

    /// Keep the configured silence since the bus last went quiet.
    async fn wait_gap(&self, cancel: &CancellationToken) {
        if let Some(q) = self.quiet_since {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep_until(q + self.cfg.gap) => {}
            }
        }
    }

    /// One request with the gap before it; counts the outcome.
    async fn read_once<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        fc: u8,
        address: u16,
        count: u16,
        cancel: &CancellationToken,
    ) -> Result<Vec<u16>, ReplyError> {
        self.wait_gap(cancel).await;
        // Shutdown began during the gap: nothing more goes on the bus.
        if cancel.is_cancelled() {
            return Err(ReplyError::Io(shutdown()));
        }
        self.stats.requests.fetch_add(1, Relaxed);
        let r = master.read(self.cfg.unit_id, fc, address, count).await;
        self.quiet_since = Some(Instant::now());
        self.count_reply(&r);
        r
    }

    fn count_reply<T>(&self, r: &Result<T, ReplyError>) {
        match r {
            Ok(_) | Err(ReplyError::Io(_)) => {}
            Err(ReplyError::Timeout) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
            }
            Err(ReplyError::Exception(_)) => {
                self.stats.exceptions.fetch_add(1, Relaxed);
            }
            Err(ReplyError::BadCrc | ReplyError::BadFrame(_)) => {
                self.stats.bad_frames.fetch_add(1, Relaxed);
            }
        }
    }

    /// A read with retries: exceptions (the device answered) and I/O errors are not retried.
    async fn read_retrying<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        fc: u8,
        address: u16,
        count: u16,
        cancel: &CancellationToken,
    ) -> Result<Vec<u16>, ReplyError> {
        let mut attempt = 0;
        loop {
            let r = self.read_once(master, fc, address, count, cancel).await;
            match r {
                Err(ReplyError::Timeout | ReplyError::BadCrc | ReplyError::BadFrame(_))
                    if attempt < self.cfg.retries && !cancel.is_cancelled() =>
                {
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Relaxed);
                }
                other => return other,
            }
        }
    }

    async fn poll_task<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        i: usize,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let Some(t) = self.tasks.get(i) else {
            return Ok(());
        };
        let (start, count, fc) = (t.start, t.count, t.fc);
        let started = Instant::now();
        let mut words = Vec::with_capacity(usize::from(count));
        let mut addr = u32::from(start);
        let end = addr + u32::from(count);
        let mut result = Ok(());
        while addr < end {
            let n = (end - addr).min(u32::from(MAX_READ)) as u16;
            match self.read_retrying(master, fc, addr as u16, n, cancel).await {
                Ok(chunk) => words.extend_from_slice(&chunk),
                Err(ReplyError::Io(e)) => return Err(e),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            addr += u32::from(n);
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
        let done = Instant::now();
        match result {
            Ok(()) => {
                if let Some(t) = self.tasks.get(i) {
                    if let Err(e) = self.image.commit_poll(t.region, &words, started, done) {
                        tracing::error!(region = %t.name, "RTU poll commit: {e}");
                    }
                }
                self.stats.regions_ok.fetch_add(1, Relaxed);
                self.answered();
                if let Some(t) = self.tasks.get_mut(i) {
                    if t.failing {
                        tracing::info!(region = %t.name, "RTU poll of region recovered");
                    }
                    t.failing = false;
                    t.next = done + t.every;
                }
            }
            Err(e) => {
                self.stats.regions_failed.fetch_add(1, Relaxed);
                let silent = !matches!(e, ReplyError::Exception(_));
                if let Some(t) = self.tasks.get_mut(i) {
                    if !t.failing {
                        tracing::warn!(region = %t.name, start = t.start, count = t.count, fc = t.fc, "RTU poll failed: {e}");
                    }
                    t.failing = true;
                    t.next = done + t.every;
                    let msg = format!("region {}: {e}", t.name);
                    self.set_error(msg);
                }
                if silent {
                    self.failed_read(done);
                } else {
                    self.answered();
                }
            }
        }
        Ok(())
    }

    /// A probe of an offline device: one register of the first region.
    async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let Some((fc, start)) = self.tasks.first().map(|t| (t.fc, t.start)) else {
            self.link = Link::Online { failures: 0 };
            return Ok(());
        };
        self.stats.probes.fetch_add(1, Relaxed);
        let r = self.read_once(master, fc, start, 1, cancel).await;
        match r {
            // An exception is an answer too: the device is back.
            Ok(_) | Err(ReplyError::Exception(_)) => {
                self.answered();
                let now = Instant::now();
                for t in &mut self.tasks {
                    t.next = now;
                }
            }
            Err(ReplyError::Io(e)) => return Err(e),
            Err(_) => {
                self.link = Link::Offline {
                    next_probe: Instant::now() + self.probe.next_delay(),
                };
            }
        }
        Ok(())
    }

    /// The device answered something: it is online.
    fn answered(&mut self) {
        self.link = Link::Online { failures: 0 };
        self.probe.reset();
        self.stats.online.store(true, Relaxed);
        if self.said_online != Some(true) {
            tracing::info!(device = %self.cfg.device, unit = self.cfg.unit_id, "RTU device online");
            self.said_online = Some(true);
        }
    }

    /// A read got no valid reply (after its retries).
    fn failed_read(&mut self, now: Instant) {
        let failures = match self.link {
            Link::Online { failures } => failures + 1,
            Link::Offline { .. } => return,
        };
        if failures >= self.cfg.offline_after {
            self.go_offline(now, failures);
        } else {
            self.link = Link::Online { failures };
        }
    }

    fn go_offline(&mut self, now: Instant, failures: u32) {
        self.stats.went_offline.fetch_add(1, Relaxed);
        self.stats.online.store(false, Relaxed);
        let wait = self.probe.next_delay();
        self.link = Link::Offline {
            next_probe: now + wait,
        };
        if self.said_online != Some(false) {
            tracing::warn!(device = %self.cfg.device, unit = self.cfg.unit_id, failures, probe_max = ?self.cfg.probe_max, "RTU device offline: no valid reply; probing with backoff");
            self.said_online = Some(false);
        }
    }

    /// The port is gone: offline until it is open again and the device answers.
    fn set_offline_now(&mut self) {
        self.stats.online.store(false, Relaxed);
        self.link = Link::Online { failures: 0 };
        self.probe.reset();
        let now = Instant::now();
        for t in &mut self.tasks {
            t.next = now;
        }
        self.quiet_since = None;
        self.said_online = Some(false);
    }

    fn refuse_offline(&self, job: WriteJob) {
        self.stats.writes_failed.fetch_add(1, Relaxed);
        let _ = job.reply.send(WriteOutcome::Offline);
    }

    /// Execute one write on the bus (never retried: the client decides).
    async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        job: WriteJob,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        if job.reply.is_closed() {
            self.stats.writes_abandoned.fetch_add(1, Relaxed);
            tracing::info!(
                address = job.address,
                "write not sent: the client gave up waiting"
            );
            return Ok(());
        }
        if matches!(self.link, Link::Offline { .. }) {
            self.refuse_offline(job);
            return Ok(());
        }
        self.wait_gap(cancel).await;
        // Shutdown began during the gap: the write is not sent (its client gets 0B).
        if cancel.is_cancelled() {
            return Ok(());
        }
        // The bus is free now; a write that waited too long is dropped, never sent late
        // (its client may have given up and retried: a command goes out at most once).
        let age = job.queued_at.elapsed();
        if age > self.cfg.write_timeout {
            self.stats.writes_expired.fetch_add(1, Relaxed);
            tracing::warn!(
                address = job.address,
                waited = ?age,
                write_timeout = ?self.cfg.write_timeout,
                "write not sent: it waited longer than rtu_poll.write_timeout for the bus"
            );
            let _ = job.reply.send(WriteOutcome::Expired);
            return Ok(());
        }
        self.stats.requests.fetch_add(1, Relaxed);
        let unit = self.cfg.unit_id;
        let r = match (job.fc, job.values.as_slice()) {
            (FC_WRITE_SINGLE, [v]) => master.write_single(unit, job.address, *v).await,
            (FC_WRITE_SINGLE, _) => Err(ReplyError::BadFrame("FC06 writes one value".into())),
            (_, values) => master.write_multiple(unit, job.address, values).await,
        };
        let now = Instant::now();
        self.quiet_since = Some(now);
        self.count_reply(&r);
        let outcome = match r {
            Ok(()) => {
                self.stats.writes_ok.fetch_add(1, Relaxed);
                self.answered();
                // Read the written registers back at the next chance.
                let end = u32::from(job.address) + job.values.len() as u32;
                for t in &mut self.tasks {
                    if u32::from(t.start) < end
                        && u32::from(job.address) < u32::from(t.start) + u32::from(t.count)
                    {
                        t.next = now;
                    }
                }
                WriteOutcome::Done
            }
            Err(ReplyError::Exception(c)) => {
                self.stats.writes_failed.fetch_add(1, Relaxed);
                self.answered();
                WriteOutcome::Exception(c)
            }
            Err(ReplyError::Io(e)) => {
                self.stats.writes_failed.fetch_add(1, Relaxed);
                let _ = job.reply.send(WriteOutcome::NoReply);
                return Err(e);
            }
            Err(_) => {
                self.stats.writes_failed.fetch_add(1, Relaxed);
                self.failed_read(now);
                WriteOutcome::NoReply
            }
        };
        let _ = job.reply.send(outcome);
        Ok(())
    }

    fn set_error(&self, msg: String) {
        if let Ok(mut g) = self.stats.last_error.lock() {
            *g = Some(msg);
        }
    }
}

/// The error a request gets when shutdown began before it was sent.
fn shutdown() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "shutdown: not sent")
}

/// A step's result, but `Ok` once shutdown began (its early return is no failure).
fn stop_on_cancel(r: io::Result<()>, cancel: &CancellationToken) -> io::Result<()> {
    match r {
        Err(_) if cancel.is_cancelled() => Ok(()),
        r => r,
    }
}

/// The poller on its bus device (`rtu_poll.device`: a tty or a `tcp://` converter), for
/// the [`reopen`] loop.
struct Bus<'a>(&'a mut RtuPoller);

impl Device for Bus<'_> {
    type Stream = crate::link::line::Line;
    fn label(&self) -> &'static str {
        "RTU bus"
    }
    fn path(&self) -> String {
        self.0.cfg.device.clone()
    }
    async fn open(&mut self) -> anyhow::Result<Self::Stream> {
        crate::link::line::open(&self.0.cfg.line()).await
    }
    async fn serve(&mut self, stream: Self::Stream, cancel: &CancellationToken) -> io::Result<()> {
        self.0.serve(stream, cancel).await
    }
    fn gone(&mut self) {
        self.0.stats.bus_open.store(false, Relaxed);
        self.0.set_offline_now();
    }
    /// Writes queued meanwhile get 0B at once instead of waiting for the port. A closed
    /// queue (no `writable:` list, so no sender) leaves only the timer to end the wait.
    async fn idle(&mut self) {
        match self.0.writes.recv().await {
            Some(job) => self.0.refuse_offline(job),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::writes::WriteOutcome;
    use crate::modbus::crc::append_crc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::oneshot;

    const YAML: &str = "rtu_poll: {device: /dev/test, timeout: 200ms, gap: 2ms, retries: 1, offline_after: 2, probe_max: 4s}
tcp_server: {listen: '127.0.0.1:0'}
regions:
  - {name: live, start: 100, count: 4, function: holding, source: rtu_poll, every: 1s}
";

    /// A poller over `YAML`, its stats and the write queue's sender.
    fn poller() -> (
        RtuPoller,
        Arc<Image>,
        Arc<RtuPollStats>,
        mpsc::Sender<WriteJob>,
    ) {
        let cfg = crate::config::parse(YAML, "test")
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let image = Arc::new(Image::new(&cfg.regions));
        let stats = Arc::new(RtuPollStats::default());
        let (tx, rx) = mpsc::channel(4);
        let p = RtuPoller::new(&cfg, Arc::clone(&image), Arc::clone(&stats), rx)
            .unwrap_or_else(|| panic!("rtu_poll configured"));
        (p, image, stats, tx)
    }

    /// A device on the other end of `s`: answers reads of unit 1 with `address + 1000` per
    /// register and confirms single writes, while `answering`; counts the requests.
    async fn device(mut s: DuplexStream, answering: Arc<AtomicBool>, seen: Arc<AtomicU64>) {
        let mut req = [0u8; 8];
        while s.read_exact(&mut req).await.is_ok() {
            seen.fetch_add(1, Relaxed);
            if !answering.load(Relaxed) {
                continue;
            }
            let [unit, fc, ah, al, nh, nl, ..] = req;
            let mut out = vec![unit, fc];
            match fc {
                3 | 4 => {
                    let (a, n) = (u16::from_be_bytes([ah, al]), u16::from_be_bytes([nh, nl]));
                    out.push((n * 2) as u8);
                    for r in a..a + n {
                        out.extend_from_slice(&(r + 1000).to_be_bytes());
                    }
                }
                _ => out.extend_from_slice(&[ah, al, nh, nl]),
            }
            let len = out.len();
            out.extend_from_slice(&[0, 0]);
            append_crc(&mut out, len);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// An FC06 write of `value` at `address`, and where its outcome arrives.
    fn write_job(address: u16, value: u16) -> (WriteJob, oneshot::Receiver<WriteOutcome>) {
        let (reply, rx) = oneshot::channel();
        let job = WriteJob::new(FC_WRITE_SINGLE, address, vec![value], reply);
        (job, rx)
    }

    fn words(image: &Image) -> Option<Vec<u16>> {
        let snap = image.load();
        image.age(&snap, 0, Instant::now())?;
        image.read_words_in(&snap, image.table_for(3), 100, 4)
    }

    #[tokio::test(start_paused = true)]
    async fn polls_commits_and_beats_while_idle_even_without_a_write_queue() {
        let (mut p, image, stats, tx) = poller();
        drop(tx); // no `writable:`: the queue is closed from the start
        let (ours, theirs) = tokio::io::duplex(256);
        let answering = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(device(theirs, Arc::clone(&answering), Arc::clone(&seen)));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            stop.cancel();
        });
        p.serve(ours, &cancel)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(words(&image), Some(vec![1100, 1101, 1102, 1103]));
        assert!(stats.online.load(Relaxed));
        assert!(stats.bus_open.load(Relaxed));
        // Every 1 s for 3.5 s: at 0, 1, 2, 3.
        assert_eq!(stats.regions_ok.load(Relaxed), 4);
        assert!(stats.heartbeat.load(Relaxed) >= 4, "beats between polls");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_goes_offline_gets_probed_and_refuses_writes() {
        let (mut p, _image, stats, tx) = poller();
        let (ours, theirs) = tokio::io::duplex(256);
        let answering = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(device(theirs, Arc::clone(&answering), Arc::clone(&seen)));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move {
            let r = p.serve(ours, &cancel).await;
            (p, r)
        });
        // Two failed polls (each with one retry) → offline.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(stats.went_offline.load(Relaxed), 1);
        assert!(!stats.online.load(Relaxed));
        assert_eq!(stats.retries.load(Relaxed), 2);
        // A write while offline gets `Offline` at once, nothing sent.
        let before = seen.load(Relaxed);
        let (job, rx) = write_job(100, 7);
        tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
        let outcome = rx.await.unwrap_or_else(|_| panic!("answered"));
        assert!(matches!(outcome, WriteOutcome::Offline), "{outcome:?}");
        assert_eq!(seen.load(Relaxed), before, "nothing sent for it");
        // Probes follow with backoff; once the device answers it is online again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(stats.probes.load(Relaxed) >= 2);
        answering.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            stats.online.load(Relaxed),
            "back online after a probe answered"
        );
        assert!(stats.regions_ok.load(Relaxed) >= 1);
        task.abort();
    }

    // Real clock: a loop that spins never lets a paused clock reach the timeout below.
    #[tokio::test]
    async fn a_write_is_sent_its_outcome_goes_back_and_cancel_stops_the_loop() {
        let (mut p, _image, stats, tx) = poller();
        let (ours, theirs) = tokio::io::duplex(256);
        let answering = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(device(theirs, answering, Arc::clone(&seen)));
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { p.serve(ours, &c).await });
        let (job, rx) = write_job(101, 9);
        tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
        let outcome = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap_or_else(|_| panic!("answered in time; seen {}", seen.load(Relaxed)))
            .unwrap_or_else(|_| panic!("answered"));
        assert!(matches!(outcome, WriteOutcome::Done), "{outcome:?}");
        assert_eq!(stats.writes_ok.load(Relaxed), 1);
        // Cancel while the read-back of the written register is due: the loop stops (it
        // used to resend that poll forever, since a cancelled poll is not rescheduled).
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("the poller stops on cancel"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_device_is_missing_writes_are_refused_and_a_closed_queue_waits() {
        // With a queue: a queued write is refused at once.
        let (mut p, _image, stats, tx) = poller();
        let (job, rx) = write_job(100, 1);
        tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
        let mut bus = Bus(&mut p);
        bus.idle().await;
        let outcome = rx.await.unwrap_or_else(|_| panic!("answered"));
        assert!(matches!(outcome, WriteOutcome::Offline), "{outcome:?}");
        assert_eq!(stats.writes_failed.load(Relaxed), 1);
        // Without one (issue 15): idle work never completes, so only the reopen timer (or
        // cancel) ends the wait; it does not return at once over and over, nor for good.
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_secs(60), bus.idle()).await;
        assert!(
            waited.is_err(),
            "a closed queue leaves the wait to the timer"
        );
    }
}
