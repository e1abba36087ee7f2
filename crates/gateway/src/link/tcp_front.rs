//! The TCP front of every Modbus TCP server (the push server, the server for LAN clients):
//! the listening socket, admission at accept (allow list, connection limit, refused
//! connections closed at once, refusals logged rate-limited and naming the config section),
//! the connection slot freed when a connection ends, the idle timeout on both directions,
//! the live settings (hot reload) and the tokio-modbus server loop that restarts after an
//! accept error. A server brings its [`Service`] per connection, its config section
//! ([`FrontSettings`]) and its counters ([`FrontStats`]). Touches only those counters.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
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
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::config::{PushConfig, TcpServerConfig};
use crate::ops::logging::limited;

/// What a front reads from its config section, live.
pub trait FrontSettings: Send + Sync + 'static {
    /// Where to listen (read once, at bind).
    fn listen(&self) -> SocketAddr;
    /// `ip` may connect.
    fn allows(&self, ip: IpAddr) -> bool;
    /// Connections served at once; more are refused.
    fn max_connections(&self) -> usize;
    /// A connection without a byte in either direction for this long is closed.
    fn idle_timeout(&self) -> Duration;
}

/// The config sections with the front's four settings under the same names.
macro_rules! front_settings {
    ($($section:ty),*) => {$(
        impl FrontSettings for $section {
            fn listen(&self) -> SocketAddr {
                self.listen
            }
            fn allows(&self, ip: IpAddr) -> bool {
                <$section>::allows(self, ip)
            }
            fn max_connections(&self) -> usize {
                self.max_connections
            }
            fn idle_timeout(&self) -> Duration {
                self.idle_timeout
            }
        }
    )*};
}

front_settings!(PushConfig, TcpServerConfig);

/// The counters a front keeps, inside a server's own stats (its `front` field).
#[derive(Debug, Default)]
pub struct FrontCounters {
    /// Connections admitted at accept.
    pub accepted: AtomicU64,
    /// Refused at accept: address not in the section's `allow_from`.
    pub refused_not_allowed: AtomicU64,
    /// Refused at accept: the section's `max_connections` reached.
    pub refused_limit: AtomicU64,
    /// Connections closed for idleness.
    pub idle_timeouts: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// A server's stats that hold the front's counters.
pub trait FrontStats: Send + Sync + 'static {
    /// The front's counters among the server's own.
    fn front(&self) -> &FrontCounters;
}

/// How a front names itself in logs and errors.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// The noun of the log lines: `push` ("push client connected").
    pub kind: &'static str,
    /// The config section the settings come from: `push`, `tcp_server`.
    pub section: &'static str,
}

/// A bound front, ready to run a server.
pub struct TcpFront<C, K> {
    /// The listening socket.
    listener: TcpListener,
    /// Log names.
    names: Names,
    /// The settings in force; see [`TcpFront::settings`].
    settings: Arc<ArcSwap<C>>,
    /// Where admission and idleness are counted.
    stats: Arc<K>,
}

