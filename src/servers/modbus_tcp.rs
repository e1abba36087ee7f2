//! The Modbus TCP server for LAN clients (Home Assistant, evcc, energy controllers).
//!
//! Owns the listening socket and its connections: allow list and connection limit at accept,
//! idle connections closed. Reads (FC03 holding, FC04 input) are answered from the [`Image`]
//! only, per region function, so they never touch the serial bus; a region that is stale or
//! not yet read gets exception 0B (gateway target device failed to respond). Writes
//! (FC06/FC16) pass the [`WritePolicy`] (else exception 02/03, nothing sent), are queued for
//! the RTU poller and answered with the device's real outcome; each is logged with client,
//! register, old and new value. It touches the image, the write queue and its own counters.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::config::{Function, TcpServerConfig, MAX_READ};
use crate::control::writes::{
    WriteJob, WriteOutcome, WritePolicy, WriteQueue, FC_WRITE_MULTIPLE, FC_WRITE_SINGLE,
};
use crate::image::{Image, ReadRefusal};

/// Counters of the TCP server.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub reads: AtomicU64,
    /// Reads refused because a region was stale or not read yet (exception 0B).
    pub reads_stale: AtomicU64,
    /// Reads outside the regions (02) or with a bad count (03).
    pub reads_refused: AtomicU64,
    /// Writes the device confirmed.
    pub writes_ok: AtomicU64,
    /// Writes refused before the bus (02/03): not allowed, out of range.
    pub writes_refused: AtomicU64,
    /// Writes the device refused or did not answer.
    pub writes_failed: AtomicU64,
    /// Requests with an unsupported function code or a foreign unit id.
    pub bad_requests: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub refused_limit: AtomicU64,
    pub open: AtomicUsize,
}

/// A bound TCP server, ready to run.
pub struct TcpServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    cfg: TcpServerConfig,
    image: Arc<Image>,
    stats: Arc<TcpStats>,
    /// `None`: no writes configured (every write gets 02).
    writes: Option<(Arc<WritePolicy>, WriteQueue)>,
    /// How long a client waits for its write: queue + bus.
    write_deadline: Duration,
}

