//! The RTU poll source: an RTU master on a bus of one or several devices (KSTAR).
//!
//! Owns the bus: one task, one request in flight, a configured silence (`gap`) between any
//! two requests, one schedule across the devices. It reads every device's regions with
//! their function code (FC04 input, FC03 holding) in requests of at most 125 registers,
//! commits a region to the [`Image`] only when every chunk arrived, retries reads that got
//! no valid reply, and after `offline_after` failed reads in a row declares that device
//! offline: its polls stop and a single probe is sent with its own backoff (1 s …
//! `probe_max`) until it answers again, so a silent device costs the others at most one
//! timeout per probe. Control writes ([`WriteJob`]) are taken from one queue and go to the
//! job's device, at most one between two polls (so polling keeps its rate under any write
//! load), each sent at most once and only if it waited no longer than `write_timeout`;
//! their real outcome goes back to the client. Nothing is sent once shutdown began.
//!
//! Files: this one the poller and its loop (and the reopen glue); `device` one device's
//! state; `requests` the transactions on the bus (reads, polls, probes, writes). It touches
//! the serial stream, the image and its own counters.

mod device;
mod requests;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RtuPollConfig, Table};
use crate::control::writes::{WriteJob, WriteOutcome};
use crate::image::Image;
use crate::link::reopen::{self, Reopenable};
use crate::link::rtu_master::RtuMaster;
use crate::ops::heartbeat::HEARTBEAT;
use crate::sources::schedule::Slot;

use device::{Counts, PolledDevice, Task};

/// Counters of the RTU poll side.
#[derive(Debug, Default)]
pub struct RtuPollStats {
    /// The device answers (false before the first answer and while offline); on the bus
    /// counters with `devices:`: every device answers.
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
    /// With `devices:`, each device's own counters (the fields above that concern one
    /// device), in config order; set once when the poller is made. Empty in the one-device
    /// form, whose device's counters are these.
    pub devices: OnceLock<Vec<DeviceStats>>,
}

/// One device's counters, with what names it.
#[derive(Debug)]
pub struct DeviceStats {
    /// `devices[].name`.
    pub name: String,
    /// Its RS485 address.
    pub unit_id: u8,
    /// Its counters (`online`, requests, timeouts, regions, writes, probes, …).
    pub stats: Arc<RtuPollStats>,
}

impl RtuPollStats {
    /// The devices' own counters (empty in the one-device form).
    pub fn devices(&self) -> &[DeviceStats] {
        self.devices.get().map_or(&[], Vec::as_slice)
    }
}

/// The RTU poller. Keeps its schedule and write queue across re-opens of the port.
pub struct RtuPoller {
    /// The `rtu_poll:` section.
    cfg: RtuPollConfig,
    /// The devices on the bus, in config order (a write job's `device` indexes this).
    devices: Vec<PolledDevice>,
    /// Where complete regions are committed.
    image: Arc<Image>,
    /// The bus counters (each device's own are in its [`PolledDevice`]).
    stats: Arc<RtuPollStats>,
    /// LAN clients' writes, taken between polls.
    writes: mpsc::Receiver<WriteJob>,
    /// When the bus last went quiet (end of the last reply or timeout).
    quiet_since: Option<Instant>,
}

/// What the loop does next on the bus.
enum Step {
    /// Probe offline device `d`.
    Probe(usize),
    /// Poll region `t` of device `d`.
    Poll(usize, usize),
}

