//! Simulated RS485 device (KSTAR inverter) answering as the register profile describes it.
//!
//! Owns a device's two register tables (input, holding), filled with plausible values that
//! change over time (PV follows a slow sine, energy counters grow, grid frequency wobbles),
//! and an RTU slave on a byte stream: FC03/FC04 within the table's documented span, FC06/FC16
//! to registers the profile marks writable for that function code (applied, echoed), and the
//! exceptions a real device gives otherwise (01 function, 02 address, 03 value/count). Every
//! CRC-valid frame addressed to it is recorded, so tests can prove what reached the device;
//! it can be told to fall silent. Shares nothing with the gateway but the profile, the CRC
//! and the wire.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use airbridge::control::profile::{Kind, Profile, Register, Table, WriteRefusal};
use airbridge_modbus::crc::{append_crc, frame_crc_ok};
use airbridge_modbus::rtu_frame::{request_frame_len, Len};

/// How the simulated device behaves.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Slave address.
    pub unit: u8,
    /// Phase offsets of the changing values.
    pub seed: u64,
    /// Values keep their start values (tests); writes still apply.
    pub frozen: bool,
    /// How often the changing values move.
    pub tick: Duration,
    /// Silence before a reply.
    pub reply_delay: Duration,
    /// `Some((baud, bits per character))`: pace each reply as a real bus would, writing it
    /// only after the request's and the reply's time on the wire (a pty or a socket
    /// delivers at once, so measurements of poll intervals need the wire put back).
    pub wire: Option<(u32, u32)>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            unit: 1,
            seed: 1,
            frozen: false,
            tick: Duration::from_secs(1),
            reply_delay: Duration::from_millis(2),
            wire: None,
        }
    }
}

/// A write the device accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedWrite {
    /// Function code of the write (6 or 16).
    pub fc: u8,
    /// First register written.
    pub address: u16,
    /// The words written.
    pub values: Vec<u16>,
    /// Names of the profile registers written.
    pub registers: Vec<String>,
}

/// Counters.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// CRC-valid requests addressed to this unit (or broadcast) while it answers.
    pub requests: AtomicU64,
    /// Reads answered with data.
    pub reads: AtomicU64,
    /// Writes applied and echoed.
    pub writes: AtomicU64,
    /// Requests answered with an exception.
    pub exceptions: AtomicU64,
    /// Requests ignored while silent.
    pub ignored: AtomicU64,
}

/// The simulated device: profile, tables and what it received.
pub struct SimDevice {
    /// What its registers are (spans, writability, kinds for plausible values).
    profile: Profile,
    /// Its address and behaviour.
    opts: DeviceOptions,
    /// Its input and holding words.
    tables: Mutex<Tables>,
    /// Every CRC-valid frame addressed to this unit or broadcast, in order.
    received: Mutex<Vec<Vec<u8>>>,
    /// Writes it accepted, in order.
    applied: Mutex<Vec<AppliedWrite>>,
    /// It ignores every request (a device switched off or asleep); see `set_silent`.
    silent: AtomicBool,
    /// What it answered.
    pub stats: DeviceStats,
    /// Documented span (first, one past last) per table.
    spans: BTreeMap<Table, (u16, u32)>,
    /// Phase per register (by index), from the seed.
    phases: Vec<f64>,
    /// When it was made: the changing values move with the time since.
    started: Instant,
}

/// A device's two register tables, whole (65536 words each).
struct Tables {
    /// FC04's table.
    input: Vec<u16>,
    /// FC03's table (FC06/FC16 write here).
    holding: Vec<u16>,
    /// Registers a client wrote: their value stays as written.
    written: std::collections::BTreeSet<(Table, u16)>,
}

impl Tables {
    fn table(&mut self, f: Table) -> &mut Vec<u16> {
        match f {
            Table::Input => &mut self.input,
            Table::Holding => &mut self.holding,
        }
    }
}

