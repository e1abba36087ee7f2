//! Logs that read well in journald: the repeat limiter (with a controlled clock), JSON lines
//! from the binary, no colour off a terminal, the config's log level, and a KSEM refused
//! twenty times logged once.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airbridge::ops::logging::{parse_level, More, Repeats};

const MIN: Duration = Duration::from_secs(60);

#[test]
fn repeats_are_said_once_a_window_with_the_count() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut r: Repeats<&str> = Repeats::new(MIN, 16);
    assert_eq!(
        r.hit("refused", at(0)),
        Some(More {
            count: 0,
            window: MIN
        })
    );
    for s in 1..=57 {
        assert_eq!(r.hit("refused", at(s)), None, "held back at {s}s");
    }
    // Another key is independent.
    assert!(r.hit("other", at(30)).is_some());
    // The window ended: said again, with what was held back.
    let more = r.hit("refused", at(61)).expect("said after the window");
    assert_eq!(more.count, 57);
    assert_eq!(more.to_string(), " (… 57 more in the last minute)");
    assert_eq!(r.hit("refused", at(62)), None);
    assert_eq!(
        More {
            count: 0,
            window: MIN
        }
        .to_string(),
        ""
    );
    assert_eq!(
        More {
            count: 3,
            window: Duration::from_secs(10)
        }
        .to_string(),
        " (… 3 more in the last 10s)"
    );
}

#[test]
fn flush_reports_windows_that_ended_and_forgets_them() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut r: Repeats<String> = Repeats::new(MIN, 16);
    r.hit("a".into(), at(0));
    r.hit("a".into(), at(10));
    r.hit("a".into(), at(20));
    r.hit("quiet".into(), at(0));
    assert!(r.flush(at(59)).is_empty(), "windows still open");
    let ended = r.flush(at(60));
    assert_eq!(
        ended,
        vec![(
            "a".to_string(),
            More {
                count: 2,
                window: MIN
            }
        )]
    );
    assert!(r.is_empty(), "both forgotten");
    // Its next occurrence is said at once, with nothing carried over.
    assert_eq!(
        r.hit("a".into(), at(61)),
        Some(More {
            count: 0,
            window: MIN
        })
    );
}

#[test]
fn capacity_bounds_the_keys_but_never_drops_a_new_line() {
    let t0 = Instant::now();
    let mut r: Repeats<u32> = Repeats::new(MIN, 4);
    for k in 0..100 {
        assert!(r.hit(k, t0).is_some(), "a new key is always said");
    }
    assert_eq!(r.len(), 4);
    // Once their windows ended, old keys make room.
    assert!(r.hit(1000, t0 + MIN).is_some());
    assert!(r.len() <= 4);
}

#[test]
fn levels_are_checked() {
    assert!(parse_level("info").is_ok());
    assert!(parse_level("warn,airbridge::sources::ksem_poll=debug").is_ok());
    for bad in ["", "loud", "info,chatty"] {
        assert!(parse_level(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_config_level_and_a_refused_ksem_logged_once() {
    let dir = std::env::temp_dir().join(format!("airbridge-logging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("gateway.yaml");
    let push = common::dead_addr().await;
    std::fs::write(
        &cfg,
        format!(
            "rtu: {{device: /dev/airbridge-no-such-tty}}
push: {{listen: '{push}', allow_from: [127.0.0.2]}}
log: {{level: warn}}
regions:
  - {{name: totals, start: 0, count: 40, source: push}}
"
        ),
    )
    .expect("write config");
    let child = common::airbridge_cmd()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Connect as a KSEM that is not allowed, twenty times.
    let mut refused = 0;
    for _ in 0..200 {
        if refused == 20 {
            break;
        }
        match tokio::net::TcpStream::connect(push).await {
            Ok(s) => {
                refused += 1;
                drop(s);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(refused, 20, "the push listener came up");
    // Let the gateway log what it saw, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains('\u{1b}'), "no ANSI colour: {log}");
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = v["level"].as_str().expect("level").to_string();
        let msg = v["fields"]["message"].as_str().unwrap_or("").to_string();
        assert!(v["timestamp"].is_string(), "{line}");
        messages.push((level, msg));
    }
    assert!(
        messages
            .iter()
            .any(|(l, m)| l == "ERROR" && m.contains("serial device unavailable")),
        "{log}"
    );
    let refusals = messages
        .iter()
        .filter(|(_, m)| m.starts_with("push connection refused"))
        .count();
    assert_eq!(
        refusals, 1,
        "twenty refusals within a minute, said once: {log}"
    );
    assert!(
        messages.iter().all(|(l, _)| l == "WARN" || l == "ERROR"),
        "log.level warn: no info lines: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
