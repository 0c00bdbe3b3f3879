//! Per-endpoint upstream connection pools: HTTP/1.1 keep-alive reuse, one multiplexed HTTP/2
//! connection, connect timeouts, optional TLS origination, and circuit-breaker accounting for
//! connections and pending requests.
//!
//! A pool hands out a connection for exactly one request; an HTTP/1 connection goes back to the
//! idle list only when its response body has been read to the end, so a slow body never blocks
//! another request. Failures are classified the way Envoy's response flags need them.

use crate::flags::ResponseFlags;
use crate::io::{MaybeTls, Upstream};
use crate::stats::ClusterStats;
use crate::upstream::circuit::{CircuitBreakers, Guard};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent upstream.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Settings shared by all endpoint pools of one cluster.
#[derive(Debug)]
pub struct PoolSettings {
    pub cluster: Arc<str>,
    pub connect_timeout: Duration,
    pub tls: Option<crate::tls::UpstreamTls>,
    pub idle_timeout: Option<Duration>,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    pub circuit: Arc<CircuitBreakers>,
    pub stats: Arc<ClusterStats>,
    /// Woken when a connection becomes idle or closes anywhere in the cluster.
    pub freed: Notify,
    /// Requests waiting on `freed`; nobody pays for a wake-up when it is zero.
    pub waiters: AtomicUsize,
}

impl PoolSettings {
    fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// Why an upstream exchange failed before response headers arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    ConnectFailure(std::io::Error),
    #[error("connection timeout")]
    ConnectTimeout,
    #[error("TLS error: {0}")]
    Tls(std::io::Error),
    #[error("overflow: {0}")]
    Overflow(&'static str),
    #[error("connection termination")]
    ConnectionTermination,
    #[error("remote refused stream reset")]
    RefusedStream,
    #[error("remote reset")]
    RemoteReset,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The downstream request body failed (malformed chunking, client went away) while it was
    /// being sent: the client's fault, not the upstream's.
    #[error("downstream request body error: {0}")]
    DownstreamBody(String),
}

impl UpstreamError {
    pub fn flag(&self) -> ResponseFlags {
        match self {
            UpstreamError::ConnectFailure(_)
            | UpstreamError::ConnectTimeout
            | UpstreamError::Tls(_) => ResponseFlags::UF,
            UpstreamError::Overflow(_) => ResponseFlags::UO,
            UpstreamError::ConnectionTermination => ResponseFlags::UC,
            UpstreamError::RefusedStream | UpstreamError::RemoteReset => ResponseFlags::UR,
            UpstreamError::Protocol(_) => ResponseFlags::UPE,
            UpstreamError::DownstreamBody(_) => ResponseFlags::DPE,
        }
    }
    /// Envoy's reset reason wording, used in local reply bodies and response code details.
    pub fn reset_reason(&self) -> String {
        match self {
            UpstreamError::ConnectFailure(e) => {
                format!("connection failure, transport failure reason: {e}")
            }
            UpstreamError::ConnectTimeout => "connection timeout".into(),
            UpstreamError::Tls(e) => {
                format!("connection failure, transport failure reason: TLS error: {e}")
            }
            UpstreamError::Overflow(what) => format!("overflow ({what})"),
            UpstreamError::ConnectionTermination => "connection termination".into(),
            UpstreamError::RefusedStream => "remote refused stream reset".into(),
            UpstreamError::RemoteReset => "remote reset".into(),
            UpstreamError::Protocol(e) => format!("protocol error: {e}"),
            UpstreamError::DownstreamBody(e) => format!("downstream request body error: {e}"),
        }
    }
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectFailure(_)
                | UpstreamError::ConnectTimeout
                | UpstreamError::Tls(_)
        )
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
    uses: u32,
}

/// The multiplexed HTTP/2 connection to an endpoint, with what decides when to replace it.
struct H2Conn {
    sender: http2::SendRequest<Body>,
    last_used: Instant,
    streams: u32,
}

