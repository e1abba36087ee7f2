//! Several devices on one bus, end to end: the real binary polls two simulated KSTAR units
//! on a pseudo-terminal (`devices:`) and serves them to a Modbus TCP client by unit id. One
//! unit falls silent: the other stays fresh and keeps its poll rate (polls counted at the
//! device, never timed), the silent one answers 0B and is only probed; it recovers when it
//! answers again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airbridge_sim::device::SimDevice;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::slave::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Slave};

use crate::common;
use common::http::get_body as http_get;
use common::{free_port, manifest};

/// One FC04 read of 3000..3001 from `unit`: the words, the exception, or `None` when the
/// transport failed or timed out.
async fn read(ctx: &mut Context, unit: u8) -> Option<Result<Vec<u16>, ExceptionCode>> {
    ctx.set_slave(Slave(unit));
    match tokio::time::timeout(Duration::from_secs(3), ctx.read_input_registers(3000, 2)).await {
        Ok(Ok(r)) => Some(r),
        _ => None,
    }
}

/// Read `unit` until `want` says yes; panics with the last answer after 30 s (a bound on a
/// failure, not a measured time).
async fn until(
    ctx: &mut Context,
    unit: u8,
    what: &str,
    want: impl Fn(&Option<Result<Vec<u16>, ExceptionCode>>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read(ctx, unit).await;
        if want(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "unit {unit}: {what}; last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests that reached each unit during `window` (heard, whether it answered or not).
async fn polls_in(devs: &[Arc<SimDevice>; 2], window: Duration) -> [u64; 2] {
    let heard = |d: &Arc<SimDevice>| d.stats.requests.load(Relaxed) + d.stats.ignored.load(Relaxed);
    let before = devs.each_ref().map(heard);
    tokio::time::sleep(window).await;
    let after = devs.each_ref().map(heard);
    [after[0] - before[0], after[1] - before[1]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_on_one_pty_bus_one_falls_silent_and_returns() {
    let (devs, path, _bus) = common::bus::two_unit_bus(&manifest("profiles/kstar-hybrid.yaml"));

    let port = free_port();
    let status_port = free_port();
    let dir = std::env::temp_dir().join(format!("airbridge-kstar-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("two.yaml");
    let region = "{name: live, start: 3000, count: 100, function: input, every: 300ms, max_age: 2s, on_stale: exception}";
    std::fs::write(
        &cfg,
        format!(
            "rtu_poll: {{device: '{path}', baud: 9600, timeout: 200ms, gap: 5ms, retries: 0, offline_after: 1, probe_max: 2s}}
tcp_server: {{listen: '127.0.0.1:{port}', allow_from: [127.0.0.1]}}
status: {{listen: '127.0.0.1:{status_port}'}}
devices:
  - name: battery1
    unit_id: 1
    profile: '{prof}'
    writable: [3200]
    regions: [{region}]
  - name: battery2
    unit_id: 2
    profile: '{prof}'
    regions: [{region}]
",
            prof = manifest("profiles/kstar-hybrid.yaml").display()
        ),
    )
    .expect("write config");
    let child = common::run_quiet(&cfg);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut ctx = None;
    for _ in 0..100 {
        if let Ok(c) = tokio_modbus::client::tcp::connect(addr).await {
            ctx = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ctx = ctx.expect("the gateway listens");

    // Each unit id reads its own device; an unknown one gets 0A.
    until(
        &mut ctx,
        1,
        "serves its device",
        |r| matches!(r, Some(Ok(w)) if w[0] == 1111),
    )
    .await;
    until(
        &mut ctx,
        2,
        "serves its device",
        |r| matches!(r, Some(Ok(w)) if w[0] == 2222),
    )
    .await;
    assert_eq!(
        read(&mut ctx, 3).await,
        Some(Err(ExceptionCode::GatewayPathUnavailable))
    );
    // A write to unit 1 reaches device 1 only; unit 2 has no `writable:` (02).
    ctx.set_slave(Slave(1));
    let w = ctx
        .write_single_register(3200, 60)
        .await
        .expect("transport");
    assert_eq!(w, Ok(()));
    assert_eq!((devs[0].applied().len(), devs[1].applied().len()), (1, 0));
    ctx.set_slave(Slave(2));
    let w = ctx
        .write_single_register(3200, 60)
        .await
        .expect("transport");
    assert_eq!(w, Err(ExceptionCode::IllegalDataAddress));

    // Both answering: unit 1's polls in a window, the baseline of its rate.
    let window = Duration::from_secs(3);
    let both = polls_in(&devs, window).await;
    assert!(both[0] >= 3 && both[1] >= 3, "both polled: {both:?}");

    // Unit 2 falls silent: it goes stale (0B) and offline; unit 1 stays fresh.
    devs[1].set_silent(true);
    until(&mut ctx, 2, "answers 0B while silent", |r| {
        *r == Some(Err(ExceptionCode::GatewayTargetDevice))
    })
    .await;
    let silent = polls_in(&devs, window).await;
    assert!(silent[1] >= 1, "the silent unit is probed: {silent:?}");
    assert!(
        silent[0] * 5 >= both[0] * 4,
        "unit 1 keeps at least 80 % of its polls while unit 2 is silent: {} of {}",
        silent[0],
        both[0]
    );
    assert!(
        silent[1] * 2 <= both[1],
        "the silent unit is only probed, not polled: {silent:?} vs {both:?}"
    );
    assert!(matches!(read(&mut ctx, 1).await, Some(Ok(w)) if w[0] == 1111));
    assert_eq!(
        read(&mut ctx, 2).await,
        Some(Err(ExceptionCode::GatewayTargetDevice))
    );
    // /status and /metrics show each device.
    let status_addr = format!("127.0.0.1:{status_port}").parse().expect("addr");
    let st: serde_json::Value =
        serde_json::from_str(&http_get(status_addr, "/status").await).expect("status JSON");
    let devices = &st["upstream"]["rtu_poll"]["devices"];
    assert_eq!(devices[0]["name"], "battery1", "{st}");
    assert_eq!(devices[0]["state"], "polling", "{st}");
    assert_eq!(devices[1]["state"], "offline", "{st}");
    assert_eq!(devices[1]["regions"][0]["stale"], true, "{st}");
    assert!(devices[1]["counters"]["probes"].as_u64() >= Some(1), "{st}");
    assert_eq!(st["upstream"]["rtu_poll"]["state"], "offline", "{st}");
    // The state says who gets what, and which device is the cause.
    assert_eq!(st["state"]["id"], "silent_stale", "{st}");
    assert_eq!(
        st["state"]["detail"],
        "LAN clients get exception 0B: battery2.live older than max_age; not answering: battery2 (unit 2)",
        "{st}"
    );
    let metrics = http_get(status_addr, "/metrics").await;
    for line in [
        "airbridge_region_stale{region=\"live\",device=\"battery2\"} 1",
        "airbridge_region_stale{region=\"live\",device=\"battery1\"} 0",
        "airbridge_rtu_poll_device_online{device=\"battery2\"} 0",
        "airbridge_rtu_poll_writes_total{device=\"battery1\",result=\"ok\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // It answers again: a probe finds it and its data is served again.
    devs[1].set_silent(false);
    until(
        &mut ctx,
        2,
        "recovers",
        |r| matches!(r, Some(Ok(w)) if w[0] == 2222),
    )
    .await;
    assert!(matches!(read(&mut ctx, 1).await, Some(Ok(w)) if w[0] == 1111));

    common::terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
}
