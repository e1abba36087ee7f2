//! `airbridge demo`: the whole chain in one process, no hardware, no root, no config.
//!
//! [`run`]: a simulated KSEM (Modbus TCP slave + pusher on loopback) feeds the real
//! gateway, whose RTU slave serves a simulated Plenticore over an in-process
//! pseudo-terminal pair. [`run_kstar`] (`--profile`): two simulated devices of a register
//! profile on one pty bus, the real gateway polling them as RTU master and serving them
//! on Modbus TCP, and a TCP client that reads both and makes one permitted and one
//! forbidden write. Owns only the wiring and the once-a-second report; every part is the
//! real module.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Reader as _, Writer as _};
use tokio_modbus::slave::SlaveContext as _;
use tokio_util::sync::CancellationToken;

use crate::device::{self, DeviceOptions, SimDevice};
use crate::{inverter, ksem};
use airbridge::app::gateway::{BusPort, Gateway, RtuPort, StartOptions};
use airbridge::config;
use airbridge::control::profile::{Kind, Profile, Register, Table};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (`None`: until cancelled).
    pub duration: Option<Duration>,
    /// KSEM push period.
    pub push_interval: Duration,
    /// Inverter poll period.
    pub poll_interval: Duration,
    /// Household seed of the simulated KSEM.
    pub seed: u64,
    /// Print a status line every second.
    pub report: bool,
    /// Serve the status page here (`127.0.0.1:0` picks a free port).
    pub status: Option<std::net::SocketAddr>,
    /// Publish to this MQTT broker (`HOST:PORT`), under the topic `airbridge-demo`.
    pub mqtt: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: None,
            push_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(160),
            seed: 1,
            report: true,
            status: None,
            mqtt: None,
        }
    }
}

/// What the simulated inverter saw, at the end.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The simulated inverter's request/reply/error counts: did the RTU side answer?
    pub inverter: inverter::InverterCounts,
}

/// The demo's gateway config: the shipped defaults, with loopback endpoints and a pty, and
/// the meter shared on loopback (`tcp_server:` and the commented `sunspec` region enabled).
pub fn demo_config(ksem_slave: std::net::SocketAddr) -> anyhow::Result<config::Config> {
    let yaml = format!(
        "rtu: {{device: in-process-pty, baud: 38400, stop_bits: 2, unit_id: 1}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: 4}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]}}
regions:
  - {{name: totals,   start: 0,    count: 40,  source: push, max_age: 2s, on_stale: silence, fallback_poll: 1s}}
  - {{name: phases,   start: 40,   count: 108, source: push, max_age: 2s, on_stale: silence, fallback_poll: 1s}}
  - {{name: energy,   start: 512,  count: 280, source: [push, poll], every: 10s, max_age: 5m, on_stale: serve}}
  - {{name: identity, start: 8192, count: 57,  source: poll, every: 1h}}
  - {{name: spec_version, start: 8249, count: 1, source: static, values: {{8249: 7}}}}
  - {{name: sunspec,  start: 40000, count: 179, source: poll, every: 1s, max_age: 5s, on_stale: exception}}
"
    );
    Ok(config::parse(&yaml, "demo")?.config)
}

