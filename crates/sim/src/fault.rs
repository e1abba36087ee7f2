//! Fault injection: misbehaving peers for the fault and soak tests.
//!
//! Owns three tools, each a real program on the wire (raw Modbus TCP or RTU bytes, so it can
//! send what no well-behaved library would):
//! - [`FaultySlave`]: the KSEM's Modbus TCP slave with a switchable [`SlaveFault`]: refuse
//!   connections, accept and hang (no reply, no FIN), reset in the middle of a reply, reply
//!   with a wrong transaction id, a wrong length or a wrong unit, or with an exception. It
//!   serves generation-encoded words ([`slave_word`]) so a reader can tell which epoch it saw.
//! - [`FaultyPusher`]: the KSEM's push client with a switchable [`PushFault`]: stop pushing
//!   (connection left open), push garbage, push outside the push regions. Every good push
//!   writes [`push_word`]s that encode its sequence number, so torn or mixed values show.
//!   [`hog`] opens idle connections to exhaust a connection limit.
//! - [`bus`]: RTU byte makers for a shared serial bus: noise, other masters' requests and
//!   their slaves' responses, broadcast writes.
//!
//! May touch: the loopback sockets it binds or connects to. Shares nothing with the gateway
//! but the wire (and the CRC).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How the faulty slave answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveFault {
    /// Correct replies.
    None,
    /// The port is closed: connects are refused, open connections are reset.
    Refuse,
    /// Accept and read requests, never reply, never close.
    Hang,
    /// Send the first half of each reply, then reset the connection (RST).
    ResetMidReply,
    /// Reply with the transaction id plus one.
    WrongTransaction,
    /// Reply whose byte count promises one register more than the frame carries.
    WrongLength,
    /// Reply from another unit id.
    WrongUnit,
    /// Reply with this exception code.
    Exception(u8),
}

/// The word the faulty slave serves at `address` in `epoch`.
pub fn slave_word(epoch: u16, address: u16) -> u16 {
    epoch.wrapping_mul(0x3B) ^ address.wrapping_mul(0x9E37)
}

/// Counters of a [`FaultySlave`].
#[derive(Debug, Default)]
pub struct FaultySlaveStats {
    /// Connections accepted (a reconnecting poller shows here).
    pub accepted: AtomicU64,
    /// Requests received, answered or not.
    pub requests: AtomicU64,
    /// Correct replies sent.
    pub replies: AtomicU64,
    /// Requests answered (or not) with a fault.
    pub faulted: AtomicU64,
}

/// What the slave's connections share with its handle.
struct SlaveShared {
    /// The fault in force; switched by the test at any time.
    fault: Mutex<SlaveFault>,
    /// The generation the served words encode ([`slave_word`]).
    epoch: Mutex<u16>,
    /// The slave's counters.
    stats: FaultySlaveStats,
}

/// A Modbus TCP slave with switchable faults. Dropping it stops it.
pub struct FaultySlave {
    /// Where it listens (kept across restarts of the listener).
    addr: SocketAddr,
    /// Fault, epoch and counters, shared with the connections.
    shared: Arc<SlaveShared>,
    /// Cancels the current listener and its connections.
    running: Mutex<Option<CancellationToken>>,
}

impl Drop for FaultySlave {
    fn drop(&mut self) {
        if let Ok(mut r) = self.running.lock() {
            if let Some(c) = r.take() {
                c.cancel();
            }
        }
    }
}

impl FaultySlave {
    /// Listen on `addr` (port 0: any free port) with no fault.
    pub async fn start(addr: SocketAddr) -> std::io::Result<FaultySlave> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let s = FaultySlave {
            addr,
            shared: Arc::new(SlaveShared {
                fault: Mutex::new(SlaveFault::None),
                epoch: Mutex::new(1),
                stats: FaultySlaveStats::default(),
            }),
            running: Mutex::new(None),
        };
        s.serve(listener);
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &FaultySlaveStats {
        &self.shared.stats
    }

    /// Serve words of `epoch` from now on.
    pub fn set_epoch(&self, epoch: u16) {
        if let Ok(mut e) = self.shared.epoch.lock() {
            *e = epoch;
        }
    }

    pub fn epoch(&self) -> u16 {
        self.shared.epoch.lock().map(|e| *e).unwrap_or(0)
    }