impl SimDevice {
    pub fn new(profile: Profile, opts: DeviceOptions) -> Arc<Self> {
        let mut spans = BTreeMap::new();
        // A table answers reads from its first to its last documented register (reserved
        // words in between read 0), as the devices answer their documented blocks.
        for r in &profile.registers {
            let e = spans.entry(r.table).or_insert((r.address, r.end()));
            e.0 = e.0.min(r.address);
            e.1 = e.1.max(r.end());
        }
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let phases = profile.registers.iter().map(|_| rng.f64() * TAU).collect();
        let device = SimDevice {
            profile,
            opts,
            tables: Mutex::new(Tables {
                input: vec![0; 65_536],
                holding: vec![0; 65_536],
                written: Default::default(),
            }),
            received: Mutex::new(Vec::new()),
            applied: Mutex::new(Vec::new()),
            silent: AtomicBool::new(false),
            stats: DeviceStats::default(),
            spans,
            phases,
            started: Instant::now(),
        };
        device.update(0.0);
        Arc::new(device)
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current words of a register.
    pub fn words(&self, r: &Register) -> Vec<u16> {
        let mut t = self.lock();
        let table = t.table(r.table);
        (r.address..=r.address.saturating_add(r.words - 1))
            .map(|a| table.get(usize::from(a)).copied().unwrap_or(0))
            .collect()
    }

    /// The current value of the register called `name`.
    pub fn value(&self, name: &str) -> Option<airbridge::control::profile::Value> {
        let r = self.profile.get(name)?;
        Some(r.decode(&self.words(r)))
    }

    /// Set the words of the register called `name` (tests, scenarios).
    pub fn set(&self, name: &str, words: &[u16]) -> bool {
        let Some(r) = self.profile.get(name) else {
            return false;
        };
        let mut t = self.lock();
        let table = t.table(r.table);
        for (i, w) in words.iter().enumerate().take(usize::from(r.words)) {
            if let Some(slot) = table.get_mut(usize::from(r.address) + i) {
                *slot = *w;
            }
        }
        true
    }

    /// Every CRC-valid frame addressed to the device so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes the device accepted so far.
    pub fn applied(&self) -> Vec<AppliedWrite> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fall silent (true) or answer again (false).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Relaxed);
    }

    /// Recompute the changing values for `t` seconds after start.
    fn update(&self, t: f64) {
        let mut tables = self.lock();
        for (i, r) in self.profile.registers.iter().enumerate() {
            if !r.access.readable() || tables.written.contains(&(r.table, r.address)) {
                continue;
            }
            let phase = self.phases.get(i).copied().unwrap_or(0.0);
            let words = plausible(r, t, phase);
            let table = tables.table(r.table);
            for (k, w) in words.into_iter().enumerate() {
                if let Some(slot) = table.get_mut(usize::from(r.address) + k) {
                    *slot = w;
                }
            }
        }
    }

    /// Answer one CRC-valid frame addressed to us (`None`: no reply, e.g. broadcast).
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let unit = *frame.first()?;
        let fc = *frame.get(1)?;
        self.stats.requests.fetch_add(1, Relaxed);
        let reply = match fc {
            0x03 | 0x04 => self.read(fc, frame),
            0x06 => self.write_single(frame),
            0x10 => self.write_multiple(frame),
            _ => Err(0x01),
        };
        if unit == 0 {
            return None;
        }
        Some(match reply {
            Ok(mut body) => {
                body.insert(0, unit);
                let len = body.len();
                body.extend_from_slice(&[0, 0]);
                append_crc(&mut body, len);
                body
            }
            Err(code) => {
                self.stats.exceptions.fetch_add(1, Relaxed);
                let mut out = vec![unit, fc | 0x80, code, 0, 0];
                append_crc(&mut out, 3);
                out
            }
        })
    }

    fn read(&self, fc: u8, frame: &[u8]) -> Result<Vec<u8>, u8> {
        let address = word(frame, 2).ok_or(0x03)?;
        let count = word(frame, 4).ok_or(0x03)?;
        if count == 0 || count > 125 {
            return Err(0x03);
        }
        let function = if fc == 0x04 {
            Table::Input
        } else {
            Table::Holding
        };
        let (lo, hi) = self.spans.get(&function).copied().ok_or(0x02)?;
        if address < lo || u32::from(address) + u32::from(count) > hi {
            return Err(0x02);
        }
        self.stats.reads.fetch_add(1, Relaxed);
        let mut tables = self.lock();
        let table = tables.table(function);
        let mut out = vec![fc, (count * 2) as u8];
        let from = usize::from(address);
        for &w in table.get(from..from + usize::from(count)).unwrap_or(&[]) {
            out.extend_from_slice(&w.to_be_bytes());
        }
        Ok(out)
    }

    fn write_single(&self, frame: &[u8]) -> Result<Vec<u8>, u8> {
        let address = word(frame, 2).ok_or(0x03)?;
        let value = word(frame, 4).ok_or(0x03)?;
        self.apply(0x06, address, &[value])?;
        Ok(frame.get(1..6).ok_or(0x03)?.to_vec())
    }

    fn write_multiple(&self, frame: &[u8]) -> Result<Vec<u8>, u8> {
        let address = word(frame, 2).ok_or(0x03)?;
        let count = word(frame, 4).ok_or(0x03)?;
        let bytes = usize::from(*frame.get(6).ok_or(0x03)?);
        if count == 0 || count > 123 || bytes != 2 * usize::from(count) {
            return Err(0x03);
        }
        let values: Vec<u16> = (0..usize::from(count))
            .map(|i| word(frame, 7 + 2 * i).ok_or(0x03))
            .collect::<Result<_, _>>()?;
        self.apply(0x10, address, &values)?;
        Ok(frame.get(1..6).ok_or(0x03)?.to_vec())
    }

    /// Apply a write the profile allows; 02 for an address it does not, 03 for a bad value.
    fn apply(&self, fc: u8, address: u16, values: &[u16]) -> Result<(), u8> {
        let regs = self
            .profile
            .check_write(fc, address, values)
            .map_err(|e| match e {
                WriteRefusal::OutOfRange { .. } | WriteRefusal::NotInEnum { .. } => 0x03,
                _ => 0x02,
            })?;
        let names: Vec<String> = regs.iter().map(|r| r.name.clone()).collect();
        {
            let mut tables = self.lock();
            for r in &regs {
                // Registers with a documented read show the new value there.
                if !r.access.readable() {
                    continue;
                }
                let off = usize::from(r.address.saturating_sub(address));
                tables.written.insert((r.table, r.address));
                let table = tables.table(r.table);
                for k in 0..usize::from(r.words) {
                    if let (Some(slot), Some(v)) = (
                        table.get_mut(usize::from(r.address) + k),
                        values.get(off + k),
                    ) {
                        *slot = *v;
                    }
                }
            }
        }
        self.stats.writes.fetch_add(1, Relaxed);
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(AppliedWrite {
                fc,
                address,
                values: values.to_vec(),
                registers: names,
            });
        Ok(())
    }
}