/// Run the demo until `duration` or `cancel`.
pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> anyhow::Result<DemoSummary> {
    let cancel = cancel.child_token();
    let ksem_opts = ksem::KsemSimOptions {
        push_to: None,
        interval: opts.push_interval,
        seed: opts.seed,
        ..Default::default()
    };
    let ksem = ksem::start(ksem_opts, cancel.clone()).await?;

    let (inverter_end, gateway_end) = pty_pair()?;
    let gateway = start_gateway(&opts, ksem.slave_addr(), gateway_end, &cancel).await?;
    let push_addr = gateway
        .push_addr
        .ok_or_else(|| anyhow::anyhow!("demo gateway has no push listener"))?;

    let pusher = tokio::spawn(ksem::run_pusher(
        push_addr,
        opts.push_interval,
        ksem.model(),
        cancel.clone(),
        Arc::new(ksem::PushStats::default()),
    ));

    // A real inverter would poll into the warm-up silence; the demo starts it once the
    // gateway is ready so its counters show the steady state (bounded: a broken source
    // still lets the demo run and show the silence).
    let _ = tokio::time::timeout(Duration::from_secs(5), gateway.handles.image.wait_warm()).await;

    let inv_stats = Arc::new(inverter::InverterStats::default());
    let inv_opts = inverter::InverterOptions {
        interval: opts.poll_interval,
        ..Default::default()
    };
    let inv = tokio::spawn(inverter::run(
        inverter_end,
        inv_opts,
        Arc::clone(&inv_stats),
        cancel.clone(),
    ));

    if opts.report {
        println!("airbridge demo: simulated KSEM (slave {}, pushing to {push_addr}) → gateway → simulated Plenticore on a pty", ksem.slave_addr());
    }
    let started = Instant::now();
    let mut tick = every_second_from(started);
    while next_tick(&mut tick, started, opts.duration, &cancel).await {
        if opts.report {
            println!("{}", status_line(started, &gateway, &inv_stats));
        }
    }
    cancel.cancel();
    let _ = inv.await;
    let _ = pusher.await;
    let handles = gateway.handles.clone();
    gateway.join(Duration::from_secs(2)).await;
    drop(ksem);
    let summary = DemoSummary {
        inverter: inv_stats.snapshot(),
    };
    if opts.report {
        print_demo_done(&summary.inverter, handles.push.writes_ok.load(Relaxed));
    }
    Ok(summary)
}

/// The KSEM demo's closing line: what the inverter saw, and the pushes the gateway took.
fn print_demo_done(c: &inverter::InverterCounts, pushes_accepted: u64) {
    println!(
        "demo done: {} requests, {} replies, {} exceptions, {} timeouts, {} bad frames; {} pushes accepted by the gateway",
        c.requests, c.replies, c.exceptions, c.timeouts, c.bad_frames, pushes_accepted
    );
}

/// The real gateway of the KSEM demo, its RTU slave on `gateway_end`, with the KSEM
/// profile built in; its endpoints announced when reporting.
async fn start_gateway(
    opts: &DemoOptions,
    ksem_slave: std::net::SocketAddr,
    gateway_end: tokio_serial::SerialStream,
    cancel: &CancellationToken,
) -> anyhow::Result<Gateway> {
    let config = ksem_demo_config(opts, ksem_slave)?;
    let start = StartOptions {
        profile: Some(builtin_ksem_profile()?),
    };
    let gateway = Gateway::start_with(
        config,
        RtuPort::Stream(Box::new(gateway_end)),
        cancel.clone(),
        start,
    )
    .await?;
    if opts.report {
        announce_endpoints(&gateway);
    }
    Ok(gateway)
}

/// [`demo_config`] with what the options add: the status page and the MQTT broker (the
/// latter announced when reporting).
fn ksem_demo_config(
    opts: &DemoOptions,
    ksem_slave: std::net::SocketAddr,
) -> anyhow::Result<config::Config> {
    let mut config = demo_config(ksem_slave)?;
    config.status = opts.status.map(|listen| config::StatusConfig { listen });
    if let Some(broker) = &opts.mqtt {
        let m = config::MqttConfig::for_broker(&format!("mqtt://{broker}"), "airbridge-demo")
            .map_err(|e| anyhow::anyhow!("--mqtt {broker}: {e}"))?;
        if opts.report {
            println!(
                "mqtt: publishing to {broker} under {}/… (discovery under homeassistant/)",
                m.topic
            );
        }
        config.mqtt = Some(m);
    }
    Ok(config)
}

/// Where to look: the status page and the meter's Modbus TCP server, when the gateway has
/// them.
fn announce_endpoints(gateway: &Gateway) {
    if let Some(addr) = gateway.status_addr {
        println!("status page: http://{addr}/  (also /status, /metrics, /journal)");
    }
    if let Some(addr) = gateway.tcp_addr {
        println!("meter for the house: modbus tcp {addr}, read-only, any unit id (KOSTAL map; SunSpec at 40000)");
    }
}

/// A pseudo-terminal pair: the simulated side's end and the gateway's.
fn pty_pair() -> anyhow::Result<(tokio_serial::SerialStream, tokio_serial::SerialStream)> {
    tokio_serial::SerialStream::pair()
        .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))
}