/// The connections to one endpoint.
pub struct HostPool {
    pub addr: SocketAddr,
    settings: Arc<PoolSettings>,
    /// The name TLS connections to this endpoint present (SNI or the endpoint's IP).
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
    idle: Mutex<Vec<Idle>>,
    h2: tokio::sync::Mutex<Option<H2Conn>>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Holds a connection's circuit-breaker slot and `upstream_cx_active` for as long as it lives;
/// dropping it frees both.
pub struct ConnGuard {
    _slot: Guard,
    settings: Arc<PoolSettings>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.settings.stats.upstream_cx_active.dec();
        self.settings.wake();
    }
}

impl HostPool {
    pub fn new(addr: SocketAddr, settings: Arc<PoolSettings>) -> Arc<Self> {
        let tls_name = settings.tls.as_ref().map(|t| t.server_name(addr.ip()));
        Arc::new(Self {
            addr,
            tls_name,
            settings,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends one request over HTTP/2 (multiplexed) or HTTP/1.1 (pooled). `upgrade` requests get
    /// a connection of their own that is never returned to the pool.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        h2: bool,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if h2 {
            let mut sender = self.h2_sender().await?;
            let resp = sender.send_request(req).await.map_err(classify)?;
            return Ok(resp.map(|b| UpstreamBody {
                inner: b,
                ret: None,
            }));
        }
        let (mut sender, uses) = if upgrade {
            (self.connect_h1(self.slot()?).await?, 0)
        } else {
            self.checkout_h1().await?
        };
        if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
            return Err(classify(e));
        }
        let resp = sender.send_request(req).await.map_err(classify)?;
        let keep = !upgrade
            && (self.settings.max_requests_per_connection == 0
                || uses + 1 < self.settings.max_requests_per_connection)
            && !connection_close(resp.headers());
        let ret = keep.then(|| Return {
            pool: self.clone(),
            sender,
            uses: uses + 1,
        });
        Ok(resp.map(|b| {
            let mut body = UpstreamBody { inner: b, ret };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        }))
    }

