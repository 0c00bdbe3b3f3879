//! Upstream clusters: endpoints, load balancing, health (outlier detection), circuit breakers
//! and connection pools, compiled from Envoy `Cluster` resources.
//!
//! A `Cluster` keeps its runtime state (pools, outlier state, breaker counters) for as long as its
//! config does not change; endpoint updates swap an immutable `Endpoints` snapshot and keep the
//! pools of endpoints that stay.

// Deprecated Envoy fields are still accepted: existing configs use them.
#![allow(deprecated)]

pub mod circuit;
pub mod dfp;
pub mod h1;
pub mod hash;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;

use crate::config::{ConfigError, Ctx, decode_any, opt_duration, timeout};
use crate::fastmap::FastMap;
use crate::stats::{ClusterStats, Stats};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upb;
use host::{EndpointSet, Host, LbContext, Locality};
use lb::LbConfig;
use outlier::OutlierDetector;
use pool::{HostPool, PoolSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Same as the downstream request.
    Downstream,
}

/// One cluster's hosts plus their pools; swapped whole on endpoint updates.
#[derive(Debug)]
pub struct Endpoints {
    pub set: EndpointSet,
    pools: FastMap<SocketAddr, Arc<HostPool>>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    /// Encoded resource, to keep runtime state when a reload leaves the cluster unchanged.
    pub source: Vec<u8>,
    pub protocol: Protocol,
    pub lb: LbConfig,
    pub endpoints: ArcSwap<Endpoints>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub stats: Arc<ClusterStats>,
    pub pool: Arc<PoolSettings>,
    /// Request bodies up to this size are kept for retries.
    pub retry_buffer_limit: usize,
    /// For EDS clusters, the ClusterLoadAssignment name to follow.
    pub eds_service: Option<String>,
    /// Version of the ClusterLoadAssignment last applied (EDS clusters).
    pub eds_version: std::sync::Mutex<Option<String>>,
    /// Dynamic forward proxy clusters: hosts come from request authorities through this cache
    /// (`pick` finds nothing for them).
    pub dfp: Option<Arc<dfp::DnsCache>>,
}

impl Cluster {
    /// Picks a host and its pool for one attempt.
    pub fn pick(&self, ctx: &LbContext<'_>) -> Option<(Arc<Host>, Arc<HostPool>)> {
        let eps = self.endpoints.load();
        let host = eps.set.pick(ctx)?;
        let pool = eps.pools.get(&host.addr)?.clone();
        Some((host, pool))
    }

    /// Reports one attempt's outcome to outlier detection and refreshes its stats.
    pub fn report(&self, host: &Host, outcome: outlier::Outcome) {
        if let Some(o) = &self.outlier {
            o.report(self.endpoints.load().set.hosts(), host, outcome);
            self.sync_outlier_stats();
        }
    }

    /// Copies outlier-detection counters into the cluster's stats.
    pub fn sync_outlier_stats(&self) {
        if let Some(o) = &self.outlier {
            self.stats
                .outlier_detection_ejections_active
                .set(i64::from(o.ejections_active()));
            let total = o.ejections_total();
            let seen = self.stats.outlier_detection_ejections_total.get();
            if total > seen {
                self.stats
                    .outlier_detection_ejections_total
                    .add(total - seen);
            }
        }
    }

    /// Replaces the endpoint set, keeping the pools (and host state) of endpoints that stay.
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        let old = self.endpoints.load();
        let old_hosts: HashMap<SocketAddr, &Arc<Host>> =
            old.set.hosts().iter().map(|h| (h.addr, h)).collect();
        let hosts: Vec<Arc<Host>> = hosts
            .into_iter()
            .map(|mut h| match old_hosts.get(&h.addr) {
                Some(o)
                    if o.weight == h.weight
                        && o.priority == h.priority
                        && o.locality == h.locality =>
                {
                    Arc::clone(o)
                }
                Some(o) => {
                    // The same endpoint with new attributes: as in Envoy, not a new host for
                    // slow start.
                    if let Some(fresh) = Arc::get_mut(&mut h) {
                        fresh.added = o.added;
                    }
                    h
                }
                None => h,
            })
            .collect();
        let pools = hosts
            .iter()
            .map(|h| {
                (
                    h.addr,
                    old.pools
                        .get(&h.addr)
                        .cloned()
                        .unwrap_or_else(|| HostPool::new(h.addr, self.pool.clone())),
                )
            })
            .collect();
        self.endpoints.store(Arc::new(Endpoints {
            set: EndpointSet::new(hosts, &self.lb),
            pools,
        }));
    }
}

