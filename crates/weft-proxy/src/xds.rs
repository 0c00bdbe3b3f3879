//! The proxy's side of xDS: finds the ADS server named by the bootstrap
//! (`dynamic_resources.ads_config`), runs the `weft-xds` client, and hands every update to
//! `runtime::Control`, which applies it or refuses it (NACK, with the resource and field) while
//! the last good config keeps serving. The client reconnects with backoff on its own.
//!
//! The client always speaks delta (incremental) ADS over one gRPC stream. [`check`] refuses at
//! load time what that cannot honour: another `api_type` than GRPC / DELTA_GRPC (GRPC is served
//! as delta ADS too — every ADS server weft targets, Istio's included, speaks both), more than
//! one gRPC service, a gRPC `timeout` or `authority`, and `lds_config` / `cds_config` other than
//! `ads: {}`. LDS and CDS are subscribed only when their config source is set, as in Envoy.

use crate::config::{ConfigError, Ctx, check_config_source};
use crate::runtime::Control;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, address::Address, api_config_source::ApiType, grpc_service::TargetSpecifier,
    socket_address::PortSpecifier,
};
use std::collections::HashMap;
use std::sync::Arc;
use weft_xds::client::{Handler, Update, XdsClient};

struct ProxyHandler(Arc<Control>);

impl Handler for ProxyHandler {
    fn apply(&self, type_url: &str, update: &Update) -> Result<(), String> {
        let r = self.0.apply_xds(type_url, &update.added, &update.removed);
        if let Err(e) = &r {
            tracing::warn!(type_url, error = %e, "xDS update rejected (NACK); the previous config keeps serving");
        }
        r
    }
    fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        self.0.wanted(type_url)
    }
    fn known_versions(&self, type_url: &str) -> HashMap<String, String> {
        self.0.known_versions(type_url)
    }
}

/// Which wildcard types the bootstrap asks for (`dynamic_resources.lds_config` / `cds_config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub lds: bool,
    pub cds: bool,
}

/// The wildcard types of `b`.
pub fn sources(b: &Bootstrap) -> Sources {
    let d = b.dynamic_resources.as_ref();
    Sources {
        lds: d.is_some_and(|d| d.lds_config.is_some()),
        cds: d.is_some_and(|d| d.cds_config.is_some()),
    }
}

/// Checks `dynamic_resources` against what the client implements (see the module doc).
pub fn check(b: &Bootstrap) -> Result<(), ConfigError> {
    let Some(d) = &b.dynamic_resources else {
        return Ok(());
    };
    let ctx = Ctx {
        resource: "bootstrap".into(),
    };
    let has_ads = d.ads_config.is_some();
    if let Some(cs) = &d.lds_config {
        check_config_source(&ctx, "dynamic_resources.lds_config", cs, has_ads)?;
    }
    if let Some(cs) = &d.cds_config {
        check_config_source(&ctx, "dynamic_resources.cds_config", cs, has_ads)?;
    }
    let Some(ads) = &d.ads_config else {
        return Ok(());
    };
    let f = "dynamic_resources.ads_config";
    match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc | ApiType::DeltaGrpc) => {}
        _ if ads.api_type == 0 => {
            return Err(ctx.err(
                format!("{f}.api_type"),
                "is required: DELTA_GRPC (or GRPC, which weft-proxy serves as delta ADS)",
            ));
        }
        _ => {
            let name = ApiType::try_from(ads.api_type).map_or_else(
                |_| ads.api_type.to_string(),
                |t| t.as_str_name().to_string(),
            );
            return Err(ctx.err(
                format!("{f}.api_type"),
                format!(
                    "`{name}` is not supported: use DELTA_GRPC (or GRPC, which weft-proxy also \
                     serves as delta ADS)"
                ),
            ));
        }
    }
    #[allow(deprecated)]
    const V2: i32 = ApiVersion::V2 as i32;
    if ads.transport_api_version == V2 {
        return Err(ctx.err(
            format!("{f}.transport_api_version"),
            "V2 is not supported; use V3",
        ));
    }
    if ads.grpc_services.len() > 1 {
        return Err(ctx.err(
            format!("{f}.grpc_services"),
            "only one gRPC service is supported (weft-proxy does not fail over between them)",
        ));
    }
    if let Some(svc) = ads.grpc_services.first() {
        let sf = format!("{f}.grpc_services[0]");
        if let Some(t) = &svc.timeout
            && !crate::config::duration(&ctx, &format!("{sf}.timeout"), t)?.is_zero()
        {
            return Err(ctx.err(
                format!("{sf}.timeout"),
                "not supported: the ADS stream has no deadline",
            ));
        }
        if let Some(TargetSpecifier::EnvoyGrpc(e)) = &svc.target_specifier
            && !e.authority.is_empty()
        {
            return Err(ctx.err(
                format!("{sf}.envoy_grpc.authority"),
                "not supported: the stream's :authority is the xDS server's address",
            ));
        }
    }
    ads_endpoint(b).map_err(|e| ctx.err(f, e))?;
    Ok(())
}

