//! The status HTTP endpoint: `/` (a live page), `/status` (JSON), `/metrics` (Prometheus
//! text format) and `/journal` (the last frames, JSON or `?format=text`).
//!
//! Owns its listening socket, its HTTP/1 connections (hyper; at most
//! [`MAX_CONNECTIONS`], header read timeout, GET/HEAD only) and a 1 Hz sampler keeping the
//! last ten minutes of grid power for the page's sparkline. It only reads: the image, the
//! counters of every role and the journal. Nothing it does can reach the reply path; a
//! slow or hostile client costs one connection slot. `state` decides the one gateway state
//! every view shows (also the systemd `Status:` line).

pub mod metrics;
pub mod report;
pub mod state;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::handles::Handles;
use crate::config::Region;
use crate::control::profile::Profile;
use crate::ops::heartbeat::{Liveness, STALL_LIMIT};

/// Concurrent connections served; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Grid power samples kept (one per second).
pub const HISTORY: usize = 600;

const PAGE: &str = include_str!("page.html");

/// Everything the endpoint reads.
pub struct StatusContext {
    /// The counters and the image the pages report.
    pub handles: Handles,
    /// The configured regions (for their sources), in config order.
    pub regions: Vec<Region>,
    /// The register profile decoding the key values: `Ok(None)` none configured,
    /// `Err` it failed to load (the message is shown).
    pub profile: Result<Option<Profile>, String>,
    /// `(unix ms, grid power W)`, oldest first; `None` when not available or stale.
    pub history: Mutex<VecDeque<(u64, Option<f64>)>>,
    /// When the gateway started (uptime on the page).
    pub started: SystemTime,
    /// Judges the RTU poller's heartbeat between two looks (`rtu_poll.state: stalled`).
    pub rtu_poll_liveness: Mutex<Liveness>,
}

impl StatusContext {
    pub fn new(
        handles: Handles,
        regions: Vec<Region>,
        profile: Result<Option<Profile>, String>,
    ) -> Self {
        StatusContext {
            handles,
            regions,
            profile,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            started: SystemTime::now(),
            rtu_poll_liveness: Mutex::new(Liveness::new(STALL_LIMIT, tokio::time::Instant::now())),
        }
    }

    /// The configured source of region `name` as written in the config (`?` if unknown).
    pub fn source_of(&self, name: &str) -> String {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .map_or_else(|| "?".to_string(), |r| r.source.to_string())
    }

    /// Take one grid power sample into the history ring.
    pub fn sample(&self) {
        let v = report::grid_power_now(self);
        if let Ok(mut h) = self.history.lock() {
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back((unix_ms(SystemTime::now()), v));
        }
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A bound status endpoint, ready to run.
pub struct StatusServer {
    /// The bound HTTP listener.
    listener: TcpListener,
    /// What every request reads.
    ctx: Arc<StatusContext>,
}

impl StatusServer {
    pub async fn bind(addr: SocketAddr, ctx: Arc<StatusContext>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("status.listen {addr}: {e}"))?;
        Ok(StatusServer { listener, ctx })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `cancel` fires. Accept errors are logged and retried after a pause.
    pub async fn run(self, cancel: CancellationToken) {
        let StatusServer { listener, ctx } = self;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Reap finished connections so the set does not grow.
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => { ctx.sample(); continue; }
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // never closed
                },
            };
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => { ctx.sample(); continue; }
                a = listener.accept() => a,
            };
            let (stream, _peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("status server: accept failed: {e}; retrying in 1s");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let ctx = Arc::clone(&ctx);
            let cancel = cancel.clone();
            conns.spawn(async move {
                let _permit = permit;
                serve_connection(stream, ctx, cancel).await;
            });
        }
        conns.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    ctx: Arc<StatusContext>,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(route(&req, &ctx)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("status connection ended: {e}");
            }
        }
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Answer one request.
pub fn route(req: &Request<Incoming>, ctx: &StatusContext) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        );
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            report::status_json(ctx).to_string(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(ctx),
        ),
        "/journal" => {
            let n = query_param(query, "n")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            let journal = &ctx.handles.journal;
            if query_param(query, "format") == Some("text") {
                reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    report::journal_text(journal, n),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "application/json",
                    report::journal_json(journal, n).to_string(),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try /, /status, /metrics, /journal\n".into(),
        ),
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}