/// Compiles a Cluster resource. DNS clusters start resolving in the background (the returned
/// cluster has no hosts until the first answer).
pub fn build(c: &cpb::Cluster, stats: &Stats, xds: bool) -> Result<Arc<Cluster>, ConfigError> {
    let ctx = Ctx::new("cluster", &c.name);
    if c.name.is_empty() {
        return Err(ctx.err("name", "a cluster needs a name"));
    }
    use cpb::cluster::{ClusterDiscoveryType as T, DiscoveryType as D};
    let mut dfp_config = None;
    let kind = match &c.cluster_discovery_type {
        None => D::Static,
        Some(T::Type(t)) => {
            D::try_from(*t).map_err(|_| ctx.err("type", format!("unknown type {t}")))?
        }
        Some(T::ClusterType(ct)) => {
            dfp_config = Some(dfp::config(&ctx, c, ct)?);
            D::Static
        }
    };
    if kind == D::OriginalDst || (kind == D::Eds && !xds) {
        return Err(ctx.err(
            "type",
            format!(
                "{} clusters need an xDS source (dynamic_resources.ads_config); not available here",
                kind.as_str_name()
            ),
        ));
    }
    let eds_service = (kind == D::Eds).then(|| {
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| c.name.clone())
    });
    let connect_timeout = opt_duration(&ctx, "connect_timeout", c.connect_timeout.as_ref())?
        .unwrap_or(Duration::from_secs(5));
    let lb = if dfp_config.is_some() {
        // CLUSTER_PROVIDED: the host is the request's.
        LbConfig::default()
    } else {
        lb::lb_config_from_cluster(c).map_err(|u| ctx.err(u.field, u.reason))?
    };
    let circuit = Arc::new(
        circuit::CircuitBreakers::from_proto(c.circuit_breakers.as_ref())
            .map_err(|u| ctx.err(format!("circuit_breakers.{}", u.field), u.reason))?,
    );
    let outlier = c
        .outlier_detection
        .as_ref()
        .map(|o| {
            outlier::OutlierConfig::from_proto(o)
                .map_err(|u| ctx.err(format!("outlier_detection.{}", u.field), u.reason))
        })
        .transpose()?
        .map(|cfg| Arc::new(OutlierDetector::new(cfg)));

    // Protocol and HTTP options.
    let mut protocol = if c.http2_protocol_options.is_some() {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    // The HTTP/2 options in force (the typed extension's replace the deprecated field's):
    // where they are, and their `max_concurrent_streams`.
    let streams_of =
        |f: String, o: &envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions| {
            (f, o.max_concurrent_streams.map(|v| v.value))
        };
    let mut h2_streams = c
        .http2_protocol_options
        .as_ref()
        .map(|o| streams_of("http2_protocol_options".into(), o));
    let mut common = c.common_http_protocol_options;
    for (k, any) in &c.typed_extension_protocol_options {
        let f = format!("typed_extension_protocol_options[{k:?}]");
        if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
            return Err(ctx.err(
                f,
                "only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is supported",
            ));
        }
        let o: upb::HttpProtocolOptions = decode_any(&ctx, &f, any)?;
        use upb::http_protocol_options::{
            UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
        };
        protocol = match &o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(P::Http2ProtocolOptions(h2)) => {
                    h2_streams = Some(streams_of(
                        format!("{f}.explicit_http_config.http2_protocol_options"),
                        h2,
                    ));
                    Protocol::Http2
                }
                Some(P::HttpProtocolOptions(_)) | None => Protocol::Http1,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(ctx.err(
                        format!("{f}.explicit_http_config"),
                        "HTTP/3 is not supported",
                    ));
                }
            },
            Some(U::UseDownstreamProtocolConfig(d)) => {
                if let Some(h2) = &d.http2_protocol_options {
                    h2_streams = Some(streams_of(
                        format!("{f}.use_downstream_protocol_config.http2_protocol_options"),
                        h2,
                    ));
                }
                Protocol::Downstream
            }
            Some(U::AutoConfig(_)) => {
                return Err(ctx.err(
                    format!("{f}.auto_config"),
                    "ALPN auto protocol selection is not supported; use explicit_http_config",
                ));
            }
            None => protocol,
        };
        if o.common_http_protocol_options.is_some() {
            common = o.common_http_protocol_options;
        }
    }
    let idle_timeout = timeout(
        &ctx,
        "common_http_protocol_options.idle_timeout",
        common.as_ref().and_then(|c| c.idle_timeout.as_ref()),
        Some(Duration::from_secs(3600)),
    )?;
    // Envoy's range and default (2^31 - 1: in effect, one connection).
    let max_concurrent_streams = match h2_streams.and_then(|(f, v)| v.map(|v| (f, v))) {
        None => pool::DEFAULT_MAX_CONCURRENT_STREAMS,
        Some((_, v)) if (1..=pool::DEFAULT_MAX_CONCURRENT_STREAMS).contains(&v) => v,
        Some((f, v)) => {
            return Err(ctx.err(
                format!("{f}.max_concurrent_streams"),
                format!("{v} is out of range: 1 to 2147483647"),
            ));
        }
    };
    let max_connection_duration = timeout(
        &ctx,
        "common_http_protocol_options.max_connection_duration",
        common
            .as_ref()
            .and_then(|c| c.max_connection_duration.as_ref()),
        None,
    )?;
    let max_requests_per_connection = common
        .as_ref()
        .and_then(|c| c.max_requests_per_connection.as_ref())
        .or(c.max_requests_per_connection.as_ref())
        .map_or(0, |v| v.value);

    let tls = match &c.transport_socket {
        None => None,
        Some(ts) => {
            use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
            match &ts.config_type {
                Some(ConfigType::TypedConfig(any))
                    if any.type_url.ends_with(
                        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                    ) =>
                {
                    None
                }
                Some(ConfigType::TypedConfig(any)) => {
                    let u: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext =
                        decode_any(&ctx, "transport_socket.typed_config", any)?;
                    // No SNI unless `sni` says so, and no name check (Envoy's semantics).
                    Some(crate::tls::client_config(
                        &ctx,
                        "transport_socket.typed_config",
                        &u,
                        protocol == Protocol::Http2,
                        protocol == Protocol::Downstream,
                    )?)
                }
                None => None,
            }
        }
    };

    let stats = stats.cluster(&c.name);
    let pool = Arc::new(PoolSettings {
        cluster: Arc::from(c.name.as_str()),
        connect_timeout,
        tls,
        idle_timeout,
        max_requests_per_connection,
        max_connection_duration,
        max_concurrent_streams,
        circuit,
        stats: stats.clone(),
        freed: tokio::sync::Notify::new(),
        waiters: std::sync::atomic::AtomicUsize::new(0),
    });
    let retry_buffer_limit = c
        .per_connection_buffer_limit_bytes
        .as_ref()
        .map_or(1 << 20, |v| v.value as usize);

    let (hosts, names) =
        hosts_from_assignment(&ctx, c.load_assignment.as_ref(), kind != D::Static)?;
    let dfp_cache = dfp_config.map(|cfg| Arc::new(dfp::DnsCache::new(cfg, pool.clone())));
    let cluster = Arc::new(Cluster {
        name: pool.cluster.clone(),
        source: prost::Message::encode_to_vec(c),
        protocol,
        lb: lb.clone(),
        endpoints: ArcSwap::from_pointee(Endpoints {
            set: EndpointSet::new(Vec::new(), &lb),
            pools: FastMap::default(),
        }),
        outlier,
        stats,
        pool,
        retry_buffer_limit,
        eds_service,
        eds_version: std::sync::Mutex::new(None),
        dfp: dfp_cache,
    });
    cluster.set_hosts(hosts);
    if let Some(o) = &cluster.outlier {
        let weak = Arc::downgrade(&cluster);
        o.spawn_ticker(move || {
            weak.upgrade()
                .map(|c| Arc::new(c.endpoints.load().set.clone()))
        });
    }
    if !names.is_empty() {
        let dns_refresh = opt_duration(&ctx, "dns_refresh_rate", c.dns_refresh_rate.as_ref())?
            .unwrap_or(Duration::from_secs(5));
        let family = dfp::cluster_family(&ctx, c)?;
        spawn_dns(
            Arc::downgrade(&cluster),
            names,
            dns_refresh.max(Duration::from_millis(100)),
            kind == D::LogicalDns,
            family,
        );
    }
    Ok(cluster)
}