/// The ADS endpoint URI (`http://ip:port`) from the bootstrap: a `google_grpc.target_uri`, or
/// the first endpoint of the static cluster an `envoy_grpc` service names.
pub fn ads_endpoint(b: &Bootstrap) -> Result<Option<String>, String> {
    let Some(ads) = b
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.ads_config.as_ref())
    else {
        return Ok(None);
    };
    let svc = ads
        .grpc_services
        .first()
        .ok_or("dynamic_resources.ads_config.grpc_services: one gRPC service is required")?;
    match &svc.target_specifier {
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            let t = g
                .target_uri
                .trim_start_matches("dns:///")
                .trim_start_matches("dns:");
            if t.starts_with("https:") {
                return Err(format!(
                    "google_grpc.target_uri `{}`: TLS to the xDS server is not supported; the \
                     control plane is reached over plaintext gRPC (keep it on loopback or a \
                     trusted network)",
                    g.target_uri
                ));
            }
            Ok(Some(if t.starts_with("http") {
                t.to_string()
            } else {
                format!("http://{t}")
            }))
        }
        Some(TargetSpecifier::EnvoyGrpc(e)) => {
            let sr = b.static_resources.as_ref();
            let c = sr
                .and_then(|s| s.clusters.iter().find(|c| c.name == e.cluster_name))
                .ok_or_else(|| {
                    format!(
                        "ads_config names cluster `{}`, which static_resources does not define",
                        e.cluster_name
                    )
                })?;
            if c.transport_socket.is_some() {
                return Err(format!(
                    "cluster `{}` has a transport_socket: TLS to the xDS server is not \
                     supported, and the ADS stream must not silently go out in plaintext",
                    c.name
                ));
            }
            let ep = c
                .load_assignment
                .as_ref()
                .and_then(|la| la.endpoints.first())
                .and_then(|l| l.lb_endpoints.first())
                .and_then(|e| match &e.host_identifier {
                    Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.clone(),
                    _ => None,
                })
                .ok_or_else(|| format!("cluster `{}` has no endpoint for the xDS server", c.name))?;
            match ep.address {
                Some(Address::SocketAddress(sa)) => {
                    let port = match sa.port_specifier {
                        Some(PortSpecifier::PortValue(p)) => p,
                        _ => {
                            return Err(format!(
                                "cluster `{}`: the xDS endpoint needs a port_value",
                                c.name
                            ));
                        }
                    };
                    Ok(Some(format!("http://{}:{port}", sa.address)))
                }
                _ => Err(format!(
                    "cluster `{}`: the xDS endpoint needs a socket_address",
                    c.name
                )),
            }
        }
        None => Err(
            "dynamic_resources.ads_config.grpc_services[0]: envoy_grpc or google_grpc is required"
                .into(),
        ),
    }
}

