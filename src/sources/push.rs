//! The push server: the Modbus TCP server the KSEM writes its time-critical registers to.
//!
//! Owns the listening socket and its connections: the allow list and the connection limit
//! are applied at accept (refused connections are closed, never queued), idle connections
//! time out. Requests are handled by tokio-modbus's TCP server; writes go into the
//! [`Image`] (only inside regions that take pushes, atomically), reads are answered from it
//! for diagnostics. It touches nothing but the image and its own counters.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::config::{PushConfig, MAX_READ};
use crate::image::Image;
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
    pub connections_accepted: AtomicU64,
    /// Refused at accept: address not in `allow_from`.
    pub refused_not_allowed: AtomicU64,
    /// Refused at accept: `max_connections` reached.
    pub refused_limit: AtomicU64,
    /// Connections closed for idleness.
    pub idle_timeouts: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// A bound push server, ready to run.
pub struct PushServer {
    listener: TcpListener,
    /// The settings in force; see [`PushServer::settings`].
    settings: Arc<ArcSwap<PushConfig>>,
    image: Arc<Image>,
    stats: Arc<PushStats>,
    journal: Option<Arc<Journal>>,
}

impl PushServer {
    /// Bind the listening socket (port 0 picks a free port; see [`PushServer::local_addr`]).
    pub async fn bind(
        cfg: PushConfig,
        image: Arc<Image>,
        stats: Arc<PushStats>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("push.listen {}: {e}", cfg.listen))?;
        Ok(PushServer {
            listener,
            settings: Arc::new(ArcSwap::from_pointee(cfg)),
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
        self.listener.local_addr()
    }

    /// The live settings (hot reload): a new `PushConfig` stored here applies its allow
    /// list, connection limit and idle timeout from the next accept on, and closes a
    /// connection whose peer is no longer allowed at its next request. `listen` is not
    /// re-read (a new address needs a restart).
    pub fn settings(&self) -> Arc<ArcSwap<PushConfig>> {
        Arc::clone(&self.settings)
    }

    /// Serve until `cancel` fires. Accept errors (e.g. out of file descriptors) are logged and
    /// the server restarts after a pause. tokio-modbus's `Server::serve` returns on the first
    /// accept error and cancels its connections with it, so the KSEM reconnects after such an
    /// error (its codec is private, so the per-connection loop cannot be run on its own).
    pub async fn run(self, cancel: CancellationToken) {
        let PushServer {
            listener,
            settings,
            image,
            stats,
            journal,
        } = self;
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, peer: SocketAddr| {
            let cfg = settings.load();
            let accepted = admit(&cfg, &stats, peer);
            let image = Arc::clone(&image);
            let stats = Arc::clone(&stats);
            let journal = journal.clone();
            let idle = cfg.idle_timeout;
            let settings = Arc::clone(&settings);
            async move {
                let Some(guard) = accepted else {
                    drop(stream); // closed at accept, not queued
                    return Ok(None);
                };
                let _ = stream.set_nodelay(true);
                let svc = PushService {
                    image,
                    stats: Arc::clone(&stats),
                    peer,
                    journal,
                    _guard: guard,
                };
                let stream = IdleTimeout::new(stream, idle, stats).allowed_while(settings, peer);
                Ok(Some((svc, stream)))
            }
        };
        let on_error = |e: io::Error| tracing::debug!("push connection ended: {e}");
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = server.serve(&on_connected, on_error) => {
                    if let Err(e) = r {
                        if let Some(more) = crate::ops::logging::limited(format!("push server: accept failed: {e}; retrying every 1s")) {
                            tracing::warn!("push server: accept failed: {e}; retrying in 1s{more}");
                        }
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Decide at accept; `Some` holds the connection's slot until dropped.
fn admit(cfg: &PushConfig, stats: &Arc<PushStats>, peer: SocketAddr) -> Option<ConnectionGuard> {
    if !cfg.allows(peer.ip()) {
        stats.refused_not_allowed.fetch_add(1, Relaxed);
        let ip = peer.ip();
        if let Some(more) = crate::ops::logging::limited(format!(
            "push connection refused from {ip}: not in push.allow_from"
        )) {
            tracing::warn!(%peer, "push connection refused: not in push.allow_from{more}");
        }
        return None;
    }
    let open = stats.open.fetch_add(1, Relaxed);
    if open >= cfg.max_connections {
        stats.open.fetch_sub(1, Relaxed);
        stats.refused_limit.fetch_add(1, Relaxed);
        if let Some(more) = crate::ops::logging::limited(format!(
            "push connection refused from {}: push.max_connections ({}) reached",
            peer.ip(),
            cfg.max_connections
        )) {
            tracing::warn!(%peer, limit = cfg.max_connections, "push connection refused: push.max_connections reached{more}");
        }
        return None;
    }
    stats.connections_accepted.fetch_add(1, Relaxed);
    tracing::info!(%peer, "push client connected");
    Some(ConnectionGuard {
        stats: Arc::clone(stats),
        peer,
    })
}

/// Frees a connection slot when the connection's service is dropped.
struct ConnectionGuard {
    stats: Arc<PushStats>,
    peer: SocketAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        tracing::info!(peer = %self.peer, "push client gone");
    }
}

struct PushService {
    image: Arc<Image>,
    stats: Arc<PushStats>,
    peer: SocketAddr,
    journal: Option<Arc<Journal>>,
    _guard: ConnectionGuard,
}

impl tokio_modbus::server::Service for PushService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let at = std::time::Instant::now();
        let unit = req.slave;
        let (function, address, count) = journal_fields(&req.request);
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
            j.record(&journal::Record {
                at,
                link: journal::Link::Push,
                dir: journal::Dir::In,
                unit,
                function,
                address,
                count,
                action,
                latency: at.elapsed(),
            });
        }
        std::future::ready(result)
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
            .read_words(&snap, addr, count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        self.stats.reads.fetch_add(1, Relaxed);
        Ok(words)
    }
}

/// A TCP stream that fails with `TimedOut` once it made no progress for `idle`: no byte
/// received and no byte sent. Checked on both sides, so a peer that stops reading our
/// replies (and so blocks the connection in a write) loses its slot too.
struct IdleTimeout {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    stats: Arc<PushStats>,
    /// Live settings and the peer: a request from a peer a reload removed from the allow
    /// list closes the connection.
    allow: Option<(Arc<ArcSwap<PushConfig>>, SocketAddr)>,
}

impl IdleTimeout {
    fn new(inner: TcpStream, idle: Duration, stats: Arc<PushStats>) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            stats,
            allow: None,
        }
    }

    fn allowed_while(mut self, settings: Arc<ArcSwap<PushConfig>>, peer: SocketAddr) -> Self {
        self.allow = Some((settings, peer));
        self
    }

    /// The peer is still in the (possibly reloaded) allow list.
    fn still_allowed(&self) -> bool {
        match &self.allow {
            Some((settings, peer)) => settings.load().allows(peer.ip()),
            None => true,
        }
    }

    fn progress(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: has the deadline passed?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.stats.idle_timeouts.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "push connection idle")
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    if !self.still_allowed() {
                        if let Some((_, peer)) = &self.allow {
                            tracing::warn!(%peer, "push connection closed: no longer in push.allow_from");
                        }
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "peer no longer in push.allow_from",
                        )));
                    }
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progress();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
