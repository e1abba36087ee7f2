//! Issue 15: RS485 behind a TCP converter (`device: tcp://HOST:PORT`), in both directions.
//! An in-test TCP listener on loopback plays the converter in transparent mode: raw RTU
//! frames, no inter-byte silence. The real gateway connects to it as a client. Each test
//! first drops the connection in the middle of a frame; the gateway must reconnect through
//! its reopen loop and the next connection must not be confused by the half frame.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use airbridge::app::gateway::{Gateway, RtuPort};
use airbridge::config;
use airbridge::control::profile;
use airbridge::link::rtu_master::RtuMaster;
use airbridge_sim::device::{self, DeviceOptions, SimDevice};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_modbus::client::Reader as _;
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(10);

fn profile_path() -> std::path::PathBuf {
    crate::common::profile("kstar-hybrid.yaml")
}

/// The KSTAR side: `rtu_poll.device: tcp://…`. The converter's first connection gets half
/// a reply and is dropped; on the second, the simulated device answers. LAN clients get the
/// device's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstar_bus_behind_a_tcp_converter() {
    let prof = profile::load(&profile_path()).expect("profile loads");
    let dev = SimDevice::new(
        prof,
        DeviceOptions {
            frozen: true,
            reply_delay: Duration::ZERO,
            ..Default::default()
        },
    );
    assert!(dev.set("pv1_voltage", &[3012]));
    let converter = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = converter.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let conv_cancel = cancel.clone();
    let conv_dev = Arc::clone(&dev);
    let conv = tokio::spawn(async move {
        // First connection: one request, half its reply, then the connection drops.
        let (mut s, _) = converter.accept().await.expect("first connection");
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.expect("a request");
        let reply = conv_dev.answer(&req).expect("the device answers");
        s.write_all(&reply[..reply.len() / 2]).await.expect("half");
        drop(s);
        // Second: the device proper.
        let (s, _) = converter.accept().await.expect("second connection");
        let _ = device::serve(s, conv_dev, conv_cancel).await;
    });
    let yaml = format!(
        "profile: '{}'
rtu_poll: {{device: 'tcp://{target}', timeout: 300ms, gap: 2ms, retries: 1, offline_after: 3}}
tcp_server: {{listen: '127.0.0.1:0', unit_id: 1, allow_from: [127.0.0.1]}}
regions:
  - {{name: live, start: 3000, count: 125, function: input, source: rtu_poll, every: 100ms, max_age: 2s}}
",
        profile_path().display()
    );
    let loaded = config::parse(&yaml, "tcp-bus").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("rtu_poll.device: a TCP converter")),
        "{:?}",
        loaded.warnings
    );
    let gw = Gateway::start(loaded.config, RtuPort::Off, cancel.clone())
        .await
        .expect("gateway starts");
    let addr = gw.tcp_addr.expect("tcp server");
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let words = loop {
        match tokio::time::timeout(Duration::from_secs(2), ctx.read_input_registers(3000, 125))
            .await
        {
            Ok(Ok(Ok(w))) => break w,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("the bus behind the converter was never read: {other:?}"),
        }
    };
    let pv1 = dev.profile().get("pv1_voltage").expect("pv1_voltage");
    let off = usize::from(pv1.address - 3000);
    assert_eq!(words[off], 3012);
    let stats = &gw.handles.rtu_poll;
    assert!(
        stats.device_opens.load(Relaxed) >= 2,
        "reconnected after the drop"
    );
    assert!(stats.device_failures.load(Relaxed) >= 1);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), conv).await;
}

/// The inverter side: `rtu.device: tcp://…`. The converter sends half a request and drops
/// the connection; on the next connection a whole request gets its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_slave_behind_a_tcp_converter() {
    let converter = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = converter.local_addr().expect("addr");
    let yaml = format!(
        "rtu: {{device: 'tcp://{target}', unit_id: 1}}
regions:
  - {{name: id, start: 8192, count: 2, source: static, values: {{8192: 7, 8193: 9}}}}
"
    );
    let loaded = config::parse(&yaml, "tcp-slave").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("rtu.device: a TCP converter")),
        "{:?}",
        loaded.warnings
    );
    let cancel = CancellationToken::new();
    let gw = Gateway::start(loaded.config, RtuPort::Device, cancel.clone())
        .await
        .expect("gateway starts");
    // First connection: half a request, then gone.
    let (mut s, _) = tokio::time::timeout(PATIENCE, converter.accept())
        .await
        .expect("the gateway connects")
        .expect("accept");
    let req = airbridge_modbus::master::encode_read(1, 3, 8192, 2);
    s.write_all(&req[..4]).await.expect("half a request");
    drop(s);
    // Second connection: the inverter's read is answered.
    let (s, _) = tokio::time::timeout(PATIENCE, converter.accept())
        .await
        .expect("the gateway reconnects")
        .expect("accept");
    let mut inverter = RtuMaster::new(s, Duration::from_millis(500));
    let words = tokio::time::timeout(PATIENCE, inverter.read(1, 3, 8192, 2))
        .await
        .expect("answered in time")
        .expect("a valid reply");
    assert_eq!(words, vec![7, 9]);
    assert!(gw.handles.rtu.device_opens.load(Relaxed) >= 2);
    cancel.cancel();
}
