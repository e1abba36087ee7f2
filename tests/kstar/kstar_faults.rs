//! Issue 15, the faults seen from outside: a scripted KSTAR bus on one end of a pty pair, the
//! real gateway (RTU poller + TCP server) on the other, Modbus TCP clients on loopback.
//!
//! - a late reply must never land in another region of the same shape;
//! - a write whose client is gone (or that waited longer than `write_timeout`) is never sent;
//! - writes back to back must not stop the polling;
//! - FC16 with quantity 0 or above 123 gets exception 03 and never reaches the bus;
//! - nothing is sent on the bus once shutdown began.
//!
//! The bus is scripted here (not the profile simulator) so each test decides per request
//! whether and when the device answers. A read answers word = address + i.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airbridge::app::gateway::{BusPort, Gateway, RtuPort};
use airbridge::config;
use airbridge_modbus::crc::{append_crc, frame_crc_ok};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{Reader as _, Writer as _};
use tokio_modbus::Slave;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

/// When the scripted device answers the `n`th request (0-based) `frame`: `None` = never.
type Script = Box<dyn Fn(usize, &[u8]) -> Option<Duration> + Send + Sync>;

/// The scripted device: every frame it received, with its arrival time.
#[derive(Default)]
struct Log {
    frames: Mutex<Vec<(Instant, Vec<u8>)>>,
}

impl Log {
    fn frames(&self) -> Vec<(Instant, Vec<u8>)> {
        self.frames.lock().map(|g| g.clone()).unwrap_or_default()
    }
    fn count(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        self.frames().iter().filter(|(_, f)| pred(f)).count()
    }
}

fn request_len(buf: &[u8]) -> Option<usize> {
    match buf.get(1)? {
        0x10 => buf.get(6).map(|&n| 9 + usize::from(n)),
        _ => Some(8),
    }
}

fn reply_to(frame: &[u8]) -> Vec<u8> {
    let (unit, fc) = (frame[0], frame[1]);
    let addr = u16::from_be_bytes([frame[2], frame[3]]);
    let count = u16::from_be_bytes([frame[4], frame[5]]);
    let mut out = match fc {
        0x03 | 0x04 => {
            let mut o = vec![unit, fc, (count * 2) as u8];
            for i in 0..count {
                o.extend_from_slice(&addr.wrapping_add(i).to_be_bytes());
            }
            o
        }
        0x06 => frame[..6].to_vec(),
        0x10 => frame[..6].to_vec(),
        _ => vec![unit, fc | 0x80, 1],
    };
    out.extend_from_slice(&[0, 0]);
    let n = out.len() - 2;
    append_crc(&mut out, n);
    out
}

/// Serve the scripted device on `stream` until `cancel`.
async fn scripted(
    mut stream: SerialStream,
    script: Script,
    log: Arc<Log>,
    cancel: CancellationToken,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut n_req = 0usize;
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => return,
            r = stream.read(&mut chunk) => match r {
                Ok(0) => return,
                Ok(n) => n,
                Err(_) => { tokio::time::sleep(Duration::from_millis(20)).await; continue; }
            },
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = request_len(&buf) {
            if buf.len() < len {
                break;
            }
            if !frame_crc_ok(&buf[..len]) {
                buf.remove(0);
                continue;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            if let Ok(mut g) = log.frames.lock() {
                g.push((Instant::now(), frame.clone()));
            }
            let delay = script(n_req, &frame);
            n_req += 1;
            if let Some(d) = delay {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(d) => {}
                }
                if stream.write_all(&reply_to(&frame)).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Rig {
    gateway: Gateway,
    log: Arc<Log>,
    /// Stops the gateway.
    cancel: CancellationToken,
    /// Stops the scripted device (separately, so a test can stop the gateway first).
    device_cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.device_cancel.cancel();
    }
}

impl Rig {
    fn addr(&self) -> SocketAddr {
        self.gateway.tcp_addr.expect("tcp server")
    }
}

fn profile_path() -> PathBuf {
    crate::common::profile("kstar-hybrid.yaml")
}

async fn rig(rtu_poll: &str, regions: &str, script: Script) -> Rig {
    let yaml = format!(
        "profile: '{}'
rtu_poll: {{device: pty, {rtu_poll}}}
tcp_server: {{listen: '127.0.0.1:0', unit_id: 1, allow_from: [127.0.0.1], max_connections: 32}}
status: {{listen: '127.0.0.1:0'}}
regions:
{regions}
writable: [3044]
",
        profile_path().display()
    );
    let cfg = config::parse(&yaml, "kstar-faults")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let log = Arc::new(Log::default());
    let cancel = CancellationToken::new();
    let device_cancel = CancellationToken::new();
    tokio::spawn(scripted(
        dev_end,
        script,
        Arc::clone(&log),
        device_cancel.clone(),
    ));
    let gateway = Gateway::start_with_bus(
        cfg,
        RtuPort::Off,
        BusPort::Stream(Box::new(gw_end)),
        cancel.clone(),
    )
    .await
    .expect("gateway starts");
    Rig {
        gateway,
        log,
        cancel,
        device_cancel,
    }
}

async fn client(addr: SocketAddr) -> tokio_modbus::client::Context {
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

fn fc(f: &[u8]) -> u8 {
    f.get(1).copied().unwrap_or(0)
}

/// Two regions of the same function and count; the device answers the first request (the
/// first region's) 1.5 x timeout late. The second region must hold its own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_never_lands_in_another_region() {
    let script: Script = Box::new(|n, _| {
        Some(if n == 0 {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        })
    });
    let regions = "  - {name: a, start: 3000, count: 10, function: input, source: rtu_poll, every: 60s, max_age: 120s}
  - {name: b, start: 3010, count: 10, function: input, source: rtu_poll, every: 60s, max_age: 120s}";
    let rig = rig(
        "timeout: 200ms, gap: 2ms, retries: 0, offline_after: 5",
        regions,
        script,
    )
    .await;
    let mut ctx = client(rig.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let words = loop {
        match tokio::time::timeout(Duration::from_secs(2), ctx.read_input_registers(3010, 10)).await
        {
            Ok(Ok(Ok(w))) => break w,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("region b never served: {other:?}"),
        }
    };
    let want: Vec<u16> = (3010..3020).collect();
    assert_eq!(words, want, "region b holds region a's late reply");
}

/// `GET /status` as JSON.
async fn status_json(addr: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&crate::common::http::get_body(addr, "/status").await)
        .expect("status json")
}

/// The MBAP frame of an FC06 write of `value` to `address`, transaction `tid`.
fn fc06_frame(tid: u16, address: u16, value: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&tid.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 6, 1, 0x06]);
    f.extend_from_slice(&address.to_be_bytes());
    f.extend_from_slice(&value.to_be_bytes());
    f
}

