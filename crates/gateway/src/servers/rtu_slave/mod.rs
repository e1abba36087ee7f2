//! The RTU slave: serves the inverter from the image, never from upstream.
//!
//! Owns one serial stream (any `AsyncRead + AsyncWrite`, so tests drive it with in-memory
//! pipes and a paused clock) and the timing on it: silence detection for partial frames
//! (`frame_timeout`) and the minimum turnaround before a reply. Frames come from the pure
//! [`Framer`], answers from [`answer::answer`]; this module only reads the [`Image`].

pub mod answer;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RtuConfig;
use crate::image::Image;
use crate::link::echo::EchoFilter;
use crate::ops::journal::{self, Journal};
use crate::ops::stats::{FunctionCounters, LatencyHistogram};
use airbridge_modbus::model::Answer;
use airbridge_modbus::rtu_frame::{Frame, Framer, FramerStats, MAX_ADU};
use answer::SlaveParams;

/// Counters of the RTU side, cumulative over reconnects of the serial port.
#[derive(Debug, Default)]
pub struct RtuStats {
    /// Requests for our unit, answered with data.
    pub replies: AtomicU64,
    /// Requests for our unit, answered with an exception (any code).
    pub exceptions: AtomicU64,
    /// Exception replies by code 1..=4 (index = code).
    pub exception_codes: [AtomicU64; 5],
    /// Requests left unanswered because a touched region was stale (policy silence).
    pub silent_stale: AtomicU64,
    /// Requests left unanswered because the image was not filled yet.
    pub silent_warmup: AtomicU64,
    /// Frames for other units, and responses seen on the bus.
    pub foreign: AtomicU64,
    /// Broadcast frames (unit 0): never answered.
    pub broadcast: AtomicU64,
    /// Frames with a bad CRC.
    pub crc_errors: AtomicU64,
    /// Bytes skipped while looking for a frame.
    pub garbage_bytes: AtomicU64,
    /// Partial frames dropped after `frame_timeout` of silence.
    pub partial_discarded: AtomicU64,
    /// Frames longer than an ADU.
    pub oversize: AtomicU64,
    /// Bytes sent as replies.
    pub tx_bytes: AtomicU64,
    /// Our own replies echoed back by the adapter (and ignored).
    pub echoes: AtomicU64,
    /// Beats of the serving loop (every [`crate::ops::heartbeat::HEARTBEAT`], also while the bus is
    /// idle) and of the device retry loop: the watchdog's proof that the loop runs.
    pub heartbeat: AtomicU64,
    /// Request's last byte received → reply written, per reply.
    pub latency: LatencyHistogram,
    /// Requests for our unit by function code and result.
    pub requests_by_function: FunctionCounters,
    /// Times the serial device was opened (`rtu.device`; not counted for test streams).
    pub device_opens: AtomicU64,
    /// Times the device could not be opened, or an open device failed or vanished.
    pub device_failures: AtomicU64,
    /// Why the device last failed to open or ended (the status names it; cleared on open).
    pub device_error: std::sync::Mutex<Option<String>>,
}

impl RtuStats {
    fn add_framer(&self, now: FramerStats, last: &mut FramerStats) {
        self.foreign.fetch_add(now.foreign - last.foreign, Relaxed);
        self.broadcast
            .fetch_add(now.broadcast - last.broadcast, Relaxed);
        self.crc_errors
            .fetch_add(now.crc_errors - last.crc_errors, Relaxed);
        self.garbage_bytes
            .fetch_add(now.garbage_bytes - last.garbage_bytes, Relaxed);
        self.partial_discarded
            .fetch_add(now.partial_discarded - last.partial_discarded, Relaxed);
        self.oversize
            .fetch_add(now.oversize - last.oversize, Relaxed);
        *last = now;
    }

    fn count(&self, outcome: Answer) {
        match outcome {
            Answer::Data { .. } => self.replies.fetch_add(1, Relaxed),
            Answer::Exception { code } => {
                if let Some(c) = self.exception_codes.get(usize::from(code)) {
                    c.fetch_add(1, Relaxed);
                }
                self.exceptions.fetch_add(1, Relaxed)
            }
            Answer::SilentStale => self.silent_stale.fetch_add(1, Relaxed),
            Answer::SilentWarmup => self.silent_warmup.fetch_add(1, Relaxed),
        };
    }
}

/// Settings of the serving loop.
#[derive(Debug, Clone, Copy)]
pub struct SlaveTiming {
    /// Minimum silence between a request and our reply.
    pub turnaround: Duration,
    /// Silence that ends a partial frame.
    pub frame_timeout: Duration,
    /// Time of one character on the wire (for how long an echo of our reply can arrive).
    pub char_time: Duration,
    /// Sub-millisecond turnaround (see [`RtuSlave::with_tokio_timer`]).
    pub precise: bool,
}

