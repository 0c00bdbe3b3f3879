//! TCP and TLS routing: the `tcp` and `tls` rules of a VirtualService (match `port`,
//! `destinationSubnets`, `sourceLabels`, `sourceNamespace`, `sourceSubnet`, `gateways`, and for
//! TLS `sniHosts`; route destinations with weights).
//!
//! On sidecars, applications reach TCP/TLS services through `CONNECT host:port` on the explicit
//! outbound proxy, so the first matching rule decides the CONNECT route's cluster(s) — decided
//! here, per proxy, at config time. On gateways the rules become `tcp_proxy` filter chains (see
//! `gateway`). Source conditions are known per proxy and evaluated here; nothing in this module
//! runs per connection, and it must not do I/O.

use super::{Env, Res, RouteCx, destination_cluster, gateway_bound, host_matches};
use crate::model::{Port, Protocol, Service};
use serde_json::{Value as Json, json};
use std::net::IpAddr;

/// Where a TCP connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Cluster(String),
    /// (cluster, weight); weights are relative.
    Weighted(Vec<(String, u32)>),
}

/// What Istio takes to be the idle timeout of TCP traffic when no DestinationRule sets one.
pub const DEFAULT_TCP_IDLE_TIMEOUT: &str = "3600s";

impl Target {
    /// The `connectionPool.tcp.idleTimeout` of the DestinationRule (subset and port-level
    /// settings included) for TCP traffic to this target, as Istio applies it to a
    /// single-destination `tcp_proxy`. None for a weighted target, and where no rule sets one.
    pub(crate) fn tcp_idle_timeout(&self, env: &Env, from_ns: &str) -> Option<Json> {
        let Target::Cluster(c) = self else {
            return None;
        };
        super::tcp_idle_timeout(env, c, from_ns)
    }
}

