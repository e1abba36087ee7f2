//! The meter's Modbus TCP server for the house (`tcp_server:` in a KSEM config, i.e. one
//! without `rtu_poll:`): Home Assistant, evcc, Victron, Node-RED read the KSEM image here
//! instead of opening a second master on the KSEM.
//!
//! Read-only: FC03 and FC04 over the whole image (both tables are the same registers, as
//! on the KSEM), one snapshot per reply, each touched region checked on its own (never
//! filled or stale under `silence`/`exception` → 0B, a `serve` region keeps serving).
//! Every other function, writes included, gets 01: the push port stays the only way in.
//! Unit ids: any by default (the KSEM answers any), or the `tcp_server.unit_id` list
//! (others get 0A). Admission, the allow list, the connection limit and the idle timeout
//! are the shared [`TcpFront`]'s. Touches the image (reads only) and its counters.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::config::{TcpServerConfig, UnitIds};
use crate::image::Image;
use crate::link::tcp_front::{Connection, FrontServer, Names, TcpFront};
use crate::ops::logging::limited;
use crate::servers::lan::{self, TcpStats};

/// How the front names itself: `meter tcp client connected`, `tcp_server.allow_from`.
const NAMES: Names = Names {
    kind: "meter tcp",
    section: "tcp_server",
};

/// A bound meter server, ready to run.
pub type MeterTcpServer = FrontServer<TcpServerConfig, TcpStats, Shared>;

/// What every connection's service shares.
pub struct Shared {
    /// The unit ids answered (read at bind).
    units: UnitIds,
    /// Where reads are answered from.
    image: Arc<Image>,
    /// Request counters (the same as the KSTAR server's, so status and metrics show them).
    stats: Arc<TcpStats>,
}

impl MeterTcpServer {
    /// Bind the listening socket (port 0 picks a free port).
    pub async fn bind(
        cfg: TcpServerConfig,
        image: Arc<Image>,
        stats: Arc<TcpStats>,
    ) -> anyhow::Result<Self> {
        let units = cfg.unit_id.clone();
        let front = TcpFront::bind(NAMES, cfg, Arc::clone(&stats)).await?;
        Ok(FrontServer::new(
            front,
            Shared {
                units,
                image,
                stats,
            },
        ))
    }
}

impl tokio_modbus::server::Service for Connection<Shared> {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(answer(&self.shared, self.peer, req.slave, &req.request))
    }
}

/// The answer to one request.
fn answer(
    shared: &Shared,
    peer: SocketAddr,
    unit: u8,
    request: &Request<'_>,
) -> Result<Response, ExceptionCode> {
    let stats = &shared.stats;
    if !shared.units.accepts(unit) {
        stats.bad_requests.fetch_add(1, Relaxed);
        tracing::debug!(%peer, unit, "meter tcp: request for a unit id not in tcp_server.unit_id");
        return Err(ExceptionCode::GatewayPathUnavailable);
    }
    match *request {
        Request::ReadHoldingRegisters(a, n) => {
            read(shared, 3, a, n).map(Response::ReadHoldingRegisters)
        }
        Request::ReadInputRegisters(a, n) => {
            read(shared, 4, a, n).map(Response::ReadInputRegisters)
        }
        Request::WriteSingleRegister(..)
        | Request::WriteMultipleRegisters(..)
        | Request::WriteSingleCoil(..)
        | Request::WriteMultipleCoils(..)
        | Request::MaskWriteRegister(..)
        | Request::ReadWriteMultipleRegisters(..) => {
            stats.writes_refused.fetch_add(1, Relaxed);
            let ip = peer.ip();
            if let Some(more) = limited(format!("meter tcp: write refused from {ip}")) {
                tracing::warn!(%peer, fc = request.function_code().value(), "meter tcp: write refused (01): the LAN port is read-only{more}");
            }
            Err(ExceptionCode::IllegalFunction)
        }
        ref other => {
            stats.bad_requests.fetch_add(1, Relaxed);
            tracing::debug!(%peer, fc = other.function_code().value(), "meter tcp: unsupported function");
            Err(ExceptionCode::IllegalFunction)
        }
    }
}

