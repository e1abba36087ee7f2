//! The push server's request handling (MBAP + PDU) against a model, end to end.
//!
//! Shared by the libFuzzer target `fuzz/fuzz_targets/push_server.rs` and the proptest suite
//! `tests/props/prop_push.rs` (included by path).
//!
//! Why end to end: tokio-modbus's MBAP codec is private and our service (`PushService` in
//! `crates/gateway/src/sources/push.rs`) is private too, so the narrowest *real* entry point
//! is the socket. The harness runs a real [`PushServer`] (accept, allow list, limit, idle
//! timeout, tokio-modbus's codec, our service, the image) on 127.0.0.1 in its own runtime,
//! sends each input on a fresh connection, half-closes it and reads every reply until the
//! server closes. No mock, no copy of the handler: what is checked is what the KSEM talks to.
//!
//! The model walks the input the way the MBAP decoder must (7-byte header, length, protocol
//! id 0, PDU) and predicts, frame by frame: a reply per decoded request with the same
//! transaction and unit id; FC16/FC06 acknowledged exactly when entirely inside the push
//! regions (else exception 02, nothing written); FC03/FC04 answered with the model's words,
//! exception 03 for counts outside 1..=125, 02 outside the regions; any other function
//! exception 01 or, if undecodable, the connection closed. Afterwards the image holds exactly
//! the model's words, its generation moved by the number of acknowledged writes, the counters
//! (`PushStats`) moved by what happened, the slot is freed, and the server still answers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use airbridge::config;
use airbridge::image::Image;
use airbridge::sources::push::{PushServer, PushStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Regions of the harness: the shipped KSEM layout.
const YAML: &str = "rtu: {device: none}
push: {listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: 1024, idle_timeout: 10s}
poll: {host: '127.0.0.1:9', timeout: 1s}
regions:
  - {name: totals, start: 0, count: 40, source: push}
  - {name: phases, start: 40, count: 108, source: push}
  - {name: energy, start: 512, count: 280, source: [push, poll], every: 1h}
  - {name: identity, start: 8192, count: 57, source: poll, every: 1h}
  - {name: spec, start: 8249, count: 1, source: static, values: {8249: 7}}
";
/// Address ranges that take pushes, and all served ranges (contiguous runs of regions).
const PUSH_SPANS: [(u32, u32); 2] = [(0, 148), (512, 792)];
const ALL_SPANS: [(u32, u32); 3] = [(0, 148), (512, 792), (8192, 8250)];
const MAX_PDU: usize = 253;

fn inside(spans: &[(u32, u32)], addr: u16, len: usize) -> bool {
    let a = u32::from(addr);
    let e = a + len as u32;
    len > 0 && spans.iter().any(|&(s, end)| s <= a && e <= end)
}

/// A running push server and what it writes to.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    image: Arc<Image>,
    stats: Arc<PushStats>,
    cancel: CancellationToken,
    /// One check at a time: the model assumes it is the only client.
    serial: std::sync::Mutex<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the model expects of one request frame.
#[derive(Debug)]
enum Expect {
    /// A write of these words; acknowledged (with this echo) iff inside the push regions.
    Write {
        fc: u8,
        addr: u16,
        values: Vec<u16>,
        echo: [u8; 4],
    },
    Read {
        fc: u8,
        addr: u16,
        count: u16,
    },
    /// A function the service does not handle: exception 01 if tokio-modbus decodes it,
    /// otherwise the connection closes.
    Other {
        fc: u8,
    },
}

#[derive(Debug)]
struct Frame {
    tid: [u8; 2],
    unit: u8,
    expect: Expect,
}

/// Split `data` into request frames as the MBAP decoder must; stops where the decoder would
/// fail or wait (the server then closes at our half-close).
fn frames(data: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 7 {
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        if len == 0 || rest.len() < 6 + len || rest[2..4] != [0, 0] {
            break;
        }
        let pdu = &rest[7..6 + len];
        let Some(expect) = classify(pdu) else { break };
        out.push(Frame {
            tid: [rest[0], rest[1]],
            unit: rest[6],
            expect,
        });
        rest = &rest[6 + len..];
    }
    out
}

fn word(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// What a PDU means to the service; `None` when the decoder must reject it.
fn classify(pdu: &[u8]) -> Option<Expect> {
    let fc = *pdu.first()?;
    match fc {
        3 | 4 => (pdu.len() == 5).then(|| Expect::Read {
            fc,
            addr: word(pdu, 1),
            count: word(pdu, 3),
        }),
        6 => (pdu.len() == 5).then(|| Expect::Write {
            fc,
            addr: word(pdu, 1),
            values: vec![word(pdu, 3)],
            echo: [pdu[1], pdu[2], pdu[3], pdu[4]],
        }),
        16 => {
            if pdu.len() < 6 || pdu.len() > MAX_PDU {
                return None;
            }
            let qty = usize::from(word(pdu, 3));
            let bc = usize::from(pdu[5]);
            if bc != 2 * qty || pdu.len() != 6 + bc {
                return None;
            }
            Some(Expect::Write {
                fc,
                addr: word(pdu, 1),
                values: (0..qty).map(|i| word(pdu, 6 + 2 * i)).collect(),
                echo: [pdu[1], pdu[2], pdu[3], pdu[4]],
            })
        }
        0x80..=0xFF => None,
        _ => Some(Expect::Other { fc }),
    }
}

/// Split the server's bytes into (transaction id, unit, PDU); panics on a malformed reply.
fn replies(data: &[u8]) -> Vec<([u8; 2], u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "truncated reply {rest:02X?}");
        assert_eq!(rest[2..4], [0, 0], "reply protocol id");
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        assert!(
            len >= 3 && rest.len() >= 6 + len,
            "reply length {len}: {rest:02X?}"
        );
        out.push(([rest[0], rest[1]], rest[6], &rest[7..6 + len]));
        rest = &rest[6 + len..];
    }
    out
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    writes_ok: u64,
    writes_refused: u64,
    reads: u64,
    bad_requests: u64,
    accepted: u64,
}

