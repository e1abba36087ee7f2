//! Config schema tests: the shipped `gateway.yaml`, defaults, errors (with file, line and
//! key), warnings, sources, region order and the push allow-list.
//!
//! Test YAML is built from lines; the line an error or warning must point at is marked with
//! a trailing `#<` comment, and the expected line number is computed from that marker.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use airbridge::config::{self, ConfigError, Loaded, OnStale, Parity, PushConfig, Region, Sources};
use airbridge_modbus::timing::t35;

const ORIGIN: &str = "test.yaml";
const MARK: &str = "#<";

/// Lines joined into a YAML text.
fn yaml(parts: &[&[&str]]) -> String {
    let mut s = String::new();
    for part in parts {
        for l in *part {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// 1-based line of the single `#<` marker.
fn marked_line(text: &str) -> u64 {
    let marked: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(MARK))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        marked.len(),
        1,
        "exactly one {MARK} marker expected in:\n{text}"
    );
    marked[0] as u64
}

fn ok(text: &str) -> Loaded {
    config::parse(text, ORIGIN)
        .unwrap_or_else(|e| panic!("expected a usable config, got:\n{e}\n---\n{text}"))
}

const RTU: &[&str] = &["rtu:", "  device: /dev/ttyUSB0"];
const PUSH: &[&str] = &[
    "push:",
    "  listen: 0.0.0.0:5020",
    "  allow_from: [192.168.178.100]",
];
const POLL: &[&str] = &["poll:", "  host: 192.168.178.100:502"];
const REGIONS: &[&str] = &["regions:"];
const A_PUSH: &[&str] = &["  - {name: a, start: 0, count: 10, source: push}"];
const A_STATIC: &[&str] = &["  - {name: a, start: 0, count: 1, source: static, values: {0: 1}}"];

// ---------------------------------------------------------------------------------------
// (1) The shipped gateway.yaml.

fn region<'a>(regions: &'a [Region], name: &str) -> &'a Region {
    regions
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no region {name}"))
}

#[test]
fn gateway_yaml_effective_values() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let loaded = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded.warnings.is_empty(),
        "warnings: {:#?}",
        loaded.warnings
    );
    let c = loaded.config;

    let r = &c.rtu;
    assert_eq!(r.device, "/dev/ttyACM0");
    assert_eq!(r.baud, 38_400);
    assert_eq!(r.data_bits, 8);
    assert_eq!(r.parity, Parity::None);
    assert_eq!(r.stop_bits, 2);
    assert_eq!(r.bits_per_char(), 11);
    assert_eq!(r.unit_id, 1);
    assert_eq!(r.turnaround, Duration::from_micros(1750));
    assert_eq!(r.frame_timeout, Duration::from_millis(20));
    assert!(r.input_registers);

    let p = c.push.as_ref().expect("push section");
    assert_eq!(p.listen, "0.0.0.0:5020".parse().unwrap());
    assert_eq!(p.allow_from, vec!["192.168.178.100/32".parse().unwrap()]);
    assert_eq!(p.max_connections, 4);
    assert_eq!(p.idle_timeout, Duration::from_secs(60));

    let q = c.poll.as_ref().expect("poll section");
    assert_eq!(q.host, "192.168.178.100:502");
    assert_eq!(q.unit_id, 1);
    assert_eq!(q.timeout, Duration::from_secs(2));

    let names: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["totals", "phases", "energy", "identity", "spec_version"]
    );
    let push_only = Sources {
        push: true,
        ..Sources::default()
    };
    let poll_only = Sources {
        poll: true,
        ..Sources::default()
    };
    let both = Sources {
        push: true,
        poll: true,
        ..Sources::default()
    };
    let s = Duration::from_secs;
    // name, start, count, source, every, max_age, on_stale, fallback_poll
    let expected = [
        (
            "totals",
            0,
            40,
            push_only,
            None,
            s(2),
            OnStale::Silence,
            Some(s(1)),
        ),
        (
            "phases",
            40,
            108,
            push_only,
            None,
            s(2),
            OnStale::Silence,
            Some(s(1)),
        ),
        (
            "energy",
            512,
            280,
            both,
            Some(s(10)),
            s(300),
            OnStale::Serve,
            None,
        ),
        (
            "identity",
            8192,
            57,
            poll_only,
            Some(s(3600)),
            s(3 * 3600),
            OnStale::Serve,
            None,
        ),
    ];
    for (name, start, count, source, every, max_age, on_stale, fallback) in expected {
        let g = region(&c.regions, name);
        assert_eq!(g.start, start, "{name}.start");
        assert_eq!(g.count, count, "{name}.count");
        assert_eq!(g.source, source, "{name}.source");
        assert_eq!(g.every, every, "{name}.every");
        assert_eq!(g.max_age, max_age, "{name}.max_age");
        assert_eq!(g.on_stale, on_stale, "{name}.on_stale");
        assert_eq!(g.fallback_poll, fallback, "{name}.fallback_poll");
        assert!(g.values.is_empty(), "{name}.values");
    }
    let spec = region(&c.regions, "spec_version");
    assert_eq!((spec.start, spec.count), (8249, 1));
    assert!(spec.source.fixed);
    assert_eq!(spec.values.get(&8249), Some(&7));
    // The pushed groups 0..27 and 40..145 and the energy groups 512..551, 592..791 are served.
    let served = |a: u16| c.regions.iter().any(|r| r.contains(a));
    for a in [0, 27, 40, 145, 147, 512, 551, 592, 791, 8244, 8249] {
        assert!(served(a), "register {a} not served");
    }
    for a in [148, 511, 792, 8191, 8250] {
        assert!(!served(a), "register {a} served");
    }
}

