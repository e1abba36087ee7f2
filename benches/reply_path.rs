//! Criterion benchmarks of the RTU reply path, without I/O.
//!
//! Groups:
//! - `framing`: an 8-byte FC03 request through the [`Framer`] (one chunk, two chunks, and
//!   after 32 bytes of garbage);
//! - `reply`: [`answer::answer`] for FC03 reads from a warm image;
//! - `image_commit`: the writers' cost (`write_push` of the KSEM's push groups,
//!   `commit_poll` of the energy region);
//! - `request_to_reply`: request bytes → framer → answer → reply bytes;
//! - `snapshot_under_writes`: `reply` again while another thread pushes in a loop.
//!
//! The image has the KSEM layout of `gateway.yaml`. Run with
//! `cargo bench --bench reply_path`; the whole run takes about a minute.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airbridge::config;
use airbridge::image::Image;
use airbridge::servers::rtu_slave::answer::{self, SlaveParams};
use airbridge_modbus::crc::append_crc;
use airbridge_modbus::model::Answer;
use airbridge_modbus::rtu_frame::{Frame, Framer, Request, MAX_ADU};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;

const UNIT: u8 = 1;
const PARAMS: SlaveParams = SlaveParams {
    unit: UNIT,
    input_registers: true,
};

/// The shipped KSEM layout: region indices 0 totals, 1 phases, 2 energy, 3 identity, 4 spec_version.
const KSEM: &str = include_str!("../gateway.yaml");
const ENERGY: usize = 2;
const IDENTITY: usize = 3;

/// FC03 reads (label, address, count) inside one region each.
const READS: [(&str, u16, u16); 3] = [
    ("fc03_10", 0, 10),
    ("fc03_74", 40, 74),
    ("fc03_125", 512, 125),
];
/// An FC03 read of 125 registers across totals and phases.
const SPAN: (&str, u16, u16) = ("fc03_125_span", 0, 125);

fn ksem_image() -> Image {
    let loaded = config::parse(KSEM, "bench").expect("KSEM layout parses");
    Image::new(&loaded.config.regions)
}

/// Fill every region once; returns the time of the fill (every region is fresh at it).
fn warm(image: &Image) -> Instant {
    let now = Instant::now();
    let words: Vec<u16> = (0..148).collect();
    image
        .write_push(0, &words, now)
        .expect("push totals+phases");
    image
        .commit_poll(ENERGY, &[0xE; 280], now, now)
        .expect("poll energy");
    image
        .commit_poll(IDENTITY, &[0x1D; 57], now, now)
        .expect("poll identity");
    assert!(image.load().warm);
    now
}

fn warm_image() -> (Image, Instant) {
    let image = ksem_image();
    let now = warm(&image);
    (image, now)
}

/// The 8 bytes of an FC03 request.
fn fc03(address: u16, count: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = UNIT;
    b[1] = 0x03;
    b[2..4].copy_from_slice(&address.to_be_bytes());
    b[4..6].copy_from_slice(&count.to_be_bytes());
    append_crc(&mut b, 6);
    b
}

fn read(address: u16, count: u16) -> Request {
    Request::Read {
        function: 0x03,
        address,
        count,
    }
}

/// 32 bytes of line noise, then `request`. The noise reads as unit 0xA5 with the unknown
/// function 0x5A, so the framer CRC-scans the buffer, then hunts ahead for an FC03/FC04
/// request to its unit (checked in `framing`).
fn garbage_then(request: &[u8; 8]) -> [u8; 40] {
    let mut b = [0u8; 40];
    for (i, x) in b[..32].iter_mut().enumerate() {
        *x = if i % 2 == 0 { 0xA5 } else { 0x5A };
    }
    b[32..].copy_from_slice(request);
    b
}

/// Bytes of one request → framer → answer → reply bytes. Returns the reply length.
fn request_to_reply(
    framer: &mut Framer,
    bytes: &[u8],
    image: &Image,
    now: Instant,
    tx: &mut [u8; MAX_ADU],
) -> usize {
    let mut sent = 0;
    let mut data = bytes;
    loop {
        let taken = framer.push(data);
        data = &data[taken..];
        while let Some(frame) = framer.next_frame() {
            if let Frame::Request(req) = frame {
                if let Some(len) = answer::answer(PARAMS, req, image, now, tx).reply_len() {
                    sent += black_box(&tx[..len]).len();
                }
            }
        }
        if data.is_empty() {
            return sent;
        }
    }
}

