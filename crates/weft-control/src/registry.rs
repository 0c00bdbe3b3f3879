//! The service registry: services from ServiceEntries (hosts × ports), their endpoints from
//! inline endpoints, WorkloadEntries and workloads that registered themselves (proxies started by
//! `weft run`, known from their xDS node metadata), plus implicit services for registered
//! workloads that no ServiceEntry selects (named after their `app` label, as a Kubernetes Service
//! would be).

use crate::model::{Endpoint, Port, Protocol, ProxyNode, Resolution, Service, selects};
use crate::translate::{Env, Res, fqdn};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::IpAddr;

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
        locality: String::new(),
        weight: 1,
        service_account: p.service_account.clone(),
        workload: p.name.clone(),
        namespace: p.namespace.clone(),
    }
}

/// Builds the translation environment from validated resources and registered workloads.
pub fn build_env(resources: &[Res], workloads: &[ProxyNode]) -> Env {
    let mut env = Env::default();
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
    env
}
