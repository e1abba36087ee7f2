//! The frame journal: the last N frames the gateway saw or sent, and what it did with them.
//!
//! Owns a bounded ring of fixed-size slots. Writers (the RTU slave after its reply is
//! written, the push server, the poller) record an [`Entry`] with a few atomic stores: no
//! allocation, no lock, no waiting. Each slot is a seqlock: a writer that finds its slot
//! being written by another (possible only when the ring wraps within one write) drops its
//! entry and counts it, and a reader skips slots that change under it. Readers
//! ([`Journal::entries`]: `/journal`, the SIGUSR1 dump) copy and decode. The oldest entries
//! are overwritten; there are never more than `capacity`. Touches nothing else.

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries kept by the gateway's journal.
pub const DEFAULT_CAPACITY: usize = 512;

/// Where a frame travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The RS485 bus (the inverter's side).
    Rtu,
    /// The push server (the KSEM writes to us).
    Push,
    /// The poller (we read the KSEM's slave).
    Poll,
}

/// Which way: `In` = a frame the gateway received (a request to it), `Out` = a request the
/// gateway sent (polls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Received: a request to the gateway.
    In,
    /// Sent: a request of the gateway's poller.
    Out,
}

/// Why a frame was dropped without an answer (RTU framer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The frame's CRC was wrong.
    Crc,
    /// A frame for another unit id (or a response on the bus).
    ForeignUnit,
    /// Unit 0: a broadcast, never answered.
    Broadcast,
    /// A partial frame discarded at silence.
    Partial,
    /// Bytes discarded while hunting for a frame (`count` = bytes).
    Garbage,
    /// More bytes than a Modbus RTU frame can hold.
    Oversize,
}

/// What the gateway did with the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answered with data (RTU: reply bytes; push: write acknowledged / read answered).
    Answered { bytes: u16 },
    /// A push write applied to the image and acknowledged.
    Written,
    /// Answered with this exception code.
    Exception { code: u8 },
    /// No reply: a touched region was stale and its policy is silence.
    SilentStale,
    /// No reply: the image was not warm yet.
    SilentWarmup,
    /// Not a request for us, or broken: dropped.
    Dropped(DropReason),
    /// A poll read that succeeded and was committed (`bytes` of register data).
    Polled { bytes: u16 },
    /// A poll read whose result was discarded because a newer push landed meanwhile.
    Superseded,
    /// A poll read that failed.
    PollFailed(PollFailure),
}

/// Why a poll read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollFailure {
    /// No reply in time.
    Timeout,
    /// The KSEM answered with this exception code.
    Exception(u8),
    /// Connection or protocol error.
    Transport,
}

/// One journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Microseconds since the Unix epoch (wall clock) of the frame's arrival / sending.
    pub t_us: u64,
    /// Which link the frame was on.
    pub link: Link,
    /// Received or sent.
    pub dir: Dir,
    /// The unit id it was addressed to.
    pub unit: u8,
    /// The function code.
    pub function: u8,
    /// First register address.
    pub address: u16,
    /// Registers (reads, writes); for `Dropped(Garbage)` the bytes dropped.
    pub count: u16,
    /// What the gateway did with it.
    pub action: Action,
    /// Frame received → reply written (RTU), request → response (poll); µs, saturating.
    pub latency_us: u32,
}

/// What a writer passes: the entry without its wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When the frame arrived (or the request was sent).
    pub at: Instant,
    /// See [`Entry::link`].
    pub link: Link,
    /// See [`Entry::dir`].
    pub dir: Dir,
    /// See [`Entry::unit`].
    pub unit: u8,
    /// See [`Entry::function`].
    pub function: u8,
    /// See [`Entry::address`].
    pub address: u16,
    /// See [`Entry::count`].
    pub count: u16,
    /// See [`Entry::action`].
    pub action: Action,
    /// Frame received → reply written (see [`Entry::latency_us`]).
    pub latency: Duration,
}

