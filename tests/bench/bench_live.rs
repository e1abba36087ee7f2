//! `bench push` and `bench age` against a gateway fed by the simulated KSEM: by default they
//! refuse (library and binary), with `--live` they change no register a profile names.
//! Loopback and a pty pair only; bounded in time.

use crate::common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airbridge::app::gateway::{Gateway, RtuPort};
use airbridge::link::rtu_master::RtuMaster;
use airbridge_bench::{
    bench_age, bench_push, e2e_config, AgeBenchOptions, LivePolicy, PushBenchOptions,
};
use airbridge_sim::ksem::{self, KsemModel};
use tokio_util::sync::CancellationToken;

/// The (address, words) of every register the KSEM profile names inside the push groups.
fn named_push_registers() -> Vec<(u16, u16)> {
    let profile = airbridge::control::profile::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/ksem-g2.yaml"),
    )
    .expect("KSEM profile");
    let v: Vec<(u16, u16)> = profile
        .registers
        .iter()
        .map(|r| (r.address, r.words))
        .filter(|&(a, n)| {
            ksem::PUSH_GROUPS
                .iter()
                .any(|&(s, c)| a >= s && a + n <= s + c)
        })
        .collect();
    assert!(
        v.len() > 20,
        "the profile names the pushed registers: {v:?}"
    );
    v
}

/// Every named register of `words` (starting at register 0) equals `expected`'s.
fn check_named(words: &[u16], expected: &[u16], named: &[(u16, u16)], what: &str) {
    for &(a, n) in named {
        let r = usize::from(a)..usize::from(a + n);
        assert_eq!(
            words[r.clone()],
            expected[r],
            "{what}: register {a} is not what the simulated KSEM pushed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_refuses_a_live_gateway_and_live_mode_changes_no_named_register() {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The KSEM's slave (energy and identity are polled from it) ...
    let sim = ksem::start(ksem::KsemSimOptions::default(), cancel.clone())
        .await
        .expect("KSEM sim");
    let (gw_end, inv_end) = tokio_serial::SerialStream::pair().expect("pty pair");
    let cfg = e2e_config(sim.slave_addr(), 8).expect("config");
    let gateway = Gateway::start(cfg, RtuPort::Stream(Box::new(gw_end)), cancel.clone())
        .await
        .expect("gateway");
    let push = gateway.push_addr.expect("push listener");
    let image = gateway.handles.image.clone();
    // ... and its pusher, with a household frozen in time: what it pushes is known.
    let frozen = KsemModel::new(7);
    let expected = frozen.instantaneous_block().to_vec();
    let model = Arc::new(Mutex::new(frozen));
    tokio::spawn(ksem::run_pusher(
        push,
        Duration::from_millis(100),
        model,
        cancel.clone(),
        Arc::new(ksem::PushStats::default()),
    ));
    tokio::time::timeout(Duration::from_secs(10), image.wait_warm())
        .await
        .expect("gateway warm");
    let named = named_push_registers();
    let image_words = || {
        let snap = image.load_full();
        let mut w = image.read_words(&snap, None, 0, 40).expect("totals");
        w.extend(image.read_words(&snap, None, 40, 106).expect("phases"));
        w
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while image_words()[..146] != expected[..146] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the pushed values reach the image");

    // 1. By default both benches refuse, say why and name the safe alternatives.
    let mut p = PushBenchOptions::new(push);
    p.duration = Duration::from_millis(300);
    let err = bench_push(&p)
        .await
        .expect_err("bench push must refuse")
        .to_string();
    for needle in [
        "refusing to push",
        "bench rtu",
        "bench e2e",
        "--live",
        "28..39",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in: {err}");
    }
    let mut inv = inv_end;
    let mut a = AgeBenchOptions::new(push);
    a.duration = Duration::from_millis(300);
    let err = bench_age(&mut inv, &a)
        .await
        .expect_err("bench age must refuse")
        .to_string();
    assert!(err.contains("refusing to push"), "{err}");
    let out = tokio::task::spawn_blocking(move || {
        common::airbridge_cmd()
            .args([
                "bench",
                "push",
                "--target",
                &push.to_string(),
                "--duration",
                "300ms",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run airbridge")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the binary must fail: {stderr}");
    assert!(
        stderr.contains("refusing to push") && stderr.contains("--live"),
        "{stderr}"
    );
    assert_eq!(
        image_words()[..146],
        expected[..146],
        "a refusal writes nothing"
    );

    // 2. `--live` push under an RTU reader: every named register is the KSEM's, and the
    //    reader does see the sequence in the reserved words.
    let mut p = PushBenchOptions::new(push);
    p.duration = Duration::from_millis(1500);
    p.connections = 2;
    p.live = LivePolicy::Preserve;
    let pusher = tokio::spawn(async move { bench_push(&p).await });
    let mut master = RtuMaster::new(inv, Duration::from_millis(500));
    let (mut reads, mut saw_sequence) = (0u32, false);
    while !pusher.is_finished() {
        let (Ok(mut w), Ok(b)) = (
            master.read(1, 3, 0, 40).await,
            master.read(1, 3, 40, 106).await,
        ) else {
            continue;
        };
        w.extend(b);
        check_named(&w, &expected, &named, "RTU reply during bench push --live");
        saw_sequence |= w[28] != 0 || w[29] != 0;
        reads += 1;
    }
    let report = pusher.await.expect("join").expect("bench push --live runs");
    assert!(report.writes_ok > 10, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(reads > 5, "only {reads} RTU reads");
    assert!(
        saw_sequence,
        "the reserved words never carried the sequence"
    );

    // 3. `--live` age: it owns the RTU line, so the image (what the RTU slave answers from)
    //    is sampled meanwhile.
    let mut a = AgeBenchOptions::new(push);
    a.duration = Duration::from_millis(1500);
    a.live = LivePolicy::Preserve;
    let mut inv = master.into_inner();
    let age = tokio::spawn(async move { bench_age(&mut inv, &a).await });
    let mut samples = 0u32;
    while !age.is_finished() {
        check_named(
            &image_words(),
            &expected,
            &named,
            "image during bench age --live",
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = age.await.expect("join").expect("bench age --live runs");
    assert!(report.pushes_measured > 0, "{report:?}");
    assert!(samples > 10, "only {samples} samples");
    check_named(&image_words(), &expected, &named, "image after the benches");
}
