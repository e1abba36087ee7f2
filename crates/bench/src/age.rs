//! `bench age`: data age, push acknowledged → first RTU reply carrying that sequence,
//! and its offline analysis ([`age_analysis`], as `dataage.py`). Touches the RTU stream it
//! is given and the push socket it opens. Refuses a gateway that holds a real KSEM's data
//! unless told `--live` (see [`super::guard`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::exchange::{exchange, RtuStatus};
use super::guard::{self, fill_pattern, read_holding, LivePolicy, RESERVED};
use super::hist::{LatencyHist, Percentiles};
use super::push::{push_write, WriteOutcome};
use super::{round3, ser_duration_ms, FC_READ, PUSH_GROUPS};
use crate::connect;
use airbridge::link::rtu_master::{drain_quiet, DEFAULT_DRAIN_WINDOW as DRAIN_WINDOW};
use airbridge_modbus::master::{encode_read, MAX_FRAME_LEN};

/// What `bench age` does.
#[derive(Debug, Clone, Serialize)]
pub struct AgeBenchOptions {
    /// The gateway's push listener, where the sequence goes in.
    pub push_to: SocketAddr,
    /// Unit id of the pushes and of the RTU reads.
    pub unit: u8,
    /// Sequence pushes per second.
    pub rate: f64,
    /// How long the reader polls.
    #[serde(rename = "duration_ms", serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    /// RTU reply timeout (and push write timeout).
    #[serde(rename = "timeout_ms", serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    /// Progress on stderr (hidden by default).
    #[serde(skip)]
    pub progress: ProgressBar,
    /// What to do when the image holds data the bench did not write; under `Preserve` the
    /// sequence goes into the reserved words 28..29 and is read back from there.
    pub live: LivePolicy,
}

impl AgeBenchOptions {
    pub fn new(push_to: SocketAddr) -> Self {
        AgeBenchOptions {
            push_to,
            unit: 1,
            rate: 5.0,
            duration: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
            progress: ProgressBar::hidden(),
            live: LivePolicy::Refuse,
        }
    }
}

/// Result of [`bench_age`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgeReport {
    /// The push rate asked (Hz).
    pub rate: f64,
    /// Wall time of the reader phase.
    pub elapsed_s: f64,
    /// Pushes acknowledged.
    pub pushes_ok: u64,
    /// Pushes that failed (connect, timeout, exception, bad reply).
    pub push_errors: u64,
    /// Pushes acknowledged inside the RTU observation window.
    pub pushes_in_window: u64,
    /// Of those, seen in an RTU reply.
    pub pushes_measured: u64,
    /// Of those, never seen before the reader stopped.
    pub pushes_unseen_at_end: u64,
    /// Ages that were negative (the reply carrying the sequence arrived before its push's
    /// acknowledgement) and were clamped to 0.
    pub negative_clamped: u64,
    /// RTU reads that were sent after push k was acknowledged but still carried < k.
    pub stale_after_ack_reads: u64,
    /// RTU replies with a valid sequence.
    pub reads_ok: u64,
    /// RTU reads without one (timeout, exception, bad frame).
    pub reads_not_ok: u64,
    /// Push acknowledged → last byte of the first RTU reply carrying its sequence (or newer).
    pub age: Percentiles,
    /// Push sent → same reply.
    pub age_from_push_send: Percentiles,
    /// Interval between successive RTU replies.
    pub read_period: Percentiles,
}

