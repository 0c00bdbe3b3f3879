//! The proxy's side of xDS: finds the ADS server named by the bootstrap
//! (`dynamic_resources.ads_config`), runs the `weft-xds` client, and hands every update to
//! `runtime::Control`, which applies it or refuses it (NACK, with the resource and field) while
//! the last good config keeps serving. The client reconnects with backoff on its own.

use crate::runtime::Control;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{
    address::Address, grpc_service::TargetSpecifier, socket_address::PortSpecifier,
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
    // subscribe by name in between. (`wanted` still answers for by-name servers.)
    use weft_xds::server::types;
    let client = XdsClient::new(endpoint, node, Arc::new(ProxyHandler(control))).with_types(
        &[
            types::CLUSTER,
            types::ENDPOINT,
            types::LISTENER,
            types::ROUTE,
        ],
        &[],
    );
    if let Err(e) = client.run(shutdown).await {
        tracing::error!(error = %e, "xDS client stopped");
    }
}
