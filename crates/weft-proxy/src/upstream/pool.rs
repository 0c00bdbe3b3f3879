//! Per-endpoint upstream connection pools: HTTP/1.1 keep-alive reuse, multiplexed HTTP/2
//! connections (one, or more when the cluster's `max_concurrent_streams` fills one), connect
//! timeouts, optional TLS origination, and circuit-breaker accounting for connections and
//! pending requests.
//!
//! A pool hands out a connection for exactly one request; an HTTP/1 connection goes back to the
//! idle list only when its response body has been read to the end, so a slow body never blocks
//! another request. Idle HTTP/1 connections have no task of their own (see `h1`): one reaper
//! task per endpoint is woken by the reactor when one of them is closed by the peer, and drops
//! it, freeing its circuit-breaker slot as a connection task would. A connection past the
//! cluster's `idle_timeout`, `max_requests_per_connection` or `max_connection_duration` is not
//! reused: HTTP/1 ones are closed when they would be reused or returned, an HTTP/2 one is
//! replaced at the next request and closes once its streams end. Failures are classified the
//! way Envoy's response flags need them.

use crate::flags::ResponseFlags;
use crate::io::{MaybeTls, Upstream};
use crate::stats::ClusterStats;
use crate::upstream::circuit::{CircuitBreakers, Guard};
use crate::upstream::h1::{H1Body, H1Conn, Upgraded};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent upstream.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Envoy's default `max_concurrent_streams`, also its maximum.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 2_147_483_647;

/// Settings shared by all endpoint pools of one cluster.
#[derive(Debug)]
pub struct PoolSettings {
    pub cluster: Arc<str>,
    pub connect_timeout: Duration,
    pub tls: Option<crate::tls::UpstreamTls>,
    pub idle_timeout: Option<Duration>,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// How long a connection may be used after it was established; None = no limit.
    pub max_connection_duration: Option<Duration>,
    /// Streams one HTTP/2 connection carries at once; more open another connection.
    pub max_concurrent_streams: u32,
    pub circuit: Arc<CircuitBreakers>,
    pub stats: Arc<ClusterStats>,
    /// Woken when a connection becomes idle or closes anywhere in the cluster.
    pub freed: Notify,
    /// Requests waiting on `freed`; nobody pays for a wake-up when it is zero.
    pub waiters: AtomicUsize,
}

impl PoolSettings {
    /// A new connection's age and use count (no clock read without `max_connection_duration`).
    fn fresh(&self) -> Age {
        Age {
            uses: 0,
            born: self.max_connection_duration.map(|_| Instant::now()),
        }
    }

    /// Whether a connection established at `born` has outlived `max_connection_duration`.
    fn too_old(&self, born: Option<Instant>) -> bool {
        self.max_connection_duration
            .zip(born)
            .is_some_and(|(max, born)| born.elapsed() >= max)
    }

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
    conn: H1Conn,
    /// When it went idle; read only with an `idle_timeout` (no clock read otherwise).
    since: Option<Instant>,
    age: Age,
}

/// How much an HTTP/1 connection has been used, for the cluster's limits on reuse.
#[derive(Debug, Clone, Copy)]
struct Age {
    /// Requests it has carried.
    uses: u32,
    /// When it was established; set only with a `max_connection_duration`.
    born: Option<Instant>,
}

/// The idle HTTP/1 connections of one endpoint and the reaper that watches them.
#[derive(Default)]
struct IdleList {
    conns: Vec<Idle>,
    /// Registered with every idle connection's read readiness; `None` until the reaper ran.
    reaper: Option<Waker>,
    reaper_spawned: bool,
}

/// A multiplexed HTTP/2 connection to an endpoint, with what decides when to replace it and
/// whether it has room for another stream.
struct H2Conn {
    sender: http2::SendRequest<Body>,
    born: Instant,
    last_used: Instant,
    /// Streams it has carried.
    streams: u32,
    /// Streams open on it now (see [`StreamSlot`]).
    active: Arc<AtomicU32>,
}

/// One open stream of an HTTP/2 connection, counted in its `active` until the response ends
/// or is dropped; freeing it wakes requests waiting for room.
struct StreamSlot {
    active: Arc<AtomicU32>,
    settings: Arc<PoolSettings>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.settings.wake();
    }
}

