//! `airbridge check --config FILE`, run as the real binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

fn check(config: &Path) -> Output {
    common::airbridge_cmd()
        .args(["check", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run airbridge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "airbridge-cli-check-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn gateway_yaml_is_usable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("rtu: /dev/ttyACM0 38400 8N2 unit 1 turnaround 1.75ms"),
        "{stdout}"
    );
    assert!(
        stdout.contains("push: listen 0.0.0.0:5020 allow_from [192.168.178.100/32]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("poll: 192.168.178.100:502 unit 1 timeout 2s"),
        "{stdout}"
    );
    // The regions table: a header and one row per region, in address order.
    assert!(stdout.contains("regions:"), "{stdout}");
    for column in [
        "name",
        "registers",
        "count",
        "source",
        "every",
        "max_age",
        "on_stale",
        "fallback",
    ] {
        assert!(stdout.contains(column), "{column} in\n{stdout}");
    }
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| *l != "regions:")
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["totals", "0..39", "40", "push", "-", "2s", "silence", "1s"],
            vec!["phases", "40..147", "108", "push", "-", "2s", "silence", "1s"],
            vec!["energy", "512..791", "280", "[push,", "poll]", "10s", "5m", "serve", "-"],
            vec![
                "identity",
                "8192..8248",
                "57",
                "poll",
                "1h",
                "3h",
                "serve",
                "-"
            ],
            vec![
                "spec_version",
                "8249..8249",
                "1",
                "static",
                "-",
                "never",
                "serve",
                "-"
            ],
        ],
        "{stdout}"
    );
    // The only warning the shipped file may get is about this machine: no RS485 adapter.
    let adapter = std::path::Path::new("/dev/ttyACM0").exists();
    for w in stdout.lines().filter(|l| l.starts_with("warning:")) {
        assert!(
            !adapter && w.contains("rtu.device: `/dev/ttyACM0` does not exist on this machine"),
            "{stdout}"
        );
    }
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("{}: usable", path.display())),
        "{stdout}"
    );
}

#[test]
fn warnings_are_printed_and_still_usable() {
    let dir = TempDir::new();
    let path = dir.write(
        "open.yaml",
        "rtu:\n  device: /dev/ttyUSB0\npush:\n  listen: 0.0.0.0:5020\nregions:\n  - {name: a, start: 0, count: 10, source: push}\n",
    );
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let want = format!("warning: {}:4: push.allow_from: empty", path.display());
    assert!(stdout.contains(&want), "{want:?} in\n{stdout}");
    assert!(stdout.contains("usable"), "{stdout}");
}

#[test]
fn invalid_config_names_file_line_and_key() {
    let dir = TempDir::new();
    // line 8: the overlapping region
    let path = dir.write(
        "overlap.yaml",
        "rtu:\n  device: /dev/ttyUSB0\npush:\n  listen: 0.0.0.0:5020\n  allow_from: [192.168.178.100]\nregions:\n  - {name: a, start: 0, count: 10, source: push}\n  - {name: b, start: 5, count: 10, source: push}\n",
    );
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let want = format!("{}:8: regions[1] (b).start", path.display());
    assert!(stderr.contains(&want), "{want:?} in\n{stderr}");
    assert!(stderr.contains("overlaps"), "{stderr}");
    assert!(!stdout.contains("usable"), "{stdout}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let dir = TempDir::new();
    // line 4: the unknown key
    let path = dir.write(
        "unknown.yaml",
        "rtu:\n  device: /dev/ttyUSB0\n  baud: 9600\n  baudrate: 9600\nregions:\n  - {name: a, start: 0, count: 1, source: static, values: {0: 1}}\n",
    );
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let want = format!("{}:4:", path.display());
    assert!(stderr.contains(&want), "{want:?} in\n{stderr}");
    assert!(stderr.contains("unknown field `baudrate`"), "{stderr}");
    assert!(!stdout.contains("usable"), "{stdout}");
}

#[test]
fn missing_file_cannot_be_read() {
    let dir = TempDir::new();
    let path = dir.0.join("missing.yaml");
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// Issue 15: a reply timeout shorter than the largest reply's wire time is a warning with
/// both numbers (125 registers at 1200 baud 8N1: 255 bytes, 2.125 s; timeout 500 ms).
#[test]
fn kstar_timeout_shorter_than_the_largest_reply_warns() {
    let dir = TempDir::new();
    let path = dir.write(
        "kstar.yaml",
        "rtu_poll: {device: /dev/ttyUSB0, baud: 1200, timeout: 500ms}
tcp_server: {listen: '127.0.0.1:1502', allow_from: [127.0.0.1]}
regions:
  - {name: live, start: 3000, count: 125, function: input, source: rtu_poll, every: 5s, max_age: 30s}
",
    );
    let out = check(&path);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("rtu_poll.timeout: 500ms is shorter than the wire time of the largest reply (125 registers, 255 bytes: 2.125s at 1200 baud)"),
        "{all}"
    );
    // At 9600 baud the same reply takes 265.6 ms: no warning.
    let path = dir.write(
        "ok.yaml",
        "rtu_poll: {device: /dev/ttyUSB0, baud: 9600, timeout: 500ms}
tcp_server: {listen: '127.0.0.1:1502', allow_from: [127.0.0.1]}
regions:
  - {name: live, start: 3000, count: 125, function: input, source: rtu_poll, every: 5s, max_age: 30s}
",
    );
    let out = check(&path);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("wire time"), "{all}");
}

/// Issue 19: commands over MQTT on a connection the broker cannot attribute (anonymous) or
/// anyone on the path can read (plain `mqtt://`) are warned about at the `commands:` line,
/// with what to do; the config stays usable. With TLS and a user: no warning.
#[test]
fn mqtt_commands_over_an_anonymous_plain_connection_warn() {
    let dir = TempDir::new();
    let config = |mqtt: &str| {
        format!(
            "profile: '{}'
rtu_poll: {{device: /dev/ttyUSB0}}
tcp_server: {{listen: '127.0.0.1:1502', allow_from: [127.0.0.1]}}
regions:
  - {{name: live, start: 3000, count: 10, function: input, source: rtu_poll, every: 1s, max_age: 5s}}
writable: [3200]
mqtt: {{{mqtt}}}
",
            common::profile("kstar-hybrid.yaml").display()
        )
    };
    let path = dir.write(
        "open.yaml",
        &config("broker: 'mqtt://192.168.178.10', topic: ks, commands: true"),
    );
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let at = format!("warning: {}:7: mqtt.commands: ", path.display());
    let warned: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&at)).collect();
    assert_eq!(warned.len(), 2, "{stdout}");
    assert!(
        warned[0].contains("anonymous") && warned[0].contains("ks/set/#"),
        "{stdout}"
    );
    assert!(
        warned[1].contains("unencrypted") && warned[1].contains("mqtts://"),
        "{stdout}"
    );
    assert!(stdout.contains("usable"), "{stdout}");

    let secret = dir.write("mqtt.secret", "s3cret\n");
    let path = dir.write(
        "locked.yaml",
        &config(&format!(
            "broker: 'mqtts://broker.lan', username: gw, password_file: '{}', topic: ks, commands: true",
            secret.display()
        )),
    );
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("mqtt.commands"), "{stdout}");
    assert!(stdout.contains("usable"), "{stdout}");
}
