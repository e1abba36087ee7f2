//! KSTAR config: `rtu_poll`, `tcp_server`, `writable`, region `function`, the optional `rtu:`
//! section, and `airbridge check` against the profile (errors name file and line).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use airbridge::config::{self, OnStale, Table, WritableTarget};

use common::profile;

/// The issue's example config, with the profile as an absolute path.
fn example(writable: &str) -> String {
    format!(
        "profile: '{}'
rtu_poll:
  device: /dev/ttyUSB0
  baud: 9600
  parity: none
  stop_bits: 1
  unit_id: 1
  timeout: 500ms
  gap: 20ms
tcp_server:
  listen: 0.0.0.0:502
  allow_from: [192.168.178.0/24]
  unit_id: 1
regions:
  - {{name: live,     start: 3000, count: 125, function: input,   source: rtu_poll, every: 2s,  max_age: 10s, on_stale: exception}}
  - {{name: settings, start: 3125, count: 125, function: input,   source: rtu_poll, every: 30s, max_age: 5m,  on_stale: serve}}
  - {{name: model,    start: 3200, count: 38,  function: holding, source: rtu_poll, every: 1h}}
writable: {writable}
",
        profile("kstar-hybrid.yaml").display()
    )
}

/// A temp file, removed on drop.
struct Temp(PathBuf);
impl Temp {
    fn new(text: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "airbridge-kstar-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, text).expect("write temp config");
        Temp(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_issue_example_is_usable() {
    let t = Temp::new(&example("[3044, 3086, 3200, 3272, 3273]"));
    let loaded = config::load(t.path()).unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    assert!(!c.rtu_slave, "no rtu: section, no RTU slave");
    let p = c.rtu_poll.as_ref().expect("rtu_poll");
    assert_eq!(
        (p.baud, p.stop_bits, p.unit_id, p.timeout, p.gap),
        (
            9600,
            1,
            1,
            Duration::from_millis(500),
            Duration::from_millis(20)
        )
    );
    let t = c.tcp_server.as_ref().expect("tcp_server");
    assert_eq!(t.listen.port(), 502);
    assert!(t.allows("192.168.178.20".parse().unwrap()));
    assert!(!t.allows("10.0.0.1".parse().unwrap()));
    let model = c.regions.iter().find(|r| r.name == "model").unwrap();
    assert_eq!(model.table, Some(Table::Holding));
    assert!(model.source.rtu_poll);
    // RTU-polled defaults: 3 × every, exception (0B over TCP).
    assert_eq!(model.max_age, Duration::from_secs(3 * 3600));
    assert_eq!(model.on_stale, OnStale::Exception);
    assert_eq!(c.writable.len(), 5);
    assert_eq!(c.writable[2].target, WritableTarget::Address(3200));
    let d = c.describe();
    assert!(d.contains("rtu: none"), "{d}");
    assert!(d.contains("rtu_poll: /dev/ttyUSB0 9600 8N1 unit 1"), "{d}");
    assert!(
        d.contains("writable: [3044, 3086, 3200, 3272, 3273]"),
        "{d}"
    );
}

/// Line of the `writable:` entry (the example's last line).
fn last_line(text: &str) -> usize {
    text.lines().count()
}

#[test]
fn writable_entries_are_checked_against_the_profile() {
    for (list, want) in [
        (
            "[3044, 3045]",
            "3045 (inverter_model) is read-only in the profile",
        ),
        ("[100]", "100 is not a register of the profile"),
        ("[3241, inverter_model]", "inverter_model is read-only"),
        ("[no_such_register]", "no register named `no_such_register`"),
        ("[3240, 3244]", "3244 lies inside"),
    ] {
        let text = example(list);
        let t = Temp::new(&text);
        let e = config::load(t.path()).expect_err(list).to_string();
        let at = format!("{}:{}: writable: ", t.path().display(), last_line(&text));
        assert!(e.starts_with(&at), "{list}: {e}");
        assert!(e.contains(want), "{list}: {e}");
    }
    // Commands and FC16 blocks may be listed on purpose, by address or name.
    let t = Temp::new(&example("[3241, clock_set, 3079]"));
    config::load(t.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn region_tables_must_exist_in_the_profile() {
    // 04H 3000.. is input; as holding it has no registers.
    let text = example("[3044]").replace(
        "start: 3000, count: 125, function: input",
        "start: 3000, count: 125, function: holding",
    );
    let t = Temp::new(&text);
    let e = config::load(t.path())
        .expect_err("holding 3000")
        .to_string();
    assert!(
        e.contains(":15: regions (live).function: ")
            && e.contains("no holding registers in 3000..3124"),
        "{e}"
    );
    assert!(e.contains("the profile has input registers there"), "{e}");
}

fn parse_err(text: &str) -> String {
    config::parse(text, "k.yaml")
        .expect_err("config error")
        .to_string()
}

#[test]
fn kstar_sections_are_validated() {
    let base = "tcp_server: {listen: '127.0.0.1:502'}\n";
    // No server at all.
    let e = parse_err(
        "rtu_poll: {device: /dev/ttyUSB0}\nregions:\n  - {name: a, start: 3000, count: 1, function: input, source: rtu_poll, every: 1s}\n",
    );
    assert!(e.contains("no server"), "{e}");
    // rtu_poll source without the section, without function, without every.
    let e = parse_err(&format!(
        "{base}regions:\n  - {{name: a, start: 3000, count: 1, function: input, source: rtu_poll, every: 1s}}\n"
    ));
    assert!(
        e.contains("k.yaml:3:") && e.contains("no `rtu_poll:` section"),
        "{e}"
    );
    let with_bus = format!("{base}rtu_poll: {{device: /dev/ttyUSB0}}\n");
    let e = parse_err(&format!(
        "{with_bus}regions:\n  - {{name: a, start: 3000, count: 1, source: rtu_poll, every: 1s}}\n"
    ));
    assert!(
        e.contains("k.yaml:4:") && e.contains("needs `function: input`"),
        "{e}"
    );
    let e = parse_err(&format!(
        "{with_bus}regions:\n  - {{name: a, start: 3000, count: 1, function: input, source: rtu_poll}}\n"
    ));
    assert!(e.contains("needs `every`"), "{e}");
    // Mixing typed and untyped regions.
    let e = parse_err(&format!(
        "{with_bus}regions:\n  - {{name: a, start: 3000, count: 1, function: input, source: rtu_poll, every: 1s}}\n  - {{name: b, start: 1, count: 1, source: static, values: {{1: 1}}}}\n"
    ));
    assert!(
        e.contains("k.yaml:5:") && e.contains("either every region names its function"),
        "{e}"
    );
    // Same numbers in two tables are fine; in one table they overlap.
    let ok = config::parse(&format!(
        "{with_bus}regions:\n  - {{name: a, start: 3200, count: 8, function: input, source: rtu_poll, every: 1s}}\n  - {{name: b, start: 3200, count: 8, function: holding, source: rtu_poll, every: 1s}}\n"
    ), "k.yaml");
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
    let e = parse_err(&format!(
        "{with_bus}regions:\n  - {{name: a, start: 3200, count: 8, function: input, source: rtu_poll, every: 1s}}\n  - {{name: b, start: 3207, count: 8, function: input, source: rtu_poll, every: 1s}}\n"
    ));
    assert!(e.contains("overlaps region `a`"), "{e}");
    // Bad rtu_poll and tcp_server values.
    for (section, want) in [
        ("rtu_poll: {device: /dev/x, unit_id: 0}", "rtu_poll.unit_id"),
        (
            "rtu_poll: {device: /dev/x, stop_bits: 3}",
            "rtu_poll.stop_bits",
        ),
        ("rtu_poll: {device: /dev/x, retries: 9}", "rtu_poll.retries"),
        ("rtu_poll: {device: /dev/x, timeout: 0}", "rtu_poll.timeout"),
        ("rtu_poll: {device: ''}", "rtu_poll.device"),
    ] {
        let e = parse_err(&format!(
            "{base}{section}\nregions:\n  - {{name: a, start: 3000, count: 1, function: input, source: rtu_poll, every: 1s}}\n"
        ));
        assert!(e.contains(&format!("k.yaml:2: {want}")), "{section}: {e}");
    }
    let e = parse_err(
        "tcp_server: {listen: nowhere}\nregions:\n  - {name: a, start: 0, count: 1, function: holding, source: static, values: {0: 1}}\n",
    );
    assert!(e.contains("k.yaml:1: tcp_server.listen"), "{e}");
    // writable without its prerequisites.
    let e = parse_err(&format!(
        "{base}regions:\n  - {{name: a, start: 0, count: 1, function: holding, source: static, values: {{0: 1}}}}\nwritable: [3044]\n"
    ));
    assert!(
        e.contains("k.yaml:4: writable") && e.contains("rtu_poll"),
        "{e}"
    );
}

#[test]
fn ksem_configs_are_unchanged() {
    // The shipped KSEM config still has its RTU slave and untyped regions.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}")).config;
    assert!(c.rtu_slave);
    assert!(c.regions.iter().all(|r| r.table.is_none()));
    assert!(c.rtu_poll.is_none() && c.tcp_server.is_none() && c.writable.is_empty());
}

#[test]
fn check_binary_reports_the_line() {
    let good = Temp::new(&example("[3044, 3086, 3200, 3272, 3273]"));
    let out = common::airbridge_cmd()
        .args(["check", "--config"])
        .arg(good.path())
        .output()
        .expect("run airbridge");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("usable"), "{stdout}");
    let text = example("[3044, 3046]");
    let bad = Temp::new(&text);
    let out = common::airbridge_cmd()
        .args(["check", "--config"])
        .arg(bad.path())
        .output()
        .expect("run airbridge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:{}: writable: 3046 (sys_state) is read-only",
            bad.path().display(),
            last_line(&text)
        )),
        "{err}"
    );
}

#[test]
fn shipped_kstar_configs_check() {
    for name in ["kstar-hybrid.yaml", "kstar-ksg.yaml"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name);
        let loaded = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.config.rtu_poll.is_some(), "{name}");
        assert!(loaded.config.tcp_server.is_some(), "{name}");
        assert!(!loaded.config.writable.is_empty(), "{name}");
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kstar-two-devices.yaml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}")).config;
    let names: Vec<&str> = c.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["battery1", "battery2"]);
    assert!(c.devices.iter().all(|d| d.profile.is_some()));
    assert_eq!(c.devices[0].writable.len(), 2);
    assert!(c
        .regions
        .iter()
        .any(|r| r.name == "battery2.live" && r.device == 1));
}

/// `check` on a `devices:` config: the two forms together, and two devices with one address,
/// are refused with the file and line.
#[test]
fn check_refuses_mixed_forms_and_shared_addresses() {
    let dev = |name: &str, unit: u8| {
        format!("  - name: {name}\n    unit_id: {unit}\n    regions:\n      - {{name: live, start: 3000, count: 100, function: input, every: 1s}}\n")
    };
    let bus = "rtu_poll: {device: /dev/ttyUSB0}\ntcp_server: {listen: '127.0.0.1:1502', allow_from: [127.0.0.1]}\n";
    let cases = [
        (
            format!("{bus}writable: [3044]\ndevices:\n{}", dev("a", 1)),
            ":3: writable: `devices:` and the one-device form exclude each other",
        ),
        (
            format!("{bus}devices:\n{}{}", dev("a", 1), dev("b", 1)),
            ":9: devices[1] (b).unit_id: 1 is the address of `a` too",
        ),
    ];
    for (text, want) in cases {
        let f = Temp::new(&text);
        let out = common::airbridge_cmd()
            .args(["check", "--config"])
            .arg(f.path())
            .output()
            .expect("run airbridge");
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}{want}", f.path().display())),
            "{err}"
        );
    }
}
