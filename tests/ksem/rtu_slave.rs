//! The RTU slave driven over an in-memory stream with tokio's paused clock: replies, silence,
//! exceptions, turnaround, and resynchronisation after bad input.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use airbridge::config;
use airbridge::image::Image;
use airbridge::servers::rtu_slave::{RtuSlave, RtuStats};
use airbridge_modbus::crc::{append_crc, frame_crc_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "
rtu: {device: /dev/null, turnaround: 1750us, frame_timeout: 20ms}
push: {listen: '127.0.0.1:0', allow_from: [127.0.0.1]}
poll: {host: '127.0.0.1:1'}
regions:
  - {name: totals, start: 0, count: 40, source: push}
  - {name: phases, start: 40, count: 108, source: push}
  - {name: energy, start: 512, count: 280, source: poll, every: 10s, max_age: 30s, on_stale: exception}
";

struct Rig {
    image: Arc<Image>,
    stats: Arc<RtuStats>,
    master: DuplexStream,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn rig_with(yaml: &str) -> Rig {
    let cfg = config::parse(yaml, "test").expect("config").config;
    let image = Arc::new(Image::new(&cfg.regions));
    let stats = Arc::new(RtuStats::default());
    let slave = RtuSlave::new(&cfg.rtu, Arc::clone(&image), Arc::clone(&stats)).with_tokio_timer();
    let (master, port) = tokio::io::duplex(1024);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { slave.serve(port, &c).await });
    Rig {
        image,
        stats,
        master,
        cancel,
        task,
    }
}

fn rig() -> Rig {
    rig_with(CONFIG)
}

fn warm(image: &Image) {
    let now = Instant::now();
    let words: Vec<u16> = (0..148).map(|a| 0x1000 + a).collect();
    image.write_push(0, &words, now).expect("push");
    image
        .commit_poll(2, &[0xE0E0; 280], now, now)
        .expect("poll");
}

fn request(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
    let mut f = [0u8; 8];
    f[0] = unit;
    f[1] = function;
    f[2..4].copy_from_slice(&address.to_be_bytes());
    f[4..6].copy_from_slice(&count.to_be_bytes());
    append_crc(&mut f, 6);
    f.to_vec()
}

/// Read one reply of `len` bytes, or `None` if nothing arrives within `wait`.
async fn reply(master: &mut DuplexStream, len: usize, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    match tokio::time::timeout(wait, master.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

async fn silent(master: &mut DuplexStream) -> bool {
    reply(master, 1, Duration::from_millis(500)).await.is_none()
}

#[tokio::test(start_paused = true)]
async fn answers_fc03_and_fc04_from_the_image_after_the_turnaround() {
    let mut r = rig();
    warm(&r.image);
    for fc in [3u8, 4] {
        let t0 = Instant::now();
        r.master
            .write_all(&request(1, fc, 60, 4))
            .await
            .expect("write");
        let rep = reply(&mut r.master, 13, Duration::from_secs(1))
            .await
            .expect("reply");
        assert!(
            Instant::now() - t0 >= Duration::from_micros(1750),
            "reply before t3.5"
        );
        assert!(frame_crc_ok(&rep));
        assert_eq!(&rep[..3], &[1, fc, 8]);
        let words: Vec<u16> = rep[3..11]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(
            words,
            vec![0x1000 + 60, 0x1000 + 61, 0x1000 + 62, 0x1000 + 63]
        );
    }
    assert_eq!(r.stats.replies.load(Relaxed), 2);
    r.cancel.cancel();
    r.task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn silent_until_warm_then_silent_when_stale_and_back_when_fresh() {
    let mut r = rig();
    let req = request(1, 3, 0, 10);
    r.master.write_all(&req).await.expect("write");
    assert!(silent(&mut r.master).await, "no zeros at boot");
    assert_eq!(r.stats.silent_warmup.load(Relaxed), 1);

    warm(&r.image);
    r.master.write_all(&req).await.expect("write");
    assert!(reply(&mut r.master, 25, Duration::from_secs(1))
        .await
        .is_some());

    tokio::time::sleep(Duration::from_millis(2100)).await; // push max_age 2 s
    r.master.write_all(&req).await.expect("write");
    assert!(
        silent(&mut r.master).await,
        "stale push data must not be served"
    );
    assert_eq!(r.stats.silent_stale.load(Relaxed), 1);

    r.image
        .write_push(0, &[5; 40], Instant::now())
        .expect("push resumes");
    r.master.write_all(&req).await.expect("write");
    let rep = reply(&mut r.master, 25, Duration::from_secs(1))
        .await
        .expect("fresh again");
    assert_eq!(&rep[3..5], &[0, 5]);
}

#[tokio::test(start_paused = true)]
async fn stale_exception_policy_sends_exception_04() {
    let mut r = rig();
    warm(&r.image);
    tokio::time::sleep(Duration::from_secs(31)).await;
    r.master
        .write_all(&request(1, 3, 512, 4))
        .await
        .expect("write");
    let rep = reply(&mut r.master, 5, Duration::from_secs(1))
        .await
        .expect("exception");
    assert_eq!(&rep[..3], &[1, 0x83, 4]);
    assert!(frame_crc_ok(&rep));
}

#[tokio::test(start_paused = true)]
async fn exceptions_for_function_count_and_address() {
    let mut r = rig();
    warm(&r.image);
    let cases: [(Vec<u8>, [u8; 3]); 5] = [
        (request(1, 6, 0, 1), [1, 0x86, 1]),
        (request(1, 1, 0, 1), [1, 0x81, 1]),
        (request(1, 3, 0, 0), [1, 0x83, 3]),
        (request(1, 3, 0, 126), [1, 0x83, 3]),
        (request(1, 3, 148, 1), [1, 0x83, 2]),
    ];
    for (req, want) in cases {
        r.master.write_all(&req).await.expect("write");
        let rep = reply(&mut r.master, 5, Duration::from_secs(1))
            .await
            .expect("exception");
        assert_eq!(&rep[..3], &want, "for {req:02X?}");
        assert!(frame_crc_ok(&rep));
    }
    // FC16 to us (9 + 2·N bytes) gets exception 01 as well.
    let mut fc16 = vec![1, 0x10, 0, 0, 0, 1, 2, 0, 7];
    fc16.extend_from_slice(&[0, 0]);
    let n = fc16.len() - 2;
    append_crc(&mut fc16, n);
    r.master.write_all(&fc16).await.expect("write");
    let rep = reply(&mut r.master, 5, Duration::from_secs(1))
        .await
        .expect("exception");
    assert_eq!(&rep[..3], &[1, 0x90, 1]);
    assert_eq!(
        r.image.load().generation,
        2,
        "nothing was written by the RTU side"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_function_gets_exception_once_delimited_by_silence() {
    let mut r = rig();
    warm(&r.image);
    r.master
        .write_all(&[0x01, 0x41, 0x19, 0x64, 0x00, 0x01, 0xBA, 0x86])
        .await
        .expect("write");
    let rep = reply(&mut r.master, 5, Duration::from_secs(1))
        .await
        .expect("exception 01");
    assert_eq!(&rep[..3], &[1, 0xC1, 1]);
}

#[tokio::test(start_paused = true)]
async fn silent_for_other_units_broadcast_and_bad_crc() {
    let mut r = rig();
    warm(&r.image);
    r.master
        .write_all(&request(2, 3, 0, 10))
        .await
        .expect("write");
    assert!(silent(&mut r.master).await, "other unit");
    r.master
        .write_all(&request(0, 6, 0, 1))
        .await
        .expect("write");
    assert!(silent(&mut r.master).await, "broadcast");
    let mut bad = request(1, 3, 0, 10);
    bad[7] ^= 0xFF;
    r.master.write_all(&bad).await.expect("write");
    assert!(silent(&mut r.master).await, "bad CRC");
    assert_eq!(r.stats.foreign.load(Relaxed), 1);
    assert_eq!(r.stats.broadcast.load(Relaxed), 1);
    assert_eq!(
        r.stats.replies.load(Relaxed) + r.stats.exceptions.load(Relaxed),
        0
    );
    // Still alive and answering.
    r.master
        .write_all(&request(1, 3, 0, 1))
        .await
        .expect("write");
    assert!(reply(&mut r.master, 7, Duration::from_secs(1))
        .await
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn resynchronises_after_garbage_partials_and_a_shared_bus() {
    let mut r = rig();
    warm(&r.image);
    // Garbage, a leading NUL, then our request in one burst.
    let mut burst = vec![0xFF, 0x13, 0x00];
    burst.extend(request(1, 3, 2, 1));
    r.master.write_all(&burst).await.expect("write");
    assert!(
        reply(&mut r.master, 7, Duration::from_secs(1))
            .await
            .is_some(),
        "after garbage"
    );

    // A partial frame, silence longer than frame_timeout, then a request.
    r.master
        .write_all(&[0x01, 0x03, 0x00])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.master
        .write_all(&request(1, 3, 2, 1))
        .await
        .expect("write");
    assert!(
        reply(&mut r.master, 7, Duration::from_secs(1))
            .await
            .is_some(),
        "after a partial"
    );
    assert_eq!(r.stats.partial_discarded.load(Relaxed), 1);

    // Another master polls unit 5 and unit 5 answers; then the inverter polls us.
    let mut other = request(5, 3, 0, 2);
    let mut resp = vec![5, 3, 4, 0x12, 0x34, 0x56, 0x78, 0, 0];
    append_crc(&mut resp, 7);
    other.extend(resp);
    other.extend(request(1, 3, 2, 1));
    r.master.write_all(&other).await.expect("write");
    let rep = reply(&mut r.master, 7, Duration::from_secs(1))
        .await
        .expect("our reply");
    assert_eq!(&rep[..5], &[1, 3, 2, 0x10, 0x02]);
    assert!(silent(&mut r.master).await, "exactly one reply");

    // Two requests back to back: both answered, in order.
    let mut two = request(1, 3, 0, 1);
    two.extend(request(1, 3, 1, 1));
    r.master.write_all(&two).await.expect("write");
    let a = reply(&mut r.master, 7, Duration::from_secs(1))
        .await
        .expect("first");
    let b = reply(&mut r.master, 7, Duration::from_secs(1))
        .await
        .expect("second");
    assert_eq!((a[4], b[4]), (0x00, 0x01));
}

#[tokio::test(start_paused = true)]
async fn turnaround_zero_and_stream_end() {
    let yaml = CONFIG.replace("turnaround: 1750us", "turnaround: 0");
    let mut r = rig_with(&yaml);
    warm(&r.image);
    let t0 = Instant::now();
    r.master
        .write_all(&request(1, 3, 0, 1))
        .await
        .expect("write");
    assert!(reply(&mut r.master, 7, Duration::from_secs(1))
        .await
        .is_some());
    assert!(
        Instant::now() - t0 < Duration::from_millis(1),
        "no artificial delay with turnaround 0"
    );
    drop(r.master);
    let ended = tokio::time::timeout(Duration::from_secs(1), r.task)
        .await
        .expect("ends on EOF");
    assert!(ended.expect("join").is_ok());
}

/// A port that echoes every byte written back to its own read side, like an RS485 adapter
/// whose receiver stays enabled while it transmits.
struct EchoPort {
    inner: DuplexStream,
    echo: std::collections::VecDeque<u8>,
}

impl tokio::io::AsyncRead for EchoPort {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.echo.is_empty() {
            let n = self.echo.len().min(buf.remaining());
            let bytes: Vec<u8> = self.echo.drain(..n).collect();
            buf.put_slice(&bytes);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for EchoPort {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.echo.extend(&buf[..n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn own_echo_is_ignored_even_when_it_looks_like_a_request() {
    let cfg = config::parse(CONFIG, "test").expect("config").config;
    let image = Arc::new(Image::new(&cfg.regions));
    let stats = Arc::new(RtuStats::default());
    let slave = RtuSlave::new(&cfg.rtu, Arc::clone(&image), Arc::clone(&stats)).with_tokio_timer();
    let (mut master, port) = tokio::io::duplex(1024);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        slave
            .serve(
                EchoPort {
                    inner: port,
                    echo: Default::default(),
                },
                &c,
            )
            .await
    });

    // Registers chosen so that the first 8 bytes of our reply to "read 0..3" are a CRC-valid
    // "read 1536 × 0" request: without echo suppression that would draw an exception 03.
    let c = airbridge_modbus::crc::crc16(&[1, 3, 6, 0, 0, 0]);
    let mut words: Vec<u16> = (0..148).map(|a| 0x1000 + a).collect();
    words[0] = 0;
    words[1] = c & 0x00FF;
    words[2] = (c & 0xFF00) | 0x12;
    let now = Instant::now();
    image.write_push(0, &words, now).expect("push");
    image.commit_poll(2, &[0; 280], now, now).expect("poll");

    let req = request(1, 3, 0, 3);
    let mut echoed_prefix = [0u8; 8];
    echoed_prefix[..6].copy_from_slice(&[1, 3, 6, 0, 0, 0]);
    let n = append_crc(&mut echoed_prefix, 6);
    assert_eq!(n, 8);
    assert!(frame_crc_ok(&echoed_prefix), "the construction holds");

    master.write_all(&req).await.expect("write");
    let rep = reply(&mut master, 11, Duration::from_secs(1))
        .await
        .expect("reply");
    assert_eq!(
        &rep[..8],
        &echoed_prefix,
        "the reply starts with a CRC-valid request shape"
    );
    assert!(silent(&mut master).await, "no answer to our own echo");
    assert_eq!(stats.echoes.load(Relaxed), 1);
    assert_eq!(stats.exceptions.load(Relaxed), 0);
    // Still serving normally afterwards.
    master.write_all(&request(1, 3, 5, 1)).await.expect("write");
    assert!(reply(&mut master, 7, Duration::from_secs(1))
        .await
        .is_some());
    cancel.cancel();
}

/// The precise turnaround on the real clock: never earlier than configured, with or without
/// the coarse phase (1750 µs uses only the thread sleep, 5 ms both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precise_turnaround_is_never_early_on_the_real_clock() {
    for turnaround in ["1750us", "5ms"] {
        let yaml = CONFIG.replace("turnaround: 1750us", &format!("turnaround: {turnaround}"));
        let cfg = config::parse(&yaml, "test").expect("config").config;
        let want = cfg.rtu.turnaround;
        let image = Arc::new(Image::new(&cfg.regions));
        warm(&image);
        let slave = RtuSlave::new(&cfg.rtu, Arc::clone(&image), Arc::new(RtuStats::default()));
        let (mut master, port) = tokio::io::duplex(1024);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move { slave.serve(port, &c).await });
        for _ in 0..20 {
            let t0 = std::time::Instant::now();
            master.write_all(&request(1, 3, 0, 1)).await.expect("write");
            let mut first = [0u8; 1];
            master.read_exact(&mut first).await.expect("reply");
            assert!(
                t0.elapsed() >= want,
                "reply after {:?}, turnaround {want:?}",
                t0.elapsed()
            );
            let mut rest = [0u8; 6];
            master.read_exact(&mut rest).await.expect("rest");
        }
        cancel.cancel();
    }
}