impl TcpServer {
    /// Bind the listening socket (port 0 picks a free port).
    pub async fn bind(
        cfg: TcpServerConfig,
        image: Arc<Image>,
        stats: Arc<TcpStats>,
        writes: Option<(Arc<WritePolicy>, WriteQueue)>,
        write_deadline: Duration,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("tcp_server.listen {}: {e}", cfg.listen))?;
        Ok(TcpServer {
            listener,
            shared: Arc::new(Shared {
                cfg,
                image,
                stats,
                writes,
                write_deadline,
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `cancel` fires; accept errors restart the server after a pause.
    pub async fn run(self, cancel: CancellationToken) {
        let TcpServer { listener, shared } = self;
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, peer: SocketAddr| {
            let guard = admit(&shared, peer);
            let shared = Arc::clone(&shared);
            async move {
                let Some(guard) = guard else {
                    drop(stream);
                    return Ok(None);
                };
                let _ = stream.set_nodelay(true);
                let idle = shared.cfg.idle_timeout;
                let svc = Arc::new(Service {
                    shared,
                    peer,
                    _guard: guard,
                });
                Ok(Some((
                    svc,
                    crate::servers::modbus_tcp::Idle::new(stream, idle),
                )))
            }
        };
        let on_error = |e: io::Error| tracing::debug!("tcp client connection ended: {e}");
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = server.serve(&on_connected, on_error) => {
                    if let Err(e) = r {
                        tracing::warn!("tcp server: accept failed: {e}; retrying in 1s");
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

fn admit(shared: &Arc<Shared>, peer: SocketAddr) -> Option<Guard> {
    let stats = &shared.stats;
    if !shared.cfg.allows(peer.ip()) {
        stats.refused_not_allowed.fetch_add(1, Relaxed);
        tracing::warn!(%peer, "tcp connection refused: not in tcp_server.allow_from");
        return None;
    }
    if stats.open.fetch_add(1, Relaxed) >= shared.cfg.max_connections {
        stats.open.fetch_sub(1, Relaxed);
        stats.refused_limit.fetch_add(1, Relaxed);
        tracing::warn!(%peer, limit = shared.cfg.max_connections, "tcp connection refused: tcp_server.max_connections reached");
        return None;
    }
    stats.connections_accepted.fetch_add(1, Relaxed);
    tracing::info!(%peer, "tcp client connected");
    Some(Guard {
        stats: Arc::clone(stats),
        peer,
    })
}

struct Guard {
    stats: Arc<TcpStats>,
    peer: SocketAddr,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        tracing::info!(peer = %self.peer, "tcp client gone");
    }
}

struct Service {
    shared: Arc<Shared>,
    peer: SocketAddr,
    _guard: Guard,
}

type Answer = Result<Response, ExceptionCode>;

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let peer = self.peer;
        // The configured unit id, or 255, the Modbus TCP "no unit" id many clients send.
        if req.slave != shared.cfg.unit_id && req.slave != 0xFF {
            shared.stats.bad_requests.fetch_add(1, Relaxed);
            tracing::debug!(%peer, unit = req.slave, "tcp: request for an unknown unit id");
            return Box::pin(std::future::ready(Err(
                ExceptionCode::GatewayPathUnavailable,
            )));
        }
        match req.request {
            Request::ReadHoldingRegisters(a, n) => Box::pin(std::future::ready(
                read(&shared, Function::Holding, a, n).map(Response::ReadHoldingRegisters),
            )),
            Request::ReadInputRegisters(a, n) => Box::pin(std::future::ready(
                read(&shared, Function::Input, a, n).map(Response::ReadInputRegisters),
            )),
            Request::WriteSingleRegister(a, v) => Box::pin(async move {
                write(&shared, peer, FC_WRITE_SINGLE, a, vec![v])
                    .await
                    .map(|()| Response::WriteSingleRegister(a, v))
            }),
            Request::WriteMultipleRegisters(a, values) => Box::pin(async move {
                let n = values.len() as u16;
                write(&shared, peer, FC_WRITE_MULTIPLE, a, values.into_owned())
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

/// Answer a read from the image: the table `function`, each touched region fresh.
fn read(
    shared: &Shared,
    function: Function,
    address: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    let stats = &shared.stats;
    if count == 0 || count > MAX_READ {
        stats.reads_refused.fetch_add(1, Relaxed);
        return Err(ExceptionCode::IllegalDataValue);
    }
    let image = &shared.image;
    let table = image.table_for(function.read_code());
    let snap = image.load();
    match image.check_read_in(&snap, table, address, count, Instant::now()) {
        Ok(touched) => {
            let mut out = Vec::with_capacity(usize::from(count));
            image.for_each_word(&snap, touched, address, count, |w| out.push(w));
            stats.reads.fetch_add(1, Relaxed);
            Ok(out)
        }
        Err(ReadRefusal::OutsideRegions) => {
            stats.reads_refused.fetch_add(1, Relaxed);
            Err(ExceptionCode::IllegalDataAddress)
        }
        Err(ReadRefusal::WarmingUp | ReadRefusal::Stale(_)) => {
            stats.reads_stale.fetch_add(1, Relaxed);
            Err(ExceptionCode::GatewayTargetDevice)
        }
    }
}

/// Check, queue and await a write; log it with its outcome.
async fn write(
    shared: &Shared,
    peer: SocketAddr,
    fc: u8,
    address: u16,
    values: Vec<u16>,
) -> Result<(), ExceptionCode> {
    let stats = &shared.stats;
    let Some((policy, queue)) = &shared.writes else {
        stats.writes_refused.fetch_add(1, Relaxed);
        tracing::warn!(%peer, fc, address, "write refused: no register is writable (no `writable:` list)");
        return Err(ExceptionCode::IllegalDataAddress);
    };
    let registers = match policy.check(fc, address, &values) {
        Ok(r) => r,
        Err(refusal) => {
            stats.writes_refused.fetch_add(1, Relaxed);
            tracing::warn!(%peer, fc, address, values = ?values, "write refused: {refusal}");
            return Err(ExceptionCode::new(refusal.exception()));
        }
    };
    // What the client changes, for the log: name, old value (from the image, if it is read
    // there) and new value, per register.
    let snap = shared.image.load();
    let mut changes = Vec::with_capacity(registers.len());
    for r in &registers {
        let off = usize::from(r.address.saturating_sub(address));
        let new_words = values.get(off..off + usize::from(r.words)).unwrap_or(&[]);
        let old = r
            .access
            .readable()
            .then(|| {
                let table = shared.image.table_for(r.function.read_code());
                shared.image.read_words_in(&snap, table, r.address, r.words)
            })
            .flatten()
            .map_or_else(|| "unknown".to_string(), |w| r.decode(&w).to_string());
        changes.push(format!(
            "{} {} {} -> {}",
            r.name,
            r.address,
            old,
            r.decode(new_words)
        ));
    }
    drop(snap);
    let change = changes.join(", ");
    let (tx, rx) = oneshot::channel();
    let job = WriteJob {
        fc,
        address,
        values,
        reply: tx,
    };
    if queue.try_send(job).is_err() {
        stats.writes_failed.fetch_add(1, Relaxed);
        tracing::warn!(%peer, "write not queued (queue full or bus gone): {change}");
        return Err(ExceptionCode::ServerDeviceBusy);
    }
    let outcome = match tokio::time::timeout(shared.write_deadline, rx).await {
        Ok(Ok(o)) => o,
        // Dropping `rx` tells the poller not to send a write nobody waits for.
        Ok(Err(_)) | Err(_) => WriteOutcome::NoReply,
    };
    match outcome.exception() {
        None => {
            stats.writes_ok.fetch_add(1, Relaxed);
            tracing::info!(%peer, fc, "write done: {change}");
            Ok(())
        }
        Some(code) => {
            stats.writes_failed.fetch_add(1, Relaxed);
            tracing::warn!(%peer, fc, ?outcome, "write failed: {change}");
            Err(ExceptionCode::new(code))
        }
    }
}

/// A TCP stream that fails with `TimedOut` after `idle` without traffic in either direction.
struct Idle {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(inner: TcpStream, idle: Duration) -> Self {
        Idle {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
    fn progress(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "tcp client idle")
}

impl tokio::io::AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progress();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