impl RtuPoller {
    /// A poller for every `rtu_poll` region of every device; `None` without an `rtu_poll:`
    /// section.
    pub fn new(
        config: &Config,
        image: Arc<Image>,
        stats: Arc<RtuPollStats>,
        writes: mpsc::Receiver<WriteJob>,
    ) -> Option<Self> {
        let cfg = config.rtu_poll.clone()?;
        let now = Instant::now();
        let named = config.named_devices();
        let mut own = Vec::new();
        let devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(d, dc)| {
                let tasks = config
                    .regions
                    .iter()
                    .filter(|r| r.source.rtu_poll && r.device == d)
                    .filter_map(|r| {
                        Some(Task {
                            slot: Slot::new(image.region_index(&r.name)?, r, r.every?, now),
                            fc: r.table.unwrap_or(Table::Holding).read_code(),
                        })
                    })
                    .collect();
                let dev_stats = named.then(|| {
                    let s = Arc::new(RtuPollStats::default());
                    own.push(DeviceStats {
                        name: dc.name.clone(),
                        unit_id: dc.unit_id,
                        stats: Arc::clone(&s),
                    });
                    s
                });
                PolledDevice::new(dc.name.clone(), dc.unit_id, tasks, cfg.probe_max, dev_stats)
            })
            .collect();
        // Set once per stats: a second poller on the same counters (tests) keeps the first's.
        let _ = stats.devices.set(own);
        Some(RtuPoller {
            cfg,
            devices,
            image,
            stats,
            writes,
            quiet_since: None,
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

    /// Poll the devices on `stream` until `cancel` fires (`Ok`) or the stream fails (`Err`).
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
            let step = self.next_step(now);
            // At most one write between two polls of the schedule, so polling keeps its
            // rate under any write load; a write waits at most one region poll.
            if !wrote || step.is_none() {
                if let Ok(job) = self.writes.try_recv() {
                    wrote = true;
                    let r = self.write(&mut master, job, cancel).await;
                    stop_on_cancel(r, cancel)?;
                    continue;
                }
            }
            wrote = false;
            match step {
                Some(Step::Probe(d)) => {
                    let r = self.probe(&mut master, d, cancel).await;
                    stop_on_cancel(r, cancel)?;
                    continue;
                }
                Some(Step::Poll(d, t)) => {
                    let r = self.poll_task(&mut master, d, t, cancel).await;
                    stop_on_cancel(r, cancel)?;
                    continue;
                }
                None => {}
            }
            let wake = self
                .devices
                .iter()
                .filter_map(PolledDevice::wake)
                .min()
                .unwrap_or(now + Duration::from_secs(3600))
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

    /// The bus's next step: the longest-due probe of an offline device first (one request,
    /// at its own backoff), else the longest-overdue region of an online device.
    fn next_step(&self, now: Instant) -> Option<Step> {
        let probe = self
            .devices
            .iter()
            .enumerate()
            .filter_map(|(d, dev)| dev.probe_due(now).map(|at| (at, d)))
            .min();
        if let Some((_, d)) = probe {
            return Some(Step::Probe(d));
        }
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(d, dev)| dev.due_task(now).map(|(at, t)| (at, d, t)))
            .min()
            .map(|(_, d, t)| Step::Poll(d, t))
    }

    /// Where device `d` counts (the bus and, with `devices:`, its own counters).
    fn counts(&self, d: usize) -> Counts<'_> {
        Counts {
            bus: &self.stats,
            device: self.devices.get(d).and_then(|x| x.stats.as_deref()),
        }
    }

    /// The bus counters' `online`: every device with regions to poll answers.
    fn update_online(&self) {
        let all = self
            .devices
            .iter()
            .all(|d| d.tasks.is_empty() || d.is_online());
        self.stats.online.store(all, Relaxed);
    }

    /// The port is gone: every device offline until it is open again and answers.
    fn set_offline_now(&mut self) {
        self.stats.online.store(false, Relaxed);
        let now = Instant::now();
        for d in &mut self.devices {
            d.reset(now);
        }
        self.quiet_since = None;
    }

    /// Refuse `job` at once (its device is offline or unknown): the client gets 0B.
    fn refuse_offline(&self, job: WriteJob) {
        self.counts(job.device).bump(|s| &s.writes_failed);
        let _ = job.reply.send(WriteOutcome::Offline);
    }
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

impl Reopenable for Bus<'_> {
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