impl Record {
    /// A request received on `link` at `at`; `head` is its (function, address, count).
    pub fn received(
        link: Link,
        at: Instant,
        unit: u8,
        head: (u8, u16, u16),
        action: Action,
        latency: Duration,
    ) -> Record {
        let (function, address, count) = head;
        Record {
            at,
            link,
            dir: Dir::In,
            unit,
            function,
            address,
            count,
            action,
            latency,
        }
    }
}

struct Slot {
    /// `2·(ticket+1)` once entry `ticket` is complete; odd while being written.
    seq: AtomicU64,
    /// The entry packed into three words, so a slot is written without a lock.
    words: [AtomicU64; 3],
}

/// A bounded, lock-free ring of [`Entry`]s.
pub struct Journal {
    /// The ring; a ticket picks slot `ticket % len`.
    slots: Box<[Slot]>,
    /// Tickets handed out (= entries ever recorded or dropped).
    head: AtomicU64,
    /// Entries lost because a reader or a slower writer held their slot.
    dropped: AtomicU64,
    /// Monotonic reference of the wall-clock times below.
    epoch: Instant,
    /// Wall-clock time of `epoch`, µs since the Unix epoch.
    epoch_unix_us: u64,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("capacity", &self.slots.len())
            .field("recorded", &self.recorded())
            .finish()
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new(DEFAULT_CAPACITY)
    }
}

