//! Request mirroring (`RouteAction.request_mirror_policies`, Istio's `mirror`): for the sampled
//! fraction of requests, a copy goes to another cluster with its authority suffixed `-shadow`
//! (`reviews:9080` → `reviews-shadow:9080`, as Envoy does). The copy is fire-and-forget on a
//! task of its own: the primary response never waits for it, and its outcome only shows in the
//! mirror cluster's stats, these counters and the debug log.
//!
//! A request body is mirrored only when it fits the primary cluster's retry buffer: it is read
//! once and the same bytes go to both; a larger body streams to the primary alone (counted in
//! `body_too_large`). Nothing here runs for routes without mirror policies.

use super::fraction::Fraction;
use crate::config::{ConfigError, Ctx};
use crate::router::split_port;
use crate::upstream::host::LbContext;
use crate::upstream::pool::{Body, BoxError};
use crate::upstream::{Cluster, Protocol};
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest a mirrored exchange may take when the route has no timeout.
pub const MAX_MIRROR_TIME: Duration = Duration::from_secs(60);

/// One compiled `RequestMirrorPolicy`.
#[derive(Debug)]
pub struct MirrorPolicy {
    pub cluster: String,
    pub fraction: Fraction,
    /// `!disable_shadow_host_suffix_append`.
    pub shadow_suffix: bool,
    pub counters: Arc<MirrorCounters>,
}

/// What happened to mirrored requests of one policy.
#[derive(Debug, Default)]
pub struct MirrorCounters {
    /// Copies sent.
    pub sent: AtomicU64,
    /// Copies that got no response (connect failure, reset, timeout, overflow, unknown cluster).
    pub failed: AtomicU64,
    /// Sampled requests not mirrored because their body outgrew the buffer.
    pub body_too_large: AtomicU64,
}

/// Compiles `request_mirror_policies` (`f` is that field's path).
pub fn compile(
    ctx: &Ctx,
    f: &str,
    policies: &[rpb::route_action::RequestMirrorPolicy],
) -> Result<Vec<MirrorPolicy>, ConfigError> {
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let pf = format!("{f}[{i}]");
        if !p.cluster_header.is_empty() {
            return Err(ctx.err(format!("{pf}.cluster_header"), "not supported"));
        }
        if p.trace_sampled.is_some() {
            return Err(ctx.err(format!("{pf}.trace_sampled"), "not supported"));
        }
        if !p.request_headers_mutations.is_empty() {
            return Err(ctx.err(format!("{pf}.request_headers_mutations"), "not supported"));
        }
        if p.cluster.is_empty() {
            return Err(ctx.err(format!("{pf}.cluster"), "a cluster is required"));
        }
        out.push(MirrorPolicy {
            cluster: p.cluster.clone(),
            fraction: Fraction::from_runtime(
                ctx,
                &format!("{pf}.runtime_fraction"),
                p.runtime_fraction.as_ref(),
                Fraction::ALWAYS,
            )?,
            shadow_suffix: !p.disable_shadow_host_suffix_append,
            counters: Arc::default(),
        });
    }
    Ok(out)
}

/// `host[:port]` → `host-shadow[:port]`.
pub fn shadow_authority(authority: &str) -> String {
    let (host, port) = split_port(authority);
    match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{authority}-shadow"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// A request body read into memory: data chunks and trailers, sendable any number of times.
#[derive(Debug, Clone, Default)]
pub struct Buffered {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: u64,
}

impl Buffered {
    /// A fresh body over the same bytes.
    pub fn body(&self) -> Body {
        BufBody {
            chunks: self.chunks.iter().cloned().collect(),
            trailers: self.trailers.clone(),
            remaining: self.len,
        }
        .boxed_unsync()
    }
}

struct BufBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remaining: u64,
}

impl http_body::Body for BufBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.chunks.pop_front() {
            self.remaining -= c.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The chunks already read, then the rest of the original body.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let already: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + already);
        if let Some(u) = rest.upper() {
            h.set_upper(u + already);
        }
        h
    }
}

/// The outcome of reading a body for mirroring.
pub enum Read {
    /// All of it, within the limit.
    Complete(Buffered),
    /// Larger than the limit: the body to send to the primary alone (nothing is lost).
    TooLarge(Body),
    /// The downstream body failed.
    Failed(String),
}