/// A host whose address is a DNS name, resolved in the background.
#[derive(Debug, Clone)]
struct NamedHost {
    name: String,
    port: u16,
    weight: u32,
    priority: u32,
    locality: Locality,
}

/// Hosts of an EDS ClusterLoadAssignment (IP endpoints only).
pub fn hosts_from_cla(cla: &epb::ClusterLoadAssignment) -> Result<Vec<Arc<Host>>, ConfigError> {
    let ctx = Ctx::new("cluster_load_assignment", &cla.cluster_name);
    Ok(hosts_from_assignment(&ctx, Some(cla), false)?.0)
}

impl Cluster {
    /// Applies an EDS assignment unless that version is already in force.
    pub fn apply_cla(
        &self,
        version: &str,
        cla: &epb::ClusterLoadAssignment,
    ) -> Result<(), ConfigError> {
        let mut applied = self.eds_version.lock().unwrap_or_else(|p| p.into_inner());
        if applied.as_deref() == Some(version) {
            return Ok(());
        }
        let hosts = hosts_from_cla(cla)?;
        self.set_hosts(hosts);
        *applied = Some(version.to_string());
        Ok(())
    }
}

fn hosts_from_assignment(
    ctx: &Ctx,
    la: Option<&epb::ClusterLoadAssignment>,
    dns: bool,
) -> Result<(Vec<Arc<Host>>, Vec<NamedHost>), ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::{
        address::Address as A, socket_address::PortSpecifier,
    };
    let mut hosts = Vec::new();
    let mut names = Vec::new();
    let Some(la) = la else {
        return Ok((hosts, names));
    };
    for (li, loc) in la.endpoints.iter().enumerate() {
        let locality = loc
            .locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            });
        for (ei, lbe) in loc.lb_endpoints.iter().enumerate() {
            let f = format!("load_assignment.endpoints[{li}].lb_endpoints[{ei}]");
            // HealthStatus: UNKNOWN 0, HEALTHY 1, UNHEALTHY 2, DRAINING 3, TIMEOUT 4, DEGRADED 5.
            if matches!(lbe.health_status, 2..=4) {
                continue;
            }
            let weight = lbe
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value.max(1));
            let Some(epb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                return Err(ctx.err(f, "an endpoint with an address is required"));
            };
            let Some(A::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(ctx.err(
                    format!("{f}.endpoint.address"),
                    "a socket_address is required",
                ));
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                return Err(ctx.err(
                    format!("{f}.endpoint.address.socket_address.port_value"),
                    "a port_value is required",
                ));
            };
            let port = u16::try_from(port).map_err(|_| {
                ctx.err(
                    format!("{f}.endpoint.address.socket_address.port_value"),
                    "out of range",
                )
            })?;
            match sa.address.parse::<std::net::IpAddr>() {
                Ok(ip) => hosts.push(Arc::new(Host::new(
                    SocketAddr::new(ip, port),
                    weight,
                    loc.priority,
                    locality.clone(),
                ))),
                Err(_) if dns => names.push(NamedHost {
                    name: sa.address.clone(),
                    port,
                    weight,
                    priority: loc.priority,
                    locality: locality.clone(),
                }),
                Err(_) => {
                    return Err(ctx.err(
                        format!("{f}.endpoint.address.socket_address.address"),
                        format!("`{}` is not an IP address; STATIC clusters need IPs (use type STRICT_DNS)", sa.address),
                    ));
                }
            }
        }
    }
    Ok((hosts, names))
}

