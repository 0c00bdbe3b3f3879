//! The service registry: services from ServiceEntries (hosts × ports), their endpoints from
//! inline endpoints, WorkloadEntries and workloads that registered themselves (proxies started by
//! `weft run`, known from their xDS node metadata), plus implicit services for registered
//! workloads that no ServiceEntry selects (named after their `app` label, as a Kubernetes Service
//! would be). It also gathers the rest of translation's input: routing resources (the Gateway
//! API's rewritten into Istio's shapes by `translate::gateway_api`), Telemetry, and the
//! system's CA bundle (the only file system access: a few `stat`s, once per process).

use crate::model::{Endpoint, Port, Protocol, ProxyNode, Resolution, Service, selects};
use crate::translate::{Env, Res, fqdn, gateway_api};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

/// Where distributions keep the system's CA bundle.
const CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
];

/// The system's CA bundle, looked up once.
pub fn system_ca_bundle() -> Option<String> {
    static FOUND: OnceLock<Option<String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            CA_BUNDLES
                .iter()
                .find(|p| std::path::Path::new(p).is_file())
                .map(|p| (*p).to_string())
        })
        .clone()
}

fn labels(v: Option<&Json>) -> BTreeMap<String, String> {
    v.and_then(Json::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn endpoint_from_spec(spec: &Json, ns: &str, workload: &str) -> Option<Endpoint> {
    let address: IpAddr = spec.get("address")?.as_str()?.parse().ok()?;
    Some(Endpoint {
        address,
        ports: spec
            .get("ports")
            .and_then(Json::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|p| (k.clone(), p as u16)))
                    .collect()
            })
            .unwrap_or_default(),
        labels: labels(spec.get("labels")),
        locality: spec
            .get("locality")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string(),
        weight: spec.get("weight").and_then(Json::as_u64).unwrap_or(1) as u32,
        service_account: spec
            .get("serviceAccount")
            .and_then(Json::as_str)
            .unwrap_or("default")
            .to_string(),
        workload: workload.to_string(),
        namespace: ns.to_string(),
    })
}

fn endpoint_from_proxy(p: &ProxyNode) -> Endpoint {
    Endpoint {
        address: p.ip,
        ports: BTreeMap::new(),
        labels: p.labels.clone(),
        locality: p.locality.clone(),
        weight: 1,
        service_account: p.service_account.clone(),
        workload: p.name.clone(),
        namespace: p.namespace.clone(),
    }
}