/// Runs the xDS client until `shutdown`.
pub async fn run(control: Arc<Control>, shutdown: impl std::future::Future<Output = ()>) {
    let b = control.bootstrap();
    let endpoint = match ads_endpoint(&b) {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot start xDS");
            return;
        }
    };
    let mut node = b.node.clone().unwrap_or_default();
    if node.user_agent_name.is_empty() {
        node.user_agent_name = "weft-proxy".into();
    }
    tracing::info!(%endpoint, node = %node.id, "connecting to the control plane");
    // Every type wildcard: the control plane sends exactly the routes and endpoints this proxy
    // uses, in make-before-break order (clusters, endpoints, listeners, routes) within one push,
    // so a new cluster has its endpoints before any route points at it — no round trip to
    // subscribe by name in between. (`wanted` still answers for by-name servers.) Listeners
    // and clusters only when the bootstrap has `lds_config` / `cds_config`, as in Envoy.
    use weft_xds::server::types;
    let src = sources(&b);
    let wildcard: Vec<&str> = [
        (src.cds, types::CLUSTER),
        (true, types::ENDPOINT),
        (src.lds, types::LISTENER),
        (true, types::ROUTE),
    ]
    .into_iter()
    .filter_map(|(on, t)| on.then_some(t))
    .collect();
    let client =
        XdsClient::new(endpoint, node, Arc::new(ProxyHandler(control))).with_types(&wildcard, &[]);
    if let Err(e) = client.run(shutdown).await {
        tracing::error!(error = %e, "xDS client stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIC_XDS_CLUSTER: &str = r#"
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}}]}]
"#;

    fn boot(dynamic: &str) -> Bootstrap {
        weft_xds::from_yaml(&format!("{dynamic}{STATIC_XDS_CLUSTER}"), "test").unwrap()
    }

    const WEFT_CLI: &str = r#"
dynamic_resources:
  ads_config: {api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
"#;

    #[test]
    fn weft_cli_bootstrap_and_sotw_are_accepted() {
        let b = boot(WEFT_CLI);
        check(&b).unwrap();
        assert_eq!(
            sources(&b),
            Sources {
                lds: true,
                cds: true
            }
        );
        check(&boot(&WEFT_CLI.replace("DELTA_GRPC", "GRPC"))).unwrap();
        let only_cds =
            boot(&WEFT_CLI.replace("  lds_config: {ads: {}, resource_api_version: V3}\n", ""));
        check(&only_cds).unwrap();
        assert_eq!(
            sources(&only_cds),
            Sources {
                lds: false,
                cds: true
            }
        );
    }

    #[test]
    fn what_the_client_cannot_do_is_refused() {
        let cases = [
            (WEFT_CLI.replace("DELTA_GRPC", "REST"), "dynamic_resources.ads_config.api_type"),
            (
                WEFT_CLI.replace("api_type: DELTA_GRPC, ", ""),
                "dynamic_resources.ads_config.api_type",
            ),
            (
                WEFT_CLI.replace("transport_api_version: V3", "transport_api_version: V2"),
                "dynamic_resources.ads_config.transport_api_version",
            ),
            (
                WEFT_CLI.replace("cluster_name: xds-grpc}", "cluster_name: xds-grpc}, timeout: 5s"),
                "dynamic_resources.ads_config.grpc_services[0].timeout",
            ),
            (
                WEFT_CLI.replace("cluster_name: xds-grpc", "cluster_name: xds-grpc, authority: x"),
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.authority",
            ),
            (
                WEFT_CLI.replace(
                    "[{envoy_grpc: {cluster_name: xds-grpc}}]",
                    "[{envoy_grpc: {cluster_name: xds-grpc}}, {envoy_grpc: {cluster_name: xds-grpc}}]",
                ),
                "dynamic_resources.ads_config.grpc_services",
            ),
            (
                WEFT_CLI.replace("cluster_name: xds-grpc", "cluster_name: nowhere"),
                "dynamic_resources.ads_config",
            ),
            (
                WEFT_CLI.replace(
                    "lds_config: {ads: {}, resource_api_version: V3}",
                    "lds_config: {resource_api_version: V3}",
                ),
                "dynamic_resources.lds_config",
            ),
            (
                WEFT_CLI.replace(
                    "cds_config: {ads: {}, resource_api_version: V3}",
                    "cds_config: {ads: {}, initial_fetch_timeout: 10s}",
                ),
                "dynamic_resources.cds_config.initial_fetch_timeout",
            ),
            (
                "dynamic_resources:\n  lds_config: {ads: {}}\n".to_string(),
                "dynamic_resources.lds_config.ads",
            ),
        ];
        for (y, field) in cases {
            let e = check(&boot(&y)).expect_err(&y);
            assert_eq!(e.field, field, "{y}");
        }
    }
}
