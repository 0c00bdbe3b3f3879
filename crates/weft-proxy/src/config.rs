//! Errors and small conversions shared by the translation of Envoy resources into the proxy's
//! runtime model. Translation happens once per config generation; anything the proxy cannot
//! honour exactly is refused here, with the resource and field named, never ignored.
//!
//! The `check_*` functions hold the value-level refusals the field walk of `supported.rs`
//! cannot express (a field accepted only with some values: `ads` config sources, TCP socket
//! addresses, no DEGRADED endpoints, ...). `runtime` runs them on every resource it compiles;
//! they must stay cheap and never look at anything but the resource.

use envoy_types::pb::envoy::config::bootstrap::v3 as bpb;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use std::time::Duration;

/// Why a resource cannot be applied. Always names the resource and the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: `{field}`: {reason}")]
pub struct ConfigError {
    /// `listener "ingress"`, `cluster "backend"`, `route_config "local"`.
    pub resource: String,
    /// Field path inside the resource, `filter_chains[0].filters[0].typed_config.stat_prefix`.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            resource: resource.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Builds errors for one resource, so call sites stay short.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub resource: String,
}

impl Ctx {
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            resource: format!("{kind} {name:?}"),
        }
    }
    pub fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.resource.clone(), field, reason)
    }
}

/// Converts a protobuf Duration; negative durations are refused.
pub fn duration(
    ctx: &Ctx,
    field: &str,
    d: &envoy_types::pb::google::protobuf::Duration,
) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ctx.err(field, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Optional duration with a default; an explicit zero means "disabled" in Envoy for timeouts,
/// which callers express by mapping `Some(ZERO)` as they need.
pub fn opt_duration(
    ctx: &Ctx,
    field: &str,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(ctx, field, d)).transpose()
}

/// An Envoy timeout field: absent gives `default`, an explicit zero turns the timeout off
/// (None), anything else is the timeout.
pub fn timeout(
    ctx: &Ctx,
    field: &str,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(match d {
        None => default,
        Some(d) => Some(duration(ctx, field, d)?).filter(|d| !d.is_zero()),
    })
}

/// Decodes the `Any` payload of a typed config as `M`, checking the type URL.
pub fn decode_any<M: prost::Message + prost::Name + Default>(
    ctx: &Ctx,
    field: &str,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, ConfigError> {
    let want = M::full_name();
    let got = any.type_url.rsplit('/').next().unwrap_or_default();
    if got != want {
        return Err(ctx.err(field, format!("expected `{want}`, got `{}`", any.type_url)));
    }
    M::decode(any.value.as_slice()).map_err(|e| ctx.err(field, format!("undecodable {want}: {e}")))
}

/// Refuses a non-TCP `SocketAddress` (Envoy's `protocol: UDP`); `field` is the address's path.
pub fn check_tcp(ctx: &Ctx, field: &str, sa: &core::SocketAddress) -> Result<(), ConfigError> {
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ctx.err(
            format!("{field}.socket_address.protocol"),
            "not supported: weft-proxy listens and connects over TCP only",
        ));
    }
    Ok(())
}

/// Whether an address asks for IPv4 compatibility on an IPv6 socket (`ipv4_compat`).
pub fn ipv4_compat(a: Option<&core::Address>) -> bool {
    matches!(
        a.and_then(|a| a.address.as_ref()),
        Some(core::address::Address::SocketAddress(sa)) if sa.ipv4_compat
    )
}

