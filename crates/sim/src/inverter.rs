//! Simulated KOSTAL Plenticore on the RS485 side: the Modbus RTU master that
//! polls a KSEM (here: the gateway) the way the inverter does.
//!
//! Owns: the inverter's poll sequence (8244 ×1 until a valid non-zero answer,
//! then 0..74 and 74..148 every interval, FC03, unit 1 by default), decoding the
//! view it acts on (grid power, phase voltages, frequency), and its counters.
//! Silence (timeout) is a normal, counted outcome: the gateway goes quiet when
//! its data is stale.
//!
//! May touch: the byte stream it is given, through [`airbridge::link::rtu_master`]. Nothing
//! else; printing is the CLI's job (values are logged at debug level here).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use airbridge_modbus::master::FC_READ_HOLDING;

/// Register the Plenticore reads first (KSEM measuring interval, ms).
pub const HANDSHAKE_REGISTER: u16 = 8244;
/// The instantaneous block is read in two halves of this many registers: 0..74, 74..148.
pub const HALF_BLOCK: u16 = 74;

/// How the simulated inverter polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InverterOptions {
    /// RTU unit id of the meter (1 on a real KSEM link).
    pub unit: u8,
    /// Poll period (the Plenticore polls about every 160 ms).
    pub interval: Duration,
    /// Reply timeout per request.
    pub timeout: Duration,
}

impl Default for InverterOptions {
    fn default() -> Self {
        Self {
            unit: 1,
            interval: Duration::from_millis(160),
            timeout: Duration::from_millis(100),
        }
    }
}

/// What the inverter made of the last complete poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverterView {
    /// (P+ − P−) · 0.1 W from registers 0 and 2: + import, − export.
    pub grid_power_w: f64,
    /// L1, L2, L3 from registers 62, 102, 142, V.
    pub voltages_v: [f64; 3],
    /// Register 26, Hz.
    pub frequency_hz: f64,
}

/// Decode the view from registers 0.. (at least 0..=143).
pub fn decode_view(words: &[u16]) -> Option<InverterView> {
    let u32_at = |at: usize| -> Option<u32> {
        let hi = *words.get(at)?;
        let lo = *words.get(at + 1)?;
        Some((u32::from(hi) << 16) | u32::from(lo))
    };
    let p_plus = f64::from(u32_at(0)?);
    let p_minus = f64::from(u32_at(2)?);
    Some(InverterView {
        grid_power_w: (p_plus - p_minus) * 0.1,
        voltages_v: [
            f64::from(u32_at(62)?) * 0.001,
            f64::from(u32_at(102)?) * 0.001,
            f64::from(u32_at(142)?) * 0.001,
        ],
        frequency_hz: f64::from(u32_at(26)?) * 0.001,
    })
}

/// The inverter's counters and last view, shared with whoever displays them.
#[derive(Debug, Default)]
pub struct InverterStats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Good normal replies (handshake included).
    pub replies: AtomicU64,
    /// Exception replies.
    pub exceptions: AtomicU64,
    /// Requests that got no complete reply in time.
    pub timeouts: AtomicU64,
    /// Replies with a bad CRC or that did not answer the request.
    pub bad_frames: AtomicU64,
    /// Stream errors (e.g. the port went away).
    pub io_errors: AtomicU64,
    /// Complete polls (both halves) decoded.
    pub polls: AtomicU64,
    /// 8244 answered with a non-zero value; polling of 0..148 has begun.
    pub handshake_done: AtomicBool,
    /// The value read from 8244 (measuring interval, ms), 0 until the handshake.
    pub measuring_interval_ms: AtomicU16,
    /// The last decoded view.
    pub last_view: Mutex<Option<InverterView>>,
    /// When the last good reply arrived.
    pub last_good_reply: Mutex<Option<Instant>>,
}

