//! The per-request path: route lookup, local replies, the router (cluster choice, load
//! balancing, timeouts, retries with backoff, circuit breakers, outlier reporting), upgrades
//! (WebSocket, CONNECT) and the bookkeeping at the end of each exchange (stats, access log).
//!
//! A request reads one config snapshot at its start and keeps it to the end. Everything that can
//! be decided per config is decided when the config is compiled; this module only executes.

use super::body::{Cut, Inner, MarkEnd, OnDone, ReplayBody, RequestEnd, ResponseBody};
use super::{Hcm, KEEP_ALIVE, PROXY_CONNECTION, Routes, cors, fault, local_reply, mirror};
use crate::access_log::LogRecord;
use crate::flags::ResponseFlags;
use crate::router::{
    Action, RequestView, RetryOn, RetryPolicy, Route, RouteAction, RouteTable, VirtualHost,
};
use crate::runtime::Shared;
use crate::upstream::host::{Host, LbContext};
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::{Body, BoxError, UpstreamError};
use crate::upstream::{Cluster, Protocol};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a request knows about the connection it arrived on.
#[derive(Debug)]
pub struct Conn {
    pub hcm: Arc<Hcm>,
    pub shared: Arc<Shared>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub sni: Option<Arc<str>>,
    pub tls: bool,
    /// The head-wait timer of the connection's last request, kept for the next one. A timer
    /// still registered is moved to a later deadline with one atomic, where a new one takes the
    /// timer driver's lock twice (to register, to cancel), in the response's path. HTTP/1
    /// requests take turns; an HTTP/2 stream that finds it taken makes its own.
    pub head_timer: std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl Conn {
    /// A timer set for `at`: the connection's kept one when free, else a new one.
    fn take_timer(&self, at: Instant) -> Pin<Box<tokio::time::Sleep>> {
        let at = tokio::time::Instant::from_std(at);
        match self.head_timer.try_lock().ok().and_then(|mut t| t.take()) {
            Some(mut t) => {
                t.as_mut().reset(at);
                t
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        }
    }

    /// Keeps `timer` for the connection's next request.
    fn keep_timer(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        if let Ok(mut t) = self.head_timer.try_lock() {
            t.get_or_insert(timer);
        }
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Everything recorded about one exchange, handed to stats and access logs at its end.
struct Exchange {
    conn: Arc<Conn>,
    start: Instant,
    /// Wall-clock start, read only when access logs need it.
    start_time: Option<SystemTime>,
    /// Kept only when access logs are configured.
    request: Option<http::request::Parts>,
    protocol: &'static str,
    status: u16,
    response_headers: Option<HeaderMap>,
    flags: ResponseFlags,
    details: &'static str,
    bytes_received: u64,
    upstream_service_time: Option<Duration>,
    upstream_host: Option<SocketAddr>,
    cluster: Option<Arc<Cluster>>,
    route_name: Option<String>,
    authority: String,
    /// Held while a fault injected into this request is active (`max_active_faults`).
    fault: Option<fault::ActiveFault>,
    /// Set once stats and access logs have the exchange; an exchange dropped before that (the
    /// downstream went away while the request was pending) is recorded on drop.
    recorded: bool,
}

impl OnDone for Exchange {
    fn done(
        mut self: Box<Self>,
        bytes_sent: u64,
        trailers: Option<&HeaderMap>,
        completed: bool,
        cut: Option<Cut>,
    ) {
        match cut {
            Some(Cut::StreamIdle) => {
                self.flags.insert(ResponseFlags::SI);
                self.details = "stream_idle_timeout";
            }
            Some(Cut::RouteTimeout) => {
                self.flags.insert(ResponseFlags::UT);
                self.details = "upstream_response_timeout";
                if let Some(c) = &self.cluster {
                    c.stats.upstream_rq_timeout.inc();
                }
            }
            Some(Cut::Upstream(ref e)) => {
                // Envoy's wording: the reset came after the response had started.
                self.flags.insert(e.flag());
                self.details = match e {
                    UpstreamError::DownstreamBody(_) => "downstream_remote_disconnect",
                    UpstreamError::Protocol(_) => {
                        "upstream_reset_after_response_started{protocol_error}"
                    }
                    UpstreamError::RemoteReset | UpstreamError::RefusedStream => {
                        "upstream_reset_after_response_started{remote_reset}"
                    }
                    _ => "upstream_reset_after_response_started{connection_termination}",
                };
                tracing::debug!(
                    cluster = self.cluster.as_ref().map_or("", |c| &*c.name),
                    upstream = ?self.upstream_host,
                    "response body cut short: {}",
                    e.reset_reason()
                );
            }
            None => {}
        }
        // Unfinished and not cut by the proxy or the upstream: the downstream went away.
        if !completed && cut.is_none() && self.status != 0 {
            self.flags.insert(ResponseFlags::DC);
        }
        let duration = self.record_stats();
        if self.conn.hcm.access_logs.is_empty() {
            return;
        }
        // The line is formatted once the response's last bytes are written (see after_write).
        let trailers = trailers.cloned();
        crate::after_write::after_write(move || {
            self.write_logs(duration, bytes_sent, trailers.as_ref());
        });
    }
}

impl Drop for Exchange {
    /// The request was abandoned before a response (the handler was cancelled because the
    /// downstream disconnected): Envoy logs it with response code 0 and `DC`.
    fn drop(&mut self) {
        if !self.recorded {
            self.flags.insert(ResponseFlags::DC);
            self.details = "downstream_remote_disconnect";
            let duration = self.record_stats();
            self.write_logs(duration, 0, None);
        }
    }
}

impl Exchange {
    /// Counts the exchange in the connection manager's stats; its duration.
    fn record_stats(&mut self) -> Duration {
        self.recorded = true;
        let duration = self.start.elapsed();
        let hs = &self.conn.hcm.stats;
        hs.downstream_rq_active.dec();
        hs.record_status(self.status);
        hs.downstream_rq_time.record(duration);
        duration
    }

    /// Writes the exchange's line to each access log.
    fn write_logs(&self, duration: Duration, bytes_sent: u64, trailers: Option<&HeaderMap>) {
        let e = self;
        let flags = e.flags;
        if e.conn.hcm.access_logs.is_empty() {
            return;
        }
        let authority = e.authority.as_str();
        let rec = LogRecord {
            start_time: e.start_time.unwrap_or_else(|| SystemTime::now() - duration),
            duration,
            request: e.request.as_ref(),
            response_code: e.status,
            response_headers: e.response_headers.as_ref(),
            response_trailers: trailers,
            protocol: e.protocol,
            flags,
            response_code_details: e.details,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: e.bytes_received,
            bytes_sent,
            upstream_service_time: e.upstream_service_time,
            upstream_host: e.upstream_host,
            upstream_cluster: e.cluster.as_ref().map_or("", |c| &*c.name),
            upstream_local_address: None,
            downstream_local_address: e.conn.local,
            downstream_remote_address: e.conn.remote,
            requested_server_name: e.conn.sni.as_deref(),
            route_name: e.route_name.as_deref().unwrap_or(""),
            authority,
        };
        for l in &e.conn.hcm.access_logs {
            l.log(&rec);
        }
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/0.9",
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Envoy's mapping from HTTP status to gRPC status for local replies.
fn grpc_status_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = rand::random::<u128>().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 0x0f) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

struct Ctx {
    ex: Box<Exchange>,
    grpc: bool,
    /// CORS headers for the response, once the CORS filter accepted the request's origin.
    cors: Option<cors::ActualHeaders>,
}

impl Ctx {
    /// A reply generated by the proxy itself: status, flags, details and a short body naming
    /// the cause. gRPC callers get a trailers-only gRPC response instead.
    fn local(
        self,
        status: StatusCode,
        flags: ResponseFlags,
        details: &'static str,
        body: String,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Response<ResponseBody> {
        self.local_with(status, None, flags, details, body, extra)
    }

    /// A circuit breaker's overflow (flag `UO`): 503 naming the cluster and the limit hit.
    fn overflow(self, cluster: &str, e: &UpstreamError) -> Response<ResponseBody> {
        self.local(
            StatusCode::SERVICE_UNAVAILABLE,
            e.flag(),
            "upstream_reset_before_response_started{overflow}",
            format!(
                "upstream overflow: cluster `{cluster}` {}",
                e.reset_reason()
            ),
            &[],
        )
    }

    /// `local` with an explicit gRPC status for gRPC callers (else mapped from `status`). The
    /// connection manager's local reply mapping applies first.
    fn local_with(
        mut self,
        status: StatusCode,
        grpc_status: Option<u16>,
        flags: ResponseFlags,
        details: &'static str,
        body: String,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Response<ResponseBody> {
        self.ex.flags.insert(flags);
        self.ex.details = details;
        let (status, body, content_type) = match &self.ex.conn.hcm.local_reply {
            None => (status, body, None),
            Some(lr) => {
                let mut r = local_reply::Reply {
                    status,
                    body,
                    content_type: None,
                };
                lr.rewrite(&mut r, self.ex.flags, details);
                (r.status, r.body, r.content_type)
            }
        };
        let mut resp = if self.grpc {
            let mut r = Response::new(ResponseBody::full(Bytes::new()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut().insert(
                GRPC_STATUS.clone(),
                HeaderValue::from(grpc_status.unwrap_or(u16::from(grpc_status_for(status)))),
            );
            if let Ok(v) = HeaderValue::from_str(&body) {
                r.headers_mut().insert(GRPC_MESSAGE.clone(), v);
            }
            r
        } else {
            let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("text/plain")),
            );
            r
        };
        for (k, v) in extra {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        // Every overflow reply says so, as Envoy's router does, unless told not to.
        if flags.contains(ResponseFlags::UO) && !self.ex.conn.hcm.router.suppress_envoy_headers {
            resp.headers_mut()
                .insert(X_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        self.finish(resp)
    }

    /// 504 `UT`: the route's timeout passed before the upstream answered.
    fn upstream_timeout(self) -> Response<ResponseBody> {
        self.local(
            StatusCode::GATEWAY_TIMEOUT,
            ResponseFlags::UT,
            "upstream_response_timeout",
            "upstream request timeout".into(),
            &[],
        )
    }

    /// A direct response or redirect (Envoy sends these as local replies too, so the local
    /// reply mapping applies when configured).
    fn direct(
        self,
        status: StatusCode,
        body: Bytes,
        apply: impl FnOnce(&mut HeaderMap),
    ) -> Response<ResponseBody> {
        let (status, body, content_type) = match &self.ex.conn.hcm.local_reply {
            None => (status, body, None),
            Some(lr) => {
                let mut r = local_reply::Reply {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    content_type: None,
                };
                lr.rewrite(&mut r, self.ex.flags, "direct_response");
                (r.status, Bytes::from(r.body), r.content_type)
            }
        };
        let mut resp = Response::new(ResponseBody::full(body.clone()));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        } else if !body.is_empty() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        apply(resp.headers_mut());
        let mut cx = self;
        cx.ex.details = "direct_response";
        cx.finish(resp)
    }

    fn finish(mut self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        if let Some(s) = &self.ex.conn.hcm.server_name {
            resp.headers_mut().insert(header::SERVER, s.clone());
        }
        if let Some(c) = &self.cors {
            c.apply(resp.headers_mut());
        }
        self.ex.status = resp.status().as_u16();
        if !self.ex.conn.hcm.access_logs.is_empty() {
            self.ex.response_headers = Some(resp.headers().clone());
        }
        resp.body_mut().set_on_done(self.ex);
        resp
    }
}

/// [`handle`]'s future, built straight into its heap block.
///
/// The future is ~5 KiB (every await point's state), and a future is a value: `Box::pin(handle(..))`
/// builds it on the stack and copies all of it to the heap, though only the arguments are set
/// (~80 cache lines per request, a fifth of the proxy's L1d misses on small requests).
/// Allocating first and letting a call that is not inlined return into the block lets the
/// compiler pass the block as the call's return slot: no copy. The box also keeps the future out
/// of memory that only its connection touches (hyper's per-connection slot for HTTP/1, the
/// stream task for HTTP/2), which with many connections taking turns is cold.
pub fn handle_boxed(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Pin<Box<impl Future<Output = Result<Response<ResponseBody>, Infallible>>>> {
    #[inline(never)]
    fn start(
        conn: Arc<Conn>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
        handle(conn, req)
    }
    Box::into_pin(Box::write(Box::new_uninit(), start(conn, req)))
}

/// Serves one request. Never fails: every problem becomes a response that says why.
// An async block rather than an `async fn`: an `async fn` moves its parameters into locals of
// its own, so its future holds each of them twice and copies each once more per call (see
// docs/ARCHITECTURE.md, "Request futures").
#[allow(clippy::manual_async_fn)]
pub fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    async move {
        let start = Instant::now();
        let hcm = &conn.hcm;
        hcm.stats.downstream_rq_total.inc();
        hcm.stats.downstream_rq_active.inc();
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        if hcm.generate_request_id && !parts.headers.contains_key(&X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID.clone(), request_id());
        }
        let grpc = is_grpc(&parts.headers);
        let logging = !hcm.access_logs.is_empty();
        let ex = Box::new(Exchange {
            conn: conn.clone(),
            start,
            start_time: logging.then(SystemTime::now),
            request: logging.then(|| clone_parts(&parts)),
            protocol: protocol_name(parts.version),
            status: 0,
            response_headers: None,
            flags: ResponseFlags::NONE,
            details: "via_upstream",
            bytes_received: body.size_hint().exact().unwrap_or(0),
            upstream_service_time: None,
            upstream_host: None,
            cluster: None,
            route_name: None,
            authority: if logging {
                authority.clone()
            } else {
                String::new()
            },
            fault: None,
            recorded: false,
        });
        let cx = Ctx {
            ex,
            grpc,
            cors: None,
        };

        // Both Content-Length and Transfer-Encoding never reach here: hyper's HTTP/1 parser keeps
        // Transfer-Encoding, drops Content-Length and closes the connection after the response
        // (RFC 9112 §6.1), and HTTP/2 rejects Transfer-Encoding outright.

        let snapshot = conn.shared.snapshot();
        let table: &Arc<RouteTable> = match &hcm.routes {
            Routes::Static(t) => t,
            Routes::Rds(name) => match snapshot.routes.get(name) {
                Some(t) => t,
                None => {
                    return Ok(cx.local(
                        StatusCode::NOT_FOUND,
                        ResponseFlags::NR,
                        "route_not_found",
                        format!("route configuration `{name}` has not been received"),
                        &[],
                    ));
                }
            },
        };
        let scheme = if conn.tls {
            "https"
        } else {
            parts.uri.scheme_str().unwrap_or("http")
        };
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let view = RequestView {
            method: &parts.method,
            authority: &authority,
            path_and_query,
            scheme,
            headers: &parts.headers,
            is_grpc: grpc,
        };
        let Some(vh) = table.vhost(&authority) else {
            return Ok(cx.local(
                StatusCode::NOT_FOUND,
                ResponseFlags::NR,
                "route_not_found",
                format!("no virtual host for authority `{authority}`"),
                &[],
            ));
        };
        let Some(route) = vh.route(&view) else {
            return Ok(cx.local(
                StatusCode::NOT_FOUND,
                ResponseFlags::NR,
                "route_not_found",
                format!(
                    "no route in virtual host `{}` matches {} {}",
                    vh.name, parts.method, path_and_query
                ),
                &[],
            ));
        };
        let mut cx = cx;
        if logging {
            cx.ex.route_name = Some(route.name.clone());
        }

        // HTTP filters before the router, in the chain's order: CORS, fault injection.
        let mut faulted = false;
        if hcm.cors_first {
            cx = match cors_filter(cx, hcm, route, &parts) {
                Ok(cx) => cx,
                Err(preflight) => return Ok(*preflight),
            };
        }
        if let Some(ff) = &hcm.fault
            && let Some(cfg) = route.filters.fault.as_deref().or(ff.config.as_deref())
            && let Some(inj) = ff.decide(cfg, &view)
        {
            faulted = true;
            cx.ex.fault = Some(inj.guard);
            if let Some(d) = inj.delay {
                cx.ex.flags.insert(ResponseFlags::DI);
                tokio::time::sleep(d).await;
            }
            if let Some(a) = inj.abort {
                return Ok(cx.local_with(
                    a.status,
                    a.grpc_status,
                    ResponseFlags::FI,
                    fault::ABORT_DETAILS,
                    String::from_utf8_lossy(&a.body).into_owned(),
                    &[],
                ));
            }
        }
        if !hcm.cors_first {
            cx = match cors_filter(cx, hcm, route, &parts) {
                Ok(cx) => cx,
                Err(preflight) => return Ok(*preflight),
            };
        }

        match &route.action {
            Action::Direct { status, body } => Ok(cx.direct(*status, body.clone(), |h| {
                apply_response_mutations(h, table, vh, route, None)
            })),
            Action::Redirect(rd) => {
                let path = path_and_query.split('?').next().unwrap_or("");
                let prefix = matched_len(&route.matcher.path, path).and_then(|n| path.get(..n));
                let loc = rd.location(scheme, &authority, path_and_query, prefix);
                Ok(cx.direct(rd.status, Bytes::new(), |h| {
                    if let Ok(v) = HeaderValue::from_str(&loc) {
                        h.insert(header::LOCATION, v);
                    }
                    apply_response_mutations(h, table, vh, route, None)
                }))
            }
            Action::Forward(ra) => Ok(forward(
                cx, parts, body, table, vh, route, ra, &snapshot, hcm, authority, faulted,
            )
            .await),
        }
    }
}

/// How much of the request path the route's path matcher matched, which `prefix_rewrite`
/// replaces: the prefix for prefix matches, the whole path for exact and regex matches (as
/// Envoy swaps "the matched prefix (or path)"); None for CONNECT matchers.
fn matched_len(m: &crate::router::PathMatch, path: &str) -> Option<usize> {
    use crate::router::PathMatch;
    match m {
        PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p.len().min(path.len())),
        PathMatch::Exact(_) | PathMatch::Regex(_) => Some(path.len()),
        PathMatch::Connect => None,
    }
}

/// The CORS filter: a preflight from an allowed origin is answered here (`Err`); an allowed
/// actual request gets its response headers remembered for `finish`.
fn cors_filter(
    mut cx: Ctx,
    hcm: &Hcm,
    route: &Route,
    parts: &http::request::Parts,
) -> Result<Ctx, Box<Response<ResponseBody>>> {
    let Some(policy) = route.filters.cors.as_deref().filter(|_| hcm.cors) else {
        return Ok(cx);
    };
    match policy.evaluate(&parts.method, &parts.headers) {
        cors::Outcome::Pass => Ok(cx),
        cors::Outcome::Actual(a) => {
            cx.cors = Some(a);
            Ok(cx)
        }
        cors::Outcome::Preflight(h) => {
            let mut resp = Response::new(ResponseBody::full(Bytes::new()));
            *resp.headers_mut() = h;
            cx.ex.details = cors::PREFLIGHT_DETAILS;
            Err(Box::new(cx.finish(resp)))
        }
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn apply_response_mutations(
    h: &mut HeaderMap,
    table: &RouteTable,
    vh: &VirtualHost,
    route: &Route,
    wt: Option<&crate::router::WeightedTarget>,
) {
    // Most specific first is Envoy's default order: weighted cluster, route, vhost, config.
    if let Some(w) = wt {
        w.response_headers.apply(h);
    }
    route.response_headers.apply(h);
    vh.response_headers.apply(h);
    table.response_headers.apply(h);
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, plus the legacy ones).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    super::is_response_hop_by_hop(n)
        || n == header::TE
        || n == header::EXPECT
        || n == header::PROXY_AUTHORIZATION
}

/// Removes hop-by-hop headers and those the `Connection` header names. One pass finds whether
/// there is anything to do: most requests carry none of them.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    remove_connection_listed(h, keep_upgrade);
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::PROXY_AUTHORIZATION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::EXPECT);
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        h.remove(header::TE);
    }
}

/// Removes the headers named by `Connection` (RFC 9110 §7.6.1), except `Connection` itself,
/// the `Upgrade` header when it is kept, and the common options that name no header.
fn remove_connection_listed(h: &mut HeaderMap, keep_upgrade: bool) {
    let Some(v) = h.get(header::CONNECTION) else {
        return;
    };
    // The common values name no header: no copy of the value to iterate over.
    let b = v.as_bytes();
    if b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close") {
        return;
    }
    let conn = v.clone();
    let Ok(s) = conn.to_str() else {
        return;
    };
    for name in s.split(',').map(str::trim) {
        if name.is_empty()
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("close")
            || (keep_upgrade && name.eq_ignore_ascii_case("upgrade"))
        {
            continue;
        }
        // from_bytes lower-cases the name.
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
            && n != header::CONNECTION
        {
            h.remove(n);
        }
    }
}

/// Which limit bounds an attempt's wait for response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Route,
    PerTry,
    Idle,
}

/// Outcome of one attempt, classified for retry decisions.
enum Attempt {
    Response(Response<crate::upstream::pool::UpstreamBody>),
    Failed(UpstreamError),
    PerTryTimeout,
}

fn retriable(policy: &RetryPolicy, a: &Attempt) -> bool {
    let on = policy.on;
    match a {
        Attempt::Response(r) => {
            let s = r.status().as_u16();
            (on.has(RetryOn::FIVE_XX) && s >= 500)
                || (on.has(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
                || (on.has(RetryOn::RETRIABLE_4XX) && s == 409)
                || (on.has(RetryOn::RETRIABLE_STATUS_CODES)
                    && policy.retriable_status_codes.contains(&s))
                || grpc_retriable(on, r.headers())
        }
        Attempt::Failed(UpstreamError::Overflow(_) | UpstreamError::DownstreamBody(_)) => false,
        Attempt::Failed(e) => {
            on.has(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
                || (on.has(RetryOn::CONNECT_FAILURE) && e.is_connect_failure())
                || (on.has(RetryOn::REFUSED_STREAM) && matches!(e, UpstreamError::RefusedStream))
                || (on.has(RetryOn::RESET_BEFORE_REQUEST) && e.is_connect_failure())
        }
        Attempt::PerTryTimeout => {
            on.has(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
        }
    }
}

fn grpc_retriable(on: RetryOn, h: &HeaderMap) -> bool {
    let Some(code) = h
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u8>().ok())
    else {
        return false;
    };
    match code {
        1 => on.has(RetryOn::GRPC_CANCELLED),
        4 => on.has(RetryOn::GRPC_DEADLINE_EXCEEDED),
        8 => on.has(RetryOn::GRPC_RESOURCE_EXHAUSTED),
        13 => on.has(RetryOn::GRPC_INTERNAL),
        14 => on.has(RetryOn::GRPC_UNAVAILABLE),
        _ => false,
    }
}

fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 1u64
        .checked_shl(retry.min(16))
        .unwrap_or(u64::MAX)
        .saturating_sub(1)
        .max(1);
    let upper = policy
        .base_interval
        .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(policy.max_interval);
    let ms = upper.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::random::<u64>() % (ms + 1)
    })
}

fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        && parts.headers.contains_key(header::UPGRADE)
}

#[allow(clippy::too_many_arguments)]
// An async block rather than an `async fn`: an `async fn` moves its parameters into locals of
// its own, so its future holds each of them twice and copies each once more per call (see
// docs/ARCHITECTURE.md, "Request futures").
#[allow(clippy::manual_async_fn)]
fn forward(
    mut cx: Ctx,
    mut parts: http::request::Parts,
    body: Incoming,
    table: &Arc<RouteTable>,
    vh: &VirtualHost,
    route: &Route,
    ra: &RouteAction,
    snapshot: &crate::runtime::Snapshot,
    hcm: &Hcm,
    authority: String,
    faulted: bool,
) -> impl Future<Output = Response<ResponseBody>> {
    async move {
        let Some((cluster_name, weighted)) = ra.clusters.pick(&parts.headers, rand::random) else {
            return cx.local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NC,
                "cluster_not_found",
                "no cluster could be chosen for this route".into(),
                &[],
            );
        };
        let Some(cluster) = snapshot.clusters.get(cluster_name.as_ref()) else {
            return cx.local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NC,
                "cluster_not_found",
                format!("cluster `{cluster_name}` is not configured"),
                &[],
            );
        };
        cx.ex.cluster = Some(cluster.clone());
        // The route's idle_timeout, else the connection manager's stream_idle_timeout.
        let stream_idle = ra.stream_idle_timeout(hcm.stream_idle_timeout);

        // CONNECT: terminate the tunnel here and splice bytes to the chosen endpoint.
        if parts.method == Method::CONNECT {
            if !(hcm.connect && ra.upgrades.connect_terminate) {
                return cx.local(
                    StatusCode::FORBIDDEN,
                    ResponseFlags::NONE,
                    "upgrade_failed",
                    "CONNECT is not enabled on this route".into(),
                    &[],
                );
            }
            return Box::pin(connect_tunnel(
                cx,
                parts,
                cluster.clone(),
                &authority,
                stream_idle,
            ))
            .await;
        }
        let upgrade = is_upgrade(&parts);
        if upgrade {
            let kind = parts
                .headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let allowed = kind.eq_ignore_ascii_case("websocket")
                && ra.upgrades.websocket.unwrap_or(hcm.websocket);
            if !allowed {
                return cx.local(
                    StatusCode::FORBIDDEN,
                    ResponseFlags::NONE,
                    "upgrade_failed",
                    format!("upgrade `{kind}` is not enabled on this route"),
                    &[],
                );
            }
        }

        let Some(_rq_slot) = cluster.pool.circuit.try_request() else {
            cluster.stats.upstream_rq_pending_overflow.inc();
            return cx.local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UO,
                "upstream_reset_before_response_started{overflow}",
                format!(
                    "upstream overflow: cluster `{}` is at its max_requests limit",
                    cluster.name
                ),
                &[],
            );
        };

