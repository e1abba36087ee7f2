//! The RTU reply path never touches the heap once the image is warm: request bytes →
//! [`Framer`] → [`answer::answer`] → reply bytes, for data replies, exceptions and silence.
//! The bench's RTU loop (`bench_rtu`) does not allocate per request either, so what it
//! measures is not the allocator.
//!
//! A counting global allocator counts allocations per thread, so the other tests of this
//! file (run in parallel threads by cargo) do not disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use airbridge::config;
use airbridge::image::Image;
use airbridge::servers::rtu_slave::answer::{self, exception, Answer, SlaveParams};
use airbridge_modbus::crc::append_crc;
use airbridge_modbus::rtu_frame::{Frame, Framer, Request, MAX_ADU};
use tokio::time::Instant;

struct Counting;

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread. `const`, no
    /// destructor: touching it never allocates, so the allocator may use it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the slot may be gone while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by the current thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

const UNIT: u8 = 1;
const PARAMS: SlaveParams = SlaveParams {
    unit: UNIT,
    input_registers: true,
};
const ITERATIONS: usize = 1000;

/// The shipped KSEM layout: region indices 0 totals, 1 phases, 2 energy, 3 identity, 4 spec_version.
const KSEM: &str = include_str!("../gateway.yaml");

fn ksem_image() -> Image {
    Image::new(
        &config::parse(KSEM, "alloc_free")
            .expect("parses")
            .config
            .regions,
    )
}

fn warm_image() -> Image {
    let image = ksem_image();
    let now = Instant::now();
    let words: Vec<u16> = (0..148).collect();
    image.write_push(0, &words, now).expect("push");
    image.commit_poll(2, &[0xE; 280], now, now).expect("poll");
    image.commit_poll(3, &[0x1D; 57], now, now).expect("poll");
    assert!(image.load().warm);
    image
}

/// A request with function `function`, 4 bytes of payload and its CRC.
fn request(function: u8, a: u16, b: u16) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[0] = UNIT;
    r[1] = function;
    r[2..4].copy_from_slice(&a.to_be_bytes());
    r[4..6].copy_from_slice(&b.to_be_bytes());
    append_crc(&mut r, 6);
    r
}

/// What the slave would send for `bytes`: the outcome of the last request in them, and the
/// reply copied into `sent` (as the serving loop does, minus the I/O).
struct Served {
    outcome: Option<Answer>,
    len: usize,
}

/// The serving loop of `rtu::slave`, minus I/O and timing: push, drain, answer.
fn serve(
    framer: &mut Framer,
    image: &Image,
    bytes: &[u8],
    now: Option<Instant>,
    sent: &mut [u8; MAX_ADU],
) -> Served {
    let mut tx = [0u8; MAX_ADU];
    let mut served = Served {
        outcome: None,
        len: 0,
    };
    let mut data = bytes;
    loop {
        let taken = framer.push(data);
        data = &data[taken..];
        while let Some(frame) = framer.next_frame() {
            let Frame::Request(req) = frame else { continue };
            let now = now.unwrap_or_else(Instant::now);
            let outcome = answer::answer(PARAMS, req, image, now, &mut tx);
            served.outcome = Some(outcome);
            if let Some(len) = outcome.reply_len() {
                sent[..len].copy_from_slice(&tx[..len]);
                served.len = len;
            }
        }
        if data.is_empty() {
            return served;
        }
    }
}

/// Run `bytes` through the path once (so per-thread lazy state is in place), then
/// `ITERATIONS` times counting allocations; returns the count and the last result.
fn steady_state_allocations(
    framer: &mut Framer,
    image: &Image,
    bytes: &[u8],
    now: Option<Instant>,
) -> (u64, Option<Answer>, usize) {
    let mut sent = [0u8; MAX_ADU];
    serve(framer, image, bytes, now, &mut sent);
    let (n, served) = allocations(|| {
        let mut last = None;
        for _ in 0..ITERATIONS {
            last = Some(serve(framer, image, black_box(bytes), now, &mut sent));
        }
        last.expect("ran")
    });
    (n, served.outcome, served.len)
}

#[test]
fn the_counter_counts_this_threads_allocations() {
    let (n, v) = allocations(|| black_box(Vec::<u64>::with_capacity(10)));
    assert_eq!(n, 1);
    drop(v);
    let (n, _) = allocations(|| black_box(Box::new([0u8; 16])));
    assert_eq!(n, 1);
    let (n, _) = allocations(|| black_box(1 + 1));
    assert_eq!(n, 0);
    // Another thread's allocations are not ours.
    let (n, ()) = allocations(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let (theirs, _) = allocations(|| black_box(vec![1u8; 100]));
                assert_eq!(theirs, 1);
            });
        })
    });
    // Spawning itself allocates here (thread handle, name...), but not the vector.
    assert!(n > 0, "spawning a thread allocates on this thread");
}

