//! The real binary on KSTAR paths: `airbridge run` with `rtu_poll` on a pseudo-terminal (the
//! device simulator on the other end) serves LAN clients over TCP; `airbridge simulate device`
//! answers as the profile says; `airbridge demo --profile` runs without hardware.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use tokio_modbus::client::{Reader as _, Writer as _};
use tokio_serial::{SerialPort as _, SerialStream};

use crate::common;
use common::{free_port, manifest, wait_exit, Child};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_polls_a_device_on_a_pty_and_serves_tcp() {
    let (devs, path, _bus) =
        common::bus::pty_bus(&manifest("profiles/kstar-hybrid.yaml"), &[(1, 2345)]);
    let dev = &devs[0];

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("airbridge-kstar-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("kstar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "profile: '{}'
rtu_poll: {{device: '{path}', baud: 9600, timeout: 300ms, gap: 5ms}}
tcp_server: {{listen: '127.0.0.1:{port}', allow_from: [127.0.0.1]}}
regions:
  - {{name: live, start: 3000, count: 125, function: input, source: rtu_poll, every: 200ms}}
writable: [3200]
",
            manifest("profiles/kstar-hybrid.yaml").display()
        ),
    )
    .expect("write config");
    let mut child = Child(
        common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn airbridge run"),
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = None;
    while Instant::now() < deadline && got.is_none() {
        if let Ok(Ok(mut ctx)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio_modbus::client::tcp::connect(addr),
        )
        .await
        {
            while Instant::now() < deadline {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    ctx.read_input_registers(3000, 2),
                )
                .await
                {
                    Ok(Ok(Ok(words))) => {
                        got = Some((words, ctx));
                        break;
                    }
                    Ok(Ok(Err(_))) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Ok(Err(_)) => break,
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (words, mut ctx) = got.expect("the gateway served the device's values over TCP");
    assert_eq!(words[0], 2345);
    // A permitted write goes through the binary to the device.
    let r = tokio::time::timeout(Duration::from_secs(10), ctx.write_single_register(3200, 60))
        .await
        .expect("answered")
        .expect("transport");
    assert_eq!(r, Ok(()));
    assert_eq!(dev.applied().len(), 1);
    Command::new("kill")
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_device_answers_as_the_profile_says() {
    let (master_end, dev_end) = SerialStream::pair().expect("pty pair");
    let path = dev_end.name().expect("pty has a path");
    drop(dev_end);
    let mut child = Child(
        common::airbridge_cmd()
            .args(["simulate", "device", "--profile"])
            .arg(manifest("profiles/kstar-ksg1-60k.yaml"))
            .args(["--device", &path, "--duration", "30s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn simulate device"),
    );
    let mut m = RtuMaster::new(master_end, Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(20);
    let words = loop {
        match m.read(1, 4, 3000, 4).await {
            Ok(w) => break w,
            Err(e) if Instant::now() > deadline => panic!("no answer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(words.len(), 4);
    // PV1 voltage is plausible: 250..400 V at 0.1 V.
    assert!((2500..=4000).contains(&words[0]), "{words:?}");
    // The documented power-limit write is echoed; read-only, unknown and out-of-range are not.
    m.write_single(1, 4004, 85).await.expect("echo");
    assert!(matches!(
        m.write_single(1, 3000, 1).await,
        Err(ReplyError::Exception(2))
    ));
    assert!(matches!(
        m.write_single(1, 4004, 101).await,
        Err(ReplyError::Exception(3))
    ));
    assert!(matches!(
        m.read(1, 4, 100, 1).await,
        Err(ReplyError::Exception(2))
    ));
    // 126 registers: the master would refuse to ask, so send the frame by hand.
    let tx = m
        .transact(&airbridge_modbus::master::encode_read(1, 4, 3000, 126), 5)
        .await
        .expect("an exception reply");
    assert!(tx.is_exception());
    assert_eq!(tx.reply[2], 3);
    Command::new("kill")
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn demo_with_a_profile_shows_reads_and_both_writes() {
    let out = common::airbridge_cmd()
        .args(["demo", "--profile"])
        .arg(manifest("profiles/kstar-hybrid.yaml"))
        .args(["--duration", "6s"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pv1_voltage"), "{stdout}");
    assert!(
        stdout.contains("write 3200 := 85 (active power limit %): accepted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write 3243 := 1 (a command not listed under writable): refused: exception 02 (illegal data address: not listed under writable, or outside the regions)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("writes 1 accepted, 1 refused; battery1 received 1 write(s), battery2 0"),
        "{stdout}"
    );
    // Two devices on the bus, both read by the client through their unit ids.
    let done = stdout
        .lines()
        .find(|l| l.starts_with("demo done: reads "))
        .unwrap_or_else(|| panic!("closing line: {stdout}"));
    let per: Vec<u64> = ["battery1 ", "battery2 "]
        .iter()
        .map(|n| {
            done.split(n)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(per.iter().all(|&n| n > 0), "both devices served: {done}");
    assert!(
        !stdout.contains("Ok(") && !stdout.contains("Err("),
        "no debug formatting: {stdout}"
    );
}

#[test]
fn demo_with_the_ksem_profile_points_to_the_ksem_demo() {
    let out = common::airbridge_cmd()
        .args(["demo", "--profile"])
        .arg(manifest("profiles/ksem-g2.yaml"))
        .args(["--duration", "2s"])
        .output()
        .expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "The KSEM profile belongs to the KSEM demo: `airbridge demo` without --profile"
        ),
        "{stderr}"
    );
}
