//! MQTT against a real Mosquitto: every test starts its own broker on 127.0.0.1 (a free
//! port, a config it writes) and stops it; `mosquitto_sub`/`mosquitto_pub` are the
//! independent clients that check what the gateway publishes. Covered: discovery payloads,
//! the state of `active_power_import` against the simulated KSEM, stale → offline → online,
//! Home Assistant's `online` → configs republished, broker restart → state again, SIGKILL
//! of the real binary → the last will, wrong credentials → one clear error while the RTU
//! side is served, TLS with a CA made here (openssl), KSTAR commands (accepted, refused,
//! no answer), two KSTAR devices on one bus (`devices:`) as two HA devices through the
//! real binary, and the order of status, availability and state across a clean stop, a
//! SIGKILL and restarts of `airbridge demo` (no old value ever looks live), the entity ids
//! `airbridge demo --mqtt` gives Home Assistant, and, through the real binary, unlisted and
//! retained commands that put no write request on the bus.
//!
//! Every test needs the Mosquitto tools, so every test is ignored unless run with
//! `--include-ignored` (`.ci/run` installs them); run so, a missing tool fails the test.

use crate::common;
use common::http::get_body as http_get;
use common::{free_port, profile, Child};

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airbridge::app::gateway::{BusPort, Gateway, RtuPort};
use airbridge::config;
use airbridge_sim::device::{self, DeviceOptions, SimDevice};
use airbridge_sim::ksem;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_airbridge");
const PATIENCE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Tools and the broker.

/// The Mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH).
fn mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// Fail the test unless Mosquitto, its clients and the `extra` tools are there.
fn tools(extra: &[&str]) {
    let mut missing: Vec<&str> = Vec::new();
    if mosquitto().is_none() {
        missing.push("mosquitto");
    }
    for t in ["mosquitto_sub", "mosquitto_pub"].iter().chain(extra) {
        if !common::tool::on_path(t) {
            missing.push(t);
        }
    }
    if !missing.is_empty() {
        common::tool::missing(
            &missing.join(", "),
            "apt-get install mosquitto mosquitto-clients openssl",
        );
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "airbridge-mqtt-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A Mosquitto of our own; killed on drop.
struct Broker {
    child: Option<Child>,
    /// The plain listener every test client uses.
    port: u16,
    conf: PathBuf,
    dir: PathBuf,
}

impl Broker {
    /// A broker with `listener PORT 127.0.0.1` and `extra` config lines.
    fn start(tag: &str, extra: &str) -> Broker {
        let dir = temp_dir(tag);
        Self::start_in(dir, free_port(), extra)
    }

    fn start_in(dir: PathBuf, port: u16, extra: &str) -> Broker {
        let conf = dir.join("mosquitto.conf");
        // As root, mosquitto would drop to user `mosquitto`, which cannot read this directory.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "{user}per_listener_settings false\nlog_dest file {}\nlog_type all\nlistener {port} 127.0.0.1\n{extra}\n",
                log.display()
            ),
        )
        .expect("write mosquitto.conf");
        let mut b = Broker {
            child: None,
            port,
            conf,
            dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let bin = mosquitto().expect("mosquitto");
        let child = Child(
            Command::new(bin)
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto"),
        );
        self.child = Some(child);
        wait_listening(self.port);
    }

    /// Stop (SIGKILL) and start again on the same port with the same config.
    fn restart(&mut self) {
        self.child = None;
        std::thread::sleep(Duration::from_millis(300));
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.child = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("mosquitto did not listen on {port}");
}

/// `mosquitto_sub -v` on some topics; lines `topic payload` arrive on a channel.
struct Sub {
    _child: Child,
    rx: mpsc::UnboundedReceiver<String>,
    /// Lines that arrived while waiting for the sentinel (retained messages come first).
    early: std::collections::VecDeque<String>,
    port: u16,
}

const READY: &str = "airbridge-test/ready";

impl Sub {
    /// Subscribe and wait until the subscription is live (a sentinel message came back).
    /// `fresh_only`: `-R`, ignore retained messages.
    async fn start(port: u16, topics: &[&str], fresh_only: bool) -> Sub {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-v",
            "-t",
            READY,
        ]);
        for t in topics {
            cmd.args(["-t", t]);
        }
        if fresh_only {
            cmd.arg("-R");
        }
        let mut child = Child(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto_sub"),
        );
        let out = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut sub = Sub {
            _child: child,
            rx,
            early: Default::default(),
            port,
        };
        let mut early = Vec::new();
        for _ in 0..50 {
            publish(port, READY, "1", false);
            let ready = sub
                .wait(
                    |l| {
                        if l.starts_with(READY) {
                            return true;
                        }
                        early.push(l.to_string());
                        false
                    },
                    Duration::from_millis(200),
                )
                .await;
            if ready.is_some() {
                sub.early = early.into();
                return sub;
            }
        }
        panic!("mosquitto_sub did not subscribe");
    }

    /// The next line (after those already read) that `pred` accepts, within `within`.
    async fn wait(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        within: Duration,
    ) -> Option<String> {
        while let Some(line) = self.early.pop_front() {
            if pred(&line) {
                return Some(line);
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// The next payload on exactly `topic`.
    async fn payload(&mut self, topic: &str, within: Duration) -> Option<String> {
        let prefix = format!("{topic} ");
        self.wait(|l| l.starts_with(&prefix), within)
            .await
            .map(|l| l[prefix.len()..].to_string())
    }

    /// The next JSON payload on `topic`.
    async fn json(&mut self, topic: &str, within: Duration) -> Json {
        let p = self
            .payload(topic, within)
            .await
            .unwrap_or_else(|| panic!("nothing on {topic} within {within:?}"));
        serde_json::from_str(&p).unwrap_or_else(|e| panic!("{topic}: {e}: {p}"))
    }

    fn port(&self) -> u16 {
        self.port
    }
}

fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        payload,
    ]);
    if retain {
        cmd.arg("-r");
    }
    let ok = cmd.status().expect("run mosquitto_pub").success();
    assert!(ok, "mosquitto_pub {topic} failed");
}

