//! The Modbus TCP server for LAN clients of the KSTAR devices on the bus: the unit id
//! selects the device (others get 0A); reads answered from its tables in the image (one
//! snapshot per reply, 0B while a region is stale), writes checked against that device's
//! write policy and queued for the RTU poller, which runs them between polls and hands back
//! the device's outcome. Admission, allow list, limits and idle timeout are the one
//! [`crate::link::tcp_front`]. Touches the image, the write queue and its own counters.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::config::{Table, TcpServerConfig, UnitIds};
use crate::control::command::{self, Destination, Origin, Written};
use crate::control::writes::{WritePolicy, WriteQueue, FC_WRITE_MULTIPLE, FC_WRITE_SINGLE};
use crate::image::Image;
use crate::link::tcp_front::{Connection, FrontServer, Names, TcpFront};
use crate::servers::lan::{self, TcpStats};

/// How the front names itself: `tcp client connected`, `tcp_server.allow_from`.
const NAMES: Names = Names {
    kind: "tcp",
    section: "tcp_server",
};

/// A bound TCP server, ready to run.
pub type TcpServer = FrontServer<TcpServerConfig, TcpStats, Shared>;

/// One device of the bus as LAN clients see it.
pub struct LanDevice {
    /// The unit ids that select it (`tcp_unit_id`, or `tcp_server.unit_id`).
    pub units: UnitIds,
    /// Its write policy and the bus's write queue; `None`: every write to it gets 02.
    pub writes: Option<(Arc<WritePolicy>, WriteQueue)>,
}

/// What every connection's service shares.
pub struct Shared {
    /// The devices, in config order (a device's index selects its tables and write jobs).
    devices: Vec<LanDevice>,
    /// Where reads are answered from.
    image: Arc<Image>,
    /// Request counters.
    stats: Arc<TcpStats>,
    /// How long a client waits for its write: queue + bus.
    write_deadline: Duration,
}

impl Shared {
    /// The device unit id `unit` selects: the one whose ids include it, or with a single
    /// device also 255, the Modbus TCP "no unit" id many clients send.
    fn device_for(&self, unit: u8) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.units.accepts(unit))
            .or_else(|| (unit == 0xFF && self.devices.len() == 1).then_some(0))
    }
}

impl TcpServer {
    /// Bind the listening socket (port 0 picks a free port) for `devices` (the bus's, in
    /// config order; their unit ids replace `cfg.unit_id`).
    pub async fn bind(
        cfg: TcpServerConfig,
        image: Arc<Image>,
        stats: Arc<TcpStats>,
        devices: Vec<LanDevice>,
        write_deadline: Duration,
    ) -> anyhow::Result<Self> {
        let front = TcpFront::bind(NAMES, cfg, Arc::clone(&stats)).await?;
        Ok(FrontServer::new(
            front,
            Shared {
                devices,
                image,
                stats,
                write_deadline,
            },
        ))
    }
}

type Answer = Result<Response, ExceptionCode>;

impl tokio_modbus::server::Service for Connection<Shared> {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let peer = self.peer;
        let Some(dev) = shared.device_for(req.slave) else {
            shared.stats.bad_requests.fetch_add(1, Relaxed);
            tracing::debug!(%peer, unit = req.slave, "tcp: request for an unknown unit id");
            return Box::pin(std::future::ready(Err(
                ExceptionCode::GatewayPathUnavailable,
            )));
        };
        match req.request {
            Request::ReadHoldingRegisters(a, n) => Box::pin(std::future::ready(
                read(&shared, dev, Table::Holding, a, n).map(Response::ReadHoldingRegisters),
            )),
            Request::ReadInputRegisters(a, n) => Box::pin(std::future::ready(
                read(&shared, dev, Table::Input, a, n).map(Response::ReadInputRegisters),
            )),
            Request::WriteSingleRegister(a, v) => Box::pin(async move {
                write(&shared, peer, dev, FC_WRITE_SINGLE, a, vec![v])
                    .await
                    .map(|()| Response::WriteSingleRegister(a, v))
            }),
            Request::WriteMultipleRegisters(a, values) => Box::pin(async move {
                let n = values.len() as u16;
                write(
                    &shared,
                    peer,
                    dev,
                    FC_WRITE_MULTIPLE,
                    a,
                    values.into_owned(),
                )
                .await
                .map(|()| Response::WriteMultipleRegisters(a, n))
            }),
            other => {
                shared.stats.bad_requests.fetch_add(1, Relaxed);
                tracing::debug!(%peer, fc = other.function_code().value(), "tcp: unsupported function");
                Box::pin(std::future::ready(Err(ExceptionCode::IllegalFunction)))
            }
        }
    }
}

/// Answer a read from the image: device `dev`'s table `function`, each touched region fresh.
fn read(
    shared: &Shared,
    dev: usize,
    function: Table,
    address: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    let table = shared.image.device_table(dev, function.read_code());
    lan::read(&shared.image, &shared.stats, table, address, count)
}

/// The most registers one FC16 may write (Modbus application protocol, 6.12).
const MAX_WRITE: usize = 123;

/// A LAN client's write to device `dev`: the Modbus checks, then the one write path
/// ([`command::write`]); its result as the client's exception and this server's counters.
async fn write(
    shared: &Shared,
    peer: SocketAddr,
    dev: usize,
    fc: u8,
    address: u16,
    values: Vec<u16>,
) -> Result<(), ExceptionCode> {
    let stats = &shared.stats;
    // A quantity Modbus does not allow is malformed whatever the policy says: 03, before
    // any other check, and never on the bus.
    if fc == FC_WRITE_MULTIPLE && !(1..=MAX_WRITE).contains(&values.len()) {
        stats.writes_refused.fetch_add(1, Relaxed);
        tracing::warn!(%peer, fc, address, quantity = values.len(), "write refused: FC16 quantity must be 1..={MAX_WRITE}");
        return Err(ExceptionCode::IllegalDataValue);
    }
    let Some((policy, queue)) = shared.devices.get(dev).and_then(|d| d.writes.as_ref()) else {
        stats.writes_refused.fetch_add(1, Relaxed);
        tracing::warn!(%peer, fc, address, "write refused: no register is writable (no `writable:` list)");
        return Err(ExceptionCode::IllegalDataAddress);
    };
    let destination = Destination {
        policy,
        queue,
        index: dev,
        deadline: shared.write_deadline,
    };
    let origin = Origin::Tcp(peer);
    match command::write(&shared.image, destination, origin, fc, address, values).await {
        Written::Refused(refusal) => {
            stats.writes_refused.fetch_add(1, Relaxed);
            Err(ExceptionCode::new(refusal.exception()))
        }
        Written::NotQueued => {
            stats.writes_failed.fetch_add(1, Relaxed);
            Err(ExceptionCode::ServerDeviceBusy)
        }
        Written::Sent(outcome) => match outcome.exception() {
            None => {
                stats.writes_ok.fetch_add(1, Relaxed);
                Ok(())
            }
            Some(code) => {
                stats.writes_failed.fetch_add(1, Relaxed);
                Err(ExceptionCode::new(code))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    /// Writes are logged by the one write path under this module's name, as before it
    /// existed: a rename here must rename the target there.
    #[test]
    fn the_write_path_logs_under_this_module() {
        assert_eq!(
            crate::control::command::TCP_LOG_TARGET,
            module_path!().trim_end_matches("::tests")
        );
    }
}
