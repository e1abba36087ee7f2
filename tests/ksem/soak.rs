//! Soak: the real `airbridge run` binary for `AIRBRIDGE_SOAK_SECS` seconds (default 60) under
//! randomized outages and bursts, checked continuously from the outside. Ignored by default:
//! `AIRBRIDGE_SOAK_SECS=3600 cargo test --release --test ksem -- --ignored --exact soak::soak --nocapture`.
//!
//! The gateway runs as a child process on one end of a pty pair (the test is the inverter on
//! the other end), with a fault-capable KSEM pusher and slave on loopback
//! (`airbridge_sim::fault`). Phases alternate between healthy and one randomly chosen
//! outage or burst: pushes stop / are garbage / land outside the push regions, connection
//! hogs, the slave refuses / hangs / resets / answers with a wrong transaction id or an
//! exception, serial noise, another master's traffic, broadcasts. Checked all the time:
//! - no served push data is older than `max_age` + one push interval (by the pusher's send
//!   time of the sequence number the words carry), no polled data older than `max_age` +
//!   `every` after the slave moved to a new epoch;
//! - no torn values: every word of a reply carries the same push sequence / slave epoch;
//! - after every outage the gateway recovers (fresh push and poll data) within its bound;
//! - the child's RSS grows by less than 1 MiB between the end of warm-up and the end;
//! - the child never exits.

use crate::common;

use std::process::{Child, Stdio};
use std::time::Duration;

use airbridge::link::rtu_master::{ReplyError, RtuMaster};
use airbridge_sim::fault::{
    bus, hog, push_seq, slave_word, FaultyPusher, FaultySlave, PushFault, SlaveFault,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};

const PUSH_MAX_AGE: Duration = Duration::from_millis(500);
const PUSH_INTERVAL: Duration = Duration::from_millis(100);
const POLL_MAX_AGE: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Poll reconnect backoff reaches 30 s (+ jitter within it): recovery must come before this.
const RECOVERY_BOUND: Duration = Duration::from_secs(40);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Healthy,
    Push(PushFault),
    Hogs,
    Slave(SlaveFault),
    Noise,
    ForeignTraffic,
    Broadcasts,
}