// ---------------------------------------------------------------------------------------
// The gateway.

/// A KSEM gateway (in process) fed by a frozen simulated KSEM, publishing to `mqtt`.
struct KsemRig {
    gateway: Gateway,
    ksem: ksem::KsemSim,
    pusher: Option<CancellationToken>,
    cancel: CancellationToken,
    _inverter: SerialStream,
}

impl Drop for KsemRig {
    fn drop(&mut self) {
        if let Some(p) = &self.pusher {
            p.cancel();
        }
        self.cancel.cancel();
    }
}

impl KsemRig {
    async fn start(mqtt: &str) -> KsemRig {
        let ksem = common::frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
        let yaml = format!(
            "rtu: {{device: pty, turnaround: 0, frame_timeout: 20ms}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]}}
poll: {{host: '{}', timeout: 500ms}}
profile: '{}'
mqtt: {{{mqtt}}}
status: {{listen: '127.0.0.1:0'}}
regions:
  - {{name: totals,   start: 0,    count: 40,  source: push, max_age: 1s}}
  - {{name: phases,   start: 40,   count: 108, source: push, max_age: 1s}}
  - {{name: identity, start: 8192, count: 57,  source: poll, every: 1h}}
",
            ksem.slave_addr(),
            profile("ksem-g2.yaml").display()
        );
        let cfg = config::parse(&yaml, "mqtt-test")
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .config;
        let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
        let cancel = CancellationToken::new();
        let gateway = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
            .await
            .expect("gateway starts");
        let mut rig = KsemRig {
            gateway,
            ksem,
            pusher: None,
            cancel,
            _inverter: inv_end,
        };
        rig.push();
        rig
    }

    /// Start pushing as the KSEM does (every 100 ms).
    fn push(&mut self) {
        let c = CancellationToken::new();
        let addr = self.gateway.push_addr.expect("push listener");
        tokio::spawn(ksem::run_pusher(
            addr,
            Duration::from_millis(100),
            self.ksem.model(),
            c.clone(),
            Arc::default(),
        ));
        self.pusher = Some(c);
    }

    fn stop_pushing(&mut self) {
        if let Some(p) = self.pusher.take() {
            p.cancel();
        }
    }

    /// What the simulated KSEM holds (and pushes) at 0..1: active power + in W.
    fn active_power_import(&self) -> f64 {
        let model = self.ksem.model();
        let w = ksem::lock_model(&model).instantaneous_block();
        f64::from((u32::from(w[0]) << 16) | u32::from(w[1])) * 0.1
    }
}

