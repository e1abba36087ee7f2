//! "Sharing the meter": the real gateway polls the simulated KSEM and serves the house on
//! its read-only `tcp_server:`. Readers nobody here wrote check it: pysunspec2 walks the
//! SunSpec chain, pymodbus reads the KOSTAL map at units 1 and 71 (a Python venv that
//! `.ci/run` creates at target/venv; `AIRBRIDGE_PYTHON` names another interpreter). The
//! Rust client checks the rest at gateway level: writes get 01, the KSEM gone → 0B.
//! Everything on 127.0.0.1, bounded in time; the gateway, the simulator and every
//! process started here are stopped at the end.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use airbridge::app::gateway::{Gateway, RtuPort};
use airbridge::config;
use airbridge_sim::ksem::{self, lock_model, KsemSim, KsemSimOptions};
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

/// The simulated meter, frozen: its stepper ticks once an hour, so every reader sees the
/// same measurement and the test can compare exactly.
async fn frozen_ksem(cancel: &CancellationToken) -> KsemSim {
    let opts = KsemSimOptions {
        interval: Duration::from_secs(3600),
        seed: 11,
        ..KsemSimOptions::default()
    };
    ksem::start(opts, cancel.clone()).await.expect("ksem sim")
}

/// A KSEM config without `rtu:`: the meter polled, served to the house only.
async fn gateway(ksem: SocketAddr, cancel: &CancellationToken) -> Gateway {
    let yaml = format!(
        "poll: {{host: '{ksem}', timeout: 1s}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]}}
regions:
  - {{name: totals, start: 0, count: 40, source: poll, every: 200ms, max_age: 2s, on_stale: silence}}
  - {{name: energy, start: 512, count: 280, source: poll, every: 1s, max_age: 5m, on_stale: serve}}
  - {{name: sunspec, start: 40000, count: 179, source: poll, every: 1s, max_age: 2s, on_stale: exception}}
"
    );
    let cfg = config::parse(&yaml, "share.yaml").expect("config").config;
    Gateway::start(cfg, RtuPort::Off, cancel.clone())
        .await
        .expect("gateway starts")
}

