//! Hot reload on a running gateway: live settings take effect on the next request, a
//! change that needs a restart is reported and nothing is applied, an invalid file is
//! rejected, and the inverter is answered throughout. Then the same through the binary
//! and SIGHUP.

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airbridge::app::reload::{self, ReloadOutcome};
use airbridge::config::{self, Config, OnStale};
use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use tokio_serial::{SerialPort as _, SerialStream};

const PUSH_ONLY: &str =
    "  - {name: totals, start: 0, count: 40, source: push, max_age: 1ms, on_stale: serve}
  - {name: phases, start: 40, count: 108, source: push, max_age: 1h, on_stale: silence}";

/// The rig's config text, as `common::gateway` builds it.
fn yaml(regions: &str, poll: SocketAddr, push_opts: &str) -> String {
    format!(
        "rtu: {{device: pty, turnaround: 0, frame_timeout: 20ms}}
push: {{listen: '127.0.0.1:0', {push_opts}}}
poll: {{host: '{poll}', timeout: 500ms}}
regions:
{regions}"
    )
}

fn parse(text: &str) -> Config {
    config::parse(text, "reload-test")
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .config
}

/// The running config, with the push listener as the rig gave it (port 0 stays 0: the
/// running config is the one parsed, not the bound address).
fn running(rig: &common::Rig) -> Arc<Config> {
    rig.gateway.handles.live.current()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_changed_max_age_and_on_stale_apply_to_the_next_request() {
    let poll = common::dead_addr().await;
    let mut rig = common::gateway(PUSH_ONLY, poll, common::LOCAL_PUSH).await;
    let mut ksem = common::push_client(rig.gateway.push_addr.expect("push")).await;
    let pushed = common::push_groups(&mut ksem, 3).await;
    // totals is older than 1ms at once, but its policy is serve.
    let got = common::rtu_read_eventually(&mut rig, 0, 40, Duration::from_secs(5))
        .await
        .expect("served while stale under on_stale: serve");
    assert_eq!(got, pushed[..40].to_vec());

    // on_stale: exception → exception 04 on the next request.
    let text = yaml(
        &PUSH_ONLY.replace("on_stale: serve", "on_stale: exception"),
        poll,
        common::LOCAL_PUSH,
    );
    let outcome = reload::apply(&rig.gateway.handles, parse(&text));
    let ReloadOutcome::Applied { changes, .. } = &outcome else {
        panic!("applied: {outcome:?}");
    };
    assert_eq!(
        changes,
        &vec!["regions.totals.on_stale serve → exception".to_string()]
    );
    assert!(matches!(
        rig.inverter.read(1, 3, 0, 40).await,
        Err(ReplyError::Exception(4))
    ));
    assert_eq!(running(&rig).regions[0].on_stale, OnStale::Exception);

    // max_age: 1h → fresh again, data on the next request.
    let text = yaml(
        &PUSH_ONLY
            .replace("on_stale: serve", "on_stale: exception")
            .replace("max_age: 1ms", "max_age: 1h"),
        poll,
        common::LOCAL_PUSH,
    );
    let outcome = reload::apply(&rig.gateway.handles, parse(&text));
    assert!(
        outcome
            .to_string()
            .contains("regions.totals.max_age 1ms → 1h"),
        "{outcome}"
    );
    assert_eq!(
        rig.inverter.read(1, 3, 0, 40).await.expect("fresh"),
        pushed[..40].to_vec()
    );
    // The same file again changes nothing.
    assert_eq!(
        reload::apply(&rig.gateway.handles, parse(&text)),
        ReloadOutcome::Unchanged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_allow_list_admits_and_expels_on_the_next_request() {
    let poll = common::dead_addr().await;
    let other = "allow_from: [127.0.0.2]";
    let rig = common::gateway(PUSH_ONLY, poll, other).await;
    let addr = rig.gateway.push_addr.expect("push");
    let stats = Arc::clone(&rig.gateway.handles.push);

    // Not allowed: closed at accept, the write fails.
    let mut refused = common::push_client(addr).await;
    assert!(common::write(&mut refused, 0, &[1]).await.is_err());
    assert_eq!(stats.front.refused_not_allowed.load(Relaxed), 1);

    let outcome = reload::apply(
        &rig.gateway.handles,
        parse(&yaml(PUSH_ONLY, poll, common::LOCAL_PUSH)),
    );
    assert!(
        outcome
            .to_string()
            .contains("push.allow_from [127.0.0.2/32] → [127.0.0.1/32]"),
        "{outcome}"
    );
    let mut ksem = common::push_client(addr).await;
    common::write(&mut ksem, 0, &[7, 8])
        .await
        .expect("allowed after the reload");
    assert_eq!(stats.writes_ok.load(Relaxed), 1);

    // Removed again: the open connection is closed at its next request, nothing written.
    reload::apply(&rig.gateway.handles, parse(&yaml(PUSH_ONLY, poll, other)));
    assert!(common::write(&mut ksem, 0, &[9]).await.is_err());
    assert_eq!(
        stats.writes_ok.load(Relaxed),
        1,
        "the request was not applied"
    );
    let snap = rig.gateway.handles.image.load_full();
    assert_eq!(snap.regions[0].words[..2], [7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_restart_is_reported_and_nothing_is_applied() {
    let poll = common::dead_addr().await;
    let rig = common::gateway(PUSH_ONLY, poll, common::LOCAL_PUSH).await;
    let before = running(&rig);
    // A new listen address together with a live change: neither is applied.
    let text = yaml(
        &PUSH_ONLY.replace("max_age: 1h", "max_age: 5s"),
        poll,
        common::LOCAL_PUSH,
    )
    .replace("127.0.0.1:0", "127.0.0.1:5020");
    let outcome = reload::apply(&rig.gateway.handles, parse(&text));
    let ReloadOutcome::NeedsRestart { settings, also } = &outcome else {
        panic!("needs restart: {outcome:?}");
    };
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert!(settings[0].starts_with("push.listen"), "{settings:?}");
    assert_eq!(also, &vec!["regions.phases.max_age 1h → 5s".to_string()]);
    assert!(outcome.to_string().contains("needs restart"), "{outcome}");
    assert_eq!(*running(&rig), *before, "the running config stays");
    let phases = rig
        .gateway
        .handles
        .image
        .region_index("phases")
        .expect("phases");
    assert_eq!(
        rig.gateway
            .handles
            .image
            .freshness(phases)
            .map(|f| f.max_age),
        Some(Duration::from_secs(3600))
    );

    // Serial settings and the layout need a restart too.
    for (what, text) in [
        (
            "rtu.baud",
            yaml(PUSH_ONLY, poll, common::LOCAL_PUSH)
                .replace("device: pty", "device: pty, baud: 9600"),
        ),
        (
            "regions",
            yaml(
                &PUSH_ONLY.replace("count: 108", "count: 100"),
                poll,
                common::LOCAL_PUSH,
            ),
        ),
        (
            "poll.host",
            yaml(
                PUSH_ONLY,
                "127.0.0.1:1".parse().expect("addr"),
                common::LOCAL_PUSH,
            ),
        ),
    ] {
        let outcome = reload::apply(&rig.gateway.handles, parse(&text));
        assert!(
            matches!(&outcome, ReloadOutcome::NeedsRestart { settings, .. } if settings.iter().any(|s| s.starts_with(what))),
            "{what}: {outcome:?}"
        );
    }
    assert_eq!(*running(&rig), *before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_an_invalid_file_keeps_the_running_config() {
    let poll = common::dead_addr().await;
    let rig = common::gateway(PUSH_ONLY, poll, common::LOCAL_PUSH).await;
    let before = running(&rig);
    let dir = tempdir("reject");
    let path = dir.join("gateway.yaml");
    let bad = yaml(
        &PUSH_ONLY.replace("max_age: 1h", "max_age: soon"),
        poll,
        common::LOCAL_PUSH,
    );
    std::fs::write(&path, &bad).expect("write");
    let err = reload::reload_file(&rig.gateway.handles, &path)
        .expect_err("rejected")
        .to_string();
    assert!(
        err.contains("gateway.yaml:"),
        "names the file and line: {err}"
    );
    assert!(err.contains("max_age"), "{err}");
    assert_eq!(*running(&rig), *before);
    std::fs::write(&path, "rtu: [not, a, mapping]\n").expect("write");
    assert!(reload::reload_file(&rig.gateway.handles, &path).is_err());
    assert_eq!(*running(&rig), *before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_interval_changes_live() {
    let ksem = common::frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let regions = "  - {name: identity, start: 8192, count: 57, source: poll, every: 1h}";
    let rig = common::gateway(regions, ksem.slave_addr(), common::LOCAL_PUSH).await;
    let stats = Arc::clone(&rig.gateway.handles.poll);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.regions_ok.load(Relaxed) < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats.regions_ok.load(Relaxed),
        1,
        "polled once, next in 1 h"
    );
    let outcome = reload::apply(
        &rig.gateway.handles,
        parse(&yaml(
            &regions.replace("every: 1h", "every: 100ms"),
            ksem.slave_addr(),
            common::LOCAL_PUSH,
        )),
    );
    assert!(
        outcome
            .to_string()
            .contains("regions.identity.every 1h → 100ms"),
        "{outcome}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.regions_ok.load(Relaxed) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stats.regions_ok.load(Relaxed) >= 4,
        "polling every 100 ms after the reload"
    );
    assert_eq!(stats.connects.load(Relaxed), 1, "the connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inverter_is_answered_across_reloads() {
    let poll = common::dead_addr().await;
    let regions = PUSH_ONLY.replace("max_age: 1ms, on_stale: serve", "max_age: 1h");
    let mut rig = common::gateway(&regions, poll, common::LOCAL_PUSH).await;
    let mut ksem = common::push_client(rig.gateway.push_addr.expect("push")).await;
    let pushed = common::push_groups(&mut ksem, 5).await;
    common::rtu_read_eventually(&mut rig, 0, 74, Duration::from_secs(5))
        .await
        .expect("warm");
    rig.inverter.set_timeout(Duration::from_secs(2));

    let handles = rig.gateway.handles.clone();
    let configs = [
        parse(&yaml(&regions, poll, common::LOCAL_PUSH)),
        parse(&yaml(
            &regions.replace("max_age: 1h", "max_age: 2h"),
            poll,
            "allow_from: [127.0.0.1, 10.0.0.0/8], idle_timeout: 30s",
        )),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloads = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Relaxed) {
                let c = configs[((n + 1) % 2) as usize].clone();
                assert!(
                    matches!(reload::apply(&handles, c), ReloadOutcome::Applied { .. }),
                    "every reload applies"
                );
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    for i in 0..300 {
        let got = rig
            .inverter
            .read(1, 3, 0, 74)
            .await
            .unwrap_or_else(|e| panic!("request {i} not answered during reloads: {e}"));
        assert_eq!(got, pushed[..74].to_vec());
    }
    stop.store(true, Relaxed);
    let n = reloads.await.expect("reload task");
    assert!(n >= 2, "reloads happened during the reads: {n}");
    assert_eq!(rig.gateway.handles.rtu.silent_stale.load(Relaxed), 0);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("airbridge-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ---------------------------------------------------------------------------------------
// The binary: SIGHUP.

struct Child {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    fn spawn(config: &std::path::Path) -> Child {
        let mut child = common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airbridge run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(l);
                }
            });
        }
        Child { child, lines }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Wait until a log line contains `what`; returns it.
    fn wait_for(&self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(what))
            {
                return l.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line with {what:?} within {within:?}:\n{}",
                    self.lines.lock().expect("lines").join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_rejects_bad_files_and_keeps_serving() {
    let (inv_end, gw_end) = SerialStream::pair().expect("pty pair");
    let device = gw_end.name().expect("pty path");
    drop(gw_end);
    let push_port = common::dead_addr().await.port();
    let dir = tempdir("sighup");
    let path = dir.join("gateway.yaml");
    let text = |level: &str, allow: &str, port: u16| {
        format!(
            "rtu: {{device: '{device}', turnaround: 0}}
push: {{listen: '127.0.0.1:{port}', allow_from: [{allow}]}}
log: {{level: {level}}}
regions:
  - {{name: totals, start: 0, count: 40, source: push, max_age: 1h}}
  - {{name: phases, start: 40, count: 108, source: push, max_age: 1h}}
"
        )
    };
    std::fs::write(&path, text("info", "127.0.0.1", push_port)).expect("write");
    let child = Child::spawn(&path);
    child.wait_for("push server listening", Duration::from_secs(10));
    let mut ksem =
        common::push_client(format!("127.0.0.1:{push_port}").parse().expect("addr")).await;
    let pushed = common::push_groups(&mut ksem, 11).await;
    let mut inverter = RtuMaster::new(inv_end, Duration::from_secs(2));
    child.wait_for("ready", Duration::from_secs(10));
    assert_eq!(
        inverter.read(1, 3, 0, 74).await.expect("served"),
        pushed[..74].to_vec()
    );

    // An invalid file: rejected with its error, still serving.
    std::fs::write(&path, text("loud", "127.0.0.1", push_port)).expect("write");
    child.signal("-HUP");
    let line = child.wait_for("reload rejected", Duration::from_secs(10));
    assert!(line.contains("gateway.yaml:3: log.level"), "{line}");
    assert_eq!(
        inverter.read(1, 3, 0, 74).await.expect("served"),
        pushed[..74].to_vec()
    );

    // Live changes: applied, including the log level (debug lines appear).
    std::fs::write(
        &path,
        text("debug", "127.0.0.1, 192.168.178.100", push_port),
    )
    .expect("write");
    child.signal("-HUP");
    let line = child.wait_for("reload applied", Duration::from_secs(10));
    assert!(line.contains("log.level info → debug"), "{line}");
    assert!(
        line.contains("push.allow_from [127.0.0.1/32] → [127.0.0.1/32, 192.168.178.100/32]"),
        "{line}"
    );
    // A refused write is logged at debug only.
    assert!(common::write(&mut ksem, 200, &[1]).await.is_err());
    child.wait_for("push write refused", Duration::from_secs(10));
    assert_eq!(
        inverter.read(1, 3, 0, 74).await.expect("served"),
        pushed[..74].to_vec()
    );

    // A new listen port: needs restart, not applied.
    std::fs::write(
        &path,
        text(
            "debug",
            "127.0.0.1, 192.168.178.100",
            push_port.wrapping_add(1).max(1024),
        ),
    )
    .expect("write");
    child.signal("-HUP");
    let line = child.wait_for("needs restart", Duration::from_secs(10));
    assert!(line.contains("push.listen"), "{line}");
    common::write(&mut ksem, 0, &[5])
        .await
        .expect("the old listener still takes pushes");

    child.signal("-TERM");
    child.wait_for("shutting down", Duration::from_secs(10));
    assert!(!child.log().contains("panicked"), "{}", child.log());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RTU poller (KSTAR) does not follow reloads: a changed `every` of an rtu_poll region
/// must be reported as "needs restart", never as applied while nothing changes.
#[test]
fn rtu_poll_interval_change_needs_a_restart() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kstar-ksg.yaml"
    ))
    .expect("deploy/kstar-ksg.yaml");
    let old = parse(&text);
    let new = parse(&text.replace("every: 5s", "every: 7s"));
    let d = reload::diff(&old, &new);
    assert!(d.live.is_empty(), "{d:?}");
    assert!(
        d.restart
            .iter()
            .any(|s| s.contains("live") && s.contains("every")),
        "{d:?}"
    );
    // max_age of the same region stays live: the image applies it.
    let new = parse(&text.replace("max_age: 30s", "max_age: 40s"));
    let d = reload::diff(&old, &new);
    assert!(d.restart.is_empty(), "{d:?}");
    assert_eq!(d.live.len(), 1, "{d:?}");
}