    /// Switch the fault. `Refuse` closes the port (and resets open connections); leaving it
    /// binds the same port again.
    pub async fn set(&self, fault: SlaveFault) -> std::io::Result<()> {
        if let Ok(mut f) = self.shared.fault.lock() {
            *f = fault;
        }
        let listening = self.running.lock().map(|r| r.is_some()).unwrap_or(false);
        if fault == SlaveFault::Refuse {
            if let Ok(mut r) = self.running.lock() {
                if let Some(c) = r.take() {
                    c.cancel();
                }
            }
        } else if !listening {
            // The old listener may take a moment to be released.
            let mut tries = 0;
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if tries > 50 => return Err(e),
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            self.serve(listener);
        }
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let cancel = CancellationToken::new();
        if let Ok(mut r) = self.running.lock() {
            *r = Some(cancel.clone());
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(_) => continue,
                    },
                };
                shared.stats.accepted.fetch_add(1, Relaxed);
                let shared = Arc::clone(&shared);
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let stream = tokio::select! {
                        () = cancel.cancelled() => {
                            return;
                        }
                        s = connection(stream, &shared) => s,
                    };
                    drop(stream);
                });
            }
        });
    }
}

/// Serve one connection until the peer leaves or a fault ends it.
async fn connection(mut s: TcpStream, shared: &SlaveShared) -> Option<TcpStream> {
    loop {
        let mut hdr = [0u8; 7];
        s.read_exact(&mut hdr).await.ok()?;
        let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        if !(2..=254).contains(&len) {
            return None;
        }
        let mut pdu = vec![0u8; len - 1];
        s.read_exact(&mut pdu).await.ok()?;
        shared.stats.requests.fetch_add(1, Relaxed);
        let fault = shared.fault.lock().map(|f| *f).unwrap_or(SlaveFault::None);
        let epoch = shared.epoch.lock().map(|e| *e).unwrap_or(0);
        let (tid, unit) = (u16::from_be_bytes([hdr[0], hdr[1]]), hdr[6]);
        let fc = pdu.first().copied().unwrap_or(0);
        let read = match (fc, pdu.get(1..5)) {
            (3 | 4, Some(b)) => Some((
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            )),
            _ => None,
        };
        let body: Vec<u8> = match (fault, read) {
            (SlaveFault::Exception(code), _) => vec![fc | 0x80, code],
            (_, None) => vec![fc | 0x80, 1],
            (_, Some((_, count))) if count == 0 || count > 125 => vec![fc | 0x80, 3],
            (_, Some((addr, count))) => {
                let mut b = vec![fc, (2 * count) as u8];
                for a in 0..count {
                    b.extend_from_slice(&slave_word(epoch, addr.wrapping_add(a)).to_be_bytes());
                }
                if fault == SlaveFault::WrongLength {
                    b[1] = b[1].wrapping_add(2);
                }
                b
            }
        };
        let (tid, unit) = match fault {
            SlaveFault::WrongTransaction => (tid.wrapping_add(1), unit),
            SlaveFault::WrongUnit => (tid, unit ^ 0x55),
            _ => (tid, unit),
        };
        let mut reply = tid.to_be_bytes().to_vec();
        reply.extend_from_slice(&[0, 0]);
        reply.extend_from_slice(&((body.len() + 1) as u16).to_be_bytes());
        reply.push(unit);
        reply.extend_from_slice(&body);
        match fault {
            SlaveFault::None => {
                shared.stats.replies.fetch_add(1, Relaxed);
            }
            SlaveFault::Refuse => return None,
            SlaveFault::Hang => {
                shared.stats.faulted.fetch_add(1, Relaxed);
                continue;
            }
            SlaveFault::ResetMidReply => {
                shared.stats.faulted.fetch_add(1, Relaxed);
                let _ = s.write_all(&reply[..reply.len() / 2]).await;
                let _ = s.flush().await;
                // Linger 0 makes the drop send RST at once (no blocking: the timeout is 0).
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                return None; // dropped with linger 0: RST
            }
            _ => {
                shared.stats.faulted.fetch_add(1, Relaxed);
            }
        }
        s.write_all(&reply).await.ok()?;
    }
}

/// What the faulty pusher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFault {
    /// The two KSEM groups (0..27, 40..145) every interval.
    None,
    /// Nothing; the connection stays open.
    Stop,
    /// Random bytes instead of Modbus (the gateway closes; the pusher reconnects).
    Garbage,
    /// FC16 writes outside the push regions (148..=150 and 8192..=8193).
    Outside,
}

/// The push groups the pusher writes: (start, count).
pub const PUSH_GROUPS: [(u16, u16); 2] = [(0, 28), (40, 106)];