impl<C: FrontSettings, K: FrontStats> TcpFront<C, K> {
    /// Bind the listening socket (port 0 picks a free port; see [`TcpFront::local_addr`]).
    pub async fn bind(names: Names, cfg: C, stats: Arc<K>) -> anyhow::Result<Self> {
        let listen = cfg.listen();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("{}.listen {listen}: {e}", names.section))?;
        Ok(TcpFront {
            listener,
            names,
            settings: Arc::new(ArcSwap::from_pointee(cfg)),
            stats,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The live settings (hot reload): settings stored here apply their allow list,
    /// connection limit and idle timeout from the next accept on, and close a connection
    /// whose peer is no longer allowed at its next request. `listen` is not re-read.
    pub fn settings(&self) -> Arc<ArcSwap<C>> {
        Arc::clone(&self.settings)
    }

    /// Serve until `cancel` fires: every admitted connection gets `service(peer)`, which the
    /// front keeps its slot with. Accept errors (e.g. out of file descriptors) are logged
    /// rate-limited and the server restarts after a pause. tokio-modbus's `Server::serve`
    /// returns on the first accept error and cancels its connections with it, so clients
    /// reconnect after such an error (its codec is private: the per-connection loop cannot
    /// be run on its own).
    pub async fn run<S, M>(self, service: M, cancel: CancellationToken)
    where
        M: Fn(SocketAddr) -> S,
        S: Service<Request = SlaveRequest<'static>> + Send + Sync + 'static,
    {
        let TcpFront {
            listener,
            names,
            settings,
            stats,
        } = self;
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, peer: SocketAddr| {
            let admitted = admit(names, &**settings.load(), &stats, peer).map(|slot| {
                let idle = settings.load().idle_timeout();
                let svc = Guarded {
                    inner: service(peer),
                    _slot: slot,
                };
                (svc, idle)
            });
            let settings = Arc::clone(&settings);
            let stats = Arc::clone(&stats);
            async move {
                let Some((svc, idle)) = admitted else {
                    drop(stream); // closed at accept, not queued
                    return Ok(None);
                };
                let _ = stream.set_nodelay(true);
                let stream = FrontStream {
                    inner: stream,
                    idle,
                    deadline: Box::pin(tokio::time::sleep(idle)),
                    stats,
                    settings,
                    peer,
                    names,
                };
                Ok(Some((svc, stream)))
            }
        };
        let kind = names.kind;
        let on_error = move |e: io::Error| tracing::debug!("{kind} connection ended: {e}");
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = server.serve(&on_connected, on_error) => {
                    if let Err(e) = r {
                        if let Some(more) = limited(format!("{kind} server: accept failed: {e}; retrying every 1s")) {
                            tracing::warn!("{kind} server: accept failed: {e}; retrying in 1s{more}");
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

/// A tokio-modbus service that answers every request at once with its function (nothing
/// to await): the push server's and the simulators' handlers.
#[derive(Clone)]
pub struct Answering<F>(pub F);

impl<F> Service for Answering<F>
where
    F: Fn(SlaveRequest<'static>) -> Result<Response, ExceptionCode>,
{
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready((self.0)(req))
    }
}

/// A bound server whose connections share one state `Sh`, ready to run. A server module
/// names it (`pub type TcpServer = FrontServer<…>`), brings its `bind` and implements
/// tokio-modbus's `Service` for [`Connection`]`<Sh>`.
pub struct FrontServer<C, K, Sh> {
    /// The listening socket, admission and the live settings.
    front: TcpFront<C, K>,
    /// What every connection's service shares.
    shared: Arc<Sh>,
}

impl<C: FrontSettings, K: FrontStats, Sh: Send + Sync + 'static> FrontServer<C, K, Sh> {
    /// A server of `front` whose connections share `shared`.
    pub fn new(front: TcpFront<C, K>, shared: Sh) -> Self {
        FrontServer {
            front,
            shared: Arc::new(shared),
        }
    }

    /// Where it listens (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.front.local_addr()
    }

    /// The live settings (allow list, limit, idle timeout; see [`TcpFront::settings`]).
    /// What the server reads at bind (`listen`, a server's `unit_id`) is not re-read.
    pub fn settings(&self) -> Arc<ArcSwap<C>> {
        self.front.settings()
    }

    /// Serve until `cancel` fires, one [`Connection`] per client; accept errors restart
    /// the server after a pause (see [`TcpFront::run`]).
    pub async fn run(self, cancel: CancellationToken)
    where
        Connection<Sh>: Service<Request = SlaveRequest<'static>> + Send + Sync + 'static,
    {
        let FrontServer { front, shared } = self;
        let service = |peer| Connection {
            shared: Arc::clone(&shared),
            peer,
        };
        front.run(service, cancel).await;
    }
}

/// One connection's request handler, for a server whose connections share one state: the
/// server implements tokio-modbus's `Service` for `Connection<its state>`.
pub struct Connection<Sh> {
    /// What every connection of the server shares.
    pub shared: Arc<Sh>,
    /// The client, for the logs.
    pub peer: SocketAddr,
}

/// Decide at accept; `Some` holds the connection's slot until dropped.
fn admit<C: FrontSettings, K: FrontStats>(
    names: Names,
    cfg: &C,
    stats: &Arc<K>,
    peer: SocketAddr,
) -> Option<Slot<K>> {
    let Names { kind, section } = names;
    let c = stats.front();
    let ip = peer.ip();
    if !cfg.allows(ip) {
        c.refused_not_allowed.fetch_add(1, Relaxed);
        if let Some(more) = limited(format!(
            "{kind} connection refused from {ip}: not in {section}.allow_from"
        )) {
            tracing::warn!(%peer, "{kind} connection refused: not in {section}.allow_from{more}");
        }
        return None;
    }
    let limit = cfg.max_connections();
    if c.open.fetch_add(1, Relaxed) >= limit {
        c.open.fetch_sub(1, Relaxed);
        c.refused_limit.fetch_add(1, Relaxed);
        if let Some(more) = limited(format!(
            "{kind} connection refused from {ip}: {section}.max_connections ({limit}) reached"
        )) {
            tracing::warn!(%peer, limit, "{kind} connection refused: {section}.max_connections reached{more}");
        }
        return None;
    }
    c.accepted.fetch_add(1, Relaxed);
    tracing::info!(%peer, "{kind} client connected");
    Some(Slot {
        stats: Arc::clone(stats),
        peer,
        kind,
    })
}

/// A connection's slot: freed when the connection's service is dropped.
struct Slot<K: FrontStats> {
    /// Where the slot is counted.
    stats: Arc<K>,
    /// Who holds it, for the log line.
    peer: SocketAddr,
    /// The log noun.
    kind: &'static str,
}

impl<K: FrontStats> Drop for Slot<K> {
    fn drop(&mut self) {
        self.stats.front().open.fetch_sub(1, Relaxed);
        tracing::info!(peer = %self.peer, "{} client gone", self.kind);
    }
}

/// A server's per-connection service with the connection's slot.
struct Guarded<S, K: FrontStats> {
    /// The server's service.
    inner: S,
    /// Held as long as the connection is served.
    _slot: Slot<K>,
}

/// Serves as the inner service (tokio-modbus implements `Service` for every `Deref`).
impl<S, K: FrontStats> Deref for Guarded<S, K> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.inner
    }
}

/// A connection's stream: fails with `TimedOut` once it made no progress for `idle` (no
/// byte received and no byte sent; checked on both sides, so a peer that stops reading our
/// replies and so blocks the connection in a write loses its slot too), and with
/// `PermissionDenied` at a request from a peer a reload removed from the allow list.
struct FrontStream<C, K> {
    /// The accepted socket.
    inner: TcpStream,
    /// The idle timeout in force at accept.
    idle: Duration,
    /// When the connection times out unless bytes move.
    deadline: Pin<Box<Sleep>>,
    /// Where idle timeouts are counted.
    stats: Arc<K>,
    /// The live settings, re-checked at every request.
    settings: Arc<ArcSwap<C>>,
    /// The peer, for the allow list and the logs.
    peer: SocketAddr,
    /// Log names.
    names: Names,
}

impl<C: FrontSettings, K: FrontStats> FrontStream<C, K> {
    fn progress(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: has the deadline passed?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.stats.front().idle_timeouts.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }

    fn idle_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} connection idle", self.names.kind),
        )
    }
}

