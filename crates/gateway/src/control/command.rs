//! The one write path. Every writer — a Modbus TCP client ([`crate::servers::modbus_tcp`]),
//! an MQTT command ([`crate::servers::mqtt`]) — calls [`write`]: the device's write policy,
//! the old value from the image for the log, the device's queue to the RTU poller, the
//! deadline, the device's outcome, and one log line for each. What the writer tells its
//! client (an exception code, a result message) and what it counts stay the writer's.
//! Commands flow the other way from data: servers → control → the device's queue, which
//! the RTU poller (in sources) drains between polls. Touches the image (reads only) and the
//! queue; never the bus.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::control::profile::Register;
use crate::control::writes::{Refusal, WriteJob, WriteOutcome, WritePolicy, WriteQueue};
use crate::image::Image;

/// Who asked for a write: named in its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A Modbus TCP client at this address.
    Tcp(SocketAddr),
    /// An MQTT command.
    Mqtt,
}

/// The log target of each writer's lines: the server a user knows (and filters with
/// `log.level: "info,airbridge::servers::modbus_tcp=debug"`) rather than this module. Each
/// server's tests check that its constant is its module path.
pub(crate) const TCP_LOG_TARGET: &str = "airbridge::servers::modbus_tcp";
pub(crate) const MQTT_LOG_TARGET: &str = "airbridge::servers::mqtt::commands";

/// A log line about a write, with its origin's field (`peer` or `source = "mqtt"`) first.
macro_rules! log_write {
    ($level:ident, $origin:expr, $($rest:tt)+) => {
        match $origin {
            Origin::Tcp(peer) => tracing::$level!(target: TCP_LOG_TARGET, %peer, $($rest)+),
            Origin::Mqtt => tracing::$level!(target: MQTT_LOG_TARGET, source = "mqtt", $($rest)+),
        }
    };
}

/// Where a device's writes go.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The device's write policy (profile and `writable:` list).
    pub policy: &'a WritePolicy,
    /// The bus's write queue, drained by the RTU poller.
    pub queue: &'a WriteQueue,
    /// The device (index in `Config::devices`; 0 with one device).
    pub index: usize,
    /// How long the writer waits for queue and bus together.
    pub deadline: Duration,
}

/// What became of a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Refused by the policy before the bus; never queued.
    Refused(Refusal),
    /// Not queued: the queue is full or the bus is gone.
    NotQueued,
    /// Sent (or dropped by the poller, as the outcome says): the device's outcome.
    Sent(WriteOutcome),
}

/// Check `values` at `address` with function code `fc` against `device`'s policy, queue it
/// for the bus and wait (at most the deadline) for the device's outcome; log each step.
pub async fn write(
    image: &Image,
    device: Destination<'_>,
    origin: Origin,
    fc: u8,
    address: u16,
    values: Vec<u16>,
) -> Written {
    let registers = match device.policy.check(fc, address, &values) {
        Ok(r) => r,
        Err(refusal) => {
            log_write!(warn, origin, fc, address, values = ?values, "write refused: {refusal}");
            return Written::Refused(refusal);
        }
    };
    let change = changes(image, device.index, &registers, address, &values);
    let (tx, rx) = oneshot::channel();
    let job = WriteJob::new(fc, address, values, tx).for_device(device.index);
    if device.queue.try_send(job).is_err() {
        log_write!(
            warn,
            origin,
            "write not queued (queue full or bus gone): {change}"
        );
        return Written::NotQueued;
    }
    let outcome = match tokio::time::timeout(device.deadline, rx).await {
        Ok(Ok(o)) => o,
        // Dropping `rx` tells the poller not to send a write nobody waits for.
        Ok(Err(_)) | Err(_) => WriteOutcome::NoReply,
    };
    if outcome == WriteOutcome::Done {
        log_write!(info, origin, fc, "write done: {change}");
    } else {
        log_write!(warn, origin, fc, ?outcome, "write failed: {change}");
    }
    Written::Sent(outcome)
}

/// What a write changes, for the log: `name address old -> new` per register, the old
/// value from the image if the register is read there (else `unknown`).
fn changes(
    image: &Image,
    device: usize,
    registers: &[&Register],
    address: u16,
    values: &[u16],
) -> String {
    let snap = image.load();
    let change: Vec<String> = registers
        .iter()
        .map(|r| {
            let off = usize::from(r.address.saturating_sub(address));
            let new_words = values.get(off..off + usize::from(r.words)).unwrap_or(&[]);
            let old = r
                .access
                .readable()
                .then(|| {
                    let table = image.device_table(device, r.table.read_code());
                    image.read_words(&snap, table, r.address, r.words)
                })
                .flatten()
                .map_or_else(|| "unknown".to_string(), |w| r.decode(&w).to_string());
            format!(
                "{} {} {} -> {}",
                r.name,
                r.address,
                old,
                r.decode(new_words)
            )
        })
        .collect();
    change.join(", ")
}
