//! Envoy bootstraps for the proxies `weft` starts locally (sidecars and gateways): node
//! identity and metadata in Istio's shape, an admin address, and ADS to the control plane.
//!
//! The control plane learns everything about a workload from this metadata when the proxy
//! connects, which is also how registrations survive a control-plane restart.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// What a local proxy is.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// `sidecar` or `router` (gateways), as in Istio's node ids.
    pub role: &'static str,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: IpAddr,
    /// (service port, app port) pairs served by the sidecar's inbound listeners.
    pub inbound: Vec<(u16, u16)>,
    /// Gateway port → local bind port (`80 → 8080`).
    pub port_map: Vec<(u16, u16)>,
    pub admin: SocketAddr,
    pub xds: SocketAddr,
}

impl ProxySpec {
    /// Istio's node id: `sidecar~IP~NAME.NS~NS.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}.svc.cluster.local",
            self.role, self.ip, self.name, self.namespace, self.namespace
        )
    }

    /// The bootstrap, as JSON (a YAML superset, so weft-proxy reads it as-is).
    pub fn bootstrap(&self) -> Value {
        let inbound: Vec<Value> = self
            .inbound
            .iter()
            .map(|(p, a)| json!({"port": p, "app_port": a}))
            .collect();
        let port_map: serde_json::Map<String, Value> = self
            .port_map
            .iter()
            .map(|(g, l)| (g.to_string(), json!(l.to_string())))
            .collect();
        json!({
            "node": {
                "id": self.node_id(),
                "cluster": format!("{}.{}", self.name, self.namespace),
                "metadata": {
                    "NAMESPACE": self.namespace,
                    "WORKLOAD_NAME": self.name,
                    "SERVICE_ACCOUNT": self.service_account,
                    "LABELS": self.labels,
                    "INSTANCE_IPS": self.ip.to_string(),
                    "WEFT_INBOUND": inbound,
                    "WEFT_PORT_MAP": port_map,
                    "WEFT_ADMIN": self.admin.to_string(),
                }
            },
            "admin": {"address": {"socket_address": {"address": self.admin.ip().to_string(), "port_value": self.admin.port()}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "DELTA_GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {
                "clusters": [{
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": self.xds.ip().to_string(), "port_value": self.xds.port()
                        }}}}]}]
                    }
                }]
            }
        })
    }
}