#[test]
fn data_replies_do_not_allocate() {
    let image = warm_image();
    let mut framer = Framer::new(UNIT);
    for (address, count) in [(0, 10), (40, 74), (512, 125), (0, 125), (8192, 58)] {
        let bytes = request(0x03, address, count);
        let (n, outcome, len) = steady_state_allocations(&mut framer, &image, &bytes, None);
        let want = 5 + 2 * usize::from(count);
        assert_eq!(
            outcome,
            Some(Answer::Data { len: want }),
            "{count}@{address}"
        );
        assert_eq!(len, want);
        assert_eq!(
            n, 0,
            "FC03 {count}@{address}: {n} allocations in {ITERATIONS} replies"
        );
        // FC04, answered from the same image.
        let bytes = request(0x04, address, count);
        let (n, outcome, _) = steady_state_allocations(&mut framer, &image, &bytes, None);
        assert_eq!(outcome, Some(Answer::Data { len: want }));
        assert_eq!(n, 0, "FC04 {count}@{address}: {n} allocations");
    }
    assert_eq!(framer.stats().garbage_bytes, 0);
}

#[test]
fn exceptions_and_silence_do_not_allocate() {
    let image = warm_image();
    let mut framer = Framer::new(UNIT);
    let cases: [(&str, [u8; 8], Option<Instant>, Answer); 6] = [
        (
            "count 0",
            request(0x03, 0, 0),
            None,
            Answer::Exception {
                code: exception::ILLEGAL_DATA_VALUE,
            },
        ),
        (
            "count 126",
            request(0x03, 0, 126),
            None,
            Answer::Exception {
                code: exception::ILLEGAL_DATA_VALUE,
            },
        ),
        (
            "address past phases",
            request(0x03, 148, 1),
            None,
            Answer::Exception {
                code: exception::ILLEGAL_DATA_ADDRESS,
            },
        ),
        (
            "read across the gap",
            request(0x03, 100, 125),
            None,
            Answer::Exception {
                code: exception::ILLEGAL_DATA_ADDRESS,
            },
        ),
        (
            "FC06 write",
            request(0x06, 0, 0x1234),
            None,
            Answer::Exception {
                code: exception::ILLEGAL_FUNCTION,
            },
        ),
        (
            "stale totals",
            request(0x03, 0, 10),
            Some(Instant::now() + Duration::from_secs(3)),
            Answer::SilentStale,
        ),
    ];
    for (what, bytes, now, want) in cases {
        let (n, outcome, _) = steady_state_allocations(&mut framer, &image, &bytes, now);
        assert_eq!(outcome, Some(want), "{what}");
        assert_eq!(n, 0, "{what}: {n} allocations in {ITERATIONS} replies");
    }

    // Warm-up silence, from a cold image.
    let cold = ksem_image();
    let bytes = request(0x03, 0, 10);
    let (n, outcome, _) = steady_state_allocations(&mut framer, &cold, &bytes, None);
    assert_eq!(outcome, Some(Answer::SilentWarmup));
    assert_eq!(n, 0, "warm-up silence: {n} allocations");
}

