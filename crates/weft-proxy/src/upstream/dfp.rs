//! The dynamic forward proxy cluster (`cluster_type: envoy.clusters.dynamic_forward_proxy`): its
//! upstream is whatever host the request names. The request authority (`host[:port]`, default
//! port 80 — 443 for CONNECT) is resolved with the system resolver through a small per-cluster
//! cache (answers kept 30 s by default, re-resolved when they expire, the previous address kept
//! while re-resolution fails), and each resolved address gets an ordinary `HostPool`, so
//! connections to the same destination are reused. This is what Istio's ALLOW_ANY egress
//! (`PassthroughCluster`) relies on in explicit-proxy mode.
//!
//! The cache lock is never held across a lookup; a lookup always has a deadline.
//!
//! `Family` (Envoy's `dns_lookup_family`) is shared with STRICT_DNS / LOGICAL_DNS clusters:
//! [`cluster_family`] reads a cluster's and [`Family::select`] filters a DNS answer by it.

use super::host::{Host, Locality};
use super::pool::{HostPool, PoolSettings};
use crate::config::{ConfigError, Ctx, decode_any, opt_duration};
use crate::router::split_port;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3 as dfpb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `cluster_type.name` of a dynamic forward proxy cluster.
pub const CLUSTER_TYPE: &str = "envoy.clusters.dynamic_forward_proxy";
/// How long an answer is used when `dns_refresh_rate` is not set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Envoy's default `max_hosts`.
pub const DEFAULT_MAX_HOSTS: usize = 1024;
/// Longest wait for one resolution.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which resolved address to use (Envoy's `dns_lookup_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv6 if there is one, else IPv4 (Envoy's AUTO).
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    /// The first address, whatever its family.
    All,
}

impl Family {
    fn pick(self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        let v4 = || addrs.iter().find(|a| a.is_ipv4()).copied();
        let v6 = || addrs.iter().find(|a| a.is_ipv6()).copied();
        match self {
            Family::Auto => v6().or_else(v4),
            Family::V4Only => v4(),
            Family::V6Only => v6(),
            Family::V4Preferred => v4().or_else(v6),
            Family::All => addrs.first().copied(),
        }
    }

    /// Every address of the family Envoy's `dns_lookup_family` selects from one DNS answer,
    /// in answer order: what a STRICT_DNS cluster uses (a LOGICAL_DNS cluster takes the first).
    /// AUTO: the IPv6 addresses if there are any, else the IPv4 ones; V4_PREFERRED the
    /// reverse; V4_ONLY / V6_ONLY one family only; ALL everything.
    pub fn select(self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let of = |v6: bool| -> Vec<SocketAddr> {
            addrs
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .copied()
                .collect()
        };
        let preferring = |v6: bool| {
            let first = of(v6);
            if first.is_empty() { of(!v6) } else { first }
        };
        match self {
            Family::Auto => preferring(true),
            Family::V4Preferred => preferring(false),
            Family::V4Only => of(false),
            Family::V6Only => of(true),
            Family::All => addrs.to_vec(),
        }
    }

