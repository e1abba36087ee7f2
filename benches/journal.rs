//! What the status hooks cost the RTU reply path.
//!
//! Groups:
//! - `journal`: one [`Journal::record`] alone, and while another thread reads the whole
//!   ring in a loop (as `/journal` or the page would, far more often than they do);
//! - `histogram`: one latency observation; one count by function code and result;
//! - `reply_hooks`: [`answer::answer`] for a 74-register FC03 read, bare and followed by
//!   everything the slave now does after writing the reply (clock read, latency
//!   histogram, function counter, journal record) — the difference is the added cost.
//!
//! Run with `cargo bench --bench journal` (about half a minute).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airbridge::config;
use airbridge::image::Image;
use airbridge::ops::journal::{Action, Dir, Journal, Link, Record};
use airbridge::ops::stats::{FunctionCounters, LatencyHistogram};
use airbridge::servers::rtu_slave::answer::{self, SlaveParams};
use airbridge_modbus::model::Answer;
use airbridge_modbus::rtu_frame::{Request, MAX_ADU};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;

const PARAMS: SlaveParams = SlaveParams {
    unit: 1,
    input_registers: true,
};

fn record() -> Record {
    Record {
        at: std::time::Instant::now(),
        link: Link::Rtu,
        dir: Dir::In,
        unit: 1,
        function: 3,
        address: 0,
        count: 74,
        action: Action::Answered { bytes: 153 },
        latency: Duration::from_micros(1800),
    }
}

fn journal(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    let j = Journal::default();
    let r = record();
    g.bench_function("record", |b| b.iter(|| j.record(black_box(&r))));

    let j = Arc::new(Journal::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (j, stop) = (Arc::clone(&j), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(j.entries());
            }
        })
    };
    g.bench_function("record_while_read", |b| b.iter(|| j.record(black_box(&r))));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    g.finish();
}

fn histogram(c: &mut Criterion) {
    let mut g = c.benchmark_group("histogram");
    let h = LatencyHistogram::default();
    g.bench_function("record", |b| {
        b.iter(|| h.record(black_box(Duration::from_micros(1830))))
    });
    let f = FunctionCounters::default();
    g.bench_function("count_by_function", |b| {
        b.iter(|| f.count(black_box(3), black_box(Answer::Data { len: 153 })))
    });
    g.finish();
}

fn reply_hooks(c: &mut Criterion) {
    let loaded = config::parse(include_str!("../gateway.yaml"), "bench").expect("layout");
    let image = Image::new(&loaded.config.regions);
    let now = Instant::now();
    let words: Vec<u16> = (0..148).collect();
    image.write_push(0, &words, now).expect("push");
    for (i, spec) in image.specs().iter().enumerate() {
        let w = vec![0u16; usize::from(spec.count)];
        let _ = image.commit_poll(i, &w, now, now);
    }
    let req = Request::Read {
        function: 3,
        address: 0,
        count: 74,
    };
    let mut out = [0u8; MAX_ADU];
    let mut g = c.benchmark_group("reply_hooks");
    g.bench_function("answer_fc03_74", |b| {
        b.iter(|| answer::answer(PARAMS, black_box(req), &image, Instant::now(), &mut out))
    });
    let (h, f, j) = (
        LatencyHistogram::default(),
        FunctionCounters::default(),
        Journal::default(),
    );
    g.bench_function("answer_fc03_74_with_hooks", |b| {
        b.iter(|| {
            let request_end = Instant::now();
            let outcome = answer::answer(PARAMS, black_box(req), &image, request_end, &mut out);
            f.count(3, outcome);
            let written = Instant::now();
            let latency = written.saturating_duration_since(request_end);
            h.record(latency);
            j.record(&Record {
                at: request_end.into_std(),
                link: Link::Rtu,
                dir: Dir::In,
                unit: 1,
                function: 3,
                address: 0,
                count: 74,
                action: Action::Answered { bytes: 153 },
                latency,
            });
            outcome
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = journal, histogram, reply_hooks
}
criterion_main!(benches);