/// Builds the translation environment from validated resources and registered workloads.
pub fn build_env(resources: &[Res], workloads: &[ProxyNode]) -> Env {
    let mut env = Env {
        system_ca: system_ca_bundle(),
        ..Default::default()
    };
    let workload_entries: Vec<&Res> = resources
        .iter()
        .filter(|r| r.kind == "WorkloadEntry")
        .collect();
    let sidecars: Vec<&ProxyNode> = workloads
        .iter()
        .filter(|w| w.role == "sidecar" && !w.proxyless)
        .collect();
    let mut selected_by_se = vec![false; sidecars.len()];
    for r in resources {
        match r.kind.as_str() {
            "VirtualService" => env.virtual_services.push(r.clone()),
            "DestinationRule" => env.destination_rules.push(r.clone()),
            "Gateway" => env.gateways.push(r.clone()),
            "Sidecar" => env.sidecars.push(r.clone()),
            "Telemetry" => env.telemetries.push(r.clone()),
            "ServiceEntry" => {
                let spec = &r.spec;
                let ports: Vec<Port> = spec
                    .get("ports")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(Port {
                            number: p.get("number")?.as_u64()? as u16,
                            name: p
                                .get("name")
                                .and_then(Json::as_str)
                                .unwrap_or("")
                                .to_string(),
                            protocol: Protocol::parse(
                                p.get("protocol").and_then(Json::as_str),
                                p.get("name").and_then(Json::as_str),
                            ),
                            target: p.get("targetPort").and_then(Json::as_u64).map(|t| t as u16),
                        })
                    })
                    .collect();
                let resolution = match spec.get("resolution").and_then(Json::as_str) {
                    Some("DNS") | Some("DNS_ROUND_ROBIN") => Resolution::Dns,
                    Some("NONE") => Resolution::None,
                    _ => Resolution::Static,
                };
                let mut endpoints: Vec<Endpoint> = spec
                    .get("endpoints")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| endpoint_from_spec(e, &r.namespace, &r.name))
                    .collect();
                if let Some(sel) = spec.pointer("/workloadSelector/labels") {
                    let sel = labels(Some(sel));
                    for we in workload_entries
                        .iter()
                        .filter(|w| w.namespace == r.namespace)
                    {
                        if selects(&sel, &labels(we.spec.get("labels")))
                            && let Some(ep) = endpoint_from_spec(&we.spec, &we.namespace, &we.name)
                        {
                            endpoints.push(ep);
                        }
                    }
                    for (i, w) in sidecars.iter().enumerate() {
                        if w.namespace == r.namespace && selects(&sel, &w.labels) {
                            endpoints.push(endpoint_from_proxy(w));
                            selected_by_se[i] = true;
                        }
                    }
                }
                endpoints
                    .sort_by(|a, b| a.address.cmp(&b.address).then(a.workload.cmp(&b.workload)));
                let mesh_external =
                    spec.get("location").and_then(Json::as_str) == Some("MESH_EXTERNAL");
                let addresses: Vec<String> = spec
                    .get("addresses")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect();
                let export_to: Vec<String> = spec
                    .get("exportTo")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect();
                for h in spec
                    .get("hosts")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                {
                    env.services.push(Service {
                        hostname: if h.contains('.') {
                            h.to_string()
                        } else {
                            fqdn(h, &r.namespace)
                        },
                        namespace: r.namespace.clone(),
                        ports: ports.clone(),
                        resolution,
                        mesh_external,
                        endpoints: endpoints.clone(),
                        export_to: export_to.clone(),
                        addresses: addresses.clone(),
                        origin: r.id(),
                    });
                }
            }
            _ => {}
        }
    }
    // Implicit services: registered workloads no ServiceEntry selects, grouped by `app` label.
    let mut implicit: BTreeMap<(String, String), Service> = BTreeMap::new();
    for (i, w) in sidecars.iter().enumerate() {
        if selected_by_se[i] || w.inbound.is_empty() {
            continue;
        }
        let app = w
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| w.name.clone());
        let host = fqdn(&app, &w.namespace);
        if env.services.iter().any(|s| s.hostname == host) {
            continue;
        }
        let svc = implicit
            .entry((w.namespace.clone(), app.clone()))
            .or_insert_with(|| Service {
                hostname: host.clone(),
                namespace: w.namespace.clone(),
                ports: Vec::new(),
                resolution: Resolution::Static,
                mesh_external: false,
                endpoints: Vec::new(),
                export_to: Vec::new(),
                addresses: Vec::new(),
                origin: format!("implicit (workloads with app={app})"),
            });
        for (port, _) in &w.inbound {
            if !svc.ports.iter().any(|p| p.number == *port) {
                svc.ports.push(Port {
                    number: *port,
                    name: format!("http-{port}"),
                    protocol: Protocol::Http,
                    target: None,
                });
            }
        }
        svc.endpoints.push(endpoint_from_proxy(w));
    }
    env.services.extend(implicit.into_values());
    env.services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    env.services.dedup_by(|a, b| a.hostname == b.hostname);
    let (gateways, virtual_services) = gateway_api::convert(resources);
    env.gateways.extend(gateways);
    env.virtual_services.extend(virtual_services);
    env.index();
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(kind: &str, name: &str, spec: Json) -> Res {
        Res {
            kind: kind.into(),
            name: name.into(),
            namespace: "default".into(),
            spec,
        }
    }

    fn node(locality: Option<(&str, &str, &str)>) -> ProxyNode {
        use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
        let labels = Struct {
            fields: [(
                "app".to_string(),
                Value {
                    kind: Some(Kind::StringValue("reviews".into())),
                },
            )]
            .into(),
        };
        let n = Node {
            id: "sidecar~127.0.1.7~reviews-1.default~default.svc.cluster.local".into(),
            locality: locality.map(|(r, z, s)| Locality {
                region: r.into(),
                zone: z.into(),
                sub_zone: s.into(),
            }),
            metadata: Some(Struct {
                fields: [
                    (
                        "LABELS".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(labels)),
                        },
                    ),
                    (
                        "WEFT_INBOUND".to_string(),
                        Value {
                            kind: Some(Kind::ListValue(
                                envoy_types::pb::google::protobuf::ListValue {
                                    values: vec![Value {
                                        kind: Some(Kind::StructValue(Struct {
                                            fields: [
                                                (
                                                    "port".to_string(),
                                                    Value {
                                                        kind: Some(Kind::NumberValue(9080.0)),
                                                    },
                                                ),
                                                (
                                                    "app_port".to_string(),
                                                    Value {
                                                        kind: Some(Kind::NumberValue(19080.0)),
                                                    },
                                                ),
                                            ]
                                            .into(),
                                        })),
                                    }],
                                },
                            )),
                        },
                    ),
                ]
                .into(),
            }),
            ..Default::default()
        };
        ProxyNode::from_node(&n)
    }

    #[test]
    fn registered_workloads_carry_their_node_locality() {
        let p = node(Some(("us-east", "a", "")));
        assert_eq!(p.locality, "us-east/a/");
        assert_eq!(node(None).locality, "");
        let env = build_env(&[], &[p]);
        let svc = env
            .services
            .iter()
            .find(|s| s.hostname == "reviews.default.svc.cluster.local")
            .unwrap();
        assert_eq!(svc.endpoints[0].locality, "us-east/a/");
    }

    #[test]
    fn gathers_addresses_telemetry_and_gateway_api_and_indexes() {
        let resources = vec![
            r(
                "ServiceEntry",
                "db",
                json!({"hosts": ["db.example.com"], "addresses": ["10.1.0.5"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
                    "resolution": "STATIC", "endpoints": [{"address": "127.0.1.2", "locality": "r1/z1"}, {"address": "127.0.1.3", "locality": "r2/z2"}]}),
            ),
            r(
                "DestinationRule",
                "db",
                json!({"host": "db.example.com", "trafficPolicy": {"outlierDetection": {}}}),
            ),
            r(
                "Telemetry",
                "mesh",
                json!({"accessLogging": [{"disabled": true}]}),
            ),
            r(
                "KubernetesGateway",
                "web",
                json!({"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}),
            ),
            r(
                "HTTPRoute",
                "web",
                json!({"parentRefs": [{"name": "web"}], "rules": [{"backendRefs": [{"name": "db", "port": 5432}]}]}),
            ),
        ];
        let env = build_env(&resources, &[]);
        let db = env
            .services
            .iter()
            .find(|s| s.hostname == "db.example.com")
            .unwrap();
        assert_eq!(db.addresses, ["10.1.0.5"]);
        assert_eq!(env.telemetries.len(), 1);
        assert_eq!(env.gateways.len(), 1);
        assert_eq!(env.gateways[0].name, "web:http");
        assert_eq!(env.virtual_services.len(), 1);
        assert_eq!(env.virtual_services[0].kind, "HTTPRoute");
        // Outlier detection on a service spread over two localities: EDS is per locality.
        assert!(env.derived.locality);
        assert!(env.derived.by_host.contains_key("db.example.com"));
    }

    /// The specs translation reads are weft-api's serialization of what users write: check the
    /// shapes end to end, from YAML.
    #[test]
    fn yaml_through_the_store_translates() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.2}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - fault:
      delay: {fixedDelay: 7s, percentage: {value: 100}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
    corsPolicy: {allowOrigins: [{exact: "https://a"}], maxAge: 24h, allowMethods: [GET]}
    mirror: {host: reviews}
    mirrorPercentage: {value: 25}
    route: [{destination: {host: reviews}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  gatewayClassName: weft
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /r}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: reviews, port: 9080}]
"#;
        let stored = crate::store::parse("test.yaml", yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let resources: Vec<Res> = stored.iter().map(crate::store::Stored::res).collect();
        let env = build_env(&resources, &[]);
        let mut sidecar = node(None);
        sidecar.labels.clear();
        let out = crate::translate::for_proxy(&sidecar, &env);
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
            })
            .cloned()
            .unwrap_or_default();
        let r = &vh["routes"][1];
        let f = &r["typed_per_filter_config"]["envoy.filters.http.fault"];
        assert_eq!(f["delay"]["fixed_delay"], "7s");
        assert_eq!(f["abort"]["grpc_status"], 14);
        let c = &r["typed_per_filter_config"]["envoy.filters.http.cors"];
        assert_eq!(c["max_age"], "86400");
        assert_eq!(
            r["route"]["request_mirror_policies"][0]["runtime_fraction"]["default_value"]["numerator"],
            25
        );
        let mut gw = node(None);
        gw.role = "router".into();
        gw.labels = [(
            gateway_api::GATEWAY_NAME_LABEL.to_string(),
            "web".to_string(),
        )]
        .into();
        let out = crate::translate::for_proxy(&gw, &env);
        let route = &out.routes["http.80"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["match"]["path_separated_prefix"], "/r");
        assert_eq!(route["route"]["regex_rewrite"]["pattern"]["regex"], "^/r/*");
        assert_eq!(route["route"]["regex_rewrite"]["substitution"], "/");
    }
}
