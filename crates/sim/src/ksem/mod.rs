//! Simulated KOSTAL Smart Energy Meter G2 (KSEM): a household model plus the
//! meter's two Modbus TCP faces.
//!
//! Owns:
//! - [`KsemModel`]: a pure, seeded household (voltages, frequency, base load,
//!   kettle, induction hob, fridge, a slow PV cycle so both import and export
//!   show within minutes) rendered into the KSEM register map: 0..=147
//!   (instantaneous), 512..=791 (energy counters), 8192..=8249 (PnP/identity) and
//!   the SunSpec chain 40000..=40178 (common model 1, meter model 203, firmware ≥ 2.6.0
//!   layout) filled from the same words. See `shared/reference/ksem-g2.md` §2–5 and §8.
//! - [`serve_slave`]: the KSEM's Modbus TCP slave (FC03/FC04 over those blocks).
//! - [`run_pusher`]: the KSEM's "Modbus TCP master" push mode (FC16 groups 0..27
//!   and 40..145 every interval).
//! - [`start`] / [`run`]: the whole simulated meter, as used by the CLI, the demo and tests.
//!
//! May touch: the network (the listener it is given, the push target) and the
//! system clock (registers 8245..8248 only). Shares nothing with the gateway.
//!
//! Conventions: words big-endian, high word first for 32/64-bit values; P+ is
//! import, P− export, at most one of a pair non-zero; Q± and S± follow the
//! direction of P (the emulator convention known to work with the Plenticore);
//! PF is the magnitude |P|/S (0..1000).
//!
//! The files: `model` (the household and the register map), `sunspec` (the SunSpec chain
//! rendered from that map), `slave`, `pusher`; this one
//! holds the register-map constants, the options and the orchestration ([`start`], [`run`]).

mod model;
mod pusher;
mod slave;
pub mod sunspec;

pub use model::{lock_model, KsemModel, SharedModel};
pub use pusher::{
    run_pusher, PushCounts, PushStats, PUSH_BACKOFF_MAX, PUSH_BACKOFF_MIN, PUSH_REQUEST_TIMEOUT,
};
pub use slave::serve_slave;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Instantaneous values block (first, last) address.
pub const BLOCK_INSTANT: (u16, u16) = (0, 147);
/// Energy counters block (first, last) address.
pub const BLOCK_ENERGY: (u16, u16) = (512, 791);
/// PnP / identity block (first, last) address.
pub const BLOCK_PNP: (u16, u16) = (8192, 8249);
/// SunSpec chain ("SunS" … end marker) (first, last) address.
pub const BLOCK_SUNSPEC: (u16, u16) = (40_000, 40_178);
/// The blocks a read may fall in (entirely within one of them).
pub const BLOCKS: [(u16, u16); 4] = [BLOCK_INSTANT, BLOCK_ENERGY, BLOCK_PNP, BLOCK_SUNSPEC];
/// Largest register count a single read may ask for.
pub const MAX_READ_COUNT: u16 = 125;
/// Push groups (start, count): "current values total" 0..=27 and "current values phases" 40..=145.
pub const PUSH_GROUPS: [(u16, u16); 2] = [(0, 28), (40, 106)];

/// Product id at 8193 (one of the values the Victron probe recognises as KSEM).
pub const PRODUCT_ID: u16 = 0x4842;
/// Measuring interval at 8244, ms (G2).
pub const MEASURING_INTERVAL_MS: u16 = 200;
/// "Modbus spec version" at 8249.
pub const MODBUS_SPEC_VERSION: u16 = 7;

/// What to run.
#[derive(Debug, Clone)]
pub struct KsemSimOptions {
    /// Where the Modbus TCP slave listens (port 0: any free port, see [`KsemSim::slave_addr`]).
    pub listen: SocketAddr,
    /// Where to push (the gateway's push listener), if anywhere.
    pub push_to: Option<SocketAddr>,
    /// Measuring cycle: model step and push period.
    pub interval: Duration,
    /// Seed of the household.
    pub seed: u64,
}

impl Default for KsemSimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            push_to: None,
            interval: Duration::from_millis(u64::from(MEASURING_INTERVAL_MS)),
            seed: 1,
        }
    }
}