/// Resolves a SocketAddress to an IP socket address (no DNS: names go through cluster
/// discovery types that resolve).
pub fn socket_addr(
    ctx: &Ctx,
    field: &str,
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<std::net::SocketAddr, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ctx.err(
            field,
            "a socket_address is required (pipes and internal addresses are not supported)",
        ));
    };
    check_tcp(ctx, field, sa)?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        Some(PortSpecifier::PortValue(p)) => {
            return Err(ctx.err(
                format!("{field}.port_value"),
                format!("{p} is out of range"),
            ));
        }
        _ => {
            return Err(ctx.err(
                format!("{field}.port_value"),
                "a numeric port_value is required",
            ));
        }
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
        ctx.err(
            format!("{field}.address"),
            format!(
                "`{}` is not an IP address (use a STRICT_DNS or LOGICAL_DNS cluster for names)",
                sa.address
            ),
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// Checks a `ConfigSource` (`field` is its path): weft-proxy gets every resource over the
/// bootstrap's ADS stream, so it must be `ads: {}` and `ads_available` (there is an
/// `ads_config`). `resource_api_version` may be AUTO or V3. `initial_fetch_timeout` is not
/// implemented (weft waits for the first response however long it takes, like Envoy's `0s`):
/// only `0s` is accepted; when it is unset Envoy would give up waiting after 15 s, weft does not.
pub fn check_config_source(
    ctx: &Ctx,
    field: &str,
    cs: &core::ConfigSource,
    ads_available: bool,
) -> Result<(), ConfigError> {
    use core::config_source::ConfigSourceSpecifier as S;
    match &cs.config_source_specifier {
        Some(S::Ads(_)) => {}
        Some(_) | None => {
            return Err(ctx.err(
                field,
                "`ads: {}` is required: weft-proxy gets every resource over the ADS stream of \
                 dynamic_resources.ads_config",
            ));
        }
    }
    if !ads_available {
        return Err(ctx.err(
            format!("{field}.ads"),
            "there is no dynamic_resources.ads_config to get it from",
        ));
    }
    #[allow(deprecated)]
    const V2: i32 = core::ApiVersion::V2 as i32;
    if cs.resource_api_version == V2 {
        return Err(ctx.err(
            format!("{field}.resource_api_version"),
            "V2 is not supported; use V3",
        ));
    }
    if let Some(t) = &cs.initial_fetch_timeout
        && !duration(ctx, &format!("{field}.initial_fetch_timeout"), t)?.is_zero()
    {
        return Err(ctx.err(
            format!("{field}.initial_fetch_timeout"),
            "not supported: weft-proxy waits for the first response without a deadline; only \
             `0s` (no timeout) is accepted",
        ));
    }
    Ok(())
}

/// Checks the `admin` section: no admin access log (only an empty or `/dev/null`
/// `access_log_path`), no `profile_path` (there is no CPU profiler), a TCP address without
/// `ipv4_compat` (the admin socket is bound without it).
#[allow(deprecated)] // `access_log_path`: still what most bootstraps (Istio's too) set.
pub fn check_admin(b: &bpb::Bootstrap) -> Result<(), ConfigError> {
    let Some(admin) = &b.admin else {
        return Ok(());
    };
    let ctx = Ctx {
        resource: "bootstrap".into(),
    };
    if !matches!(admin.access_log_path.as_str(), "" | "/dev/null") {
        return Err(ctx.err(
            "admin.access_log_path",
            "not supported: the admin server keeps no access log; use \"/dev/null\" or leave it \
             unset",
        ));
    }
    if !admin.access_log.is_empty() {
        return Err(ctx.err(
            "admin.access_log",
            "not supported: the admin server keeps no access log",
        ));
    }
    if !admin.profile_path.is_empty() {
        return Err(ctx.err(
            "admin.profile_path",
            "not supported: weft-proxy has no CPU profiler to write a profile",
        ));
    }
    if let Some(a) = &admin.address {
        socket_addr(&ctx, "admin.address", Some(a))?;
        if ipv4_compat(Some(a)) {
            return Err(ctx.err(
                "admin.address.socket_address.ipv4_compat",
                "not supported on the admin address (bind it to an IPv4 address instead)",
            ));
        }
    }
    Ok(())
}

/// Checks a cluster's values (`xds`: the bootstrap has an ADS source).
pub fn check_cluster(c: &cpb::Cluster, xds: bool) -> Result<(), ConfigError> {
    let ctx = Ctx::new("cluster", &c.name);
    if !c.alt_stat_name.is_empty() {
        return Err(ctx.err(
            "alt_stat_name",
            "not supported yet: cluster stats are always named after the cluster",
        ));
    }
    for (i, t) in c
        .circuit_breakers
        .iter()
        .flat_map(|cb| cb.thresholds.iter())
        .enumerate()
    {
        if t.track_remaining {
            return Err(ctx.err(
                format!("circuit_breakers.thresholds[{i}].track_remaining"),
                "not supported: weft-proxy has no remaining_* gauges",
            ));
        }
    }
    crate::upstream::dfp::cluster_family(&ctx, c)?;
    if let Some(eds) = c
        .eds_cluster_config
        .as_ref()
        .and_then(|e| e.eds_config.as_ref())
    {
        check_config_source(&ctx, "eds_cluster_config.eds_config", eds, xds)?;
    }
    if let Some(la) = &c.load_assignment {
        check_assignment(&ctx, "load_assignment.", la)?;
    }
    Ok(())
}

/// Checks an EDS `ClusterLoadAssignment` resource.
pub fn check_cla(cla: &epb::ClusterLoadAssignment) -> Result<(), ConfigError> {
    check_assignment(
        &Ctx::new("cluster_load_assignment", &cla.cluster_name),
        "",
        cla,
    )
}

/// Endpoints: TCP addresses, and no DEGRADED health status (Envoy sends traffic to degraded
/// hosts only when too few healthy ones remain; weft-proxy has no such tier and refuses the
/// status rather than treat those hosts as healthy). `prefix` is the assignment's path + `.`.
fn check_assignment(
    ctx: &Ctx,
    prefix: &str,
    la: &epb::ClusterLoadAssignment,
) -> Result<(), ConfigError> {
    for (li, loc) in la.endpoints.iter().enumerate() {
        for (ei, lbe) in loc.lb_endpoints.iter().enumerate() {
            let f = format!("{prefix}endpoints[{li}].lb_endpoints[{ei}]");
            if lbe.health_status == core::HealthStatus::Degraded as i32 {
                return Err(ctx.err(
                    format!("{f}.health_status"),
                    "DEGRADED is not supported (weft-proxy has no degraded-host tier); use \
                     HEALTHY or UNHEALTHY",
                ));
            }
            if let Some(epb::lb_endpoint::HostIdentifier::Endpoint(e)) = &lbe.host_identifier
                && let Some(core::address::Address::SocketAddress(sa)) =
                    e.address.as_ref().and_then(|a| a.address.as_ref())
            {
                check_tcp(ctx, &format!("{f}.endpoint.address"), sa)?;
            }
        }
    }
    Ok(())
}

/// Checks a listener's values: the `rds.config_source` of its HTTP connection managers.
/// (Its address is checked where it is read, by [`socket_addr`].)
pub fn check_listener(l: &lpb::Listener, xds: bool) -> Result<(), ConfigError> {
    use lpb::filter::ConfigType;
    let ctx = Ctx::new("listener", &l.name);
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, fc)| (format!("filter_chains[{i}]"), fc))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|fc| ("default_filter_chain".to_string(), fc)),
        );
    for (cf, fc) in chains {
        for (fi, f) in fc.filters.iter().enumerate() {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url.rsplit('/').next()
                != Some(<hpb::HttpConnectionManager as prost::Name>::full_name().as_str())
            {
                continue;
            }
            let tf = format!("{cf}.filters[{fi}].typed_config");
            let hcm: hpb::HttpConnectionManager = decode_any(&ctx, &tf, any)?;
            if let Some(hpb::http_connection_manager::RouteSpecifier::Rds(rds)) =
                &hcm.route_specifier
            {
                let rf = format!("{tf}.rds.config_source");
                match &rds.config_source {
                    Some(cs) => check_config_source(&ctx, &rf, cs, xds)?,
                    None => return Err(ctx.err(rf, "is required (`ads: {}`)")),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_default_when_absent_and_turn_off_at_zero() {
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let ctx = Ctx::new("route", "r");
        let five = Some(Duration::from_secs(5));
        assert_eq!(timeout(&ctx, "t", None, five).unwrap(), five);
        let zero = Pb {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(timeout(&ctx, "t", Some(&zero), five).unwrap(), None);
        let half = Pb {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert_eq!(
            timeout(&ctx, "t", Some(&half), five).unwrap(),
            Some(Duration::from_millis(500))
        );
        let negative = Pb {
            seconds: -1,
            nanos: 0,
        };
        let e = timeout(&ctx, "a.b.timeout", Some(&negative), five).unwrap_err();
        assert!(e.to_string().contains("a.b.timeout"), "{e}");
    }

    fn yaml<M: prost::Message + prost::Name + Default>(y: &str) -> M {
        weft_xds::from_yaml(y, "test").unwrap()
    }

    fn err_field(r: Result<(), ConfigError>) -> String {
        r.expect_err("accepted").field
    }

    #[test]
    fn config_sources_must_be_ads() {
        let ctx = Ctx::new("listener", "l");
        let ok: core::ConfigSource = yaml("{ads: {}, resource_api_version: V3}");
        check_config_source(&ctx, "rds.config_source", &ok, true).unwrap();
        let zero: core::ConfigSource = yaml("{ads: {}, initial_fetch_timeout: 0s}");
        check_config_source(&ctx, "x", &zero, true).unwrap();
        assert_eq!(
            err_field(check_config_source(&ctx, "x", &ok, false)),
            "x.ads"
        );
        let empty: core::ConfigSource = yaml("{resource_api_version: V3}");
        assert_eq!(err_field(check_config_source(&ctx, "x", &empty, true)), "x");
        let timeout: core::ConfigSource = yaml("{ads: {}, initial_fetch_timeout: 15s}");
        assert_eq!(
            err_field(check_config_source(&ctx, "x", &timeout, true)),
            "x.initial_fetch_timeout"
        );
        let v2: core::ConfigSource = yaml("{ads: {}, resource_api_version: V2}");
        assert_eq!(
            err_field(check_config_source(&ctx, "x", &v2, true)),
            "x.resource_api_version"
        );
    }

    #[test]
    fn udp_addresses_are_refused() {
        let ctx = Ctx::new("listener", "l");
        let a: core::Address =
            yaml("socket_address: {address: 127.0.0.1, port_value: 53, protocol: UDP}");
        let e = socket_addr(&ctx, "address", Some(&a)).unwrap_err();
        assert_eq!(e.field, "address.socket_address.protocol");
        let a: core::Address = yaml("socket_address: {address: 127.0.0.1, port_value: 53}");
        assert!(socket_addr(&ctx, "address", Some(&a)).is_ok());
        assert!(!ipv4_compat(Some(&a)));
        let a: core::Address =
            yaml("socket_address: {address: '::', port_value: 53, ipv4_compat: true}");
        assert!(ipv4_compat(Some(&a)));
    }

    #[test]
    fn cluster_values() {
        let base = "name: c\ntype: STATIC\nload_assignment:\n  cluster_name: c\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n";
        let c: cpb::Cluster = yaml(base);
        check_cluster(&c, false).unwrap();
        let cases = [
            (
                "      health_status: DEGRADED\n",
                "load_assignment.endpoints[0].lb_endpoints[0].health_status",
            ),
            (
                "circuit_breakers: {thresholds: [{max_connections: 1}, {track_remaining: true}]}\n",
                "circuit_breakers.thresholds[1].track_remaining",
            ),
            ("alt_stat_name: other\n", "alt_stat_name"),
        ];
        for (extra, field) in cases {
            let c: cpb::Cluster = yaml(&format!("{base}{extra}"));
            assert_eq!(err_field(check_cluster(&c, false)), field, "{extra}");
        }
        let udp: cpb::Cluster =
            yaml(&base.replace("port_value: 1", "port_value: 1, protocol: UDP"));
        assert_eq!(
            err_field(check_cluster(&udp, false)),
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol"
        );
        let eds: cpb::Cluster =
            yaml("name: e\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\n");
        check_cluster(&eds, true).unwrap();
        assert_eq!(
            err_field(check_cluster(&eds, false)),
            "eds_cluster_config.eds_config.ads"
        );
        let cla: epb::ClusterLoadAssignment = yaml(
            "cluster_name: e\nendpoints: [{lb_endpoints: [{health_status: HEALTHY}, {health_status: DEGRADED}]}]\n",
        );
        let e = check_cla(&cla).unwrap_err();
        assert_eq!(e.field, "endpoints[0].lb_endpoints[1].health_status");
        assert!(
            e.to_string().contains("cluster_load_assignment \"e\""),
            "{e}"
        );
    }

    #[test]
    fn admin_values() {
        let ok: bpb::Bootstrap = yaml(
            "admin: {access_log_path: /dev/null, address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}",
        );
        check_admin(&ok).unwrap();
        for (y, field) in [
            (
                "admin: {access_log_path: /tmp/admin.log}",
                "admin.access_log_path",
            ),
            (
                "admin: {profile_path: /tmp/envoy.prof}",
                "admin.profile_path",
            ),
            (
                "admin: {access_log: [{name: envoy.access_loggers.stdout}]}",
                "admin.access_log",
            ),
            (
                "admin: {address: {socket_address: {address: '::', port_value: 1, ipv4_compat: true}}}",
                "admin.address.socket_address.ipv4_compat",
            ),
        ] {
            let b: bpb::Bootstrap = yaml(y);
            assert_eq!(err_field(check_admin(&b)), field, "{y}");
        }
    }

    #[test]
    fn rds_config_source_is_checked() {
        let l = |cs: &str| -> lpb::Listener {
            yaml(&format!(
                r#"
name: l
address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: p
      rds: {{route_config_name: r{cs}}}
"#
            ))
        };
        check_listener(&l(", config_source: {ads: {}}"), true).unwrap();
        assert_eq!(
            err_field(check_listener(&l(""), true)),
            "filter_chains[0].filters[0].typed_config.rds.config_source"
        );
        assert_eq!(
            err_field(check_listener(&l(", config_source: {ads: {}}"), false)),
            "filter_chains[0].filters[0].typed_config.rds.config_source.ads"
        );
    }
}
