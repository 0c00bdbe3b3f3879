//! The TCP proxy network filter: opaque byte streams to a cluster (or a weighted set of
//! clusters), with connect timeout, idle timeout, stats and access logs. Used for declared TCP
//! ports and for traffic the HTTP inspector did not recognise.
//!
//! Upstream connections go through the cluster's pool (`HostPool::connect_stream`) so TLS
//! origination, the `max_connections` breaker and connection stats apply as they do for HTTP;
//! nothing here dials a socket itself. [`splice`] is the byte pump shared with CONNECT tunnels:
//! its idle timeout restarts whenever bytes move, and it must not cap a busy session.

use crate::access_log::{AccessLogger, LogRecord};
use crate::config::{ConfigError, Ctx};
use crate::flags::ResponseFlags;
use crate::runtime::Shared;
use crate::upstream::host::LbContext;
use crate::upstream::pool::UpstreamError;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tpb;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// (cluster, weight); one entry with weight 1 for a plain `cluster`.
    pub clusters: Vec<(String, u64)>,
    pub total_weight: u64,
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<Arc<AccessLogger>>,
    pub max_connect_attempts: u32,
}

pub fn build(ctx: &Ctx, f: &str, t: &tpb::TcpProxy) -> Result<TcpProxy, ConfigError> {
    use tpb::tcp_proxy::ClusterSpecifier as C;
    let clusters: Vec<(String, u64)> = match &t.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => vec![(c.clone(), 1)],
        Some(C::WeightedClusters(w)) => w
            .clusters
            .iter()
            .filter(|c| c.weight > 0)
            .map(|c| (c.name.clone(), c.weight as u64))
            .collect(),
        _ => {
            return Err(ctx.err(
                format!("{f}.cluster"),
                "a cluster or weighted_clusters is required",
            ));
        }
    };
    let total_weight = clusters.iter().map(|c| c.1).sum();
    if total_weight == 0 {
        return Err(ctx.err(
            format!("{f}.weighted_clusters"),
            "the weights must not all be zero",
        ));
    }
    if t.tunneling_config.is_some() {
        return Err(ctx.err(
            format!("{f}.tunneling_config"),
            "tunneling over HTTP is not supported",
        ));
    }
    let mut access_logs = Vec::new();
    for (i, al) in t.access_log.iter().enumerate() {
        access_logs
            .push(Arc::new(crate::access_log::from_proto(al).map_err(
                |e| ctx.err(format!("{f}.access_log[{i}]"), e.to_string()),
            )?));
    }
    let idle_timeout = crate::config::timeout(
        ctx,
        &format!("{f}.idle_timeout"),
        t.idle_timeout.as_ref(),
        Some(Duration::from_secs(3600)),
    )?;
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        clusters,
        total_weight,
        idle_timeout,
        access_logs,
        max_connect_attempts: t
            .max_connect_attempts
            .as_ref()
            .map_or(1, |v| v.value.max(1)),
    })
}

/// Proxies one downstream connection until either side closes (or the idle timeout).
pub async fn proxy<S>(
    t: &TcpProxy,
    mut down: S,
    remote: SocketAddr,
    local: SocketAddr,
    sni: Option<&str>,
    shared: &Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let start_time = SystemTime::now();
    let mut flags = ResponseFlags::NONE;
    let mut point = rand::random::<u64>() % t.total_weight;
    let name = t
        .clusters
        .iter()
        .find(|(_, w)| {
            if point < *w {
                true
            } else {
                point -= *w;
                false
            }
        })
        .map_or("", |(n, _)| n.as_str());
    let snapshot = shared.snapshot();
    let cluster = snapshot.clusters.get(name).cloned();
    let (mut up_host, mut sent, mut received) = (None, 0u64, 0u64);
    let mut tls_failure: Option<String> = None;
    match &cluster {
        None => flags.insert(ResponseFlags::NC),
        Some(c) => {
            let mut tried = Vec::new();
            let mut upstream = None;
            for _ in 0..t.max_connect_attempts {
                let Some((host, pool)) = c.pick(&LbContext {
                    hash: None,
                    excluded: &tried,
                    max_picks: None,
                }) else {
                    flags.insert(ResponseFlags::UH);
                    break;
                };
                up_host = Some(host.addr);
                match pool.connect_stream().await {
                    Ok(up) => {
                        upstream = Some(up);
                        tls_failure = None;
                        break;
                    }
                    Err(UpstreamError::Overflow(_)) => {
                        // Envoy closes at once on a connection-pool overflow (no retry).
                        flags.insert(ResponseFlags::UO);
                        break;
                    }
                    Err(e) => {
                        if let UpstreamError::Tls(e) = &e {
                            // Envoy's form: one token, `TLS_error:...`.
                            tls_failure = Some(format!("TLS_error:{e}").replace(' ', "_"));
                        }
                        c.report(&host, crate::upstream::outlier::Outcome::ConnectFailure);
                        tried.push(host);
                    }
                }
            }
            match upstream {
                None => {
                    if !flags.contains(ResponseFlags::UH) && !flags.contains(ResponseFlags::UO) {
                        flags.insert(ResponseFlags::UF);
                    }
                }
                Some((mut up, _guard)) => {
                    let r = splice(&mut down, &mut up, t.idle_timeout).await;
                    received = r.a_read;
                    sent = r.a_written;
                }
            }
        }
    }
    if t.access_logs.is_empty() {
        return;
    }
    let rec = LogRecord {
        start_time,
        duration: start.elapsed(),
        request: None,
        response_code: 0,
        response_headers: None,
        response_trailers: None,
        protocol: "-",
        flags,
        response_code_details: "",
        connection_termination_details: None,
        upstream_transport_failure_reason: tls_failure.as_deref(),
        bytes_received: received,
        bytes_sent: sent,
        upstream_service_time: None,
        upstream_host: up_host,
        upstream_cluster: name,
        upstream_local_address: None,
        downstream_local_address: local,
        downstream_remote_address: remote,
        requested_server_name: sni,
        route_name: "",
        authority: "",
    };
    for l in &t.access_logs {
        l.log(&rec);
    }
}