impl Harness {
    /// Bind and run a push server on 127.0.0.1 with the KSEM's region layout.
    pub fn start() -> Harness {
        let cfg = config::parse(YAML, "harness")
            .expect("harness config")
            .config;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let image = Arc::new(Image::new(&cfg.regions));
        let stats = Arc::new(PushStats::default());
        let cancel = CancellationToken::new();
        let push = cfg.push.clone().expect("push section");
        let server = rt
            .block_on(PushServer::bind(
                push,
                Arc::clone(&image),
                Arc::clone(&stats),
            ))
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        rt.spawn(server.run(cancel.clone()));
        Harness {
            rt,
            addr,
            image,
            stats,
            cancel,
            serial: std::sync::Mutex::new(()),
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> &PushStats {
        &self.stats
    }

    fn counts(&self) -> Counts {
        let s = &self.stats;
        Counts {
            writes_ok: s.writes_ok.load(Relaxed),
            writes_refused: s.writes_refused.load(Relaxed),
            reads: s.reads.load(Relaxed),
            bad_requests: s.bad_requests.load(Relaxed),
            accepted: s.front.accepted.load(Relaxed),
        }
    }

    /// The image's words over every served span (address → word).
    fn words(&self) -> Vec<(u16, u16)> {
        let snap = self.image.load();
        let mut out = Vec::new();
        for &(s, e) in &ALL_SPANS {
            let mut a = s;
            while a < e {
                let n = (e - a).min(125) as u16;
                let w = self
                    .image
                    .read_words(&snap, self.image.table_for(3), a as u16, n)
                    .expect("span readable");
                out.extend(
                    w.into_iter()
                        .enumerate()
                        .map(|(i, v)| (a as u16 + i as u16, v)),
                );
                a += u32::from(n);
            }
        }
        out
    }

    /// Send `data` on a fresh connection, half-close, read until the server closes.
    fn exchange(&self, data: &[u8]) -> Vec<u8> {
        let addr = self.addr;
        let data = data.to_vec();
        self.rt.block_on(async move {
            let run = async move {
                let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let _ = s.set_nodelay(true);
                let (mut rx, mut tx) = s.into_split();
                let write = async move {
                    // The server may close first (undecodable input): not our failure.
                    let _ = tx.write_all(&data).await;
                    let _ = tx.shutdown().await;
                    tx
                };
                let read = async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return got,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                };
                let (_tx, got) = tokio::join!(write, read);
                got
            };
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("the server neither answered nor closed within 10 s: stalled")
        })
    }

    /// Run one input and check it against the model; panics on any difference.
    pub fn check(&self, data: &[u8]) {
        let _one = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.counts();
        let gen_before = self.image.load().generation;
        let mut model = vec![0u16; 65_536];
        for (a, w) in self.words() {
            model[usize::from(a)] = w;
        }
        let frames = frames(data);
        let got = self.exchange(data);
        let replies = replies(&got);

        let mut want = Counts {
            accepted: before.accepted + 1,
            ..before
        };
        let mut acked = 0u64;
        let mut r = 0;
        for f in &frames {
            let Some(&(tid, unit, pdu)) = replies.get(r) else {
                break; // the server closed: nothing after this frame was handled
            };
            assert_eq!((tid, unit), (f.tid, f.unit), "reply {r} is not for {f:?}");
            match &f.expect {
                Expect::Write {
                    fc,
                    addr,
                    values,
                    echo,
                } => {
                    if inside(&PUSH_SPANS, *addr, values.len()) {
                        let mut ok = vec![*fc];
                        ok.extend_from_slice(echo);
                        assert_eq!(pdu, &ok[..], "write inside the push regions: {f:?}");
                        for (i, &v) in values.iter().enumerate() {
                            model[usize::from(*addr) + i] = v;
                        }
                        want.writes_ok += 1;
                        acked += 1;
                    } else {
                        assert_eq!(
                            pdu,
                            &[fc | 0x80, 2],
                            "write outside the push regions: {f:?}"
                        );
                        want.writes_refused += 1;
                    }
                }
                Expect::Read { fc, addr, count } => {
                    if *count == 0 || *count > 125 {
                        assert_eq!(pdu, &[fc | 0x80, 3], "{f:?}");
                        want.bad_requests += 1;
                    } else if !inside(&ALL_SPANS, *addr, usize::from(*count)) {
                        assert_eq!(pdu, &[fc | 0x80, 2], "{f:?}");
                    } else {
                        let mut ok = vec![*fc, (2 * count) as u8];
                        for a in *addr..*addr + count {
                            ok.extend_from_slice(&model[usize::from(a)].to_be_bytes());
                        }
                        assert_eq!(pdu, &ok[..], "read {f:?}");
                        want.reads += 1;
                    }
                }
                Expect::Other { fc } => {
                    assert_eq!(pdu, &[fc | 0x80, 1], "unsupported function {f:?}");
                    want.bad_requests += 1;
                }
            }
            r += 1;
        }
        assert_eq!(
            r,
            replies.len(),
            "{} replies for {} requests the model could follow",
            replies.len(),
            r
        );

        // The slot is freed once the connection is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.stats.front.open.load(Relaxed) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "connection slot never freed"
            );
            std::thread::yield_now();
        }
        assert_eq!(self.counts(), want, "counters");
        assert_eq!(
            self.image.load().generation,
            gen_before + acked,
            "one commit per acknowledged write"
        );
        for (a, w) in self.words() {
            assert_eq!(w, model[usize::from(a)], "image word {a}");
        }
    }
}
