//! Fault injection against the real gateway (pty pair + loopback TCP), driven by the
//! fault-capable peers of `airbridge_sim::fault`. Each case checks: no task ended (no panic,
//! no give-up), the RTU side keeps answering what is fresh (a static region) and applies the
//! freshness rule to what is not, the counters say what happened, and once the fault ends the
//! gateway recovers within its backoff bound (an "eventually" with a generous deadline).
//! Recovery times are measured, not asserted: run with `--nocapture` to see the
//! `RECOVERY <case> <ms>` lines (docs/notes-hard.md has a table of them).
//!
//! Cases already in `tests/e2e.rs` (poller reconnect after a restart, accept-and-hang-up
//! backoff, short replies, idle and over-limit push connections, allow list) are not repeated.

use crate::common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use airbridge::app::gateway::Gateway;
use airbridge::link::rtu_master::ReplyError;
use airbridge_sim::fault::{
    bus, hog, push_seq, slave_word, FaultyPusher, FaultySlave, PushFault, SlaveFault,
};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A static region: always fresh, so it shows the RTU side is not stalled.
const IDENTITY: &str =
    "  - {name: identity, start: 8192, count: 58, source: static, values: {8244: 200}}\n";

/// No task of the gateway ended (a panic or a loop that gave up would).
async fn assert_alive(gw: &mut Gateway) {
    let ended = tokio::time::timeout(Duration::from_millis(20), gw.failed()).await;
    assert!(ended.is_err(), "a gateway task ended: {ended:?}");
}

/// The static region still answers: the RTU side is serving.
async fn assert_serving(rig: &mut Rig) {
    let r = rtu_read(rig, 8244, 1).await;
    assert!(matches!(r.as_deref(), Ok([200])), "RTU side stalled: {r:?}");
}

fn report(case: &str, d: Duration) {
    eprintln!("RECOVERY {case} {}", d.as_millis());
}

// ----------------------------------------------------------------------------------------
// Poll side: the KSEM's Modbus TCP slave misbehaves.

const POLLED: &str = "  - {name: energy, start: 512, count: 280, source: poll, every: 100ms, max_age: 600ms, on_stale: exception}\n";

fn epoch_words(epoch: u16, start: u16, n: u16) -> Vec<u16> {
    (start..start + n).map(|a| slave_word(epoch, a)).collect()
}

/// Run one poll-side fault: healthy → fault (stale, counted) → healthy again (recovered).
async fn poll_fault(case: &str, fault: SlaveFault) -> (Rig, FaultySlave) {
    let slave = FaultySlave::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("slave");
    let mut rig = gateway(&format!("{POLLED}{IDENTITY}"), slave.addr(), LOCAL_PUSH).await;
    let got = rtu_read_eventually(&mut rig, 512, 4, Duration::from_secs(5))
        .await
        .expect("polled");
    assert_eq!(got, epoch_words(1, 512, 4));

    let p = &rig.gateway.handles.poll;
    let ok_before = p.regions_ok.load(Relaxed);
    let failed_before = p.regions_failed.load(Relaxed) + p.connect_failures.load(Relaxed);
    slave.set(fault).await.expect("set fault");
    slave.set_epoch(2);
    // Stale after max_age: exception 04 as configured, while the static region is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rtu_read(&mut rig, 512, 4).await {
            Err(ReplyError::Exception(4)) => break,
            Ok(w) => assert_eq!(w, epoch_words(1, 512, 4), "{case}: data from the fault"),
            other => panic!("{case}: {other:?}"),
        }
        assert!(Instant::now() < deadline, "{case}: never went stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_serving(&mut rig).await;
    assert!(rig.gateway.handles.rtu.exception_codes[4].load(Relaxed) >= 1);
    // Let the fault repeat (backoff grows) for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = &rig.gateway.handles.poll;
    assert_eq!(
        p.regions_ok.load(Relaxed),
        ok_before,
        "{case}: committed during the fault"
    );
    assert!(
        p.regions_failed.load(Relaxed) + p.connect_failures.load(Relaxed) > failed_before,
        "{case}: failure not counted"
    );
    assert_alive(&mut rig.gateway).await;

    slave.set(SlaveFault::None).await.expect("heal");
    let t0 = Instant::now();
    let got = rtu_read_eventually(&mut rig, 512, 4, Duration::from_secs(40))
        .await
        .unwrap_or_else(|e| panic!("{case}: no recovery: {e:?}"));
    report(case, t0.elapsed());
    assert_eq!(
        got,
        epoch_words(2, 512, 4),
        "{case}: fresh data after recovery"
    );
    assert_alive(&mut rig.gateway).await;
    (rig, slave)
}