/// The connections to one endpoint.
pub struct HostPool {
    pub addr: SocketAddr,
    settings: Arc<PoolSettings>,
    /// The name TLS connections to this endpoint present (SNI or the endpoint's IP).
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
    idle: Mutex<IdleList>,
    h2: tokio::sync::Mutex<Vec<H2Conn>>,
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
            idle: Mutex::new(IdleList::default()),
            h2: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// Sends one request over HTTP/2 (multiplexed) or HTTP/1.1 (pooled). `upgrade` requests get
    /// a connection of their own that is never returned to the pool.
    // An async block rather than an `async fn`: an `async fn` moves its parameters into locals of
    // its own, so its future holds each of them twice and copies each once more per call (see
    // docs/ARCHITECTURE.md, "Request futures").
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        h2: bool,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> {
        async move {
            if h2 {
                let (mut sender, slot) = self.h2_sender().await?;
                let resp = sender.send_request(req).await.map_err(classify)?;
                return Ok(resp.map(|body| UpstreamBody {
                    inner: Inner::H2 { body, _slot: slot },
                }));
            }
            // Anything beyond taking an idle connection is boxed: connecting (with TLS) would
            // otherwise make every request's future, and what is copied per request, kilobytes
            // larger.
            let (conn, age) = if upgrade {
                (
                    Box::pin(self.connect_h1(self.slot()?)).await?,
                    self.settings.fresh(),
                )
            } else if let Some(found) = self.take_idle() {
                found
            } else {
                Box::pin(self.checkout_h1()).await?
            };
            let resp = conn.send(req).await?;
            let keep = !upgrade
                && (self.settings.max_requests_per_connection == 0
                    || age.uses + 1 < self.settings.max_requests_per_connection);
            let ret = keep.then(|| Return {
                pool: self.clone(),
                age: Age {
                    uses: age.uses + 1,
                    ..age
                },
            });
            Ok(resp.map(|body| {
                let mut body = UpstreamBody {
                    inner: Inner::H1 { body, ret },
                };
                body.give_back_at_end();
                body
            }))
        }
    }

    /// A connection when none was idle: a new one if the breaker allows, else wait as a pending
    /// request.
    async fn checkout_h1(self: &Arc<Self>) -> Result<(H1Conn, Age), UpstreamError> {
        if let Some(slot) = self.settings.circuit.try_connection() {
            return Ok((self.connect_h1(slot).await?, self.settings.fresh()));
        }
        // Slow path: wait for a connection to come back or close.
        self.pending(|| {
            Box::pin(async {
                if let Some(found) = self.take_idle() {
                    return Some(Ok(found));
                }
                let slot = self.settings.circuit.try_connection()?;
                Some(
                    self.connect_h1(slot)
                        .await
                        .map(|c| (c, self.settings.fresh())),
                )
            })
        })
        .await
    }

    /// Waits as a pending request (within the breaker's `max_pending_requests`) until `attempt`
    /// gets a connection: tried again whenever a connection or stream frees up in the cluster.
    async fn pending<'a, T>(
        &'a self,
        mut attempt: impl FnMut() -> BoxFuture<'a, Option<Result<T, UpstreamError>>>,
    ) -> Result<T, UpstreamError> {
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
            if let Some(found) = attempt().await {
                return found;
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

    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().conns.len()
    }

    #[cfg(test)]
    pub(crate) fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    fn take_idle(&self) -> Option<(H1Conn, Age)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut i) = idle.conns.pop() {
            let expired = self
                .settings
                .idle_timeout
                .zip(i.since)
                .is_some_and(|(t, since)| since.elapsed() >= t)
                || self.settings.too_old(i.age.born);
            // The reaper may not have run since the peer closed it: look once more.
            if !expired && i.conn.poll_idle_alive(Waker::noop()) {
                return Some((i.conn, i.age));
            }
        }
        None
    }

    fn give_back(self: &Arc<Self>, mut conn: H1Conn, age: Age) {
        if self.settings.too_old(age.born) {
            // Dropped: closed, its breaker slot freed (and waiters woken) by its guard.
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Registers the reaper's waker with the connection (the reaper registers it itself on
        // its first run).
        if !conn.poll_idle_alive(idle.reaper.as_ref().unwrap_or(Waker::noop())) {
            return;
        }
        idle.conns.push(Idle {
            conn,
            since: self.settings.idle_timeout.map(|_| Instant::now()),
            age,
        });
        if !idle.reaper_spawned {
            idle.reaper_spawned = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
        drop(idle);
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

    async fn connect_h1(&self, slot: Guard) -> Result<H1Conn, UpstreamError> {
        let (io, guard) = self.connect(slot, false).await?;
        Ok(H1Conn::new(io, guard))
    }

    /// A connection with room for one more stream, and that stream's slot: an open one, else
    /// a new one if the breaker allows, else — every connection full — wait as a pending
    /// request for a stream to end. Connecting holds the list, so a burst of requests opens
    /// one connection and shares it, as far as its streams allow.
    async fn h2_sender(&self) -> Result<(http2::SendRequest<Body>, StreamSlot), UpstreamError> {
        let mut conns = self.h2.lock().await;
        if let Some(found) = self.h2_stream(&mut conns) {
            return Ok(found);
        }
        if let Some(slot) = self.settings.circuit.try_connection() {
            return Box::pin(self.h2_connect(&mut conns, slot)).await;
        }
        if conns.is_empty() {
            self.settings.stats.upstream_cx_overflow.inc();
            return Err(UpstreamError::Overflow("connections"));
        }
        drop(conns);
        // Every connection full and no room for another: wait for a stream to end or a
        // connection's slot to free.
        Box::pin(self.pending(|| {
            Box::pin(async {
                let mut conns = self.h2.lock().await;
                if let Some(found) = self.h2_stream(&mut conns) {
                    return Some(Ok(found));
                }
                let slot = self.settings.circuit.try_connection()?;
                Some(self.h2_connect(&mut conns, slot).await)
            })
        }))
        .await
    }

    /// A stream on an open connection, after dropping those that are closed or past the
    /// cluster's idle_timeout, max_requests_per_connection or max_connection_duration (a
    /// dropped handle's connection closes once its last stream ends).
    fn h2_stream(&self, conns: &mut Vec<H2Conn>) -> Option<(http2::SendRequest<Body>, StreamSlot)> {
        let s = &self.settings;
        conns.retain(|c| {
            let spent = c.sender.is_closed()
                || s.idle_timeout.is_some_and(|t| c.last_used.elapsed() >= t)
                || (s.max_requests_per_connection != 0
                    && c.streams >= s.max_requests_per_connection)
                || s.too_old(Some(c.born));
            !spent
        });
        let c = conns
            .iter_mut()
            .find(|c| c.active.load(Ordering::Acquire) < s.max_concurrent_streams)?;
        c.streams += 1;
        c.last_used = Instant::now();
        c.active.fetch_add(1, Ordering::AcqRel);
        Some((
            c.sender.clone(),
            StreamSlot {
                active: c.active.clone(),
                settings: s.clone(),
            },
        ))
    }

    /// Opens a connection, adds it to `conns` and takes its first stream.
    async fn h2_connect(
        &self,
        conns: &mut Vec<H2Conn>,
        slot: Guard,
    ) -> Result<(http2::SendRequest<Body>, StreamSlot), UpstreamError> {
        let (io, guard) = self.connect(slot, true).await?;
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .adaptive_window(false)
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io));
        let (sender, conn) = handshake
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        let now = Instant::now();
        let active = Arc::new(AtomicU32::new(1));
        conns.push(H2Conn {
            sender: sender.clone(),
            born: now,
            last_used: now,
            streams: 1,
            active: active.clone(),
        });
        let stream = StreamSlot {
            active,
            settings: self.settings.clone(),
        };
        Ok((sender, stream))
    }
}