// ---------------------------------------------------------------------------------------
// (2) Defaults.

#[test]
fn defaults_when_keys_are_left_out() {
    let text = yaml(&[
        RTU,
        &[
            "push:",
            "  listen: 0.0.0.0:5020",
            "  allow_from: [192.168.178.100]",
        ],
        POLL,
        REGIONS,
        &[
            "  - {name: p, start: 0, count: 10, source: push}",
            "  - {name: q, start: 100, count: 10, source: poll, every: 10s}",
            "  - {name: b, start: 300, count: 10, source: [push, poll], every: 2s}",
            "  - {name: s, start: 200, count: 2, source: static, values: {200: 7}}",
        ],
    ]);
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = loaded.config;

    let r = &c.rtu;
    assert_eq!(r.baud, 38_400);
    assert_eq!(r.data_bits, 8);
    assert_eq!(r.parity, Parity::None);
    assert_eq!(r.stop_bits, 2);
    assert_eq!(r.unit_id, 1);
    assert_eq!(r.turnaround, Duration::from_micros(1750));
    assert_eq!(r.frame_timeout, Duration::from_millis(20));
    assert!(r.input_registers);

    let p = c.push.unwrap();
    assert_eq!(p.max_connections, 4);
    assert_eq!(p.idle_timeout, Duration::from_secs(60));
    let q = c.poll.unwrap();
    assert_eq!(q.unit_id, 1);
    assert_eq!(q.timeout, Duration::from_secs(2));

    let g = region(&c.regions, "p");
    assert_eq!(
        (g.every, g.max_age, g.on_stale, g.fallback_poll),
        (None, Duration::from_secs(2), OnStale::Silence, None)
    );
    let g = region(&c.regions, "q");
    assert_eq!(
        (g.every, g.max_age, g.on_stale),
        (
            Some(Duration::from_secs(10)),
            Duration::from_secs(30),
            OnStale::Serve
        )
    );
    // [push, poll] ages like a polled region.
    let g = region(&c.regions, "b");
    assert_eq!(
        (g.max_age, g.on_stale),
        (Duration::from_secs(6), OnStale::Serve)
    );
    // A static region never ages.
    let g = region(&c.regions, "s");
    assert_eq!((g.max_age, g.on_stale), (Duration::MAX, OnStale::Serve));
    assert_eq!(g.values, BTreeMap::from([(200, 7)]));
}

#[test]
fn stop_bits_and_t35_defaults() {
    // baud, parity, stop_bits written, expected stop bits, expected turnaround
    let ns = Duration::from_nanos;
    let cases: &[(u32, &str, Option<u8>, u8, Duration)] = &[
        // 9600 8N1: 3.5 chars × 10 bits / 9600 baud = 3.6458 ms
        (9600, "none", Some(1), 1, ns(3_645_833)),
        // 9600 8N2 (the default without parity): 11 bits
        (9600, "none", None, 2, ns(4_010_416)),
        // 9600 8E1 (the default with parity): 11 bits
        (9600, "even", None, 1, ns(4_010_416)),
        (9600, "odd", None, 1, ns(4_010_416)),
        (9600, "even", Some(2), 2, ns(4_375_000)),
        // 19200 is not "above 19200": still the formula
        (19_200, "none", Some(1), 1, ns(1_822_916)),
        // above 19200: fixed 1750 us, whatever the framing
        (38_400, "none", Some(2), 2, Duration::from_micros(1750)),
        (38_400, "none", None, 2, Duration::from_micros(1750)),
        (115_200, "even", None, 1, Duration::from_micros(1750)),
    ];
    for &(baud, parity, stop, want_stop, want_t35) in cases {
        let mut rtu = vec![
            "rtu:".to_string(),
            "  device: /dev/ttyUSB0".to_string(),
            format!("  baud: {baud}"),
            format!("  parity: {parity}"),
        ];
        if let Some(s) = stop {
            rtu.push(format!("  stop_bits: {s}"));
        }
        let rtu: Vec<&str> = rtu.iter().map(String::as_str).collect();
        let text = yaml(&[&rtu, REGIONS, A_STATIC]);
        let loaded = ok(&text);
        let r = &loaded.config.rtu;
        let what = format!("{baud} {parity} stop_bits {stop:?}");
        assert_eq!(r.stop_bits, want_stop, "{what}: stop_bits");
        assert_eq!(r.turnaround, want_t35, "{what}: turnaround");
        assert_eq!(t35(baud, r.bits_per_char()), want_t35, "{what}: t35()");
        assert!(loaded.warnings.is_empty(), "{what}: {:#?}", loaded.warnings);
    }
    // The 9600 8N1 value of the issue: ≈ 3.646 ms.
    let t = t35(9600, 10).as_secs_f64() * 1e3;
    assert!((t - 3.646).abs() < 0.001, "{t}");
}

