//! Issue 14.7, the smaller things a newcomer tripped over: a reload that needs a restart
//! names the key, `profile show` aligns its columns and lists enum values under a readable
//! source, `bench rtu` is not silent in a pipe and fails when requests go unanswered, and
//! `--help` describes both directions.

use crate::common;
use common::manifest;

use airbridge::config;

#[test]
fn a_reload_that_needs_a_restart_names_the_section() {
    let base = "rtu: {device: /dev/ttyUSB0}
push: {listen: '127.0.0.1:5020', allow_from: [127.0.0.1]}
status: {listen: '127.0.0.1:8080'}
regions:
  - {name: a, start: 0, count: 2, source: push}
";
    let old = config::parse(base, "old").expect("old").config;
    let new = config::parse(&base.replace("8080", "8081"), "new")
        .expect("new")
        .config;
    let d = airbridge::app::reload::diff(&old, &new);
    assert_eq!(
        d.restart,
        vec![
            "`status:` changed, and only a restart applies it (see `airbridge check`)".to_string()
        ]
    );
    // A comment that moves the lines is not a change.
    let moved = config::parse(&format!("# a comment\n{base}"), "moved")
        .expect("moved")
        .config;
    let d = airbridge::app::reload::diff(&old, &moved);
    assert!(d.restart.is_empty(), "{:?}", d.restart);
}

#[test]
fn profile_show_aligns_columns_lists_enum_values_and_names_its_source() {
    let out = common::airbridge_cmd()
        .args(["profile", "show"])
        .arg(manifest("profiles/kstar-hybrid.yaml"))
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("source: KSTAR Hybrid Inverter MODBUS RS485"),
        "no archive file name: {}",
        lines[1]
    );
    // Every register row has its name where the header's `name` column starts.
    // Columns count characters (the unit `°C` is one character, two bytes).
    let col = lines[2]
        .find("name")
        .map(|b| lines[2][..b].chars().count())
        .expect("header");
    let name_at = |l: &str| l.chars().skip(col).collect::<String>();
    let profile = airbridge::control::profile::load(&manifest("profiles/kstar-hybrid.yaml"))
        .expect("profile");
    for r in &profile.registers {
        let row = lines
            .iter()
            .find(|l| {
                let t = name_at(l);
                t.starts_with(&format!("{} ", r.name)) || t == r.name
            })
            .unwrap_or_else(|| panic!("{} not in the name column:\n{text}", r.name));
        assert!(row.starts_with(r.table.as_str()), "{row}");
        if let Some((k, v)) = r.enumeration.as_ref().and_then(|e| e.iter().next()) {
            let at = lines.iter().position(|l| l == row).expect("row");
            assert!(
                lines[at + 1]
                    .trim_start()
                    .starts_with(&format!("values: {k} = {v}")),
                "{} lists its values:\n{}",
                r.name,
                lines[at + 1]
            );
        }
    }
}

#[test]
fn bench_rtu_says_what_it_does_in_a_pipe_and_fails_without_replies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _g = rt.enter();
    // Nobody answers on the pair's first end.
    let (_silent, other) = tokio_serial::SerialStream::pair().expect("pty pair");
    let device = tokio_serial::SerialPort::name(&other).expect("path");
    let out = common::airbridge_cmd()
        .args([
            "bench", "rtu", "--device", &device, "--count", "3", "--ranges", "0:2",
        ])
        .args(["--timeout", "50ms"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "bench rtu: 3 requests on {device} (timeout 50ms each)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "3 of 3 requests got no valid reply (3 timed out, 0 partial, 0 bad CRC, 0 bad frames)"
        ),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| 0:2 |") || stdout.contains("0:2"),
        "the report still prints:\n{stdout}"
    );
    drop(other);
}

#[test]
fn help_describes_both_directions_and_every_option() {
    let out = common::airbridge_cmd()
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("KSEM G2") && text.contains("KSTAR"), "{text}");
    for (cmd, opts) in [
        (
            vec!["bench", "push", "--help"],
            vec!["--duration", "--connections", "--json", "--live"],
        ),
        (
            vec!["bench", "age", "--help"],
            vec!["--duration", "--unit", "--baud", "--json", "--live"],
        ),
        (vec!["run", "--help"], vec!["--config"]),
        (vec!["check", "--help"], vec!["--config"]),
    ] {
        let out = common::airbridge_cmd().args(&cmd).output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        for o in opts {
            let line = text
                .lines()
                .find(|l| {
                    l.trim_start().starts_with(o)
                        || l.contains(&format!(" {o} "))
                        || l.contains(&format!(", {o}"))
                })
                .unwrap_or_else(|| panic!("{cmd:?}: {o} missing:\n{text}"));
            // clap puts the help text on the option's line or the next one.
            let idx = text.lines().position(|l| l == line).unwrap_or(0);
            let next = text.lines().nth(idx + 1).unwrap_or("");
            let described = line.trim_end().len() > o.len() + 12
                || !next.trim().is_empty() && !next.trim_start().starts_with('-');
            assert!(described, "{cmd:?}: {o} has no help text:\n{text}");
        }
    }
}

/// `airbridge demo | head -1`: the demo prints on after the reader closed the pipe; it must
/// end quietly (SIGPIPE, as any Unix tool), never with a panic ("failed printing to stdout").
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let mut child = common::airbridge_cmd()
        .args(["demo", "--duration", "20s"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run airbridge demo");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("a first line");
    assert!(!first.is_empty(), "the demo printed nothing");
    drop(out); // the reader is gone, like `head -1` after its line
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo went on for 30 s after its reader closed the pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        status.signal() == Some(libc::SIGPIPE) || status.success(),
        "{status:?}\n{err}"
    );
}