    /// Parses a `DnsLookupFamily` value; `field` is its path, for the error.
    pub fn from_proto(ctx: &Ctx, field: &str, v: i32) -> Result<Family, ConfigError> {
        use cpb::cluster::DnsLookupFamily as L;
        match L::try_from(v) {
            Ok(L::Auto) => Ok(Family::Auto),
            Ok(L::V4Only) => Ok(Family::V4Only),
            Ok(L::V6Only) => Ok(Family::V6Only),
            Ok(L::V4Preferred) => Ok(Family::V4Preferred),
            Ok(L::All) => Ok(Family::All),
            Err(_) => Err(ctx.err(field, format!("unknown value {v}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Auto => "AUTO",
            Family::V4Only => "V4_ONLY",
            Family::V6Only => "V6_ONLY",
            Family::V4Preferred => "V4_PREFERRED",
            Family::All => "ALL",
        }
    }
}

/// A compiled `ClusterConfig.dns_cache_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfpConfig {
    pub cache_name: String,
    pub family: Family,
    pub ttl: Duration,
    pub max_hosts: usize,
}

/// Why a destination could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    #[error("`{0}` is not a valid host[:port]")]
    BadAuthority(String),
    #[error("DNS resolution of `{host}` failed: {reason}")]
    Failed { host: String, reason: String },
    #[error("DNS resolution of `{0}` timed out")]
    Timeout(String),
    #[error("`{host}` has no {family} address")]
    NoAddress { host: String, family: &'static str },
}

struct Entry {
    host: Arc<Host>,
    pool: Arc<HostPool>,
    expires: Instant,
}

/// The resolved destinations of one dynamic forward proxy cluster.
pub struct DnsCache {
    pub config: DfpConfig,
    settings: Arc<PoolSettings>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Tests: answer every lookup with a failure, without asking any resolver.
    #[cfg(test)]
    fail_lookups: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DnsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsCache")
            .field("config", &self.config)
            .field("hosts", &self.len())
            .finish()
    }
}

/// Splits an authority into a resolvable host (no brackets) and a port.
fn target(authority: &str, default_port: u16) -> Result<(&str, u16), DnsError> {
    let (host, port) = split_port(authority);
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let valid = match bracketed {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    let host = bracketed.unwrap_or(host);
    if !valid {
        return Err(DnsError::BadAuthority(authority.to_string()));
    }
    Ok((host, port.unwrap_or(default_port)))
}

impl DnsCache {
    pub fn new(config: DfpConfig, settings: Arc<PoolSettings>) -> DnsCache {
        DnsCache {
            config,
            settings,
            entries: Mutex::new(HashMap::new()),
            #[cfg(test)]
            fail_lookups: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Destinations currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host and pool for `authority`, resolving it when it is not cached or its answer
    /// expired. A failed re-resolution keeps the previous address for another TTL.
    pub async fn resolve(
        &self,
        authority: &str,
        default_port: u16,
    ) -> Result<(Arc<Host>, Arc<HostPool>), DnsError> {
        let (host, port) = target(authority, default_port)?;
        let key = format!("{}:{port}", host.to_ascii_lowercase());
        let now = Instant::now();
        let stale = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(&key) {
                Some(e) if e.expires > now => return Ok((e.host.clone(), e.pool.clone())),
                Some(e) => Some((e.host.clone(), e.pool.clone())),
                None => None,
            }
        };
        let lookup = async {
            #[cfg(test)]
            if self.fail_lookups.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::other("lookups disabled by the test"));
            }
            tokio::net::lookup_host((host, port)).await
        };
        let resolved = match tokio::time::timeout(QUERY_TIMEOUT, lookup).await {
            Err(_) => Err(DnsError::Timeout(host.to_string())),
            Ok(Err(e)) => Err(DnsError::Failed {
                host: host.to_string(),
                reason: e.to_string(),
            }),
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                self.config
                    .family
                    .pick(&addrs)
                    .ok_or_else(|| DnsError::NoAddress {
                        host: host.to_string(),
                        family: self.config.family.name(),
                    })
            }
        };
        let expires = Instant::now() + self.config.ttl;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (h, p) = match (resolved, stale) {
            (Ok(addr), Some((h, p))) if h.addr == addr => (h, p),
            (Ok(addr), _) => {
                let h = Arc::new(Host::new(addr, 1, 0, Locality::default()).with_hostname(host));
                let p = HostPool::new(addr, self.settings.clone());
                (h, p)
            }
            (Err(e), Some((h, p))) => {
                tracing::warn!(error = %e, cluster = %self.settings.cluster, "DNS re-resolution failed; keeping the previous address");
                (h, p)
            }
            (Err(e), None) => return Err(e),
        };
        if !entries.contains_key(&key) && entries.len() >= self.config.max_hosts {
            let now = Instant::now();
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.config.max_hosts
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                host: h.clone(),
                pool: p.clone(),
                expires,
            },
        );
        Ok((h, p))
    }
}

/// The `dns_lookup_family` of a STRICT_DNS / LOGICAL_DNS cluster (default AUTO, as in Envoy);
/// apply it to every answer with [`Family::select`].
pub fn cluster_family(ctx: &Ctx, c: &cpb::Cluster) -> Result<Family, ConfigError> {
    Family::from_proto(ctx, "dns_lookup_family", c.dns_lookup_family)
}

