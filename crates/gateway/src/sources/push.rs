//! The push server: the KSEM writes its measurements here (FC16/FC06 into the push
//! regions of the image), and may read them back (FC03/FC04) for diagnosis. Admission,
//! the allow list, limits and the idle timeout are the shared [`TcpFront`]'s; every
//! request and its answer can be journalled. Touches the image (push writes), its own
//! counters and the journal.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::config::{PushConfig, MAX_READ};
use crate::image::Image;
use crate::link::tcp_front::{Answering, FrontCounters, FrontStats, Names, TcpFront};
use crate::ops::journal::{self, Journal};

/// Counters of the push side.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Writes applied to the image.
    pub writes_ok: AtomicU64,
    /// Writes refused with exception 02 (outside the push regions).
    pub writes_refused: AtomicU64,
    /// Diagnostic reads answered.
    pub reads: AtomicU64,
    /// Requests with an unsupported function code (exception 01) or bad count (03).
    pub bad_requests: AtomicU64,
    /// Admission and idleness, counted by the TCP front (`push.allow_from`, limits).
    pub front: FrontCounters,
}

impl FrontStats for PushStats {
    fn front(&self) -> &FrontCounters {
        &self.front
    }
}

/// How the push front names itself: `push client connected`, `push.allow_from`.
const NAMES: Names = Names {
    kind: "push",
    section: "push",
};

/// A bound push server, ready to run.
pub struct PushServer {
    /// The listening socket, admission and the live settings.
    front: TcpFront<PushConfig, PushStats>,
    /// Where pushes go and reads come from.
    image: Arc<Image>,
    /// The push side's counters (the front's among them).
    stats: Arc<PushStats>,
    /// Records every request and its answer, when set.
    journal: Option<Arc<Journal>>,
}

impl PushServer {
    /// Bind the listening socket (port 0 picks a free port; see [`PushServer::local_addr`]).
    pub async fn bind(
        cfg: PushConfig,
        image: Arc<Image>,
        stats: Arc<PushStats>,
    ) -> anyhow::Result<Self> {
        Ok(PushServer {
            front: TcpFront::bind(NAMES, cfg, Arc::clone(&stats)).await?,
            image,
            stats,
            journal: None,
        })
    }

    /// Record every request and its answer in `journal`.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.front.local_addr()
    }

    /// The live settings (hot reload): a new `PushConfig` stored here applies its allow
    /// list, connection limit and idle timeout from the next accept on, and closes a
    /// connection whose peer is no longer allowed at its next request. `listen` is not
    /// re-read (a new address needs a restart).
    pub fn settings(&self) -> Arc<ArcSwap<PushConfig>> {
        self.front.settings()
    }

    /// Serve until `cancel` fires (accept errors restart the server; see [`TcpFront::run`]).
    pub async fn run(self, cancel: CancellationToken) {
        let PushServer {
            front,
            image,
            stats,
            journal,
        } = self;
        let service = |peer| {
            let svc = PushService {
                image: Arc::clone(&image),
                stats: Arc::clone(&stats),
                peer,
                journal: journal.clone(),
            };
            Answering(move |req| svc.answer(req))
        };
        front.run(service, cancel).await;
    }
}

/// One connection's request handler.
struct PushService {
    /// Where writes go and reads come from.
    image: Arc<Image>,
    /// Request counters.
    stats: Arc<PushStats>,
    /// The client, for the logs.
    peer: SocketAddr,
    /// Records every request and its answer, when set.
    journal: Option<Arc<Journal>>,
}

impl PushService {
    /// Answer one request (and journal it).
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Response, ExceptionCode> {
        let at = std::time::Instant::now();
        let unit = req.slave;
        let head = journal_fields(&req.request);
        let result = self.handle(req.request);
        if let Some(j) = &self.journal {
            let action = match &result {
                Ok(Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w)) => {
                    journal::Action::Answered {
                        bytes: (w.len() * 2) as u16,
                    }
                }
                Ok(_) => journal::Action::Written,
                Err(code) => journal::Action::Exception {
                    code: u8::from(*code),
                },
            };
            j.record(&journal::Record::received(
                journal::Link::Push,
                at,
                unit,
                head,
                action,
                at.elapsed(),
            ));
        }
        result
    }
}

/// Function code, address and register count of a request, for the journal.
fn journal_fields(req: &Request<'_>) -> (u8, u16, u16) {
    let fc = req.function_code().value();
    match req {
        Request::WriteMultipleRegisters(a, v) => (fc, *a, v.len() as u16),
        Request::WriteSingleRegister(a, _) => (fc, *a, 1),
        Request::ReadHoldingRegisters(a, n) | Request::ReadInputRegisters(a, n) => (fc, *a, *n),
        _ => (fc, 0, 0),
    }
}

