//! The frame journal: bounds (never more than N, oldest dropped), consistency under
//! concurrent writers and a reader, no heap allocation when recording, what a running
//! gateway records for each kind of RTU frame, and the SIGUSR1 dump of the real binary.

use crate::common;
use common::Child;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airbridge::ops::journal::{Action, Dir, DropReason, Journal, Link, Record};
use airbridge::ops::stats::{FunctionCounters, LatencyHistogram};
use airbridge::servers::rtu_slave::answer::Answer;
use airbridge_modbus::master::{encode_read, encode_write_single};
use tokio::io::AsyncWriteExt;

// A counting allocator, per thread (as in tests/alloc_free.rs).
struct Counting;
thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}
// SAFETY: every call is forwarded unchanged to `System`; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn record(address: u16, count: u16, action: Action) -> Record {
    Record {
        at: Instant::now(),
        link: Link::Rtu,
        dir: Dir::In,
        unit: 1,
        function: 3,
        address,
        count,
        action,
        latency: Duration::from_micros(u64::from(count)),
    }
}

#[test]
fn never_more_than_capacity_and_the_oldest_go_first() {
    let j = Journal::new(8);
    assert!(j.entries().is_empty());
    for i in 0..5u16 {
        j.record(&record(i, 1, Action::Answered { bytes: 7 }));
    }
    let got: Vec<u16> = j.entries().iter().map(|e| e.address).collect();
    assert_eq!(got, [0, 1, 2, 3, 4], "below capacity: all, oldest first");
    for i in 5..20u16 {
        j.record(&record(i, 1, Action::Answered { bytes: 7 }));
    }
    let got: Vec<u16> = j.entries().iter().map(|e| e.address).collect();
    assert_eq!(
        got,
        (12..20).collect::<Vec<u16>>(),
        "the last 8, oldest first"
    );
    assert_eq!(j.recorded(), 20);
    assert_eq!(j.dropped(), 0);
    let last3: Vec<u16> = j.last(3).iter().map(|e| e.address).collect();
    assert_eq!(last3, [17, 18, 19]);
    assert_eq!(j.last(100).len(), 8);
    let t: Vec<u64> = j.entries().iter().map(|e| e.t_us).collect();
    assert!(
        t.windows(2).all(|w| w[0] <= w[1]),
        "timestamps ascend: {t:?}"
    );
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let newest = *t.last().expect("entries");
    assert!(
        newest <= wall + 1_000_000 && newest + 60_000_000 > wall,
        "wall clock µs"
    );
    // A capacity of 0 is taken as 1.
    let one = Journal::new(0);
    one.record(&record(1, 1, Action::SilentStale));
    one.record(&record(2, 1, Action::SilentStale));
    assert_eq!(one.entries().len(), 1);
    assert_eq!(one.entries()[0].address, 2);
}