/// A running simulated KSEM. Dropping it stops it.
#[derive(Debug)]
pub struct KsemSim {
    /// Where the slave really listens (port 0 resolved).
    slave_addr: SocketAddr,
    /// The household, shared with the slave and the pusher.
    model: SharedModel,
    /// The pusher's counters.
    stats: Arc<PushStats>,
    /// Stops every task (child of the caller's token).
    cancel: CancellationToken,
    /// Stepper, slave and pusher, joined by `wait`.
    tasks: JoinSet<anyhow::Result<()>>,
}

impl KsemSim {
    /// The address the slave actually listens on.
    pub fn slave_addr(&self) -> SocketAddr {
        self.slave_addr
    }

    /// The shared model.
    pub fn model(&self) -> SharedModel {
        self.model.clone()
    }

    /// The pusher's counters (all zero when not pushing).
    pub fn push_stats(&self) -> Arc<PushStats> {
        self.stats.clone()
    }

    /// Stop all tasks (as does cancelling the parent token, or dropping the handle).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Run until cancelled; the first task error stops the others and is returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut tasks = std::mem::take(&mut self.tasks);
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined
                .map_err(anyhow::Error::from)
                .and_then(|r| r)
                .context("KSEM sim task");
            if let Err(e) = result {
                self.cancel.cancel();
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for KsemSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Bind the slave and start the model stepper, the slave and (if configured) the pusher.
pub async fn start(opts: KsemSimOptions, cancel: CancellationToken) -> anyhow::Result<KsemSim> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("KSEM sim: cannot listen on {}", opts.listen))?;
    let slave_addr = listener.local_addr()?;
    let model: SharedModel = Arc::new(Mutex::new(KsemModel::new(opts.seed)));
    let stats = Arc::new(PushStats::default());
    let cancel = cancel.child_token();
    let period = opts.interval.max(Duration::from_millis(1));
    let mut tasks = JoinSet::new();

    tasks.spawn(step_model(model.clone(), period, cancel.clone()));
    tasks.spawn(serve_slave(listener, model.clone(), cancel.clone()));
    if let Some(target) = opts.push_to {
        let (model, cancel, stats) = (model.clone(), cancel.clone(), stats.clone());
        tasks.spawn(async move {
            run_pusher(target, period, model, cancel, stats).await;
            Ok(())
        });
    }
    let push_to = opts
        .push_to
        .map_or_else(|| "nowhere".to_string(), |p| p.to_string());
    tracing::info!(slave = %slave_addr, push_to = %push_to, seed = opts.seed, "KSEM sim started");
    Ok(KsemSim {
        slave_addr,
        model,
        stats,
        cancel,
        tasks,
    })
}

/// Run a simulated KSEM until `cancel`.
pub async fn run(opts: KsemSimOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    start(opts, cancel).await?.wait().await
}