fn word(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Plausible words for a register at `t` seconds: by unit and name.
fn plausible(r: &Register, t: f64, phase: f64) -> Vec<u16> {
    let n = usize::from(r.words);
    match r.kind {
        Kind::Ascii => {
            let text = if r.name.contains("model") {
                "BluE-S 5000D"
            } else if r.name.contains("serial") || r.name.contains("sn") {
                "KS2024000001"
            } else {
                "V1.3.00"
            };
            let mut bytes: Vec<u8> = text.bytes().take(2 * n).collect();
            bytes.resize(2 * n, 0);
            return bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
                .collect();
        }
        Kind::U8pair => return vec![0x0103; n],
        Kind::Bcd => return vec![0x0001; n],
        _ => {}
    }
    if let Some(table) = &r.enumeration {
        let first = table.keys().next().copied().unwrap_or(0);
        return to_words(r, i128::from(first));
    }
    if r.bits.is_some() {
        return vec![0; n];
    }
    let name = r.name.as_str();
    let sun = (t / 600.0 * TAU + phase).sin(); // a 10-minute "day"
    let wobble = (t / 7.0 * TAU + phase).sin();
    let value = match r.unit.as_deref().unwrap_or("") {
        "V" if name.contains("pv") => 320.0 + 30.0 * sun,
        "V" if name.contains("bat") => 52.0 + 0.5 * wobble,
        "V" if name.contains("bus") => 380.0 + wobble,
        "V" => 230.0 + 2.0 * wobble,
        "Hz" => 50.0 + 0.02 * wobble,
        "A" if name.contains("pv") => 7.0 + 2.0 * sun,
        "A" => 5.0 + wobble,
        "W" | "kW" if name.contains("pv") => 2500.0 + 800.0 * sun,
        "W" => 900.0 * sun,
        "%" if name.contains("soc") => 60.0 + 10.0 * sun,
        "°C" => 35.0 + 3.0 * wobble,
        // Counters that grow, each of a plausible size for its period (day < month < year < total).
        "kWh" | "Wh" if name.contains("day") => 12.0 + t / 60.0,
        "kWh" | "Wh" if name.contains("month") => 310.0 + t / 60.0,
        "kWh" | "Wh" if name.contains("year") => 3600.0 + t / 60.0,
        "kWh" | "Wh" => 21000.0 + t / 60.0,
        _ => match r.range {
            Some((lo, _)) => lo as f64 * r.scale,
            None => 0.0,
        },
    };
    let mut raw = (value / r.scale).round() as i128;
    if let Some((lo, hi)) = r.range {
        raw = raw.clamp(i128::from(lo), i128::from(hi));
    }
    to_words(r, raw)
}

/// Encode a raw integer into the register's words (high word first), saturating to its type.
fn to_words(r: &Register, raw: i128) -> Vec<u16> {
    let n = usize::from(r.words);
    let bits = 16 * n as u32;
    let signed = matches!(r.kind, Kind::S16 | Kind::S32);
    let (lo, hi) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits.min(120)) - 1)
    };
    let v = raw.clamp(lo, hi) as u128;
    (0..n)
        .rev()
        .map(|k| (v >> (16 * k as u32)) as u16)
        .collect()
}