impl Drop for HostPool {
    fn drop(&mut self) {
        // The reaper holds only a weak reference: woken, it finds the pool gone and ends.
        let idle = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = idle.reaper.take() {
            w.wake();
        }
    }
}

/// Watches an endpoint's idle HTTP/1 connections: the reactor wakes it when one of them turns
/// readable (closed by the peer, or bytes nobody asked for), and it drops those.
async fn reap(pool: Weak<HostPool>) {
    std::future::poll_fn(|cx| {
        let Some(pool) = pool.upgrade() else {
            return Poll::Ready(());
        };
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle
            .reaper
            .as_ref()
            .is_none_or(|w| !w.will_wake(cx.waker()))
        {
            idle.reaper = Some(cx.waker().clone());
        }
        // Dropping a connection frees its breaker slot and wakes waiting requests.
        idle.conns
            .retain_mut(|i| i.conn.poll_idle_alive(cx.waker()));
        Poll::Pending
    })
    .await
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

/// Where an HTTP/1 connection goes back to once its response is read.
struct Return {
    pool: Arc<HostPool>,
    age: Age,
}

/// A response body from upstream; on reaching its end it returns its HTTP/1 connection to the
/// pool. Dropped early, the connection is closed instead (its state is unknown).
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    H2 { body: Incoming, _slot: StreamSlot },
    H1 { body: H1Body, ret: Option<Return> },
}

impl UpstreamBody {
    fn give_back_at_end(&mut self) {
        if let Inner::H1 { body, ret } = &mut self.inner
            && body.is_end_stream()
            && let Some(r) = ret.take()
            && let Some(conn) = body.take_reusable()
        {
            r.pool.give_back(conn, r.age);
        }
    }

    /// The raw upstream connection after a `101 Switching Protocols` (HTTP/1 only).
    pub fn into_upgraded(self) -> Option<Upgraded> {
        match self.inner {
            Inner::H1 { body, .. } => body.into_upgraded(),
            Inner::H2 { .. } => None,
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBody")
    }
}

/// Errors say what broke, as before response headers: the response flag and reset reason of
/// a body cut short come from them.
impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match &mut self.inner {
            Inner::H2 { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(classify))),
            Inner::H1 { body, ret } => {
                let r = Pin::new(body).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Err(_))) => *ret = None,
                    Poll::Ready(_) => self.give_back_at_end(),
                    Poll::Pending => {}
                }
                r
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H2 { body, .. } => body.is_end_stream(),
            Inner::H1 { body, .. } => body.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H2 { body, .. } => body.size_hint(),
            Inner::H1 { body, .. } => body.size_hint(),
        }
    }
}