#[test]
fn durations_in_all_units() {
    let cases = [
        ("1750us", Duration::from_micros(1750)),
        ("200ms", Duration::from_millis(200)),
        ("2s", Duration::from_secs(2)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
    ];
    for (text, want) in cases {
        assert_eq!(config::parse_duration(text), Ok(want), "{text}");
        let region = format!(
            "  - {{name: q, start: 0, count: 1, source: poll, every: {text}, max_age: 2h}}"
        );
        let loaded = ok(&yaml(&[RTU, POLL, REGIONS, &[&region]]));
        assert_eq!(loaded.config.regions[0].every, Some(want), "{text}");
    }
    assert_eq!(config::parse_duration("0"), Ok(Duration::ZERO));
    // `0` (unitless) is a valid turnaround: answer at once (warned, below t3.5).
    let loaded = ok(&yaml(&[RTU, &["  turnaround: 0"], REGIONS, A_STATIC]));
    assert_eq!(loaded.config.rtu.turnaround, Duration::ZERO);
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
}

// ---------------------------------------------------------------------------------------
// (3) Errors.

/// name, YAML lines (one marked `#<`), text the key shows as, text of what is wrong
type ErrCase = (&'static str, Vec<&'static str>, &'static str, &'static str);

fn lines(parts: &[&[&'static str]]) -> Vec<&'static str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn error_cases() -> Vec<ErrCase> {
    vec![
        (
            "unknown top-level key",
            lines(&[RTU, &["bogus: 1  #<"], REGIONS, A_STATIC]),
            "bogus",
            "unknown field",
        ),
        (
            "unknown key in rtu",
            lines(&[RTU, &["  speed: 9600  #<"], REGIONS, A_STATIC]),
            "speed",
            "unknown field",
        ),
        (
            "unknown key in push",
            lines(&[RTU, PUSH, &["  allow: [10.0.0.1]  #<"], REGIONS, A_PUSH]),
            "allow",
            "unknown field",
        ),
        (
            "unknown key in poll",
            lines(&[RTU, POLL, &["  interval: 1s  #<"], REGIONS, A_STATIC]),
            "interval",
            "unknown field",
        ),
        (
            "unknown key in a region",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: poll, every: 1s, maxage: 2s}  #<"],
            ]),
            "maxage",
            "unknown field",
        ),
        (
            "unknown key in a block region",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: poll",
                    "    evry: 1s  #<",
                ],
            ]),
            "evry",
            "unknown field",
        ),
        (
            "bad duration unit",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: poll, every: 10x}  #<"],
            ]),
            "regions[0] (a).every",
            "not a duration",
        ),
        (
            "duration number without unit",
            lines(&[RTU, &["  frame_timeout: 5  #<"], REGIONS, A_STATIC]),
            "rtu.frame_timeout",
            "has no unit",
        ),
        (
            "quoted duration number without unit",
            lines(&[RTU, PUSH, &["  idle_timeout: '5'  #<"], REGIONS, A_PUSH]),
            "push.idle_timeout",
            "not a duration",
        ),
        (
            "zero every",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: poll, every: 0}  #<"],
            ]),
            "regions[0] (a).every",
            "greater than 0",
        ),
        (
            "zero frame_timeout",
            lines(&[RTU, &["  frame_timeout: 0ms  #<"], REGIONS, A_STATIC]),
            "rtu.frame_timeout",
            "greater than 0",
        ),
        (
            "zero idle_timeout",
            lines(&[RTU, PUSH, &["  idle_timeout: 0  #<"], REGIONS, A_PUSH]),
            "push.idle_timeout",
            "greater than 0",
        ),
        (
            "bad poll timeout",
            lines(&[RTU, POLL, &["  timeout: 2 s x  #<"], REGIONS, A_STATIC]),
            "poll.timeout",
            "not a duration",
        ),
        (
            "turnaround over 1s",
            lines(&[RTU, &["  turnaround: 2s  #<"], REGIONS, A_STATIC]),
            "rtu.turnaround",
            "more than 1s",
        ),
        (
            "overlapping regions",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - {name: a, start: 0, count: 10, source: push}",
                    "  - {name: b, start: 20, count: 5, source: push}",
                    "  - {name: c, start: 9, count: 2, source: push}  #<",
                ],
            ]),
            "regions[2] (c).start",
            "overlaps region `a`",
        ),
        (
            "region inside another",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - {name: a, start: 100, count: 1, source: push}",
                    "  - {name: b, start: 0, count: 1000, source: push}  #<",
                ],
            ]),
            "regions[1] (b).start",
            "overlaps region `a`",
        ),
        (
            "duplicate region names",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - {name: a, start: 0, count: 10, source: push}",
                    "  - {name: a, start: 10, count: 10, source: push}  #<",
                ],
            ]),
            "regions[1] (a).name",
            "used twice",
        ),
        (
            "empty region name",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: '', start: 0, count: 10, source: push}  #<"],
            ]),
            "regions[0].name",
            "must not be empty",
        ),
        (
            "count 0",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 0  #<",
                    "    source: push",
                ],
            ]),
            "regions[0] (a).count",
            "at least 1",
        ),
        (
            "region past 65535",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 65500",
                    "    count: 37  #<",
                    "    source: push",
                ],
            ]),
            "regions[0] (a).count",
            "past register 65535",
        ),
        (
            "unknown source",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: pull  #<",
                ],
            ]),
            "regions[0] (a).source",
            "unknown source `pull`",
        ),
        (
            "empty source list",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: []}  #<"],
            ]),
            "regions[0] (a).source",
            "empty",
        ),
        (
            "static combined with push",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: [static, push], values: {0: 1}}  #<"],
            ]),
            "regions[0] (a).source",
            "static cannot be combined",
        ),
        (
            "static without values",
            lines(&[
                RTU,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: static}  #<"],
            ]),
            "regions[0] (a).values",
            "needs `values`",
        ),
        (
            "values outside the region",
            lines(&[
                RTU,
                REGIONS,
                &[
                    "  - name: id",
                    "    start: 8192",
                    "    count: 58",
                    "    source: static",
                    "    values: {8244: 200, 8250: 1}  #<",
                ],
            ]),
            "regions[0] (id).values",
            "address 8250 lies outside the region 8192..8249",
        ),
        (
            "values below the region",
            lines(&[
                RTU,
                REGIONS,
                &[
                    "  - name: id",
                    "    start: 8192",
                    "    count: 58",
                    "    source: static",
                    // a block mapping is spanned from its first entry
                    "    values:",
                    "      8191: 1  #<",
                ],
            ]),
            "regions[0] (id).values",
            "address 8191 lies outside",
        ),
        (
            "values on a push region",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: push, values: {0: 1}}  #<"],
            ]),
            "regions[0] (a).values",
            "only static regions",
        ),
        (
            "push region without push section",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: push  #<",
                ],
            ]),
            "regions[0] (a).source",
            "no `push:` section",
        ),
        (
            "[push, poll] region without poll section",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: [push, poll], every: 1s}  #<"],
            ]),
            "regions[0] (a).source",
            "no `poll:` section",
        ),
        (
            "poll region without poll section",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: poll, every: 1s}  #<"],
            ]),
            "regions[0] (a).source",
            "no `poll:` section",
        ),
        (
            "poll region without every",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &[
                    "  - name: a  #<",
                    "    start: 0",
                    "    count: 1",
                    "    source: poll",
                ],
            ]),
            "regions[0] (a).every",
            "needs `every`",
        ),
        (
            "every on a push region",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: push",
                    "    every: 1s  #<",
                ],
            ]),
            "regions[0] (a).every",
            "only polled regions",
        ),
        (
            "fallback_poll on a poll region",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: poll",
                    "    every: 1s",
                    "    fallback_poll: 1s  #<",
                ],
            ]),
            "regions[0] (a).fallback_poll",
            "push alone",
        ),
        (
            "fallback_poll on a [push, poll] region",
            lines(&[
                RTU,
                PUSH,
                POLL,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: [push, poll], every: 1s, fallback_poll: 1s}  #<"],
            ]),
            "regions[0] (a).fallback_poll",
            "push alone",
        ),
        (
            "fallback_poll without poll section",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: push",
                    "    fallback_poll: 1s  #<",
                ],
            ]),
            "regions[0] (a).fallback_poll",
            "needs a `poll:` section",
        ),
        (
            "listen without port",
            lines(&[
                RTU,
                &[
                    "push:",
                    "  listen: 0.0.0.0  #<",
                    "  allow_from: [192.168.178.100]",
                ],
                REGIONS,
                A_PUSH,
            ]),
            "push.listen",
            "not ADDRESS:PORT",
        ),
        (
            "listen with a host name",
            lines(&[RTU, &["push:", "  listen: localhost:5020  #<"], REGIONS, A_PUSH]),
            "push.listen",
            "not ADDRESS:PORT",
        ),
        (
            "bad allow_from address",
            lines(&[
                RTU,
                &[
                    "push:",
                    "  listen: 0.0.0.0:5020",
                    "  allow_from:",
                    "    - 192.168.178.100",
                    "    - 192.168.178.300  #<",
                ],
                REGIONS,
                A_PUSH,
            ]),
            "push.allow_from",
            "`192.168.178.300` is neither",
        ),
        (
            "bad allow_from prefix length",
            lines(&[
                RTU,
                &[
                    "push:",
                    "  listen: 0.0.0.0:5020",
                    "  allow_from: [10.0.0.0/33]  #<",
                ],
                REGIONS,
                A_PUSH,
            ]),
            "push.allow_from",
            "neither an IP address nor a CIDR",
        ),
        (
            "poll host without port",
            lines(&[RTU, &["poll:", "  host: 192.168.178.100  #<"], REGIONS, A_STATIC]),
            "poll.host",
            "not HOST:PORT",
        ),
        (
            "poll host with port 0",
            lines(&[RTU, &["poll:", "  host: ksem.local:0  #<"], REGIONS, A_STATIC]),
            "poll.host",
            "not HOST:PORT",
        ),
        (
            "poll host: bare IPv6 address",
            lines(&[RTU, &["poll:", "  host: 'fd00::1'  #<"], REGIONS, A_STATIC]),
            "poll.host",
            "not HOST:PORT",
        ),
        (
            "rtu unit_id 0",
            lines(&[RTU, &["  unit_id: 0  #<"], REGIONS, A_STATIC]),
            "rtu.unit_id",
            "1..247",
        ),
        (
            "rtu unit_id 248",
            lines(&[RTU, &["  unit_id: 248  #<"], REGIONS, A_STATIC]),
            "rtu.unit_id",
            "1..247",
        ),
        (
            "baud 0",
            lines(&[RTU, &["  baud: 0  #<"], REGIONS, A_STATIC]),
            "rtu.baud",
            "not a usable baud rate",
        ),
        (
            "data_bits 9",
            lines(&[RTU, &["  data_bits: 9  #<"], REGIONS, A_STATIC]),
            "rtu.data_bits",
            "8 data bits",
        ),
        (
            "data_bits 7 (ASCII framing, not RTU)",
            lines(&[RTU, &["  data_bits: 7  #<"], REGIONS, A_STATIC]),
            "rtu.data_bits",
            "8 data bits",
        ),
        (
            "negative duration",
            lines(&[RTU, &["  frame_timeout: -5  #<"], REGIONS, A_STATIC]),
            "rtu.frame_timeout",
            "negative",
        ),
        (
            "fractional duration without unit",
            lines(&[RTU, &["  frame_timeout: 1.5  #<"], REGIONS, A_STATIC]),
            "rtu.frame_timeout",
            "whole numbers with a unit",
        ),
        (
            "source listed twice",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: [push, push]}  #<"],
            ]),
            "source",
            "listed twice",
        ),
        (
            "stop_bits 3",
            lines(&[RTU, &["  stop_bits: 3  #<"], REGIONS, A_STATIC]),
            "rtu.stop_bits",
            "1 or 2",
        ),
        (
            "empty device",
            lines(&[
                &["rtu:", "  baud: 9600", "  device: ''  #<"],
                REGIONS,
                A_STATIC,
            ]),
            "rtu.device",
            "must name a serial device",
        ),
        (
            "max_connections 0",
            lines(&[RTU, PUSH, &["  max_connections: 0  #<"], REGIONS, A_PUSH]),
            "push.max_connections",
            "1..1024",
        ),
        (
            "empty regions",
            lines(&[RTU, &["regions: []  #<"]]),
            "regions",
            "at least one region",
        ),
        (
            "YAML syntax error",
            lines(&[RTU, &["  baud: 9600: 1  #<"], REGIONS, A_STATIC]),
            "baud",
            "mapping values are not allowed",
        ),
        (
            "wrong type: count abc",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: abc  #<",
                    "    source: push",
                ],
            ]),
            "count",
            "from 0 to 65535",
        ),
        (
            "wrong type: unit_id 256",
            lines(&[RTU, &["  unit_id: 256  #<"], REGIONS, A_STATIC]),
            "unit_id",
            "from 0 to 255",
        ),
        (
            "unknown parity",
            lines(&[RTU, &["  parity: evn  #<"], REGIONS, A_STATIC]),
            "parity",
            "unknown variant `evn`",
        ),
        (
            "unknown on_stale",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: push, on_stale: stale}  #<"],
            ]),
            "on_stale",
            "unknown variant `stale`",
        ),
    ]
}