async fn client(addr: SocketAddr, unit: u8) -> Context {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Read until every region answered (at most 10 s).
async fn wait_served(c: &mut Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (a, n) in [(0, 40), (512, 4), (40_000, 125)] {
        loop {
            if let Ok(Ok(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(2), c.read_holding_registers(a, n)).await
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{a} never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the simulated KSEM holds: (P+ − P−) in W, A+ in Wh, and the raw words.
fn truth(sim: &KsemSim) -> (f64, u64, Vec<u16>, Vec<u16>) {
    let model = sim.model();
    let m = lock_model(&model);
    let inst = m.instantaneous_block();
    let energy = m.energy_block();
    let u32_at = |w: &[u16], at: usize| (u32::from(w[at]) << 16) | u32::from(w[at + 1]);
    let w = (f64::from(u32_at(&inst, 0)) - f64::from(u32_at(&inst, 2))) / 10.0;
    let a_plus = energy[..4]
        .iter()
        .fold(0u64, |acc, &x| (acc << 16) | u64::from(x));
    (w, a_plus / 10, inst[..4].to_vec(), energy[..4].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_house_reads_the_meter_read_only_and_gets_0b_when_the_ksem_is_gone() {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let sim = frozen_ksem(&cancel).await;
    let gw = gateway(sim.slave_addr(), &cancel).await;
    let addr = gw.tcp_addr.expect("meter server");
    let mut c = client(addr, 71).await;
    wait_served(&mut c).await;
    let (_, _, power, _) = truth(&sim);
    // The KOSTAL map and the SunSpec chain, through airbridge, at evcc's unit 71.
    assert_eq!(c.read_input_registers(0, 4).await.expect("io"), Ok(power));
    let head = c.read_holding_registers(40_000, 4).await.expect("io");
    assert_eq!(head, Ok(vec![0x5375, 0x6E53, 1, 66]));
    // Writes from the LAN: 01, and the image is unchanged.
    let w = c.write_single_register(0, 1).await.expect("io");
    assert_eq!(w, Err(ExceptionCode::IllegalFunction));
    let w = c
        .write_multiple_registers(40_000, &[0; 4])
        .await
        .expect("io");
    assert_eq!(w, Err(ExceptionCode::IllegalFunction));
    assert_eq!(
        c.read_holding_registers(40_000, 2).await.expect("io"),
        Ok(vec![0x5375, 0x6E53])
    );
    // The KSEM is gone: after max_age, 0B for the live values and SunSpec, never zeros;
    // the energy counters (`serve`) keep their last values.
    sim.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.read_holding_registers(0, 4).await.expect("io");
        if r == Err(ExceptionCode::GatewayTargetDevice) {
            break;
        }
        assert!(r.is_ok(), "served or 0B, nothing else: {r:?}");
        assert!(tokio::time::Instant::now() < deadline, "never went stale");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = c.read_holding_registers(40_000, 125).await.expect("io");
    assert_eq!(s, Err(ExceptionCode::GatewayTargetDevice));
    assert!(c.read_holding_registers(512, 4).await.expect("io").is_ok());
    cancel.cancel();
    gw.join(Duration::from_secs(5)).await;
}

/// The venv's python with pysunspec2 and pymodbus; fails the test if it is missing.
fn python() -> PathBuf {
    let path = std::env::var_os("AIRBRIDGE_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"),
        PathBuf::from,
    );
    let ok = Command::new(&path)
        .args(["-c", "import sunspec2, pymodbus"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        path
    } else {
        common::tool::missing(
            "python venv with pysunspec2 and pymodbus",
            "python3 -m venv target/venv && \
             target/venv/bin/pip install pysunspec2==1.3.7 pymodbus==3.16.1",
        )
    }
}

/// Run `tests/py/read_meter.py` with `args`: at most 60 s, then it is killed; always
/// waited for, so no process outlives the test.
async fn read_meter(python: PathBuf, args: Vec<String>) -> serde_json::Value {
    use std::io::Read as _;
    use std::process::Stdio;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_meter.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reader starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reader did not finish within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    assert!(status.success(), "reader failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("reader printed {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a python venv with pysunspec2 and pymodbus: python3 -m venv target/venv && target/venv/bin/pip install pysunspec2==1.3.7 pymodbus==3.16.1"]
async fn pysunspec2_and_pymodbus_read_what_the_ksem_holds() {
    let python = python();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let sim = frozen_ksem(&cancel).await;
    let gw = gateway(sim.slave_addr(), &cancel).await;
    let addr = gw.tcp_addr.expect("meter server");
    wait_served(&mut client(addr, 1).await).await;
    let (watts, wh_imp, power, a_plus) = truth(&sim);
    let port = addr.port().to_string();

    let s = read_meter(
        python.clone(),
        vec!["sunspec".into(), port.clone(), "71".into()],
    )
    .await;
    assert_eq!(s["models"], serde_json::json!([1, 203]), "{s}");
    // Model 203 starts at 40070 (its ID), the firmware 2.6.0 layout the simulator serves.
    assert_eq!(s["base"], serde_json::json!(40_070), "{s}");
    let w = s["W"].as_f64().expect("W");
    assert!(
        (w - watts).abs() <= 0.5,
        "SunSpec W {w} vs the KSEM's {watts}"
    );
    assert_eq!(s["TotWhImp"].as_u64(), Some(wh_imp), "{s}");

    let k = read_meter(python, vec!["kostal".into(), port, "1".into(), "71".into()]).await;
    for unit in ["1", "71"] {
        assert_eq!(
            k[unit]["power"],
            serde_json::json!(power),
            "unit {unit}: {k}"
        );
        assert_eq!(
            k[unit]["a_plus"],
            serde_json::json!(a_plus),
            "unit {unit}: {k}"
        );
    }
    cancel.cancel();
    gw.join(Duration::from_secs(5)).await;
}

/// The RTU slave runs on its own thread and runtime: with every thread of the gateway's
/// runtime blocked (here: the test's only thread, asleep), the inverter is still answered.
/// Before the slave had its own thread, no reply came until the runtime ran again.
#[tokio::test(flavor = "current_thread")]
async fn the_inverter_is_answered_while_the_gateway_runtime_is_blocked() {
    let yaml = "rtu: {device: in-process, turnaround: 0}
regions:
  - {name: spec_version, start: 8249, count: 1, source: static, values: {8249: 7}}
";
    let cfg = config::parse(yaml, "rtu.yaml").expect("config").config;
    let (gw_end, mut inverter) = tokio::io::duplex(256);
    let cancel = CancellationToken::new();
    let gw = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
        .await
        .expect("gateway starts");
    // The inverter on a thread of its own: one FC03 read of 8249, at most 2 s.
    let asker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let request = airbridge_bench::with_crc(&[1, 3, 0x20, 0x39, 0, 1]);
            inverter.write_all(&request).await.expect("write");
            let mut reply = [0u8; 7];
            let got =
                tokio::time::timeout(Duration::from_secs(2), inverter.read_exact(&mut reply)).await;
            (got.is_ok_and(|r| r.is_ok()), reply, inverter)
        })
    });
    // Block this runtime's only thread for longer than the inverter waits.
    std::thread::sleep(Duration::from_secs(3));
    let (answered, reply, _inverter) = asker.join().expect("inverter thread");
    assert!(answered, "no reply while the gateway's runtime was blocked");
    assert_eq!(&reply[..5], &[1, 3, 2, 0, 7], "{reply:?}");
    cancel.cancel();
    gw.join(Duration::from_secs(5)).await;
}