impl PushService {
    fn handle(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let now = Instant::now();
        match req {
            Request::WriteMultipleRegisters(addr, values) => {
                self.write(addr, &values, now)?;
                Ok(Response::WriteMultipleRegisters(addr, values.len() as u16))
            }
            Request::WriteSingleRegister(addr, value) => {
                self.write(addr, &[value], now)?;
                Ok(Response::WriteSingleRegister(addr, value))
            }
            Request::ReadHoldingRegisters(addr, count) => {
                self.read(addr, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(addr, count) => {
                self.read(addr, count).map(Response::ReadInputRegisters)
            }
            other => {
                self.stats.bad_requests.fetch_add(1, Relaxed);
                tracing::debug!(peer = %self.peer, fc = other.function_code().value(), "push: unsupported function");
                Err(ExceptionCode::IllegalFunction)
            }
        }
    }

    fn write(&self, addr: u16, values: &[u16], now: Instant) -> Result<(), ExceptionCode> {
        match self.image.write_push(addr, values, now) {
            Ok(()) => {
                self.stats.writes_ok.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.writes_refused.fetch_add(1, Relaxed);
                tracing::debug!(peer = %self.peer, addr, len = values.len(), "push write refused: {e}");
                Err(ExceptionCode::IllegalDataAddress)
            }
        }
    }

    fn read(&self, addr: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > MAX_READ {
            self.stats.bad_requests.fetch_add(1, Relaxed);
            return Err(ExceptionCode::IllegalDataValue);
        }
        let snap = self.image.load();
        let words = self
            .image
            .read_words(&snap, self.image.table_for(3), addr, count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        self.stats.reads.fetch_add(1, Relaxed);
        Ok(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "rtu: {device: /dev/test}
push: {listen: '127.0.0.1:0'}
regions:
  - {name: totals, start: 0, count: 4, source: push, max_age: 10s}
";

    fn service() -> (PushService, Arc<Image>, Arc<PushStats>, Arc<Journal>) {
        let cfg = crate::config::parse(YAML, "test")
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let image = Arc::new(Image::new(&cfg.regions));
        let stats = Arc::new(PushStats::default());
        let journal = Arc::new(Journal::default());
        let svc = PushService {
            image: Arc::clone(&image),
            stats: Arc::clone(&stats),
            peer: SocketAddr::from(([127, 0, 0, 1], 1502)),
            journal: Some(Arc::clone(&journal)),
        };
        (svc, image, stats, journal)
    }

    async fn call(svc: &PushService, request: Request<'static>) -> Result<Response, ExceptionCode> {
        svc.answer(SlaveRequest { slave: 1, request })
    }

    #[tokio::test]
    async fn a_push_lands_in_the_image_and_reads_back() {
        let (svc, image, stats, journal) = service();
        let words = vec![10, 11, 12, 13];
        let r = call(
            &svc,
            Request::WriteMultipleRegisters(0, words.clone().into()),
        )
        .await;
        assert_eq!(r, Ok(Response::WriteMultipleRegisters(0, 4)));
        let snap = image.load();
        assert_eq!(image.read_words(&snap, None, 0, 4), Some(words.clone()));
        let r = call(&svc, Request::WriteSingleRegister(2, 99)).await;
        assert_eq!(r, Ok(Response::WriteSingleRegister(2, 99)));
        let r = call(&svc, Request::ReadHoldingRegisters(1, 3)).await;
        assert_eq!(r, Ok(Response::ReadHoldingRegisters(vec![11, 99, 13])));
        assert_eq!(stats.writes_ok.load(Relaxed), 2);
        assert_eq!(stats.reads.load(Relaxed), 1);
        assert_eq!(journal.recorded(), 3, "every request journaled");
    }

    #[tokio::test]
    async fn writes_outside_the_push_regions_and_bad_requests_get_exceptions() {
        let (svc, image, stats, _journal) = service();
        let r = call(&svc, Request::WriteMultipleRegisters(3, vec![1, 2].into())).await;
        assert_eq!(
            r,
            Err(ExceptionCode::IllegalDataAddress),
            "crosses the region end"
        );
        assert_eq!(stats.writes_refused.load(Relaxed), 1);
        let snap = image.load();
        assert_eq!(image.age(&snap, 0, Instant::now()), None, "nothing written");
        let r = call(&svc, Request::ReadHoldingRegisters(0, 0)).await;
        assert_eq!(r, Err(ExceptionCode::IllegalDataValue));
        let r = call(&svc, Request::ReadHoldingRegisters(0, MAX_READ + 1)).await;
        assert_eq!(r, Err(ExceptionCode::IllegalDataValue));
        let r = call(&svc, Request::ReadCoils(0, 1)).await;
        assert_eq!(r, Err(ExceptionCode::IllegalFunction));
        assert_eq!(stats.bad_requests.load(Relaxed), 3);
    }

    #[test]
    fn journal_fields_name_function_address_and_count() {
        assert_eq!(
            journal_fields(&Request::WriteSingleRegister(7, 1)),
            (6, 7, 1)
        );
        assert_eq!(
            journal_fields(&Request::WriteMultipleRegisters(40, vec![0; 5].into())),
            (16, 40, 5)
        );
        assert_eq!(
            journal_fields(&Request::ReadInputRegisters(3, 9)),
            (4, 3, 9)
        );
        assert_eq!(journal_fields(&Request::ReadCoils(3, 9)), (1, 0, 0));
    }
}