fn framing(c: &mut Criterion) {
    let req = fc03(0, 10);
    let expected = Some(Frame::Request(read(0, 10)));
    let hunt = garbage_then(&req);
    // Sanity: each variant yields exactly the request.
    {
        let mut f = Framer::new(UNIT);
        assert_eq!(f.push(&hunt), hunt.len());
        assert_eq!(f.next_frame(), expected);
        assert_eq!(f.next_frame(), None);
        assert_eq!(f.stats().garbage_bytes, 32);
    }

    let mut g = c.benchmark_group("framing");
    let mut framer = Framer::new(UNIT);
    g.bench_function("fc03_one_chunk", |b| {
        b.iter(|| {
            framer.push(black_box(&req));
            black_box(framer.next_frame())
        })
    });
    g.bench_function("fc03_two_chunks", |b| {
        b.iter(|| {
            let (head, tail) = black_box(&req).split_at(3);
            framer.push(head);
            let none = framer.next_frame();
            framer.push(tail);
            (black_box(none), black_box(framer.next_frame()))
        })
    });
    g.bench_function("garbage32_then_fc03", |b| {
        b.iter(|| {
            framer.push(black_box(&hunt));
            black_box(framer.next_frame())
        })
    });
    g.finish();
    assert_eq!(framer.buffered(), 0);
}

fn reply(c: &mut Criterion) {
    let (image, now) = warm_image();
    let mut out = [0u8; MAX_ADU];
    let mut g = c.benchmark_group("reply");
    for (name, address, count) in READS.into_iter().chain([SPAN]) {
        assert_eq!(
            answer::answer(PARAMS, read(address, count), &image, now, &mut out),
            Answer::Data {
                len: 5 + 2 * usize::from(count)
            }
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                answer::answer(
                    PARAMS,
                    black_box(read(address, count)),
                    &image,
                    now,
                    &mut out,
                )
            })
        });
    }
    // The CRC of the largest reply alone, for scale: a share of every reply above.
    let mut buf = [0x5Au8; MAX_ADU];
    g.bench_function("append_crc_253_bytes", |b| {
        b.iter(|| append_crc(black_box(&mut buf), 253))
    });
    g.finish();
}

fn image_commit(c: &mut Criterion) {
    let (image, now) = warm_image();
    let totals: Vec<u16> = (0..28).collect();
    let phases: Vec<u16> = (0..106).collect();
    let energy = vec![0xE; 280];
    let mut g = c.benchmark_group("image_commit");
    g.bench_function("write_push_28_at_0", |b| {
        b.iter(|| image.write_push(0, black_box(&totals), now))
    });
    g.bench_function("write_push_106_at_40", |b| {
        b.iter(|| image.write_push(40, black_box(&phases), now))
    });
    g.bench_function("commit_poll_energy_280", |b| {
        b.iter(|| image.commit_poll(ENERGY, black_box(&energy), now, now))
    });
    g.finish();
}

fn request_to_reply_group(c: &mut Criterion) {
    let (image, now) = warm_image();
    let mut framer = Framer::new(UNIT);
    let mut tx = [0u8; MAX_ADU];
    let mut g = c.benchmark_group("request_to_reply");
    for (name, address, count) in READS {
        let req = fc03(address, count);
        assert_eq!(
            request_to_reply(&mut framer, &req, &image, now, &mut tx),
            5 + 2 * usize::from(count)
        );
        g.bench_function(name, |b| {
            b.iter(|| request_to_reply(&mut framer, black_box(&req), &image, now, &mut tx))
        });
    }
    g.finish();
}

fn snapshot_under_writes(c: &mut Criterion) {
    let (image, now) = warm_image();
    let image = Arc::new(image);
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(AtomicU64::new(0));
    // The writer pushes both KSEM groups back to back, as fast as it can (the real KSEM
    // pushes every ~200 ms: this is the worst case for readers).
    let writer = std::thread::spawn({
        let (image, stop, pushes) = (Arc::clone(&image), Arc::clone(&stop), Arc::clone(&pushes));
        move || {
            let totals: Vec<u16> = (0..28).collect();
            let phases: Vec<u16> = (0..106).collect();
            while !stop.load(Ordering::Relaxed) {
                // `now` keeps every region fresh for the readers' `now`.
                image.write_push(0, &totals, now).expect("push");
                image.write_push(40, &phases, now).expect("push");
                pushes.fetch_add(2, Ordering::Relaxed);
            }
        }
    });
    let mut out = [0u8; MAX_ADU];
    let mut g = c.benchmark_group("snapshot_under_writes");
    let started = std::time::Instant::now();
    for (name, address, count) in READS.into_iter().chain([SPAN]) {
        g.bench_function(name, |b| {
            b.iter(|| {
                answer::answer(
                    PARAMS,
                    black_box(read(address, count)),
                    &image,
                    now,
                    &mut out,
                )
            })
        });
    }
    g.finish();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "snapshot_under_writes: writer committed {:.0} pushes/s during the group",
        pushes.load(Ordering::Relaxed) as f64 / secs
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = framing, reply, image_commit, request_to_reply_group, snapshot_under_writes
}
criterion_main!(benches);