        // Request headers: hop-by-hop out, mutations in (least specific first so the most specific
        // wins, as Envoy does), rewrites, forwarding headers.
        let mut down_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        table.request_headers.apply(&mut parts.headers);
        vh.request_headers.apply(&mut parts.headers);
        route.request_headers.apply(&mut parts.headers);
        if let Some(w) = weighted {
            w.request_headers.apply(&mut parts.headers);
        }
        let scheme = if cx.ex.conn.tls { "https" } else { "http" };
        if hcm.use_remote_address || !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            parts.headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(if cx.ex.conn.tls { "https" } else { "http" }),
            );
        }
        if hcm.use_remote_address {
            let ip = cx.ex.conn.remote.ip().to_string();
            let v = match parts
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        let orig_uri = &parts.uri;
        let orig_pq = orig_uri.path_and_query().map_or("/", |p| p.as_str());
        let mut new_pq: Option<String> = None;
        let orig_path = orig_pq.split('?').next().unwrap_or("");
        if let (Some(rw), Some(n)) = (
            &ra.prefix_rewrite,
            matched_len(&route.matcher.path, orig_path),
        ) {
            let rest = orig_pq.get(n..).unwrap_or("");
            new_pq = Some(if rw.ends_with('/') && rest.starts_with('/') {
                format!("{rw}{}", &rest[1..])
            } else {
                format!("{rw}{rest}")
            });
        } else if let Some((re, sub)) = &ra.regex_rewrite {
            let (path, query) = orig_pq
                .split_once('?')
                .map_or((orig_pq, None), |(p, q)| (p, Some(q)));
            let np = re.replace_all(path, sub.as_str());
            new_pq = Some(match query {
                Some(q) => format!("{np}?{q}"),
                None => np.into_owned(),
            });
        }
        if new_pq.is_some()
            && !hcm.router.suppress_envoy_headers
            && let Ok(v) = HeaderValue::from_str(parts.uri.path())
        {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
        let pq = new_pq.as_deref().unwrap_or(orig_pq);
        // The Host sent upstream: a rewrite, else the request's own (reused when it already is the
        // authority, as for every origin-form HTTP/1 request).
        let up_authority = match &ra.host_rewrite {
            Some(h) => Some(h.clone()),
            None => match parts.headers.get(header::HOST) {
                Some(h) if h.as_bytes() == authority.as_bytes() => Some(h.clone()),
                _ => HeaderValue::from_str(&authority).ok(),
            },
        };
        if let Some(a) = &up_authority
            && parts.headers.get(header::HOST) != Some(a)
        {
            parts.headers.insert(header::HOST, a.clone());
        }

        // Like Istio, a request that received a fault gets neither retries nor the route timeout.
        let policy = if faulted {
            None
        } else {
            ra.retry_policy.clone()
        };
        let timeout = if faulted { None } else { ra.timeout };
        let no_body = body.is_end_stream();
        // The body is boxed only when there is one; a mirrored one is read first.
        let mut body = Some(body);
        let mut mirrored: Option<Body> = None;
        if !ra.mirrors.is_empty() && !upgrade {
            let shadow = ShadowSource {
                parts: &parts,
                scheme,
                authority: up_authority
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .unwrap_or(&authority),
                path_and_query: pq,
                timeout: ra.timeout,
            };
            mirrored = match Box::pin(mirror_request(
                ra,
                snapshot,
                cluster.retry_buffer_limit,
                &shadow,
                &mut body,
                no_body,
            ))
            .await
            {
                Ok(b) => b,
                Err(why) => {
                    return cx.local(
                        StatusCode::BAD_REQUEST,
                        ResponseFlags::DPE,
                        "downstream_remote_disconnect_or_protocol_error",
                        format!("bad request body: {why}"),
                        &[(header::CONNECTION, HeaderValue::from_static("close"))],
                    );
                }
            };
        }

        // A dynamic forward proxy cluster connects where the request says.
        let dynamic = match &cluster.dfp {
            None => None,
            // Boxed, as every path off the common one: it would grow each request's future.
            Some(cache) => match Box::pin(cache.resolve(&authority, 80)).await {
                Ok(found) => Some(found),
                Err(e) => return dns_failure(cx, cluster, &authority, &e),
            },
        };

        let h2 = match cluster.protocol {
            Protocol::Http2 => !upgrade,
            Protocol::Http1 => false,
            Protocol::Downstream => parts.version == Version::HTTP_2,
        };
        let mut uri: Uri = if h2 {
            let auth = up_authority
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .unwrap_or("localhost");
            format!("{scheme}://{auth}{pq}")
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/"))
        } else if new_pq.is_none()
            && parts.uri.scheme().is_none()
            && parts.uri.authority().is_none()
        {
            // Already origin-form and not rewritten: reuse it (a refcount, no parse).
            parts.uri.clone()
        } else {
            pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
        };
        if h2 {
            parts.headers.remove(header::HOST);
        }

        // Body: replayable while small when a retry policy applies.
        let hash = if cluster.lb.policy.is_hash_based() && !ra.hash_policies.is_empty() {
            crate::upstream::hash::compute_hash(&ra.hash_policies, &parts, cx.ex.conn.remote)
        } else {
            crate::upstream::hash::HashOutcome::default()
        };
        // Envoy's route timeout counts from when the request has been completely received: the
        // end of its body, marked as the body is read.
        // Tracked only when it can differ from the start (there is a body) and matters (there is
        // a route timeout): no allocation for the common bodyless request.
        let request_end = (!no_body && timeout.is_some()).then(|| RequestEnd::new(cx.ex.start));
        let primary = if no_body {
            None
        } else {
            let b = mirrored.or_else(|| body.take().map(boxed));
            match &request_end {
                Some(end) => b.map(|b| boxed(MarkEnd::new(b, end.clone()))),
                None => b,
            }
        };
        let start = cx.ex.start;
        // When the request was completely received, once it has been.
        let request_end_at = || match &request_end {
            None => Some(start),
            Some(end) => end.at(),
        };
        let (mut replay, mut single): (Option<ReplayBody>, Option<Body>) = match (&policy, primary)
        {
            (_, None) => (None, None),
            (Some(_), Some(b)) => (Some(ReplayBody::new(b, cluster.retry_buffer_limit)), None),
            (None, Some(b)) => (None, Some(b)),
        };

        // The route's deadline as known at `now`: the request's end plus the timeout, or, while
        // the request is still arriving, no earlier than `now` plus the timeout.
        let route_deadline = |now: Instant| -> Option<Instant> {
            timeout.map(|t| request_end_at().unwrap_or(now) + t)
        };
        let max_attempts = 1 + policy.as_ref().map_or(0, |p| p.num_retries);
        let max_picks = policy.as_deref().and_then(|p| p.max_picks);
        let mut tried: Vec<Arc<Host>> = Vec::new();
        let mut attempt_no = 0u32;
        let mut last: Attempt;
        // Response-head time of the attempt whose answer is returned (the last one).
        let mut upstream_time = Duration::ZERO;
        // The body of the next attempt: the first from the replay buffer, retries taken when decided.
        let mut next_body: Option<Body> = replay.as_ref().and_then(|r| r.replay()).map(boxed);
        loop {
            attempt_no += 1;
            let lb_ctx = LbContext {
                hash: hash.hash,
                excluded: &tried,
                max_picks,
            };
            let picked = match &dynamic {
                Some((h, p)) => Some((h.clone(), p.clone())),
                None => cluster.pick(&lb_ctx),
            };
            let Some((host, pool)) = picked else {
                cluster.stats.upstream_cx_none_healthy.inc();
                return cx.local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::UH,
                    "no_healthy_upstream",
                    format!("no healthy upstream in cluster `{}`", cluster.name),
                    &[],
                );
            };
            let attempt_body: Body = if let Some(b) = next_body.take() {
                b
            } else if let Some(b) = single.take() {
                b
            } else {
                boxed(http_body_util::Empty::<Bytes>::new())
            };
            let mut req = Request::new(attempt_body);
            *req.method_mut() = parts.method.clone();
            // Without a retry policy there is one attempt: the URI and headers move into it.
            *req.uri_mut() = if policy.is_some() {
                uri.clone()
            } else {
                std::mem::take(&mut uri)
            };
            *req.version_mut() = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            *req.headers_mut() = if policy.is_some() {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            if attempt_no > 1 {
                req.headers_mut()
                    .insert(X_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt_no));
            }
            let sent_at = Instant::now();
            // The attempt waits for response headers until the soonest of the route's deadline,
            // the per-try timeout and the stream idle timeout (a tie goes to the earlier one).
            let per_try_at = policy
                .as_ref()
                .and_then(|p| p.per_try_timeout)
                .map(|d| sent_at + d);
            let idle_at = stream_idle.map(|d| sent_at + d);
            cx.ex.upstream_host = Some(host.addr);
            cluster.stats.upstream_rq_total.inc();
            cluster.stats.upstream_rq_active.inc();
            let active = host.track_request();
            let mut fut = std::pin::pin!(pool.send(req, h2, upgrade));
            let mut now = sent_at;
            let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
            let waited = loop {
                let mut limit: Option<(Instant, Wait)> = None;
                for c in [
                    route_deadline(now).map(|d| (d, Wait::Route)),
                    per_try_at.map(|d| (d, Wait::PerTry)),
                    idle_at.map(|d| (d, Wait::Idle)),
                ]
                .into_iter()
                .flatten()
                {
                    if limit.is_none_or(|(l, _)| c.0 < l) {
                        limit = Some(c);
                    }
                }
                let Some((at, kind)) = limit else {
                    break Ok(fut.await);
                };
                let sleep = match &mut timer {
                    Some(t) => {
                        t.as_mut().reset(at.into());
                        t
                    }
                    None => timer.insert(cx.ex.conn.take_timer(at)),
                };
                tokio::select! {
                    biased;
                    r = &mut fut => break Ok(r),
                    () = sleep.as_mut() => {
                        now = Instant::now();
                        // The route deadline moves while the request body is still being sent
                        // (it counts from the body's end): look again rather than fire early.
                        if kind == Wait::Route && route_deadline(now).is_some_and(|d| d > now) {
                            continue;
                        }
                        break Err(kind);
                    }
                }
            };
            if let Some(t) = timer {
                cx.ex.conn.keep_timer(t);
            }
            let result = match waited {
                Ok(r) => r.map(Attempt::Response).unwrap_or_else(Attempt::Failed),
                Err(Wait::PerTry) => {
                    cluster.stats.upstream_rq_per_try_timeout.inc();
                    Attempt::PerTryTimeout
                }
                Err(kind) => {
                    drop(active);
                    cluster.stats.upstream_rq_active.dec();
                    if kind == Wait::Idle {
                        // Envoy answers a stream that saw no activity for stream_idle_timeout with
                        // 408 and flag SI; it is not an upstream timeout.
                        return cx.local(
                            StatusCode::REQUEST_TIMEOUT,
                            ResponseFlags::SI,
                            "stream_idle_timeout",
                            "stream timeout".into(),
                            &[],
                        );
                    }
                    cluster.stats.upstream_rq_timeout.inc();
                    cluster.report(&host, Outcome::Timeout);
                    return cx.upstream_timeout();
                }
            };
            drop(active);
            cluster.stats.upstream_rq_active.dec();
            if cluster.outlier.is_some() {
                let outcome = match &result {
                    Attempt::Response(r) => Some(Outcome::Status(r.status().as_u16())),
                    Attempt::Failed(e) if e.is_connect_failure() => Some(Outcome::ConnectFailure),
                    Attempt::Failed(
                        UpstreamError::Overflow(_) | UpstreamError::DownstreamBody(_),
                    ) => None,
                    Attempt::Failed(_) => Some(Outcome::Reset),
                    Attempt::PerTryTimeout => Some(Outcome::Timeout),
                };
                if let Some(outcome) = outcome {
                    cluster.report(&host, outcome);
                }
            }
            if let Attempt::Response(r) = &result {
                upstream_time = sent_at.elapsed();
                if hcm.router.dynamic_stats {
                    cluster.stats.record_status(r.status().as_u16());
                    cluster.stats.upstream_rq_time.record(upstream_time);
                }
            }
            last = result;
            let Some(p) = policy.as_deref() else {
                break;
            };
            // Hosts already tried matter only to a retry.
            tried.push(host);
            if !retriable(p, &last) {
                if attempt_no > 1 {
                    cluster.stats.upstream_rq_retry_success.inc();
                }
                break;
            }
            if attempt_no >= max_attempts {
                cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                cx.ex.flags.insert(ResponseFlags::URX);
                break;
            }
            if (replay.is_none() && !no_body) || upgrade {
                break;
            }
            // Take the replay now, while the last answer can still be returned: the previous
            // attempt's body may still be streaming (on the connection task) and outgrow the buffer.
            if let Some(r) = replay.as_ref() {
                match r.replay() {
                    Some(b) => next_body = Some(boxed(b)),
                    None => break,
                }
            }
            // Like Envoy, the retry breaker counts retries waiting to be sent (in backoff).
            let Some(retry_slot) = cluster.pool.circuit.try_retry() else {
                cluster.stats.upstream_rq_retry_overflow.inc();
                cx.ex.flags.insert(ResponseFlags::UO);
                break;
            };
            cluster.stats.upstream_rq_retry.inc();
            let wait = backoff(p, attempt_no);
            let now = Instant::now();
            if let Some(d) = route_deadline(now)
                && now + wait >= d
            {
                cluster.stats.upstream_rq_timeout.inc();
                return cx.upstream_timeout();
            }
            drop(last);
            tokio::time::sleep(wait).await;
            drop(retry_slot);
        }
        replay.take();

        match last {
            Attempt::Response(resp) => {
                let (mut rparts, rbody) = resp.into_parts();
                let service_time = upstream_time;
                cx.ex.upstream_service_time = Some(service_time);
                // The router's own header, added after the upstream's hop-by-hop headers are gone
                // (an upstream cannot have it removed by listing it in `Connection`).
                let stamp = |h: &mut HeaderMap| {
                    if !hcm.router.suppress_envoy_headers {
                        h.insert(
                            X_UPSTREAM_SERVICE_TIME.clone(),
                            HeaderValue::from(service_time.as_millis() as u64),
                        );
                    }
                };
                if rparts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade {
                    // Splice the two upgraded connections.
                    if let (Some(down), Some(up)) = (down_upgrade.take(), rbody.into_upgraded()) {
                        // An upgraded stream is still a stream: the stream idle timeout ends it
                        // when no byte moves either way for that long.
                        tokio::spawn(async move {
                            let _guard = up.guard;
                            if let Ok(d) = down.await {
                                let mut d = hyper_util::rt::TokioIo::new(d);
                                let mut u = up.io;
                                crate::tcp::splice(&mut d, &mut u, stream_idle).await;
                            }
                        });
                    }
                    stamp(&mut rparts.headers);
                    cx.ex.details = "via_upstream";
                    return cx.finish(Response::from_parts(
                        rparts,
                        ResponseBody::full(Bytes::new()),
                    ));
                }
                strip_response_hop_by_hop(&mut rparts.headers);
                stamp(&mut rparts.headers);
                apply_response_mutations(&mut rparts.headers, table, vh, route, weighted);
                if let Some(c) = hash.set_cookie {
                    rparts.headers.append(header::SET_COOKIE, c);
                }
                rparts.version = Version::HTTP_11;
                cx.finish(Response::from_parts(
                    rparts,
                    ResponseBody::new(Inner::Upstream(rbody), None)
                        .with_idle_timeout(stream_idle)
                        .with_deadline(timeout.map(|t| {
                            let end = request_end_at().unwrap_or_else(Instant::now);
                            tokio::time::Instant::from_std(end + t)
                        })),
                ))
            }
            Attempt::Failed(e) => {
                let flag = e.flag();
                if matches!(e, UpstreamError::Overflow(_)) {
                    return cx.overflow(&cluster.name, &e);
                }
                if let UpstreamError::DownstreamBody(why) = &e {
                    return cx.local(
                        StatusCode::BAD_REQUEST,
                        flag,
                        "downstream_remote_disconnect_or_protocol_error",
                        format!("bad request body: {why}"),
                        &[(header::CONNECTION, HeaderValue::from_static("close"))],
                    );
                }
                let host = cx
                    .ex
                    .upstream_host
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                let details = match &e {
                    UpstreamError::ConnectFailure(_)
                    | UpstreamError::ConnectTimeout
                    | UpstreamError::Tls(_) => {
                        "upstream_reset_before_response_started{connection_failure}"
                    }
                    UpstreamError::ConnectionTermination => {
                        "upstream_reset_before_response_started{connection_termination}"
                    }
                    UpstreamError::RefusedStream | UpstreamError::RemoteReset => {
                        "upstream_reset_before_response_started{remote_reset}"
                    }
                    _ => "upstream_reset_before_response_started{protocol_error}",
                };
                let status = if matches!(e, UpstreamError::Protocol(_)) {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                cx.local(status, flag, details, format!("upstream connect error or disconnect/reset before headers. reset reason: {} (cluster `{}`, endpoint {host})", e.reset_reason(), cluster.name), &[])
            }
            Attempt::PerTryTimeout => {
                cluster.stats.upstream_rq_timeout.inc();
                cx.local(
                    StatusCode::GATEWAY_TIMEOUT,
                    ResponseFlags::UT,
                    "upstream_per_try_timeout",
                    "upstream request timeout".into(),
                    &[],
                )
            }
        }
    }
}