impl Journal {
    /// A journal keeping the last `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let slots = (0..capacity.max(1))
            .map(|_| Slot {
                seq: AtomicU64::new(0),
                words: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        let epoch_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Journal {
            slots,
            head: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            epoch: Instant::now(),
            epoch_unix_us,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries recorded since start (including those since overwritten, and dropped ones).
    pub fn recorded(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Entries dropped because their slot was being written by another writer.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Record `r`. Wait-free: a few atomic operations, no allocation, no lock.
    #[inline]
    pub fn record(&self, r: &Record) {
        let t_us = self.unix_us(r.at);
        let ticket = self.head.fetch_add(1, Ordering::Relaxed);
        let cap = self.slots.len() as u64;
        let Some(slot) = self.slots.get((ticket % cap) as usize) else {
            return;
        };
        let writing = 2 * ticket + 1;
        let cur = slot.seq.load(Ordering::Relaxed);
        // Another writer is inside, or a later lap already wrote here: give way.
        if cur & 1 == 1
            || cur > writing
            || slot
                .seq
                .compare_exchange(cur, writing, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        fence(Ordering::Release);
        let [w0, w1, w2] = encode(t_us, r);
        slot.words[0].store(w0, Ordering::Relaxed);
        slot.words[1].store(w1, Ordering::Relaxed);
        slot.words[2].store(w2, Ordering::Relaxed);
        slot.seq.store(writing + 1, Ordering::Release);
    }

    fn unix_us(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        self.epoch_unix_us
            .saturating_add(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// The entries held now, oldest first (at most `capacity`; entries being written at
    /// this moment are left out).
    pub fn entries(&self) -> Vec<Entry> {
        self.last(self.slots.len())
    }

    /// The newest `n` entries held now, oldest first.
    pub fn last(&self, n: usize) -> Vec<Entry> {
        let head = self.head.load(Ordering::Acquire);
        let cap = self.slots.len() as u64;
        let n = (n as u64).min(cap);
        let mut out = Vec::with_capacity(n as usize);
        for ticket in head.saturating_sub(n)..head {
            let Some(slot) = self.slots.get((ticket % cap) as usize) else {
                continue;
            };
            let want = 2 * ticket + 2;
            if slot.seq.load(Ordering::Acquire) != want {
                continue; // in flight, dropped, or already overwritten
            }
            let words = [
                slot.words[0].load(Ordering::Relaxed),
                slot.words[1].load(Ordering::Relaxed),
                slot.words[2].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != want {
                continue; // overwritten while we read it
            }
            if let Some(e) = decode(words) {
                out.push(e);
            }
        }
        out
    }
}

// Layout: w0 = t_us; w1 = link | dir<<8 | unit<<16 | function<<24 | address<<32 | count<<48;
// w2 = action kind | action arg<<8 (16 bits) | latency_us<<32.
fn encode(t_us: u64, r: &Record) -> [u64; 3] {
    let link = match r.link {
        Link::Rtu => 0u64,
        Link::Push => 1,
        Link::Poll => 2,
    };
    let dir = match r.dir {
        Dir::In => 0u64,
        Dir::Out => 1,
    };
    let w1 = link
        | dir << 8
        | u64::from(r.unit) << 16
        | u64::from(r.function) << 24
        | u64::from(r.address) << 32
        | u64::from(r.count) << 48;
    let (kind, arg): (u64, u64) = match r.action {
        Action::Answered { bytes } => (0, u64::from(bytes)),
        Action::Exception { code } => (1, u64::from(code)),
        Action::SilentStale => (2, 0),
        Action::SilentWarmup => (3, 0),
        Action::Dropped(d) => (
            4,
            match d {
                DropReason::Crc => 0,
                DropReason::ForeignUnit => 1,
                DropReason::Broadcast => 2,
                DropReason::Partial => 3,
                DropReason::Garbage => 4,
                DropReason::Oversize => 5,
            },
        ),
        Action::Polled { bytes } => (5, u64::from(bytes)),
        Action::Superseded => (6, 0),
        Action::PollFailed(PollFailure::Timeout) => (7, 0),
        Action::PollFailed(PollFailure::Transport) => (8, 0),
        Action::PollFailed(PollFailure::Exception(code)) => (9, u64::from(code)),
        Action::Written => (10, 0),
    };
    let latency = u64::try_from(r.latency.as_micros())
        .unwrap_or(u64::MAX)
        .min(u64::from(u32::MAX));
    [t_us, w1, kind | arg << 8 | latency << 32]
}

fn decode([w0, w1, w2]: [u64; 3]) -> Option<Entry> {
    let link = match w1 & 0xFF {
        0 => Link::Rtu,
        1 => Link::Push,
        2 => Link::Poll,
        _ => return None,
    };
    let dir = if (w1 >> 8) & 0xFF == 0 {
        Dir::In
    } else {
        Dir::Out
    };
    let arg = ((w2 >> 8) & 0xFFFF) as u16;
    let action = match w2 & 0xFF {
        0 => Action::Answered { bytes: arg },
        1 => Action::Exception { code: arg as u8 },
        2 => Action::SilentStale,
        3 => Action::SilentWarmup,
        4 => Action::Dropped(match arg {
            0 => DropReason::Crc,
            1 => DropReason::ForeignUnit,
            2 => DropReason::Broadcast,
            3 => DropReason::Partial,
            4 => DropReason::Garbage,
            _ => DropReason::Oversize,
        }),
        5 => Action::Polled { bytes: arg },
        6 => Action::Superseded,
        7 => Action::PollFailed(PollFailure::Timeout),
        8 => Action::PollFailed(PollFailure::Transport),
        9 => Action::PollFailed(PollFailure::Exception(arg as u8)),
        10 => Action::Written,
        _ => return None,
    };
    Some(Entry {
        t_us: w0,
        link,
        dir,
        unit: (w1 >> 16) as u8,
        function: (w1 >> 24) as u8,
        address: (w1 >> 32) as u16,
        count: (w1 >> 48) as u16,
        action,
        latency_us: (w2 >> 32) as u32,
    })
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Rtu => "rtu",
            Link::Push => "push",
            Link::Poll => "poll",
        }
    }
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Crc => "crc",
            DropReason::ForeignUnit => "foreign unit",
            DropReason::Broadcast => "broadcast",
            DropReason::Partial => "partial frame",
            DropReason::Garbage => "garbage",
            DropReason::Oversize => "oversize",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Answered { bytes } => write!(f, "answered, {bytes} bytes"),
            Action::Written => f.write_str("written"),
            Action::Exception { code } => write!(f, "exception {code:02}"),
            Action::SilentStale => f.write_str("silent: stale"),
            Action::SilentWarmup => f.write_str("silent: warm-up"),
            Action::Dropped(r) => write!(f, "dropped: {}", r.as_str()),
            Action::Polled { bytes } => write!(f, "committed, {bytes} bytes"),
            Action::Superseded => f.write_str("discarded: a newer push landed"),
            Action::PollFailed(PollFailure::Timeout) => f.write_str("failed: timeout"),
            Action::PollFailed(PollFailure::Transport) => f.write_str("failed: connection"),
            Action::PollFailed(PollFailure::Exception(c)) => write!(f, "failed: exception {c:02}"),
        }
    }
}

impl Action {
    /// A short machine-readable kind (`answered`, `exception`, `silent_stale`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Answered { .. } => "answered",
            Action::Written => "written",
            Action::Exception { .. } => "exception",
            Action::SilentStale => "silent_stale",
            Action::SilentWarmup => "silent_warmup",
            Action::Dropped(_) => "dropped",
            Action::Polled { .. } => "committed",
            Action::Superseded => "superseded",
            Action::PollFailed(_) => "failed",
        }
    }
}

impl Entry {
    /// The frame, decoded: `FC03 0..74` (start..end, end exclusive), `unit 7 FC03`,
    /// `37 bytes`.
    pub fn frame(&self) -> String {
        match self.action {
            Action::Dropped(DropReason::Garbage) => format!("{} bytes", self.count),
            Action::Dropped(DropReason::Crc | DropReason::Partial | DropReason::Oversize) => {
                "frame".to_string()
            }
            Action::Dropped(DropReason::ForeignUnit) => {
                format!("unit {} FC{:02X}", self.unit, self.function)
            }
            Action::Dropped(DropReason::Broadcast) => format!("unit 0 FC{:02X}", self.function),
            _ if self.count > 0 => format!(
                "FC{:02X} {}..{}",
                self.function,
                self.address,
                u32::from(self.address) + u32::from(self.count)
            ),
            _ => format!("FC{:02X}", self.function),
        }
    }

    /// Wall-clock time, RFC 3339 with microseconds.
    pub fn time(&self) -> String {
        let t = UNIX_EPOCH + Duration::from_micros(self.t_us);
        humantime::format_rfc3339_micros(t).to_string()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<4} {:<3} {} → {}",
            self.time(),
            self.link.as_str(),
            self.dir.as_str(),
            self.frame(),
            self.action
        )?;
        if self.latency_us > 0 {
            write!(f, " in {} µs", self.latency_us)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u16, action: Action) -> Record {
        Record {
            at: Instant::now(),
            link: Link::Rtu,
            dir: Dir::In,
            unit: 1,
            function: 3,
            address: i,
            count: 74,
            action,
            latency: Duration::from_micros(1800),
        }
    }

    #[test]
    fn every_action_survives_the_round_trip() {
        let actions = [
            Action::Answered { bytes: 153 },
            Action::Written,
            Action::Exception { code: 2 },
            Action::SilentStale,
            Action::SilentWarmup,
            Action::Dropped(DropReason::Crc),
            Action::Dropped(DropReason::ForeignUnit),
            Action::Dropped(DropReason::Broadcast),
            Action::Dropped(DropReason::Partial),
            Action::Dropped(DropReason::Garbage),
            Action::Dropped(DropReason::Oversize),
            Action::Polled { bytes: 560 },
            Action::Superseded,
            Action::PollFailed(PollFailure::Timeout),
            Action::PollFailed(PollFailure::Transport),
            Action::PollFailed(PollFailure::Exception(4)),
        ];
        let j = Journal::new(64);
        for (i, a) in actions.iter().enumerate() {
            j.record(&rec(i as u16, *a));
        }
        let got: Vec<Action> = j.entries().iter().map(|e| e.action).collect();
        assert_eq!(got, actions);
        let e = j.entries()[0];
        assert_eq!(
            (e.unit, e.function, e.address, e.count, e.latency_us),
            (1, 3, 0, 74, 1800)
        );
        assert_eq!(e.frame(), "FC03 0..74");
        assert!(e
            .to_string()
            .ends_with("rtu  in  FC03 0..74 → answered, 153 bytes in 1800 µs"));
    }
}