    async fn checkout_h1(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<Body>, u32), UpstreamError> {
        // Fast path: an idle connection, or room for a new one.
        if let Some(found) = self.take_idle() {
            return Ok(found);
        }
        if let Some(slot) = self.settings.circuit.try_connection() {
            return Ok((self.connect_h1(slot).await?, 0));
        }
        // Slow path: wait as a pending request for a connection to come back or close.
        let guard = self.settings.circuit.try_pending().ok_or_else(|| {
            self.settings.stats.upstream_rq_pending_overflow.inc();
            UpstreamError::Overflow("pending requests")
        })?;
        self.settings.stats.upstream_rq_pending_total.inc();
        self.settings.stats.upstream_rq_pending_active.inc();
        self.settings.waiters.fetch_add(1, Ordering::SeqCst);
        let _pending = Pending {
            _guard: guard,
            settings: self.settings.clone(),
        };
        loop {
            let notified = self.settings.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.take_idle() {
                return Ok(found);
            }
            if let Some(slot) = self.settings.circuit.try_connection() {
                return Ok((self.connect_h1(slot).await?, 0));
            }
            // Recheck periodically so a wake-up taken by another host's waiter cannot strand us.
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }

    /// Opens a connection of its own for an opaque byte stream (tcp_proxy, CONNECT): the
    /// cluster's circuit breaker (`max_connections`), TLS origination and connection stats apply
    /// as for HTTP. Keep the guard for as long as the stream lives.
    pub async fn connect_stream(&self) -> Result<(Upstream, ConnGuard), UpstreamError> {
        self.connect(self.slot()?, false).await
    }

    fn slot(&self) -> Result<Guard, UpstreamError> {
        self.settings.circuit.try_connection().ok_or_else(|| {
            self.settings.stats.upstream_cx_overflow.inc();
            UpstreamError::Overflow("connections")
        })
    }

    fn take_idle(&self) -> Option<(http1::SendRequest<Body>, u32)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            let expired = self
                .settings
                .idle_timeout
                .is_some_and(|t| i.since.elapsed() >= t);
            if !expired && i.sender.is_ready() {
                return Some((i.sender, i.uses));
            }
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<Body>, uses: u32) {
        if sender.is_closed() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Idle {
                sender,
                since: Instant::now(),
                uses,
            });
        self.settings.wake();
    }

    /// Connects (and originates TLS when the cluster says so; `h2` picks the HTTP/2 ALPN offer
    /// of a cluster that follows the downstream protocol).
    async fn connect(&self, slot: Guard, h2: bool) -> Result<(Upstream, ConnGuard), UpstreamError> {
        let s = &self.settings;
        s.stats.upstream_cx_total.inc();
        let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(self.addr)).await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                s.stats.upstream_cx_connect_fail.inc();
                return Err(UpstreamError::ConnectFailure(e));
            }
            Err(_) => {
                s.stats.upstream_cx_connect_fail.inc();
                s.stats.upstream_cx_connect_timeout.inc();
                return Err(UpstreamError::ConnectTimeout);
            }
        };
        let _ = tcp.set_nodelay(true);
        s.stats.upstream_cx_active.inc();
        let guard = ConnGuard {
            _slot: slot,
            settings: s.clone(),
        };
        let io = match (&s.tls, &self.tls_name) {
            (Some(t), Some(name)) => {
                let cfg = match (&t.config_h2, h2) {
                    (Some(c), true) => c.clone(),
                    _ => t.config.clone(),
                };
                let c = tokio_rustls::TlsConnector::from(cfg);
                let tls = tokio::time::timeout(s.connect_timeout, c.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout)?
                    .map_err(UpstreamError::Tls)?;
                MaybeTls::Tls(Box::new(tls))
            }
            _ => MaybeTls::Plain(tcp),
        };
        Ok((io, guard))
    }

    async fn connect_h1(&self, slot: Guard) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let (io, guard) = self.connect(slot, false).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let mut slot = self.h2.lock().await;
        let s = &self.settings;
        if let Some(c) = slot.as_mut()
            && !c.sender.is_closed()
        {
            // The cluster's idle_timeout and max_requests_per_connection apply to HTTP/2 too:
            // a connection past either is replaced (it closes once its last stream ends).
            let idle_too_long = s.idle_timeout.is_some_and(|t| c.last_used.elapsed() >= t);
            let used_up =
                s.max_requests_per_connection != 0 && c.streams >= s.max_requests_per_connection;
            if !idle_too_long && !used_up {
                c.streams += 1;
                c.last_used = Instant::now();
                return Ok(c.sender.clone());
            }
        }
        // Drop the old handle first: its connection ends when its streams are done.
        *slot = None;
        let (io, guard) = self.connect(self.slot()?, true).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .adaptive_window(false)
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        *slot = Some(H2Conn {
            sender: sender.clone(),
            last_used: Instant::now(),
            streams: 1,
        });
        Ok(sender)
    }
}

fn connection_close(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// Maps a hyper client error to Envoy's failure classes.
pub fn classify(e: hyper::Error) -> UpstreamError {
    if e.is_user()
        && let Some(src) = std::error::Error::source(&e)
    {
        return UpstreamError::DownstreamBody(src.to_string());
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return match h2e.reason() {
                Some(h2::Reason::REFUSED_STREAM) => UpstreamError::RefusedStream,
                Some(_) if h2e.is_remote() => UpstreamError::RemoteReset,
                _ if h2e.is_io() => UpstreamError::ConnectionTermination,
                _ => UpstreamError::Protocol(h2e.to_string()),
            };
        }
        src = s.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamError::Protocol(e.to_string())
    } else {
        // closed / canceled / incomplete message / io: the connection went away under us.
        UpstreamError::ConnectionTermination
    }
}

/// A request waiting for a connection: holds its pending slot and the gauge.
struct Pending {
    _guard: Guard,
    settings: Arc<PoolSettings>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.settings.waiters.fetch_sub(1, Ordering::SeqCst);
        self.settings.stats.upstream_rq_pending_active.dec();
    }
}

struct Return {
    pool: Arc<HostPool>,
    sender: http1::SendRequest<Body>,
    uses: u32,
}

/// A response body from upstream; on reaching its end it returns its HTTP/1 connection to the
/// pool. Dropped early, the connection is closed instead (its state is unknown).
pub struct UpstreamBody {
    inner: Incoming,
    ret: Option<Return>,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(r) = self.ret.take() {
            r.pool.give_back(r.sender, r.uses);
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBody")
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
