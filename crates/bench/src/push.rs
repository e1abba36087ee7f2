//! `bench push`: act as the KSEM push (FC16 of both groups over N Modbus TCP connections);
//! write latency and throughput. Also the one FC16 write that `bench age` pushes with.
//! Refuses a gateway that holds a real KSEM's data unless told `--live` (see [`super::guard`]).
//! Touches only the sockets it opens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::guard::{self, fill_pattern, read_holding, LivePolicy, RESERVED};
use super::hist::{LatencyHist, Percentiles};
use super::{connect, round1, round3, ser_duration_ms, Pacer, FC_WRITE_MULTIPLE, PUSH_GROUPS};

/// What `bench push` does.
#[derive(Debug, Clone, Serialize)]
pub struct PushBenchOptions {
    /// The gateway's push listener.
    pub target: SocketAddr,
    /// Push cycles (group 0..27 then 40..145) per second per connection; `None`: as fast
    /// as possible.
    pub rate: Option<f64>,
    /// How long to push.
    #[serde(rename = "duration_ms", serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    /// Parallel connections.
    pub connections: usize,
    /// MBAP unit id.
    pub unit: u8,
    /// Per write (and per connect) timeout.
    #[serde(rename = "timeout_ms", serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
    /// Progress on stderr (hidden by default).
    #[serde(skip)]
    pub progress: ProgressBar,
    /// Stop early when cancelled (in addition to `duration`).
    #[serde(skip)]
    pub stop: CancellationToken,
    /// What to do when the image holds data the bench did not write.
    pub live: LivePolicy,
}

impl PushBenchOptions {
    pub fn new(target: SocketAddr) -> Self {
        PushBenchOptions {
            target,
            rate: None,
            duration: Duration::from_secs(10),
            connections: 1,
            unit: 1,
            timeout: Duration::from_secs(1),
            progress: ProgressBar::hidden(),
            stop: CancellationToken::new(),
            live: LivePolicy::Refuse,
        }
    }
}

/// Result of [`bench_push`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushBenchReport {
    /// Parallel connections used.
    pub connections: usize,
    /// Cycles per second per connection (`null`: max).
    pub rate: Option<f64>,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Exception replies by code.
    pub exceptions: BTreeMap<u8, u64>,
    /// Timeouts, I/O errors, connect failures and malformed replies.
    pub errors: u64,
    /// Connections re-opened after an error.
    pub reconnects: u64,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    /// Acknowledged registers per second.
    pub registers_per_s: f64,
    /// Request sent (before write) → complete response received, successful writes.
    pub latency: Percentiles,
}

#[derive(Default)]
struct PushAcc {
    /// Writes acknowledged.
    ok: u64,
    /// Registers in those writes.
    regs: u64,
    /// Exception replies by code.
    exceptions: BTreeMap<u8, u64>,
    /// Timeouts, I/O errors, connect failures and malformed replies.
    errors: u64,
    /// Connections re-opened.
    reconnects: u64,
    /// Latency of the acknowledged writes.
    hist: LatencyHist,
}

