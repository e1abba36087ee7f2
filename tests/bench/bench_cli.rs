//! `airbridge bench`: the e2e series through the real binary (tiny counts), `bench mqtt`
//! through the real binary with a real Mosquitto, the RTU measuring loop against a
//! scripted slave, and the report formatting. Bounded in time, loopback only; no
//! assertion on any latency value.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airbridge_bench::{
    age_analysis, bench_rtu, e2e_markdown, fmt_us, parse_ranges, rtu_table, with_crc, E2eReport,
    LatencyHist, Percentiles, RegRange, RtuBenchOptions, RtuBenchReport, RtuRangeReport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_ordered(p: &Percentiles, what: &str) {
    assert!(p.n > 0, "{what}: no samples");
    let seq = [p.min_us, p.p50_us, p.p90_us, p.p99_us, p.p99_9_us, p.max_us];
    assert!(
        seq.windows(2).all(|w| w[0] <= w[1]),
        "{what}: percentiles out of order: {p:?}"
    );
}

#[test]
fn e2e_binary_json() {
    let out = common::airbridge_cmd()
        .args([
            "bench",
            "e2e",
            "--count",
            "50",
            "--duration",
            "1s",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run airbridge bench e2e");
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for key in [
        "command", "cpus", "notes", "rtu", "age", "push", "nominal", "startup", "gateway",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    for key in [
        "n", "min_us", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us",
    ] {
        assert!(
            v["rtu"][0]["rtu"]["all"]["turnaround"].get(key).is_some(),
            "missing percentile key {key}"
        );
    }
    let r: E2eReport = serde_json::from_value(v).expect("typed report");
    assert_eq!(r.rtu.len(), 3, "idle, 5 Hz and flood cases");
    for case in &r.rtu {
        assert_eq!(case.rtu.ranges.len(), 3, "10, 74 and 125 registers");
        for range in &case.rtu.ranges {
            let what = format!("{} {}", case.case, range.range);
            assert_eq!(range.requests, 50, "{what}");
            assert!(range.ok > 0, "{what}: no successful request");
            assert_eq!(range.bad_frames(), 0, "{what}: bad frames");
            assert_ordered(&range.turnaround, &what);
            assert_ordered(&range.total, &what);
            assert!(range.turnaround.p50_us <= range.total.p50_us, "{what}");
        }
    }
    let flood = r.rtu[2].push.as_ref().expect("flood case has push numbers");
    assert!(flood.writes_ok > 0);
    assert!(r.age.pushes_measured > 0, "data age: {:?}", r.age);
    assert_ordered(&r.age.age, "data age");
    assert_eq!(r.push.len(), 2);
    for p in &r.push {
        assert!(p.writes_ok > 0, "push {} conn: {p:?}", p.connections);
        assert_ordered(&p.latency, "push");
    }
    assert_eq!(r.push[0].connections, 1);
    assert_eq!(r.push[1].connections, 4);
    assert!(r.nominal.inverter_replies > 0, "{:?}", r.nominal);
    assert!(r.nominal.vm_rss_kib > 0);
    assert!(r.gateway.rtu_replies > 0);
    assert_eq!(r.startup.runs, 20);
    assert_eq!(r.startup.start_to_ready.n, 20, "{:?}", r.startup);
    assert_ordered(&r.startup.start_to_ready, "start to ready");
    assert!(
        r.startup.start_to_polled.max_us <= r.startup.start_to_ready.max_us,
        "polls finish before ready: {:?}",
        r.startup
    );
    // The markdown rendering of the same report carries every case.
    let md = e2e_markdown(&r);
    assert!(md.contains("bench e2e --count 50"));
    assert!(md.contains("| push idle | 125 |"));
    assert!(md.contains("pseudo-terminal"));
    assert!(md.contains("start → ready"));
}

/// `bench mqtt` end to end, briefly: the real binary runs the three phases against the
/// gateway binary it starts and a Mosquitto it starts; the report proves each phase is what
/// it says (publishing in phase 2, the broker gone in phase 3) and every RTU request got
/// its right reply. Nothing of the run may outlive it.
#[test]
#[ignore = "needs mosquitto: apt-get install mosquitto"]
fn mqtt_binary_three_phases() {
    use airbridge_bench::{find_mosquitto, mqtt_markdown, MqttBenchReport};
    if find_mosquitto().is_none() {
        common::tool::missing("mosquitto", "apt-get install mosquitto");
    }
    let child = common::airbridge_cmd()
        .args(["bench", "mqtt", "--count", "100", "--json"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run airbridge bench mqtt");
    // Its children's configs live in a directory named after its pid.
    let tag = format!("airbridge-bench-mqtt-{}-", child.id());
    let out = child.wait_with_output().expect("bench mqtt ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status
    );
    let r: MqttBenchReport =
        serde_json::from_slice(&out.stdout).expect("one JSON object, a typed report");
    assert_eq!(r.phases.len(), 3, "off, publishing, broker killed");
    for p in &r.phases {
        let a = &p.rtu.all;
        assert_eq!(a.requests, 300, "{}: 3 ranges × 100", p.phase);
        assert_eq!(
            a.ok, a.requests,
            "{}: every request answered right: {a:?}",
            p.phase
        );
        assert_eq!(a.bad_frames(), 0, "{}", p.phase);
        assert!(a.exceptions.is_empty(), "{}: {:?}", p.phase, a.exceptions);
        assert_ordered(&a.turnaround, &p.phase);
    }
    let (off, on, down) = (&r.phases[0], &r.phases[1], &r.phases[2]);
    assert!(
        !off.mqtt && off.end.published == 0 && off.delivered == 0,
        "{off:?}"
    );
    assert!(on.mqtt);
    assert_eq!(
        on.start.connected, 1,
        "publishing phase began connected: {on:?}"
    );
    assert_eq!(on.end.connected, 1, "{on:?}");
    assert!(
        on.end.published > on.start.published,
        "published in phase 2: {on:?}"
    );
    assert!(on.delivered > 0, "the broker delivered in phase 2: {on:?}");
    assert!(down.broker_killed_after_ms.is_some(), "{down:?}");
    assert_eq!(down.end.connected, 0, "the broker seen down: {down:?}");
    assert!(
        down.end.failures > down.start.failures,
        "reconnect attempts failed: {down:?}"
    );
    assert!(r.publishing_total_p99_ratio > 0.0 && r.broker_down_total_p99_ratio > 0.0);

    let md = mqtt_markdown(&r);
    for phase in [
        "| MQTT off | 300 | 300 | 0 | 0 |",
        "| MQTT publishing",
        "| broker killed",
    ] {
        assert!(md.contains(phase), "{phase} in\n{md}");
    }
    assert!(md.contains("RTU p99 ÷ MQTT off"), "{md}");
    let mut cmd = r.run.command.split_whitespace().skip(1);
    assert_eq!(cmd.next(), Some("bench"), "{}", r.run.command);
    assert_eq!(cmd.next(), Some("mqtt"), "{}", r.run.command);

    // Its directory (configs, broker log) and its processes (the gateways and Mosquitto,
    // whose command lines name a file in that directory) are gone with it.
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let temp = std::env::temp_dir();
    let dirs: Vec<String> = names(&temp.to_string_lossy())
        .into_iter()
        .filter(|n| n.contains(&tag))
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    let procs: Vec<String> = names("/proc")
        .iter()
        .filter_map(|p| std::fs::read(format!("{p}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&tag))
        .collect();
    assert!(procs.is_empty(), "still running: {procs:?}");
}

#[test]
fn percentiles_from_histogram() {
    let mut h = LatencyHist::new();
    assert!(h.is_empty());
    assert_eq!(h.summary(), Percentiles::default());
    assert_eq!(h.summary().compact(), "-");
    for us in 1..=1000u64 {
        h.record(Duration::from_micros(us));
    }
    let p = h.summary();
    assert_eq!(p.n, 1000);
    assert_ordered(&p, "1..=1000 µs");
    // hdrhistogram with 3 significant digits: within 0.1 %.
    let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.1;
    assert!(near(p.min_us, 1.0), "{p:?}");
    assert!(near(p.p50_us, 500.0), "{p:?}");
    assert!(near(p.p90_us, 900.0), "{p:?}");
    assert!(near(p.p99_us, 990.0), "{p:?}");
    assert!(near(p.p99_9_us, 999.0), "{p:?}");
    assert!(near(p.max_us, 1000.0), "{p:?}");

    let mut other = LatencyHist::new();
    other.record(Duration::from_millis(20));
    h.add(&other);
    assert_eq!(h.len(), 1001);
    assert!((h.summary().max_us - 20_000.0).abs() < 20.0);

    assert_eq!(fmt_us(17.24), "17.2");
    assert_eq!(fmt_us(1158.6), "1159");
    let p = Percentiles {
        n: 3,
        min_us: 10.0,
        p50_us: 17.25,
        p90_us: 99.94,
        p99_us: 150.0,
        p99_9_us: 150.0,
        max_us: 2000.4,
        mean_us: 50.0,
    };
    assert_eq!(p.compact(), "17.2/99.9/150/150/2000");
}

#[test]
fn rtu_table_formatting() {
    let pct = Percentiles {
        n: 2,
        min_us: 10.0,
        p50_us: 12.0,
        p90_us: 13.0,
        p99_us: 14.0,
        p99_9_us: 15.0,
        max_us: 16.0,
        mean_us: 12.5,
    };
    let range = RtuRangeReport {
        range: "0:74".into(),
        registers: 74,
        requests: 3,
        ok: 2,
        timeouts: 0,
        partial: 0,
        exceptions: BTreeMap::from([(2u8, 1u64)]),
        bad_crc: 0,
        bad_frame: 0,
        stray_bytes: 0,
        turnaround: pct,
        total: pct,
    };
    let mut all = range.clone();
    all.range = "all".into();
    let report = RtuBenchReport {
        unit: 1,
        requests: 3,
        elapsed_s: 0.1,
        requests_per_s: 30.0,
        ranges: vec![range],
        all,
        reference: "t".into(),
    };
    let t = rtu_table(&report, None);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(lines[0].starts_with("| range | requests |"));
    assert_eq!(
        lines[2],
        "| 0:74 | 3 | 2 | 0 | 1×02 | 0 | 0 | 12.0/13.0/14.0/15.0/16.0 | 12.0/13.0/14.0/15.0/16.0 |"
    );
    assert!(lines[3].starts_with("| all |"));
    // On a real UART: the theoretical wire time of request and reply (38400 8N2:
    // 8 bytes = 2292 µs, 153 bytes = 43828 µs).
    let t = rtu_table(&report, Some((38400, 11)));
    assert!(t.contains("wire: request / reply µs"), "{t}");
    assert!(t.contains("| 2292 / 43828 |"), "{t}");

    assert_eq!(
        parse_ranges("0:74,8192:58").unwrap(),
        vec![
            RegRange {
                start: 0,
                count: 74
            },
            RegRange {
                start: 8192,
                count: 58
            }
        ]
    );
    assert!(parse_ranges("0:126").is_err());
    assert!(parse_ranges("65535:2").is_err());
    assert!(parse_ranges("12").is_err());
}

#[test]
fn age_analysis_matches_reference_rules() {
    let t = Instant::now();
    let ms = |m: u64| t + Duration::from_millis(m);
    // (seq, sent, acked)
    let pushes = [
        (1, ms(10), ms(11)),
        (2, ms(20), ms(21)),
        (3, ms(30), ms(31)),
    ];
    // (request start, last byte, seq)
    let reads = [
        (ms(0), ms(1), 0),   // before any push: ignored
        (ms(12), ms(13), 1), // push 1: age 2 ms
        (ms(19), ms(20), 2), // push 2 seen before its ack: clamped to 0
        (ms(22), ms(23), 1), // sent after ack of 2 but carries 1: stale after ack
        (ms(40), ms(41), 2), // push 3 never seen
    ];
    let r = age_analysis(&pushes, &reads);
    assert_eq!(r.pushes_in_window, 3);
    assert_eq!(r.pushes_measured, 2);
    assert_eq!(r.pushes_unseen_at_end, 1);
    assert_eq!(r.negative_clamped, 1);
    assert_eq!(r.stale_after_ack_reads, 2, "{r:?}");
    assert_eq!(r.age.n, 2);
    assert_eq!(r.age.min_us, 0.0);
    assert!((r.age.max_us - 2000.0).abs() < 2.0, "{:?}", r.age);
}

/// A scripted RTU slave on an in-memory pipe: good reply, exception, bad CRC, silence,
/// wrong byte count; then good replies. The bench must count each correctly.
#[tokio::test]
async fn bench_rtu_counts_outcomes() {
    let (master, mut slave) = tokio::io::duplex(4096);
    let responder = tokio::spawn(async move {
        let mut n = 0u32;
        let mut req = [0u8; 8];
        while slave.read_exact(&mut req).await.is_ok() {
            let count = u16::from_be_bytes([req[4], req[5]]);
            let mut good = vec![req[0], req[1], (2 * count) as u8];
            good.extend((0..count).flat_map(|i| i.to_be_bytes()));
            let reply = match n {
                1 => with_crc(&[req[0], 0x83, 0x02]),
                2 => {
                    let mut f = with_crc(&good);
                    let last = f.len() - 1;
                    f[last] ^= 0xFF;
                    f
                }
                3 => Vec::new(), // silence → timeout
                4 => {
                    let mut f = good.clone();
                    f[2] = (2 * count - 2) as u8;
                    f.truncate(f.len() - 2);
                    with_crc(&f)
                }
                _ => with_crc(&good),
            };
            n += 1;
            if !reply.is_empty() && slave.write_all(&reply).await.is_err() {
                break;
            }
        }
    });
    let opts = RtuBenchOptions {
        ranges: vec![RegRange {
            start: 0,
            count: 10,
        }],
        count: 10,
        timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let r = tokio::time::timeout(Duration::from_secs(10), bench_rtu(master, &opts))
        .await
        .expect("bounded")
        .expect("bench runs");
    let x = &r.ranges[0];
    assert_eq!(x.requests, 10);
    assert_eq!(x.ok, 6, "{x:?}");
    assert_eq!(x.exceptions, BTreeMap::from([(2u8, 1u64)]));
    assert_eq!(x.bad_crc, 1);
    assert_eq!(x.timeouts, 1);
    assert_eq!(x.bad_frame, 1);
    assert_eq!(x.turnaround.n, 6);
    assert_eq!(r.all.ok, 6);
    responder.abort();
}

/// The real binary's `bench rtu`, `bench age` and `bench push` against the in-process
/// gateway: the gateway serves one end of a pty pair, the binary opens the other end by
/// its `/dev/pts/N` path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_age_push_subcommands_json() {
    use airbridge::app::gateway::{Gateway, RtuPort};
    use airbridge_sim::ksem;
    use tokio_serial::SerialPort as _;
    use tokio_util::sync::CancellationToken;

    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let sim = ksem::start(ksem::KsemSimOptions::default(), cancel.clone())
        .await
        .expect("KSEM sim");
    let (gw_end, inv_end) = tokio_serial::SerialStream::pair().expect("pty pair");
    let device = inv_end.name().expect("the pty's slave end has a path");
    let cfg = airbridge_bench::e2e_config(sim.slave_addr(), 8).expect("config");
    let gateway = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
        .await
        .expect("gateway");
    let push = gateway.push_addr.expect("push listener").to_string();

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = common::airbridge_cmd()
                .args(&args)
                .env("RUST_LOG", "warn")
                .output()
                .expect("run airbridge");
            assert!(
                out.status.success(),
                "{args:?}: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON on stdout")
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Warm the image up (push regions are filled by pushes only).
    let v = run(s(&[
        "bench",
        "push",
        "--target",
        &push,
        "--duration",
        "500ms",
        "--connections",
        "2",
        "--json",
    ]))
    .await
    .unwrap();
    let rep = &v["report"];
    assert!(rep["writes_ok"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(rep["errors"].as_u64(), Some(0), "{v}");
    assert!(rep["latency"]["p99_9_us"].is_number());
    tokio::time::timeout(Duration::from_secs(10), gateway.handles.image.wait_warm())
        .await
        .expect("gateway warm");

    let v = run(s(&[
        "bench",
        "rtu",
        "--device",
        &device,
        "--count",
        "20",
        "--ranges",
        "0:74,74:74,8192:58",
        "--json",
    ]))
    .await
    .unwrap();
    assert_eq!(v["pty"], serde_json::json!(true), "{v}");
    assert!(v["note"].as_str().unwrap().contains("pseudo-terminal"));
    let all = &v["report"]["all"];
    assert_eq!(all["requests"].as_u64(), Some(60), "{v}");
    assert_eq!(all["ok"].as_u64(), Some(60), "{v}");
    assert_eq!(v["report"]["ranges"].as_array().unwrap().len(), 3);
    assert_eq!(v["theoretical_wire_time"].as_array().unwrap().len(), 3);

    let v = run(s(&[
        "bench",
        "age",
        "--device",
        &device,
        "--push-to",
        &push,
        "--duration",
        "1s",
        "--rate",
        "10",
        "--json",
    ]))
    .await
    .unwrap();
    let rep = &v["report"];
    assert!(rep["pushes_measured"].as_u64().unwrap() > 0, "{v}");
    assert!(rep["age"]["p50_us"].is_number());

    drop(inv_end);
    cancel.cancel();
    gateway.join(Duration::from_secs(2)).await;
}

/// Every subcommand's arguments parse into their types (clap checks these only at run time).
#[test]
fn cli_arguments_parse() {
    use airbridge_bench::{BenchCmd, PushRate};
    use clap::{CommandFactory as _, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: BenchCmd,
    }
    Cli::command().debug_assert();
    let parse = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .bench
    };
    match parse(&["push", "--target", "127.0.0.1:5020"]) {
        BenchCmd::Push(a) => {
            assert_eq!(a.rate, PushRate(None));
            assert_eq!(a.duration, Duration::from_secs(10));
            assert_eq!(a.connections, 1);
        }
        _ => unreachable!(),
    }
    match parse(&[
        "push",
        "--target",
        "h:1",
        "--rate",
        "5",
        "--connections",
        "4",
    ]) {
        BenchCmd::Push(a) => assert_eq!(a.rate, PushRate(Some(5.0))),
        _ => unreachable!(),
    }
    match parse(&["rtu", "--device", "/dev/pts/3"]) {
        BenchCmd::Rtu(a) => {
            assert_eq!(a.ranges.len(), 3);
            assert_eq!((a.count, a.baud, a.unit), (2000, 38400, 1));
            assert_eq!(a.timeout, Duration::from_millis(500));
            assert_eq!(a.rate, None);
        }
        _ => unreachable!(),
    }
    match parse(&["rtu", "--device", "x", "--rate", "50", "--ranges", "0:10"]) {
        BenchCmd::Rtu(a) => assert_eq!((a.rate, a.ranges.len()), (Some(50.0), 1)),
        _ => unreachable!(),
    }
    match parse(&["age", "--device", "x", "--push-to", "h:1"]) {
        BenchCmd::Age(a) => assert_eq!((a.rate, a.duration), (5.0, Duration::from_secs(10))),
        _ => unreachable!(),
    }
    match parse(&["e2e", "--count", "50", "--duration", "1s", "--json"]) {
        BenchCmd::E2e(a) => assert!(a.json && a.count == 50),
        _ => unreachable!(),
    }
    match parse(&["mqtt"]) {
        BenchCmd::Mqtt(a) => {
            assert_eq!((a.count, a.interval), (2000, Duration::from_millis(200)));
            assert_eq!(a.turnaround, Duration::from_micros(1750));
            assert!(a.gateway.is_none() && a.mosquitto.is_none() && !a.json);
        }
        _ => unreachable!(),
    }
    assert!(Cli::try_parse_from(["bench", "push", "--target", "h:1", "--rate", "0"]).is_err());
    assert!(Cli::try_parse_from([
        "bench",
        "age",
        "--device",
        "x",
        "--push-to",
        "h:1",
        "--rate",
        "max"
    ])
    .is_err());
}
