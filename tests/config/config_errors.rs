//! What a newcomer sees for a broken config: the exact headline (`file:line:column: what;
//! what to do`) of YAML syntax and type errors, and the `check` warnings about this machine
//! (missing serial device, privileged port, missing profile, missing config file).

use crate::common;

use std::path::{Path, PathBuf};

use airbridge::config;

const ORIGIN: &str = "gw.yaml";

/// A usable config; each case breaks one thing in it.
const BASE: &str = "rtu:
  device: /dev/ttyUSB0
  baud: 38400
  unit_id: 1
push:
  listen: 127.0.0.1:5020
  allow_from: [127.0.0.1]
regions:
  - {name: a, start: 0, count: 2, source: push}
";

/// The first line of the error `config::parse` gives for `text`.
fn headline(text: &str) -> String {
    match config::parse(text, ORIGIN) {
        Ok(_) => panic!("expected an error for\n{text}"),
        Err(e) => e.to_string().lines().next().unwrap_or("").to_string(),
    }
}

#[test]
fn base_is_usable() {
    config::parse(BASE, ORIGIN).expect("BASE must be usable");
}

#[test]
fn broken_configs_get_the_exact_message() {
    let r = |from: &str, to: &str| {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        BASE.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "tab in the indentation",
            r("  baud: 38400", "\tbaud: 38400"),
            "gw.yaml:3:1: a tab in the indentation; YAML indents with spaces only: replace the tab with spaces",
        ),
        (
            "tab after spaces",
            r("  baud: 38400", "  \tbaud: 38400"),
            "gw.yaml:3:3: a tab in the indentation; YAML indents with spaces only: replace the tab with spaces",
        ),
        (
            "extra indent under a key with a value",
            r("  unit_id: 1", "    unit_id: 1"),
            "gw.yaml:4:5: this line is indented deeper than `baud:` on line 3, which already has a value; indent it like that line",
        ),
        (
            "extra indent after a commented value",
            r("  baud: 38400\n  unit_id: 1", "  baud: 38400   # 8N2\n    unit_id: 1"),
            "gw.yaml:4:5: this line is indented deeper than `baud:` on line 3, which already has a value; indent it like that line",
        ),
        (
            "unclosed flow mapping",
            r("source: push}", "source: push"),
            "gw.yaml:9:5: this `{` is never closed; add `}` where the entry ends (usually the end of this line)",
        ),
        (
            "unclosed flow mapping before another entry",
            r(
                "source: push}\n",
                "source: push\n  - {name: b, start: 2, count: 2, source: push}\n",
            ),
            "gw.yaml:9:5: this `{` is never closed; add `}` where the entry ends (usually the end of this line)",
        ),
        (
            "unclosed flow sequence",
            r("[127.0.0.1]", "[127.0.0.1"),
            "gw.yaml:7:15: this `[` is never closed; add `]` where the entry ends (usually the end of this line)",
        ),
        (
            "duplicate key",
            r("  unit_id: 1", "  unit_id: 1\n  baud: 9600"),
            "gw.yaml:5:3: `baud` is set twice, on line 3 and on this line; keep one of them",
        ),
        (
            "duplicate key in a flow mapping",
            r("start: 0,", "start: 0, start: 4,"),
            "gw.yaml:9:25: `start` is set twice, on line 9 and on this line; keep one of them",
        ),
        (
            "duplicate section",
            format!("{BASE}push:\n  listen: 127.0.0.1:5021\n"),
            "gw.yaml:10:1: `push` is set twice, on line 5 and on this line; keep one of them",
        ),
        (
            "thousands separator",
            r("baud: 38400", "baud: 38,400"),
            "gw.yaml:3:9: `38,400` is not a whole number from 0 to 4294967295; write digits only, without separators: baud: 38400",
        ),
        (
            "space as separator",
            r("baud: 38400", "baud: 38 400"),
            "gw.yaml:3:9: `38 400` is not a whole number from 0 to 4294967295; write digits only, without separators: baud: 38400",
        ),
        (
            "unit id out of range",
            r("unit_id: 1", "unit_id: 256"),
            "gw.yaml:4:12: `256` is not a whole number from 0 to 255",
        ),
        (
            "negative count",
            r("count: 2,", "count: -2,"),
            "gw.yaml:9:32: `-2` is not a whole number from 0 to 65535",
        ),
        (
            "unknown key, close to a known one",
            r("  unit_id: 1", "  unitid: 1"),
            "gw.yaml:4:3: unknown field `unitid`, expected one of device, baud, data_bits, parity, stop_bits, unit_id, turnaround, frame_timeout, input_registers, rs485; did you mean `unit_id`?",
        ),
        (
            "misspelt section",
            r("regions:", "regoins:"),
            "gw.yaml:8:1: unknown field `regoins`, expected one of rtu, push, poll, regions, devices, profile, rtu_poll, tcp_server, writable, log, status, mqtt; did you mean `regions`?",
        ),
        (
            "missing colon",
            r("  baud: 38400", "  baud 38400"),
            "gw.yaml:3:3: a `:` is missing after the key; write `key: value` (with a space after the colon)",
        ),
        (
            "unclosed quote",
            r("device: /dev/ttyUSB0", "device: \"/dev/ttyUSB0"),
            "gw.yaml:2:11: this `\"` quote is never closed on its line; add the closing `\"`",
        ),
        (
            "empty file",
            String::new(),
            "gw.yaml:1:1: the file is empty; start from the shipped gateway.yaml",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        let got = headline(text);
        if got != *want {
            failures.push(format!("{name}:\n  want {want}\n  got  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("airbridge-cfgerr-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = common::airbridge_cmd()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run airbridge check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_warns_about_what_run_would_trip_over() {
    let dir = TempDir::new("host");
    let path = dir.0.join("gateway.yaml");
    let text = BASE
        .replace("/dev/ttyUSB0", "/dev/airbridge-no-such-adapter")
        .replace("127.0.0.1:5020", "0.0.0.0:502");
    std::fs::write(&path, text).expect("write");
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "usable, with warnings\n{stdout}\n{stderr}");
    let p = path.display();
    let device = format!(
        "warning: {p}:2: rtu.device: `/dev/airbridge-no-such-adapter` does not exist on this \
         machine; is the RS485 adapter plugged in? `ls -l /dev/serial/by-id/` lists the \
         adapters (use that stable path). `run` starts anyway, serves nothing on this line and \
         opens the device once it appears"
    );
    let port = format!(
        "warning: {p}:6: push.listen: port 502 is privileged (below 1024) and the shipped \
         systemd unit (deploy/airbridge.service) runs as user airbridge without \
         CAP_NET_BIND_SERVICE, so `run` under it cannot bind 0.0.0.0:502; use a port of 1024 \
         or above, or add `AmbientCapabilities=CAP_NET_BIND_SERVICE` and \
         `CapabilityBoundingSet=CAP_NET_BIND_SERVICE` with `sudo systemctl edit airbridge`"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&device.as_str()),
        "{device}\nnot in\n{stdout}"
    );
    assert!(lines.contains(&port.as_str()), "{port}\nnot in\n{stdout}");
    // The unit really lacks the capability the warning names.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/airbridge.service"),
    )
    .expect("unit");
    assert!(unit.contains("\nUser=airbridge\n") && unit.contains("\nAmbientCapabilities=\n"));
}

#[test]
fn missing_profile_names_the_resolved_path() {
    let dir = TempDir::new("profile");
    let path = dir.0.join("gateway.yaml");
    std::fs::write(&path, format!("{BASE}profile: profiles/ksem-g2.yaml\n")).expect("write");
    let (code, _, stderr) = check(&path);
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!(
        "{}:10: profile: {} does not exist (a relative path is taken from the config's \
         directory); copy the profiles/ directory next to the config (install.sh puts it in \
         /etc/airbridge/profiles/) or write an absolute path",
        path.display(),
        dir.0.join("profiles/ksem-g2.yaml").display()
    );
    assert_eq!(stderr.trim_end(), want);
}

#[test]
fn missing_config_file_says_it_once_and_what_to_do() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("gateway.yaml");
    let want = format!(
        "{}: cannot read: No such file or directory (os error 2); copy the example first \
         (`sudo install -D -m 644 gateway.yaml /etc/airbridge/gateway.yaml`) or name another \
         file with --config PATH",
        path.display()
    );
    let (code, _, stderr) = check(&path);
    assert_eq!((code, stderr.trim_end()), (Some(1), want.as_str()));
    let out = common::airbridge_cmd()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run airbridge run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("airbridge: {want}"));
}

#[test]
fn run_and_check_share_one_default_config_path() {
    let help = |cmd: &str| {
        let out = common::airbridge_cmd()
            .args([cmd, "--help"])
            .output()
            .expect("help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for cmd in ["run", "check"] {
        let h = help(cmd);
        assert!(
            h.contains("[default: /etc/airbridge/gateway.yaml]"),
            "{cmd}:\n{h}"
        );
    }
}