fn mqtt_section(port: u16) -> String {
    format!("broker: 'mqtt://127.0.0.1:{port}', client_id: gw-test, topic: gw, interval: 200ms")
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn discovery_state_staleness_and_home_assistant_birth() {
    tools(&[]);
    let broker = Broker::start("discovery", "allow_anonymous true");
    let mut sub = Sub::start(broker.port, &["gw/#", "homeassistant/#"], false).await;
    let mut rig = KsemRig::start(&mqtt_section(broker.port)).await;

    // Discovery: one retained config per named value, every key Home Assistant needs.
    let cfg = sub
        .json(
            "homeassistant/sensor/gw/active_power_import/config",
            PATIENCE,
        )
        .await;
    for key in [
        "name",
        "unique_id",
        "state_topic",
        "value_template",
        "unit_of_measurement",
        "device_class",
        "state_class",
        "availability",
        "availability_mode",
        "device",
    ] {
        assert!(cfg.get(key).is_some(), "discovery lacks {key}: {cfg}");
    }
    assert_eq!(cfg["state_topic"], "gw/totals/state");
    assert_eq!(
        cfg["value_template"],
        "{{ value_json.active_power_import }}"
    );
    assert_eq!(cfg["unit_of_measurement"], "W");
    assert_eq!(cfg["device_class"], "power");
    assert_eq!(cfg["state_class"], "measurement");
    assert_eq!(cfg["availability_mode"], "all");
    assert_eq!(
        cfg["availability"],
        serde_json::json!([{"topic": "gw/status"}, {"topic": "gw/totals/availability"}])
    );
    let serial = ksem::lock_model(&rig.ksem.model()).serial().to_string();
    assert_eq!(
        cfg["device"]["identifiers"],
        serde_json::json!([format!("airbridge_{serial}")])
    );
    assert_eq!(cfg["device"]["serial_number"], serde_json::json!(serial));
    assert!(cfg["device"]["manufacturer"].is_string());
    assert!(cfg["device"]["model"].is_string());
    let phases = sub
        .json("homeassistant/sensor/gw/voltage_l1/config", PATIENCE)
        .await;
    assert_eq!(phases["device_class"], "voltage");
    assert_eq!(phases["state_topic"], "gw/phases/state");

    // State: the value the simulated KSEM pushed, decoded and scaled.
    let state = sub.json("gw/totals/state", PATIENCE).await;
    let want = rig.active_power_import();
    let got = state["active_power_import"]
        .as_f64()
        .unwrap_or_else(|| panic!("no active_power_import in {state}"));
    assert!(
        (got - want).abs() < 1e-6,
        "state {got} W, the KSEM pushed {want} W"
    );
    assert_eq!(
        sub.payload("gw/totals/availability", PATIENCE)
            .await
            .as_deref(),
        Some("online")
    );

    // Home Assistant restarts: its birth message brings every config again (not retained
    // copies: -R shows only fresh messages).
    let mut fresh = Sub::start(broker.port, &["homeassistant/sensor/#"], true).await;
    publish(fresh.port(), "homeassistant/status", "online", false);
    let again = fresh
        .json(
            "homeassistant/sensor/gw/active_power_import/config",
            PATIENCE,
        )
        .await;
    assert_eq!(again["unique_id"], cfg["unique_id"]);

    // Pushes stop: the region goes offline within max_age (1 s) + interval (200 ms), and no
    // state is published for it meanwhile.
    let mut sub = Sub::start(broker.port, &["gw/totals/#"], true).await;
    rig.stop_pushing();
    let stopped = tokio::time::Instant::now();
    let line = sub
        .wait(
            |l| l.starts_with("gw/totals/availability ") || l.starts_with("gw/totals/state "),
            Duration::from_secs(5),
        )
        .await;
    // max_age + interval, plus slack for a loaded machine (the broker and the subscriber
    // are processes too).
    let limit = Duration::from_millis(1000 + 200 + 1500);
    let mut line = line.expect("totals went offline");
    // The retained state, and states already on their way when the pusher stopped, may come
    // first; none may come once the region is stale (checked below: offline comes next).
    while line.starts_with("gw/totals/state ") && stopped.elapsed() < limit {
        line = sub
            .wait(|l| l.starts_with("gw/totals/"), Duration::from_secs(5))
            .await
            .expect("totals went offline");
    }
    assert_eq!(line, "gw/totals/availability offline");
    assert!(
        stopped.elapsed() <= limit,
        "offline after {:?}, more than max_age + interval",
        stopped.elapsed()
    );
    // Pushes again: a fresh state first, then online.
    rig.push();
    let first = sub
        .wait(|l| l.starts_with("gw/totals/"), PATIENCE)
        .await
        .expect("totals came back");
    assert!(
        first.starts_with("gw/totals/state {"),
        "first after stale: {first}"
    );
    assert_eq!(
        sub.payload("gw/totals/availability", PATIENCE)
            .await
            .as_deref(),
        Some("online")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn broker_restart_brings_state_and_status_back() {
    tools(&[]);
    let mut broker = Broker::start("restart", "allow_anonymous true");
    let rig = KsemRig::start(&mqtt_section(broker.port)).await;
    let mut sub = Sub::start(broker.port, &["gw/#"], false).await;
    sub.json("gw/totals/state", PATIENCE).await;
    let connects = rig
        .gateway
        .handles
        .mqtt
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    broker.restart();
    // Nothing retained survives this broker (no persistence): what comes is new.
    let mut sub = Sub::start(broker.port, &["gw/#"], false).await;
    assert_eq!(
        sub.payload("gw/status", Duration::from_secs(40))
            .await
            .as_deref(),
        Some("online")
    );
    let state = sub.json("gw/totals/state", PATIENCE).await;
    assert!(state["active_power_import"].is_number(), "{state}");
    let after = rig
        .gateway
        .handles
        .mqtt
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > connects, "the gateway reconnected");
    // /metrics shows the connection and the counters.
    let metrics = http_get(rig.gateway.status_addr.expect("status"), "/metrics").await;
    assert!(
        metrics.contains("\nairbridge_mqtt_connected 1\n"),
        "{metrics}"
    );
    let ok = format!("airbridge_mqtt_connects_total{{result=\"ok\"}} {after}\n");
    assert!(metrics.contains(&ok), "{metrics}");
    assert!(
        !metrics.contains("airbridge_mqtt_published_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and openssl: apt-get install mosquitto mosquitto-clients openssl"]
async fn tls_with_a_private_ca() {
    tools(&["openssl"]);
    let dir = temp_dir("tls");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=airbridge test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = free_port();
    let extra = format!(
        "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = dir.display()
    );
    let broker = Broker::start_in(dir.clone(), free_port(), &extra);
    wait_listening(tls_port);
    let mut sub = Sub::start(broker.port, &["gw/#"], false).await;
    let _rig = KsemRig::start(&format!(
        "broker: 'mqtts://127.0.0.1:{tls_port}', ca_file: '{}', client_id: gw-tls, topic: gw, interval: 200ms",
        dir.join("ca.pem").display()
    ))
    .await;
    assert_eq!(
        sub.payload("gw/status", PATIENCE).await.as_deref(),
        Some("online")
    );
    let state = sub.json("gw/totals/state", PATIENCE).await;
    assert!(state["active_power_import"].is_number(), "{state}");
    assert!(
        broker.log().contains("gw-tls"),
        "the broker saw the TLS client"
    );
}

/// The real binary serving a pty, with `mqtt` as its `mqtt:` section body.
struct Binary {
    child: Child,
    inverter: Option<SerialStream>,
    push_addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn binary(tag: &str, mqtt: &str, stderr: Option<&Path>) -> Binary {
    let ksem = common::frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let device = tokio_serial::SerialPort::name(&gw_end).expect("pty has a path");
    drop(gw_end);
    let push_port = free_port();
    let dir = temp_dir(tag);
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rtu: {{device: '{device}', baud: 38400, turnaround: 1750us}}
push: {{listen: '127.0.0.1:{push_port}', allow_from: [127.0.0.1]}}
poll: {{host: '{}', timeout: 500ms}}
profile: '{}'
mqtt: {{{mqtt}}}
regions:
  - {{name: totals, start: 0, count: 40, source: push}}
  - {{name: phases, start: 40, count: 108, source: push}}
  - {{name: identity, start: 8192, count: 58, source: poll, every: 1h}}
",
            ksem.slave_addr(),
            profile("ksem-g2.yaml").display()
        ),
    )
    .expect("write config");
    // The KSEM sim must outlive this function: leak it into a task that ends with the test.
    tokio::spawn(async move {
        let _keep = ksem;
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    let err = match stderr {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
        None => Stdio::null(),
    };
    let child = Child(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn airbridge run"),
    );
    Binary {
        child,
        inverter: Some(inv_end),
        push_addr: format!("127.0.0.1:{push_port}").parse().expect("addr"),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn sigkill_of_the_gateway_publishes_the_last_will() {
    tools(&[]);
    let broker = Broker::start("will", "allow_anonymous true");
    let mut sub = Sub::start(broker.port, &["gw/status"], false).await;
    let mut bin = binary(
        "will",
        &format!(
            "broker: 'mqtt://127.0.0.1:{}', client_id: gw-will, topic: gw",
            broker.port
        ),
        None,
    )
    .await;
    assert_eq!(
        sub.payload("gw/status", PATIENCE).await.as_deref(),
        Some("online")
    );
    bin.child.0.kill().expect("SIGKILL");
    let _ = bin.child.0.wait();
    assert_eq!(
        sub.payload("gw/status", PATIENCE).await.as_deref(),
        Some("offline"),
        "the broker published the will"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn wrong_credentials_one_clear_error_and_the_inverter_is_still_served() {
    tools(&["mosquitto_passwd"]);
    let dir = temp_dir("auth");
    let passwd = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["airbridge", "right-secret"])
        .status()
        .expect("mosquitto_passwd")
        .success();
    assert!(ok, "mosquitto_passwd");
    let broker = Broker::start_in(
        dir.clone(),
        free_port(),
        &format!("allow_anonymous false\npassword_file {}", passwd.display()),
    );
    let secret = dir.join("mqtt.secret");
    std::fs::write(&secret, "wrong-secret-4711\n").expect("secret");
    let log = dir.join("gateway.log");
    let mut bin = binary(
        "auth",
        &format!(
            "broker: 'mqtt://127.0.0.1:{}', client_id: gw-auth, topic: gw, username: airbridge, password_file: '{}'",
            broker.port,
            secret.display()
        ),
        Some(&log),
    )
    .await;

    // The inverter is served all the while.
    let mut ctx = None;
    for _ in 0..100 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio_modbus::client::tcp::connect(bin.push_addr),
        )
        .await
        {
            ctx = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ctx = ctx.expect("push listener came up");
    let pushed = common::push_groups(&mut ctx, 3).await;
    let inverter = bin.inverter.take().expect("pty");
    let mut inverter =
        airbridge::link::rtu_master::RtuMaster::new(inverter, Duration::from_millis(300));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let got = loop {
        match inverter.read(1, 3, 0, 28).await {
            Ok(w) => break w,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "inverter not served: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(got, pushed[..28]);

    // Several refused attempts (backoff 1 s, 2 s, …), one error line.
    let refusals = || {
        broker
            .log()
            .lines()
            .filter(|l| l.contains("not authorised"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while refusals() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not retry:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts = refusals();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = text.matches("refused the login").count();
    assert!(attempts >= 2, "attempts {attempts}:\n{}", broker.log());
    assert_eq!(errors, 1, "one error line for {attempts} refusals:\n{text}");
    assert!(
        !text.contains("wrong-secret-4711"),
        "the password leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn kstar_commands_accepted_refused_and_unanswered() {
    tools(&[]);
    let broker = Broker::start("kstar", "allow_anonymous true");
    let path = profile("kstar-hybrid.yaml");
    let prof = airbridge::control::profile::load(&path).expect("profile");
    let dev = SimDevice::new(
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
tcp_server: {{listen: '127.0.0.1:0', unit_id: 1, allow_from: [127.0.0.1]}}
mqtt: {{broker: 'mqtt://127.0.0.1:{}', client_id: gw-kstar, topic: ks, interval: 200ms, commands: true}}
regions:
  - {{name: live,     start: 3000, count: 125, function: input, source: rtu_poll, every: 200ms, max_age: 2s}}
  - {{name: settings, start: 3125, count: 125, function: input, source: rtu_poll, every: 300ms, max_age: 3s}}
writable: [3044, 3200]
",
        path.display(),
        broker.port
    );
    let cfg = config::parse(&yaml, "kstar-mqtt")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    // Someone left a retained command on the broker: it reaches the gateway when it
    // subscribes and must never be executed (it would be, at every reconnect).
    let mut sub = Sub::start(broker.port, &["ks/+/state", "homeassistant/#"], false).await;
    let mut results = Sub::start(broker.port, &["ks/set/+/result"], false).await;
    publish(broker.port, "ks/set/working_mode", "1", true);
    let (dev_end, gw_end) = SerialStream::pair().expect("pty pair");
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    tokio::spawn(device::serve(dev_end, Arc::clone(&dev), cancel.clone()));
    let _gw = Gateway::start_with_bus(
        cfg,
        RtuPort::Off,
        BusPort::Stream(Box::new(gw_end)),
        cancel.clone(),
    )
    .await
    .expect("gateway starts");

    let r = results.json("ks/set/working_mode/result", PATIENCE).await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["reason"].as_str().is_some_and(|s| s.contains("retained")),
        "{r}"
    );
    // Discovery: a number from the range, a select from the enum.
    let number = sub
        .json(
            "homeassistant/number/ks/active_power_setting/config",
            PATIENCE,
        )
        .await;
    assert_eq!(number["command_topic"], "ks/set/active_power_setting");
    assert_eq!(number["max"], serde_json::json!(100.0));
    let select = sub
        .json("homeassistant/select/ks/working_mode/config", PATIENCE)
        .await;
    assert!(select["options"].as_array().is_some_and(|o| o.len() == 3));
    sub.json("ks/settings/state", PATIENCE).await;

    // Accepted: reaches the device, which echoes it.
    publish(broker.port, "ks/set/active_power_setting", "85", false);
    let r = results
        .json("ks/set/active_power_setting/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "accepted", "{r}");
    let reg = dev
        .profile()
        .get("active_power_setting")
        .expect("reg")
        .clone();
    assert_eq!(dev.words(&reg), vec![85]);
    // Out of range: refused before the bus.
    let before = dev.applied().len();
    assert_eq!(before, 1, "only the accepted write reached the device");
    publish(broker.port, "ks/set/active_power_setting", "150", false);
    let r = results
        .json("ks/set/active_power_setting/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["reason"].as_str().is_some_and(|s| s.contains("outside")),
        "{r}"
    );
    // Unlisted (writable in the profile, not under `writable:`): refused.
    publish(broker.port, "ks/set/grid_voltage_min", "200", false);
    let r = results
        .json("ks/set/grid_voltage_min/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["reason"].as_str().is_some_and(|s| s.contains("writable")),
        "{r}"
    );
    assert_eq!(
        dev.applied().len(),
        before,
        "refused commands never reached the device"
    );
    // The device does not answer: no_answer, never a fake success.
    dev.set_silent(true);
    publish(broker.port, "ks/set/working_mode", "2", false);
    let r = results
        .json("ks/set/working_mode/result", Duration::from_secs(30))
        .await;
    assert_eq!(r["outcome"], "no_answer", "{r}");
}

/// Read `sub` until each topic of `want` has its latest payload accepted by `ok` (JSON
/// payloads parsed, others as strings); panics naming the missing ones after `within`.
/// Retained configs, states and availabilities arrive in any order.
async fn collect(
    sub: &mut Sub,
    want: &[&str],
    ok: impl Fn(&str, &Json) -> bool,
    within: Duration,
) -> std::collections::HashMap<String, Json> {
    let mut got = std::collections::HashMap::new();
    let done = |got: &std::collections::HashMap<String, Json>| {
        want.iter().all(|t| got.get(*t).is_some_and(|j| ok(t, j)))
    };
    let all = sub
        .wait(
            |line| {
                if let Some((topic, body)) = line.split_once(' ') {
                    if want.contains(&topic) {
                        let j = serde_json::from_str::<Json>(body)
                            .unwrap_or_else(|_| Json::String(body.to_string()));
                        got.insert(topic.to_string(), j);
                    }
                }
                done(&got)
            },
            within,
        )
        .await;
    assert!(
        all.is_some(),
        "within {within:?}, missing {:?} in {got:?}",
        want.iter()
            .filter(|t| !got.get(**t).is_some_and(|j| ok(t, j)))
            .collect::<Vec<_>>()
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn two_devices_on_one_bus_are_two_ha_devices_with_their_own_commands() {
    tools(&[]);
    let broker = Broker::start("devices", "allow_anonymous true");
    let path = profile("kstar-hybrid.yaml");
    let prof = airbridge::control::profile::load(&path).expect("profile");
    let (devs, tty, _bus) = common::bus::two_unit_bus(&path);

    let mut sub = Sub::start(
        broker.port,
        &["gw/+/+/state", "gw/+/+/availability", "homeassistant/#"],
        false,
    )
    .await;
    let mut results = Sub::start(broker.port, &["gw/+/set/+/result"], false).await;
    let dir = temp_dir("devices");
    let cfg = dir.join("gateway.yaml");
    let region =
        "{name: live, start: 3000, count: 100, function: input, every: 300ms, max_age: 3s}";
    std::fs::write(
        &cfg,
        format!(
            "rtu_poll: {{device: '{tty}', baud: 9600, timeout: 200ms, gap: 5ms, retries: 1, offline_after: 3, probe_max: 1s}}
tcp_server: {{listen: '127.0.0.1:{tcp}', allow_from: [127.0.0.1]}}
mqtt: {{broker: 'mqtt://127.0.0.1:{mqtt}', client_id: gw-devices, topic: gw, interval: 200ms, commands: true}}
devices:
  - name: battery1
    unit_id: 1
    profile: '{prof}'
    writable: [3200]
    regions: [{region}]
  - name: battery2
    unit_id: 2
    profile: '{prof}'
    writable: [3044, 3200]
    regions: [{region}]
",
            tcp = free_port(),
            mqtt = broker.port,
            prof = path.display()
        ),
    )
    .expect("write config");
    let child = common::run_quiet(&cfg);

    // Two HA devices: own discovery node, own identifiers, own state topics.
    let configs = [
        "homeassistant/sensor/gw_battery1/pv1_voltage/config",
        "homeassistant/sensor/gw_battery2/pv1_voltage/config",
        "homeassistant/select/gw_battery2/working_mode/config",
        "homeassistant/number/gw_battery1/active_power_setting/config",
        "homeassistant/number/gw_battery2/active_power_setting/config",
    ];
    let states = ["gw/battery1/live/state", "gw/battery2/live/state"];
    let online = [
        "gw/battery1/live/availability",
        "gw/battery2/live/availability",
    ];
    let want: Vec<&str> = configs
        .iter()
        .chain(&states)
        .chain(&online)
        .copied()
        .collect();
    let got = collect(
        &mut sub,
        &want,
        |t, j| !t.ends_with("/availability") || j == "online",
        Duration::from_secs(30),
    )
    .await;
    let (s1, s2) = (&got[configs[0]], &got[configs[1]]);
    assert_eq!(s1["state_topic"], "gw/battery1/live/state", "{s1}");
    assert_eq!(s2["state_topic"], "gw/battery2/live/state", "{s2}");
    assert_eq!(
        s2["availability"],
        serde_json::json!([{"topic": "gw/status"}, {"topic": "gw/battery2/live/availability"}])
    );
    let ids = |c: &Json| c["device"]["identifiers"].clone();
    assert!(ids(s1).as_array().is_some_and(|a| !a.is_empty()), "{s1}");
    assert_ne!(ids(s1), ids(s2), "two HA devices");
    assert_ne!(s1["unique_id"], s2["unique_id"]);
    assert_eq!(s1["device"]["name"], "battery1");
    assert_eq!(s2["device"]["name"], "battery2");
    // One device block per device; command entities from each device's `writable:`.
    assert_eq!(ids(&got[configs[3]]), ids(s1));
    assert_eq!(ids(&got[configs[2]]), ids(s2));
    assert_eq!(ids(&got[configs[4]]), ids(s2));
    assert_eq!(
        got[configs[2]]["command_topic"],
        "gw/battery2/set/working_mode"
    );
    assert_eq!(
        got[configs[3]]["command_topic"],
        "gw/battery1/set/active_power_setting"
    );
    // Each state carries its own unit's values; both regions are online.
    assert_eq!(got[states[0]]["pv1_voltage"], serde_json::json!(111.1));
    assert_eq!(got[states[1]]["pv1_voltage"], serde_json::json!(222.2));

    // A command on device 2's topic reaches unit 2 only.
    publish(broker.port, "gw/battery2/set/working_mode", "1", false);
    let r = results
        .json("gw/battery2/set/working_mode/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "accepted", "{r}");
    let mode = prof.get("working_mode").expect("reg").clone();
    assert_eq!(devs[1].words(&mode), vec![1]);
    assert_eq!((devs[0].applied().len(), devs[1].applied().len()), (0, 1));
    // Device 1 has 3044 off its `writable:` list: refused on its own result topic.
    publish(broker.port, "gw/battery1/set/working_mode", "1", false);
    let r = results
        .json("gw/battery1/set/working_mode/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["reason"].as_str().is_some_and(|s| s.contains("writable")),
        "{r}"
    );
    assert_eq!((devs[0].applied().len(), devs[1].applied().len()), (0, 1));
    // What it lists goes to unit 1 only.
    publish(
        broker.port,
        "gw/battery1/set/active_power_setting",
        "85",
        false,
    );
    let r = results
        .json("gw/battery1/set/active_power_setting/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "accepted", "{r}");
    let limit = prof.get("active_power_setting").expect("reg").clone();
    assert_eq!(devs[0].words(&limit), vec![85]);
    assert_ne!(devs[1].words(&limit), vec![85]);
    assert_eq!((devs[0].applied().len(), devs[1].applied().len()), (1, 1));

    common::terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The regions of `airbridge demo`, each with its own availability topic.
const DEMO_REGIONS: [&str; 5] = ["totals", "phases", "energy", "identity", "spec_version"];

/// What Home Assistant, subscribed all along, knows from the demo gateway's topics, fed line
/// by line in the order the broker delivered them. It flags the moment Home Assistant would
/// show a value the gateway does not vouch for: `<topic>/status` `online` while a region's
/// availability is `online` and that region's last state came from before the gateway's
/// latest (re)start (Home Assistant keeps the last value it got and shows it as soon as
/// every availability topic of the entity says `online`).
#[derive(Default)]
struct HaView {
    status: Option<String>,
    /// Per region: its last availability payload, and whether a state came since the
    /// gateway's latest start.
    regions: std::collections::BTreeMap<String, (String, bool)>,
}

impl HaView {
    const PREFIX: &'static str = "airbridge-demo/";

    /// The gateway starts again: every state seen so far is from before.
    fn restarted(&mut self) {
        self.regions.values_mut().for_each(|r| r.1 = false);
    }

    /// Regions whose entities would show a state from before the latest start as live.
    fn replayed(&self) -> Vec<&str> {
        if self.status.as_deref() != Some("online") {
            return Vec::new();
        }
        self.regions
            .iter()
            .filter(|(_, (avail, fresh))| avail == "online" && !fresh)
            .map(|(r, _)| r.as_str())
            .collect()
    }

    /// One `topic payload` line. `clean`: the gateway stops by itself (SIGTERM), so its own
    /// `status offline` must come after every region went `offline`.
    fn see(&mut self, line: &str, clean: bool) -> Result<(), String> {
        let Some((topic, payload)) = line.split_once(' ') else {
            return Ok(());
        };
        let Some(rest) = topic.strip_prefix(Self::PREFIX) else {
            return Ok(());
        };
        if rest == "status" {
            let online: Vec<&str> = self
                .regions
                .iter()
                .filter(|(_, (a, _))| a == "online")
                .map(|(r, _)| r.as_str())
                .collect();
            if clean && payload == "offline" && !online.is_empty() {
                return Err(format!(
                    "`status offline` while {online:?} still `online` (retained for the next start)"
                ));
            }
            self.status = Some(payload.to_string());
        } else if let Some(region) = rest.strip_suffix("/availability") {
            self.regions.entry(region.to_string()).or_default().0 = payload.to_string();
        } else if let Some(region) = rest.strip_suffix("/state") {
            self.regions.entry(region.to_string()).or_default().1 = true;
        }
        match self.replayed() {
            r if r.is_empty() => Ok(()),
            r => Err(format!(
                "after `{line:.60}` Home Assistant shows the pre-restart state of {r:?} as live"
            )),
        }
    }

    /// The gateway is up: `status` and every region `online`.
    fn serving(&self) -> bool {
        self.status.as_deref() == Some("online")
            && DEMO_REGIONS
                .iter()
                .all(|r| self.regions.get(*r).is_some_and(|(a, _)| a == "online"))
    }
}

/// Feed `sub`'s lines to `view` until `done`; panics on a replay or after [`PATIENCE`].
async fn watch(sub: &mut Sub, view: &mut HaView, clean: bool, done: impl Fn(&HaView) -> bool) {
    let mut seen = Vec::new();
    let mut failure = None;
    let ok = sub
        .wait(
            |line| {
                seen.push(line.chars().take(90).collect::<String>());
                if let Err(e) = view.see(line, clean) {
                    failure = Some(e);
                    return true;
                }
                done(view)
            },
            PATIENCE,
        )
        .await;
    if let Some(e) = failure {
        panic!("{e}; lines so far:\n{}", seen.join("\n"));
    }
    assert!(
        ok.is_some(),
        "timed out; lines so far:\n{}",
        seen.join("\n")
    );
}

fn demo(port: u16) -> Child {
    Child(
        common::airbridge_cmd()
            .args(["demo", "--mqtt", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn airbridge demo"),
    )
}

/// Issue 19: the retained region availabilities stayed `online` after a stop or a kill,
/// and the next start published `status online` before them, so Home Assistant showed the
/// pre-stop values as live for a moment (and recorded them). Across a clean stop, a
/// restart, a SIGKILL and another restart, the order of what the broker delivers must never
/// make an old value look live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn no_old_value_is_replayed_as_live_across_stop_kill_and_restart() {
    tools(&[]);
    let broker = Broker::start("replay", "allow_anonymous true");
    let mut sub = Sub::start(broker.port, &["airbridge-demo/#"], false).await;
    let mut view = HaView::default();

    let first = demo(broker.port);
    watch(&mut sub, &mut view, false, HaView::serving).await;
    // A clean stop: every region `offline` before the gateway's own `status offline`.
    common::terminate(first);
    watch(&mut sub, &mut view, true, |v| {
        v.status.as_deref() == Some("offline")
    })
    .await;

    // The restart after a clean stop.
    view.restarted();
    let mut second = demo(broker.port);
    watch(&mut sub, &mut view, false, HaView::serving).await;
    // SIGKILL: only the broker's last will speaks, the regions keep their retained `online`.
    second.0.kill().expect("SIGKILL");
    let _ = second.0.wait();
    watch(&mut sub, &mut view, false, |v| {
        v.status.as_deref() == Some("offline")
    })
    .await;

    // The restart after the kill: no moment with `status online` over an old state.
    view.restarted();
    let third = demo(broker.port);
    watch(&mut sub, &mut view, false, HaView::serving).await;
    common::terminate(third);
    watch(&mut sub, &mut view, true, |v| {
        v.status.as_deref() == Some("offline")
    })
    .await;
}

/// `airbridge demo --mqtt`: every discovery config names its own entity id, of the form the
/// README documents (`sensor.ksem_<value name>`, as `default_entity_id` and as `object_id`),
/// so "Active power + L1" and "Active power - L1" can no longer become one id plus `_2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn demo_discovery_gives_every_value_its_own_documented_entity_id() {
    tools(&[]);
    let broker = Broker::start("ids", "allow_anonymous true");
    let mut sub = Sub::start(
        broker.port,
        &["homeassistant/#", "airbridge-demo/status"],
        false,
    )
    .await;
    let mut demo = Child(
        Command::new(BIN)
            .args(["demo", "--duration", "4s", "--mqtt"])
            .arg(format!("127.0.0.1:{}", broker.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn airbridge demo"),
    );
    // Every config until the demo's clean stop says `offline`.
    let mut configs = std::collections::BTreeMap::new();
    let stopped = sub
        .wait(
            |line| {
                let Some((topic, body)) = line.split_once(' ') else {
                    return false;
                };
                if topic.ends_with("/config") {
                    let j = serde_json::from_str::<Json>(body)
                        .unwrap_or_else(|e| panic!("{topic}: {e}: {body}"));
                    configs.insert(topic.to_string(), j);
                }
                line == "airbridge-demo/status offline"
            },
            Duration::from_secs(30),
        )
        .await;
    assert!(stopped.is_some(), "the demo did not stop cleanly");
    assert!(common::wait_exit(&mut demo, PATIENCE).is_some_and(|s| s.success()));
    assert!(configs.len() > 40, "{} configs", configs.len());

    let mut ids = std::collections::BTreeSet::new();
    let mut unique_ids = std::collections::BTreeSet::new();
    for (topic, c) in &configs {
        let id = c["default_entity_id"].as_str().unwrap_or_default();
        // The value's name, from the template that reads it from the state message.
        let key = c["value_template"]
            .as_str()
            .and_then(|t| t.strip_prefix("{{ value_json."))
            .and_then(|t| t.strip_suffix(" }}"))
            .unwrap_or_else(|| panic!("{topic}: {c}"));
        assert_eq!(id, format!("sensor.ksem_{key}"), "{topic}");
        assert_eq!(c["object_id"], format!("ksem_{key}").as_str(), "{topic}");
        assert!(ids.insert(id.to_string()), "{id} twice");
        let uid = c["unique_id"].as_str().unwrap_or_default().to_string();
        assert!(unique_ids.insert(uid.clone()), "unique_id {uid} twice");
    }
    for want in [
        "sensor.ksem_active_power_import_l1",
        "sensor.ksem_active_power_export_l1",
        "sensor.ksem_active_power_import_l2",
        "sensor.ksem_active_power_export_l2",
        "sensor.ksem_active_energy_import",
    ] {
        assert!(ids.contains(want), "{want} missing in {ids:?}");
    }
    let l1 = &configs["homeassistant/sensor/airbridge-demo/active_power_export_l1/config"];
    assert_eq!(l1["name"], "Active power export L1");
}

/// Write requests (FC06, FC16) among the frames that reached a simulated device: what got
/// onto the bus, whether or not the device took it.
fn write_frames(dev: &SimDevice) -> Vec<Vec<u8>> {
    dev.received()
        .into_iter()
        .filter(|f| matches!(f.get(1), Some(0x06 | 0x10)))
        .collect()
}

/// Issue 19: through the real binary, a command for a register that is not under
/// `writable:` (listed in the profile as writable or not there at all) and a retained
/// command (published before the gateway subscribed, so the broker delivers it with the
/// retain flag) for a listed register with a valid value are refused on the result topic
/// and put no write request on the bus; one accepted command afterwards shows that the
/// count sees what does reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto: apt-get install mosquitto mosquitto-clients"]
async fn unlisted_and_retained_commands_never_reach_the_bus() {
    tools(&[]);
    let broker = Broker::start("refused", "allow_anonymous true");
    let path = profile("kstar-hybrid.yaml");
    let (devs, tty, _bus) = common::bus::pty_bus(&path, &[(1, 1111)]);
    let dev = &devs[0];
    let mut results = Sub::start(broker.port, &["ks/set/+/result"], false).await;
    // Left on the broker before the gateway runs: only the retain flag is wrong with it.
    publish(broker.port, "ks/set/active_power_setting", "42", true);

    let dir = temp_dir("refused");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "profile: '{prof}'
rtu_poll: {{device: '{tty}', baud: 9600, timeout: 200ms, gap: 5ms, retries: 1, offline_after: 3, probe_max: 1s}}
tcp_server: {{listen: '127.0.0.1:{tcp}', allow_from: [127.0.0.1]}}
mqtt: {{broker: 'mqtt://127.0.0.1:{mqtt}', client_id: gw-refused, topic: ks, interval: 200ms, commands: true}}
regions:
  - {{name: live, start: 3000, count: 100, function: input, source: rtu_poll, every: 300ms, max_age: 3s}}
writable: [3200]
",
            prof = path.display(),
            tcp = free_port(),
            mqtt = broker.port,
        ),
    )
    .expect("write config");
    let child = common::run_quiet(&cfg);

    let r = results
        .json("ks/set/active_power_setting/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["reason"].as_str().is_some_and(|s| s.contains("retained")),
        "{r}"
    );
    // Writable in the profile, not listed; not in the profile at all.
    let refused = [
        ("working_mode", "1", "writable"),
        ("grid_voltage_min", "200", "writable"),
        ("no_such_register", "1", "no register"),
    ];
    for (name, value, why) in refused {
        publish(broker.port, &format!("ks/set/{name}"), value, false);
        let r = results
            .json(&format!("ks/set/{name}/result"), PATIENCE)
            .await;
        assert_eq!(r["outcome"], "refused", "{r}");
        assert!(r["reason"].as_str().is_some_and(|s| s.contains(why)), "{r}");
    }
    assert_eq!(
        write_frames(dev),
        Vec::<Vec<u8>>::new(),
        "nothing reached the bus"
    );
    assert_eq!(
        dev.stats.writes.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The same register, not retained: on the bus, once (FC06 3200 = 85).
    publish(broker.port, "ks/set/active_power_setting", "85", false);
    let r = results
        .json("ks/set/active_power_setting/result", PATIENCE)
        .await;
    assert_eq!(r["outcome"], "accepted", "{r}");
    let writes = write_frames(dev);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0][..6], [1, 0x06, 0x0C, 0x80, 0, 85], "{writes:?}");

    common::terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
}
