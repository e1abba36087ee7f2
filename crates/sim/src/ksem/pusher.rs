//! [`run_pusher`]: the KSEM's "Modbus TCP master" push mode, FC16 of groups 0..27 and
//! 40..145 every interval, reconnecting with backoff; [`PushStats`] counts it. Touches the
//! push target only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval, sleep, timeout, MissedTickBehavior};
use tokio_modbus::client::{Context as ClientContext, Writer as _};
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;

use super::{lock_model, SharedModel, PUSH_GROUPS};

/// Timeout of every push request (connect and each write).
pub const PUSH_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Push reconnect backoff bounds.
pub const PUSH_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Push reconnect backoff upper bound.
pub const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Pusher counters.
#[derive(Debug, Default)]
pub struct PushStats {
    /// FC16 writes acknowledged.
    pub writes_ok: AtomicU64,
    /// FC16 writes answered with an exception.
    pub exceptions: AtomicU64,
    /// Connect failures, transport errors and timeouts.
    pub errors: AtomicU64,
    /// Connection attempts after the first one.
    pub reconnects: AtomicU64,
}

/// A plain copy of [`PushStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushCounts {
    /// See [`PushStats::writes_ok`].
    pub writes_ok: u64,
    /// See [`PushStats::exceptions`].
    pub exceptions: u64,
    /// See [`PushStats::errors`].
    pub errors: u64,
    /// See [`PushStats::reconnects`].
    pub reconnects: u64,
}

impl PushStats {
    /// Current values.
    pub fn snapshot(&self) -> PushCounts {
        PushCounts {
            writes_ok: self.writes_ok.load(Ordering::Relaxed),
            exceptions: self.exceptions.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Push the two instantaneous groups to `target` every `interval` (FC16, unit 1)
/// until `cancel`. Reconnects with a backoff of 200 ms doubling to 2 s; never
/// gives up, never panics.
pub async fn run_pusher(
    target: SocketAddr,
    interval: Duration,
    model: SharedModel,
    cancel: CancellationToken,
    stats: Arc<PushStats>,
) {
    let interval = interval.max(Duration::from_millis(1));
    cancel
        .run_until_cancelled(push_forever(target, interval, model, stats))
        .await;
}

async fn push_forever(
    target: SocketAddr,
    period: Duration,
    model: SharedModel,
    stats: Arc<PushStats>,
) {
    let mut backoff = PUSH_BACKOFF_MIN;
    let mut first = true;
    loop {
        if !first {
            bump(&stats.reconnects);
        }
        first = false;
        match timeout(
            PUSH_REQUEST_TIMEOUT,
            tokio_modbus::client::tcp::connect_slave(target, Slave(1)),
        )
        .await
        {
            Ok(Ok(mut ctx)) => {
                tracing::debug!(%target, "KSEM sim pusher connected");
                push_connected(&mut ctx, period, &model, &stats, &mut backoff).await;
            }
            Ok(Err(err)) => {
                bump(&stats.errors);
                tracing::debug!(%target, %err, "KSEM sim pusher: connect failed");
            }
            Err(_) => {
                bump(&stats.errors);
                tracing::debug!(%target, "KSEM sim pusher: connect timed out");
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(PUSH_BACKOFF_MAX);
    }
}

/// Write both groups every period until a transport error or timeout.
async fn push_connected(
    ctx: &mut ClientContext,
    period: Duration,
    model: &SharedModel,
    stats: &PushStats,
    backoff: &mut Duration,
) {
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let groups: Vec<(u16, Vec<u16>)> = {
            let m = lock_model(model);
            PUSH_GROUPS
                .iter()
                .filter_map(|&(a, n)| m.read(a, n).map(|w| (a, w)))
                .collect()
        };
        for (address, words) in groups {
            match timeout(
                PUSH_REQUEST_TIMEOUT,
                ctx.write_multiple_registers(address, &words),
            )
            .await
            {
                Ok(Ok(Ok(()))) => {
                    bump(&stats.writes_ok);
                    *backoff = PUSH_BACKOFF_MIN;
                }
                Ok(Ok(Err(code))) => {
                    bump(&stats.exceptions);
                    tracing::debug!(address, ?code, "KSEM sim pusher: exception");
                }
                Ok(Err(err)) => {
                    bump(&stats.errors);
                    tracing::debug!(address, %err, "KSEM sim pusher: write failed");
                    return;
                }
                Err(_) => {
                    // A late answer would confuse the transaction ids: start over.
                    bump(&stats.errors);
                    tracing::debug!(address, "KSEM sim pusher: write timed out");
                    return;
                }
            }
        }
    }
}
