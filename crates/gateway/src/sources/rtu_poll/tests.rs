//! The poller against an in-memory device: polls, offline and probes, writes, cancel.
use super::*;
use crate::control::writes::{WriteOutcome, FC_WRITE_SINGLE};
use airbridge_modbus::crc::append_crc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

const YAML: &str = "rtu_poll: {device: /dev/test, timeout: 200ms, gap: 2ms, retries: 1, offline_after: 2, probe_max: 4s}
tcp_server: {listen: '127.0.0.1:0'}
regions:
  - {name: live, start: 100, count: 4, function: holding, source: rtu_poll, every: 1s}
";

/// A poller over `YAML`, its stats and the write queue's sender.
fn poller() -> (
    RtuPoller,
    Arc<Image>,
    Arc<RtuPollStats>,
    mpsc::Sender<WriteJob>,
) {
    poller_of(YAML)
}

/// A poller over the config `yaml`, its stats and the write queue's sender.
fn poller_of(
    yaml: &str,
) -> (
    RtuPoller,
    Arc<Image>,
    Arc<RtuPollStats>,
    mpsc::Sender<WriteJob>,
) {
    let cfg = crate::config::parse(yaml, "test")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let image = Arc::new(Image::new(&cfg.regions));
    let stats = Arc::new(RtuPollStats::default());
    let (tx, rx) = mpsc::channel(4);
    let p = RtuPoller::new(&cfg, Arc::clone(&image), Arc::clone(&stats), rx)
        .unwrap_or_else(|| panic!("rtu_poll configured"));
    (p, image, stats, tx)
}

/// A device on the other end of `s`: answers reads of unit 1 with `address + 1000` per
/// register and confirms single writes, while `answering`; counts the requests.
async fn device(s: DuplexStream, answering: Arc<AtomicBool>, seen: Arc<AtomicU64>) {
    respond(s, |unit, _| {
        seen.fetch_add(1, Relaxed);
        (answering.load(Relaxed) && unit == 1).then_some(1000)
    })
    .await;
}

/// Answer RTU requests on `s`: `base(unit, fc)` says whether the unit answers and what it
/// adds to each register's address as its value; writes are confirmed.
async fn respond(s: DuplexStream, base: impl Fn(u8, u8) -> Option<u16>) {
    respond_after(s, Duration::ZERO, base).await;
}