#[test]
fn errors_name_file_line_key_and_problem() {
    let cases = error_cases();
    assert!(cases.len() >= 20);
    let mut names = std::collections::HashSet::new();
    for (name, ls, key, what) in cases {
        assert!(names.insert(name), "duplicate case name {name}");
        let text = yaml(&[&ls]);
        let want_line = marked_line(&text);
        let e = match config::parse(&text, ORIGIN) {
            Ok(_) => panic!("{name}: expected an error for\n{text}"),
            Err(e) => e,
        };
        let msg = e.to_string();
        let ctx = format!("{name}: message\n{msg}\n--- for\n{text}");
        assert!(msg.starts_with(ORIGIN), "{ctx}");
        assert!(
            msg.contains(&format!("{ORIGIN}:{want_line}:")),
            "{ctx}\n(wanted line {want_line})"
        );
        assert!(msg.contains(key), "{ctx}\n(wanted key {key})");
        assert!(msg.contains(what), "{ctx}\n(wanted {what:?})");
        match e {
            ConfigError::Invalid {
                path, line, key: k, ..
            } => {
                assert_eq!(path, ORIGIN, "{ctx}");
                assert_eq!(line, want_line, "{ctx}");
                assert!(k.contains(key), "{ctx}");
            }
            ConfigError::Parse { path, .. } => assert_eq!(path, ORIGIN, "{ctx}"),
            ConfigError::Read { .. } => panic!("{ctx}"),
        }
    }
}