/// A tick every second, the first one second after `started`.
fn every_second_from(started: Instant) -> tokio::time::Interval {
    tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1))
}

/// Wait for the next tick: `true` on a tick, `false` once `cancel` fires or `duration`
/// (from `started`; `None`: never) has passed.
async fn next_tick(
    tick: &mut tokio::time::Interval,
    started: Instant,
    duration: Option<Duration>,
    cancel: &CancellationToken,
) -> bool {
    let until_end = async {
        match duration {
            Some(d) => tokio::time::sleep_until(started + d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = cancel.cancelled() => false,
        () = until_end => false,
        _ = tick.tick() => true,
    }
}

/// The once-a-second line: the inverter's view, the age of every region, its counters.
fn status_line(started: Instant, gateway: &Gateway, inv: &inverter::InverterStats) -> String {
    let now = Instant::now();
    let mut s = format!("t={:>3}s ", now.duration_since(started).as_secs());
    match inv.last_view() {
        Some(v) => {
            let _ = write!(
                s,
                "grid {:>+8.1} W  L1 {:.1} V  L2 {:.1} V  L3 {:.1} V  {:.3} Hz",
                v.grid_power_w, v.voltages_v[0], v.voltages_v[1], v.voltages_v[2], v.frequency_hz
            );
        }
        None => s.push_str("inverter has no data yet"),
    }
    let image = &gateway.handles.image;
    let snap = image.load_full();
    s.push_str("  | age");
    for (i, spec) in image.specs().iter().enumerate() {
        match image.age(&snap, i, now) {
            Some(a) => {
                let _ = write!(s, " {} {}ms", spec.name, a.as_millis());
            }
            None => {
                let _ = write!(s, " {} -", spec.name);
            }
        }
    }
    let c = inv.snapshot();
    let _ = write!(
        s,
        "  | replies {} exc {} timeouts {} bad {}",
        c.replies, c.exceptions, c.timeouts, c.bad_frames
    );
    s
}

/// What the KSTAR demo's TCP client saw, at the end.
#[derive(Debug, Clone, Default)]
pub struct KstarDemoSummary {
    /// TCP reads answered with data.
    pub reads_ok: u64,
    /// TCP reads answered with an exception (0B while a region is not read yet or stale).
    pub reads_refused: u64,
    /// The permitted write's outcome (`None`: the profile has no demo write).
    pub permitted_write: Option<Result<(), String>>,
    /// The forbidden write's outcome (must be exception 02).
    pub forbidden_write: Option<Result<(), String>>,
    /// Write frames the simulated device received.
    pub device_writes: usize,
    /// TCP reads answered with data, per device (`battery1`, `battery2`).
    pub reads_by_device: [u64; 2],
    /// Write frames the second device received (none: it has no `writable:`).
    pub second_device_writes: usize,
}

/// The demo bus: two devices of the profile, by name and RS485 address.
const DEMO_DEVICES: [(&str, u8); 2] = [("battery1", 1), ("battery2", 2)];
/// Registers the client reads from each device every second, from the first input register.
const LIVE_READ: u16 = 125;

/// `airbridge demo --profile FILE`: two simulated devices (units 1 and 2) on one end of a
/// pseudo-terminal, the real gateway (RTU poller + TCP server on loopback, `devices:`) on the
/// other, and a TCP client that prints decoded values of both every second and makes one
/// permitted and one forbidden write to the first.
pub async fn run_kstar(
    profile_path: &std::path::Path,
    duration: Option<Duration>,
    seed: u64,
    report: bool,
    cancel: CancellationToken,
) -> anyhow::Result<KstarDemoSummary> {
    let cancel = cancel.child_token();
    let profile = load_pollable_profile(profile_path)?;
    let writes = DemoWrites::of(&profile);
    let config = kstar_config(&profile, profile_path, writes.permitted)?;
    let devs = demo_devices(&profile, seed);
    let (dev_end, gw_end) = pty_pair()?;
    let bus = devs.clone();
    let c = cancel.clone();
    let sim = tokio::spawn(async move { device::serve_bus(dev_end, &bus, c).await });
    let gateway = Gateway::start_with_bus(
        config,
        RtuPort::Off,
        BusPort::Stream(Box::new(gw_end)),
        cancel.clone(),
    )
    .await?;
    let mut client = KstarClient::connect(&gateway, &profile).await?;
    if report {
        let [(first_name, first_unit), (second_name, second_unit)] = DEMO_DEVICES;
        println!(
            "airbridge demo: two simulated {} ({first_name} unit {first_unit}, {second_name} unit {second_unit}) on one pty bus → gateway (RTU poller, TCP server on {}; the unit id selects the device) → TCP client",
            profile.name, client.addr
        );
    }
    let started = Instant::now();
    let mut tick = every_second_from(started);
    let mut seconds = 0u32;
    while next_tick(&mut tick, started, duration, &cancel).await {
        seconds += 1;
        let line = client.read_devices(seconds, &gateway).await;
        if report {
            println!("{line}");
        }
        if seconds == 3 {
            client.write(writes, report).await;
        }
    }
    cancel.cancel();
    let _ = sim.await;
    gateway.join(Duration::from_secs(2)).await;
    let mut summary = client.summary;
    summary.device_writes = writes_received(devs.first());
    summary.second_device_writes = writes_received(devs.get(1));
    if report {
        print_kstar_done(&summary);
    }
    Ok(summary)
}

/// The profile at `path`, which must have input registers to poll (the KSEM profile has
/// none: it belongs to the KSEM demo).
fn load_pollable_profile(path: &std::path::Path) -> anyhow::Result<Profile> {
    let profile = airbridge::control::profile::load(path)?;
    if first_readable(&profile, Table::Input).is_none() {
        anyhow::bail!(
            "{}: this profile has no input registers to poll; `demo --profile` is the KSTAR \
             demo (e.g. profiles/kstar-hybrid.yaml). The KSEM profile belongs to the KSEM \
             demo: `airbridge demo` without --profile",
            path.display()
        );
    }
    Ok(profile)
}

/// The lowest readable address of `table` the profile documents.
fn first_readable(profile: &Profile, table: Table) -> Option<u16> {
    profile
        .registers
        .iter()
        .filter(|r| r.table == table && r.access.readable())
        .map(|r| r.address)
        .min()
}

/// The demo's two writes to the first device, by address.
#[derive(Debug, Clone, Copy)]
struct DemoWrites {
    /// The active power limit, if the profile has one writable with FC06: listed under
    /// `writable:`, so the gateway passes it on.
    permitted: Option<u16>,
    /// A command the config does not list: the gateway refuses it.
    forbidden: Option<u16>,
}

impl DemoWrites {
    fn of(profile: &Profile) -> DemoWrites {
        let permitted = ["active_power_setting", "set_active_power_percent"]
            .iter()
            .find_map(|n| profile.get(n))
            .filter(|r| r.writes.contains(&6))
            .map(|r| r.address);
        let forbidden = ["cmd_reboot", "cmd_remote_power_off", "cmd_remote_shutdown"]
            .iter()
            .find_map(|n| profile.get(n))
            .map(|r| r.address);
        DemoWrites {
            permitted,
            forbidden,
        }
    }
}

/// The KSTAR demo's gateway config: an RTU poller on the pty, the TCP server on loopback,
/// both [`DEMO_DEVICES`] of `profile` with regions over the first 250 input words and 38
/// holding words it documents, and `permitted` writable on the first.
fn kstar_config(
    profile: &Profile,
    profile_path: &std::path::Path,
    permitted: Option<u16>,
) -> anyhow::Result<config::Config> {
    let abs = std::fs::canonicalize(profile_path)?;
    let mut regions = String::new();
    if let Some(a) = first_readable(profile, Table::Input) {
        regions.push_str(&format!("      - {{name: live, start: {a}, count: {}, function: input, every: 1s, max_age: 5s}}\n", 250.min(65_536 - u32::from(a))));
    }
    if let Some(a) = first_readable(profile, Table::Holding) {
        regions.push_str(&format!(
            "      - {{name: identity, start: {a}, count: {}, function: holding, every: 10s}}\n",
            38.min(65_536 - u32::from(a))
        ));
    }
    let writable = permitted.map_or_else(|| "[]".to_string(), |a| format!("[{a}]"));
    let [(first_name, first_unit), (second_name, second_unit)] = DEMO_DEVICES;
    let yaml = format!(
        "rtu_poll: {{device: in-process-pty, timeout: 300ms, gap: 5ms, offline_after: 3, probe_max: 2s}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]}}
devices:
  - name: {first_name}
    unit_id: {first_unit}
    profile: '{p}'
    writable: {writable}
    regions:
{regions}  - name: {second_name}
    unit_id: {second_unit}
    profile: '{p}'
    regions:
{regions}",
        p = abs.display()
    );
    let config = config::parse(&yaml, "demo")?.config;
    for d in 0..config.devices.len() {
        config::check_device_against_profile(&config, Some(d), profile, "demo")?;
    }
    Ok(config)
}

/// The simulated devices of [`DEMO_DEVICES`], seeded `seed`, `seed + 1`.
fn demo_devices(profile: &Profile, seed: u64) -> Vec<Arc<SimDevice>> {
    DEMO_DEVICES
        .iter()
        .zip(seed..)
        .map(|(&(_, unit), seed)| {
            SimDevice::new(
                profile.clone(),
                DeviceOptions {
                    unit,
                    seed,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Write frames (FC06, FC16) `device` received; 0 without a device.
fn writes_received(device: Option<&Arc<SimDevice>>) -> usize {
    device.map_or(0, |d| {
        d.received()
            .iter()
            .filter(|f| matches!(f.get(1), Some(0x06 | 0x10)))
            .count()
    })
}

/// The KSTAR demo's closing line.
fn print_kstar_done(summary: &KstarDemoSummary) {
    let [(first_name, _), (second_name, _)] = DEMO_DEVICES;
    let writes = [&summary.permitted_write, &summary.forbidden_write];
    let accepted = writes.iter().filter(|w| matches!(w, Some(Ok(())))).count();
    let refused = writes.iter().filter(|w| matches!(w, Some(Err(_)))).count();
    let [a, b] = summary.reads_by_device;
    println!(
        "demo done: reads {} served ({first_name} {a}, {second_name} {b}), {} refused; writes {accepted} accepted, {refused} refused; {first_name} received {} write(s), {second_name} {}",
        summary.reads_ok, summary.reads_refused, summary.device_writes, summary.second_device_writes
    );
}

/// The KSTAR demo's Modbus TCP client: its connection to the gateway, the registers it
/// shows, and what it has seen so far.
struct KstarClient<'p> {
    /// The gateway's TCP server.
    addr: std::net::SocketAddr,
    ctx: tokio_modbus::client::Context,
    /// The first input register: where every read starts.
    live_start: u16,
    /// A few numeric input registers with a unit, within the read.
    shown: Vec<&'p Register>,
    summary: KstarDemoSummary,
}

impl<'p> KstarClient<'p> {
    /// Connect to the gateway's TCP server, addressing the first device.
    async fn connect(gateway: &Gateway, profile: &'p Profile) -> anyhow::Result<Self> {
        let addr = gateway
            .tcp_addr
            .ok_or_else(|| anyhow::anyhow!("demo gateway has no TCP server"))?;
        let ctx = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(DEMO_DEVICES[0].1)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("TCP connect timed out"))??;
        let live_start = first_readable(profile, Table::Input).unwrap_or(0);
        let shown = profile
            .overlapping(Table::Input, live_start, 250)
            .filter(|r| {
                r.enumeration.is_none()
                    && r.bits.is_none()
                    && !matches!(r.kind, Kind::Ascii | Kind::U8pair | Kind::Bcd)
                    && matches!(r.unit.as_deref(), Some("V" | "W" | "Hz" | "%" | "kWh"))
                    && r.end() <= u32::from(live_start) + u32::from(LIVE_READ)
            })
            .take(6)
            .collect();
        Ok(KstarClient {
            addr,
            ctx,
            live_start,
            shown,
            summary: KstarDemoSummary::default(),
        })
    }

    /// Second `seconds`' line: a read of every device, then the gateway's bus counters.
    async fn read_devices(&mut self, seconds: u32, gateway: &Gateway) -> String {
        let mut line = format!("t={seconds:>3}s");
        for (d, &(name, unit)) in DEMO_DEVICES.iter().enumerate() {
            let _ = write!(line, "  {name}:");
            self.read_device(d, unit, &mut line).await;
        }
        self.ctx.set_slave(tokio_modbus::Slave(DEMO_DEVICES[0].1));
        let bus = &gateway.handles.rtu_poll;
        let _ = write!(
            line,
            "  | bus requests {} timeouts {}",
            bus.requests.load(Relaxed),
            bus.timeouts.load(Relaxed)
        );
        line
    }

    /// Read device `d` (at `unit`) and append its values, or what went wrong, to `line`.
    async fn read_device(&mut self, d: usize, unit: u8, line: &mut String) {
        self.ctx.set_slave(tokio_modbus::Slave(unit));
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            self.ctx.read_input_registers(self.live_start, LIVE_READ),
        )
        .await;
        match read {
            Ok(Ok(Ok(words))) => {
                self.summary.reads_ok += 1;
                if let Some(n) = self.summary.reads_by_device.get_mut(d) {
                    *n += 1;
                }
                // The second device shows its first values only, to keep the line short.
                let shown = if d == 0 { self.shown.len() } else { 2 };
                for r in self.shown.iter().take(shown) {
                    let off = usize::from(r.address.saturating_sub(self.live_start));
                    if let Some(w) = words.get(off..off + usize::from(r.words)) {
                        let unit = r.unit.as_deref().unwrap_or("");
                        let _ = write!(line, " {} {} {unit}", r.name, r.decode(w));
                    }
                }
            }
            Ok(Ok(Err(code))) => {
                self.summary.reads_refused += 1;
                let _ = write!(line, " read refused: {}", exception_text(u8::from(code)));
            }
            Ok(Err(e)) => {
                let _ = write!(line, " read failed: {e}");
            }
            Err(_) => line.push_str(" read timed out"),
        }
    }

    /// The demo's writes to the first device: the permitted one, then the forbidden one.
    async fn write(&mut self, writes: DemoWrites, report: bool) {
        if let Some(a) = writes.permitted {
            let r = outcome(self.ctx.write_single_register(a, 85).await);
            if report {
                println!(
                    "write {a} := 85 (active power limit %): {}",
                    outcome_text(&r)
                );
            }
            self.summary.permitted_write = Some(r);
        }
        if let Some(a) = writes.forbidden {
            let r = outcome(self.ctx.write_single_register(a, 1).await);
            if report {
                println!(
                    "write {a} := 1 (a command not listed under writable): {}",
                    outcome_text(&r)
                );
            }
            self.summary.forbidden_write = Some(r);
        }
    }
}

/// A write's result as the summary keeps it: the exception or transport error in words.
fn outcome(
    r: Result<Result<(), tokio_modbus::ExceptionCode>, tokio_modbus::Error>,
) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(code)) => Err(exception_text(u8::from(code))),
        Err(e) => Err(format!("transport: {e}")),
    }
}

/// A Modbus exception as a user reads it: `exception 02 (illegal data address)`.
fn exception_text(code: u8) -> String {
    let what = match code {
        1 => "illegal function",
        2 => "illegal data address: not listed under writable, or outside the regions",
        3 => "illegal data value: outside the profile's range",
        4 => "server device failure",
        0x0B => "the device did not respond (not read yet, or stale)",
        _ => "unknown",
    };
    format!("exception {code:02X} ({what})")
}

/// A demo write's outcome in words.
fn outcome_text(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "accepted".into(),
        Err(e) => format!("refused: {e}"),
    }
}

/// The KSEM G2 profile built into the binary, so the demo's status page decodes values
/// without any file.
pub fn builtin_ksem_profile() -> anyhow::Result<airbridge::control::profile::Profile> {
    Ok(airbridge::control::profile::parse(
        include_str!("../../../profiles/ksem-g2.yaml"),
        "profiles/ksem-g2.yaml (built in)",
    )?)
}
