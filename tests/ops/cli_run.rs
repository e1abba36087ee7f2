//! The real binary: `airbridge run` on a pseudo-terminal serves the inverter and stops
//! cleanly on SIGTERM; `airbridge demo` runs with no hardware and reports replies.

use crate::common;
use common::{wait_exit, Child};

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airbridge::link::rtu_master::RtuMaster;
use tokio_serial::{SerialPort as _, SerialStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_pty_and_stops_cleanly_on_sigterm() {
    let ksem = common::frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let device = gw_end.name().expect("pty has a path");
    // The pair's end holds the port's exclusive lock, as the gateway will: release it.
    drop(gw_end);
    let push_port = common::dead_addr().await.port();
    let dir = std::env::temp_dir().join(format!("airbridge-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rtu: {{device: '{device}', baud: 38400, turnaround: 1750us}}
push: {{listen: '127.0.0.1:{push_port}', allow_from: [127.0.0.1]}}
poll: {{host: '{}', timeout: 500ms}}
regions:
  - {{name: totals, start: 0, count: 40, source: push}}
  - {{name: phases, start: 40, count: 108, source: push}}
  - {{name: identity, start: 8192, count: 58, source: poll, every: 1h}}
",
            ksem.slave_addr()
        ),
    )
    .expect("write config");
    let mut child = Child(
        common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airbridge run"),
    );

    // Push as the KSEM (retry until the listener is up), then read as the inverter.
    let push_addr = format!("127.0.0.1:{push_port}").parse().expect("addr");
    let mut ctx = None;
    for _ in 0..100 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio_modbus::client::tcp::connect(push_addr),
        )
        .await
        {
            ctx = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ctx = ctx.expect("gateway push listener came up");
    let pushed = common::push_groups(&mut ctx, 9).await;
    let mut inverter = RtuMaster::new(inv_end, Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        match inverter.read(1, 3, 0, 74).await {
            Ok(w) => break w,
            Err(e) if Instant::now() >= deadline => {
                let _ = child.0.kill();
                let mut log = String::new();
                if let Some(mut err) = child.0.stderr.take() {
                    let _ = err.read_to_string(&mut log);
                }
                panic!("no reply from the binary: {e}\n{log}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got, pushed[..74].to_vec());
    assert_eq!(inverter.read(1, 3, 8244, 1).await.expect("8244"), vec![200]);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = wait_exit(&mut child, Duration::from_secs(5)).expect("exits after SIGTERM");
    assert!(exit.success(), "clean exit, got {exit:?}");
    let mut log = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    assert!(log.contains("ready"), "logs the ready state: {log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colours when not on a terminal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_with_a_missing_device_keeps_running_and_says_why() {
    let dir = std::env::temp_dir().join(format!("airbridge-nodev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        "rtu: {device: /dev/airbridge-no-such-tty}
regions:
  - {name: identity, start: 8192, count: 58, source: static, values: {8244: 200}}
",
    )
    .expect("write config");
    let mut child = Child(
        common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "still running, retrying the device"
    );
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .expect("kill");
    let exit = wait_exit(&mut child, Duration::from_secs(5)).expect("exits on SIGINT");
    assert!(exit.success());
    let mut log = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    assert!(
        log.contains("/dev/airbridge-no-such-tty"),
        "names the device: {log}"
    );
    assert_eq!(
        log.matches("serial device unavailable").count(),
        1,
        "said once, not per retry: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_without_hardware_and_the_inverter_gets_replies() {
    let out = common::airbridge_cmd()
        .args(["demo", "--duration", "3s"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(lines.len() >= 2, "a status line per second: {stdout}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("grid") && l.contains(" V ")),
        "{stdout}"
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("demo done"))
        .expect("summary line");
    assert!(done.contains(" 0 bad frames"), "{done}");
    // "demo done: R requests, P replies, ...": nearly every request answered (the machine is
    // shared: one reply may miss the simulated inverter's 100 ms timeout).
    let num = |word: &str| -> u64 {
        let before = done.split(word).next().unwrap_or("");
        before
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (requests, replies) = (num(" requests"), num(" replies"));
    assert!(requests >= 10 && replies * 10 >= requests * 9, "{done}");
}
