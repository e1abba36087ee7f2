//! Shared rig for the end-to-end tests: the real gateway on one end of a pseudo-terminal
//! pair, an RTU master (the inverter's side) on the other, simulators and push clients on
//! loopback. Everything is bounded in time and stops when the rig is dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use airbridge::app::gateway::{Gateway, RtuPort};
use airbridge::config;
use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use airbridge_sim::ksem;
use tokio_modbus::client::{Context, Writer};
use tokio_modbus::Slave;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

pub struct Rig {
    pub gateway: Gateway,
    pub inverter: RtuMaster<SerialStream>,
    pub cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Push options of most tests.
pub const LOCAL_PUSH: &str = "allow_from: [127.0.0.1]";

/// Start the gateway with `regions` (YAML list), push options `push_opts` (YAML mapping
/// body, e.g. [`LOCAL_PUSH`]) and a poll section pointing at `poll_host`.
pub async fn gateway(regions: &str, poll_host: SocketAddr, push_opts: &str) -> Rig {
    let yaml = format!(
        "rtu: {{device: pty, turnaround: 0, frame_timeout: 20ms}}
push: {{listen: '127.0.0.1:0', {push_opts}}}
poll: {{host: '{poll_host}', timeout: 500ms}}
regions:
{regions}"
    );
    let cfg = config::parse(&yaml, "test")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let cancel = CancellationToken::new();
    let gateway = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
        .await
        .expect("gateway starts");
    Rig {
        gateway,
        inverter: RtuMaster::new(inv_end, Duration::from_millis(300)),
        cancel,
    }
}

/// A simulated KSEM slave whose model does not evolve during a test (1 h measuring cycle).
pub async fn frozen_ksem(listen: SocketAddr) -> ksem::KsemSim {
    let opts = ksem::KsemSimOptions {
        listen,
        push_to: None,
        interval: Duration::from_secs(3600),
        seed: 7,
    };
    ksem::start(opts, CancellationToken::new())
        .await
        .expect("KSEM sim starts")
}

/// A loopback address nobody listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

pub async fn push_client(addr: SocketAddr) -> Context {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Push the two KSEM groups (0..27, 40..145) with words derived from `seed`.
pub async fn push_groups(ctx: &mut Context, seed: u16) -> [u16; 148] {
    let mut words = [0u16; 148];
    for (a, w) in words.iter_mut().enumerate() {
        if a < 28 || (40..146).contains(&a) {
            *w = seed.wrapping_mul(31).wrapping_add(a as u16);
        }
    }
    write(ctx, 0, &words[..28]).await.expect("totals accepted");
    write(ctx, 40, &words[40..146])
        .await
        .expect("phases accepted");
    words
}

pub async fn write(ctx: &mut Context, addr: u16, words: &[u16]) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        ctx.write_multiple_registers(addr, words),
    )
    .await
    {
        Err(_) => Err("timeout".into()),
        Ok(Err(e)) => Err(format!("transport: {e}")),
        Ok(Ok(Err(code))) => Err(format!("exception: {code:?}")),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// Read `count` holding registers over RTU in requests of at most 125.
pub async fn rtu_read(rig: &mut Rig, address: u16, count: u16) -> Result<Vec<u16>, ReplyError> {
    let mut out = Vec::new();
    let mut a = address;
    let end = u32::from(address) + u32::from(count);
    while u32::from(a) < end {
        let n = (end - u32::from(a)).min(125) as u16;
        out.extend(rig.inverter.read(1, 3, a, n).await?);
        a += n;
    }
    Ok(out)
}

/// Retry `rtu_read` until it succeeds or `within` passes.
pub async fn rtu_read_eventually(
    rig: &mut Rig,
    address: u16,
    count: u16,
    within: Duration,
) -> Result<Vec<u16>, ReplyError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = rtu_read(rig, address, count).await;
        if r.is_ok() || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process (the real binary) that is killed and reaped if a test fails half-way.
pub struct Child(pub std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's exit status, or `None` if it is still running after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A file of the package, by its path relative to the package root.
pub fn manifest(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A shipped register profile, `profiles/NAME`.
pub fn profile(name: &str) -> std::path::PathBuf {
    manifest("profiles").join(name)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `airbridge run --config cfg` with its output discarded, killed if the test fails.
pub fn run_quiet(cfg: &std::path::Path) -> Child {
    Child(
        airbridge_cmd()
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn airbridge run"),
    )
}

/// Stop `child` as systemd does (SIGTERM) and require a clean exit within 10 s.
pub fn terminate(mut child: Child) {
    let pid = child.0.id().to_string();
    std::process::Command::new("kill")
        .arg(pid)
        .status()
        .expect("kill");
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

pub mod bus;
pub mod http;
/// Outside tools a test needs.
pub mod tool;

/// The real binary as a command to spawn. `AIRBRIDGE_BIN`, if set, is a command line split
/// on whitespace (e.g. `qemu-aarch64 -L / target/aarch64-unknown-linux-gnu/release/airbridge`,
/// relative to the package root), so the same black-box tests and assertions run a
/// cross-built binary under emulation; otherwise the binary cargo built for this test.
pub fn airbridge_cmd() -> std::process::Command {
    let line = std::env::var("AIRBRIDGE_BIN").unwrap_or_default();
    let mut words = line.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut cmd = std::process::Command::new(program);
            cmd.args(words);
            cmd
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_airbridge")),
    }
}