/// Serve the device on `stream` until `cancel` fires or the stream ends.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    device: Arc<SimDevice>,
    cancel: CancellationToken,
) -> io::Result<()> {
    serve_bus(stream, &[device], cancel).await
}

/// Serve several devices on one bus (one `stream`), each answering its own unit id, as
/// RS485 devices sharing a line do. A broadcast (unit 0) reaches every device; none
/// answers it. Values move with the first device's tick.
pub async fn serve_bus<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    devices: &[Arc<SimDevice>],
    cancel: CancellationToken,
) -> io::Result<()> {
    let Some(first) = devices.first() else {
        cancel.cancelled().await;
        return Ok(());
    };
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 256];
    let mut tick = tokio::time::interval(first.opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {
                for d in devices.iter().filter(|d| !d.opts.frozen) {
                    d.update(d.started.elapsed().as_secs_f64());
                }
                continue;
            }
            r = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)) => match r {
                // Line silent: a partial frame will not be completed.
                Err(_) => { buf.clear(); continue; }
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                // A pty's master reads EIO while nobody has the other end open (before the
                // gateway opens it, between its re-opens): wait for it like a device would.
                Ok(Err(e)) if e.raw_os_error() == Some(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(e),
            },
        }
        // Take every complete request off the head of the buffer.
        while let Some(frame) = take_request(&mut buf) {
            deliver(&mut stream, devices, &frame).await?;
        }
        if buf.len() > 1024 {
            buf.clear();
        }
    }
}

/// The first complete, CRC-valid request at the head of `buf`, taken off it; bytes that
/// cannot start one are dropped one at a time. `None` while the head is incomplete.
fn take_request(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        let len = match request_frame_len(buf) {
            Len::Known(len) => len,
            Len::NeedMore => return None,
            Len::Never => {
                buf.remove(0);
                continue;
            }
        };
        if buf.len() < len {
            return None;
        }
        if !frame_crc_ok(&buf[..len]) {
            buf.remove(0);
            continue;
        }
        return Some(buf.drain(..len).collect());
    }
}