/// Data age: push a 32-bit sequence into registers 0..1 (FC16 of group 0..27, the bench's
/// pattern) at `opts.rate`; poll registers 0..1 over RTU back to back on `stream`; age =
/// push acknowledged → last byte of the first reply with sequence ≥ k. Under
/// [`LivePolicy::Preserve`] the sequence goes into 28..29 (one FC16 of the reserved
/// 28..39, the other ten words as the image held them) and is polled there.
pub async fn bench_age<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    opts: &AgeBenchOptions,
) -> anyhow::Result<AgeReport> {
    anyhow::ensure!(opts.rate > 0.0 && opts.rate.is_finite(), "rate must be > 0");
    guard::check(opts.live, opts.push_to, opts.unit, opts.timeout, "push").await?;
    let live = opts.live == LivePolicy::Preserve;
    let (address, words) = sequence_words(opts, live).await?;
    let mut rtu = SequenceReader {
        request: encode_read(opts.unit, FC_READ, address, 2),
        buf: [0u8; MAX_FRAME_LEN + 8],
        scratch: [0u8; 512],
    };
    // Start above whatever registers 0..1 hold now. (Reads before the first push are
    // ignored by the analysis, so `base` only has to be above what the registers held.)
    let current = rtu.current(&mut stream, opts.timeout).await?;
    let base = if current > u32::MAX / 2 {
        1
    } else {
        current + 1
    };

    let stop = CancellationToken::new();
    let sequence = SequencePusher {
        target: opts.push_to,
        unit: opts.unit,
        rate: opts.rate,
        timeout: opts.timeout,
        address,
        words,
        live,
    };
    let expected = (opts.duration.as_secs_f64() * opts.rate) as usize + 16;
    let pusher = tokio::spawn(sequence.run(base, expected, stop.clone()));
    let (reads, not_ok, started) = rtu.poll(&mut stream, opts).await?;
    stop.cancel();
    let (pushes, push_errors) = pusher.await.context("age pusher task")?;
    let elapsed = started.elapsed().as_secs_f64();
    opts.progress.finish_and_clear();
    let mut report = age_analysis(&pushes, &reads);
    report.rate = opts.rate;
    report.elapsed_s = round3(elapsed);
    report.pushes_ok = pushes.len() as u64;
    report.push_errors = push_errors;
    report.reads_not_ok = not_ok;
    Ok(report)
}

/// Where the sequence goes: the whole group 0..27 (default), or the reserved 28..39 with
/// the words the image holds (`live`, read over a push connection of its own).
async fn sequence_words(opts: &AgeBenchOptions, live: bool) -> anyhow::Result<(u16, Vec<u16>)> {
    if !live {
        return Ok((PUSH_GROUPS[0].0, vec![0u16; usize::from(PUSH_GROUPS[0].1)]));
    }
    let mut sock = connect(opts.push_to, opts.timeout).await?;
    let held = read_holding(
        &mut sock,
        1,
        opts.unit,
        RESERVED.0,
        RESERVED.1,
        opts.timeout,
    )
    .await?;
    Ok((RESERVED.0, held))
}

/// The bench's pushes of the sequence: FC16 of `words` at `address`, the sequence in the
/// first two (`live`) or as the bench's pattern, at `rate`, reconnecting after an error.
struct SequencePusher {
    target: SocketAddr,
    unit: u8,
    rate: f64,
    /// Connect and write timeout.
    timeout: Duration,
    address: u16,
    words: Vec<u16>,
    live: bool,
}

impl SequencePusher {
    /// Push `base`, `base + 1`, … until `stop`: (seq, sent, acked) of every acknowledged
    /// push (room for `expected` made up front), and the failed pushes.
    async fn run(
        mut self,
        base: u32,
        expected: usize,
        stop: CancellationToken,
    ) -> (Vec<(u32, Instant, Instant)>, u64) {
        let mut log: Vec<(u32, Instant, Instant)> = Vec::with_capacity(expected);
        let mut errors = 0u64;
        let mut tx = [0u8; 7 + 6 + 2 * 125];
        let mut seq = base;
        let mut tid = 0u16;
        let mut sock = None;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if sock.is_none() {
                match connect(self.target, self.timeout).await {
                    Ok(s) => sock = Some(s),
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                }
            }
            let Some(s) = sock.as_mut() else { continue };
            if self.live {
                self.words[0] = (seq >> 16) as u16;
                self.words[1] = seq as u16;
            } else {
                fill_pattern(&mut self.words, seq);
            }
            tid = tid.wrapping_add(1);
            let (unit, address, timeout) = (self.unit, self.address, self.timeout);
            match push_write(s, &mut tx, tid, unit, address, &self.words, timeout).await {
                Ok((WriteOutcome::Ok, t0, t1)) => {
                    log.push((seq, t0, t1));
                    seq += 1;
                }
                Ok((WriteOutcome::Exception(_), _, _)) => errors += 1,
                Ok((WriteOutcome::Bad, _, _)) | Err(_) => {
                    errors += 1;
                    sock = None;
                }
            }
        }
        (log, errors)
    }
}

/// The bench's reads of the two sequence words over RTU, with its buffers.
struct SequenceReader {
    /// FC03 of the two words.
    request: [u8; 8],
    /// The reply.
    buf: [u8; MAX_FRAME_LEN + 8],
    /// Stray bytes drained before a request.
    scratch: [u8; 512],
}

impl SequenceReader {
    /// The 32-bit sequence of the last good reply.
    fn word32(&self) -> u32 {
        u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
    }