#[test]
fn missing_file_is_a_read_error() {
    let e = config::load(Path::new("/nonexistent/airbridge/gateway.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/airbridge/gateway.yaml"), "{msg}");
    assert!(msg.contains("cannot read"), "{msg}");
}

#[test]
fn empty_file_is_an_error() {
    let e = config::parse("", ORIGIN).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// (4) Warnings.

/// name, YAML lines (the warned line marked `#<`), key, text of the warning
type WarnCase = (&'static str, Vec<&'static str>, &'static str, &'static str);

fn warning_cases() -> Vec<WarnCase> {
    vec![
        (
            // Sections are spanned from their first key, so this points at `listen`.
            "allow_from left out",
            lines(&[RTU, &["push:", "  listen: 0.0.0.0:5020  #<"], REGIONS, A_PUSH]),
            "push.allow_from",
            "empty: any host",
        ),
        (
            "allow_from empty list",
            lines(&[
                RTU,
                &["push:", "  listen: 0.0.0.0:5020  #<", "  allow_from: []"],
                REGIONS,
                A_PUSH,
            ]),
            "push.allow_from",
            "empty: any host",
        ),
        (
            "turnaround shorter than t3.5 at 9600",
            lines(&[
                RTU,
                &["  baud: 9600", "  turnaround: 3ms  #<"],
                REGIONS,
                A_STATIC,
            ]),
            "rtu.turnaround",
            "shorter than t3.5",
        ),
        (
            "turnaround shorter than 1750us above 19200",
            lines(&[RTU, &["  turnaround: 1ms  #<"], REGIONS, A_STATIC]),
            "rtu.turnaround",
            "shorter than t3.5",
        ),
        (
            "frame_timeout shorter than t3.5",
            lines(&[
                RTU,
                &["  baud: 1200", "  frame_timeout: 10ms  #<"],
                REGIONS,
                A_STATIC,
            ]),
            "rtu.frame_timeout",
            "shorter than t3.5",
        ),
        (
            "push region served stale",
            lines(&[
                RTU,
                PUSH,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: push, on_stale: serve}  #<"],
            ]),
            "regions[0] (a).on_stale",
            "fed old numbers",
        ),
        (
            "max_age shorter than every",
            lines(&[
                RTU,
                POLL,
                REGIONS,
                &[
                    "  - name: a",
                    "    start: 0",
                    "    count: 1",
                    "    source: poll",
                    "    every: 10s",
                    "    max_age: 5s  #<",
                ],
            ]),
            "regions[0] (a).max_age",
            "shorter than the poll interval",
        ),
        (
            "push section without push region",
            lines(&[
                RTU,
                &[
                    "push:",
                    "  listen: 0.0.0.0:5020  #<",
                    "  allow_from: [192.168.178.100]",
                ],
                REGIONS,
                A_STATIC,
            ]),
            "push",
            "no region takes pushes",
        ),
        (
            "poll section without polled region",
            lines(&[RTU, &["poll:", "  host: ksem:502  #<"], REGIONS, A_STATIC]),
            "poll",
            "no region is polled",
        ),
        (
            "fallback_poll longer than max_age",
            lines(&[
                RTU,
                PUSH,
                POLL,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: push, fallback_poll: 5s}  #<"],
            ]),
            "regions[0] (a).fallback_poll",
            "longer than max_age",
        ),
        (
            "max_age on a static region",
            lines(&[
                RTU,
                REGIONS,
                &["  - {name: a, start: 0, count: 1, source: static, values: {0: 1}, max_age: 1s}  #<"],
            ]),
            "regions[0] (a).max_age",
            "never ages",
        ),
    ]
}