fn last_error(rig: &Rig) -> String {
    rig.gateway
        .handles
        .poll
        .last_error
        .lock()
        .map(|e| e.clone().unwrap_or_default())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_connection_refused() {
    let (rig, slave) = poll_fault("poll: connection refused", SlaveFault::Refuse).await;
    assert!(rig.gateway.handles.poll.connect_failures.load(Relaxed) >= 1);
    assert!(slave.stats().accepted.load(Relaxed) >= 2, "reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_accept_then_hang() {
    let (rig, slave) = poll_fault("poll: accept then hang", SlaveFault::Hang).await;
    assert!(
        last_error(&rig).contains("timed out"),
        "{}",
        last_error(&rig)
    );
    assert!(slave.stats().faulted.load(Relaxed) >= 1);
    assert!(
        rig.gateway.handles.poll.connects.load(Relaxed) >= 2,
        "a hung connection is dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reset_in_the_middle_of_a_reply() {
    let (rig, _slave) = poll_fault("poll: RST mid-reply", SlaveFault::ResetMidReply).await;
    assert!(rig.gateway.handles.poll.connects.load(Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reply_with_a_wrong_transaction_id() {
    let (rig, _slave) =
        poll_fault("poll: wrong transaction id", SlaveFault::WrongTransaction).await;
    assert!(
        rig.gateway.handles.poll.connects.load(Relaxed) >= 2,
        "connection not trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reply_with_a_wrong_length() {
    let (rig, _slave) = poll_fault("poll: wrong length", SlaveFault::WrongLength).await;
    assert!(rig.gateway.handles.poll.connects.load(Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reply_from_a_wrong_unit() {
    let (rig, _slave) = poll_fault("poll: wrong unit", SlaveFault::WrongUnit).await;
    assert!(rig.gateway.handles.poll.connects.load(Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_exception_replies() {
    for code in [2u8, 4, 0x0B] {
        let case = format!("poll: exception {code:02X}");
        let (rig, _slave) = poll_fault(&case, SlaveFault::Exception(code)).await;
        assert!(
            last_error(&rig).contains("exception"),
            "{}",
            last_error(&rig)
        );
        // An exception is an answer: the connection is kept.
        assert_eq!(rig.gateway.handles.poll.connects.load(Relaxed), 1, "{case}");
    }
}

// ----------------------------------------------------------------------------------------
// Push side: the KSEM pushes badly.

const PUSHED: &str = "  - {name: totals, start: 0, count: 40, source: push, max_age: 500ms}
  - {name: phases, start: 40, count: 108, source: push, max_age: 500ms}
";

/// Words 0..28 are all of one push (no torn or mixed values); returns its sequence number.
fn one_push(words: &[u16], start: u16) -> u16 {
    let seq = push_seq(words[0], start);
    for (i, &w) in words.iter().enumerate() {
        assert_eq!(
            push_seq(w, start + i as u16),
            seq,
            "word {} from another push",
            start as usize + i
        );
    }
    seq
}

async fn push_rig(push_opts: &str) -> (Rig, FaultyPusher) {
    let mut rig = gateway(&format!("{PUSHED}{IDENTITY}"), dead_addr().await, push_opts).await;
    let pusher = FaultyPusher::start(
        rig.gateway.push_addr.expect("push"),
        Duration::from_millis(100),
        7,
    );
    let w = rtu_read_eventually(&mut rig, 0, 28, Duration::from_secs(5))
        .await
        .expect("pushed");
    one_push(&w, 0);
    (rig, pusher)
}

/// Wait for silence (stale push regions), with the static region still served.
async fn until_stale(rig: &mut Rig, case: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while rtu_read(rig, 0, 28).await.is_ok() {
        assert!(Instant::now() < deadline, "{case}: never went stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_serving(rig).await;
    assert!(rig.gateway.handles.rtu.silent_stale.load(Relaxed) >= 1);
}

async fn recover_push(rig: &mut Rig, pusher: &FaultyPusher, case: &str) {
    let seq_before = pusher.stats().last_seq.load(Relaxed) as u16;
    pusher.set(PushFault::None);
    let t0 = Instant::now();
    let w = rtu_read_eventually(rig, 0, 28, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{case}: no recovery: {e:?}"));
    report(case, t0.elapsed());
    let seq = one_push(&w, 0);
    assert!(
        seq > seq_before,
        "{case}: served a push from before the fault"
    );
    assert_alive(&mut rig.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stops_with_the_connection_open_then_resumes() {
    let (mut rig, pusher) = push_rig("allow_from: [127.0.0.1], idle_timeout: 1s").await;
    pusher.set(PushFault::Stop);
    until_stale(&mut rig, "push stops").await;
    // Silent for longer than idle_timeout: the gateway closes the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.gateway.handles.push.front.idle_timeouts.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "idle connection never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    recover_push(&mut rig, &pusher, "push: KSEM stops pushing").await;
    assert!(
        pusher.stats().connects.load(Relaxed) >= 2,
        "pusher reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_garbage_closes_the_connection_and_writes_nothing() {
    let (mut rig, pusher) = push_rig(LOCAL_PUSH).await;
    let accepted = rig.gateway.handles.push.front.accepted.load(Relaxed);
    pusher.set(PushFault::Garbage);
    until_stale(&mut rig, "push garbage").await;
    let gen = rig.gateway.handles.image.load().generation;
    let ok = rig.gateway.handles.push.writes_ok.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rig.gateway.handles.image.load().generation,
        gen,
        "garbage committed"
    );
    assert_eq!(rig.gateway.handles.push.writes_ok.load(Relaxed), ok);
    assert!(pusher.stats().garbage_bytes.load(Relaxed) > 0);
    assert!(
        rig.gateway.handles.push.front.accepted.load(Relaxed) > accepted + 1,
        "garbage connections are closed (and the KSEM reconnects)"
    );
    recover_push(&mut rig, &pusher, "push: garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_outside_the_push_regions_is_refused() {
    let (mut rig, pusher) = push_rig(LOCAL_PUSH).await;
    pusher.set(PushFault::Outside);
    until_stale(&mut rig, "push outside").await;
    let gen = rig.gateway.handles.image.load().generation;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rig.gateway.handles.image.load().generation,
        gen,
        "refused writes committed"
    );
    assert!(rig.gateway.handles.push.writes_refused.load(Relaxed) >= 2);
    assert!(pusher.stats().exceptions.load(Relaxed) >= 2);
    // Nothing outside became readable: 148 is still no register.
    assert!(matches!(
        rtu_read(&mut rig, 148, 1).await,
        Err(ReplyError::Exception(2))
    ));
    recover_push(&mut rig, &pusher, "push: outside the push regions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_connections_beyond_the_limit() {
    let opts = "allow_from: [127.0.0.1], max_connections: 2, idle_timeout: 1s";
    let mut rig = gateway(&format!("{PUSHED}{IDENTITY}"), dead_addr().await, opts).await;
    let addr = rig.gateway.push_addr.expect("push");
    // Hogs take every slot before the KSEM arrives.
    let hogs = hog(addr, 2).await;
    let t0 = Instant::now();
    let pusher = FaultyPusher::start(addr, Duration::from_millis(100), 9);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let push = &rig.gateway.handles.push;
    assert!(
        push.front.refused_limit.load(Relaxed) >= 1,
        "the KSEM is refused while hogs hold the slots"
    );
    assert!(push.front.open.load(Relaxed) <= 2);
    // The hogs are idle: closed after idle_timeout, and the KSEM gets in.
    let w = rtu_read_eventually(&mut rig, 0, 28, Duration::from_secs(10))
        .await
        .expect("served once the hogs timed out");
    report("push: connections beyond the limit", t0.elapsed());
    one_push(&w, 0);
    assert!(rig.gateway.handles.push.front.idle_timeouts.load(Relaxed) >= 2);
    assert_alive(&mut rig.gateway).await;
    drop(hogs);
    drop(pusher);
}

// ----------------------------------------------------------------------------------------
// Serial side: a shared, noisy bus.

async fn serial_rig() -> (Rig, FaultyPusher) {
    let (rig, pusher) = push_rig(LOCAL_PUSH).await;
    (rig, pusher)
}

async fn bus_write(rig: &mut Rig, bytes: &[u8]) {
    let s = rig.inverter.get_mut();
    s.write_all(bytes).await.expect("write to the bus");
}

/// The gateway sends nothing for a while (it must not answer traffic that is not for it).
async fn assert_quiet(rig: &Rig, case: &str) {
    let tx = rig.gateway.handles.rtu.tx_bytes.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rig.gateway.handles.rtu.tx_bytes.load(Relaxed),
        tx,
        "{case}: the gateway answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_noise_bursts() {
    let (mut rig, _pusher) = serial_rig().await;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        let n = rng.usize(1..120);
        bus_write(&mut rig, &bus::noise(&mut rng, n)).await;
        tokio::time::sleep(Duration::from_millis(30)).await; // a silence longer than frame_timeout
        let t0 = Instant::now();
        let w = rtu_read(&mut rig, 0, 28)
            .await
            .expect("answered after the noise");
        worst = worst.max(t0.elapsed());
        one_push(&w, 0);
    }
    report("serial: noise bursts (worst request after a burst)", worst);
    let s = &rig.gateway.handles.rtu;
    assert!(
        s.garbage_bytes.load(Relaxed) + s.partial_discarded.load(Relaxed) > 0,
        "noise not counted"
    );
    assert_alive(&mut rig.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_shared_bus_with_another_master() {
    let (mut rig, _pusher) = serial_rig().await;
    let foreign_before = rig.gateway.handles.rtu.foreign.load(Relaxed);
    for unit in [2u8, 5, 247] {
        bus_write(&mut rig, &bus::request(unit, 3, 0, 10)).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        bus_write(&mut rig, &bus::response(unit, 3, 10)).await;
        assert_quiet(&rig, "other units' traffic").await;
    }
    assert!(rig.gateway.handles.rtu.foreign.load(Relaxed) >= foreign_before + 6);
    // Back to back, no silence: another master's exchange, then our request.
    let mut burst = bus::request(9, 4, 100, 2);
    burst.extend(bus::response(9, 4, 2));
    bus_write(&mut rig, &burst).await;
    let w = rtu_read(&mut rig, 0, 28)
        .await
        .expect("ours answered on a shared bus");
    one_push(&w, 0);
    assert_alive(&mut rig.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_broadcast_writes_are_never_answered_nor_applied() {
    let (mut rig, pusher) = serial_rig().await;
    pusher.set(PushFault::Stop); // so the image only changes if a broadcast wrote to it
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gen = rig.gateway.handles.image.load().generation;
    let tx = rig.gateway.handles.rtu.tx_bytes.load(Relaxed);
    bus_write(&mut rig, &bus::broadcast(0, &[0xBAD])).await;
    tokio::time::sleep(Duration::from_millis(25)).await;
    bus_write(&mut rig, &bus::broadcast(0, &[1, 2, 3])).await;
    // Under load the slave's thread may take a while to see the frames: wait (bounded)
    // until both were taken as broadcasts, then check that nothing was sent since before.
    for _ in 0..100 {
        if rig.gateway.handles.rtu.broadcast.load(Relaxed) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.gateway.handles.rtu.broadcast.load(Relaxed), 2);
    assert_quiet(&rig, "broadcast").await;
    assert_eq!(
        rig.gateway.handles.rtu.tx_bytes.load(Relaxed),
        tx,
        "broadcast: the gateway answered"
    );
    assert_eq!(
        rig.gateway.handles.image.load().generation,
        gen,
        "a broadcast wrote"
    );
    assert_serving(&mut rig).await;
    assert_alive(&mut rig.gateway).await;
}

/// The serial device vanishes (adapter unplugged: the pty's master end closes, its node
/// disappears) and comes back at the same path: the gateway re-opens it with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_device_disappears_and_comes_back() {
    use tokio_serial::{SerialPort, SerialStream};

    let dir = std::env::temp_dir().join(format!("airbridge-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join("ttyRS485");
    // A pty pair whose slave end is reached through `link`; the slave handle is closed so
    // the gateway can open it by path.
    let plug = |link: &std::path::Path| -> SerialStream {
        let (master, slave) = SerialStream::pair().expect("pty pair");
        let name = slave.name().expect("pts name");
        drop(slave);
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
        std::fs::rename(&tmp, link).expect("rename");
        master
    };
    let master = plug(&link);
    let yaml = format!(
        "rtu: {{device: '{}', turnaround: 0, frame_timeout: 20ms}}\nregions:\n{IDENTITY}",
        link.display()
    );
    let cfg = airbridge::config::parse(&yaml, "test")
        .expect("config")
        .config;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut gw = Gateway::start(
        cfg,
        airbridge::app::gateway::RtuPort::Device,
        cancel.clone(),
    )
    .await
    .expect("start");
    let read = |m: SerialStream| async move {
        let mut inv = airbridge::link::rtu_master::RtuMaster::new(m, Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match inv.read(1, 3, 8244, 1).await {
                Ok(w) => return (w, inv.into_inner()),
                Err(e) => assert!(Instant::now() < deadline, "never served: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (w, master) = read(master).await;
    assert_eq!(w, vec![200]);
    let rtu = std::sync::Arc::clone(&gw.handles.rtu);
    assert_eq!(rtu.device_opens.load(Relaxed), 1);

    // Unplug: the master end closes and the device node goes away.
    drop(master);
    std::fs::remove_file(&link).expect("unlink");
    let deadline = Instant::now() + Duration::from_secs(5);
    while rtu.device_failures.load(Relaxed) < 2 {
        assert!(Instant::now() < deadline, "loss of the device not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_alive(&mut gw).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // stays away; backoff grows

    // Plug back in (a new pty at the same path).
    let master = plug(&link);
    let t0 = Instant::now();
    let (w, _master) = read(master).await;
    report("serial: device gone and back", t0.elapsed());
    assert_eq!(w, vec![200]);
    assert_eq!(rtu.device_opens.load(Relaxed), 2);
    assert_alive(&mut gw).await;
    cancel.cancel();
    gw.join(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config whose `rtu.device` names a regular file: the gateway refuses it as a serial port
/// (retrying with backoff) and never writes to it, so the config cannot make it write files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_file_as_the_serial_device_is_never_written() {
    let dir = std::env::temp_dir().join(format!("airbridge-file-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("not-a-tty");
    std::fs::write(&file, b"precious").expect("file");
    let yaml = format!(
        "rtu: {{device: '{}'}}\nregions:\n{IDENTITY}",
        file.display()
    );
    let cfg = airbridge::config::parse(&yaml, "test")
        .expect("config")
        .config;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut gw = Gateway::start(
        cfg,
        airbridge::app::gateway::RtuPort::Device,
        cancel.clone(),
    )
    .await
    .expect("start");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.handles.rtu.device_failures.load(Relaxed) < 2 {
        assert!(Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.handles.rtu.device_opens.load(Relaxed),
        0,
        "a file is no serial port"
    );
    assert_alive(&mut gw).await;
    assert_eq!(std::fs::read(&file).expect("read"), b"precious");
    cancel.cancel();
    gw.join(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