    /// What the two words hold now (0 without a good reply).
    async fn current<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        timeout: Duration,
    ) -> anyhow::Result<u32> {
        drain_quiet(stream, &mut self.scratch, Duration::ZERO).await?;
        let first = exchange(stream, &self.request, 2, timeout, &mut self.buf).await?;
        Ok(if first.status == RtuStatus::Ok {
            self.word32()
        } else {
            0
        })
    }

    /// Read back to back for `opts.duration`: (t_pre, t_last, seq) of every good reply,
    /// the count of the others, and when the reads began. Nothing allocated per read.
    async fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        opts: &AgeBenchOptions,
    ) -> anyhow::Result<(Vec<(Instant, Instant, u32)>, u64, Instant)> {
        let mut reads: Vec<(Instant, Instant, u32)> =
            Vec::with_capacity((opts.duration.as_secs_f64() * 20_000.0) as usize);
        let mut not_ok = 0u64;
        let started = Instant::now();
        let end = started + opts.duration;
        opts.progress.set_length(opts.duration.as_millis() as u64);
        let mut dirty = false;
        let mut i = 0u64;
        while Instant::now() < end {
            let window = if dirty { DRAIN_WINDOW } else { Duration::ZERO };
            drain_quiet(stream, &mut self.scratch, window).await?;
            let ex = exchange(stream, &self.request, 2, opts.timeout, &mut self.buf).await?;
            match (ex.status, ex.t_last) {
                (RtuStatus::Ok, Some(t_last)) => {
                    reads.push((ex.t_pre, t_last, self.word32()));
                    dirty = false;
                }
                (s, _) => {
                    not_ok += 1;
                    dirty = !matches!(s, RtuStatus::Exception(_));
                }
            }
            i += 1;
            if i.is_multiple_of(256) {
                opts.progress
                    .set_position(started.elapsed().as_millis() as u64);
            }
        }
        Ok((reads, not_ok, started))
    }
}

/// The offline part of the data-age analysis (as `dataage.py`): `pushes` are
/// (seq, sent, acked), `reads` (request start, last reply byte, seq) in time order.
pub fn age_analysis(
    pushes: &[(u32, Instant, Instant)],
    reads: &[(Instant, Instant, u32)],
) -> AgeReport {
    let mut r = AgeReport {
        reads_ok: reads.len() as u64,
        ..Default::default()
    };
    let (Some(first), Some(last)) = (reads.first(), reads.last()) else {
        return r;
    };
    // Reads that started before the first push was sent cannot carry a pushed sequence.
    let first_sent = pushes.iter().map(|p| p.1).min().unwrap_or(first.0);
    let t0 = first.0.max(first_sent);
    let reads: Vec<_> = reads.iter().copied().filter(|r| r.0 >= t0).collect();
    let reads = &reads[..];
    let t_last_send = last.0;
    let mut ages = LatencyHist::new();
    let mut from_send = LatencyHist::new();
    let mut sorted: Vec<&(u32, Instant, Instant)> = pushes.iter().collect();
    sorted.sort_by_key(|p| p.0);
    let mut j = 0;
    for &&(seq, ts, td) in &sorted {
        if td < t0 || td >= t_last_send {
            continue;
        }
        r.pushes_in_window += 1;
        while j < reads.len() && reads[j].2 < seq {
            j += 1;
        }
        let Some(read) = reads.get(j) else {
            r.pushes_unseen_at_end += 1;
            continue;
        };
        r.pushes_measured += 1;
        if read.1 < td {
            r.negative_clamped += 1;
        }
        ages.record(read.1.saturating_duration_since(td));
        from_send.record(read.1.saturating_duration_since(ts));
    }
    // Read-your-writes: the newest sequence acknowledged before each read was sent.
    let mut by_ack: Vec<(Instant, u32)> = pushes.iter().map(|p| (p.2, p.0)).collect();
    by_ack.sort();
    let (mut k, mut newest) = (0, None::<u32>);
    for &(t_send, _, seq) in reads {
        while k < by_ack.len() && by_ack[k].0 <= t_send {
            newest = Some(newest.map_or(by_ack[k].1, |n| n.max(by_ack[k].1)));
            k += 1;
        }
        if newest.is_some_and(|n| seq < n) {
            r.stale_after_ack_reads += 1;
        }
    }
    let mut period = LatencyHist::new();
    for w in reads.windows(2) {
        period.record(w[1].1.saturating_duration_since(w[0].1));
    }
    r.age = ages.summary();
    r.age_from_push_send = from_send.summary();
    r.read_period = period.summary();
    r
}