/// Compiles `cluster_type` of a dynamic forward proxy cluster. The cluster must use
/// `lb_policy: CLUSTER_PROVIDED` and have no endpoints of its own.
pub fn config(
    ctx: &Ctx,
    c: &cpb::Cluster,
    ct: &cpb::cluster::CustomClusterType,
) -> Result<DfpConfig, ConfigError> {
    if ct.name != CLUSTER_TYPE {
        return Err(ctx.err(
            "cluster_type.name",
            format!(
                "custom cluster type `{}` is not supported (only {CLUSTER_TYPE})",
                ct.name
            ),
        ));
    }
    if c.lb_policy != cpb::cluster::LbPolicy::ClusterProvided as i32 {
        return Err(ctx.err(
            "lb_policy",
            "a dynamic forward proxy cluster needs lb_policy: CLUSTER_PROVIDED",
        ));
    }
    if c.load_assignment.is_some() {
        return Err(ctx.err(
            "load_assignment",
            "a dynamic forward proxy cluster takes its hosts from requests",
        ));
    }
    if c.outlier_detection.is_some() {
        return Err(ctx.err(
            "outlier_detection",
            "not supported on a dynamic forward proxy cluster",
        ));
    }
    if c.transport_socket.is_some() {
        return Err(ctx.err(
            "transport_socket",
            "TLS origination is not supported on a dynamic forward proxy cluster",
        ));
    }
    let tf = "cluster_type.typed_config";
    let Some(any) = &ct.typed_config else {
        return Err(ctx.err(tf, "a ClusterConfig is required"));
    };
    let cc: dfpb::ClusterConfig = decode_any(ctx, tf, any)?;
    if cc.allow_insecure_cluster_options {
        return Err(ctx.err(
            format!("{tf}.allow_insecure_cluster_options"),
            "not supported",
        ));
    }
    if cc.allow_coalesced_connections {
        return Err(ctx.err(format!("{tf}.allow_coalesced_connections"), "not supported"));
    }
    use dfpb::cluster_config::ClusterImplementationSpecifier as S;
    let d = match &cc.cluster_implementation_specifier {
        Some(S::DnsCacheConfig(d)) => d,
        Some(S::SubClustersConfig(_)) => {
            return Err(ctx.err(
                format!("{tf}.sub_clusters_config"),
                "sub-clusters are not supported; use dns_cache_config",
            ));
        }
        None => return Err(ctx.err(format!("{tf}.dns_cache_config"), "is required")),
    };
    let df = format!("{tf}.dns_cache_config");
    if d.name.is_empty() {
        return Err(ctx.err(format!("{df}.name"), "a cache name is required"));
    }
    let family = Family::from_proto(ctx, &format!("{df}.dns_lookup_family"), d.dns_lookup_family)?;
    let ttl = opt_duration(
        ctx,
        &format!("{df}.dns_refresh_rate"),
        d.dns_refresh_rate.as_ref(),
    )?
    .unwrap_or(DEFAULT_TTL);
    if ttl < Duration::from_millis(1) {
        return Err(ctx.err(format!("{df}.dns_refresh_rate"), "must be at least 1ms"));
    }
    let max_hosts = d
        .max_hosts
        .as_ref()
        .map_or(DEFAULT_MAX_HOSTS, |v| v.value as usize);
    if max_hosts == 0 {
        return Err(ctx.err(format!("{df}.max_hosts"), "must be greater than zero"));
    }
    Ok(DfpConfig {
        cache_name: d.name.clone(),
        family,
        ttl,
        max_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn settings() -> Arc<PoolSettings> {
        let stats = Stats::new();
        Arc::new(PoolSettings {
            cluster: Arc::from("dfp"),
            connect_timeout: Duration::from_secs(1),
            tls: None,
            idle_timeout: None,
            max_connection_duration: None,
            max_concurrent_streams: crate::upstream::pool::DEFAULT_MAX_CONCURRENT_STREAMS,
            max_requests_per_connection: 0,
            circuit: Arc::new(crate::upstream::circuit::CircuitBreakers::from_proto(None).unwrap()),
            stats: stats.cluster("dfp"),
            freed: tokio::sync::Notify::new(),
            waiters: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn cache(ttl: Duration, max_hosts: usize) -> DnsCache {
        DnsCache::new(
            DfpConfig {
                cache_name: "c".into(),
                family: Family::V4Preferred,
                ttl,
                max_hosts,
            },
            settings(),
        )
    }

    #[test]
    fn targets_and_default_ports() {
        assert_eq!(target("example.com", 80).unwrap(), ("example.com", 80));
        assert_eq!(
            target("example.com:8080", 80).unwrap(),
            ("example.com", 8080)
        );
        assert_eq!(target("[::1]:9", 80).unwrap(), ("::1", 9));
        assert_eq!(target("10.0.0.1", 443).unwrap(), ("10.0.0.1", 443));
        for bad in ["", "a b", "x/y", "user@host", "[zz]:1", ":80"] {
            assert!(target(bad, 80).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn family_preference() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let both = [v6, v4];
        assert_eq!(Family::V4Preferred.pick(&both), Some(v4));
        assert_eq!(Family::Auto.pick(&both), Some(v6));
        assert_eq!(Family::V4Only.pick(&[v6]), None);
        assert_eq!(Family::V4Preferred.pick(&[v6]), Some(v6));
        assert_eq!(Family::All.pick(&both), Some(v6));
    }

    #[test]
    fn family_selects_every_address_of_the_family() {
        let a4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b4: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let a6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let mixed = [a4, a6, b4];
        assert_eq!(Family::Auto.select(&mixed), vec![a6]);
        assert_eq!(Family::Auto.select(&[a4, b4]), vec![a4, b4]);
        assert_eq!(Family::V4Preferred.select(&mixed), vec![a4, b4]);
        assert_eq!(Family::V4Preferred.select(&[a6]), vec![a6]);
        assert_eq!(Family::V4Only.select(&[a6]), Vec::<SocketAddr>::new());
        assert_eq!(Family::V6Only.select(&mixed), vec![a6]);
        assert_eq!(Family::All.select(&mixed), mixed.to_vec());
        let ctx = Ctx::new("cluster", "c");
        let c: cpb::Cluster =
            weft_xds::from_yaml("name: c\ndns_lookup_family: V4_ONLY\n", "t").unwrap();
        assert_eq!(cluster_family(&ctx, &c).unwrap(), Family::V4Only);
        let c = cpb::Cluster {
            dns_lookup_family: 42,
            ..Default::default()
        };
        let e = cluster_family(&ctx, &c).unwrap_err().to_string();
        assert!(e.contains("dns_lookup_family"), "{e}");
    }

    #[tokio::test]
    async fn caches_pools_and_refreshes_on_expiry() {
        let c = cache(Duration::from_millis(50), 8);
        let (h1, p1) = c.resolve("127.0.0.1:8080", 80).await.unwrap();
        assert_eq!(h1.addr, "127.0.0.1:8080".parse().unwrap());
        let (_, p2) = c.resolve("127.0.0.1:8080", 80).await.unwrap();
        assert!(Arc::ptr_eq(&p1, &p2), "a cached answer reuses the pool");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (_, p3) = c.resolve("127.0.0.1:8080", 80).await.unwrap();
        assert!(
            Arc::ptr_eq(&p1, &p3),
            "same address after refresh keeps the pool"
        );
        let (h4, _) = c.resolve("localhost:9", 80).await.unwrap();
        assert_eq!(h4.addr.port(), 9);
        assert!(h4.addr.ip().is_loopback());
        assert_eq!(c.len(), 2);
    }

    #[tokio::test]
    async fn bounded_and_reports_failures() {
        let c = cache(Duration::from_secs(30), 2);
        for port in 1..=5 {
            c.resolve(&format!("127.0.0.1:{port}"), 80).await.unwrap();
        }
        assert_eq!(c.len(), 2);
        c.fail_lookups
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let e = c.resolve("never-resolved.test:81", 80).await.unwrap_err();
        assert!(
            matches!(e, DnsError::Failed { .. }) && e.to_string().contains("never-resolved.test"),
            "{e}"
        );
        assert!(matches!(
            c.resolve("bad host", 80).await,
            Err(DnsError::BadAuthority(_))
        ));
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_previous_address() {
        let c = cache(Duration::from_millis(20), 8);
        let (_, p1) = c.resolve("127.0.0.1:7", 80).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        c.fail_lookups
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (h, p2) = c.resolve("127.0.0.1:7", 80).await.unwrap();
        assert!(Arc::ptr_eq(&p1, &p2));
        assert_eq!(h.addr, "127.0.0.1:7".parse().unwrap());
    }

    #[test]
    fn config_errors_name_the_field() {
        let yaml = |extra: &str| {
            format!(
                "name: p\nconnect_timeout: 1s\nlb_policy: CLUSTER_PROVIDED\ncluster_type:\n  name: envoy.clusters.dynamic_forward_proxy\n  typed_config:\n    '@type': type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig\n    dns_cache_config: {{name: c, dns_lookup_family: V4_PREFERRED{extra}}}\n"
            )
        };
        let parse = |y: &str| -> Result<DfpConfig, ConfigError> {
            let c: cpb::Cluster = weft_xds::from_yaml(y, "t").unwrap();
            let Some(cpb::cluster::ClusterDiscoveryType::ClusterType(ct)) =
                &c.cluster_discovery_type
            else {
                panic!("no cluster_type")
            };
            config(&Ctx::new("cluster", "p"), &c, ct)
        };
        let ok = parse(&yaml("")).unwrap();
        assert_eq!(ok.family, Family::V4Preferred);
        assert_eq!(ok.ttl, DEFAULT_TTL);
        let e = parse(&yaml(", max_hosts: 0")).unwrap_err().to_string();
        assert!(e.contains("dns_cache_config.max_hosts"), "{e}");
        let e = parse(&yaml("").replace("CLUSTER_PROVIDED", "ROUND_ROBIN"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lb_policy"), "{e}");
        let e = parse(&yaml("").replace("envoy.clusters.dynamic_forward_proxy\n", "x.y\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster_type.name"), "{e}");
    }
}