/// A plain copy of the counters in [`InverterStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InverterCounts {
    /// See [`InverterStats::requests`].
    pub requests: u64,
    /// See [`InverterStats::replies`].
    pub replies: u64,
    /// See [`InverterStats::exceptions`].
    pub exceptions: u64,
    /// See [`InverterStats::timeouts`].
    pub timeouts: u64,
    /// See [`InverterStats::bad_frames`].
    pub bad_frames: u64,
    /// See [`InverterStats::io_errors`].
    pub io_errors: u64,
    /// See [`InverterStats::polls`].
    pub polls: u64,
}

impl InverterStats {
    /// Current counter values.
    pub fn snapshot(&self) -> InverterCounts {
        InverterCounts {
            requests: self.requests.load(Ordering::Relaxed),
            replies: self.replies.load(Ordering::Relaxed),
            exceptions: self.exceptions.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
            io_errors: self.io_errors.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
        }
    }

    /// The last decoded view, if any.
    pub fn last_view(&self) -> Option<InverterView> {
        *self.last_view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the last good reply arrived, if ever.
    pub fn last_good_reply(&self) -> Option<Instant> {
        *self
            .last_good_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn record<T>(&self, result: &Result<T, ReplyError>) {
        let counter = match result {
            Ok(_) => {
                *self
                    .last_good_reply
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                &self.replies
            }
            Err(ReplyError::Timeout) => &self.timeouts,
            Err(ReplyError::Exception(_)) => &self.exceptions,
            Err(ReplyError::BadCrc | ReplyError::BadFrame(_)) => &self.bad_frames,
            Err(ReplyError::Io(_)) => &self.io_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::debug!(error = %e, "inverter sim: request failed");
        }
    }

    fn set_view(&self, view: InverterView) {
        *self.last_view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
        self.polls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Poll like a Plenticore over `stream` until `cancel`. Never panics; every
/// outcome is counted in `stats`.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    opts: InverterOptions,
    stats: Arc<InverterStats>,
    cancel: CancellationToken,
) {
    cancel
        .run_until_cancelled(poll_forever(stream, opts, &stats))
        .await;
}

async fn poll_forever<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    opts: InverterOptions,
    stats: &InverterStats,
) {
    let mut master = RtuMaster::new(stream, opts.timeout);
    let mut ticker = interval(opts.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let unit = opts.unit;

    // Handshake: the Plenticore reads the measuring interval first.
    loop {
        ticker.tick().await;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = master
            .read(unit, FC_READ_HOLDING, HANDSHAKE_REGISTER, 1)
            .await;
        stats.record(&result);
        match result.as_deref() {
            Ok(&[ms]) if ms != 0 => {
                stats.measuring_interval_ms.store(ms, Ordering::Relaxed);
                stats.handshake_done.store(true, Ordering::Relaxed);
                tracing::debug!(measuring_interval_ms = ms, "inverter sim: handshake done");
                break;
            }
            Ok(_) => tracing::debug!("inverter sim: 8244 reads 0, retrying"),
            Err(_) => {}
        }
    }

    loop {
        ticker.tick().await;
        let mut words = Vec::with_capacity(2 * usize::from(HALF_BLOCK));
        let mut complete = true;
        for start in [0, HALF_BLOCK] {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let result = master.read(unit, FC_READ_HOLDING, start, HALF_BLOCK).await;
            stats.record(&result);
            match result {
                Ok(w) => words.extend_from_slice(&w),
                Err(_) => complete = false,
            }
        }
        if !complete {
            continue;
        }
        if let Some(view) = decode_view(&words) {
            tracing::debug!(
                grid_power_w = view.grid_power_w,
                u_l1 = view.voltages_v[0],
                u_l2 = view.voltages_v[1],
                u_l3 = view.voltages_v[2],
                frequency_hz = view.frequency_hz,
                "inverter sim: meter view"
            );
            stats.set_view(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ksem::KsemModel;
    use airbridge_modbus::crc::{append_crc, frame_crc_ok};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    const LIMIT: Duration = Duration::from_secs(30);

    type Requests = Arc<Mutex<Vec<(u16, u16)>>>;

    /// Fake RTU slave (unit 1): FC03 from `regs`, exception 02 where it returns None.
    async fn fake_slave<F>(mut s: DuplexStream, requests: Requests, regs: F)
    where
        F: Fn(u16, u16) -> Option<Vec<u16>>,
    {
        let mut req = [0u8; 8];
        while s.read_exact(&mut req).await.is_ok() {
            assert!(frame_crc_ok(&req), "request CRC");
            assert_eq!(req[..2], [1, 3], "unit 1, FC03");
            let addr = u16::from_be_bytes([req[2], req[3]]);
            let count = u16::from_be_bytes([req[4], req[5]]);
            requests.lock().unwrap().push((addr, count));
            let mut out = vec![1u8, 3];
            match regs(addr, count) {
                Some(words) => {
                    out.push((words.len() * 2) as u8);
                    for w in words {
                        out.extend_from_slice(&w.to_be_bytes());
                    }
                }
                None => out = vec![1, 0x83, 2],
            }
            let len = out.len();
            out.extend_from_slice(&[0, 0]);
            append_crc(&mut out, len);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// Registers from ksem-g2.md §8a: importing 1234.5 W.
    fn sample_regs() -> Vec<u16> {
        let mut r = vec![0u16; 148];
        let put = |r: &mut Vec<u16>, at: usize, v: u32| {
            r[at] = (v >> 16) as u16;
            r[at + 1] = v as u16;
        };
        put(&mut r, 0, 12345);
        put(&mut r, 26, 50012);
        put(&mut r, 62, 231_456);
        put(&mut r, 102, 230_812);
        put(&mut r, 142, 232_104);
        r
    }

    fn serve_fixed(
        regs: Vec<u16>,
        zero_handshakes: usize,
    ) -> impl Fn(u16, u16) -> Option<Vec<u16>> {
        let handshakes = std::sync::atomic::AtomicUsize::new(0);
        move |addr, count| {
            if addr == HANDSHAKE_REGISTER && count == 1 {
                let n = handshakes.fetch_add(1, Ordering::Relaxed);
                return Some(vec![if n < zero_handshakes { 0 } else { 200 }]);
            }
            let (a, n) = (usize::from(addr), usize::from(count));
            regs.get(a..a + n).map(<[u16]>::to_vec)
        }
    }

    /// The inverter sim on `a` with default options: its counters, its stop, its task.
    fn spawn_inverter(a: DuplexStream) -> (Arc<InverterStats>, CancellationToken, JoinHandle<()>) {
        let stats = Arc::new(InverterStats::default());
        let cancel = CancellationToken::new();
        let inv = tokio::spawn(run(
            a,
            InverterOptions::default(),
            stats.clone(),
            cancel.clone(),
        ));
        (stats, cancel, inv)
    }

    async fn wait_for_polls(stats: &InverterStats, polls: u64) {
        while stats.snapshot().polls < polls {
            sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn handshake_then_decodes() {
        tokio::time::timeout(LIMIT, async {
            let (a, b) = duplex(1024);
            let requests = Requests::default();
            let slave = tokio::spawn(fake_slave(
                b,
                requests.clone(),
                serve_fixed(sample_regs(), 2),
            ));
            let (stats, cancel, inv) = spawn_inverter(a);
            wait_for_polls(&stats, 3).await;
            cancel.cancel();
            inv.await.unwrap();
            slave.await.unwrap();

            let reqs = requests.lock().unwrap().clone();
            assert_eq!(reqs[..3], [(8244, 1); 3], "{reqs:?}");
            assert_eq!(
                reqs[3..7],
                [(0, 74), (74, 74), (0, 74), (74, 74)],
                "{reqs:?}"
            );
            assert!(stats.handshake_done.load(Ordering::Relaxed));
            assert_eq!(stats.measuring_interval_ms.load(Ordering::Relaxed), 200);
            let v = stats.last_view().unwrap();
            assert!((v.grid_power_w - 1234.5).abs() < 1e-6, "{v:?}");
            assert!((v.voltages_v[0] - 231.456).abs() < 1e-9);
            assert!((v.voltages_v[1] - 230.812).abs() < 1e-9);
            assert!((v.voltages_v[2] - 232.104).abs() < 1e-9);
            assert!((v.frequency_hz - 50.012).abs() < 1e-9);
            let c = stats.snapshot();
            assert_eq!(c.requests, c.replies);
            assert_eq!(
                (c.timeouts, c.exceptions, c.bad_frames, c.io_errors),
                (0, 0, 0, 0)
            );
            assert!(stats.last_good_reply().is_some());
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn decodes_export_from_ksem_model() {
        tokio::time::timeout(LIMIT, async {
            let mut model = KsemModel::new(4);
            // Into the PV part of the cycle: exporting.
            for _ in 0..10_000 {
                if model.grid_power_w() < -500.0 {
                    break;
                }
                model.step(Duration::from_millis(200));
            }
            assert!(
                model.grid_power_w() < -500.0,
                "no export within the PV cycle"
            );
            let expected = model.grid_power_w();
            let model = Arc::new(model);
            let (a, b) = duplex(1024);
            let m = model.clone();
            let slave = tokio::spawn(fake_slave(b, Requests::default(), move |addr, n| {
                m.read(addr, n)
            }));
            let (stats, cancel, inv) = spawn_inverter(a);
            wait_for_polls(&stats, 1).await;
            cancel.cancel();
            inv.await.unwrap();
            slave.await.unwrap();
            let v = stats.last_view().unwrap();
            assert!(
                (v.grid_power_w - expected).abs() < 0.2,
                "{} vs {expected}",
                v.grid_power_w
            );
            for (got, want) in v.voltages_v.iter().zip(model.voltages_v()) {
                assert!((got - want).abs() < 0.001);
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_slave_counts_timeouts() {
        tokio::time::timeout(LIMIT, async {
            let (a, mut b) = duplex(1024);
            // Swallow requests, never answer.
            let sink = tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(b.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let (stats, cancel, inv) = spawn_inverter(a);
            sleep(Duration::from_secs(2)).await;
            cancel.cancel();
            inv.await.unwrap();
            sink.await.unwrap();
            let c = stats.snapshot();
            assert!(c.timeouts >= 10, "{c:?}");
            assert_eq!(c.replies, 0);
            assert!(!stats.handshake_done.load(Ordering::Relaxed));
            assert!(stats.last_view().is_none());
            assert!(stats.last_good_reply().is_none());
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn exceptions_and_closed_port_are_counted() {
        tokio::time::timeout(LIMIT, async {
            let (a, b) = duplex(1024);
            // Answers the handshake, then only exceptions (0..148 "missing").
            let slave = tokio::spawn(fake_slave(
                b,
                Requests::default(),
                serve_fixed(Vec::new(), 0),
            ));
            let (stats, cancel, inv) = spawn_inverter(a);
            while stats.snapshot().exceptions < 4 {
                sleep(Duration::from_millis(10)).await;
            }
            slave.abort();
            let _ = slave.await;
            while stats.snapshot().io_errors < 2 {
                sleep(Duration::from_millis(10)).await;
            }
            cancel.cancel();
            inv.await.unwrap();
            assert_eq!(stats.snapshot().polls, 0);
            assert!(stats.last_view().is_none());
        })
        .await
        .unwrap();
    }

    #[test]
    fn decode_needs_enough_words() {
        assert!(decode_view(&[0; 143]).is_none());
        assert!(decode_view(&[0; 144]).is_some());
        let mut w = vec![0u16; 148];
        w[2] = 0x0000;
        w[3] = 0x8707; // P− 3456.7 W
        let v = decode_view(&w).unwrap();
        assert!((v.grid_power_w + 3456.7).abs() < 1e-9);
    }
}
