//! The status endpoint against a real running gateway: a simulated KSEM pushes (FC16) and
//! is polled, an RTU master reads over a pseudo-terminal, and `/status`, `/metrics`,
//! `/journal` and `/` are fetched over loopback HTTP. Also: the `status:` config section
//! (errors with line numbers, warnings), profiles without the key values, a busy port, and
//! the page rendered in headless Chromium (an ignored test: it needs chromium).

use crate::common;
use common::http::request as http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airbridge::app::gateway::{Gateway, RtuPort};
use airbridge::config::{self, ConfigError};
use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use airbridge_sim::ksem;
use serde_json::Value as Json;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Config: `status: {listen: ...}`.

const BASE: &str = "rtu: {device: /dev/ttyUSB0}
push: {listen: '0.0.0.0:5020', allow_from: [127.0.0.1]}
regions:
  - {name: totals, start: 0, count: 40, source: push}
";

fn parse(extra: &str) -> Result<config::Loaded, ConfigError> {
    config::parse(&format!("{BASE}{extra}"), "test.yaml")
}

/// Line of `extra`'s first line in the whole text.
fn line_of_extra() -> u64 {
    BASE.lines().count() as u64 + 1
}

#[test]
fn status_section_is_optional_and_parsed() {
    let none = parse("").expect("valid");
    assert_eq!(none.config.status, None, "off when absent");
    let on = parse("status: {listen: 127.0.0.1:8080}\n").expect("valid");
    let st = on.config.status.clone().expect("status on");
    assert_eq!(
        st.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
    );
    assert!(on.warnings.is_empty(), "{:?}", on.warnings);
    assert!(on
        .config
        .describe()
        .contains("status: http://127.0.0.1:8080/"));
}

#[test]
fn status_errors_name_file_line_and_key() {
    let cases = [
        (
            "status: {listen: localhost}\n",
            "status.listen",
            "not ADDRESS:PORT",
        ),
        (
            "status: {listen: '0.0.0.0:5020'}\n",
            "status.listen",
            "collides with push.listen",
        ),
        (
            "status:\n  listen: 127.0.0.1:99999\n",
            "status.listen",
            "not ADDRESS:PORT",
        ),
    ];
    for (extra, key, what) in cases {
        let err = parse(extra).expect_err(extra);
        let ConfigError::Invalid {
            path,
            line,
            key: k,
            message,
        } = &err
        else {
            panic!("{extra}: not a validation error: {err}");
        };
        assert_eq!(path, "test.yaml");
        let want_line = line_of_extra() + u64::from(extra.starts_with("status:\n"));
        assert_eq!(*line, want_line, "{extra}: {err}");
        assert_eq!(k, key, "{err}");
        assert!(message.contains(what), "{extra}: {err}");
        assert!(err
            .to_string()
            .starts_with(&format!("test.yaml:{want_line}: {key}: ")));
    }
    // Unknown keys and a missing listen are refused with the file's position.
    for extra in [
        "status: {listen: 127.0.0.1:8080, port: 1}\n",
        "status: {}\n",
    ] {
        let err = parse(extra).expect_err(extra).to_string();
        assert!(err.starts_with("test.yaml"), "{err}");
        assert!(
            err.contains(&format!(":{}:", line_of_extra())),
            "{extra}: {err}"
        );
    }
}

#[test]
fn status_on_the_network_is_warned_about() {
    let l = parse("status: {listen: '0.0.0.0:8080'}\n").expect("valid");
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    assert!(
        w.starts_with(&format!("test.yaml:{}: status.listen: ", line_of_extra())),
        "{w}"
    );
    assert!(w.contains("no authentication"), "{w}");
}

#[test]
fn shipped_gateway_yaml_documents_status_on_loopback() {
    let text = std::fs::read_to_string(repo().join("gateway.yaml")).expect("gateway.yaml");
    assert!(
        text.contains("status:"),
        "gateway.yaml documents the status section"
    );
    let loaded = config::load(&repo().join("gateway.yaml")).expect("gateway.yaml loads");
    if let Some(st) = loaded.config.status {
        assert!(st.listen.ip().is_loopback(), "shipped on loopback only");
    }
}

// ---------------------------------------------------------------------------------------
// A running gateway with the status endpoint.

fn repo() -> PathBuf {
    common::manifest("")
}

/// A region name that needs escaping in Prometheus labels and HTML.
const ODD_NAME: &str = r#"odd "name" \ <b>here</b>"#;