#[derive(Default, Debug)]
struct Tally {
    reads: u64,
    push_ok: u64,
    poll_ok: u64,
    silent: u64,
    exceptions: u64,
    /// Replies that missed the master's timeout where a reply was due (machine load).
    late: u64,
    /// The last read timed out (its reply may still come).
    after_timeout: bool,
    outages: u64,
    recoveries: Vec<(String, Duration)>,
    worst_push_age: Duration,
    worst_poll_lag: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak, minutes to hours: AIRBRIDGE_SOAK_SECS=N cargo test --test ksem -- --ignored --exact soak::soak (.ci/run skips it in its --include-ignored run and runs it short on its own)"]
async fn soak() {
    let secs: u64 = std::env::var("AIRBRIDGE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let total = Duration::from_secs(secs.max(20));
    let seed: u64 = std::env::var("AIRBRIDGE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x50A6);
    let mut rng = fastrand::Rng::with_seed(seed);

    let slave = FaultySlave::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("slave");
    let push_addr = common::dead_addr().await;
    let (master, pts) = SerialStream::pair().expect("pty");
    let pts_name = pts.name().expect("pts name");
    drop(pts);
    let dir = std::env::temp_dir().join(format!("airbridge-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gateway.yaml");
    let yaml = format!(
        "rtu: {{device: '{pts_name}', turnaround: 0, frame_timeout: 20ms}}
push: {{listen: '{push_addr}', allow_from: [127.0.0.1], max_connections: 4, idle_timeout: 2s}}
poll: {{host: '{}', timeout: 500ms}}
regions:
  - {{name: totals, start: 0, count: 40, source: push, max_age: {}ms}}
  - {{name: phases, start: 40, count: 108, source: push, max_age: {}ms}}
  - {{name: energy, start: 512, count: 280, source: poll, every: {}ms, max_age: {}ms, on_stale: exception}}
  - {{name: identity, start: 8192, count: 58, source: static, values: {{8244: 200}}}}
",
        slave.addr(),
        PUSH_MAX_AGE.as_millis(),
        PUSH_MAX_AGE.as_millis(),
        POLL_EVERY.as_millis(),
        POLL_MAX_AGE.as_millis(),
    );
    std::fs::write(&cfg, yaml).expect("config");
    let mut child = Kill(
        common::airbridge_cmd()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gateway"),
    );
    let pid = child.0.id();
    // The push listener is up once a connect succeeds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(push_addr).await.is_err() {
        assert!(Instant::now() < deadline, "gateway never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pusher = FaultyPusher::start(push_addr, PUSH_INTERVAL, seed);
    // A generous timeout and drain window: on a loaded machine a reply may come late, and a
    // late reply must not run into the next one.
    let mut inv = RtuMaster::new(master, Duration::from_secs(1))
        .with_drain_window(Duration::from_millis(200));
    let mut epochs: Vec<(u16, Instant)> = vec![(1, Instant::now())];
    let mut t = Tally::default();

    let start = Instant::now();
    let warm_end = start + total / 3;
    let mut rss_base: Option<u64> = None;
    let mut rss_peak = 0u64;
    let mut phase_no = 0u64;
    while start.elapsed() < total {
        phase_no += 1;
        let phase = if phase_no % 2 == 1 {
            Phase::Healthy
        } else {
            match rng.u8(0..12) {
                0 => Phase::Push(PushFault::Stop),
                1 => Phase::Push(PushFault::Garbage),
                2 => Phase::Push(PushFault::Outside),
                3 => Phase::Hogs,
                4 => Phase::Slave(SlaveFault::Refuse),
                5 => Phase::Slave(SlaveFault::Hang),
                6 => Phase::Slave(SlaveFault::ResetMidReply),
                7 => Phase::Slave(SlaveFault::WrongTransaction),
                8 => Phase::Slave(SlaveFault::Exception(4)),
                9 => Phase::Noise,
                10 => Phase::ForeignTraffic,
                _ => Phase::Broadcasts,
            }
        };
        let len = Duration::from_millis(rng.u64(1000..4000));
        let mut hogs = Vec::new();
        match phase {
            Phase::Push(f) => pusher.set(f),
            Phase::Slave(f) => slave.set(f).await.expect("slave fault"),
            Phase::Hogs => hogs = hog(push_addr, 4).await,
            _ => {}
        }
        if phase != Phase::Healthy {
            t.outages += 1;
        }
        let end = Instant::now() + len;
        while Instant::now() < end {
            check_once(
                &mut inv,
                &pusher,
                &slave,
                &mut epochs,
                &mut t,
                phase,
                &mut rng,
            )
            .await;
            assert!(
                child.0.try_wait().expect("wait").is_none(),
                "the gateway exited"
            );
        }
        drop(hogs);
        pusher.set(PushFault::None);
        slave.set(SlaveFault::None).await.expect("heal");
        if phase != Phase::Healthy {
            // Recovery: fresh push data and fresh polled data (a new epoch) again.
            let healed = Instant::now();
            let mut ok = (false, false);
            while !(ok.0 && ok.1) {
                assert!(
                    healed.elapsed() < RECOVERY_BOUND,
                    "no recovery from {phase:?} within {RECOVERY_BOUND:?}"
                );
                let r = check_once(
                    &mut inv,
                    &pusher,
                    &slave,
                    &mut epochs,
                    &mut t,
                    Phase::Healthy,
                    &mut rng,
                )
                .await;
                ok.0 |= r.0
                    && pusher
                        .stats()
                        .last_seq
                        .load(std::sync::atomic::Ordering::Relaxed)
                        > 0;
                ok.1 |= r.1;
            }
            t.recoveries.push((format!("{phase:?}"), healed.elapsed()));
        }
        if Instant::now() >= warm_end {
            let r = rss_kib(pid).expect("child RSS");
            rss_base.get_or_insert(r);
            rss_peak = rss_peak.max(r);
        }
    }
    let rss_end = rss_kib(pid).expect("child RSS");
    let base = rss_base.unwrap_or(rss_end);
    let mut worst: Vec<(String, Duration)> = Vec::new();
    for (name, d) in &t.recoveries {
        match worst.iter_mut().find(|(n, _)| n == name) {
            Some(w) => w.1 = w.1.max(*d),
            None => worst.push((name.clone(), *d)),
        }
    }
    eprintln!(
        "SOAK {}s seed {seed}: {} phases, {} outages, {} recoveries; reads {} (push ok {}, poll ok {}, silent {}, exceptions {}, late {}); worst push data age {:?} (bound {:?}); worst poll lag {:?} (bound {:?}); RSS after warm-up {base} KiB, end {rss_end} KiB, peak {rss_peak} KiB",
        start.elapsed().as_secs(),
        phase_no,
        t.outages,
        t.recoveries.len(),
        t.reads,
        t.push_ok,
        t.poll_ok,
        t.silent,
        t.exceptions,
        t.late,
        t.worst_push_age,
        PUSH_MAX_AGE + PUSH_INTERVAL,
        t.worst_poll_lag,
        POLL_MAX_AGE + POLL_EVERY,
    );
    for (name, d) in &worst {
        eprintln!("SOAK worst recovery {name}: {} ms", d.as_millis());
    }
    assert_eq!(
        t.recoveries.len() as u64,
        t.outages,
        "an outage without recovery"
    );
    assert!(t.push_ok > 0 && t.poll_ok > 0, "nothing served: {t:?}");
    assert!(
        rss_end < base + 1024,
        "RSS grew from {base} KiB to {rss_end} KiB after warm-up"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One read. A CRC-broken or garbled reply right after a timeout is the late reply of the
/// request that timed out running into this one (a loaded machine): counted as late. Anywhere
/// else it fails the run: the gateway never sends a bad frame.
async fn read(
    inv: &mut RtuMaster<SerialStream>,
    t: &mut Tally,
    phase: Phase,
    address: u16,
    count: u16,
) -> Result<Vec<u16>, ReplyError> {
    t.reads += 1;
    let r = inv.read(1, 3, address, count).await;
    let r = match r {
        Err(ReplyError::BadCrc | ReplyError::BadFrame(_)) if t.after_timeout => {
            t.late += 1;
            Err(ReplyError::Timeout)
        }
        Err(e @ (ReplyError::BadCrc | ReplyError::BadFrame(_))) => {
            panic!("bad reply to {address}+{count} in {phase:?}: {e:?}")
        }
        other => other,
    };
    t.after_timeout = matches!(r, Err(ReplyError::Timeout));
    r
}

/// One round of reads (and the phase's bus traffic); returns (push fresh, poll fresh).
#[allow(clippy::too_many_arguments)]
async fn check_once(
    inv: &mut RtuMaster<SerialStream>,
    pusher: &FaultyPusher,
    slave: &FaultySlave,
    epochs: &mut Vec<(u16, Instant)>,
    t: &mut Tally,
    phase: Phase,
    rng: &mut fastrand::Rng,
) -> (bool, bool) {
    match phase {
        Phase::Noise => {
            let n = rng.usize(1..200);
            let _ = inv.get_mut().write_all(&bus::noise(rng, n)).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Phase::ForeignTraffic => {
            let unit = rng.u8(2..=247);
            let mut b = bus::request(unit, 3, rng.u16(..), 10);
            b.extend(bus::response(unit, 3, 10));
            let _ = inv.get_mut().write_all(&b).await;
        }
        Phase::Broadcasts => {
            let _ = inv
                .get_mut()
                .write_all(&bus::broadcast(0, &[rng.u16(..)]))
                .await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        _ => {}
    }
    // The slave moves to a new epoch now and then, so polled data has an age to check.
    if epochs
        .last()
        .is_some_and(|(_, at)| at.elapsed() > Duration::from_millis(700))
    {
        let e = slave.epoch().wrapping_add(1);
        slave.set_epoch(e);
        epochs.push((e, Instant::now()));
        if epochs.len() > 4096 {
            epochs.remove(0);
        }
    }
    let mut fresh = (false, false);
    for (start, count) in [(0u16, 28u16), (40, 106)] {
        let sent = Instant::now();
        match read(inv, t, phase, start, count).await {
            Ok(w) => {
                let seq = push_seq(w[0], start);
                for (i, &x) in w.iter().enumerate() {
                    assert_eq!(
                        push_seq(x, start + i as u16),
                        seq,
                        "torn push data at {}",
                        start as usize + i
                    );
                }
                let done = Instant::now();
                let pushed = pusher
                    .sent_at(seq)
                    .expect("served a push that was never sent");
                let age = done.saturating_duration_since(pushed);
                let exchange = done - sent;
                assert!(
                    age <= PUSH_MAX_AGE + PUSH_INTERVAL + exchange,
                    "stale push data served: sequence {seq} sent {age:?} ago (exchange {exchange:?})"
                );
                t.worst_push_age = t.worst_push_age.max(age.saturating_sub(exchange));
                t.push_ok += 1;
                fresh.0 = true;
            }
            Err(ReplyError::Timeout) => t.silent += 1,
            Err(e) => panic!("push region read in {phase:?}: {e:?}"),
        }
    }
    let sent = Instant::now();
    match read(inv, t, phase, 512, 4).await {
        Ok(w) => {
            let done = Instant::now();
            let e = epochs
                .iter()
                .rev()
                .find(|(e, _)| w[0] == slave_word(*e, 512))
                .map(|(e, _)| *e)
                .expect("polled words of no epoch");
            for (i, &x) in w.iter().enumerate() {
                assert_eq!(x, slave_word(e, 512 + i as u16), "torn polled data");
            }
            // When did the slave stop serving epoch e?
            if let Some((_, next_at)) = epochs.iter().find(|(n, _)| *n == e.wrapping_add(1)) {
                let lag = done.saturating_duration_since(*next_at);
                let exchange = done - sent;
                assert!(
                    lag <= POLL_MAX_AGE + POLL_EVERY + exchange,
                    "stale polled data: epoch {e} served {lag:?} after the slave moved on"
                );
                t.worst_poll_lag = t.worst_poll_lag.max(lag.saturating_sub(exchange));
            } else {
                fresh.1 = true;
            }
            t.poll_ok += 1;
        }
        Err(ReplyError::Exception(4)) => t.exceptions += 1,
        // Stale polled data is an exception here, never silence: a timeout is a late reply.
        Err(ReplyError::Timeout) => t.late += 1,
        Err(e) => panic!("polled region read in {phase:?}: {e:?}"),
    }
    // The static region is always answered. A loaded machine may delay one reply past the
    // master's timeout: that is counted; two in a row fail the run.
    let mut id = read(inv, t, phase, 8244, 1).await;
    if matches!(id, Err(ReplyError::Timeout)) {
        t.late += 1;
        id = read(inv, t, phase, 8244, 1).await;
    }
    assert!(
        matches!(id.as_deref(), Ok([200])),
        "static region in {phase:?}: {id:?}"
    );
    (fresh.0, fresh.1)
}