/// An RTU slave over the image.
#[derive(Debug, Clone)]
pub struct RtuSlave {
    /// What the answers depend on (unit, FC04).
    params: SlaveParams,
    /// Timing on the line.
    timing: SlaveTiming,
    /// Where answers come from.
    image: Arc<Image>,
    /// The RTU side's counters.
    stats: Arc<RtuStats>,
    /// Records every request and answer, when set.
    journal: Option<Arc<Journal>>,
}

impl RtuSlave {
    pub fn new(cfg: &RtuConfig, image: Arc<Image>, stats: Arc<RtuStats>) -> Self {
        RtuSlave {
            params: SlaveParams {
                unit: cfg.unit_id,
                input_registers: cfg.input_registers,
            },
            timing: SlaveTiming {
                turnaround: cfg.turnaround,
                frame_timeout: cfg.frame_timeout,
                char_time: Duration::from_nanos(
                    1_000_000_000 * u64::from(cfg.bits_per_char()) / u64::from(cfg.baud.max(1)),
                ),
                precise: true,
            },
            image,
            stats,
            journal: None,
        }
    }

    pub fn stats(&self) -> &Arc<RtuStats> {
        &self.stats
    }

    /// Record every frame (after its reply is written) in `journal`.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Journal a frame received at `at`.
    #[allow(clippy::too_many_arguments)]
    fn journal(
        &self,
        at: Instant,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        action: journal::Action,
        latency: Duration,
    ) {
        if let Some(j) = &self.journal {
            j.record(&journal::Record::received(
                journal::Link::Rtu,
                at.into_std(),
                unit,
                (function, address, count),
                action,
                latency,
            ));
        }
    }

    /// Count the framer's new counters and journal its drops (CRC, partial, garbage,
    /// oversize; foreign and broadcast frames are journalled with their unit in `handle`).
    fn note_framer(&self, now: FramerStats, last: &mut FramerStats, at: Instant) {
        if self.journal.is_some() {
            use journal::{Action::Dropped, DropReason};
            let unit = self.params.unit;
            for (new, reason) in [
                (now.crc_errors - last.crc_errors, DropReason::Crc),
                (
                    now.partial_discarded - last.partial_discarded,
                    DropReason::Partial,
                ),
                (now.oversize - last.oversize, DropReason::Oversize),
            ] {
                for _ in 0..new.min(8) {
                    self.journal(at, unit, 0, 0, 0, Dropped(reason), Duration::ZERO);
                }
            }
            let garbage = now.garbage_bytes - last.garbage_bytes;
            if garbage > 0 {
                let n = u16::try_from(garbage).unwrap_or(u16::MAX);
                self.journal(
                    at,
                    unit,
                    0,
                    0,
                    n,
                    Dropped(DropReason::Garbage),
                    Duration::ZERO,
                );
            }
        }
        self.stats.add_framer(now, last);
    }

    /// Use tokio's timer alone for the turnaround (millisecond granularity). Tests with a
    /// paused clock need it: the precise wait sleeps in real time, which a paused clock
    /// does not see.
    pub fn with_tokio_timer(mut self) -> Self {
        self.timing.precise = false;
        self
    }

