//! The poller's transactions on the bus: one read (with the gap before it), a read with
//! retries, a region poll in chunks, a probe of an offline device, and a write. Each
//! counts its outcome for the bus and its device and moves that device's state. Touches
//! the stream, the image and the counters.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::device::Counts;
use super::RtuPoller;
use crate::config::MAX_READ;
use crate::control::writes::{WriteJob, WriteOutcome, FC_WRITE_SINGLE};
use crate::link::rtu_master::{ReplyError, RtuMaster};

/// One read request: function, first register, registers.
#[derive(Debug, Clone, Copy)]
struct Read {
    /// 3 or 4.
    fc: u8,
    /// First register.
    address: u16,
    /// Registers (at most [`MAX_READ`]).
    count: u16,
}

impl RtuPoller {
    /// Keep the configured silence since the bus last went quiet.
    async fn wait_gap(&self, cancel: &CancellationToken) {
        if let Some(q) = self.quiet_since {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep_until(q + self.cfg.gap) => {}
            }
        }
    }

    /// A read of device `d`, with the gap before each request, tried up to `1 + retries`
    /// times; counts every outcome. Exceptions (the device answered) and I/O errors are not
    /// retried.
    async fn read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        d: usize,
        req: Read,
        retries: u32,
        cancel: &CancellationToken,
    ) -> Result<Vec<u16>, ReplyError> {
        let unit = self.devices.get(d).map_or(0, |x| x.unit);
        let mut attempt = 0;
        loop {
            self.wait_gap(cancel).await;
            // Shutdown began during the gap: nothing more goes on the bus.
            if cancel.is_cancelled() {
                return Err(ReplyError::Io(shutdown()));
            }
            self.counts(d).bump(|s| &s.requests);
            let r = master.read(unit, req.fc, req.address, req.count).await;
            self.quiet_since = Some(Instant::now());
            count_reply(&self.counts(d), &r);
            match r {
                Err(ReplyError::Timeout | ReplyError::BadCrc | ReplyError::BadFrame(_))
                    if attempt < retries && !cancel.is_cancelled() =>
                {
                    attempt += 1;
                    self.counts(d).bump(|s| &s.retries);
                }
                other => return other,
            }
        }
    }

    /// Poll region `i` of device `d` in chunks; commit it only when every chunk arrived.
    pub(super) async fn poll_task<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        d: usize,
        i: usize,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let Some(t) = self.devices.get(d).and_then(|x| x.tasks.get(i)) else {
            return Ok(());
        };
        let (start, count, fc) = (t.slot.start, t.slot.count, t.fc);
        let started = Instant::now();
        let mut words = Vec::with_capacity(usize::from(count));
        let mut addr = u32::from(start);
        let end = addr + u32::from(count);
        let mut result = Ok(());
        while addr < end {
            let n = (end - addr).min(u32::from(MAX_READ)) as u16;
            let req = Read {
                fc,
                address: addr as u16,
                count: n,
            };
            match self.read(master, d, req, self.cfg.retries, cancel).await {
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
        let ok = result.is_ok();
        self.counts(d).bump(if ok {
            |s| &s.regions_ok
        } else {
            |s| &s.regions_failed
        });
        let (image, cfg, bus) = (&self.image, &self.cfg, &self.stats);
        let Some(dev) = self.devices.get_mut(d) else {
            return Ok(());
        };
        let Some(t) = dev.tasks.get_mut(i) else {
            return Ok(());
        };
        // Fixed rate: the next read is due one `every` after this one was due, so a region
        // keeps its configured interval however long its read takes or waits behind other
        // reads on a slow bus. A region that fell more than one interval behind is re-timed
        // from this read's start (at once if the read took longer than `every`): never a
        // burst of catch-up reads.
        let on_time = t.slot.next + t.slot.every;
        t.slot.next = if on_time > done {
            on_time
        } else {
            (started + t.slot.every).max(done)
        };
        match result {
            Ok(()) => {
                if let Err(e) = image.commit_poll(t.slot.region, &words, started, done) {
                    tracing::error!(region = %t.slot.name, "RTU poll commit: {e}");
                }
                if t.slot.failing {
                    tracing::info!(region = %t.slot.name, "RTU poll of region recovered");
                }
                t.slot.failing = false;
                dev.answered(&cfg.device);
            }
            Err(e) => {
                if !t.slot.failing {
                    tracing::warn!(region = %t.slot.name, start = t.slot.start, count = t.slot.count, fc = t.fc, "RTU poll failed: {e}");
                }
                t.slot.failing = true;
                let msg = format!("region {}: {e}", t.slot.name);
                Counts {
                    bus,
                    device: dev.stats.as_deref(),
                }
                .set_error(&msg);
                if matches!(e, ReplyError::Exception(_)) {
                    dev.answered(&cfg.device);
                } else {
                    dev.failed_read(done, cfg, bus);
                }
            }
        }
        self.update_online();
        Ok(())
    }

    /// A probe of offline device `d`: one register of its first region.
    pub(super) async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        d: usize,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let Some(dev) = self.devices.get_mut(d) else {
            return Ok(());
        };
        let Some(req) = dev.tasks.first().map(|t| Read {
            fc: t.fc,
            address: t.slot.start,
            count: 1,
        }) else {
            dev.answered(&self.cfg.device);
            return Ok(());
        };
        self.counts(d).bump(|s| &s.probes);
        let r = self.read(master, d, req, 0, cancel).await;
        let now = Instant::now();
        let Some(dev) = self.devices.get_mut(d) else {
            return Ok(());
        };
        match r {
            // An exception is an answer too: the device is back.
            Ok(_) | Err(ReplyError::Exception(_)) => {
                dev.answered(&self.cfg.device);
                dev.all_due(now);
            }
            Err(ReplyError::Io(e)) => return Err(e),
            Err(_) => dev.probe_failed(now),
        }
        self.update_online();
        Ok(())
    }

    /// Execute one write on the bus, to its job's device (never retried: the client decides).
    pub(super) async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        master: &mut RtuMaster<S>,
        job: WriteJob,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let d = job.device;
        if job.reply.is_closed() {
            self.counts(d).bump(|s| &s.writes_abandoned);
            tracing::info!(
                address = job.address,
                "write not sent: the client gave up waiting"
            );
            return Ok(());
        }
        let Some(unit) = self
            .devices
            .get(d)
            .filter(|x| !x.is_offline())
            .map(|x| x.unit)
        else {
            self.refuse_offline(job);
            return Ok(());
        };
        self.wait_gap(cancel).await;
        // Shutdown began during the gap: the write is not sent (its client gets 0B).
        if cancel.is_cancelled() {
            return Ok(());
        }
        // The bus is free now; a write that waited too long is dropped, never sent late
        // (its client may have given up and retried: a command goes out at most once).
        let age = job.queued_at.elapsed();
        if age > self.cfg.write_timeout {
            self.counts(d).bump(|s| &s.writes_expired);
            tracing::warn!(
                address = job.address,
                waited = ?age,
                write_timeout = ?self.cfg.write_timeout,
                "write not sent: it waited longer than rtu_poll.write_timeout for the bus"
            );
            let _ = job.reply.send(WriteOutcome::Expired);
            return Ok(());
        }
        self.counts(d).bump(|s| &s.requests);
        let r = match (job.fc, job.values.as_slice()) {
            (FC_WRITE_SINGLE, [v]) => master.write_single(unit, job.address, *v).await,
            (FC_WRITE_SINGLE, _) => Err(ReplyError::BadFrame("FC06 writes one value".into())),
            (_, values) => master.write_multiple(unit, job.address, values).await,
        };
        let now = Instant::now();
        self.quiet_since = Some(now);
        count_reply(&self.counts(d), &r);
        let done = r.is_ok();
        self.counts(d).bump(if done {
            |s| &s.writes_ok
        } else {
            |s| &s.writes_failed
        });
        let (cfg, bus) = (&self.cfg, &self.stats);
        let Some(dev) = self.devices.get_mut(d) else {
            return Ok(());
        };
        let outcome = match r {
            Ok(()) => {
                dev.answered(&cfg.device);
                // Read the written registers back at the next chance.
                let end = u32::from(job.address) + job.values.len() as u32;
                for t in &mut dev.tasks {
                    if u32::from(t.slot.start) < end && u32::from(job.address) < t.slot.end() {
                        t.slot.next = now;
                    }
                }
                WriteOutcome::Done
            }
            Err(ReplyError::Exception(c)) => {
                dev.answered(&cfg.device);
                WriteOutcome::Exception(c)
            }
            Err(ReplyError::Io(e)) => {
                let _ = job.reply.send(WriteOutcome::NoReply);
                return Err(e);
            }
            Err(_) => {
                dev.failed_read(now, cfg, bus);
                WriteOutcome::NoReply
            }
        };
        self.update_online();
        let _ = job.reply.send(outcome);
        Ok(())
    }
}

/// Count a reply's failure kind (timeouts, exceptions, bad frames).
fn count_reply<T>(c: &Counts<'_>, r: &Result<T, ReplyError>) {
    match r {
        Ok(_) | Err(ReplyError::Io(_)) => {}
        Err(ReplyError::Timeout) => c.bump(|s| &s.timeouts),
        Err(ReplyError::Exception(_)) => c.bump(|s| &s.exceptions),
        Err(ReplyError::BadCrc | ReplyError::BadFrame(_)) => c.bump(|s| &s.bad_frames),
    }
}

/// The error a request gets when shutdown began before it was sent.
fn shutdown() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "shutdown: not sent")
}