/// 16 clients each send one FC06 and close at once while the bus is slow. A write must never
/// reach the device later than `write_timeout` (2 s by default) plus one transaction on the
/// bus after its client sent it; the ones that could not get the bus in time are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_outlive_their_clients() {
    let script: Script = Box::new(|_, _| Some(Duration::from_millis(250)));
    let regions = "  - {name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 10ms, max_age: 60s}";
    let rig = rig(
        "timeout: 500ms, gap: 2ms, retries: 0, offline_after: 5",
        regions,
        script,
    )
    .await;
    // Let the poller find the device first.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent = Instant::now();
    for i in 0..16u16 {
        let mut s = TcpStream::connect(rig.addr()).await.expect("connect");
        s.write_all(&fc06_frame(i, 3044, i % 3))
            .await
            .expect("send");
        drop(s);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let writes: Vec<Duration> = rig
        .log
        .frames()
        .into_iter()
        .filter(|(_, f)| fc(f) == 0x06)
        .map(|(t, _)| t.saturating_duration_since(sent))
        .collect();
    // write_timeout (2 s) + the transaction in progress when it was taken (250 ms) + slack.
    let limit = Duration::from_millis(2_750);
    assert!(
        writes.iter().all(|d| *d <= limit),
        "writes reached the device too late after their clients left: {writes:?}"
    );
    assert!(writes.len() < 16, "every write was sent: {writes:?}");
    // Every write is accounted for: sent, dropped as too old, or abandoned by its client.
    let stats = &rig.gateway.handles.rtu_poll;
    let expired = stats.writes_expired.load(Relaxed);
    let abandoned = stats.writes_abandoned.load(Relaxed);
    assert!(expired >= 1, "no write expired");
    assert_eq!(writes.len() as u64 + expired + abandoned, 16);
    // /status shows what became of them.
    let status = status_json(rig.gateway.status_addr.expect("status endpoint")).await;
    let counters = &status["upstream"]["rtu_poll"]["counters"];
    assert_eq!(
        counters["writes_expired"].as_u64(),
        Some(expired),
        "{counters}"
    );
    assert_eq!(
        counters["writes_ok"].as_u64(),
        Some(writes.len() as u64),
        "{counters}"
    );
}