#[test]
fn concurrent_writers_and_a_reader_never_see_a_torn_entry() {
    // Every entry satisfies count == address ^ 0x5A5A and latency == count µs, so a mix of
    // two entries' words would show.
    const CAP: usize = 16;
    let j = Arc::new(Journal::new(CAP));
    let stop = Arc::new(AtomicBool::new(false));
    // Reads that found entries; writers go on until the reader has overlapped them.
    let overlapped = Arc::new(AtomicU64::new(0));
    let reader = {
        let (j, stop, overlapped) = (Arc::clone(&j), Arc::clone(&stop), Arc::clone(&overlapped));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let es = j.entries();
                assert!(es.len() <= CAP, "{} entries", es.len());
                for e in &es {
                    assert_eq!(e.count, e.address ^ 0x5A5A, "torn: {e:?}");
                    assert_eq!(e.latency_us, u32::from(e.count), "torn: {e:?}");
                    assert_eq!(
                        e.action,
                        Action::Answered { bytes: e.address },
                        "torn: {e:?}"
                    );
                }
                if !es.is_empty() {
                    overlapped.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let writers: Vec<_> = (0..3u16)
        .map(|w| {
            let (j, overlapped) = (Arc::clone(&j), Arc::clone(&overlapped));
            std::thread::spawn(move || {
                let mut n = 0u64;
                // At least 20000 each, then until 200 overlapping reads (bounded).
                while n < 20_000 || (overlapped.load(Ordering::Relaxed) < 200 && n < 20_000_000) {
                    let a = (n as u16).wrapping_mul(3).wrapping_add(w);
                    j.record(&record(a, a ^ 0x5A5A, Action::Answered { bytes: a }));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let written: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    assert!(
        overlapped.load(Ordering::Relaxed) >= 200,
        "the reader ran alongside"
    );
    assert_eq!(j.recorded(), written);
    let held = j.entries().len() as u64;
    assert!(held <= CAP as u64);
    // Everything not dropped is in a slot; the last lap is complete once writers are done
    // unless its slots were given up to contention.
    assert!(
        held + j.dropped() >= CAP as u64,
        "held {held}, dropped {}",
        j.dropped()
    );
}

#[test]
fn recording_does_not_allocate() {
    let j = Journal::new(64);
    let h = LatencyHistogram::default();
    let f = FunctionCounters::default();
    let r = record(0, 74, Action::Answered { bytes: 153 });
    j.record(&r); // first touch outside the measurement
    let before = ALLOCATIONS.with(Cell::get);
    for i in 0..10_000u32 {
        j.record(&r);
        h.record(Duration::from_micros(u64::from(i % 5000)));
        f.count(3, Answer::Data { len: 153 });
    }
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(after - before, 0, "allocations while recording");
    assert_eq!(f.of(3)[0], 10_000);
    assert_eq!(h.snapshot().count, 10_000);
    // The counter does count this thread's allocations.
    let before = ALLOCATIONS.with(Cell::get);
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(ALLOCATIONS.with(Cell::get) > before && v.len() == 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_journals_each_kind_of_rtu_frame() {
    let regions = "  - {name: totals, start: 0, count: 40, source: push}
  - {name: phases, start: 40, count: 108, source: push}
";
    let mut rig = common::gateway(regions, common::dead_addr().await, common::LOCAL_PUSH).await;
    let mut ctx = common::push_client(rig.gateway.push_addr.expect("push")).await;
    common::push_groups(&mut ctx, 5).await;
    common::rtu_read_eventually(&mut rig, 0, 10, Duration::from_secs(5))
        .await
        .expect("served");

    // Raw traffic on the bus: another unit's request, a broadcast, a frame with a bad CRC.
    let mut bad = encode_read(1, 3, 0, 2);
    bad[7] ^= 0xFF;
    let stream = rig.inverter.get_mut();
    for frame in [
        &encode_read(7, 3, 100, 4)[..],
        &encode_write_single(0, 5, 1)[..],
        &bad[..],
    ] {
        stream.write_all(frame).await.expect("write");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    rig.inverter
        .read(1, 3, 40, 74)
        .await
        .expect("a read after the noise");
    assert!(
        rig.inverter.read(1, 3, 200, 1).await.is_err(),
        "outside every region"
    );

    let j = &rig.gateway.handles.journal;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let entries = loop {
        let e = j.entries();
        if e.iter().any(|e| e.action == Action::Exception { code: 2 }) {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "{e:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rtu: Vec<_> = entries.iter().filter(|e| e.link == Link::Rtu).collect();
    let has = |f: &dyn Fn(&airbridge::ops::journal::Entry) -> bool| rtu.iter().any(|e| f(e));
    assert!(has(&|e| e.action
        == Action::Dropped(DropReason::ForeignUnit)
        && e.unit == 7
        && e.frame() == "unit 7 FC03"));
    assert!(has(
        &|e| e.action == Action::Dropped(DropReason::Broadcast) && e.function == 6
    ));
    assert!(has(&|e| matches!(
        e.action,
        Action::Dropped(DropReason::Crc | DropReason::Garbage | DropReason::Partial)
    )));
    assert!(has(&|e| e.action == Action::Answered { bytes: 153 }
        && e.frame() == "FC03 40..114"
        && e.dir == Dir::In));
    assert!(has(
        &|e| e.action == Action::Exception { code: 2 } && e.address == 200
    ));
    let pushes = entries
        .iter()
        .filter(|e| e.link == Link::Push && e.action == Action::Written)
        .count();
    assert!(pushes >= 2, "the two push groups: {entries:#?}");
    // The journal and the counters agree.
    let stats = &rig.gateway.handles.rtu;
    let crc_entries = rtu
        .iter()
        .filter(|e| e.action == Action::Dropped(DropReason::Crc))
        .count() as u64;
    assert_eq!(crc_entries, stats.crc_errors.load(Ordering::Relaxed));
    let answered = rtu
        .iter()
        .filter(|e| matches!(e.action, Action::Answered { .. }))
        .count() as u64;
    assert_eq!(answered, stats.replies.load(Ordering::Relaxed));
}

#[test]
fn sigusr1_dumps_the_journal_to_the_log() {
    let mut child = Child(
        common::airbridge_cmd()
            .args(["demo", "--duration", "60s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airbridge demo"),
    );
    let mut stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut log = String::new();
    let wait_for = |needle: &str, within: Duration, log: &mut String| {
        let deadline = Instant::now() + within;
        while !log.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "`{needle}` not logged within {within:?}:\n{log}"
            );
            if let Ok(s) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
                log.push_str(&s);
            }
        }
    };
    // Ready, then some inverter traffic.
    wait_for("ready", Duration::from_secs(20), &mut log);
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    wait_for("frame journal end", Duration::from_secs(10), &mut log);
    let dump = &log[log.find("frame journal (SIGUSR1)").expect("dump header")..];
    assert!(
        dump.contains("rtu  in  FC03 0..74 → answered, 153 bytes"),
        "{dump}"
    );
    assert!(dump.contains("push in  FC10 0..28 → written"), "{dump}");
    assert!(
        dump.contains("poll out FC03 8192..8249 → committed"),
        "{dump}"
    );
    // The process keeps running after the dump.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.0.try_wait().expect("status").is_none(),
        "still running"
    );
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
}