/// Reads `body` completely if it stays within `limit` bytes.
pub async fn read_body(mut body: Body, limit: usize) -> Read {
    if body.size_hint().lower() > limit as u64 {
        return Read::TooLarge(body);
    }
    let mut b = Buffered::default();
    loop {
        match body.frame().await {
            None => return Read::Complete(b),
            Some(Err(e)) => return Read::Failed(e.to_string()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    b.len += d.len() as u64;
                    b.chunks.push(d);
                    if b.len > limit as u64 {
                        return Read::TooLarge(
                            Prefixed {
                                prefix: b.chunks.into(),
                                rest: body,
                            }
                            .boxed_unsync(),
                        );
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        b.trailers = Some(t);
                    }
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending

/// The upstream request as the primary sends it (after header mutations and rewrites).
pub struct Shadow<'a> {
    pub method: &'a Method,
    pub scheme: &'a str,
    /// Authority sent upstream (after host rewrite).
    pub authority: &'a str,
    pub path_and_query: &'a str,
    /// Upstream headers, Host included.
    pub headers: &'a HeaderMap,
    pub downstream_version: Version,
    pub body: Option<&'a Buffered>,
    pub timeout: Option<Duration>,
}

/// Sends one copy to `cluster` on a task of its own and returns at once.
pub fn spawn(policy: &MirrorPolicy, cluster: Arc<Cluster>, c: &Shadow<'_>) {
    let authority = if policy.shadow_suffix {
        shadow_authority(c.authority)
    } else {
        c.authority.to_string()
    };
    let h2 = match cluster.protocol {
        Protocol::Http2 => true,
        Protocol::Http1 => false,
        Protocol::Downstream => c.downstream_version == Version::HTTP_2,
    };
    let uri = if h2 {
        format!("{}://{authority}{}", c.scheme, c.path_and_query).parse::<Uri>()
    } else {
        c.path_and_query.parse::<Uri>()
    };
    let Ok(uri) = uri else {
        policy.counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut headers = c.headers.clone();
    if h2 {
        headers.remove(header::HOST);
    } else if let Ok(v) = HeaderValue::from_str(&authority) {
        headers.insert(header::HOST, v);
    }
    let body = c
        .body
        .map_or_else(|| Buffered::default().body(), Buffered::body);
    let mut req = Request::new(body);
    *req.method_mut() = c.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let timeout = c.timeout.unwrap_or(MAX_MIRROR_TIME).min(MAX_MIRROR_TIME);
    let counters = policy.counters.clone();
    counters.sent.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let ok = tokio::time::timeout(timeout, send(&cluster, req, h2, &authority))
            .await
            .unwrap_or_else(|_| {
                cluster.stats.upstream_rq_timeout.inc();
                Err("timeout".into())
            });
        if let Err(e) = ok {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, error = %e, "mirrored request failed");
        }
    });
}

async fn send(
    cluster: &Arc<Cluster>,
    req: Request<Body>,
    h2: bool,
    authority: &str,
) -> Result<(), String> {
    let Some(_slot) = cluster.pool.circuit.try_request() else {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return Err("overflow".into());
    };
    let (host, pool) = match &cluster.dfp {
        Some(cache) => cache
            .resolve(authority, 80)
            .await
            .map_err(|e| e.to_string())?,
        None => cluster
            .pick(&LbContext {
                hash: None,
                excluded: &[],
                max_picks: None,
            })
            .ok_or_else(|| {
                cluster.stats.upstream_cx_none_healthy.inc();
                "no healthy upstream".to_string()
            })?,
    };
    cluster.stats.upstream_rq_total.inc();
    cluster.stats.upstream_rq_active.inc();
    let active = host.track_request();
    let started = std::time::Instant::now();
    let r = pool.send(req, h2, false).await;
    drop(active);
    cluster.stats.upstream_rq_active.dec();
    let resp = r.map_err(|e| e.to_string())?;
    cluster.stats.record_status(resp.status().as_u16());
    cluster.stats.upstream_rq_time.record(started.elapsed());
    // Read the body to its end so that the connection goes back to the pool.
    resp.into_body()
        .collect()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[test]
    fn shadow_host_as_envoy() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn compiles_policies() {
        let ra: rpb::RouteAction = weft_xds::from_yaml(
            r#"
cluster: a
request_mirror_policies:
- {cluster: m1}
- {cluster: m2, runtime_fraction: {default_value: {numerator: 50}}, disable_shadow_host_suffix_append: true}
"#,
            "t",
        )
        .unwrap();
        let ps = compile(
            &Ctx::new("route_config", "r"),
            "route.request_mirror_policies",
            &ra.request_mirror_policies,
        )
        .unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            (ps[0].fraction, ps[0].shadow_suffix),
            (Fraction::ALWAYS, true)
        );
        assert_eq!(
            (ps[1].fraction.ppm(), ps[1].shadow_suffix),
            (500_000, false)
        );
        let ra: rpb::RouteAction = weft_xds::from_yaml(
            "cluster: a\nrequest_mirror_policies: [{cluster_header: x}]",
            "t",
        )
        .unwrap();
        let e = compile(
            &Ctx::new("route_config", "r"),
            "route.request_mirror_policies",
            &ra.request_mirror_policies,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("request_mirror_policies[0].cluster_header"),
            "{e}"
        );
    }

    fn boxed<B>(b: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        b.map_err(Into::into).boxed_unsync()
    }

    #[tokio::test]
    async fn small_bodies_are_read_once_and_replayed() {
        let Read::Complete(b) = read_body(boxed(Full::new(Bytes::from_static(b"hello"))), 16).await
        else {
            panic!("expected a complete body")
        };
        let one = b.body();
        assert_eq!(one.size_hint().exact(), Some(5));
        assert_eq!(one.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(b.body().collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn large_bodies_stream_on_whole() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 10]))))
            .collect();
        let body = boxed(StreamBody::new(futures_util::stream::iter(chunks)));
        let Read::TooLarge(rest) = read_body(body, 15).await else {
            panic!("expected too large")
        };
        let all = rest.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 40);
        assert_eq!(&all[..10], b"aaaaaaaaaa");
        assert_eq!(&all[30..], b"dddddddddd");
        // Known too large from Content-Length: not read at all.
        let big = boxed(Full::new(Bytes::from(vec![0u8; 100])));
        assert!(matches!(read_body(big, 10).await, Read::TooLarge(_)));
    }
}