/// What [`splice`] moved, from side `a`'s point of view, and how it ended.
#[derive(Debug, Default)]
pub struct Spliced {
    /// Bytes read from `a` (sent on towards `b`).
    pub a_read: u64,
    /// Bytes written to `a` (received from `b`).
    pub a_written: u64,
    /// The idle timeout fired: nothing moved in either direction for that long.
    pub idle_timeout: bool,
}

/// Copies bytes both ways until both sides have closed (half-closes are passed on), either side
/// fails, or — with `idle` — no byte moved in either direction for `idle` (Envoy's tcp_proxy
/// `idle_timeout` semantics: activity restarts the timer, a busy session is never cut).
///
/// Activity is a timestamp bumped by the streams' own reads and writes; one timer checks it
/// only when it fires, so bytes moving cost no timer reset.
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let track = idle.map(|_| (&last, base));
    let mut ta = Tracked {
        io: a,
        track,
        read: 0,
        written: 0,
    };
    let mut tb = Tracked {
        io: b,
        track,
        read: 0,
        written: 0,
    };
    let mut idle_timeout = false;
    {
        let copy = tokio::io::copy_bidirectional(&mut ta, &mut tb);
        match idle {
            None => {
                let _ = copy.await;
            }
            Some(d) => {
                tokio::pin!(copy);
                let timer = tokio::time::sleep(d);
                tokio::pin!(timer);
                loop {
                    tokio::select! {
                        _ = &mut copy => break,
                        () = &mut timer => {
                            let due = base + Duration::from_nanos(last.load(Ordering::Relaxed)) + d;
                            if due <= Instant::now() {
                                idle_timeout = true;
                                break;
                            }
                            timer.as_mut().reset(due.into());
                        }
                    }
                }
            }
        }
    }
    Spliced {
        a_read: ta.read,
        a_written: ta.written,
        idle_timeout,
    }
}

/// A stream that counts its bytes and, when tracked, stamps the time of its last activity.
struct Tracked<'a, T: ?Sized> {
    io: &'a mut T,
    /// (last activity in ns since the base instant, base instant)
    track: Option<(&'a AtomicU64, Instant)>,
    read: u64,
    written: u64,
}

impl<T: ?Sized> Tracked<'_, T> {
    fn active(&self) {
        if let Some((last, base)) = self.track {
            let ns = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            last.store(ns, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read += n as u64;
            self.active();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.written += n as u64;
            self.active();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every test body runs under a deadline.
    async fn within(f: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test did not finish within 10 s");
    }

    #[tokio::test]
    async fn an_active_session_outlives_the_idle_timeout() {
        within(async {
            let (mut a, mut a_peer) = tokio::io::duplex(64);
            let (mut b, mut b_peer) = tokio::io::duplex(64);
            let pump = tokio::spawn(async move {
                splice(&mut a, &mut b, Some(Duration::from_millis(300))).await
            });
            // A byte every 100 ms for 1.5 s, alternating directions.
            let mut one = [0u8; 1];
            for i in 0..15u8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if i % 2 == 0 {
                    a_peer.write_all(&[i]).await.unwrap();
                    b_peer.read_exact(&mut one).await.unwrap();
                } else {
                    b_peer.write_all(&[i]).await.unwrap();
                    a_peer.read_exact(&mut one).await.unwrap();
                }
                assert_eq!(one[0], i);
            }
            assert!(!pump.is_finished(), "an active session was cut");
            drop(a_peer);
            drop(b_peer);
            let r = pump.await.unwrap();
            assert!(!r.idle_timeout);
            assert_eq!((r.a_read, r.a_written), (8, 7));
        })
        .await;
    }

    #[tokio::test]
    async fn a_silent_session_ends_after_the_idle_timeout() {
        within(async {
            let (mut a, _a_peer) = tokio::io::duplex(64);
            let (mut b, _b_peer) = tokio::io::duplex(64);
            let start = Instant::now();
            let r = splice(&mut a, &mut b, Some(Duration::from_millis(300))).await;
            let took = start.elapsed();
            assert!(r.idle_timeout);
            // Real time on a busy machine: not early, and not much late.
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
                "{took:?}"
            );
            // Nothing was forwarded, and the pump did not wait for the peers to close.
            assert_eq!((r.a_read, r.a_written), (0, 0));
        })
        .await;
    }

    #[tokio::test]
    async fn without_an_idle_timeout_the_copy_runs_to_the_end() {
        within(async {
            let (mut a, mut a_peer) = tokio::io::duplex(64);
            let (mut b, mut b_peer) = tokio::io::duplex(64);
            let pump = tokio::spawn(async move { splice(&mut a, &mut b, None).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            a_peer.write_all(b"hello").await.unwrap();
            a_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            b_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            b_peer.shutdown().await.unwrap();
            let r = pump.await.unwrap();
            assert_eq!((r.a_read, r.a_written, r.idle_timeout), (5, 0, false));
        })
        .await;
    }
}