#[test]
fn framing_does_not_allocate() {
    let image = warm_image();
    let req = request(0x03, 0, 10);
    let want = Some(Answer::Data { len: 25 });

    // 32 bytes of line noise, then the request: the framer CRC-scans, then hunts ahead.
    let mut hunt = [0u8; 40];
    for (i, b) in hunt[..32].iter_mut().enumerate() {
        *b = if i % 2 == 0 { 0xA5 } else { 0x5A };
    }
    hunt[32..].copy_from_slice(&req);
    let mut framer = Framer::new(UNIT);
    let (n, outcome, _) = steady_state_allocations(&mut framer, &image, &hunt, None);
    assert_eq!(outcome, want);
    assert_eq!(n, 0, "hunting: {n} allocations");
    assert_eq!(
        framer.stats().garbage_bytes,
        32 * (ITERATIONS as u64 + 1),
        "the noise was hunted through, every time"
    );

    // Noise the framer drops byte by byte (exception-like heads whose CRC never fits),
    // another unit's request, our own reply echoed on the bus, then the request.
    let mut mixed = [0u8; 64];
    let mut at = 0;
    for _ in 0..7 {
        mixed[at] = 0xFF;
        at += 1;
    }
    let other = {
        let mut r = request(0x03, 0, 10);
        r[0] = 7;
        append_crc(&mut r, 6);
        r
    };
    mixed[at..at + 8].copy_from_slice(&other);
    at += 8;
    let mut echo = [0u8; MAX_ADU];
    let len = {
        let mut f = Framer::new(UNIT);
        serve(&mut f, &image, &req, None, &mut echo).len
    };
    mixed[at..at + len].copy_from_slice(&echo[..len]);
    at += len;
    mixed[at..at + 8].copy_from_slice(&req);
    at += 8;
    let mut framer = Framer::new(UNIT);
    let (n, outcome, _) = steady_state_allocations(&mut framer, &image, &mixed[..at], None);
    assert_eq!(outcome, want);
    assert_eq!(n, 0, "mixed traffic: {n} allocations");
    let stats = framer.stats();
    assert_eq!(stats.requests, ITERATIONS as u64 + 1);
    assert_eq!(stats.foreign, 2 * (ITERATIONS as u64 + 1));

    // The request in single bytes, and a partial frame ended by silence.
    let mut framer = Framer::new(UNIT);
    let mut sent = [0u8; MAX_ADU];
    let (n, ()) = allocations(|| {
        for _ in 0..ITERATIONS {
            for b in req {
                serve(&mut framer, &image, &[b], None, &mut sent);
            }
            framer.push(&req[..5]);
            assert_eq!(framer.next_frame(), None);
            assert_eq!(framer.on_silence(), None);
        }
    });
    assert_eq!(n, 0, "byte-wise requests and silence: {n} allocations");
    assert_eq!(framer.stats().requests, ITERATIONS as u64);
    assert_eq!(framer.stats().partial_discarded, ITERATIONS as u64);

    // An unknown function code to our unit, delimited by CRC scan.
    let mut framer = Framer::new(UNIT);
    let mut odd = [UNIT, 0x41, 1, 2, 3, 0, 0];
    append_crc(&mut odd, 5);
    let (n, ()) = allocations(|| {
        for _ in 0..ITERATIONS {
            framer.push(&odd);
            let f = framer.next_frame();
            assert_eq!(f, Some(Frame::Request(Request::Other { function: 0x41 })));
            assert_eq!(framer.next_frame(), None);
        }
    });
    assert_eq!(n, 0, "unknown function code: {n} allocations");
}

/// The first snapshot load on a fresh thread may allocate once: arc-swap gives each thread
/// a debt node, allocated (and leaked for reuse) unless a node of an exited thread is free.
/// This is the only allocation of the path, and it is bounded by the number of threads.
#[test]
fn first_reply_on_a_thread_allocates_at_most_once() {
    let image = warm_image();
    let req = request(0x03, 0, 10);
    let first = std::thread::scope(|s| {
        s.spawn(|| {
            let mut framer = Framer::new(UNIT);
            let mut sent = [0u8; MAX_ADU];
            let (first, _) = allocations(|| serve(&mut framer, &image, &req, None, &mut sent));
            let (second, _) = allocations(|| serve(&mut framer, &image, &req, None, &mut sent));
            assert_eq!(second, 0);
            first
        })
        .join()
        .expect("thread")
    });
    assert!(first <= 1, "first reply on a thread: {first} allocations");
}

/// The bench's RTU loop: allocations of a whole `bench_rtu` run against a slave that
/// answers every request, for `requests` requests, on a current-thread runtime (the
/// slave task runs on this thread too, so its allocations would count: it has none).
fn bench_rtu_allocations(requests: u64) -> u64 {
    use airbridge_bench::{bench_rtu, RegRange, RtuBenchOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (master, mut slave) = tokio::io::duplex(1024);
    let mut reply = vec![UNIT, 0x03, 20];
    reply.extend_from_slice(&[0u8; 20]);
    reply.extend_from_slice(&[0, 0]);
    append_crc(&mut reply, 23);
    let opts = RtuBenchOptions {
        unit: UNIT,
        ranges: vec![RegRange {
            start: 0,
            count: 10,
        }],
        count: requests,
        ..Default::default()
    };
    let (n, report) = allocations(|| {
        rt.block_on(async {
            let answering = tokio::spawn(async move {
                let mut req = [0u8; 8];
                while slave.read_exact(&mut req).await.is_ok() {
                    if slave.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
            let report = bench_rtu(master, &opts).await;
            answering.abort();
            report
        })
    });
    let report = report.expect("bench_rtu runs");
    assert_eq!(report.all.ok, requests, "{:?}", report.all);
    n
}

#[test]
fn the_bench_rtu_loop_does_not_allocate_per_request() {
    // Setup and report allocate; the loop must not: 10× the requests, the same count.
    let few = bench_rtu_allocations(50);
    let many = bench_rtu_allocations(500);
    assert_eq!(
        few, many,
        "{few} allocations for 50 requests, {many} for 500"
    );
}
