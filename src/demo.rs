//! `airbridge demo`: the whole chain in one process, no hardware, no root, no config.
//!
//! A simulated KSEM (Modbus TCP slave + pusher on loopback) feeds the real gateway, whose
//! RTU slave serves a simulated Plenticore over an in-process pseudo-terminal pair. Owns
//! only the wiring and the once-a-second report; every part is the real module.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::gateway::{Gateway, RtuPort};
use crate::sim::{inverter, ksem};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (`None`: until cancelled).
    pub duration: Option<Duration>,
    /// KSEM push period.
    pub push_interval: Duration,
    /// Inverter poll period.
    pub poll_interval: Duration,
    /// Household seed of the simulated KSEM.
    pub seed: u64,
    /// Print a status line every second.
    pub report: bool,
    /// Serve the status page here (`127.0.0.1:0` picks a free port).
    pub status: Option<std::net::SocketAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: None,
            push_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(160),
            seed: 1,
            report: true,
            status: None,
        }
    }
}

/// What the simulated inverter saw, at the end.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub inverter: inverter::InverterCounts,
    pub last_view: Option<inverter::InverterView>,
    pub push_writes_ok: u64,
}

/// The demo's gateway config: the shipped defaults, with loopback endpoints and a pty.
pub fn demo_config(ksem_slave: std::net::SocketAddr) -> anyhow::Result<config::Config> {
    let yaml = format!(
        "rtu: {{device: in-process-pty, baud: 38400, stop_bits: 2, unit_id: 1}}
push: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1], max_connections: 4}}
poll: {{host: '{ksem_slave}', unit_id: 1, timeout: 1s}}
regions:
  - {{name: totals,   start: 0,    count: 40,  source: push, max_age: 2s, on_stale: silence, fallback_poll: 1s}}
  - {{name: phases,   start: 40,   count: 108, source: push, max_age: 2s, on_stale: silence, fallback_poll: 1s}}
  - {{name: energy,   start: 512,  count: 280, source: [push, poll], every: 10s, max_age: 5m, on_stale: serve}}
  - {{name: identity, start: 8192, count: 57,  source: poll, every: 1h}}
  - {{name: spec_version, start: 8249, count: 1, source: static, values: {{8249: 7}}}}
"
    );
    Ok(config::parse(&yaml, "demo")?.config)
}

/// Run the demo until `duration` or `cancel`.
pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> anyhow::Result<DemoSummary> {
    let cancel = cancel.child_token();
    let ksem_opts = ksem::KsemSimOptions {
        push_to: None,
        interval: opts.push_interval,
        seed: opts.seed,
        ..Default::default()
    };
    let ksem = ksem::start(ksem_opts, cancel.clone()).await?;

    let (inverter_end, gateway_end) = tokio_serial::SerialStream::pair()
        .map_err(|e| anyhow::anyhow!("cannot create a pseudo-terminal pair: {e}"))?;
    let mut config = demo_config(ksem.slave_addr())?;
    config.status = opts.status.map(|listen| config::StatusConfig { listen });
    let start = crate::gateway::StartOptions {
        profile: Some(builtin_ksem_profile()?),
    };
    let gateway = Gateway::start_with(
        config,
        RtuPort::Stream(Box::new(gateway_end)),
        cancel.clone(),
        start,
    )
    .await?;
    if let (Some(addr), true) = (gateway.status_addr, opts.report) {
        println!("status page: http://{addr}/  (also /status, /metrics, /journal)");
    }
    let push_addr = gateway
        .push_addr
        .ok_or_else(|| anyhow::anyhow!("demo gateway has no push listener"))?;

    let push_stats = Arc::new(ksem::PushStats::default());
    let pusher = tokio::spawn(ksem::run_pusher(
        push_addr,
        opts.push_interval,
        ksem.model(),
        cancel.clone(),
        Arc::clone(&push_stats),
    ));

    // A real inverter would poll into the warm-up silence; the demo starts it once the
    // gateway is ready so its counters show the steady state (bounded: a broken source
    // still lets the demo run and show the silence).
    let _ = tokio::time::timeout(Duration::from_secs(5), gateway.handles.image.wait_warm()).await;

    let inv_stats = Arc::new(inverter::InverterStats::default());
    let inv_opts = inverter::InverterOptions {
        interval: opts.poll_interval,
        ..Default::default()
    };
    let inv = tokio::spawn(inverter::run(
        inverter_end,
        inv_opts,
        Arc::clone(&inv_stats),
        cancel.clone(),
    ));

    if opts.report {
        println!("airbridge demo: simulated KSEM (slave {}, pushing to {push_addr}) → gateway → simulated Plenticore on a pty", ksem.slave_addr());
    }
    let started = Instant::now();
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        let until_end = async {
            match opts.duration {
                Some(d) => tokio::time::sleep_until(started + d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = until_end => break,
            _ = tick.tick() => {
                if opts.report {
                    println!("{}", status_line(started, &gateway, &inv_stats));
                }
            }
        }
    }
    cancel.cancel();
    let _ = inv.await;
    let _ = pusher.await;
    let handles = gateway.handles.clone();
    gateway.join(Duration::from_secs(2)).await;
    drop(ksem);
    let summary = DemoSummary {
        inverter: inv_stats.snapshot(),
        last_view: inv_stats.last_view(),
        push_writes_ok: push_stats.snapshot().writes_ok,
    };
    if opts.report {
        let c = &summary.inverter;
        println!(
            "demo done: {} requests, {} replies, {} exceptions, {} timeouts, {} bad frames; {} pushes accepted by the gateway",
            c.requests, c.replies, c.exceptions, c.timeouts, c.bad_frames,
            handles.push.writes_ok.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    Ok(summary)
}

fn status_line(started: Instant, gateway: &Gateway, inv: &inverter::InverterStats) -> String {
    let now = Instant::now();
    let mut s = format!("t={:>3}s ", now.duration_since(started).as_secs());
    match inv.last_view() {
        Some(v) => {
            let _ = write!(
                s,
                "grid {:>+8.1} W  L1 {:.1} V  L2 {:.1} V  L3 {:.1} V  {:.3} Hz",
                v.grid_power_w, v.voltages_v[0], v.voltages_v[1], v.voltages_v[2], v.frequency_hz
            );
        }
        None => s.push_str("inverter has no data yet"),
    }
    let image = &gateway.handles.image;
    let snap = image.load_full();
    s.push_str("  | age");
    for (i, spec) in image.specs().iter().enumerate() {
        match image.age(&snap, i, now) {
            Some(a) => {
                let _ = write!(s, " {} {}ms", spec.name, a.as_millis());
            }
            None => {
                let _ = write!(s, " {} -", spec.name);
            }
        }
    }
    let c = inv.snapshot();
    let _ = write!(
        s,
        "  | replies {} exc {} timeouts {} bad {}",
        c.replies, c.exceptions, c.timeouts, c.bad_frames
    );
    s
}

/// The KSEM G2 profile built into the binary, so the demo's status page decodes values
/// without any file.
pub fn builtin_ksem_profile() -> anyhow::Result<crate::profile::Profile> {
    Ok(crate::profile::parse(
        include_str!("../profiles/ksem-g2.yaml"),
        "profiles/ksem-g2.yaml (built in)",
    )?)
}