/// [`respond`], each reply `delay` after its request (a slow bus: the wire time).
async fn respond_after(mut s: DuplexStream, delay: Duration, base: impl Fn(u8, u8) -> Option<u16>) {
    let mut req = [0u8; 8];
    while s.read_exact(&mut req).await.is_ok() {
        let [unit, fc, ah, al, nh, nl, ..] = req;
        let Some(base) = base(unit, fc) else { continue };
        tokio::time::sleep(delay).await;
        let mut out = vec![unit, fc];
        if let 3 | 4 = fc {
            let (a, n) = (u16::from_be_bytes([ah, al]), u16::from_be_bytes([nh, nl]));
            out.push((n * 2) as u8);
            for r in a..a + n {
                out.extend_from_slice(&(r + base).to_be_bytes());
            }
        } else {
            out.extend_from_slice(&[ah, al, nh, nl]);
        }
        let len = out.len();
        out.extend_from_slice(&[0, 0]);
        append_crc(&mut out, len);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Run `p` on `ours` in a task (until cancelled or aborted); the task hands the poller back.
fn spawn_serving(
    mut p: RtuPoller,
    ours: DuplexStream,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<(RtuPoller, io::Result<()>)> {
    tokio::spawn(async move {
        let r = p.serve(ours, &cancel).await;
        (p, r)
    })
}

/// An FC06 write of `value` at `address`, and where its outcome arrives.
fn write_job(address: u16, value: u16) -> (WriteJob, oneshot::Receiver<WriteOutcome>) {
    let (reply, rx) = oneshot::channel();
    let job = WriteJob::new(FC_WRITE_SINGLE, address, vec![value], reply);
    (job, rx)
}

fn words(image: &Image) -> Option<Vec<u16>> {
    let snap = image.load();
    image.age(&snap, 0, Instant::now())?;
    image.read_words(&snap, image.table_for(3), 100, 4)
}

#[tokio::test(start_paused = true)]
async fn polls_commits_and_beats_while_idle_even_without_a_write_queue() {
    let (mut p, image, stats, tx) = poller();
    drop(tx); // no `writable:`: the queue is closed from the start
    let (ours, theirs) = tokio::io::duplex(256);
    let answering = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(device(theirs, Arc::clone(&answering), Arc::clone(&seen)));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        stop.cancel();
    });
    p.serve(ours, &cancel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(words(&image), Some(vec![1100, 1101, 1102, 1103]));
    assert!(stats.online.load(Relaxed));
    assert!(stats.bus_open.load(Relaxed));
    // Every 1 s for 3.5 s: at 0, 1, 2, 3.
    assert_eq!(stats.regions_ok.load(Relaxed), 4);
    assert!(stats.heartbeat.load(Relaxed) >= 4, "beats between polls");
}

/// `every` is a rate, not a pause: on a slow bus (each reply 300 ms after its request) a
/// region read every 1 s is still read every 1 s, not every 1.3 s.
#[tokio::test(start_paused = true)]
async fn a_slow_reply_does_not_stretch_the_poll_interval() {
    let (mut p, _image, stats, _tx) = poller_of(&YAML.replace("timeout: 200ms", "timeout: 500ms"));
    let (ours, theirs) = tokio::io::duplex(256);
    tokio::spawn(respond_after(theirs, Duration::from_millis(300), |_, _| {
        Some(1000)
    }));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        stop.cancel();
    });
    p.serve(ours, &cancel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Reads start at 0, 1, …, 10 s: eleven (from the end of each read it would be nine).
    assert_eq!(stats.regions_ok.load(Relaxed), 11);
}

#[tokio::test(start_paused = true)]
async fn a_silent_device_goes_offline_gets_probed_and_refuses_writes() {
    let (p, _image, stats, tx) = poller();
    let (ours, theirs) = tokio::io::duplex(256);
    let answering = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let (on, w) = (Arc::clone(&answering), Arc::clone(&writes));
    tokio::spawn(respond(theirs, move |unit, fc| {
        if fc == FC_WRITE_SINGLE {
            w.fetch_add(1, Relaxed);
        }
        (on.load(Relaxed) && unit == 1).then_some(1000)
    }));
    let task = spawn_serving(p, ours, CancellationToken::new());
    // Two failed polls (each with one retry) → offline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stats.went_offline.load(Relaxed), 1);
    assert!(!stats.online.load(Relaxed));
    assert_eq!(stats.retries.load(Relaxed), 2);
    // A write while offline gets `Offline` at once, nothing sent (probes may go on).
    let (job, rx) = write_job(100, 7);
    tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
    let outcome = rx.await.unwrap_or_else(|_| panic!("answered"));
    assert!(matches!(outcome, WriteOutcome::Offline), "{outcome:?}");
    assert_eq!(writes.load(Relaxed), 0, "nothing sent for it");
    // Probes follow with backoff; once the device answers it is online again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(stats.probes.load(Relaxed) >= 2);
    answering.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        stats.online.load(Relaxed),
        "back online after a probe answered"
    );
    assert!(stats.regions_ok.load(Relaxed) >= 1);
    task.abort();
}

// Real clock: a loop that spins never lets a paused clock reach the timeout below.
#[tokio::test]
async fn a_write_is_sent_its_outcome_goes_back_and_cancel_stops_the_loop() {
    let (mut p, _image, stats, tx) = poller();
    let (ours, theirs) = tokio::io::duplex(256);
    let answering = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(device(theirs, answering, Arc::clone(&seen)));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { p.serve(ours, &c).await });
    let (job, rx) = write_job(101, 9);
    tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap_or_else(|_| panic!("answered in time; seen {}", seen.load(Relaxed)))
        .unwrap_or_else(|_| panic!("answered"));
    assert!(matches!(outcome, WriteOutcome::Done), "{outcome:?}");
    assert_eq!(stats.writes_ok.load(Relaxed), 1);
    // Cancel while the read-back of the written register is due: the loop stops (it
    // used to resend that poll forever, since a cancelled poll is not rescheduled).
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap_or_else(|_| panic!("the poller stops on cancel"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_ok());
}

#[tokio::test(start_paused = true)]
async fn while_the_device_is_missing_writes_are_refused_and_a_closed_queue_waits() {
    // With a queue: a queued write is refused at once.
    let (mut p, _image, stats, tx) = poller();
    let (job, rx) = write_job(100, 1);
    tx.send(job).await.unwrap_or_else(|_| panic!("queued"));
    let mut bus = Bus(&mut p);
    bus.idle().await;
    let outcome = rx.await.unwrap_or_else(|_| panic!("answered"));
    assert!(matches!(outcome, WriteOutcome::Offline), "{outcome:?}");
    assert_eq!(stats.writes_failed.load(Relaxed), 1);
    // Without one (issue 15): idle work never completes, so only the reopen timer (or
    // cancel) ends the wait; it does not return at once over and over, nor for good.
    drop(tx);
    let waited = tokio::time::timeout(Duration::from_secs(60), bus.idle()).await;
    assert!(
        waited.is_err(),
        "a closed queue leaves the wait to the timer"
    );
}