/// Step the model by the real elapsed time every period.
async fn step_model(
    model: SharedModel,
    period: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    cancel
        .run_until_cancelled(async {
            loop {
                ticker.tick().await;
                let now = Instant::now();
                lock_model(&model).step(now - last);
                last = now;
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::model::tests::{u32_at, u64_at};
    use super::*;
    use airbridge::link::tcp_front::Answering;
    use tokio::time::sleep;
    use tokio_modbus::prelude::{Reader as _, Slave};
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
    use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

    const LIMIT: Duration = Duration::from_secs(10);

    async fn start_local(push_to: Option<SocketAddr>) -> KsemSim {
        let opts = KsemSimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            push_to,
            interval: Duration::from_millis(20),
            seed: 11,
        };
        start(opts, CancellationToken::new()).await.unwrap()
    }

    #[tokio::test]
    async fn slave_serves_blocks() {
        tokio::time::timeout(LIMIT, async {
            let sim = start_local(None).await;
            let mut ctx = tokio_modbus::client::tcp::connect_slave(sim.slave_addr(), Slave(1))
                .await
                .unwrap();
            let a = ctx.read_holding_registers(0, 74).await.unwrap().unwrap();
            let b = ctx.read_holding_registers(74, 74).await.unwrap().unwrap();
            assert_eq!(a.len() + b.len(), 148);
            let v1 = f64::from(u32_at(&a, 62)) * 0.001;
            assert!((225.0..=245.0).contains(&v1), "{v1}");
            assert_eq!(
                ctx.read_holding_registers(8244, 1).await.unwrap().unwrap(),
                vec![200]
            );
            assert_eq!(
                ctx.read_input_registers(8244, 1).await.unwrap().unwrap(),
                vec![200]
            );
            let e = ctx.read_holding_registers(512, 125).await.unwrap().unwrap();
            assert!(u64_at(&e, 0) >= 45_678_912);

            for (addr, n) in [(300, 1), (0, 0), (0, 126), (140, 10)] {
                assert_eq!(
                    ctx.read_holding_registers(addr, n).await.unwrap(),
                    Err(ExceptionCode::IllegalDataAddress),
                    "read({addr}, {n})"
                );
            }
            use tokio_modbus::prelude::Writer as _;
            assert_eq!(
                ctx.write_single_register(0, 1).await.unwrap(),
                Err(ExceptionCode::IllegalFunction)
            );
            // Any unit id is answered.
            let mut ctx71 = tokio_modbus::client::tcp::connect_slave(sim.slave_addr(), Slave(71))
                .await
                .unwrap();
            assert_eq!(
                ctx71
                    .read_holding_registers(8244, 1)
                    .await
                    .unwrap()
                    .unwrap(),
                vec![200]
            );
            sim.stop();
            sim.wait().await.unwrap();
        })
        .await
        .unwrap();
    }

    /// Tiny FC16 receiver: records (unit, address, count) of every write.
    #[derive(Clone)]
    struct Recorder {
        writes: Arc<Mutex<Vec<(u8, u16, usize)>>>,
        exception: bool,
    }

    impl Recorder {
        fn answer(&self, req: SlaveRequest<'static>) -> Result<Response, ExceptionCode> {
            match req.request {
                Request::WriteMultipleRegisters(addr, words) => {
                    self.writes
                        .lock()
                        .unwrap()
                        .push((req.slave, addr, words.len()));
                    if self.exception {
                        Err(ExceptionCode::ServerDeviceBusy)
                    } else {
                        Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
                    }
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        }
    }

    async fn spawn_recorder(exception: bool) -> (SocketAddr, Arc<Mutex<Vec<(u8, u16, usize)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder {
            writes: writes.clone(),
            exception,
        };
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, socket_addr| {
                let rec = rec.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| {
                        let rec = rec.clone();
                        Ok(Some(Answering(move |req| rec.answer(req))))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
        (addr, writes)
    }

    #[tokio::test]
    async fn pusher_writes_both_groups() {
        tokio::time::timeout(LIMIT, async {
            let (addr, writes) = spawn_recorder(false).await;
            let sim = start_local(Some(addr)).await;
            let stats = sim.push_stats();
            while stats.snapshot().writes_ok < 6 {
                sleep(Duration::from_millis(10)).await;
            }
            let w = writes.lock().unwrap().clone();
            assert!(
                w.iter().any(|&(u, a, n)| u == 1 && a == 0 && n == 28),
                "{w:?}"
            );
            assert!(
                w.iter().any(|&(u, a, n)| u == 1 && a == 40 && n == 106),
                "{w:?}"
            );
            assert!(w
                .iter()
                .all(|&(_, a, n)| (a, n) == (0, 28) || (a, n) == (40, 106)));
            let s = stats.snapshot();
            assert_eq!((s.exceptions, s.errors, s.reconnects), (0, 0, 0));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn pusher_counts_exceptions() {
        tokio::time::timeout(LIMIT, async {
            let (addr, _writes) = spawn_recorder(true).await;
            let sim = start_local(Some(addr)).await;
            let stats = sim.push_stats();
            while stats.snapshot().exceptions < 4 {
                sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(stats.snapshot().writes_ok, 0);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn pusher_survives_missing_target() {
        tokio::time::timeout(LIMIT, async {
            // A port that was free a moment ago: connects are refused.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            let sim = start_local(Some(addr)).await;
            let stats = sim.push_stats();
            while stats.snapshot().reconnects < 2 {
                sleep(Duration::from_millis(20)).await;
            }
            let s = stats.snapshot();
            assert!(s.errors >= 2 && s.writes_ok == 0, "{s:?}");
            // The slave keeps working meanwhile.
            let mut ctx = tokio_modbus::client::tcp::connect_slave(sim.slave_addr(), Slave(1))
                .await
                .unwrap();
            assert_eq!(
                ctx.read_holding_registers(8244, 1).await.unwrap().unwrap(),
                vec![200]
            );
        })
        .await
        .unwrap();
    }
}