/// Word `address` of push number `seq`: every word of one push encodes the same `seq`.
pub fn push_word(seq: u32, address: u16) -> u16 {
    (seq as u16) ^ address.wrapping_mul(0x9E37)
}

/// The push number a word at `address` carries.
pub fn push_seq(word: u16, address: u16) -> u16 {
    word ^ address.wrapping_mul(0x9E37)
}

/// Counters of a [`FaultyPusher`].
#[derive(Debug, Default)]
pub struct FaultyPusherStats {
    /// Connections made to the push port.
    pub connects: AtomicU64,
    /// Pushes acknowledged (both groups of one cycle count as one).
    pub pushes_ok: AtomicU64,
    /// Sequence number of the last push acknowledged.
    pub last_seq: AtomicU64,
    /// Pushes answered with a Modbus exception.
    pub exceptions: AtomicU64,
    /// Connect failures, resets, timeouts.
    pub errors: AtomicU64,
    /// Junk bytes sent under the garbage fault.
    pub garbage_bytes: AtomicU64,
}

/// When each recent push was sent: (sequence number, time its first write was sent).
type SentLog = Arc<Mutex<std::collections::VecDeque<(u32, tokio::time::Instant)>>>;

/// A KSEM push client with switchable faults. Dropping it stops it.
pub struct FaultyPusher {
    /// The fault in force; switched by the test at any time.
    fault: Arc<Mutex<PushFault>>,
    /// The pusher's counters.
    stats: Arc<FaultyPusherStats>,
    /// When recent pushes were sent, to measure their age on the other side.
    sent: SentLog,
    /// Stops the push task (on drop).
    cancel: CancellationToken,
}

impl Drop for FaultyPusher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FaultyPusher {
    /// Push to `target` every `interval`; reconnects after 100 ms on any error.
    pub fn start(target: SocketAddr, interval: Duration, seed: u64) -> FaultyPusher {
        let fault = Arc::new(Mutex::new(PushFault::None));
        let stats = Arc::new(FaultyPusherStats::default());
        let cancel = CancellationToken::new();
        let sent = SentLog::default();
        let (f, s, c, l) = (
            Arc::clone(&fault),
            Arc::clone(&stats),
            cancel.clone(),
            Arc::clone(&sent),
        );
        tokio::spawn(async move {
            c.run_until_cancelled(push_loop(target, interval, f, s, l, seed))
                .await;
        });
        FaultyPusher {
            fault,
            stats,
            sent,
            cancel,
        }
    }

    /// When the most recent push whose sequence number ends in `seq16` was sent (the last
    /// 4096 pushes are remembered).
    pub fn sent_at(&self, seq16: u16) -> Option<tokio::time::Instant> {
        let log = self.sent.lock().ok()?;
        log.iter()
            .rev()
            .find(|(s, _)| *s as u16 == seq16)
            .map(|(_, t)| *t)
    }

    pub fn set(&self, fault: PushFault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    pub fn stats(&self) -> &FaultyPusherStats {
        &self.stats
    }
}

fn fc16(tid: u16, address: u16, words: &[u16]) -> Vec<u8> {
    let n = words.len();
    let mut b = tid.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&((7 + 2 * n) as u16).to_be_bytes());
    b.extend_from_slice(&[1, 16]);
    b.extend_from_slice(&address.to_be_bytes());
    b.extend_from_slice(&(n as u16).to_be_bytes());
    b.push((2 * n) as u8);
    for w in words {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b
}

/// Send one FC16 and read its reply: Ok(true) acknowledged, Ok(false) exception.
async fn write_one(s: &mut TcpStream, tid: u16, address: u16, words: &[u16]) -> Option<bool> {
    s.write_all(&fc16(tid, address, words)).await.ok()?;
    let mut hdr = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut hdr))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    let mut pdu = vec![0u8; len.saturating_sub(1)];
    tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut pdu))
        .await
        .ok()?
        .ok()?;
    if u16::from_be_bytes([hdr[0], hdr[1]]) != tid {
        return None;
    }
    Some(pdu.first().is_some_and(|f| *f == 16))
}