/// Resolves the cluster's names every `every`, keeping the addresses of the cluster's
/// `dns_lookup_family` (all of them for STRICT_DNS, the first for LOGICAL_DNS).
fn spawn_dns(
    cluster: Weak<Cluster>,
    names: Vec<NamedHost>,
    every: Duration,
    logical: bool,
    family: dfp::Family,
) {
    tokio::spawn(async move {
        loop {
            let mut hosts = Vec::new();
            for n in &names {
                match tokio::net::lookup_host((n.name.as_str(), n.port)).await {
                    Ok(addrs) => {
                        let addrs = family.select(&addrs.collect::<Vec<_>>());
                        for a in addrs.into_iter().take(if logical { 1 } else { usize::MAX }) {
                            hosts.push(Arc::new(Host::new(
                                a,
                                n.weight,
                                n.priority,
                                n.locality.clone(),
                            )));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(host = %n.name, error = %e, "DNS resolution failed; keeping previous endpoints")
                    }
                }
            }
            let Some(c) = cluster.upgrade() else { return };
            if !hosts.is_empty() || c.endpoints.load().set.hosts().is_empty() {
                c.set_hosts(hosts);
            }
            drop(c);
            tokio::time::sleep(every).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(last: u8, weight: u32) -> Arc<Host> {
        Arc::new(Host::new(
            SocketAddr::from(([10, 3, 0, last], 80)),
            weight,
            0,
            Locality::default(),
        ))
    }

    #[test]
    fn endpoint_updates_keep_when_a_host_joined() {
        let c: cpb::Cluster = weft_xds::from_yaml("name: c\ntype: STATIC\n", "test").unwrap();
        let cluster = build(&c, &Stats::new(), false).unwrap();
        cluster.set_hosts(vec![host(1, 1), host(2, 1)]);
        let joined = |i: usize| cluster.endpoints.load().set.hosts()[i].added;
        let (one, two) = (joined(0), joined(1));
        std::thread::sleep(Duration::from_millis(5));
        // Unchanged, reweighted, and new: only the new host starts its slow start now.
        cluster.set_hosts(vec![host(1, 1), host(2, 3), host(3, 1)]);
        assert_eq!(joined(0), one);
        assert_eq!(joined(1), two);
        assert_eq!(cluster.endpoints.load().set.hosts()[1].weight, 3);
        assert!(joined(2) > two);
    }
}
