//! Deployment: the systemd unit (systemd-analyze verify, hardening), install.sh (dry run,
//! a real install into a temporary root, idempotence), the cargo-deb metadata, and the
//! binary's sd_notify protocol (READY only once warm, WATCHDOG while the RTU loop beats,
//! STATUS with the region ages, STOPPING at shutdown).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use airbridge::ops::heartbeat::Liveness;
use airbridge::servers::rtu_slave::{RtuSlave, RtuStats};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_serial::{SerialPort as _, SerialStream};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_airbridge");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("airbridge-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(REPO).join("deploy/airbridge.service")).expect("unit")
}

#[test]
#[ignore = "needs systemd-analyze: apt-get install systemd"]
fn unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        common::tool::missing("systemd-analyze", "apt-get install systemd");
    };
    assert!(out.status.success());
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempdir("unit");
    let unit = dir.join("airbridge.service");
    std::fs::write(&unit, unit_text().replace("/usr/bin/airbridge", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 even for unknown keys; it only warns. Any line about our unit fails.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("airbridge.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unit_is_notify_watchdog_unprivileged_and_hardened() {
    let unit = unit_text();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "User=airbridge",
        "SupplementaryGroups=dialout",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/bin/airbridge run --config /etc/airbridge/gateway.yaml",
    ] {
        assert!(has(line), "missing `{line}`");
    }
    assert!(!has("DynamicUser=yes"));
}

fn install(args: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(Path::new(REPO).join("deploy/install.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_dry_run_changes_nothing_and_says_what_it_would_do() {
    let root = tempdir("install-dry");
    let r = root.to_str().expect("utf-8 path");
    let (ok, text) = install(&["--dry-run", "--root", r, "--binary", BIN]);
    assert!(ok, "{text}");
    assert!(
        files_under(&root).is_empty(),
        "dry run wrote: {:?}",
        files_under(&root)
    );
    for what in [
        "would run: install -D -m 755",
        "/usr/local/bin/airbridge",
        "/etc/airbridge/gateway.yaml",
        "/etc/airbridge/profiles/ksem-g2.yaml",
        "/etc/systemd/system/airbridge.service",
        "skipped: user airbridge",
    ] {
        assert!(text.contains(what), "mentions {what}: {text}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn install_into_a_root_is_idempotent_and_never_overwrites_the_config() {
    let root = tempdir("install-root");
    let r = root.to_str().expect("utf-8 path");
    let (ok, text) = install(&["--root", r, "--prefix", "/opt/ab", "--binary", BIN]);
    assert!(ok, "{text}");
    let bin = root.join("opt/ab/bin/airbridge");
    let cfg = root.join("etc/airbridge/gateway.yaml");
    let unit = root.join("etc/systemd/system/airbridge.service");
    let profile = root.join("etc/airbridge/profiles/ksem-g2.yaml");
    for p in [&bin, &cfg, &unit, &profile] {
        assert!(p.is_file(), "{} installed: {text}", p.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&cfg), 0o644);
    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    assert!(
        unit_text
            .contains("ExecStart=/opt/ab/bin/airbridge run --config /etc/airbridge/gateway.yaml"),
        "{unit_text}"
    );
    assert!(!unit_text.contains("/usr/bin/airbridge"));
    assert!(
        text.contains("is usable"),
        "the installed layout passes check: {text}"
    );
    // The installed config finds its profile relative to itself.
    let out = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Edit the config, install again: kept, everything else unchanged.
    std::fs::write(&cfg, "# mine\n").expect("edit");
    let before = files_under(&root);
    let (ok, text) = install(&["--root", r, "--prefix", "/opt/ab", "--binary", BIN]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(&cfg).expect("cfg"), "# mine\n");
    assert!(text.contains("kept: /etc/airbridge/gateway.yaml"), "{text}");
    assert!(text.contains("unchanged: /opt/ab/bin/airbridge"), "{text}");
    assert!(
        text.contains("unchanged: /etc/systemd/system/airbridge.service"),
        "{text}"
    );
    assert!(
        !text.contains("run: install"),
        "nothing reinstalled: {text}"
    );
    assert!(
        text.contains("needs editing"),
        "the broken config is pointed out: {text}"
    );
    assert_eq!(files_under(&root), before);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn deb_metadata_names_files_that_exist() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(REPO)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let deb = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "airbridge"))
        .map(|p| p["metadata"]["deb"].clone())
        .expect("[package.metadata.deb]");
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for a in assets {
        let src = a[0].as_str().expect("source");
        dests.push(a[1].as_str().expect("dest").to_string());
        if src.starts_with("target/") {
            continue; // built by cargo deb
        }
        if let Some((dir, ext)) = src.rsplit_once("/*.") {
            let n = std::fs::read_dir(Path::new(REPO).join(dir))
                .expect("asset dir")
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count();
            assert!(n > 0, "{src} matches files");
        } else {
            assert!(Path::new(REPO).join(src).is_file(), "{src} exists");
        }
    }
    for d in [
        "usr/bin/",
        "etc/airbridge/gateway.yaml",
        "etc/airbridge/profiles/",
    ] {
        assert!(dests.iter().any(|x| x == d), "{d} in {dests:?}");
    }
    assert_eq!(deb["conf-files"][0], "/etc/airbridge/gateway.yaml");
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    let postinst =
        std::fs::read_to_string(Path::new(REPO).join(scripts).join("postinst")).expect("postinst");
    assert!(postinst.contains("useradd --system") && postinst.contains("dialout"));
    assert!(postinst.contains("#DEBHELPER#"));
    let units = deb["systemd-units"]["unit-scripts"]
        .as_str()
        .expect("units dir");
    assert!(Path::new(REPO)
        .join(units)
        .join("airbridge.service")
        .is_file());
}

/// The serving loop beats while the bus is idle, stops beating while stuck in a write nobody
/// drains (so the watchdog is withheld), and beats again once it can go on.
#[tokio::test(start_paused = true)]
async fn the_rtu_loop_heartbeat_stops_when_the_loop_is_stuck() {
    let cfg = airbridge::config::parse(
        "rtu: {device: x, turnaround: 0}
regions:
  - {name: id, start: 0, count: 125, source: static, values: {0: 1}}
",
        "t",
    )
    .expect("config")
    .config;
    let image = Arc::new(airbridge::image::Image::new(&cfg.regions));
    let stats = Arc::new(RtuStats::default());
    let slave = RtuSlave::new(&cfg.rtu, image, Arc::clone(&stats)).with_tokio_timer();
    // A 64-byte pipe: a 125-register reply (255 bytes) cannot be written until read.
    let (mut master, port) = tokio::io::duplex(64);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { slave.serve(port, &c).await });

    let t0 = tokio::time::Instant::now();
    let mut live = Liveness::new(airbridge::ops::heartbeat::STALL_LIMIT, t0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_beats = stats.heartbeat.load(Relaxed);
    assert!(idle_beats >= 5, "beats while idle: {idle_beats}");
    assert!(live.observe(idle_beats, tokio::time::Instant::now()));

    let req = airbridge_modbus::master::encode_read(1, 3, 0, 125);
    master.write_all(&req).await.expect("request");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck_at = stats.heartbeat.load(Relaxed);
    assert!(live.observe(stuck_at, tokio::time::Instant::now()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        stats.heartbeat.load(Relaxed),
        stuck_at,
        "no beat while stuck"
    );
    assert!(
        !live.observe(stuck_at, tokio::time::Instant::now()),
        "stalled"
    );

    // Drain the reply: the loop goes on and beats again.
    let mut reply = vec![0u8; 255];
    master.read_exact(&mut reply).await.expect("reply");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = stats.heartbeat.load(Relaxed);
    assert!(now > stuck_at, "beats again");
    assert!(live.observe(now, tokio::time::Instant::now()));
    cancel.cancel();
    task.await.expect("join").expect("serve");
}

/// Datagrams the binary sends to NOTIFY_SOCKET.
struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    got: Vec<String>,
}

impl NotifySocket {
    async fn recv_until(&mut self, what: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, self.sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {what:?} within {within:?}; got {:#?}", self.got))
                .expect("recv");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            self.got.push(msg.clone());
            if msg.contains(what) {
                return msg;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_only_when_warm_watchdog_and_status() {
    let dir = tempdir("notify");
    let sock_path = dir.join("notify.sock");
    let mut notify = NotifySocket {
        sock: tokio::net::UnixDatagram::bind(&sock_path).expect("bind notify socket"),
        got: Vec::new(),
    };
    let (_inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let device = gw_end.name().expect("pty path");
    drop(gw_end);
    let push_port = common::dead_addr().await.port();
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rtu: {{device: '{device}'}}
push: {{listen: '127.0.0.1:{push_port}', allow_from: [127.0.0.1]}}
regions:
  - {{name: totals, start: 0, count: 40, source: push, max_age: 1h}}
  - {{name: identity, start: 8192, count: 58, source: static, values: {{8244: 200}}}}
"
        ),
    )
    .expect("write config");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "3000000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );

    // Before the KSEM pushed: status and watchdog, no READY.
    let status = notify
        .recv_until("STATUS=warming up", Duration::from_secs(10))
        .await;
    assert!(status.contains("waiting for totals"), "{status}");
    assert!(status.contains("totals never"), "{status}");
    notify
        .recv_until("WATCHDOG=1", Duration::from_secs(10))
        .await;
    notify
        .recv_until("STATUS=warming up", Duration::from_secs(10))
        .await;
    assert!(
        !notify.got.iter().any(|m| m.contains("READY=1")),
        "READY before warm: {:#?}",
        notify.got
    );

    // The KSEM pushes: READY with a serving status.
    let mut ksem =
        common::push_client(format!("127.0.0.1:{push_port}").parse().expect("addr")).await;
    common::write(&mut ksem, 0, &[1; 40]).await.expect("push");
    let ready = notify.recv_until("READY=1", Duration::from_secs(10)).await;
    assert!(
        ready.contains("STATUS=serving: every region fresh; ages: totals "),
        "{ready}"
    );
    assert!(ready.contains("identity fixed"), "{ready}");
    notify
        .recv_until("WATCHDOG=1", Duration::from_secs(10))
        .await;

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    notify
        .recv_until("STOPPING=1", Duration::from_secs(10))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14: the dry run names the unit's real source (not a temporary file), the unit's
/// Documentation= points at a file the installer installs, and the closing advice puts
/// the KSEM and `airbridge check` before `systemctl enable --now --no-block`.
#[test]
fn install_names_real_sources_installs_the_documentation_and_advises_check_first() {
    let root = tempdir("install-docs");
    let r = root.to_str().expect("utf-8 path");
    let (ok, dry) = install(&["--dry-run", "--root", r, "--binary", BIN]);
    assert!(ok, "{dry}");
    let unit_line = dry
        .lines()
        .find(|l| l.ends_with("/etc/systemd/system/airbridge.service"))
        .unwrap_or_else(|| panic!("no unit line in {dry}"));
    let source = unit_line
        .split("install -D -m 644 ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    assert!(source.ends_with("/deploy/airbridge.service"), "{unit_line}");
    let (ok, text) = install(&["--root", r, "--prefix", "/opt/ab", "--binary", BIN]);
    assert!(ok, "{text}");
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/airbridge.service")).expect("unit");
    let doc = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation=file:"))
        .expect("Documentation=");
    assert_eq!(doc, "/opt/ab/share/doc/airbridge/README.md");
    let installed = root.join(doc.trim_start_matches('/'));
    assert!(
        installed.is_file(),
        "{} installed: {text}",
        installed.display()
    );
    assert!(root
        .join("opt/ab/share/doc/airbridge/docs/performance.md")
        .is_file());
    let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} in {text}"));
    assert!(pos("Modbus TCP master target") < pos("airbridge check --config"));
    assert!(pos("airbridge check --config") < pos("systemctl enable --now --no-block airbridge"));
    assert!(!text.contains("systemctl enable --now airbridge"), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}