    /// Wait until `deadline` (the earliest moment the reply may start).
    ///
    /// tokio's timer fires on millisecond ticks, so even a deadline that has passed would cost
    /// up to a tick: a passed deadline is not waited for at all. A future one is approached
    /// with tokio's timer up to ~1 ms before, then the rest is slept with the thread's
    /// nanosecond sleep, which holds this worker for at most that last millisecond.
    async fn wait_turnaround(&self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        if !self.timing.precise {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        let coarse_margin = Duration::from_millis(1);
        if deadline - now > coarse_margin + Duration::from_millis(1) {
            tokio::time::sleep_until(deadline - coarse_margin).await;
        }
        let rest = deadline.saturating_duration_since(Instant::now());
        if !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }

    /// Serve `stream` until it ends (EOF → `Ok`), fails (I/O error → `Err`) or `cancel` fires
    /// (→ `Ok`). Bad input never ends it.
    pub async fn serve<S>(&self, mut stream: S, cancel: &CancellationToken) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut framer = Framer::new(self.params.unit);
        let mut last_stats = FramerStats::default();
        let mut echo = EchoFilter::default();
        let mut rx = [0u8; 512];
        let mut tx = [0u8; MAX_ADU];
        let mut replay = [0u8; MAX_ADU];
        let mut last_byte = Instant::now();
        // A periodic branch so the loop beats while reads block on an idle bus; polled before
        // the read, whose future is cancel-safe (no byte is lost when the beat wins).
        let mut beat = tokio::time::interval(crate::ops::heartbeat::HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Wait for bytes; with a partial frame buffered, only until the line falls silent.
            let read = async {
                if framer.buffered() > 0 {
                    tokio::time::timeout_at(
                        last_byte + self.timing.frame_timeout,
                        stream.read(&mut rx),
                    )
                    .await
                    .ok()
                } else {
                    Some(stream.read(&mut rx).await)
                }
            };
            let n = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                _ = beat.tick() => {
                    self.stats.heartbeat.fetch_add(1, Relaxed);
                    continue;
                }
                r = read => r,
            };
            let n = match n {
                None => {
                    // Silence: whatever is buffered is now delimited.
                    let f = framer.on_silence();
                    self.note_framer(framer.stats(), &mut last_stats, last_byte);
                    if let Some(f) = f {
                        self.handle(f, last_byte, &mut stream, &mut tx, &mut echo)
                            .await?;
                    }
                    continue;
                }
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(e),
            };
            last_byte = Instant::now();
            let (replayed, data) = echo.filter(&rx[..n], last_byte);
            if echo.take_completed() {
                self.stats.echoes.fetch_add(1, Relaxed);
            }
            // Bytes held back as a possible echo that turned out not to be one go first.
            replay[..replayed].copy_from_slice(echo.sent(replayed));
            for chunk in [&replay[..replayed], data] {
                let mut chunk = chunk;
                while !chunk.is_empty() {
                    let taken = framer.push(chunk);
                    chunk = &chunk[taken..];
                    while let Some(f) = framer.next_frame() {
                        self.handle(f, last_byte, &mut stream, &mut tx, &mut echo)
                            .await?;
                    }
                }
            }
            self.note_framer(framer.stats(), &mut last_stats, last_byte);
        }
    }

    async fn handle<S>(
        &self,
        frame: Frame,
        request_end: Instant,
        stream: &mut S,
        tx: &mut [u8; MAX_ADU],
        echo: &mut EchoFilter,
    ) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        use journal::{Action, DropReason};
        // Foreign traffic and broadcasts are counted by the framer.
        let req = match frame {
            Frame::Request(req) => req,
            Frame::Foreign { unit, function } => {
                let drop = Action::Dropped(DropReason::ForeignUnit);
                self.journal(request_end, unit, function, 0, 0, drop, Duration::ZERO);
                return Ok(());
            }
            Frame::Broadcast { function } => {
                let drop = Action::Dropped(DropReason::Broadcast);
                self.journal(request_end, 0, function, 0, 0, drop, Duration::ZERO);
                return Ok(());
            }
        };
        let outcome = answer::answer(self.params, req, &self.image, Instant::now(), tx);
        self.stats.count(outcome);
        let (function, address, count) = match req {
            airbridge_modbus::rtu_frame::Request::Read {
                function,
                address,
                count,
            } => (function, address, count),
            airbridge_modbus::rtu_frame::Request::Other { function } => (function, 0, 0),
        };
        self.stats.requests_by_function.count(function, outcome);
        let unit = self.params.unit;
        let Some(len) = outcome.reply_len() else {
            tracing::trace!(?req, ?outcome, "no reply");
            let action = match outcome {
                Answer::SilentWarmup => Action::SilentWarmup,
                _ => Action::SilentStale,
            };
            self.journal(
                request_end,
                unit,
                function,
                address,
                count,
                action,
                Duration::ZERO,
            );
            return Ok(());
        };
        self.wait_turnaround(request_end + self.timing.turnaround)
            .await;
        // No flush: a tty has no user-space buffer, and its flush is a blocking tcdrain that
        // would hold a runtime worker for the reply's whole wire time.
        stream.write_all(&tx[..len]).await?;
        let written = Instant::now();
        let latency = written.saturating_duration_since(request_end);
        self.stats.latency.record(latency);
        self.stats.tx_bytes.fetch_add(len as u64, Relaxed);
        // Recorded after the reply is written: the journal costs the inverter nothing.
        let action = match outcome {
            Answer::Exception { code } => Action::Exception { code },
            _ => Action::Answered { bytes: len as u16 },
        };
        self.journal(request_end, unit, function, address, count, action, latency);
        // An adapter that echoes its transmission hands our reply back to us, within its
        // wire time plus the usual silence.
        let wire = self.timing.char_time.saturating_mul(len as u32);
        echo.expect(
            &tx[..len],
            Instant::now() + wire + self.timing.frame_timeout,
        );
        Ok(())
    }
}
