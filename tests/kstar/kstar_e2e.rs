//! KSTAR end to end: the simulated device on one end of a pseudo-terminal pair, the real
//! gateway (RTU poller + TCP server) on the other, a tokio-modbus TCP client on loopback.
//! Reads come from the image with the device's values; permitted writes reach the device and
//! return its echo; forbidden writes never reach it; a silent device makes its regions stale
//! (exception 0B) and comes back by itself. Golden frames are checked on the device's side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airbridge::app::gateway::{BusPort, Gateway, RtuPort};
use airbridge::config;
use airbridge::control::profile::{self, Table, Value};
use airbridge_sim::device::{self, DeviceOptions, SimDevice};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

use crate::common::profile as profile_path;

struct Rig {
    device: Arc<SimDevice>,
    gateway: Gateway,
    client: Context,
    cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Device sim (frozen values) + gateway with `regions` and `writable`, + a TCP client.
async fn rig(profile_file: &str, regions: &str, writable: &str) -> Rig {
    rig_with(profile_file, regions, writable, "allow_from: [127.0.0.1]").await
}

/// [`rig`] with the `tcp_server` options `tcp` (YAML mapping body).
async fn rig_with(profile_file: &str, regions: &str, writable: &str, tcp: &str) -> Rig {
    rig_full(profile_file, None, regions, writable, tcp).await
}

/// [`rig_with`], the device simulating `device_profile` instead of the gateway's profile.
async fn rig_full(
    profile_file: &str,
    device_profile: Option<profile::Profile>,
    regions: &str,
    writable: &str,
    tcp: &str,
) -> Rig {
    let path = profile_path(profile_file);
    let prof = match device_profile {
        Some(p) => p,
        None => profile::load(&path).expect("profile loads"),
    };
    let device = SimDevice::new(
        prof,
        DeviceOptions {
            frozen: true,
            reply_delay: Duration::ZERO,
            ..Default::default()
        },
    );
    let yaml = format!(
        "profile: '{}'
rtu_poll: {{device: pty, timeout: 200ms, gap: 2ms, retries: 1, offline_after: 2, probe_max: 1s}}
tcp_server: {{listen: '127.0.0.1:0', unit_id: 1, {tcp}}}
regions:
{regions}
writable: {writable}
",
        path.display()
    );
    let cfg = config::parse(&yaml, "kstar-test")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let cancel = CancellationToken::new();
    tokio::spawn(device::serve(dev_end, Arc::clone(&device), cancel.clone()));
    let gateway = Gateway::start_with_bus(
        cfg,
        RtuPort::Off,
        BusPort::Stream(Box::new(gw_end)),
        cancel.clone(),
    )
    .await
    .expect("gateway starts");
    let addr: SocketAddr = gateway.tcp_addr.expect("tcp server");
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    Rig {
        device,
        gateway,
        client,
        cancel,
    }
}

const HYBRID_REGIONS: &str = "  - {name: live,     start: 3000, count: 125, function: input,   source: rtu_poll, every: 100ms, max_age: 1s}
  - {name: settings, start: 3125, count: 125, function: input,   source: rtu_poll, every: 300ms, max_age: 3s}
  - {name: model,    start: 3200, count: 38,  function: holding, source: rtu_poll, every: 300ms, max_age: 3s}";
const HYBRID_WRITABLE: &str = "[3044, 3086, 3200, 3272, 3273]";

type Reply = Result<Vec<u16>, String>;

async fn read(ctx: &mut Context, f: Table, address: u16, count: u16) -> Reply {
    let r = match f {
        Table::Input => {
            tokio::time::timeout(
                Duration::from_secs(5),
                ctx.read_input_registers(address, count),
            )
            .await
        }
        Table::Holding => {
            tokio::time::timeout(
                Duration::from_secs(5),
                ctx.read_holding_registers(address, count),
            )
            .await
        }
    };
    match r {
        Err(_) => Err("timeout".into()),
        Ok(Err(e)) => Err(format!("transport: {e}")),
        Ok(Ok(Err(code))) => Err(format!("exception: {code:?}")),
        Ok(Ok(Ok(words))) => Ok(words),
    }
}

/// Retry a read until `ok` accepts it or patience runs out; the last reply is returned.
async fn read_until(
    ctx: &mut Context,
    f: Table,
    address: u16,
    count: u16,
    ok: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = read(ctx, f, address, count).await;
        if ok(&r) || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_single(ctx: &mut Context, address: u16, value: u16) -> Result<(), ExceptionCode> {
    tokio::time::timeout(
        Duration::from_secs(30),
        ctx.write_single_register(address, value),
    )
    .await
    .expect("write answered in time")
    .expect("transport ok")
}

async fn write_multiple(
    ctx: &mut Context,
    address: u16,
    values: &[u16],
) -> Result<(), ExceptionCode> {
    tokio::time::timeout(
        Duration::from_secs(30),
        ctx.write_multiple_registers(address, values),
    )
    .await
    .expect("write answered in time")
    .expect("transport ok")
}

/// Frames with a write function code the device received.
fn writes_received(device: &SimDevice) -> Vec<Vec<u8>> {
    device
        .received()
        .into_iter()
        .filter(|f| matches!(f.get(1), Some(0x06 | 0x10)))
        .collect()
}

fn decode(p: &profile::Profile, f: Table, name: &str, words: &[u16], base: u16) -> Value {
    let r = p.get(name).expect(name);
    assert_eq!(r.table, f, "{name} table");
    let off = usize::from(r.address - base);
    r.decode(&words[off..off + usize::from(r.words)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_serve_the_devices_values_per_table() {
    let mut rig = rig("kstar-hybrid.yaml", HYBRID_REGIONS, HYBRID_WRITABLE).await;
    // Known raw values on the device: 301.2 V, 49.98 Hz, 87.5 % SOC, limit 70 %.
    assert!(rig.device.set("pv1_voltage", &[3012]));
    assert!(rig.device.set("grid_r_frequency", &[4998]));
    assert!(rig.device.set("bat_soc", &[875]));
    assert!(rig.device.set("active_power_setting", &[70]));
    let p = rig.device.profile().clone();

    // Wait for a poll after the last `set` (a poll may land between two of them).
    let live = read_until(&mut rig.client, Table::Input, 3000, 125, |r| {
        r.as_ref().is_ok_and(|w| {
            w[0] == 3012 && decode(&p, Table::Input, "bat_soc", w, 3000) == Value::Number(87.5)
        })
    })
    .await
    .expect("live region served");
    assert_eq!(
        decode(&p, Table::Input, "pv1_voltage", &live, 3000),
        Value::Number(301.2)
    );
    assert_eq!(
        decode(&p, Table::Input, "grid_r_frequency", &live, 3000),
        Value::Number(49.98)
    );
    assert_eq!(
        decode(&p, Table::Input, "bat_soc", &live, 3000),
        Value::Number(87.5)
    );
    // Every word equals the device's input table.
    for r in p.overlapping(Table::Input, 3000, 125) {
        let off = usize::from(r.address - 3000);
        assert_eq!(
            &live[off..off + usize::from(r.words)],
            rig.device.words(r).as_slice(),
            "{}",
            r.name
        );
    }

    // 3200 is two registers: input (FC04) = the power limit, holding (FC03) = model string.
    // The value was set after the gateway started: a poll before it may still be served.
    let input_3200 = read_until(&mut rig.client, Table::Input, 3200, 1, |r| {
        r.as_ref().is_ok_and(|w| w == &[70])
    })
    .await
    .expect("settings region");
    assert_eq!(input_3200, vec![70]);
    let model = read_until(&mut rig.client, Table::Holding, 3200, 8, |r| r.is_ok())
        .await
        .expect("model region");
    assert_eq!(
        decode(&p, Table::Holding, "inverter_model_name", &model, 3200),
        Value::Text("BluE-S 5000D".into())
    );
    // Outside the regions: 02, never a bus request.
    let before = rig.device.received().len();
    assert_eq!(
        read(&mut rig.client, Table::Holding, 3000, 1).await,
        Err("exception: IllegalDataAddress".into())
    );
    assert_eq!(
        read(&mut rig.client, Table::Input, 3300, 10).await,
        Err("exception: IllegalDataAddress".into())
    );
    // Reads are answered from the image: the device sees only the poller's FC03/FC04.
    assert!(rig
        .device
        .received()
        .iter()
        .all(|f| matches!(f.get(1), Some(0x03 | 0x04))));
    assert!(rig.device.received().len() >= before);
    assert!(
        rig.gateway
            .handles
            .rtu_poll
            .regions_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permitted_writes_reach_the_device_and_return_its_echo() {
    let mut rig = rig("kstar-hybrid.yaml", HYBRID_REGIONS, HYBRID_WRITABLE).await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("warm");
    // Working mode 3044 := 2 (battery priority), FC06.
    write_single(&mut rig.client, 3044, 2)
        .await
        .expect("device echoes");
    assert_eq!(
        rig.device.value("working_mode"),
        Some(Value::Enum {
            raw: 2,
            label: Some("BAT PRIO (battery priority)".into())
        })
    );
    // The power limit 06H 3200 := 85: exactly this frame on the bus.
    write_single(&mut rig.client, 3200, 85)
        .await
        .expect("device echoes");
    let frames = writes_received(&rig.device);
    assert_eq!(
        frames.last().map(Vec::as_slice),
        Some(&[0x01, 0x06, 0x0C, 0x80, 0x00, 0x55, 0x4B, 0x4D][..]),
        "{frames:02X?}"
    );
    assert_eq!(frames.len(), 2);
    // Read back through the image after the next poll.
    let back = read_until(&mut rig.client, Table::Input, 3044, 1, |r| {
        r.as_ref().is_ok_and(|w| w == &[2])
    })
    .await;
    assert_eq!(back, Ok(vec![2]));
    let limit = read_until(&mut rig.client, Table::Input, 3200, 1, |r| {
        r.as_ref().is_ok_and(|w| w == &[85])
    })
    .await;
    assert_eq!(limit, Ok(vec![85]));
    // The model string (holding 3200) is untouched by the 06H write.
    let model = read(&mut rig.client, Table::Holding, 3200, 1).await;
    assert_eq!(model, Ok(vec![u16::from_be_bytes(*b"Bl")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_writes_never_reach_the_device() {
    let mut rig = rig("kstar-hybrid.yaml", HYBRID_REGIONS, HYBRID_WRITABLE).await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("warm");
    let cases: &[(&str, u16, &[u16], ExceptionCode)] = &[
        // 06H 3241 = remote shutdown, inside the clock block: not listed.
        (
            "remote shutdown",
            3241,
            &[1],
            ExceptionCode::IllegalDataAddress,
        ),
        ("reboot", 3243, &[1], ExceptionCode::IllegalDataAddress),
        // Writable in the profile but not listed.
        (
            "charge power set",
            3079,
            &[50],
            ExceptionCode::IllegalDataAddress,
        ),
        // Read-only.
        (
            "inverter model",
            3045,
            &[1],
            ExceptionCode::IllegalDataAddress,
        ),
        // Listed, but out of range / not a documented value.
        ("limit 101 %", 3200, &[101], ExceptionCode::IllegalDataValue),
        (
            "working mode 7",
            3044,
            &[7],
            ExceptionCode::IllegalDataValue,
        ),
        // Not in the profile at all.
        ("unknown", 100, &[1], ExceptionCode::IllegalDataAddress),
    ];
    for (what, address, values, want) in cases {
        let r = write_single(&mut rig.client, *address, values[0]).await;
        assert_eq!(r, Err(*want), "{what}");
    }
    // FC16: the clock block (would include the 06H commands' addresses), the model string,
    // and a listed FC06 register written with FC16.
    let clock: Vec<u16> = b"10110214300020"
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        write_multiple(&mut rig.client, 3239, &clock).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        write_multiple(&mut rig.client, 3200, &[0x4142; 8]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        write_multiple(&mut rig.client, 3272, &[10, 10]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    // A write that is allowed and one that is not, in one FC16: all refused.
    assert_eq!(
        write_multiple(&mut rig.client, 3043, &[0, 1]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    // Nothing reached the device, and nothing was applied.
    assert_eq!(writes_received(&rig.device), Vec::<Vec<u8>>::new());
    assert!(rig.device.applied().is_empty());
    let refused = rig
        .gateway
        .handles
        .tcp
        .writes_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, cases.len() as u64 + 4);
    // The allowed write after all of that still works.
    write_single(&mut rig.client, 3273, 40)
        .await
        .expect("discharge percent");
    assert_eq!(writes_received(&rig.device).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_goes_stale_and_comes_back_by_itself() {
    let mut rig = rig("kstar-hybrid.yaml", HYBRID_REGIONS, HYBRID_WRITABLE).await;
    assert!(rig.device.set("pv1_voltage", &[3333]));
    let fresh = read_until(&mut rig.client, Table::Input, 3000, 1, |r| {
        r.as_ref().is_ok_and(|w| w == &[3333])
    })
    .await;
    assert_eq!(fresh, Ok(vec![3333]));

    rig.device.set_silent(true);
    let stale = read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_err()).await;
    assert_eq!(stale, Err("exception: GatewayTargetDevice".into()));
    // A write to a silent device: 0B, never a fake success.
    assert_eq!(
        write_single(&mut rig.client, 3044, 1).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    let stats = &rig.gateway.handles.rtu_poll;
    let went_offline = read_until(&mut rig.client, Table::Input, 3000, 1, |_| {
        stats
            .went_offline
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    assert!(went_offline.is_err());
    assert!(!stats.online.load(std::sync::atomic::Ordering::Relaxed));

    assert!(rig.device.set("pv1_voltage", &[3456]));
    rig.device.set_silent(false);
    let back = read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok()).await;
    assert_eq!(
        back,
        Ok(vec![3456]),
        "fresh again with the device's new value"
    );
    assert!(stats.online.load(std::sync::atomic::Ordering::Relaxed));
    assert!(stats.probes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_frames_on_the_bus() {
    // The poller's read of input register 3000 ×1 (vendor example 4.1).
    let regions =
        "  - {name: pv1, start: 3000, count: 1, function: input, source: rtu_poll, every: 100ms}";
    let mut rig = rig("kstar-ksg1-60k.yaml", regions, "[4004]").await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("polled");
    let first = rig.device.received().first().cloned();
    assert_eq!(
        first.as_deref(),
        Some(&[0x01, 0x04, 0x0B, 0xB8, 0x00, 0x01, 0xB3, 0xCB][..])
    );
    // KSG active power limit 85 % (example 4.4): 06H 4004, a write-only set-point.
    write_single(&mut rig.client, 4004, 85)
        .await
        .expect("device echoes");
    assert_eq!(
        writes_received(&rig.device),
        vec![vec![0x01, 0x06, 0x0F, 0xA4, 0x00, 0x55, 0x0B, 0x02]]
    );
    assert_eq!(
        write_single(&mut rig.client, 4001, 1).await,
        Err(ExceptionCode::IllegalDataAddress),
        "remote power-off is not listed"
    );
    assert_eq!(writes_received(&rig.device).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_ids_allow_list_and_connection_limit() {
    let mut rig = rig_with(
        "kstar-hybrid.yaml",
        HYBRID_REGIONS,
        HYBRID_WRITABLE,
        "allow_from: [127.0.0.1], max_connections: 1",
    )
    .await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("unit 1 served");
    let addr = rig.gateway.tcp_addr.expect("tcp");
    // The limit: a second connection is closed at accept, so its request fails.
    let mut second = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .expect("TCP connect (closed right after accept)");
    let r = read(&mut second, Table::Input, 3000, 1).await;
    assert!(
        r.as_ref().is_err_and(|e| !e.starts_with("exception")),
        "{r:?}"
    );
    drop(second);
    // Another unit id on the first connection: 0A, gateway path unavailable.
    rig.client.set_slave(Slave(7));
    assert_eq!(
        read(&mut rig.client, Table::Input, 3000, 1).await,
        Err("exception: GatewayPathUnavailable".into())
    );
    // 255, the Modbus TCP "no unit" id, is the device too.
    rig.client.set_slave(Slave(255));
    assert!(read(&mut rig.client, Table::Input, 3000, 1).await.is_ok());
    let tcp = &rig.gateway.handles.tcp;
    assert_eq!(
        tcp.front
            .refused_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // An allow list without us: the connection is closed at accept.
    let other = rig_with_refused().await;
    assert!(other, "a client outside allow_from gets no answer");
}

/// A gateway that allows only 10.0.0.1: our request from 127.0.0.1 fails at transport level.
async fn rig_with_refused() -> bool {
    let path = profile_path("kstar-hybrid.yaml");
    let yaml = format!(
        "profile: '{}'
rtu_poll: {{device: pty}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [10.0.0.1]}}
regions:
{HYBRID_REGIONS}
",
        path.display()
    );
    let cfg = config::parse(&yaml, "t").expect("config").config;
    let (_dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let cancel = CancellationToken::new();
    let _g = cancel.clone().drop_guard();
    let gw = Gateway::start_with_bus(cfg, RtuPort::Off, BusPort::Stream(Box::new(gw_end)), cancel)
        .await
        .expect("starts");
    let addr = gw.tcp_addr.expect("tcp");
    let Ok(mut ctx) = tokio_modbus::client::tcp::connect_slave(addr, Slave(1)).await else {
        return true;
    };
    let r = read(&mut ctx, Table::Input, 3000, 1).await;
    r.is_err_and(|e| !e.starts_with("exception"))
        && gw
            .handles
            .tcp
            .front
            .refused_not_allowed
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_own_exception_reaches_the_client() {
    // This device (firmware) does not accept 3272 although the profile documents it.
    let text = std::fs::read_to_string(profile_path("kstar-hybrid.yaml")).expect("read");
    let line = text
        .lines()
        .find(|l| l.contains("name: realtime_charge_percent"))
        .expect("3272 row");
    let read_only = line
        .replace(", access: rw, writes: [6]", "")
        .replace(", range: [0, 100]", "");
    let device_profile =
        profile::parse(&text.replace(line, &read_only), "device.yaml").expect("device profile");
    let mut rig = rig_full(
        "kstar-hybrid.yaml",
        Some(device_profile),
        HYBRID_REGIONS,
        HYBRID_WRITABLE,
        "allow_from: [127.0.0.1]",
    )
    .await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("warm");
    assert_eq!(
        write_single(&mut rig.client, 3272, 50).await,
        Err(ExceptionCode::IllegalDataAddress),
        "the device's exception 02, passed on"
    );
    // It did reach the device: this 02 is the device's, not the gateway's.
    assert_eq!(
        writes_received(&rig.device),
        vec![vec![0x01, 0x06, 0x0C, 0xC8, 0x00, 0x32, 0x8A, 0xB1]]
    );
    let failed = &rig.gateway.handles.tcp.writes_failed;
    assert_eq!(failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_regions_are_read_in_requests_of_at_most_125() {
    let regions =
        "  - {name: big, start: 3000, count: 300, function: input, source: rtu_poll, every: 1h}";
    let mut rig = rig("kstar-hybrid.yaml", regions, "[]").await;
    read_until(&mut rig.client, Table::Input, 3000, 1, |r| r.is_ok())
        .await
        .expect("polled");
    let reads: Vec<(u16, u16)> = rig
        .device
        .received()
        .iter()
        .map(|f| {
            (
                u16::from_be_bytes([f[2], f[3]]),
                u16::from_be_bytes([f[4], f[5]]),
            )
        })
        .collect();
    assert_eq!(&reads[..3], &[(3000, 125), (3125, 125), (3250, 50)]);
    // The whole region is served, across the request boundaries.
    let words = read(&mut rig.client, Table::Input, 3100, 125).await;
    assert!(words.is_ok(), "{words:?}");
}