const TWO: &str = "rtu_poll: {device: /dev/test, timeout: 200ms, gap: 2ms, retries: 1, offline_after: 2, probe_max: 4s}
tcp_server: {listen: '127.0.0.1:0'}
devices:
  - {name: a, unit_id: 1, regions: [{name: live, start: 100, count: 4, function: holding, every: 1s}]}
  - {name: b, unit_id: 2, regions: [{name: live, start: 100, count: 4, function: holding, every: 1s}]}
";

/// A bus of units 1 and 2 on the other end of `s`: unit `u` answers reads with
/// `address + 1000 * u` and confirms writes, unless `silent` holds `u`; the writes it
/// confirms are counted by unit in `writes`.
async fn two_units(
    s: DuplexStream,
    silent: Arc<std::sync::atomic::AtomicU8>,
    writes: Arc<[AtomicU64; 3]>,
) {
    respond(s, |unit, fc| {
        if !(1..=2).contains(&unit) || silent.load(Relaxed) == unit {
            return None;
        }
        if fc == 6 {
            writes[usize::from(unit)].fetch_add(1, Relaxed);
        }
        Some(1000 * u16::from(unit))
    })
    .await;
}

/// Queue an FC06 write for device `d` and await its outcome.
async fn write_to(tx: &mpsc::Sender<WriteJob>, d: usize) -> WriteOutcome {
    let (job, rx) = write_job(100, 7);
    tx.send(job.for_device(d))
        .await
        .unwrap_or_else(|_| panic!("queued"));
    rx.await.unwrap_or_else(|_| panic!("answered"))
}

#[tokio::test(start_paused = true)]
async fn a_silent_device_costs_the_other_only_its_probes_and_writes_go_to_their_device() {
    let (p, image, stats, tx) = poller_of(TWO);
    let devs: Vec<Arc<RtuPollStats>> = stats
        .devices()
        .iter()
        .map(|d| Arc::clone(&d.stats))
        .collect();
    assert_eq!(devs.len(), 2);
    let (ours, theirs) = tokio::io::duplex(1024);
    let silent = Arc::new(std::sync::atomic::AtomicU8::new(2));
    let writes: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    tokio::spawn(two_units(theirs, Arc::clone(&silent), Arc::clone(&writes)));
    let task = spawn_serving(p, ours, CancellationToken::new());
    // 20 s with unit 2 silent: it goes offline and is only probed; unit 1 keeps its 1 s.
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    let a_ok = devs[0].regions_ok.load(Relaxed);
    assert!(
        a_ok >= 17,
        "unit 1 kept at least 80 % of its 21 polls: {a_ok}"
    );
    assert!(devs[0].online.load(Relaxed));
    assert!(!devs[1].online.load(Relaxed));
    assert!(!stats.online.load(Relaxed), "the bus is not all online");
    assert_eq!(devs[1].went_offline.load(Relaxed), 1);
    assert!(devs[1].probes.load(Relaxed) >= 3);
    assert_eq!(devs[0].timeouts.load(Relaxed), 0);
    assert_eq!(
        stats.requests.load(Relaxed),
        devs[0].requests.load(Relaxed) + devs[1].requests.load(Relaxed),
        "bus counters are the devices' sum"
    );
    let snap = image.load();
    let a = image.region_index("a.live").unwrap_or(usize::MAX);
    let b = image.region_index("b.live").unwrap_or(usize::MAX);
    assert!(image.age(&snap, a, Instant::now()).is_some());
    assert!(image.age(&snap, b, Instant::now()).is_none(), "never read");
    drop(snap);
    // A write to the offline device is refused at once; nothing reaches unit 2.
    let outcome = write_to(&tx, 1).await;
    assert!(matches!(outcome, WriteOutcome::Offline), "{outcome:?}");
    // Unit 2 returns: online within one probe interval, its region read.
    silent.store(0, Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(devs[1].online.load(Relaxed));
    assert!(stats.online.load(Relaxed));
    let snap = image.load();
    assert_eq!(
        snap.regions.get(b).map(|r| r.words.to_vec()),
        Some(vec![2100, 2101, 2102, 2103])
    );
    assert_eq!(
        snap.regions.get(a).map(|r| r.words.to_vec()),
        Some(vec![1100, 1101, 1102, 1103])
    );
    drop(snap);
    // Its writes go to unit 2, unit 1's to unit 1.
    let outcome = write_to(&tx, 1).await;
    assert!(matches!(outcome, WriteOutcome::Done), "{outcome:?}");
    assert_eq!((writes[1].load(Relaxed), writes[2].load(Relaxed)), (0, 1));
    assert_eq!(devs[1].writes_ok.load(Relaxed), 1);
    task.abort();
}
