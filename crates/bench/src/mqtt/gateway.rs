//! `bench mqtt`'s gateway under test: its config ([`gateway_yaml`]), starting `airbridge
//! run` with the simulated KSEM pushing to it ([`start_gateway`]), and reading its MQTT
//! counters from `/metrics` ([`scrape`], [`wait_metrics`]).
//!
//! May touch: the gateway process it starts (via [`super::procs::Proc`]), the run's
//! directory it is given, loopback sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::procs::{free_port, wait_listening, Proc};
use super::{MqttBenchOptions, MqttCounters, PATIENCE};
use crate::BENCH_REGIONS;

/// Where one gateway listens.
#[derive(Clone, Copy)]
pub(super) struct GatewayPorts {
    /// The push listener (the simulated KSEM pushes here).
    pub(super) push: SocketAddr,
    /// The status endpoint (`/metrics`).
    pub(super) status: SocketAddr,
}

/// The bench gateway's config: the bench regions, the real turnaround, the RTU slave on
/// `device`, and `mqtt` (a flow mapping body) when given.
pub(super) fn gateway_yaml(
    device: &str,
    ksem_slave: SocketAddr,
    ports: GatewayPorts,
    turnaround: Duration,
    mqtt: Option<(&str, &Path)>,
) -> String {
    let turnaround_us = turnaround.as_micros();
    let mqtt = match mqtt {
        Some((section, profile)) => {
            format!("profile: '{}'\nmqtt: {{{section}}}\n", profile.display())
        }
        None => String::new(),
    };
    format!(
        "rtu: {{device: '{device}', baud: 38400, stop_bits: 2, unit_id: 1, turnaround: {turnaround_us}us}}
push: {{listen: '{}', allow_from: [127.0.0.1], max_connections: 8}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
status: {{listen: '{}'}}
log: {{level: warn}}
{mqtt}{BENCH_REGIONS}",
        ports.push, ports.status
    )
}

/// A plain HTTP/1.0 GET on loopback; the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .with_context(|| format!("GET {path} on {addr} timed out"))?
        .with_context(|| format!("GET {path} on {addr}"))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body.to_string())
}

/// The value of the sample `name` (with its labels, as printed) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The MQTT counters and whether the gateway is ready, from one `/metrics` page.
fn counters(page: &str) -> (MqttCounters, bool) {
    let n = |name: &str| metric(page, name).map_or(0, |v| v as u64);
    let c = MqttCounters {
        connected: n("airbridge_mqtt_connected"),
        connects: n("airbridge_mqtt_connects_total{result=\"ok\"}"),
        failures: n("airbridge_mqtt_connects_total{result=\"failed\"}"),
        published: n("airbridge_mqtt_published_total"),
        dropped: n("airbridge_mqtt_dropped_total"),
    };
    (c, n("airbridge_ready") == 1)
}

/// The MQTT counters and readiness, from one `/metrics` GET.
pub(super) async fn scrape(status: SocketAddr) -> anyhow::Result<(MqttCounters, bool)> {
    Ok(counters(&http_get(status, "/metrics").await?))
}

/// Poll `/metrics` until `done` holds, the gateway exits, or `PATIENCE`.
pub(super) async fn wait_metrics(
    gw: &mut Proc,
    status: SocketAddr,
    what: &str,
    done: impl Fn(&MqttCounters, bool) -> bool,
) -> anyhow::Result<MqttCounters> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        gw.check_running()?;
        if let Ok((c, ready)) = scrape(status).await {
            if done(&c, ready) {
                return Ok(c);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway was not {what} within {PATIENCE:?} (counters {c:?}, ready {ready})"
            );
        } else {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway's /metrics did not answer within {PATIENCE:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running gateway with the KSEM pushing to it.
pub(super) struct Running {
    /// The `airbridge run` child: stopped between phases, killed on drop.
    pub(super) proc: Proc,
    /// Where it listens: the push port the KSEM pushes to, the status port scraped.
    pub(super) ports: GatewayPorts,
    /// Stops the simulated KSEM's pushes to this gateway (before it is stopped).
    pub(super) pusher: CancellationToken,
}

/// Write the config, start `airbridge run`, push at 5 Hz, wait until ready.
pub(super) async fn start_gateway(
    opts: &MqttBenchOptions,
    dir: &Path,
    name: &str,
    yaml: impl FnOnce(GatewayPorts) -> String,
    model: airbridge_sim::ksem::SharedModel,
    cancel: &CancellationToken,
) -> anyhow::Result<Running> {
    use airbridge_sim::ksem;
    let ports = GatewayPorts {
        push: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        status: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml(ports))?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(&opts.gateway);
    cmd.args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut proc = Proc::spawn(cmd, "the gateway (airbridge run)")?;
    wait_listening(ports.push, &mut proc).await?;
    let pusher = cancel.child_token();
    tokio::spawn(ksem::run_pusher(
        ports.push,
        Duration::from_millis(200),
        model,
        pusher.clone(),
        Arc::new(ksem::PushStats::default()),
    ));
    wait_metrics(&mut proc, ports.status, "ready", |_, ready| ready).await?;
    Ok(Running {
        proc,
        ports,
        pusher,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_a_metrics_page() {
        let page = "# HELP airbridge_mqtt_connected 1 while connected.\n\
            # TYPE airbridge_mqtt_connected gauge\n\
            airbridge_mqtt_connected 1\n\
            airbridge_mqtt_connects_total{result=\"ok\"} 2\n\
            airbridge_mqtt_connects_total{result=\"failed\"} 5\n\
            airbridge_mqtt_published_total 1234\n\
            airbridge_mqtt_dropped_total 0\n\
            airbridge_ready 1\n";
        let (c, ready) = counters(page);
        assert!(ready);
        assert_eq!(
            c,
            MqttCounters {
                connected: 1,
                connects: 2,
                failures: 5,
                published: 1234,
                dropped: 0
            }
        );
        // A prefix of another name is not that name; a missing sample is 0.
        let (c, ready) = counters("airbridge_mqtt_connected_x 7\nairbridge_ready 0\n");
        assert_eq!((c.connected, ready), (0, false));
    }

    #[test]
    fn the_mqtt_gateway_differs_from_the_plain_one_by_mqtt_only() {
        let ports = GatewayPorts {
            push: "127.0.0.1:1502".parse().expect("addr"),
            status: "127.0.0.1:8080".parse().expect("addr"),
        };
        let slave = "127.0.0.1:502".parse().expect("addr");
        let t = Duration::from_micros(1750);
        let off = gateway_yaml("/dev/pts/9", slave, ports, t, None);
        let on = gateway_yaml(
            "/dev/pts/9",
            slave,
            ports,
            t,
            Some(("broker: 'mqtt://127.0.0.1:1883'", Path::new("/tmp/p.yaml"))),
        );
        airbridge::config::parse(&off, "off").expect("the plain config parses");
        let extra: Vec<&str> = on
            .lines()
            .filter(|l| !off.lines().any(|o| o == *l))
            .collect();
        assert_eq!(
            extra,
            [
                "profile: '/tmp/p.yaml'",
                "mqtt: {broker: 'mqtt://127.0.0.1:1883'}"
            ]
        );
    }
}
