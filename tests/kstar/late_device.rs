//! Issue 15, seen from outside: the RS485 adapter of a KSTAR config (no `writable:` list)
//! enumerates only after the service started. The real binary must start polling it once
//! it appears, and LAN clients must get its data over Modbus TCP; `/status` shows the
//! poller's link state meanwhile.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airbridge::control::profile;
use airbridge_sim::device::{self, DeviceOptions, SimDevice};
use tokio_modbus::client::Reader as _;
use tokio_serial::{SerialPort as _, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::common;
use common::{free_port, manifest, wait_exit, Child};

const BIN: &str = env!("CARGO_BIN_EXE_airbridge");

/// One read of the first two input registers; `None` on any failure.
async fn read_once(addr: std::net::SocketAddr) -> Option<Vec<u16>> {
    let mut ctx = tokio::time::timeout(
        Duration::from_millis(500),
        tokio_modbus::client::tcp::connect(addr),
    )
    .await
    .ok()?
    .ok()?;
    let r = tokio::time::timeout(Duration::from_secs(2), ctx.read_input_registers(3000, 2)).await;
    match r {
        Ok(Ok(Ok(words))) => Some(words),
        _ => None,
    }
}

/// `upstream.rtu_poll.state` from `/status`; `None` while the endpoint does not answer.
async fn poller_state(addr: std::net::SocketAddr) -> Option<String> {
    let reply = common::http::try_request(addr, "GET", "/status")
        .await
        .ok()?;
    let json: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    Some(json["upstream"]["rtu_poll"]["state"].as_str()?.to_string())
}

/// Poll `/status` until the poller's state is `want` or `within` passed; the last state.
async fn wait_state(addr: std::net::SocketAddr, want: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let st = poller_state(addr).await;
        if st.as_deref() == Some(want) || Instant::now() >= deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_appears_after_start_is_polled_without_writable() {
    let prof = profile::load(&manifest("profiles/kstar-hybrid.yaml")).expect("profile");
    let dev = SimDevice::new(
        prof,
        DeviceOptions {
            frozen: true,
            ..Default::default()
        },
    );
    assert!(dev.set("pv1_voltage", &[2345]));
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let pty = gw_end.name().expect("pty has a path");
    drop(gw_end); // the gateway opens it itself, through the link below
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    tokio::spawn(device::serve(dev_end, Arc::clone(&dev), cancel.clone()));

    let port = free_port();
    let status_port = free_port();
    let dir = std::env::temp_dir().join(format!("airbridge-late-device-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("ttyUSB0");
    let _ = std::fs::remove_file(&link);
    let cfg = dir.join("kstar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "profile: '{}'
rtu_poll: {{device: '{}', baud: 9600, timeout: 300ms, gap: 5ms}}
tcp_server: {{listen: '127.0.0.1:{port}', allow_from: [127.0.0.1]}}
status: {{listen: '127.0.0.1:{status_port}'}}
regions:
  - {{name: live, start: 3000, count: 125, function: input, source: rtu_poll, every: 200ms}}
",
            manifest("profiles/kstar-hybrid.yaml").display(),
            link.display()
        ),
    )
    .expect("write config");
    let mut child = Child(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn airbridge run"),
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    let status = format!("127.0.0.1:{status_port}").parse().expect("addr");

    // The adapter enumerates 4 s after the start; meanwhile the poller waits to reopen.
    let start = Instant::now();
    assert_eq!(
        wait_state(status, "reopening", Duration::from_secs(3))
            .await
            .as_deref(),
        Some("reopening")
    );
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(start.elapsed())).await;
    assert!(
        wait_exit(&mut child, Duration::ZERO).is_none(),
        "the gateway runs while the device is missing"
    );
    std::os::unix::fs::symlink(&pty, &link).expect("the device appears");
    let appeared = Instant::now();

    // Re-open backoff is at most 10 s (+50 % jitter caps at 10 s); then a poll of 200 ms.
    let deadline = appeared + Duration::from_secs(20);
    let mut got = None;
    while Instant::now() < deadline && got.is_none() {
        got = read_once(addr).await;
        if got.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let words = got.expect("data over TCP after the device appeared");
    assert_eq!(words[0], 2345);
    assert_eq!(
        wait_state(status, "polling", Duration::from_secs(5))
            .await
            .as_deref(),
        Some("polling")
    );

    Command::new("kill")
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