struct Rig {
    _gateway: Gateway,
    inverter: RtuMaster<SerialStream>,
    status: SocketAddr,
    ksem: ksem::KsemSim,
    cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.ksem.stop();
    }
}

/// Gateway with status on a free port, `profile` (a path, or none), a frozen simulated
/// KSEM polled for energy and identity, and the KSEM's pusher pushing its groups.
async fn rig(profile: Option<PathBuf>) -> Rig {
    let ksem = common::frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let profile_line = profile
        .map(|p| format!("profile: '{}'\n", p.display()))
        .unwrap_or_default();
    let yaml = format!(
        "rtu: {{device: pty, turnaround: 0, frame_timeout: 20ms}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]}}
poll: {{host: '{}', timeout: 500ms}}
status: {{listen: '127.0.0.1:0'}}
{profile_line}regions:
  - {{name: totals, start: 0, count: 40, source: push, max_age: 1h}}
  - {{name: phases, start: 40, count: 108, source: push, max_age: 1h}}
  - {{name: energy, start: 512, count: 280, source: [push, poll], every: 300ms}}
  - {{name: identity, start: 8192, count: 58, source: poll, every: 1h}}
  - {{name: '{}', start: 9000, count: 2, source: static, values: {{9000: 1}}}}
",
        ksem.slave_addr(),
        ODD_NAME.replace('\'', "''"),
    );
    let cfg = config::parse(&yaml, "test")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let cancel = CancellationToken::new();
    let gateway = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
        .await
        .expect("gateway starts");
    let status = gateway.status_addr.expect("status listening");
    let push = gateway.push_addr.expect("push listening");
    tokio::spawn(ksem::run_pusher(
        push,
        Duration::from_millis(100),
        ksem.model(),
        cancel.clone(),
        Arc::new(ksem::PushStats::default()),
    ));
    Rig {
        _gateway: gateway,
        inverter: RtuMaster::new(inv_end, Duration::from_millis(500)),
        status,
        ksem,
        cancel,
    }
}

async fn status_json(addr: SocketAddr) -> Json {
    let r = http(addr, "GET", "/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    serde_json::from_str(&r.body).expect("valid JSON")
}

/// Wait until `/status` is ready and every key value is decoded.
async fn decoded_status(addr: SocketAddr) -> Json {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = status_json(addr).await;
        let all = st["values"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| x["value"].is_number()));
        if st["ready"] == true && all {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "values never decoded: {st:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value(st: &Json, id: &str) -> f64 {
    st["values"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["id"] == id))
        .and_then(|x| x["value"].as_f64())
        .unwrap_or_else(|| panic!("no value {id}: {st:#}"))
}

fn u32_at(words: &[u16], i: usize) -> f64 {
    f64::from((u32::from(words[i]) << 16) | u32::from(words[i + 1]))
}

fn u64_at(words: &[u16], i: usize) -> f64 {
    words[i..i + 4]
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w)) as f64
}