/// Six clients write back to back; the live region (every 10 ms) must keep being polled: a
/// due poll goes before the next write, so at most the writes that fit into one poll
/// interval (10 ms / at least 7 ms per write, plus the one in progress: 3) run in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_starve_polling() {
    let script: Script = Box::new(|_, _| Some(Duration::from_millis(5)));
    let regions = "  - {name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 10ms, max_age: 60s}";
    let rig = rig(
        "timeout: 300ms, gap: 2ms, retries: 0, offline_after: 5",
        regions,
        script,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for i in 0..6u16 {
        let addr = rig.addr();
        writers.push(tokio::spawn(async move {
            let mut ctx = client(addr).await;
            let mut n = 0u32;
            while Instant::now() < stop {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    ctx.write_single_register(3044, i % 3),
                )
                .await;
                n += 1;
            }
            n
        }));
    }
    let before = rig.log.count(|f| fc(f) == 0x04);
    let w_before = rig.log.count(|f| fc(f) == 0x06);
    for w in writers {
        w.await.expect("writer");
    }
    let reads = rig.log.count(|f| fc(f) == 0x04) - before;
    let writes = rig.log.count(|f| fc(f) == 0x06) - w_before;
    assert!(writes > 10, "the writers got through: {writes}");
    let mut longest = 0;
    let mut run = 0;
    for (_, f) in rig.log.frames() {
        run = if fc(&f) == 0x06 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    assert!(
        longest <= 3,
        "polling starved by writes: {longest} writes in a row; {reads} region reads against {writes} writes"
    );
}

/// FC16 with quantity 0: exception 03 before any policy check (it used to get the policy's
/// 02), never on the bus. Quantity 124 does not fit a Modbus TCP frame (PDU above 253
/// bytes): the decoder closes that connection; it must not reach the bus either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fc16_bad_quantity_gets_03_and_never_reaches_the_bus() {
    let script: Script = Box::new(|_, _| Some(Duration::ZERO));
    let regions = "  - {name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 100ms, max_age: 60s}";
    let rig = rig("timeout: 200ms, gap: 2ms", regions, script).await;
    for (tid, quantity) in [(1u16, 0u16), (2, 124)] {
        let mut s = TcpStream::connect(rig.addr()).await.expect("connect");
        let bytes = (quantity * 2).min(255) as u8;
        let mut pdu = vec![1u8, 0x10, 0x0B, 0xE4]; // unit 1, FC16, address 3044
        pdu.extend_from_slice(&quantity.to_be_bytes());
        pdu.push(bytes);
        pdu.extend(std::iter::repeat_n(0u8, usize::from(bytes)));
        let mut frame = tid.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&(pdu.len() as u16).to_be_bytes());
        frame.extend_from_slice(&pdu);
        s.write_all(&frame).await.expect("send");
        let mut head = [0u8; 9];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await;
        match (quantity, r) {
            (_, Ok(Ok(_))) => assert_eq!(
                (head[7], head[8]),
                (0x90, 0x03),
                "quantity {quantity}: {head:02X?}"
            ),
            (124, Ok(Err(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            (_, other) => panic!("quantity {quantity}: no exception 03: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.log.count(|f| fc(f) == 0x10),
        0,
        "an FC16 reached the bus"
    );
}

/// Shutdown during the gap between two requests: nothing more goes on the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_after_shutdown_began() {
    let script: Script = Box::new(|_, _| Some(Duration::ZERO));
    let regions = "  - {name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 10ms, max_age: 60s}";
    let rig = rig("timeout: 200ms, gap: 400ms", regions, script).await;
    // Wait until the poller runs, then shut down while it keeps its gap.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.log.count(|_| true) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let frames = rig.log.frames();
    let last = frames.last().map(|(t, _)| *t).expect("the poller reads");
    // Into the gap, well before its end.
    tokio::time::sleep_until(last + Duration::from_millis(100)).await;
    let at_cancel = rig.log.count(|_| true);
    rig.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = rig.log.count(|_| true);
    assert_eq!(
        after,
        at_cancel,
        "requests sent after shutdown began ({:?} after the start)",
        start.elapsed()
    );
}

/// The device answers, then falls silent: the state is red and says who gets what (LAN
/// clients, 0B — there is no inverter on a KSTAR config) and why (the device, not "nothing
/// newer").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_falls_silent_is_named_in_the_state() {
    let script: Script = Box::new(|n, _| (n < 3).then_some(Duration::ZERO));
    let regions = "  - {name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 200ms, max_age: 1s, on_stale: exception}";
    let rig = rig(
        "timeout: 100ms, gap: 2ms, retries: 0, offline_after: 2, probe_max: 1s",
        regions,
        script,
    )
    .await;
    let status = rig.gateway.status_addr.expect("status endpoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = status_json(status).await;
        if st["state"]["id"] == "silent_stale" {
            break st;
        }
        assert!(Instant::now() < deadline, "never silent_stale: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["state"]["level"], "bad");
    assert_eq!(
        st["state"]["detail"],
        "LAN clients get exception 0B: live older than max_age; the RS485 device does not answer (wiring, address, baud; a KSG sleeps at night)",
        "{st:#}"
    );
}