/// Answer a read from one snapshot of the image; every touched region is checked alone.
fn read(shared: &Shared, fc: u8, address: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
    lan::read_fc(&shared.image, &shared.stats, fc, address, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;
    use tokio_modbus::client::{Context as Client, Reader as _, Writer as _};
    use tokio_modbus::Slave;
    use tokio_util::sync::CancellationToken;

    /// A KSEM config with a meter server: push totals (stale after 1 s, silence), energy
    /// (stale after 1 s, but `serve`) and a static block nobody fills but its values.
    fn config(tcp: &str) -> crate::config::Config {
        let yaml = format!(
            "push: {{listen: '127.0.0.1:0'}}
poll: {{host: '127.0.0.1:1'}}
tcp_server: {{listen: '127.0.0.1:0', allow_from: [127.0.0.1]{tcp}}}
regions:
  - {{name: totals, start: 0, count: 40, source: push, max_age: 1s, on_stale: silence}}
  - {{name: energy, start: 512, count: 8, source: push, max_age: 1s, on_stale: serve}}
  - {{name: sunspec, start: 40000, count: 4, source: poll, every: 1s}}
  - {{name: spec, start: 8249, count: 1, source: static, values: {{8249: 7}}}}
"
        );
        crate::config::parse(&yaml, "test").expect("config").config
    }

    /// A running meter server; stops when dropped.
    struct Running {
        addr: SocketAddr,
        image: Arc<Image>,
        stats: Arc<TcpStats>,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn start(tcp: &str) -> Running {
        let cfg = config(tcp);
        let image = Arc::new(Image::new(&cfg.regions));
        let stats = Arc::new(TcpStats::default());
        let server = MeterTcpServer::bind(
            cfg.tcp_server.expect("tcp_server"),
            Arc::clone(&image),
            Arc::clone(&stats),
        )
        .await
        .expect("bind");
        let addr = server.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        tokio::spawn(server.run(cancel.clone()));
        Running {
            addr,
            image,
            stats,
            _stop: cancel.drop_guard(),
        }
    }

    async fn connect(addr: SocketAddr, unit: u8) -> Client {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// One FC03 (or FC04) read: the words, the exception, or `None` on a transport error.
    async fn read(
        c: &mut Client,
        fc04: bool,
        a: u16,
        n: u16,
    ) -> Option<Result<Vec<u16>, ExceptionCode>> {
        let r = if fc04 {
            tokio::time::timeout(Duration::from_secs(2), c.read_input_registers(a, n)).await
        } else {
            tokio::time::timeout(Duration::from_secs(2), c.read_holding_registers(a, n)).await
        };
        match r {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }

    fn push_totals(image: &Image) {
        let words: Vec<u16> = (1..=40).collect();
        image.write_push(0, &words, Instant::now()).expect("push");
    }

    #[tokio::test]
    async fn any_unit_id_is_answered_by_default_fc03_and_fc04_alike() {
        let m = start("").await;
        push_totals(&m.image);
        for unit in [1, 71, 0, 200, 255] {
            let mut c = connect(m.addr, unit).await;
            let want: Vec<u16> = (1..=40).collect();
            assert_eq!(
                read(&mut c, false, 0, 40).await,
                Some(Ok(want.clone())),
                "unit {unit}"
            );
            assert_eq!(
                read(&mut c, true, 0, 40).await,
                Some(Ok(want)),
                "unit {unit}"
            );
        }
        assert_eq!(m.stats.reads.load(Relaxed), 10);
    }

    #[tokio::test]
    async fn a_unit_id_list_restricts_the_answers_to_it() {
        let m = start(", unit_id: [71, 1]").await;
        push_totals(&m.image);
        for unit in [1, 71] {
            let mut c = connect(m.addr, unit).await;
            assert_eq!(
                read(&mut c, false, 3, 2).await,
                Some(Ok(vec![4, 5])),
                "unit {unit}"
            );
        }
        for unit in [2, 255] {
            let mut c = connect(m.addr, unit).await;
            assert_eq!(
                read(&mut c, false, 3, 2).await,
                Some(Err(ExceptionCode::GatewayPathUnavailable)),
                "unit {unit}"
            );
        }
        assert_eq!(m.stats.bad_requests.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn every_write_gets_01_and_changes_nothing() {
        let m = start("").await;
        push_totals(&m.image);
        let mut c = connect(m.addr, 1).await;
        let single = c.write_single_register(3, 999).await.expect("transport");
        assert_eq!(single, Err(ExceptionCode::IllegalFunction));
        let multi = c
            .write_multiple_registers(0, &[9; 10])
            .await
            .expect("transport");
        assert_eq!(multi, Err(ExceptionCode::IllegalFunction));
        let coil = c.write_single_coil(0, true).await.expect("transport");
        assert_eq!(coil, Err(ExceptionCode::IllegalFunction));
        assert_eq!(read(&mut c, false, 0, 4).await, Some(Ok(vec![1, 2, 3, 4])));
        assert_eq!(m.stats.writes_refused.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn stale_and_never_filled_regions_answer_0b_a_serve_region_keeps_serving() {
        let m = start("").await;
        let mut c = connect(m.addr, 1).await;
        let gone = Some(Err(ExceptionCode::GatewayTargetDevice));
        // Nothing pushed or polled yet: 0B, not zeros. The static block is served.
        assert_eq!(read(&mut c, false, 0, 40).await, gone);
        assert_eq!(read(&mut c, false, 40000, 4).await, gone);
        assert_eq!(read(&mut c, true, 8249, 1).await, Some(Ok(vec![7])));
        push_totals(&m.image);
        m.image
            .write_push(512, &[0, 0, 0, 42, 0, 0, 0, 7], Instant::now())
            .expect("push energy");
        assert_eq!(read(&mut c, false, 0, 2).await, Some(Ok(vec![1, 2])));
        // The KSEM is gone: after max_age (1 s) the totals answer 0B, energy (serve) its last.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(read(&mut c, false, 0, 2).await, gone);
        assert_eq!(
            read(&mut c, true, 512, 4).await,
            Some(Ok(vec![0, 0, 0, 42]))
        );
        // Outside the regions: 02; a bad count: 03.
        assert_eq!(
            read(&mut c, false, 300, 1).await,
            Some(Err(ExceptionCode::IllegalDataAddress))
        );
        assert_eq!(
            read(&mut c, false, 0, 126).await,
            Some(Err(ExceptionCode::IllegalDataValue))
        );
        assert_eq!(m.stats.reads_stale.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn sixteen_clients_at_once_by_default_the_seventeenth_is_refused() {
        let m = start("").await;
        push_totals(&m.image);
        let mut clients = Vec::new();
        for _ in 0..16 {
            let mut c = connect(m.addr, 71).await;
            assert_eq!(read(&mut c, false, 0, 1).await, Some(Ok(vec![1])));
            clients.push(c);
        }
        let mut extra = connect(m.addr, 71).await;
        assert_eq!(
            read(&mut extra, false, 0, 1).await,
            None,
            "over the limit: closed"
        );
        assert_eq!(m.stats.front.refused_limit.load(Relaxed), 1);
        // All sixteen still served, concurrently.
        let mut set = tokio::task::JoinSet::new();
        for mut c in clients {
            set.spawn(async move { read(&mut c, true, 0, 40).await });
        }
        let mut served = 0;
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("reader"), Some(Ok((1..=40).collect())));
            served += 1;
        }
        assert_eq!(served, 16);
    }
}