fn close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: /status says {got}, the simulated KSEM {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_decodes_what_the_simulated_ksem_pushed() {
    let rig = rig(Some(repo().join("profiles/ksem-g2.yaml"))).await;
    let st = decoded_status(rig.status).await;
    let model = rig.ksem.model();
    let (grid, phases, volts, hz, inst, energy) = {
        let m = ksem::lock_model(&model);
        (
            m.grid_power_w(),
            m.phase_power_w(),
            m.voltages_v(),
            m.frequency_hz(),
            m.instantaneous_block(),
            m.energy_block(),
        )
    };
    // The model's physics against the profile's decoding (register resolution apart).
    close(value(&st, "grid_power"), grid, 0.15, "grid power");
    for (l, (p, u)) in phases.iter().zip(volts).enumerate() {
        close(
            value(&st, &format!("power_l{}", l + 1)),
            *p,
            0.15,
            "phase power",
        );
        close(
            value(&st, &format!("voltage_l{}", l + 1)),
            u,
            0.0015,
            "voltage",
        );
    }
    close(value(&st, "frequency"), hz, 0.0015, "frequency");
    // Currents and energies straight from the words the KSEM serves (KSEM map: u32 ×0.001
    // at 60/100/140, u64 ×0.1 at 512/516).
    for (l, a) in [60usize, 100, 140].iter().enumerate() {
        close(
            value(&st, &format!("current_l{}", l + 1)),
            u32_at(&inst, *a) * 0.001,
            1e-9,
            "current",
        );
    }
    close(
        value(&st, "energy_import"),
        u64_at(&energy, 0) * 0.1,
        1e-6,
        "energy import",
    );
    close(
        value(&st, "energy_export"),
        u64_at(&energy, 4) * 0.1,
        1e-6,
        "energy export",
    );
    assert!(
        grid.abs() > 1.0,
        "the household draws or feeds something: {grid}"
    );

    assert_eq!(st["profile"]["name"], "KOSTAL Smart Energy Meter G2 (KSEM)");
    let units: BTreeMap<&str, &str> = st["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or(""),
                v["unit"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(units["grid_power"], "W");
    assert_eq!(units["voltage_l2"], "V");
    assert_eq!(units["energy_export"], "Wh");

    // Regions: source, age, freshness.
    let regions = st["regions"].as_array().expect("regions");
    let names: Vec<&str> = regions.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["totals", "phases", "energy", "identity", ODD_NAME]);
    let sources: Vec<&str> = regions
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert_eq!(sources, ["push", "push", "[push, poll]", "poll", "static"]);
    for r in regions {
        assert_eq!(r["stale"], false, "{r}");
        assert!(r["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{r}");
        assert!(r["last_error"].is_null(), "{r}");
    }
    assert_eq!(regions[2]["max_age_s"], 0.9, "3 × every");
    assert!(regions[4]["max_age_s"].is_null(), "static never ages");
    assert_eq!(st["upstream"]["poll_connected"], true);
    assert!(st["upstream"]["push_connections_open"].as_u64() >= Some(1));
    assert!(st["counters"]["push"]["writes_ok"].as_u64() >= Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grid_power_history_fills_at_one_hertz() {
    let rig = rig(Some(repo().join("profiles/ksem-g2.yaml"))).await;
    decoded_status(rig.status).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let hist = loop {
        let st = status_json(rig.status).await;
        let h = st["history"]["grid_power"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if h.iter().filter(|p| p[1].is_number()).count() >= 3 {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "no history: {st:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let model = rig.ksem.model();
    let grid = ksem::lock_model(&model).grid_power_w();
    let times: Vec<u64> = hist.iter().filter_map(|p| p[0].as_u64()).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "ascending: {times:?}"
    );
    let last = hist.last().and_then(|p| p[1].as_f64()).expect("a sample");
    close(last, grid, 0.15, "latest history sample");
}

/// A strict reader of the Prometheus text format (0.0.4): every family has exactly one
/// HELP and one TYPE before its samples, samples of a family are contiguous, names and
/// label names are valid, label values use only the allowed escapes, no series repeats,
/// counters end in `_total`, histograms have ascending cumulative buckets ending in +Inf
/// equal to `_count`. Returns every series with its value.
type Series = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse_metrics(text: &str) -> Series {
    fn valid_name(n: &str, colon: bool) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
    }
    assert!(text.ends_with('\n'), "ends with a newline");
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut kind: BTreeMap<String, String> = BTreeMap::new();
    let mut done: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut series = BTreeMap::new();
    let mut hist_buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let (what, rest) = rest.split_once(' ').expect(&at);
            let (name, arg) = rest.split_once(' ').expect(&at);
            assert!(valid_name(name, true), "{at}");
            assert!(
                !done.contains(&name.to_string()),
                "family {name} split: {at}"
            );
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    done.push(c);
                }
                current = Some(name.to_string());
            }
            match what {
                "HELP" => {
                    assert!(
                        help.insert(name.into(), arg.into()).is_none(),
                        "second HELP: {at}"
                    );
                    assert!(!arg.trim().is_empty(), "empty HELP: {at}");
                }
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "{at}"
                    );
                    assert!(
                        kind.insert(name.into(), arg.into()).is_none(),
                        "second TYPE: {at}"
                    );
                }
                _ => panic!("unknown comment: {at}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty() && !line.starts_with('#'), "{at}");
        // name{labels} value
        let name_end = line.find(['{', ' ']).expect(&at);
        let name = &line[..name_end];
        assert!(valid_name(name, true), "{at}");
        let family = current.clone().expect("sample before any TYPE");
        let ty = kind
            .get(&family)
            .map(String::as_str)
            .expect("TYPE before samples");
        assert!(help.contains_key(&family), "HELP before samples: {at}");
        match ty {
            "histogram" => assert!(
                [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count")
                ]
                .contains(&name.to_string()),
                "{at}"
            ),
            _ => assert_eq!(name, family, "{at}"),
        }
        if ty == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter names end in _total: {at}"
            );
        }
        // Labels: a character cursor over the rest of the line.
        let chars: Vec<char> = line[name_end..].chars().collect();
        let mut i = 0;
        let mut labels = Vec::new();
        if chars.first() == Some(&'{') {
            i = 1;
            loop {
                let key_start = i;
                while chars.get(i).is_some_and(|c| *c != '=') {
                    i += 1;
                }
                let key: String = chars[key_start..i].iter().collect();
                assert!(
                    valid_name(&key, false) && !key.starts_with("__"),
                    "label name: {at}"
                );
                assert_eq!(chars.get(i + 1), Some(&'"'), "{at}");
                i += 2;
                let mut value = String::new();
                loop {
                    let c = *chars.get(i).expect("unterminated label value");
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let e = *chars.get(i).expect("escape");
                            i += 1;
                            value.push(match e {
                                '\\' => '\\',
                                '"' => '"',
                                'n' => '\n',
                                other => panic!("bad escape \\{other}: {at}"),
                            });
                        }
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.get(i) {
                    Some(',') => i += 1,
                    Some('}') => {
                        i += 1;
                        break;
                    }
                    _ => panic!("after a label value: {at}"),
                }
            }
        }
        let rest: String = chars[i..].iter().collect();
        let value_text = rest.strip_prefix(' ').expect(&at);
        assert!(!value_text.contains(' '), "no timestamps here: {at}");
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value: {at}")),
        };
        if name.ends_with("_bucket") {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone())
                .expect("le");
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le value")
            };
            hist_buckets
                .entry(family.clone())
                .or_default()
                .push((le, value));
        }
        let mut sorted = labels.clone();
        sorted.sort();
        assert!(
            series.insert((name.to_string(), sorted), value).is_none(),
            "series repeated: {at}"
        );
    }
    for (family, buckets) in &hist_buckets {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: {buckets:?}"
        );
        let (le, inf) = *buckets.last().expect("buckets");
        assert!(le.is_infinite(), "{family} ends with +Inf");
        assert_eq!(
            Some(&inf),
            series.get(&(format!("{family}_count"), vec![])),
            "{family}"
        );
    }
    assert_eq!(
        help.keys().collect::<Vec<_>>(),
        kind.keys().collect::<Vec<_>>(),
        "HELP and TYPE for every family"
    );
    series
}