#[test]
fn warnings_name_file_line_key() {
    for (name, ls, key, what) in warning_cases() {
        let text = yaml(&[&ls]);
        let want = format!("{ORIGIN}:{}: {key}: ", marked_line(&text));
        let loaded = ok(&text);
        let ctx = format!("{name}: warnings {:#?}\n--- for\n{text}", loaded.warnings);
        assert_eq!(loaded.warnings.len(), 1, "{ctx}");
        let w = &loaded.warnings[0];
        assert!(w.starts_with(&want), "{ctx}\n(wanted prefix {want:?})");
        assert!(w.contains(what), "{ctx}\n(wanted {what:?})");
    }
}

#[test]
fn warned_values_are_still_used() {
    let text = yaml(&[
        RTU,
        &["  baud: 9600", "  turnaround: 3ms"],
        PUSH,
        POLL,
        REGIONS,
        &[
            "  - {name: a, start: 0, count: 1, source: push, on_stale: serve}",
            "  - {name: b, start: 1, count: 1, source: poll, every: 10s, max_age: 5s}",
            "  - {name: s, start: 2, count: 1, source: static, values: {2: 1}, max_age: 1s}",
        ],
    ]);
    let loaded = ok(&text);
    assert_eq!(loaded.warnings.len(), 4, "{:#?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.rtu.turnaround, Duration::from_millis(3));
    assert_eq!(region(&c.regions, "a").on_stale, OnStale::Serve);
    assert_eq!(region(&c.regions, "b").max_age, Duration::from_secs(5));
    assert_eq!(region(&c.regions, "s").max_age, Duration::MAX);
}

// ---------------------------------------------------------------------------------------
// Sources, region order, the allow-list.

#[test]
fn source_combinations() {
    let cases: &[(&str, Sources, &str)] = &[
        (
            "push",
            Sources {
                push: true,
                ..Sources::default()
            },
            "push",
        ),
        (
            "[push]",
            Sources {
                push: true,
                ..Sources::default()
            },
            "push",
        ),
        (
            "poll",
            Sources {
                poll: true,
                ..Sources::default()
            },
            "poll",
        ),
        (
            "[push, poll]",
            Sources {
                push: true,
                poll: true,
                ..Sources::default()
            },
            "[push, poll]",
        ),
        (
            "[poll, push]",
            Sources {
                push: true,
                poll: true,
                ..Sources::default()
            },
            "[push, poll]",
        ),
        (
            "static",
            Sources {
                fixed: true,
                ..Sources::default()
            },
            "static",
        ),
    ];
    for &(source, want, shown) in cases {
        let mut region = format!("  - {{name: a, start: 0, count: 1, source: {source}");
        if want.poll {
            region.push_str(", every: 1s");
        }
        if want.fixed {
            region.push_str(", values: {0: 1}");
        }
        region.push('}');
        let loaded = ok(&yaml(&[RTU, PUSH, POLL, REGIONS, &[&region]]));
        let got = loaded.config.regions[0].source;
        assert_eq!(got, want, "{source}");
        assert_eq!(got.to_string(), shown, "{source}");
    }
}

#[test]
fn regions_come_back_sorted_by_start() {
    let text = yaml(&[
        RTU,
        PUSH,
        POLL,
        REGIONS,
        &[
            "  - {name: d, start: 9000, count: 1, source: static, values: {9000: 1}}",
            "  - {name: b, start: 100, count: 100, source: poll, every: 1s}",
            "  - {name: c, start: 200, count: 1, source: push}",
            "  - {name: a, start: 0, count: 100, source: push}",
            "  - {name: e, start: 65535, count: 1, source: push}",
        ],
    ]);
    let c = ok(&text).config;
    let got: Vec<(&str, u16)> = c
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.start))
        .collect();
    assert_eq!(
        got,
        [("a", 0), ("b", 100), ("c", 200), ("d", 9000), ("e", 65535)]
    );
    // Adjacent regions touch but do not overlap; the last one ends at 65535.
    let e = region(&c.regions, "e");
    assert_eq!(e.end(), 65_536);
    assert!(e.contains(65535) && !e.contains(65534));
    let a = region(&c.regions, "a");
    assert!(a.contains(0) && a.contains(99) && !a.contains(100));
    // describe() lists them in the same order.
    let d = c.describe();
    let pos: Vec<usize> = ["  a ", "  b ", "  c ", "  d ", "  e "]
        .iter()
        .map(|n| d.find(n).unwrap_or_else(|| panic!("{n:?} in\n{d}")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{d}");
}

fn push_with(allow: &[&str]) -> PushConfig {
    PushConfig {
        listen: "0.0.0.0:5020".parse().unwrap(),
        allow_from: allow.iter().map(|a| a.parse().unwrap()).collect(),
        max_connections: 4,
        idle_timeout: Duration::from_secs(60),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn allow_from_matching() {
    // From a config: a plain address and a CIDR.
    let text = yaml(&[
        RTU,
        &[
            "push:",
            "  listen: '[::]:5020'",
            "  allow_from: [192.168.178.100, 10.1.0.0/16, 'fd00::/8']",
        ],
        REGIONS,
        A_PUSH,
    ]);
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let p = loaded.config.push.unwrap();
    assert_eq!(p.listen, "[::]:5020".parse().unwrap());

    let cases = [
        ("192.168.178.100", true),
        ("192.168.178.101", false),
        ("10.1.0.1", true),
        ("10.1.255.255", true),
        ("10.2.0.1", false),
        // dual-stack listeners see IPv4 peers as IPv4-mapped IPv6
        ("::ffff:192.168.178.100", true),
        ("::ffff:192.168.178.101", false),
        ("::ffff:10.1.2.3", true),
        ("fd12::1", true),
        ("2001:db8::1", false),
        ("::1", false),
    ];
    for (addr, want) in cases {
        assert_eq!(p.allows(ip(addr)), want, "{addr}");
    }

    // An empty list lets anyone in.
    let open = push_with(&[]);
    for addr in [
        "192.168.178.100",
        "8.8.8.8",
        "::ffff:1.2.3.4",
        "2001:db8::1",
    ] {
        assert!(open.allows(ip(addr)), "{addr}");
    }
    // A single /32.
    let one = push_with(&["192.168.178.100/32"]);
    assert!(one.allows(ip("::ffff:192.168.178.100")));
    assert!(!one.allows(ip("192.168.178.99")));
}

#[test]
fn poll_host_forms() {
    for host in [
        "192.168.178.100:502",
        "ksem.fritz.box:502",
        "'[fd00::1]:502'",
        "'[::1]:8502'",
    ] {
        let poll = format!("  host: {host}");
        let text = yaml(&[
            RTU,
            &["poll:", &poll],
            REGIONS,
            &["  - {name: q, start: 0, count: 1, source: poll, every: 1s}"],
        ]);
        let c = ok(&text).config;
        assert_eq!(c.poll.unwrap().host, host.trim_matches('\''), "{host}");
    }
}

#[test]
fn frame_timeout_default_is_never_shorter_than_t35() {
    let slow = ok(&yaml(&[
        &["rtu:", "  device: /dev/ttyUSB0", "  baud: 1200"],
        REGIONS,
        A_STATIC,
    ]));
    // t3.5 at 1200 8N2 = 3.5 × 11 bits / 1200 baud ≈ 32.08 ms.
    assert_eq!(slow.config.rtu.frame_timeout, slow.config.rtu.turnaround);
    assert!(slow.config.rtu.frame_timeout > std::time::Duration::from_millis(32));
    let fast = ok(&yaml(&[RTU, REGIONS, A_STATIC]));
    assert_eq!(
        fast.config.rtu.frame_timeout,
        std::time::Duration::from_millis(20)
    );
}

#[test]
fn ipv4_mapped_allow_entries_match_ipv4_peers() {
    let l = ok(&yaml(&[
        RTU,
        &[
            "push:",
            "  listen: 0.0.0.0:5020",
            "  allow_from: ['::ffff:192.168.178.100']",
        ],
        REGIONS,
        A_PUSH,
    ]));
    let push = l.config.push.expect("push");
    assert!(push.allows("192.168.178.100".parse().expect("ip")));
    assert!(push.allows("::ffff:192.168.178.100".parse().expect("ip")));
    assert!(!push.allows("192.168.178.101".parse().expect("ip")));
}

#[test]
fn profile_is_resolved_next_to_the_config_and_must_load() {
    let dir = std::env::temp_dir().join(format!("airbridge-profile-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("profiles")).expect("temp dir");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"))
        .expect("gateway.yaml");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, &text).expect("write config");
    // The profile is missing next to the config: the config is unusable, at the key's line.
    let err = config::load(&cfg).expect_err("profile missing").to_string();
    let line = text
        .lines()
        .position(|l| l.starts_with("profile:"))
        .expect("gateway.yaml names a profile")
        + 1;
    assert!(
        err.contains(&format!("gateway.yaml:{line}: profile: ")),
        "{err}"
    );
    assert!(
        err.contains("does not exist") && err.contains("copy the profiles/ directory"),
        "{err}"
    );
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/ksem-g2.yaml"),
        dir.join("profiles/ksem-g2.yaml"),
    )
    .expect("copy profile");
    let loaded = config::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let profile = loaded.config.profile.expect("profile");
    assert_eq!(profile.path, dir.join("profiles/ksem-g2.yaml"));
    assert_eq!(profile.line as usize, line);
    let _ = std::fs::remove_dir_all(&dir);
}