/// Encode an FC16 request with MBAP header into `out`; returns its length.
fn encode_fc16_tcp(out: &mut [u8], tid: u16, unit: u8, address: u16, values: &[u16]) -> usize {
    let n = values.len();
    let pdu_len = 6 + 2 * n;
    out[0..2].copy_from_slice(&tid.to_be_bytes());
    out[2..4].copy_from_slice(&0u16.to_be_bytes());
    out[4..6].copy_from_slice(&((pdu_len + 1) as u16).to_be_bytes());
    out[6] = unit;
    out[7] = FC_WRITE_MULTIPLE;
    out[8..10].copy_from_slice(&address.to_be_bytes());
    out[10..12].copy_from_slice(&(n as u16).to_be_bytes());
    out[12] = (2 * n) as u8;
    for (i, v) in values.iter().enumerate() {
        out[13 + 2 * i..15 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    7 + pdu_len
}

/// Outcome of one FC16 write.
pub(super) enum WriteOutcome {
    /// The write was acknowledged.
    Ok,
    /// An exception reply with this code.
    Exception(u8),
    /// A reply that does not answer the request (connection must be dropped).
    Bad,
}

/// One FC16 write, strictly request → response. Returns the outcome; I/O errors and
/// timeouts as `Err`.
pub(super) async fn push_write(
    sock: &mut TcpStream,
    tx: &mut [u8],
    tid: u16,
    unit: u8,
    address: u16,
    values: &[u16],
    timeout: Duration,
) -> std::io::Result<(WriteOutcome, Instant, Instant)> {
    let len = encode_fc16_tcp(tx, tid, unit, address, values);
    let mut hdr = [0u8; 7];
    let mut body = [0u8; 260];
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + timeout);
    let io = async {
        sock.write_all(&tx[..len]).await?;
        sock.read_exact(&mut hdr).await?;
        let blen = usize::from(u16::from_be_bytes([hdr[4], hdr[5]])).saturating_sub(1);
        if blen == 0 || blen > body.len() {
            return Ok(None);
        }
        sock.read_exact(&mut body[..blen]).await?;
        Ok::<_, std::io::Error>(Some(blen))
    };
    let blen = tokio::time::timeout_at(deadline, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "push write timed out"))??;
    let t1 = Instant::now();
    let Some(blen) = blen else {
        return Ok((WriteOutcome::Bad, t0, t1));
    };
    let body = &body[..blen];
    if u16::from_be_bytes([hdr[0], hdr[1]]) != tid || hdr[2] != 0 || hdr[3] != 0 {
        return Ok((WriteOutcome::Bad, t0, t1));
    }
    if body[0] == FC_WRITE_MULTIPLE | 0x80 && blen == 2 {
        return Ok((WriteOutcome::Exception(body[1]), t0, t1));
    }
    let mut want = [0u8; 5];
    want[0] = FC_WRITE_MULTIPLE;
    want[1..3].copy_from_slice(&address.to_be_bytes());
    want[3..5].copy_from_slice(&(values.len() as u16).to_be_bytes());
    if body != want {
        return Ok((WriteOutcome::Bad, t0, t1));
    }
    Ok((WriteOutcome::Ok, t0, t1))
}

/// One push connection until `stop`: connect, push cycle after cycle at the rate asked,
/// and after an error reconnect (100 ms later) and go on.
async fn push_connection(opts: PushBenchOptions, conn: usize, stop: CancellationToken) -> PushAcc {
    let mut pushes = Pushes::new(opts);
    let mut pacer = Pacer::new(pushes.opts.rate);
    let mut seq: u32 = (conn as u32) << 24;
    let mut first = true;
    'outer: while !stop.is_cancelled() {
        if !first {
            pushes.acc.reconnects += 1;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        first = false;
        let mut sock = match connect(pushes.opts.target, pushes.opts.timeout).await {
            Ok(s) => s,
            Err(_) => {
                pushes.acc.errors += 1;
                continue;
            }
        };
        while !stop.is_cancelled() {
            if pacer.is_paced() {
                tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    () = pacer.wait() => {}
                }
            }
            seq = seq.wrapping_add(1);
            if !pushes.cycle(&mut sock, seq).await {
                continue 'outer; // reconnect: a late reply would confuse tids
            }
        }
    }
    pushes.acc
}

/// One connection's pushes: the groups and their words, the transaction ids, the counts.
struct Pushes {
    opts: PushBenchOptions,
    /// (address, words) of each write of a cycle.
    groups: Vec<(u16, Vec<u16>)>,
    /// The request being sent.
    tx: [u8; 7 + 6 + 2 * 125],
    /// The last transaction id used.
    tid: u16,
    acc: PushAcc,
}

impl Pushes {
    /// Values: by default both groups carry the bench's pattern (a per-connection 32-bit
    /// sequence in their first two words). `--live`: 0..39 and 40..145 are read from the
    /// image and written back as they are, with the sequence only in the reserved 28..29.
    fn new(opts: PushBenchOptions) -> Self {
        let layout: &[(u16, u16)] = if opts.live == LivePolicy::Preserve {
            &[(0, RESERVED.0 + RESERVED.1), PUSH_GROUPS[1]]
        } else {
            &PUSH_GROUPS
        };
        let groups = layout
            .iter()
            .map(|&(a, n)| (a, vec![0u16; usize::from(n)]))
            .collect();
        Pushes {
            opts,
            groups,
            tx: [0u8; 7 + 6 + 2 * 125],
            tid: 0,
            acc: PushAcc::default(),
        }
    }