fn get(m: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *m.get(&(name.to_string(), l.clone()))
        .unwrap_or_else(|| panic!("no series {name}{l:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool: apt-get install prometheus"]
async fn metrics_follow_the_format_and_count_what_happened() {
    let mut rig = rig(Some(repo().join("profiles/ksem-g2.yaml"))).await;
    decoded_status(rig.status).await;
    // The inverter: 5 good reads, one outside every region, one unsupported function.
    for _ in 0..5 {
        let w = rig.inverter.read(1, 3, 0, 74).await.expect("FC03 0..74");
        assert_eq!(w.len(), 74);
    }
    assert!(matches!(
        rig.inverter.read(1, 3, 300, 2).await,
        Err(ReplyError::Exception(2))
    ));
    assert!(matches!(
        rig.inverter.read(1, 1, 0, 8).await,
        Err(ReplyError::Exception(1))
    ));
    rig.inverter
        .read(1, 4, 8192, 10)
        .await
        .expect("FC04 identity");

    // The slave records a reply's latency once the reply is written, which can be just after
    // the inverter has it: wait (bounded) until the last reply's observation is in.
    let mut r = http(rig.status, "GET", "/metrics").await;
    for _ in 0..40 {
        let seen = get(
            &parse_metrics(&r.body),
            "airbridge_rtu_reply_latency_seconds_count",
            &[],
        );
        if seen >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = http(rig.status, "GET", "/metrics").await;
    }
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let m = parse_metrics(&r.body);
    for (name, _) in m.keys() {
        assert!(name.starts_with("airbridge_"), "{name}");
    }
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_requests_total",
            &[("function", "3"), ("result", "ok")]
        ),
        5.0
    );
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_requests_total",
            &[("function", "3"), ("result", "illegal_data_address")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_requests_total",
            &[("function", "1"), ("result", "illegal_function")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_requests_total",
            &[("function", "4"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_requests_total",
            &[("function", "3"), ("result", "silent_stale")]
        ),
        0.0
    );
    // Every reply written (data and exceptions) is one latency observation.
    assert_eq!(
        get(&m, "airbridge_rtu_reply_latency_seconds_count", &[]),
        8.0
    );
    assert!(get(&m, "airbridge_rtu_reply_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(
        get(
            &m,
            "airbridge_rtu_frames_dropped_total",
            &[("reason", "crc")]
        ),
        0.0
    );
    assert_eq!(
        get(&m, "airbridge_rtu_reply_bytes_total", &[]),
        (5 * 153 + 25 + 2 * 5) as f64
    );
    assert!(get(&m, "airbridge_push_writes_total", &[("result", "ok")]) >= 2.0);
    assert_eq!(
        get(&m, "airbridge_push_writes_total", &[("result", "refused")]),
        0.0
    );
    assert_eq!(get(&m, "airbridge_push_connections", &[]), 1.0);
    assert_eq!(get(&m, "airbridge_poll_connected", &[]), 1.0);
    assert!(
        get(
            &m,
            "airbridge_poll_requests_total",
            &[("region", "identity"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        get(
            &m,
            "airbridge_poll_requests_total",
            &[("region", "energy"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(get(&m, "airbridge_ready", &[]), 1.0);
    assert_eq!(
        get(
            &m,
            "airbridge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The odd region name comes back intact through the escaping.
    assert_eq!(
        get(&m, "airbridge_region_stale", &[("region", ODD_NAME)]),
        0.0
    );
    assert!(
        get(
            &m,
            "airbridge_region_age_seconds",
            &[("region", "totals"), ("source", "push")]
        ) < 3600.0
    );
    assert_eq!(
        get(
            &m,
            "airbridge_region_max_age_seconds",
            &[("region", "totals")]
        ),
        3600.0
    );
    assert!(
        r.body.contains(r#"region="odd \"name\" \\ <b>here</b>""#),
        "escaped label"
    );

    promtool_check(&r.body);
}

/// `promtool check metrics` (Prometheus's own parser and linter); fails if it is missing.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        common::tool::missing("promtool", "apt-get install prometheus");
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_page_and_errors_over_http() {
    let mut rig = rig(Some(repo().join("profiles/ksem-g2.yaml"))).await;
    decoded_status(rig.status).await;
    rig.inverter.read(1, 3, 0, 74).await.expect("read");
    assert!(matches!(
        rig.inverter.read(1, 3, 300, 2).await,
        Err(ReplyError::Exception(2))
    ));

    // The RTU slave journals an exchange just after it wrote the reply, so the entry of
    // the last read may trail the reply by a moment: ask again (bounded) until it is there.
    let find = |j: &Json, link: &str, frame: &str, result: &str| {
        j["entries"].as_array().is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e["link"] == link && e["frame"] == frame && e["result"] == result)
        })
    };
    let mut j = Json::Null;
    for _ in 0..50 {
        let r = http(rig.status, "GET", "/journal").await;
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (200, "application/json")
        );
        j = serde_json::from_str(&r.body).expect("JSON");
        if find(&j, "rtu", "FC03 300..302", "exception 02") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(j["capacity"], 512);
    let entries = j["entries"].as_array().expect("entries");
    let find = |link: &str, frame: &str, result: &str| find(&j, link, frame, result);
    assert!(find("rtu", "FC03 0..74", "answered, 153 bytes"), "{j:#}");
    assert!(find("rtu", "FC03 300..302", "exception 02"), "{j:#}");
    assert!(find("push", "FC10 0..28", "written"), "{j:#}");
    assert!(
        find("poll", "FC03 8192..8250", "committed, 116 bytes"),
        "{j:#}"
    );
    let t: Vec<u64> = entries.iter().filter_map(|e| e["t_us"].as_u64()).collect();
    assert_eq!(t.len(), entries.len());

    let text = http(rig.status, "GET", "/journal?format=text&n=3").await;
    assert!(text.content_type.starts_with("text/plain"));
    assert_eq!(text.body.lines().count(), 3, "{}", text.body);

    let page = http(rig.status, "GET", "/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("<title>airbridge</title>"));
    for external in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
        assert!(!page.body.contains(external), "self-contained: {external}");
    }
    assert!(page.body.contains("fetch(\"/status\""));

    assert_eq!(http(rig.status, "GET", "/nope").await.status, 404);
    assert_eq!(http(rig.status, "POST", "/status").await.status, 405);
    assert_eq!(http(rig.status, "HEAD", "/metrics").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_without_the_key_values_are_shown_as_unavailable() {
    // A KSTAR profile has none of the KSEM's names; no profile at all; a profile that
    // does not load. The endpoint answers in every case, values carry the reason.
    let cases: [(Option<PathBuf>, &str); 3] = [
        (
            Some(repo().join("profiles/kstar-hybrid.yaml")),
            "is not in the profile",
        ),
        (None, "no profile configured"),
        (
            Some(repo().join("profiles/does-not-exist.yaml")),
            "profile failed to load",
        ),
    ];
    for (profile, why) in cases {
        let rig = rig(profile).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let st = loop {
            let st = status_json(rig.status).await;
            if st["ready"] == true {
                break st;
            }
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let values = st["values"].as_array().expect("values");
        assert_eq!(values.len(), 13);
        for v in values {
            assert!(v["value"].is_null(), "{v}");
            assert!(
                v["why"].as_str().is_some_and(|w| w.contains(why)),
                "{why}: {v}"
            );
        }
        assert!(st["history"]["grid_power"].as_array().is_some());
        let m = parse_metrics(&http(rig.status, "GET", "/metrics").await.body);
        assert_eq!(get(&m, "airbridge_ready", &[]), 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_status_port_stops_the_start_with_a_clear_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let yaml = format!(
        "rtu: {{device: pty}}
status: {{listen: '{addr}'}}
regions:
  - {{name: s, start: 0, count: 1, source: static, values: {{0: 1}}}}
"
    );
    let cfg = config::parse(&yaml, "test").expect("valid").config;
    let (_inv, gw) = SerialStream::pair().expect("pty");
    let cancel = CancellationToken::new();
    let err = Gateway::start(cfg, RtuPort::Stream(Box::new(gw)), cancel.clone())
        .await
        .err()
        .expect("busy port refused");
    cancel.cancel();
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("status.listen {addr}")), "{msg}");
}

// ---------------------------------------------------------------------------------------
// The page in a real browser.

fn chromium_run(
    bin: &PathBuf,
    profile_dir: &std::path::Path,
    args: &[String],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,980",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile_dir.display()))
    .args(args);
    // Bounded: a hung browser is killed after 60 s.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("chromium output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: apt-get install chromium"]
async fn the_page_renders_live_values_in_headless_chromium() {
    let bin = common::tool::chromium();
    let rig = rig(Some(repo().join("profiles/ksem-g2.yaml"))).await;
    let st = decoded_status(rig.status).await;
    let dir = std::env::temp_dir().join(format!("airbridge-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("http://{}/", rig.status);
    let dom_run = {
        let (bin, d, url) = (bin.clone(), dir.join("p1"), url.clone());
        tokio::task::spawn_blocking(move || chromium_run(&bin, &d, &["--dump-dom".into(), url]))
            .await
            .expect("join")
    };
    let dom = String::from_utf8_lossy(&dom_run.stdout).to_string();
    assert!(dom.contains("serving"), "ready badge rendered:\n{dom}");
    // The grid value the page shows is the one /status decoded (formatted with 1 decimal).
    let grid = value(&st, "grid_power");
    let shown = with_commas(grid.abs());
    assert!(
        dom.contains(&with_commas(grid.abs())),
        "grid {shown} shown:\n{dom}"
    );
    assert!(dom.contains(if grid >= 0.0 {
        "importing"
    } else {
        "exporting"
    }));
    assert!(
        dom.contains("identity") && dom.contains("[push, poll]"),
        "regions table"
    );
    assert!(
        dom.contains("odd \"name\" \\ &lt;b&gt;here&lt;/b&gt;"),
        "names are text, not markup"
    );
    assert!(
        dom.contains("KOSTAL Smart Energy Meter G2"),
        "profile named"
    );
    assert!(
        dom.contains("FC03 8192..8250") || dom.contains("FC10 0..28"),
        "journal tail"
    );

    let png = dir.join("status.png");
    let shot = {
        let (bin, d, arg) = (
            bin.clone(),
            dir.join("p2"),
            format!("--screenshot={}", png.display()),
        );
        tokio::task::spawn_blocking(move || chromium_run(&bin, &d, &[arg, url]))
            .await
            .expect("join")
    };
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!((w, h), (1280, 980));
    assert!(
        bytes.len() > 40_000,
        "not a blank page: {} bytes",
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `1234.5` as the page formats it (`en-US`, one decimal): `1,234.5`.
fn with_commas(v: f64) -> String {
    let s = format!("{v:.1}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, "0"));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out}.{frac}")
}