/// Whether `ip` lies in `cidr` (`10.0.0.0/8`, or a plain address).
pub fn in_subnet(ip: IpAddr, cidr: &str) -> bool {
    let (base, bits) = match cidr.split_once('/') {
        Some((b, n)) => match n.parse::<u32>() {
            Ok(n) => (b, Some(n)),
            Err(_) => return false,
        },
        None => (cidr, None),
    };
    let Ok(base) = base.parse::<IpAddr>() else {
        return false;
    };
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let n = bits.unwrap_or(32).min(32);
            let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let n = bits.unwrap_or(128).min(128);
            let mask = if n == 0 { 0 } else { u128::MAX << (128 - n) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The route destinations of a tcp/tls rule as a target (None when there are none).
fn rule_target(rule: &Json, vs_ns: &str, cx: &RouteCx<'_>) -> Option<Target> {
    let dests: Vec<&Json> = rule
        .get("route")
        .and_then(Json::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    match dests.as_slice() {
        [] => None,
        [one] => Some(Target::Cluster(destination_cluster(
            &one["destination"],
            vs_ns,
            cx,
        ))),
        many => {
            let ws: Vec<(String, u32)> = many
                .iter()
                .map(|d| {
                    (
                        destination_cluster(&d["destination"], vs_ns, cx),
                        d.get("weight").and_then(Json::as_u64).unwrap_or(0) as u32,
                    )
                })
                .filter(|(_, w)| *w > 0)
                .collect();
            match ws.len() {
                0 => Some(Target::Cluster(destination_cluster(
                    &many[0]["destination"],
                    vs_ns,
                    cx,
                ))),
                1 => Some(Target::Cluster(ws[0].0.clone())),
                _ => Some(Target::Weighted(ws)),
            }
        }
    }
}

/// Whether one L4 match (TCP `L4MatchAttributes` or TLS `TLSMatchAttributes`, minus SNI)
/// applies to this proxy and port. `svc` is the destination service on sidecars (its
/// addresses decide `destinationSubnets`); on gateways the gateway's own address does.
fn l4_match(m: &Json, cx: &RouteCx<'_>, svc: Option<&Service>) -> bool {
    if let Some(p) = m.get("port").and_then(Json::as_u64)
        && p != u64::from(cx.port)
    {
        return false;
    }
    if let Some(sel) = m.get("sourceLabels").and_then(Json::as_object)
        && !sel
            .iter()
            .all(|(k, v)| cx.proxy.labels.get(k).map(String::as_str) == v.as_str())
    {
        return false;
    }
    if let Some(ns) = m.get("sourceNamespace").and_then(Json::as_str)
        && !ns.is_empty()
        && ns != cx.proxy.namespace
    {
        return false;
    }
    if let Some(gws) = m.get("gateways").and_then(Json::as_array)
        && !gws.is_empty()
    {
        let ns = cx.proxy.namespace.as_str();
        let ok = gws
            .iter()
            .filter_map(Json::as_str)
            .any(|g| match cx.gateway {
                None => g == "mesh",
                Some(here) => g == here || super::qualify_gateway(g, ns) == here,
            });
        if !ok {
            return false;
        }
    }
    if let Some(s) = m.get("sourceSubnet").and_then(Json::as_str)
        && !s.is_empty()
    {
        // A sidecar's clients are its own workload; a gateway's are not known in advance.
        if cx.gateway.is_some() || !in_subnet(cx.proxy.ip, s) {
            return false;
        }
    }
    let subnets: Vec<&str> = m
        .get("destinationSubnets")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    if !subnets.is_empty() {
        let ok = match svc {
            Some(svc) => svc.addresses.iter().any(|a| {
                a.split('/')
                    .next()
                    .and_then(|b| b.parse::<IpAddr>().ok())
                    .is_some_and(|ip| subnets.iter().any(|s| in_subnet(ip, s)))
            }),
            None => subnets.iter().any(|s| in_subnet(cx.proxy.ip, s)),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether an SNI pattern of a `tls` match covers the host a sidecar's client connects to
/// (a CONNECT carries no SNI: the service's name stands for it).
fn sni_covers(sni: &str, vs_ns: &str, svc: &Service) -> bool {
    Env::covers(sni, vs_ns, &svc.hostname)
}

/// The CONNECT target for a TCP/TLS service port on a sidecar: the first `tls` rule whose
/// match applies (TLS/HTTPS ports), else the first applying `tcp` rule. None = the default
/// cluster.
pub(crate) fn sidecar_target(
    vs: Option<&Res>,
    svc: &Service,
    port: &Port,
    cx: &RouteCx<'_>,
) -> Option<Target> {
    let vs = vs?;
    if matches!(port.protocol, Protocol::Tls | Protocol::Https) {
        for rule in vs.list("tls") {
            let applies = rule
                .get("match")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .any(|m| {
                    m.get("sniHosts")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Json::as_str)
                        .any(|h| sni_covers(h, &vs.namespace, svc))
                        && l4_match(m, cx, Some(svc))
                });
            if applies && let Some(t) = rule_target(rule, &vs.namespace, cx) {
                return Some(t);
            }
        }
    }
    first_tcp(vs, cx, Some(svc))
}

/// The first `tcp` rule of `vs` that applies (no `match` = always).
fn first_tcp(vs: &Res, cx: &RouteCx<'_>, svc: Option<&Service>) -> Option<Target> {
    for rule in vs.list("tcp") {
        let ms: Vec<&Json> = rule
            .get("match")
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if (ms.is_empty() || ms.iter().any(|m| l4_match(m, cx, svc)))
            && let Some(t) = rule_target(rule, &vs.namespace, cx)
        {
            return Some(t);
        }
    }
    None
}

/// The CONNECT route of an outbound virtual host, to `target`. The tunnel carries TCP: it
/// closes after `idle_timeout` without a byte either way (the route's own stream idle timeout;
/// the outbound connection manager has none).
pub fn connect_route(target: &Target, idle_timeout: Json) -> Json {
    let mut action = json!({"timeout": "0s", "idle_timeout": idle_timeout,
        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]});
    match target {
        Target::Cluster(c) => action["cluster"] = json!(c),
        Target::Weighted(ws) => {
            action["weighted_clusters"] = json!({"clusters": ws
                .iter()
                .map(|(c, w)| json!({"name": c, "weight": w}))
                .collect::<Vec<_>>()});
        }
    }
    json!({"name": "connect", "match": {"connect_matcher": {}}, "route": action})
}

/// VirtualServices bound to gateway `gw_id`, in a stable order, each with the hosts the
/// server's `hosts` admit (see [`super::gateway::admitted`]).
fn bound<'e>(env: &'e Env, gw_id: &str) -> Vec<&'e Res> {
    let mut v: Vec<&Res> = env
        .virtual_services
        .iter()
        .filter(|vs| gateway_bound(vs, Some(gw_id)))
        .collect();
    v.sort_by_key(|vs| (vs.namespace.clone(), vs.name.clone()));
    v
}

/// A gateway TCP server (or a TLS server that terminates): the first applying `tcp` rule of
/// the first VirtualService bound to the gateway whose hosts the server admits.
pub(crate) fn gateway_tcp_target(
    env: &Env,
    cx: &RouteCx<'_>,
    gw_ns: &str,
    server_hosts: &[String],
) -> Option<Target> {
    let gw_id = cx.gateway?;
    bound(env, gw_id)
        .into_iter()
        .filter(|vs| !super::gateway::admitted(server_hosts, gw_ns, vs).is_empty())
        .find_map(|vs| first_tcp(vs, cx, None))
}

/// A gateway TLS PASSTHROUGH server: one (SNI names, target) per applying `tls` rule match,
/// SNI names limited to those the server's hosts admit; the first claim of a name wins.
pub(crate) fn gateway_tls_routes(
    env: &Env,
    cx: &RouteCx<'_>,
    gw_ns: &str,
    server_hosts: &[String],
) -> Vec<(Vec<String>, Target)> {
    let Some(gw_id) = cx.gateway else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<String>, Target)> = Vec::new();
    let mut claimed: Vec<String> = Vec::new();
    for vs in bound(env, gw_id) {
        let admitted = super::gateway::admitted(server_hosts, gw_ns, vs);
        if admitted.is_empty() {
            continue;
        }
        for rule in vs.list("tls") {
            let Some(target) = rule_target(rule, &vs.namespace, cx) else {
                continue;
            };
            let mut names = Vec::new();
            for m in rule
                .get("match")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                if !l4_match(m, cx, None) {
                    continue;
                }
                for sni in m
                    .get("sniHosts")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                {
                    // The SNI as narrowed by what the server admits (`*.a.com` on a server for
                    // `x.a.com` is `x.a.com`).
                    for a in &admitted {
                        let name = if host_matches(a, sni) {
                            sni.to_string()
                        } else if host_matches(sni, a) {
                            a.clone()
                        } else {
                            continue;
                        };
                        if !claimed.contains(&name) && !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
            }
            if !names.is_empty() {
                claimed.extend(names.iter().cloned());
                out.push((names, target));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use crate::model::{Port, Protocol};

    fn tcp_svc(host: &str, port: u16, proto: Protocol, eps: &[(&str, &str)]) -> Service {
        let mut s = svc(host, "default", port, eps);
        s.ports = vec![Port {
            number: port,
            name: "tcp".into(),
            protocol: proto,
            target: None,
        }];
        s
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_subnet(ip("10.1.2.3"), "10.0.0.0/8"));
        assert!(!in_subnet(ip("11.1.2.3"), "10.0.0.0/8"));
        assert!(in_subnet(ip("10.1.2.3"), "10.1.2.3"));
        assert!(in_subnet(ip("10.1.2.3"), "0.0.0.0/0"));
        assert!(in_subnet(ip("fd00::1"), "fd00::/8"));
        assert!(!in_subnet(ip("fd00::1"), "10.0.0.0/8"));
        assert!(!in_subnet(ip("10.0.0.1"), "garbage/8"));
    }

    #[test]
    fn sidecar_connect_route_follows_tcp_rules_with_weights() {
        let mut db = tcp_svc(
            "db.default.svc.cluster.local",
            3306,
            Protocol::Tcp,
            &[("127.0.1.2", "v1"), ("127.0.1.3", "v2")],
        );
        db.addresses = vec!["10.9.0.1".into()];
        let env = Env {
            services: vec![db],
            destination_rules: vec![res(
                "DestinationRule",
                "db",
                json!({"host": "db", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
            )],
            virtual_services: vec![res(
                "VirtualService",
                "db",
                json!({"hosts": ["db"], "tcp": [
                    {"match": [{"port": 9999}], "route": [{"destination": {"host": "db", "subset": "v1"}}]},
                    {"match": [{"sourceLabels": {"app": "other"}}], "route": [{"destination": {"host": "db", "subset": "v1"}}]},
                    {"match": [{"port": 3306, "destinationSubnets": ["10.9.0.0/16"]}], "route": [
                        {"destination": {"host": "db", "subset": "v1"}, "weight": 80},
                        {"destination": {"host": "db", "subset": "v2"}, "weight": 20}]}
                ]}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "db.default.svc.cluster.local:3306")
            .unwrap()
            .clone();
        assert!(
            vh["domains"]
                .as_array()
                .unwrap()
                .contains(&json!("10.9.0.1:3306"))
        );
        let routes = vh["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 1, "TCP ports only get the CONNECT route");
        assert_eq!(routes[0]["match"]["connect_matcher"], json!({}));
        assert_eq!(
            routes[0]["route"]["weighted_clusters"]["clusters"],
            json!([
                {"name": "outbound|3306|v1|db.default.svc.cluster.local", "weight": 80},
                {"name": "outbound|3306|v2|db.default.svc.cluster.local", "weight": 20}
            ])
        );
        // Weighted destinations: Istio's default TCP idle timeout.
        assert_eq!(routes[0]["route"]["idle_timeout"], DEFAULT_TCP_IDLE_TIMEOUT);
    }

    /// A tunnel to one destination closes after its DestinationRule's TCP idle timeout, the
    /// subset's own (port-level) setting winning; without a rule, after Istio's default.
    #[test]
    fn sidecar_tunnel_idle_timeout_follows_the_destination_rule() {
        let env = Env {
            services: vec![
                tcp_svc(
                    "db.default.svc.cluster.local",
                    3306,
                    Protocol::Tcp,
                    &[("127.0.1.2", "v1")],
                ),
                tcp_svc(
                    "cache.default.svc.cluster.local",
                    6379,
                    Protocol::Tcp,
                    &[("127.0.1.3", "v1")],
                ),
                tcp_svc(
                    "queue.default.svc.cluster.local",
                    5672,
                    Protocol::Tcp,
                    &[("127.0.1.4", "v1")],
                ),
            ],
            destination_rules: vec![
                res(
                    "DestinationRule",
                    "db",
                    json!({"host": "db", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "90s"}}},
                        "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"portLevelSettings": [
                            {"port": {"number": 3306}, "connectionPool": {"tcp": {"idleTimeout": "30s"}}}]}}]}),
                ),
                res(
                    "DestinationRule",
                    "queue",
                    json!({"host": "queue", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "7200s"}}}}),
                ),
            ],
            virtual_services: vec![res(
                "VirtualService",
                "db",
                json!({"hosts": ["db"], "tcp": [{"route": [{"destination": {"host": "db", "subset": "v1"}}]}]}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let idle = |name: &str| {
            out.routes["outbound"]["virtual_hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .map(|v| v["routes"][0]["route"]["idle_timeout"].clone())
                .unwrap()
        };
        assert_eq!(idle("db.default.svc.cluster.local:3306"), "30s");
        assert_eq!(idle("queue.default.svc.cluster.local:5672"), "7200s");
        assert_eq!(
            idle("cache.default.svc.cluster.local:6379"),
            DEFAULT_TCP_IDLE_TIMEOUT
        );
    }

    #[test]
    fn sidecar_tls_rules_match_sni_against_the_service_name() {
        let env = Env {
            services: vec![
                tcp_svc(
                    "api.example.com",
                    443,
                    Protocol::Tls,
                    &[("127.0.1.2", "v1")],
                ),
                tcp_svc(
                    "other.example.com",
                    443,
                    Protocol::Tls,
                    &[("127.0.1.3", "v1")],
                ),
            ],
            virtual_services: vec![res(
                "VirtualService",
                "api",
                json!({"hosts": ["api.example.com"], "tls": [
                    {"match": [{"sniHosts": ["api.example.com"], "port": 443}], "route": [{"destination": {"host": "other.example.com"}}]}
                ]}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "api.example.com:443")
            .unwrap()
            .clone();
        assert_eq!(
            vh["routes"][0]["route"]["cluster"],
            "outbound|443||other.example.com"
        );
    }
}