fn strip_response_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(super::is_response_hop_by_hop) {
        return;
    }
    remove_connection_listed(h, false);
    for n in super::RESPONSE_HOP_BY_HOP {
        h.remove(n);
    }
}

/// The upstream request as the primary will send it, for mirrors.
struct ShadowSource<'a> {
    parts: &'a http::request::Parts,
    scheme: &'a str,
    authority: &'a str,
    path_and_query: &'a str,
    timeout: Option<Duration>,
}

/// Sends copies of the request to the mirror clusters whose fraction is drawn. When it had to
/// read the body (taken from `body`), returns the body for the primary: the same bytes when
/// they fit `limit`, else the original stream (and the copies are not sent). `Err` when the
/// downstream body failed while being read.
async fn mirror_request(
    ra: &RouteAction,
    snapshot: &crate::runtime::Snapshot,
    limit: usize,
    src: &ShadowSource<'_>,
    body: &mut Option<Incoming>,
    no_body: bool,
) -> Result<Option<Body>, String> {
    // No allocation unless a copy is actually sent.
    let mut sampled: Vec<&mirror::MirrorPolicy> = Vec::new();
    for m in &ra.mirrors {
        if m.fraction.sample() {
            sampled.push(m);
        }
    }
    if sampled.is_empty() {
        return Ok(None);
    }
    let incoming = if no_body { None } else { body.take() };
    let (primary, buffered) = match incoming {
        None => (None, None),
        Some(b) => match mirror::read_body(boxed(b), limit).await {
            mirror::Read::Complete(b) => (Some(b.body()), Some(b)),
            mirror::Read::TooLarge(b) => {
                for m in sampled {
                    m.counters
                        .body_too_large
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(Some(b));
            }
            mirror::Read::Failed(e) => return Err(e),
        },
    };
    let shadow = mirror::Shadow {
        method: &src.parts.method,
        scheme: src.scheme,
        authority: src.authority,
        path_and_query: src.path_and_query,
        headers: &src.parts.headers,
        downstream_version: src.parts.version,
        body: buffered.as_ref(),
        timeout: src.timeout,
    };
    for m in sampled {
        match snapshot.clusters.get(&m.cluster) {
            Some(c) => mirror::spawn(m, c.clone(), &shadow),
            None => {
                m.counters
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    Ok(primary)
}

/// 503 `DF` for a dynamic forward proxy destination that did not resolve.
fn dns_failure(
    cx: Ctx,
    cluster: &Cluster,
    authority: &str,
    e: &crate::upstream::dfp::DnsError,
) -> Response<ResponseBody> {
    cluster.stats.upstream_cx_none_healthy.inc();
    cx.local(
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::DF,
        "dns_resolution_failure",
        format!(
            "DNS resolution failure for `{authority}` (cluster `{}`): {e}",
            cluster.name
        ),
        &[],
    )
}

async fn connect_tunnel(
    mut cx: Ctx,
    parts: http::request::Parts,
    cluster: Arc<Cluster>,
    authority: &str,
    idle: Option<Duration>,
) -> Response<ResponseBody> {
    let lb_ctx = LbContext {
        hash: None,
        excluded: &[],
        max_picks: None,
    };
    let picked = match &cluster.dfp {
        None => cluster.pick(&lb_ctx),
        Some(cache) => match cache.resolve(authority, 443).await {
            Ok(found) => Some(found),
            Err(e) => return dns_failure(cx, &cluster, authority, &e),
        },
    };
    let Some((host, pool)) = picked else {
        return cx.local(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::UH,
            "no_healthy_upstream",
            format!("no healthy upstream in cluster `{}`", cluster.name),
            &[],
        );
    };
    cx.ex.upstream_host = Some(host.addr);
    // The cluster's connect path: `max_connections`, TLS origination, connection stats.
    let (stream, guard) = match pool.connect_stream().await {
        Ok(up) => up,
        Err(e @ UpstreamError::Overflow(_)) => return cx.overflow(&cluster.name, &e),
        Err(e) => {
            cluster.report(&host, Outcome::ConnectFailure);
            return cx.local(
                StatusCode::SERVICE_UNAVAILABLE,
                e.flag(),
                "upstream_reset_before_response_started{connection_failure}",
                format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: {} (cluster `{}`, endpoint {})",
                    e.reset_reason(),
                    cluster.name,
                    host.addr
                ),
                &[],
            );
        }
    };
    // The tunnel is one stream: it ends after the stream idle timeout without a byte either way.
    let upgrade = hyper::upgrade::on(Request::from_parts(parts, ()));
    tokio::spawn(async move {
        let _guard = guard;
        if let Ok(up) = upgrade.await {
            let mut d = hyper_util::rt::TokioIo::new(up);
            let mut u = stream;
            crate::tcp::splice(&mut d, &mut u, idle).await;
        }
    });
    cx.ex.details = "via_upstream";
    cx.finish(Response::new(ResponseBody::full(Bytes::new())))
}