    /// Write every group once with sequence `seq` (under `--live` each read back first);
    /// `false` when the connection must be re-opened.
    async fn cycle(&mut self, sock: &mut TcpStream, seq: u32) -> bool {
        let opts = &self.opts;
        for (address, words) in &mut self.groups {
            if opts.live == LivePolicy::Preserve {
                self.tid = self.tid.wrapping_add(1);
                let count = words.len() as u16;
                match read_holding(sock, self.tid, opts.unit, *address, count, opts.timeout).await {
                    Ok(held) if held.len() == words.len() => words.copy_from_slice(&held),
                    _ => {
                        self.acc.errors += 1;
                        return false;
                    }
                }
                if *address == 0 {
                    let at = usize::from(RESERVED.0);
                    words[at] = (seq >> 16) as u16;
                    words[at + 1] = seq as u16;
                }
            } else {
                fill_pattern(words, seq);
            }
            self.tid = self.tid.wrapping_add(1);
            let (unit, timeout) = (opts.unit, opts.timeout);
            match push_write(sock, &mut self.tx, self.tid, unit, *address, words, timeout).await {
                Ok((WriteOutcome::Ok, t0, t1)) => {
                    self.acc.ok += 1;
                    self.acc.regs += words.len() as u64;
                    self.acc.hist.record(t1.saturating_duration_since(t0));
                }
                Ok((WriteOutcome::Exception(c), _, _)) => {
                    *self.acc.exceptions.entry(c).or_default() += 1;
                }
                Ok((WriteOutcome::Bad, _, _)) | Err(_) => {
                    self.acc.errors += 1;
                    return false;
                }
            }
        }
        true
    }
}

/// Act as the KSEM push: `opts.connections` connections, each alternately writing FC16
/// group 0..27 and 40..145 with changing values, for `opts.duration` (or until
/// `opts.stop`). Under [`LivePolicy::Refuse`] it first refuses a gateway holding foreign
/// data; under [`LivePolicy::Preserve`] each write is preceded by a read of the same words
/// (not timed) and changes only the reserved words 28..29.
pub async fn bench_push(opts: &PushBenchOptions) -> anyhow::Result<PushBenchReport> {
    anyhow::ensure!(opts.connections > 0, "at least one connection");
    guard::check(opts.live, opts.target, opts.unit, opts.timeout, "push").await?;
    let stop = opts.stop.child_token();
    let started = Instant::now();
    let tasks: Vec<_> = (0..opts.connections)
        .map(|c| tokio::spawn(push_connection(opts.clone(), c, stop.clone())))
        .collect();
    let ms = opts.duration.as_millis() as u64;
    opts.progress.set_length(ms);
    let end = tokio::time::Instant::from_std(started + opts.duration);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => opts.progress.set_position(started.elapsed().as_millis() as u64),
        }
    }
    stop.cancel();
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = PushAcc::default();
    for t in tasks {
        let a = t.await.context("push connection task")?;
        total.ok += a.ok;
        total.regs += a.regs;
        total.errors += a.errors;
        total.reconnects += a.reconnects;
        for (c, n) in a.exceptions {
            *total.exceptions.entry(c).or_default() += n;
        }
        total.hist.add(&a.hist);
    }
    opts.progress.finish_and_clear();
    Ok(PushBenchReport {
        connections: opts.connections,
        rate: opts.rate,
        elapsed_s: round3(elapsed),
        writes_ok: total.ok,
        exceptions: total.exceptions,
        errors: total.errors,
        reconnects: total.reconnects,
        writes_per_s: round1(total.ok as f64 / elapsed.max(1e-9)),
        registers_per_s: round1(total.regs as f64 / elapsed.max(1e-9)),
        latency: total.hist.summary(),
    })
}
