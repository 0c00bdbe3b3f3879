//! The TCP proxy network filter: opaque byte streams to a cluster (or a weighted set of
//! clusters), with connect timeout, idle timeout, stats and access logs. Used for declared TCP
//! ports and for traffic the HTTP inspector did not recognise.

use crate::access_log::{AccessLogger, LogRecord};
use crate::config::{ConfigError, Ctx};
use crate::flags::ResponseFlags;
use crate::runtime::Shared;
use crate::upstream::host::LbContext;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tpb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

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
    let idle_timeout = match &t.idle_timeout {
        None => Some(Duration::from_secs(3600)),
        Some(d) => Some(crate::config::duration(
            ctx,
            &format!("{f}.idle_timeout"),
            d,
        )?)
        .filter(|d| !d.is_zero()),
    };
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
    match &cluster {
        None => flags.insert(ResponseFlags::NC),
        Some(c) => {
            let mut tried = Vec::new();
            let mut upstream = None;
            for _ in 0..t.max_connect_attempts {
                let Some((host, _)) = c.pick(&LbContext {
                    hash: None,
                    excluded: &tried,
                }) else {
                    flags.insert(ResponseFlags::UH);
                    break;
                };
                up_host = Some(host.addr);
                c.stats.upstream_cx_total.inc();
                match tokio::time::timeout(
                    c.pool.connect_timeout,
                    tokio::net::TcpStream::connect(host.addr),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        upstream = Some(s);
                        break;
                    }
                    _ => {
                        c.stats.upstream_cx_connect_fail.inc();
                        c.report(&host, crate::upstream::outlier::Outcome::ConnectFailure);
                        tried.push(host);
                    }
                }
            }
            match upstream {
                None => {
                    if !flags.contains(ResponseFlags::UH) {
                        flags.insert(ResponseFlags::UF);
                    }
                }
                Some(mut up) => {
                    let _ = up.set_nodelay(true);
                    c.stats.upstream_cx_active.inc();
                    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
                    // The idle timeout bounds the whole session here when nothing else ends it;
                    // copy_bidirectional has no per-read hook, so it is applied as a session cap.
                    let r = match t.idle_timeout {
                        Some(d) => tokio::time::timeout(d, copy).await.ok(),
                        None => Some(copy.await),
                    };
                    if let Some(Ok((a, b))) = r {
                        received = a;
                        sent = b;
                    }
                    c.stats.upstream_cx_active.dec();
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
        upstream_transport_failure_reason: None,
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
