//! The RTU slave: serves the inverter from the image, never from upstream.
//!
//! Owns one serial stream (any `AsyncRead + AsyncWrite`, so tests drive it with in-memory
//! pipes and a paused clock) and the timing on it: silence detection for partial frames
//! (`frame_timeout`) and the minimum turnaround before a reply. Frames come from the pure
//! [`Framer`], answers from [`pdu::answer`]; this module only reads the [`Image`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, Framer, FramerStats, MAX_ADU};
use super::pdu::{self, Outcome, SlaveParams};
use crate::config::RtuConfig;
use crate::image::Image;

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
    pub broadcast: AtomicU64,
    pub crc_errors: AtomicU64,
    pub garbage_bytes: AtomicU64,
    pub partial_discarded: AtomicU64,
    pub oversize: AtomicU64,
    /// Bytes sent as replies.
    pub tx_bytes: AtomicU64,
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

    fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Data { .. } => self.replies.fetch_add(1, Relaxed),
            Outcome::Exception { code } => {
                if let Some(c) = self.exception_codes.get(usize::from(code)) {
                    c.fetch_add(1, Relaxed);
                }
                self.exceptions.fetch_add(1, Relaxed)
            }
            Outcome::SilentStale => self.silent_stale.fetch_add(1, Relaxed),
            Outcome::SilentWarmup => self.silent_warmup.fetch_add(1, Relaxed),
        };
    }
}

/// Settings of the serving loop.
#[derive(Debug, Clone, Copy)]
pub struct SlaveTiming {
    pub turnaround: Duration,
    pub frame_timeout: Duration,
}

/// An RTU slave over the image.
#[derive(Debug, Clone)]
pub struct RtuSlave {
    params: SlaveParams,
    timing: SlaveTiming,
    image: Arc<Image>,
    stats: Arc<RtuStats>,
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
            },
            image,
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<RtuStats> {
        &self.stats
    }

    /// Serve `stream` until it ends (EOF → `Ok`), fails (I/O error → `Err`) or `cancel` fires
    /// (→ `Ok`). Bad input never ends it.
    pub async fn serve<S>(&self, mut stream: S, cancel: &CancellationToken) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut framer = Framer::new(self.params.unit);
        let mut last_stats = FramerStats::default();
        let mut rx = [0u8; 512];
        let mut tx = [0u8; MAX_ADU];
        let mut last_byte = Instant::now();
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
                r = read => r,
            };
            let frame_end = match n {
                None => {
                    // Silence: whatever is buffered is now delimited.
                    let f = framer.on_silence();
                    self.stats.add_framer(framer.stats(), &mut last_stats);
                    if let Some(f) = f {
                        self.handle(f, last_byte, &mut stream, &mut tx).await?;
                    }
                    continue;
                }
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(e),
            };
            last_byte = Instant::now();
            let mut data = &rx[..frame_end];
            loop {
                let taken = framer.push(data);
                data = &data[taken..];
                while let Some(f) = framer.next_frame() {
                    self.handle(f, last_byte, &mut stream, &mut tx).await?;
                }
                if data.is_empty() {
                    break;
                }
            }
            self.stats.add_framer(framer.stats(), &mut last_stats);
        }
    }

    async fn handle<S>(
        &self,
        frame: Frame,
        request_end: Instant,
        stream: &mut S,
        tx: &mut [u8; MAX_ADU],
    ) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        let Frame::Request(req) = frame else {
            return Ok(()); // foreign traffic and broadcasts are counted by the framer
        };
        let outcome = pdu::answer(self.params, req, &self.image, Instant::now(), tx);
        self.stats.count(outcome);
        let Some(len) = outcome.reply_len() else {
            tracing::trace!(?req, ?outcome, "no reply");
            return Ok(());
        };
        tokio::time::sleep_until(request_end + self.timing.turnaround).await;
        stream.write_all(&tx[..len]).await?;
        stream.flush().await?;
        self.stats.tx_bytes.fetch_add(len as u64, Relaxed);
        Ok(())
    }
}
