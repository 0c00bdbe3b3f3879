//! The control plane's view of the mesh, independent of where it came from: services with
//! their ports and endpoints, and the proxies connected to it.
//!
//! Built from ServiceEntries, WorkloadEntries and workloads registered by `weft run` (or, later,
//! Kubernetes and etcd); consumed by translation.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Protocol of a service port (Istio's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    /// Istio's protocol selection: the port's `protocol`, else its name prefix (`http-web`).
    pub fn parse(protocol: Option<&str>, name: Option<&str>) -> Protocol {
        let p = protocol
            .or_else(|| name.map(|n| n.split('-').next().unwrap_or(n)))
            .unwrap_or("");
        match p.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            // Unknown and TCP-ish protocols (MONGO, REDIS, MYSQL...) are proxied as TCP.
            _ => Protocol::Tcp,
        }
    }
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    /// Port on the endpoints (ServiceEntry `targetPort`), if different.
    pub target: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Resolution {
    Static,
    Dns,
    None,
}

/// One endpoint of a service (a workload address).
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Port name → endpoint port (WorkloadEntry `ports`), or none to use the service port.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub locality: String,
    pub weight: u32,
    pub service_account: String,
    /// The workload's name, for display.
    pub workload: String,
    pub namespace: String,
}

/// A service: one host of a ServiceEntry.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// FQDN, `reviews.default.svc.cluster.local`.
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub endpoints: Vec<Endpoint>,
    /// `exportTo` (`*` when empty).
    pub export_to: Vec<String>,
    /// ServiceEntry `addresses` (VIPs or CIDRs), for `destinationSubnets` and CONNECT by address.
    pub addresses: Vec<String>,
    /// Where it came from, `ServiceEntry default/reviews`.
    pub origin: String,
}

impl Service {
    /// Short names a client in `from_ns` may use: `reviews`, `reviews.default`,
    /// `reviews.default.svc`, plus the FQDN.
    pub fn aliases(&self, from_ns: &str) -> Vec<String> {
        let mut out = vec![self.hostname.clone()];
        if let Some(short) = self.hostname.strip_suffix(".svc.cluster.local") {
            // short = "reviews.default"
            if let Some((name, ns)) = short.split_once('.') {
                if ns == from_ns {
                    out.push(name.to_string());
                }
                out.push(short.to_string());
                out.push(format!("{name}.{ns}.svc"));
            }
        }
        out
    }

    pub fn visible_from(&self, ns: &str) -> bool {
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || e == ns || (e == "." && self.namespace == ns))
    }
}

/// A proxy connected to the control plane (from its xDS node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyNode {
    pub id: String,
    /// `sidecar` or `router`.
    pub role: String,
    pub ip: IpAddr,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// (service port, app port).
    pub inbound: Vec<(u16, u16)>,
    /// Gateway port → bind port.
    pub port_map: BTreeMap<u16, u16>,
    /// A proxyless gRPC client rather than a weft/Envoy proxy.
    pub proxyless: bool,
    /// `region/zone/sub_zone` from the bootstrap's `node.locality` (else the topology labels),
    /// as endpoints write it; empty when unknown.
    #[serde(default)]
    pub locality: String,
}

impl ProxyNode {
    /// Parses an xDS node: Istio's id `role~ip~name.ns~ns.svc.cluster.local` and weft metadata.
    pub fn from_node(node: &envoy_types::pb::envoy::config::core::v3::Node) -> ProxyNode {
        let meta = node.metadata.as_ref();
        let field = |k: &str| {
            meta.and_then(|m| m.fields.get(k))
                .and_then(|v| v.kind.clone())
        };
        use envoy_types::pb::google::protobuf::value::Kind;
        let string = |k: &str| match field(k) {
            Some(Kind::StringValue(s)) => Some(s),
            _ => None,
        };
        let parts: Vec<&str> = node.id.split('~').collect();
        let role = parts
            .first()
            .filter(|r| **r == "sidecar" || **r == "router")
            .map_or("sidecar", |r| *r)
            .to_string();
        let ip = string("INSTANCE_IPS")
            .and_then(|s| s.split(',').next().and_then(|i| i.parse().ok()))
            .or_else(|| parts.get(1).and_then(|i| i.parse().ok()))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let (name, ns_from_id) = parts
            .get(2)
            .and_then(|p| p.split_once('.'))
            .map_or((node.id.clone(), None), |(n, ns)| {
                (n.to_string(), Some(ns.to_string()))
            });
        let namespace = string("NAMESPACE")
            .or(ns_from_id)
            .unwrap_or_else(|| "default".into());
        let mut labels = BTreeMap::new();
        if let Some(Kind::StructValue(s)) = field("LABELS") {
            for (k, v) in s.fields {
                if let Some(Kind::StringValue(v)) = v.kind {
                    labels.insert(k, v);
                }
            }
        }
        let mut inbound = Vec::new();
        if let Some(Kind::ListValue(l)) = field("WEFT_INBOUND") {
            for v in l.values {
                if let Some(Kind::StructValue(s)) = v.kind {
                    let num = |k: &str| match s.fields.get(k).and_then(|v| v.kind.clone()) {
                        Some(Kind::NumberValue(n)) => Some(n as u16),
                        Some(Kind::StringValue(s)) => s.parse().ok(),
                        _ => None,
                    };
                    if let (Some(p), Some(a)) = (num("port"), num("app_port")) {
                        inbound.push((p, a));
                    }
                }
            }
        }
        let mut port_map = BTreeMap::new();
        if let Some(Kind::StructValue(s)) = field("WEFT_PORT_MAP") {
            for (k, v) in s.fields {
                let local = match v.kind {
                    Some(Kind::StringValue(s)) => s.parse().ok(),
                    Some(Kind::NumberValue(n)) => Some(n as u16),
                    _ => None,
                };
                if let (Ok(g), Some(l)) = (k.parse(), local) {
                    port_map.insert(g, l);
                }
            }
        }
        let locality = match &node.locality {
            Some(l) if !(l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()) => {
                format!("{}/{}/{}", l.region, l.zone, l.sub_zone)
            }
            _ => locality_from_labels(&labels),
        };
        let proxyless = node
            .user_agent_name
            .to_ascii_lowercase()
            .starts_with("grpc")
            || string("GENERATOR").as_deref() == Some("grpc");
        ProxyNode {
            id: node.id.clone(),
            role,
            ip,
            name: string("WORKLOAD_NAME").unwrap_or(name),
            namespace,
            labels,
            service_account: string("SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            inbound,
            port_map,
            proxyless,
            locality,
        }
    }
}

/// `region/zone/sub_zone` from Kubernetes' topology labels (`topology.kubernetes.io/region`,
/// `topology.kubernetes.io/zone`, `topology.istio.io/subzone`); empty when none is set.
pub fn locality_from_labels(labels: &BTreeMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).map_or("", String::as_str);
    let (r, z, s) = (
        get("topology.kubernetes.io/region"),
        get("topology.kubernetes.io/zone"),
        get("topology.istio.io/subzone"),
    );
    if r.is_empty() && z.is_empty() && s.is_empty() {
        String::new()
    } else {
        format!("{r}/{z}/{s}")
    }
}

/// Whether `labels` carries every `selector` pair.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
