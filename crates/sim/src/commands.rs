//! The `airbridge demo` and `airbridge simulate` commands: start a simulator or the demo,
//! print a line a second, stop on Ctrl-C, SIGTERM or `--duration`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airbridge::app::supervisor::shutdown_signal;
use airbridge::config;
use tokio_util::sync::CancellationToken;

/// `airbridge demo`: the KSEM demo until `duration` or Ctrl-C; an error if the simulated
/// inverter got no reply at all.
pub async fn demo(
    duration: Option<Duration>,
    seed: u64,
    status: Option<SocketAddr>,
    mqtt: Option<String>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let opts = crate::demo::DemoOptions {
        duration,
        seed,
        status,
        mqtt,
        ..Default::default()
    };
    let run = crate::demo::run(opts, cancel.clone());
    tokio::pin!(run);
    let summary = tokio::select! {
        r = &mut run => r?,
        () = shutdown_signal() => { cancel.cancel(); run.await? }
    };
    if summary.inverter.replies == 0 {
        anyhow::bail!("the simulated inverter got no reply at all");
    }
    Ok(())
}

/// `airbridge simulate ksem`: the simulated KSEM until Ctrl-C or SIGTERM.
pub async fn ksem(opts: crate::ksem::KsemSimOptions) -> anyhow::Result<()> {
    let push_to = opts.push_to;
    let cancel = CancellationToken::new();
    let sim = crate::ksem::start(opts, cancel.clone()).await?;
    println!(
        "simulated KSEM: Modbus TCP slave on {}{}",
        sim.slave_addr(),
        push_to
            .map(|p| format!(", pushing to {p}"))
            .unwrap_or_default()
    );
    tokio::select! {
        r = sim.wait() => r,
        () = shutdown_signal() => { cancel.cancel(); Ok(()) }
    }
}

/// `airbridge simulate inverter`: poll `device` as a Plenticore would, a line a second.
pub async fn inverter(
    device: String,
    unit: u8,
    interval: Duration,
    baud: u32,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use crate::inverter::{self, InverterOptions, InverterStats};
    use std::sync::Arc;
    let rtu = config::RtuConfig::master_line(device, baud, 8, config::Parity::None, 2, unit);
    let stream = airbridge::link::serial::open(&rtu)?;
    let cancel = CancellationToken::new();
    let stats = Arc::new(InverterStats::default());
    let opts = InverterOptions {
        unit,
        interval,
        ..Default::default()
    };
    let task = tokio::spawn(inverter::run(
        stream,
        opts,
        Arc::clone(&stats),
        cancel.clone(),
    ));
    every_second_until_stopped(duration, || {
        let c = stats.snapshot();
        let view = stats.last_view().map_or_else(
            || "no data yet".to_string(),
            |v| {
                format!(
                    "grid {:+.1} W  L1 {:.1} V  L2 {:.1} V  L3 {:.1} V",
                    v.grid_power_w, v.voltages_v[0], v.voltages_v[1], v.voltages_v[2]
                )
            },
        );
        println!(
            "{view}  | replies {} exceptions {} timeouts {} bad frames {}",
            c.replies, c.exceptions, c.timeouts, c.bad_frames
        );
    })
    .await;
    cancel.cancel();
    let _ = task.await;
    Ok(())
}

/// `airbridge demo --profile`: a simulated device of `profile`, a gateway, a TCP client; an
/// error if the client got no data at all.
pub async fn demo_profile(
    profile: PathBuf,
    duration: Option<Duration>,
    seed: u64,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let run = crate::demo::run_kstar(&profile, duration, seed, true, cancel.clone());
    tokio::pin!(run);
    let summary = tokio::select! {
        r = &mut run => r?,
        () = shutdown_signal() => { cancel.cancel(); run.await? }
    };
    if summary.reads_ok == 0 {
        anyhow::bail!("the TCP client got no data at all");
    }
    Ok(())
}

/// `airbridge simulate device`: one simulated device per unit on `device`, a line a second.
pub async fn device(
    profile: PathBuf,
    device: String,
    units: Vec<u8>,
    (baud, wire_time): (u32, bool),
    seed: u64,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use crate::device::{self, DeviceOptions, SimDevice};
    check_units(&units)?;
    let prof = airbridge::control::profile::load(&profile)?;
    let name = prof.name.clone();
    let line = config::RtuConfig::master_line(
        device.clone(),
        baud,
        8,
        config::Parity::None,
        1,
        units.first().copied().unwrap_or(1),
    );
    let stream = airbridge::link::serial::open(&line)?;
    let devices: Vec<_> = units
        .iter()
        .zip(seed..)
        .map(|(&unit, seed)| {
            SimDevice::new(
                prof.clone(),
                DeviceOptions {
                    unit,
                    seed,
                    wire: wire_time.then_some((baud, 10)),
                    ..Default::default()
                },
            )
        })
        .collect();
    let list: Vec<String> = units.iter().map(ToString::to_string).collect();
    let which = if units.len() == 1 { "unit" } else { "units" };
    let paced = if wire_time {
        ", replies paced to the wire"
    } else {
        ""
    };
    println!(
        "simulated {name}: {which} {} on {device} at {baud} 8N1{paced}",
        list.join(", ")
    );
    let cancel = CancellationToken::new();
    let bus = devices.clone();
    let c = cancel.clone();
    let task = tokio::spawn(async move { device::serve_bus(stream, &bus, c).await });
    every_second_until_stopped(duration, || {
        println!("{}", bus_counts_line(&units, &devices));
    })
    .await;
    cancel.cancel();
    match task.await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(anyhow::anyhow!("device task: {e}")),
    }
}

/// `--unit`: every RS485 address 1..247, each once.
fn check_units(units: &[u8]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for &u in units {
        if !(1..=247).contains(&u) || !seen.insert(u) {
            anyhow::bail!("--unit {u}: each RS485 address must be 1..247 and given once");
        }
    }
    Ok(())
}

/// The simulated devices' counts: one device's alone, several as `unit N: …` joined by `|`.
fn bus_counts_line(units: &[u8], devices: &[std::sync::Arc<crate::device::SimDevice>]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let lines: Vec<String> = devices
        .iter()
        .map(|d| {
            let s = &d.stats;
            format!(
                "requests {} reads {} writes {} exceptions {}",
                s.requests.load(Relaxed),
                s.reads.load(Relaxed),
                s.writes.load(Relaxed),
                s.exceptions.load(Relaxed)
            )
        })
        .collect();
    match lines.as_slice() {
        [one] => one.clone(),
        many => {
            let per: Vec<String> = units
                .iter()
                .zip(many)
                .map(|(u, l)| format!("unit {u}: {l}"))
                .collect();
            per.join(" | ")
        }
    }
}

/// Call `report` every second until SIGINT/SIGTERM or, if given, `duration` has passed.
async fn every_second_until_stopped(duration: Option<Duration>, mut report: impl FnMut()) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = shutdown_signal() => break,
            () = &mut end => break,
            _ = tick.tick() => report(),
        }
    }
}