impl<C: FrontSettings, K: FrontStats> AsyncRead for FrontStream<C, K> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    if !self.settings.load().allows(self.peer.ip()) {
                        let Names { kind, section } = self.names;
                        tracing::warn!(peer = %self.peer, "{kind} connection closed: no longer in {section}.allow_from");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("peer no longer in {section}.allow_from"),
                        )));
                    }
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(self.idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C: FrontSettings, K: FrontStats> AsyncWrite for FrontStream<C, K> {
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
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(self.idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(self.idle_error())),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_modbus::client::{Context as Client, Reader as _};
    use tokio_modbus::{ExceptionCode, Request, Response};

    /// A server's stats with nothing but the front's counters.
    type Counts = FrontCounters;

    impl FrontStats for FrontCounters {
        fn front(&self) -> &FrontCounters {
            self
        }
    }

    /// Answers every holding-register read with the register addresses.
    struct Addresses;

    impl Service for Addresses {
        type Request = SlaveRequest<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Response, ExceptionCode>>;
        fn call(&self, req: Self::Request) -> Self::Future {
            std::future::ready(match req.request {
                Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(
                    (a..a.saturating_add(n)).collect(),
                )),
                _ => Err(ExceptionCode::IllegalFunction),
            })
        }
    }

    fn settings(allow: &str, max_connections: usize, idle: Duration) -> PushConfig {
        PushConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_from: vec![allow.parse().expect("net")],
            max_connections,
            idle_timeout: idle,
        }
    }

    /// A running front; stops when dropped.
    struct Running {
        addr: SocketAddr,
        stats: Arc<Counts>,
        settings: Arc<ArcSwap<PushConfig>>,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn start(names: Names, cfg: PushConfig) -> Running {
        let stats = Arc::new(Counts::default());
        let front = TcpFront::bind(names, cfg, Arc::clone(&stats))
            .await
            .expect("bind");
        let addr = front.local_addr().expect("addr");
        let settings = front.settings();
        let cancel = CancellationToken::new();
        tokio::spawn(front.run(|_| Addresses, cancel.clone()));
        Running {
            addr,
            stats,
            settings,
            _stop: cancel.drop_guard(),
        }
    }

    async fn connect(addr: SocketAddr) -> Client {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio_modbus::client::tcp::connect(addr),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// One read of registers 7..9: the words, or `None` when the connection failed.
    async fn read(client: &mut Client) -> Option<Vec<u16>> {
        match tokio::time::timeout(Duration::from_secs(2), client.read_holding_registers(7, 2))
            .await
        {
            Ok(Ok(Ok(words))) => Some(words),
            _ => None,
        }
    }

    /// Wait (at most 5 s) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const TEN_S: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn admits_up_to_the_limit_and_frees_the_slot_when_a_client_goes() {
        let names = Names {
            kind: "front-limit-test",
            section: "front_limit_test",
        };
        let f = start(names, settings("127.0.0.1/32", 1, TEN_S)).await;
        let mut first = connect(f.addr).await;
        assert_eq!(read(&mut first).await, Some(vec![7, 8]));
        let mut second = connect(f.addr).await;
        assert_eq!(read(&mut second).await, None, "over the limit: closed");
        assert_eq!(f.stats.refused_limit.load(Relaxed), 1);
        // The refusal went through the rate limiter, keyed by peer and section.
        let key = "front-limit-test connection refused from 127.0.0.1: front_limit_test.max_connections (1) reached";
        assert!(
            limited(key).is_none(),
            "the refusal was logged rate-limited"
        );
        drop(first);
        eventually("the slot to be freed", || f.stats.open.load(Relaxed) == 0).await;
        let mut third = connect(f.addr).await;
        assert_eq!(read(&mut third).await, Some(vec![7, 8]));
        assert_eq!(f.stats.accepted.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn refuses_peers_outside_the_allow_list_with_a_rate_limited_log() {
        let names = Names {
            kind: "front-allow-test",
            section: "front_allow_test",
        };
        let f = start(names, settings("192.0.2.7/32", 4, TEN_S)).await;
        for _ in 0..3 {
            let mut c = connect(f.addr).await;
            assert_eq!(read(&mut c).await, None);
        }
        assert_eq!(f.stats.refused_not_allowed.load(Relaxed), 3);
        assert_eq!(f.stats.accepted.load(Relaxed), 0);
        assert_eq!(f.stats.open.load(Relaxed), 0);
        let key = "front-allow-test connection refused from 127.0.0.1: not in front_allow_test.allow_from";
        assert!(
            limited(key).is_none(),
            "the refusal was logged rate-limited"
        );
    }

    #[tokio::test]
    async fn a_reload_closes_a_removed_peer_at_its_next_request_and_admits_by_the_new_list() {
        let names = Names {
            kind: "front-reload-test",
            section: "front_reload_test",
        };
        let f = start(names, settings("127.0.0.1/32", 4, TEN_S)).await;
        let mut c = connect(f.addr).await;
        assert_eq!(read(&mut c).await, Some(vec![7, 8]));
        f.settings
            .store(Arc::new(settings("192.0.2.7/32", 4, TEN_S)));
        assert_eq!(read(&mut c).await, None, "closed at its next request");
        eventually("the slot to be freed", || f.stats.open.load(Relaxed) == 0).await;
        let mut again = connect(f.addr).await;
        assert_eq!(read(&mut again).await, None, "refused by the new list");
        assert_eq!(f.stats.refused_not_allowed.load(Relaxed), 1);
        // And a reload that allows it again admits it from the next accept on.
        f.settings
            .store(Arc::new(settings("127.0.0.0/8", 4, TEN_S)));
        let mut back = connect(f.addr).await;
        assert_eq!(read(&mut back).await, Some(vec![7, 8]));
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let names = Names {
            kind: "front-idle-test",
            section: "front_idle_test",
        };
        let f = start(
            names,
            settings("127.0.0.1/32", 4, Duration::from_millis(200)),
        )
        .await;
        let mut c = connect(f.addr).await;
        assert_eq!(
            read(&mut c).await,
            Some(vec![7, 8]),
            "traffic keeps it open"
        );
        eventually("the idle connection to be closed", || {
            f.stats.open.load(Relaxed) == 0
        })
        .await;
        assert_eq!(f.stats.idle_timeouts.load(Relaxed), 1);
        assert_eq!(read(&mut c).await, None);
    }

    #[tokio::test]
    async fn a_busy_port_names_the_section() {
        let names = Names {
            kind: "front-bind-test",
            section: "front_bind_test",
        };
        let f = start(names, settings("127.0.0.1/32", 1, TEN_S)).await;
        let mut cfg = settings("127.0.0.1/32", 1, TEN_S);
        cfg.listen = f.addr;
        let err = TcpFront::bind(names, cfg, Arc::new(Counts::default()))
            .await
            .err()
            .expect("the port is taken");
        assert!(
            err.to_string()
                .starts_with("front_bind_test.listen 127.0.0.1:"),
            "{err}"
        );
    }
}
