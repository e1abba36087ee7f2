//! End to end: the real gateway between simulated devices, over a pseudo-terminal pair and
//! loopback TCP. Real time, bounded: every wait has a deadline.

use crate::common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use airbridge::link::rtu_master::ReplyError;
use common::*;

const PUSH_REGIONS: &str = "  - {name: totals, start: 0, count: 40, source: push}
  - {name: phases, start: 40, count: 108, source: push}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inverter_reads_exactly_what_the_ksem_pushed_and_what_was_polled() {
    let ksem = frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let regions = format!(
        "{PUSH_REGIONS}  - {{name: energy, start: 512, count: 280, source: [push, poll], every: 200ms}}
  - {{name: identity, start: 8192, count: 58, source: poll, every: 1h}}
"
    );
    let mut rig = gateway(&regions, ksem.slave_addr(), LOCAL_PUSH).await;
    let push_addr = rig.gateway.push_addr.expect("push listener");
    let mut ctx = push_client(push_addr).await;
    let pushed = push_groups(&mut ctx, 1).await;

    let instant = rtu_read_eventually(&mut rig, 0, 148, Duration::from_secs(5))
        .await
        .expect("served once warm");
    assert_eq!(
        instant,
        pushed.to_vec(),
        "0..147 as pushed; 28..39 and 146..147 read 0"
    );
    // The inverter's own request pattern: two halves of 74.
    assert_eq!(
        rig.inverter.read(1, 3, 0, 74).await.expect("first half"),
        pushed[..74].to_vec()
    );
    assert_eq!(
        rig.inverter
            .read(1, 4, 74, 74)
            .await
            .expect("FC04 second half"),
        pushed[74..].to_vec()
    );

    let model = ksem.model();
    let (energy, pnp) = {
        let m = airbridge_sim::ksem::lock_model(&model);
        (m.energy_block(), m.pnp_block())
    };
    assert_eq!(
        rtu_read(&mut rig, 512, 280).await.expect("energy"),
        energy.to_vec(),
        "polled in 3 chunks, served as one"
    );
    let identity = rtu_read(&mut rig, 8192, 58).await.expect("identity");
    assert_eq!(identity[..53], pnp[..53], "identity up to 8244");
    assert_eq!(identity[52], 200, "8244 = measuring interval");
    assert_eq!(identity[57], pnp[57], "8249");

    // A newer push replaces the old one; a push may also land in [push, poll] regions.
    let pushed2 = push_groups(&mut ctx, 2).await;
    write(&mut ctx, 512, &[0xAAAA, 0xBBBB])
        .await
        .expect("energy accepts pushes");
    assert_eq!(
        rtu_read(&mut rig, 0, 148).await.expect("read"),
        pushed2.to_vec()
    );
    let s = &rig.gateway.handles;
    assert!(s.push.writes_ok.load(Relaxed) >= 5);
    assert!(s.rtu.replies.load(Relaxed) >= 8);
    assert_eq!(s.rtu.crc_errors.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_push_data_means_silence_until_pushes_resume() {
    let regions = "  - {name: totals, start: 0, count: 40, source: push, max_age: 300ms}
  - {name: phases, start: 40, count: 108, source: push, max_age: 300ms}
";
    let mut rig = gateway(regions, dead_addr().await, LOCAL_PUSH).await;
    let mut ctx = push_client(rig.gateway.push_addr.expect("push")).await;
    push_groups(&mut ctx, 3).await;
    rtu_read_eventually(&mut rig, 0, 10, Duration::from_secs(2))
        .await
        .expect("fresh");

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        matches!(rtu_read(&mut rig, 0, 10).await, Err(ReplyError::Timeout)),
        "silent when stale"
    );
    assert!(matches!(
        rtu_read(&mut rig, 40, 10).await,
        Err(ReplyError::Timeout)
    ));
    assert!(rig.gateway.handles.rtu.silent_stale.load(Relaxed) >= 2);

    let pushed = push_groups(&mut ctx, 4).await;
    let got = rtu_read(&mut rig, 0, 10)
        .await
        .expect("answers again after pushes resume");
    assert_eq!(got, pushed[..10].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_polling_serves_push_regions_while_pushes_are_missing() {
    let ksem = frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let regions = "  - {name: totals, start: 0, count: 40, source: push, max_age: 400ms, fallback_poll: 100ms}
  - {name: phases, start: 40, count: 108, source: push, max_age: 400ms, fallback_poll: 100ms}
";
    let mut rig = gateway(regions, ksem.slave_addr(), LOCAL_PUSH).await;
    // No push at all: after max_age the fallback fills and keeps the regions fresh.
    let got = rtu_read_eventually(&mut rig, 0, 148, Duration::from_secs(5))
        .await
        .expect("served from fallback polls");
    // Sampled after the read: the frozen model takes its one step when the simulator starts.
    let expected = airbridge_sim::ksem::lock_model(&ksem.model()).instantaneous_block();
    assert_eq!(got, expected.to_vec());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        rtu_read(&mut rig, 0, 148).await.is_ok(),
        "kept fresh by the fallback"
    );
    let polls = &rig.gateway.handles.poll.fallback_polls;
    assert!(polls.load(Relaxed) >= 4, "fallback polled repeatedly");

    // Pushes resume: fallback polling stops, pushed values are served.
    let mut ctx = push_client(rig.gateway.push_addr.expect("push")).await;
    let mut pushed = push_groups(&mut ctx, 5).await;
    let before = polls.load(Relaxed);
    for i in 0..8 {
        pushed = push_groups(&mut ctx, 6 + i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        polls.load(Relaxed) <= before + 2,
        "fallback stops while pushes arrive"
    );
    assert_eq!(
        rtu_read(&mut rig, 0, 148).await.expect("read"),
        pushed.to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_before_every_region_was_filled() {
    let regions = format!(
        "{PUSH_REGIONS}  - {{name: identity, start: 8192, count: 58, source: poll, every: 1h}}\n"
    );
    let mut rig = gateway(&regions, dead_addr().await, LOCAL_PUSH).await;
    let mut ctx = push_client(rig.gateway.push_addr.expect("push")).await;
    push_groups(&mut ctx, 1).await;
    assert!(
        matches!(rtu_read(&mut rig, 0, 10).await, Err(ReplyError::Timeout)),
        "pushed but identity never polled"
    );
    assert!(matches!(
        rtu_read(&mut rig, 8244, 1).await,
        Err(ReplyError::Timeout)
    ));
    assert!(rig.gateway.handles.rtu.silent_warmup.load(Relaxed) >= 2);
    // Address errors are still reported during warm-up (checked before it).
    let e = rtu_read(&mut rig, 300, 1).await;
    assert!(matches!(e, Err(ReplyError::Exception(2))), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_recovers_after_the_ksem_restarts() {
    let ksem = frozen_ksem("127.0.0.1:0".parse().expect("addr")).await;
    let addr = ksem.slave_addr();
    let regions = "  - {name: energy, start: 512, count: 280, source: poll, every: 100ms, max_age: 600ms, on_stale: exception}\n";
    let mut rig = gateway(regions, addr, LOCAL_PUSH).await;
    rtu_read_eventually(&mut rig, 512, 4, Duration::from_secs(3))
        .await
        .expect("polled");
    ksem.stop();
    drop(ksem);
    // Stale after max_age: exception 04, as configured.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match rtu_read(&mut rig, 512, 4).await {
            Err(ReplyError::Exception(4)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "never went stale: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ksem = frozen_ksem(addr).await; // back on the same port
    rtu_read_eventually(&mut rig, 512, 4, Duration::from_secs(6))
        .await
        .expect("recovered within the backoff bound");
    let p = &rig.gateway.handles.poll;
    assert!(p.connects.load(Relaxed) >= 2, "reconnected");
    assert!(p.regions_failed.load(Relaxed) + p.connect_failures.load(Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_listener_limits_connections_and_refuses_writes_outside_push_regions() {
    let regions = format!(
        "{PUSH_REGIONS}  - {{name: energy, start: 512, count: 280, source: poll, every: 1h}}\n"
    );
    let rig = gateway(
        &regions,
        dead_addr().await,
        "allow_from: [127.0.0.1], max_connections: 1",
    )
    .await;
    let addr = rig.gateway.push_addr.expect("push");
    let stats = &rig.gateway.handles.push;

    let mut first = push_client(addr).await;
    push_groups(&mut first, 1).await;
    // Outside push regions: exception 02 and nothing written.
    let gen = rig.gateway.handles.image.load().generation;
    assert_eq!(
        write(&mut first, 512, &[1, 2]).await,
        Err("exception: IllegalDataAddress".into()),
        "poll-only region"
    );
    assert_eq!(
        write(&mut first, 146, &[1, 2, 3]).await,
        Err("exception: IllegalDataAddress".into()),
        "runs past 147"
    );
    assert_eq!(
        write(&mut first, 200, &[1]).await,
        Err("exception: IllegalDataAddress".into()),
        "gap"
    );
    assert_eq!(
        rig.gateway.handles.image.load().generation,
        gen,
        "nothing committed"
    );
    // A write across two adjacent push regions is accepted.
    write(&mut first, 30, &[9; 20])
        .await
        .expect("spans totals and phases");

    // Second connection beyond max_connections: closed at accept.
    let mut second = push_client(addr).await;
    assert!(write(&mut second, 0, &[1]).await.is_err(), "over the limit");
    assert_eq!(stats.front.refused_limit.load(Relaxed), 1);
    drop(first);
    // The slot is freed when the first client leaves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while stats.front.open.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = push_client(addr).await;
    write(&mut third, 0, &[1]).await.expect("slot freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_listener_closes_connections_from_outside_allow_from() {
    let rig = gateway(
        PUSH_REGIONS,
        dead_addr().await,
        "allow_from: [192.0.2.7, 10.0.0.0/8]",
    )
    .await;
    let mut ctx = push_client(rig.gateway.push_addr.expect("push")).await;
    assert!(write(&mut ctx, 0, &[1]).await.is_err(), "closed at accept");
    let stats = &rig.gateway.handles.push;
    assert_eq!(stats.front.refused_not_allowed.load(Relaxed), 1);
    assert_eq!(stats.writes_ok.load(Relaxed), 0);
    assert_eq!(rig.gateway.handles.image.load().generation, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_push_connections_time_out_even_when_blocked_in_a_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = gateway(
        PUSH_REGIONS,
        dead_addr().await,
        "allow_from: [127.0.0.1], max_connections: 1, idle_timeout: 300ms",
    )
    .await;
    let addr = rig.gateway.push_addr.expect("push");
    let stats = &rig.gateway.handles.push;

    // 1. A client that connects and says nothing is closed after idle_timeout.
    let mut quiet = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), quiet.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    assert_eq!(stats.front.idle_timeouts.load(Relaxed), 1);

    // 2. A client that floods reads and never reads the replies: the server blocks in a
    //    write; the slot must still be freed after idle_timeout.
    let hog = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_hog_rx, mut hog_tx) = hog.into_split(); // never read
    let flood = tokio::spawn(async move {
        let mut frame = vec![0u8, 0, 0, 0, 0, 6, 1, 3, 0, 0, 0, 125];
        for i in 0..200_000u32 {
            frame[0..2].copy_from_slice(&(i as u16).to_be_bytes());
            if tokio::time::timeout(Duration::from_millis(500), hog_tx.write_all(&frame))
                .await
                .is_err()
            {
                break; // our own send buffer is full too: the server stopped reading
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.front.open.load(Relaxed) > 0 || stats.front.idle_timeouts.load(Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never freed: open {}",
            stats.front.open.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.abort();
    // The KSEM gets its slot.
    let mut ksem = push_client(addr).await;
    write(&mut ksem, 0, &[1])
        .await
        .expect("slot free for the KSEM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_on_its_own_is_reported_as_a_failure() {
    let cfg = airbridge::config::parse(
        "rtu: {device: pty}\nregions:\n  - {name: id, start: 8192, count: 58, source: static, values: {8244: 200}}\n",
        "test",
    )
    .expect("config")
    .config;
    let (master, port) = tokio::io::duplex(64);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut gw = airbridge::app::gateway::Gateway::start(
        cfg,
        airbridge::app::gateway::RtuPort::Stream(Box::new(port)),
        cancel.clone(),
    )
    .await
    .expect("start");
    drop(master); // the RTU stream ends: the RTU slave task returns
    let msg = tokio::time::timeout(Duration::from_secs(2), gw.failed())
        .await
        .expect("reported");
    assert!(msg.contains("RTU slave"), "{msg}");
    cancel.cancel();
    gw.join(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_backs_off_from_a_ksem_that_accepts_and_hangs_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = std::sync::Arc::clone(&accepted);
    let hangup = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Relaxed);
            drop(s);
        }
    });
    let regions = "  - {name: energy, start: 512, count: 280, source: poll, every: 100ms}\n";
    let rig = gateway(regions, addr, LOCAL_PUSH).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Backoff waits at least 1 s, then 2 s: no more than 3 connects fit in 3.5 s.
    let n = accepted.load(Relaxed);
    assert!((1..=3).contains(&n), "{n} connects in 3.5 s");
    assert!(rig.gateway.handles.poll.regions_failed.load(Relaxed) >= 1);
    hangup.abort();
}

/// A KSEM slave that answers every read with one register too few.
struct ShortReplies;

impl tokio_modbus::server::Service for ShortReplies {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;
    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req.request {
            tokio_modbus::Request::ReadHoldingRegisters(_, n) => {
                Ok(tokio_modbus::Response::ReadHoldingRegisters(
                    vec![7; usize::from(n.saturating_sub(1))],
                ))
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_upstream_replies_are_errors_not_data() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let task = tokio::spawn(async move {
        let on_connected = |stream, _addr| async move { Ok(Some((ShortReplies, stream))) };
        let _ = server.serve(&on_connected, |_e| {}).await;
    });
    let regions = "  - {name: energy, start: 512, count: 280, source: poll, every: 100ms}\n";
    let mut rig = gateway(regions, addr, LOCAL_PUSH).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = &rig.gateway.handles.poll;
    assert!(
        p.regions_failed.load(Relaxed) >= 1,
        "short reply counted as a failure"
    );
    assert_eq!(p.regions_ok.load(Relaxed), 0, "and never committed");
    assert!(p
        .last_error
        .lock()
        .expect("lock")
        .as_deref()
        .is_some_and(|e| e.contains("registers")));
    assert!(
        matches!(rtu_read(&mut rig, 512, 4).await, Err(ReplyError::Timeout)),
        "still warming up"
    );
    task.abort();
}