/// The pusher's loop: connect, push every `interval` as the fault in force says, and on
/// any error count it and reconnect after 100 ms.
async fn push_loop(
    target: SocketAddr,
    interval: Duration,
    fault: Arc<Mutex<PushFault>>,
    stats: Arc<FaultyPusherStats>,
    sent: SentLog,
    seed: u64,
) {
    let mut pushes = Pushes {
        rng: fastrand::Rng::with_seed(seed),
        seq: 0,
        tid: 0,
        stats,
        sent,
    };
    loop {
        let mut s = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(_) => {
                pushes.stats.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        pushes.stats.connects.fetch_add(1, Relaxed);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mode = fault.lock().map(|f| *f).unwrap_or(PushFault::None);
            let ok = match mode {
                PushFault::Stop => true,
                PushFault::Garbage => pushes.garbage(&mut s).await,
                PushFault::Outside => pushes.outside(&mut s).await,
                PushFault::None => pushes.good(&mut s).await,
            };
            if !ok {
                pushes.stats.errors.fetch_add(1, Relaxed);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the pusher carries from one push to the next, across reconnects.
struct Pushes {
    /// Garbage lengths and bytes.
    rng: fastrand::Rng,
    /// The sequence number of the last good push.
    seq: u32,
    /// The last transaction id used.
    tid: u16,
    stats: Arc<FaultyPusherStats>,
    sent: SentLog,
}

impl Pushes {
    /// Send 1..63 random bytes; always `false`: the gateway answers garbage by closing, so
    /// the pusher reconnects (after the gateway did).
    async fn garbage(&mut self, s: &mut TcpStream) -> bool {
        let n = self.rng.usize(1..64);
        let junk: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
        self.stats.garbage_bytes.fetch_add(n as u64, Relaxed);
        let _ = s.write_all(&junk).await;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        false
    }

    /// Push outside the push regions (148..150, 8192..8193); `false` if a write got no
    /// answer (exceptions are counted, not errors).
    async fn outside(&mut self, s: &mut TcpStream) -> bool {
        let mut all = true;
        for (a, n) in [(148u16, 3usize), (8192, 2)] {
            self.tid = self.tid.wrapping_add(1);
            match write_one(s, self.tid, a, &vec![0xDEAD; n]).await {
                Some(false) => {
                    self.stats.exceptions.fetch_add(1, Relaxed);
                }
                Some(true) => {}
                None => all = false,
            }
        }
        all
    }

    /// A good push: both groups with the next sequence number in every word, its send
    /// time logged; `false` unless both were acknowledged.
    async fn good(&mut self, s: &mut TcpStream) -> bool {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        if let Ok(mut log) = self.sent.lock() {
            if log.len() >= 4096 {
                log.pop_front();
            }
            log.push_back((seq, tokio::time::Instant::now()));
        }
        let mut all = true;
        for (start, count) in PUSH_GROUPS {
            let words: Vec<u16> = (start..start + count).map(|a| push_word(seq, a)).collect();
            self.tid = self.tid.wrapping_add(1);
            match write_one(s, self.tid, start, &words).await {
                Some(true) => {}
                Some(false) => {
                    self.stats.exceptions.fetch_add(1, Relaxed);
                    all = false;
                }
                None => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            self.stats.pushes_ok.fetch_add(1, Relaxed);
            self.stats.last_seq.store(u64::from(seq), Relaxed);
        }
        all
    }
}

/// Open `n` connections to `target` and keep them open and silent.
pub async fn hog(target: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        if let Ok(s) = TcpStream::connect(target).await {
            out.push(s);
        }
    }
    out
}

/// RTU bytes for a shared serial bus.
pub mod bus {
    use airbridge_modbus::crc::crc16;

    fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
        let c = crc16(&b).to_le_bytes();
        b.extend_from_slice(&c);
        b
    }

    /// `n` random bytes.
    pub fn noise(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.u8(..)).collect()
    }

    /// Another master's read request (FC03/04) to `unit`.
    pub fn request(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
        let mut b = vec![unit, function];
        b.extend_from_slice(&address.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        with_crc(b)
    }

    /// `unit`'s response to a read of `count` registers.
    pub fn response(unit: u8, function: u8, count: u8) -> Vec<u8> {
        let mut b = vec![unit, function, 2 * count];
        b.extend((0..2 * u16::from(count)).map(|i| (i * 13) as u8));
        with_crc(b)
    }

    /// A broadcast write: FC06 of `value`, or FC16 of `values`, at `address`.
    pub fn broadcast(address: u16, values: &[u16]) -> Vec<u8> {
        let mut b = vec![0];
        if let [v] = values {
            b.push(6);
            b.extend_from_slice(&address.to_be_bytes());
            b.extend_from_slice(&v.to_be_bytes());
        } else {
            b.push(16);
            b.extend_from_slice(&address.to_be_bytes());
            b.extend_from_slice(&(values.len() as u16).to_be_bytes());
            b.push((2 * values.len()) as u8);
            for v in values {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        with_crc(b)
    }
}