/// Hand `frame` to the devices it addresses (every one for a broadcast): each records it
/// and, unless silent, writes its reply after its delay and, if paced, the wire time.
async fn deliver<S: AsyncWrite + Unpin>(
    stream: &mut S,
    devices: &[Arc<SimDevice>],
    frame: &[u8],
) -> io::Result<()> {
    let unit = frame.first().copied().unwrap_or(0xFF);
    for device in devices.iter().filter(|d| unit == 0 || d.opts.unit == unit) {
        device
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(frame.to_vec());
        if device.silent.load(Relaxed) {
            device.stats.ignored.fetch_add(1, Relaxed);
            continue;
        }
        if let Some(reply) = device.answer(frame) {
            let wire = device.opts.wire.map_or(Duration::ZERO, |(baud, bits)| {
                airbridge_modbus::timing::wire_time(frame.len() + reply.len(), baud, bits)
            });
            let pause = device.opts.reply_delay + wire;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            stream.write_all(&reply).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use airbridge::link::rtu_master::{ReplyError, RtuMaster};

    const PROFILE: &str = "name: test
registers:
  - {name: power, address: 3000, function: input, type: u16, unit: W}
";

    fn device(unit: u8) -> Arc<SimDevice> {
        let p = airbridge::control::profile::parse(PROFILE, "test").expect("profile");
        SimDevice::new(
            p,
            DeviceOptions {
                unit,
                frozen: true,
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn several_devices_share_one_bus_each_answering_its_own_unit() {
        let (a, b) = tokio::io::duplex(1024);
        let (one, two) = (device(1), device(2));
        assert!(one.set("power", &[111]) && two.set("power", &[222]));
        let cancel = CancellationToken::new();
        let bus = vec![Arc::clone(&one), Arc::clone(&two)];
        let c = cancel.clone();
        let task = tokio::spawn(async move { serve_bus(b, &bus, c).await });
        let mut m = RtuMaster::new(a, Duration::from_millis(200));
        assert_eq!(m.read(1, 4, 3000, 1).await.expect("unit 1"), [111]);
        assert_eq!(m.read(2, 4, 3000, 1).await.expect("unit 2"), [222]);
        assert!(matches!(
            m.read(3, 4, 3000, 1).await,
            Err(ReplyError::Timeout)
        ));
        two.set_silent(true);
        assert!(matches!(
            m.read(2, 4, 3000, 1).await,
            Err(ReplyError::Timeout)
        ));
        assert_eq!(m.read(1, 4, 3000, 1).await.expect("unit 1 still"), [111]);
        assert_eq!(one.received().len(), 2);
        assert_eq!(
            two.received().len(),
            2,
            "the silent device still heard its request"
        );
        cancel.cancel();
        task.await.expect("task").expect("served");
    }

    /// A request of a function it does not implement (FC08, framed by the slave framer's
    /// rule) gets exception 01 like a real device, instead of being dropped as noise.
    #[tokio::test]
    async fn an_unknown_function_gets_exception_01() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut a, b) = tokio::io::duplex(1024);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { serve_bus(b, &[device(1)], c).await });
        let mut req = vec![1, 8, 0, 0, 0x12, 0x34, 0, 0];
        append_crc(&mut req, 6);
        a.write_all(&req).await.expect("send");
        let mut reply = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut reply))
            .await
            .expect("a reply in time")
            .expect("read");
        assert_eq!(&reply[..3], &[1, 0x88, 0x01]);
        assert!(frame_crc_ok(&reply));
        cancel.cancel();
        task.await.expect("task").expect("served");
    }

    /// `wire`: the reply comes no sooner than the request's and the reply's wire time
    /// (paused clock: virtual time, exact).
    #[tokio::test(start_paused = true)]
    async fn replies_are_paced_to_the_wire_when_asked() {
        let (a, b) = tokio::io::duplex(1024);
        let p = airbridge::control::profile::parse(PROFILE, "test").expect("profile");
        let d = SimDevice::new(
            p,
            DeviceOptions {
                frozen: true,
                reply_delay: Duration::ZERO,
                wire: Some((9600, 10)),
                ..Default::default()
            },
        );
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { serve_bus(b, &[d], c).await });
        let mut m = RtuMaster::new(a, Duration::from_secs(1));
        let t0 = tokio::time::Instant::now();
        m.read(1, 4, 3000, 1).await.expect("read");
        // 8 request bytes + 7 reply bytes, 10 bits each, at 9600 baud: 15.625 ms.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_micros(15_625) && took < Duration::from_millis(60),
            "{took:?}"
        );
        cancel.cancel();
        task.await.expect("task").expect("served");
    }
}
