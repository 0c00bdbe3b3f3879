//! Gateway proxies (role `router`): one listener `0.0.0.0_PORT` per port of the Gateway servers
//! that select the proxy (Istio `Gateway` by `selector`; Gateway API gateways, rewritten by
//! `gateway_api`, by the label `gateway.networking.k8s.io/gateway-name` in their namespace).
//!
//! Per server kind, as Istio builds them:
//! - HTTP (HTTP, HTTP2, GRPC): a plain connection manager, RDS `http.PORT`; virtual hosts from
//!   the VirtualServices bound to the gateway whose hosts the server admits (`ns/host`), routes
//!   of several VirtualServices for one host merged; `tls.httpsRedirect` answers 301 to https.
//! - HTTPS with `tls.mode` SIMPLE / MUTUAL / OPTIONAL_MUTUAL: a filter chain per server matched
//!   by SNI (`server_names`), terminating TLS (DownstreamTlsContext from file paths or
//!   `credentialName`), RDS `https.PORT.PORTNAME.GATEWAY.NS`.
//! - TLS with PASSTHROUGH (or HTTPS without terminating mode): `tls_inspector`, one chain per
//!   SNI of the bound VirtualServices' `tls` rules → `tcp_proxy`.
//! - TLS that terminates: TLS chain → `tcp_proxy` per the `tcp` rules.
//! - TCP (and any other protocol): `tcp_proxy` per the bound VirtualServices' `tcp` rules.
//!
//! Gateway listeners bind on the proxy's port map (`80 → 8080` when the proxy cannot bind
//! privileged ports). Must not do I/O: certificate files are the proxy's to read.

use super::{
    Env, Output, Res, RouteCx, access_log, hcm, host_matches, l4, socket, tcp_proxy, vs_routes,
};
use crate::model::{ProxyNode, selects};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};

pub const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    TlsPassthrough,
    TlsTerminate,
    Tcp,
}

struct Server<'a> {
    gw: &'a Res,
    gw_id: String,
    spec: &'a Json,
    hosts: Vec<String>,
    kind: Kind,
}

fn kind_of(server: &Json) -> Option<Kind> {
    let proto = server
        .pointer("/port/protocol")
        .and_then(Json::as_str)
        .unwrap_or("HTTP")
        .to_ascii_uppercase();
    let tls = server.get("tls");
    // Istio's ServerTLSSettings.mode defaults to PASSTHROUGH.
    let mode = tls
        .and_then(|t| t.get("mode"))
        .and_then(Json::as_str)
        .unwrap_or("PASSTHROUGH");
    let terminates = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    Some(match proto.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Kind::Http,
        "HTTPS" if terminates => Kind::Https,
        "HTTPS" | "TLS" if mode == "PASSTHROUGH" => Kind::TlsPassthrough,
        "TLS" if terminates => Kind::TlsTerminate,
        // AUTO_PASSTHROUGH / ISTIO_MUTUAL are mesh-internal modes (reported, not served).
        "HTTPS" | "TLS" => return None,
        _ => Kind::Tcp,
    })
}

/// The hosts of `vs` a server's `hosts` (`ns/host`, `*/host`, `./host`, `host`) admit, each
/// narrowed to the more specific of the two (`*` on a server for `a.com` is `a.com`).
pub(crate) fn admitted(server_hosts: &[String], gw_ns: &str, vs: &Res) -> Vec<String> {
    let mut out = Vec::new();
    for h in vs.strings("hosts") {
        for sh in server_hosts {
            let (ns, host) = sh.split_once('/').unwrap_or(("*", sh));
            let ns_ok = ns == "*" || (ns == "." && vs.namespace == gw_ns) || ns == vs.namespace;
            if !ns_ok {
                continue;
            }
            let narrowed = if host_matches(host, &h) {
                h.clone()
            } else if host_matches(&h, host) {
                host.to_string()
            } else {
                continue;
            };
            if !out.contains(&narrowed) {
                out.push(narrowed);
            }
        }
    }
    out
}

/// SNI names for a server's filter chain: its hosts without namespace; none (any SNI) when
/// one of them is `*`.
fn server_names(hosts: &[String]) -> Vec<String> {
    let names: Vec<String> = hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string())
        .collect();
    if names.iter().any(|n| n == "*") {
        Vec::new()
    } else {
        names
    }
}

/// A server's DownstreamTlsContext transport socket (None when its certificate is missing or
/// its `credentialName` cannot be resolved).
pub(crate) fn downstream_tls(tls: &Json, env: &Env, alpn: bool) -> Option<Json> {
    let mode = tls.get("mode").and_then(Json::as_str).unwrap_or("");
    let s = |k: &str| {
        tls.get(k)
            .and_then(Json::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (cert, key, ca) = match s("credentialName") {
        Some(name) => {
            let [c, k, a] = env.credential_files(&name)?;
            (Some(c), Some(k), Some(a))
        }
        None => (s("serverCertificate"), s("privateKey"), s("caCertificates")),
    };
    let (cert, key) = (cert?, key?);
    let mut common = Map::new();
    common.insert(
        "tls_certificates".into(),
        json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]),
    );
    let mutual = matches!(mode, "MUTUAL" | "OPTIONAL_MUTUAL");
    if mutual {
        match ca {
            Some(ca) => {
                common.insert(
                    "validation_context".into(),
                    json!({"trusted_ca": {"filename": ca}}),
                );
            }
            None if mode == "MUTUAL" => return None,
            None => {}
        }
    }
    let version = |k: &str| {
        s(k).and_then(|v| match v.as_str() {
            "TLS_AUTO" => Some("TLS_AUTO"),
            "TLSV1_0" => Some("TLSv1_0"),
            "TLSV1_1" => Some("TLSv1_1"),
            "TLSV1_2" => Some("TLSv1_2"),
            "TLSV1_3" => Some("TLSv1_3"),
            _ => None,
        })
    };
    let mut params = Map::new();
    if let Some(v) = version("minProtocolVersion") {
        params.insert("tls_minimum_protocol_version".into(), json!(v));
    }
    if let Some(v) = version("maxProtocolVersion") {
        params.insert("tls_maximum_protocol_version".into(), json!(v));
    }
    if !params.is_empty() {
        common.insert("tls_params".into(), Json::Object(params));
    }
    if alpn {
        common.insert("alpn_protocols".into(), json!(["h2", "http/1.1"]));
    }
    let mut ctx = json!({"@type": DOWNSTREAM_TLS, "common_tls_context": common});
    if mode == "MUTUAL" {
        ctx["require_client_certificate"] = json!(true);
    }
    Some(json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx}))
}

/// Whether gateway resource `gw` configures proxy `p`.
fn selected(gw: &Res, p: &ProxyNode) -> bool {
    let sel: BTreeMap<String, String> = gw
        .spec
        .get("selector")
        .and_then(Json::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    // Gateway API gateways are deployed in their own namespace.
    selects(&sel, &p.labels) && (gw.kind != "KubernetesGateway" || gw.namespace == p.namespace)
}

/// Virtual hosts of HTTP(S) servers, keyed by domain; routes of every VirtualService bound to a
/// server for the same domain are merged (each VirtualService once).
fn http_vhosts(servers: &[&Server<'_>], env: &Env, p: &ProxyNode, port: u16) -> Vec<Json> {
    let mut vhosts: BTreeMap<String, (Vec<Json>, BTreeSet<String>)> = BTreeMap::new();
    let domains = |h: &str| {
        if h == "*" {
            vec!["*".to_string()]
        } else {
            vec![h.to_string(), format!("{h}:{port}")]
        }
    };
    for server in servers {
        if server
            .spec
            .pointer("/tls/httpsRedirect")
            .and_then(Json::as_bool)
            == Some(true)
        {
            let mut names = server_names(&server.hosts);
            if names.is_empty() {
                names.push("*".into());
            }
            for h in names {
                vhosts.entry(h).or_insert_with(|| {
                    (
                        vec![json!({"name": "https_redirect", "match": {"prefix": "/"},
                            "redirect": {"https_redirect": true, "response_code": "MOVED_PERMANENTLY"}})],
                        BTreeSet::from(["redirect".to_string()]),
                    )
                });
            }
            continue;
        }
        let cx = RouteCx {
            env,
            proxy: p,
            gateway: Some(&server.gw_id),
            port,
        };
        let mut bound: Vec<&Res> = env
            .virtual_services
            .iter()
            .filter(|vs| super::gateway_bound(vs, Some(&server.gw_id)))
            .collect();
        bound.sort_by_key(|vs| (vs.namespace.clone(), vs.name.clone()));
        for vs in bound {
            let hosts = admitted(&server.hosts, &server.gw.namespace, vs);
            if hosts.is_empty() {
                continue;
            }
            let routes = vs_routes(vs, &cx);
            for h in hosts {
                let entry = vhosts.entry(h).or_default();
                if entry.1.contains("redirect") || !entry.1.insert(vs.id()) {
                    continue;
                }
                entry.0.extend(routes.iter().cloned());
            }
        }
    }
    vhosts
        .into_iter()
        .map(|(h, (routes, _))| {
            json!({"name": format!("{h}:{port}"), "domains": domains(&h), "routes": routes})
        })
        .collect()
}

/// Listeners and routes of a gateway proxy.
pub(crate) fn gateway(p: &ProxyNode, env: &Env, out: &mut Output) {
    let mut by_port: BTreeMap<u16, Vec<Server<'_>>> = BTreeMap::new();
    for gw in env.gateways.iter().filter(|gw| selected(gw, p)) {
        for server in gw.list("servers") {
            let Some(port) = server
                .pointer("/port/number")
                .and_then(Json::as_u64)
                .and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            let Some(kind) = kind_of(server) else {
                continue;
            };
            let hosts: Vec<String> = server
                .get("hosts")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect();
            by_port.entry(port).or_default().push(Server {
                gw,
                gw_id: format!("{}/{}", gw.namespace, gw.name),
                spec: server,
                hosts,
                kind,
            });
        }
    }
    let logs = access_log::access_logs(env, p, access_log::Mode::Client);
    let mut hcm_extra = json!({"use_remote_address": true});
    if let Some(l) = &logs {
        hcm_extra["access_log"] = l.clone();
    }
    let http_filter = |stat: &str, rds: &str| {
        json!([{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm(stat, Some(rds), None, Some(hcm_extra.clone()))}])
    };
    for (port, servers) in by_port {
        let name = format!("0.0.0.0_{port}");
        let mut tls_chains: Vec<Json> = Vec::new();
        // SNI names already claimed by a chain ("" = any).
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let mut claim = |names: Vec<String>| -> Option<Vec<String>> {
            if names.is_empty() {
                return claimed.insert(String::new()).then_some(names);
            }
            let fresh: Vec<String> = names.into_iter().filter(|n| !claimed.contains(n)).collect();
            if fresh.is_empty() {
                return None;
            }
            claimed.extend(fresh.iter().cloned());
            Some(fresh)
        };
        let chain_match = |names: &[String]| {
            if names.is_empty() {
                json!({"transport_protocol": "tls"})
            } else {
                json!({"server_names": names})
            }
        };
        for server in &servers {
            let cx = RouteCx {
                env,
                proxy: p,
                gateway: Some(&server.gw_id),
                port,
            };
            match server.kind {
                Kind::Https => {
                    let Some(ts) = server
                        .spec
                        .get("tls")
                        .and_then(|t| downstream_tls(t, env, true))
                    else {
                        continue;
                    };
                    let Some(names) = claim(server_names(&server.hosts)) else {
                        continue;
                    };
                    let port_name = server
                        .spec
                        .pointer("/port/name")
                        .and_then(Json::as_str)
                        .unwrap_or("https");
                    let rname = format!(
                        "https.{port}.{port_name}.{}.{}",
                        server.gw.name, server.gw.namespace
                    );
                    let vhosts = http_vhosts(&[server], env, p, port);
                    out.routes.insert(
                        rname.clone(),
                        json!({"name": rname, "virtual_hosts": vhosts, "validate_clusters": false}),
                    );
                    tls_chains.push(json!({"filter_chain_match": chain_match(&names),
                        "transport_socket": ts, "filters": http_filter(&name, &rname)}));
                }
                Kind::TlsTerminate => {
                    let Some(ts) = server
                        .spec
                        .get("tls")
                        .and_then(|t| downstream_tls(t, env, false))
                    else {
                        continue;
                    };
                    let Some(target) =
                        l4::gateway_tcp_target(env, &cx, &server.gw.namespace, &server.hosts)
                    else {
                        continue;
                    };
                    let Some(names) = claim(server_names(&server.hosts)) else {
                        continue;
                    };
                    tls_chains.push(json!({"filter_chain_match": chain_match(&names),
                        "transport_socket": ts,
                        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy(&name, &target, target.tcp_idle_timeout(env, &p.namespace), logs.as_ref())}]}));
                }
                Kind::TlsPassthrough => {
                    for (snis, target) in
                        l4::gateway_tls_routes(env, &cx, &server.gw.namespace, &server.hosts)
                    {
                        let Some(names) = claim(snis) else {
                            continue;
                        };
                        tls_chains.push(json!({"filter_chain_match": chain_match(&names),
                            "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy(&name, &target, target.tcp_idle_timeout(env, &p.namespace), logs.as_ref())}]}));
                    }
                }
                Kind::Http | Kind::Tcp => {}
            }
        }
        // The plain-text chain: HTTP servers, else the first TCP server with a route.
        let http: Vec<&Server<'_>> = servers.iter().filter(|s| s.kind == Kind::Http).collect();
        let mut plain: Option<Json> = None;
        if !http.is_empty() {
            let rname = format!("http.{port}");
            let vhosts = http_vhosts(&http, env, p, port);
            out.routes.insert(
                rname.clone(),
                json!({"name": rname, "virtual_hosts": vhosts, "validate_clusters": false}),
            );
            plain = Some(json!({"filters": http_filter(&name, &rname)}));
        } else {
            for server in servers.iter().filter(|s| s.kind == Kind::Tcp) {
                let cx = RouteCx {
                    env,
                    proxy: p,
                    gateway: Some(&server.gw_id),
                    port,
                };
                if let Some(target) =
                    l4::gateway_tcp_target(env, &cx, &server.gw.namespace, &server.hosts)
                {
                    plain = Some(
                        json!({"filters": [{"name": "envoy.filters.network.tcp_proxy",
                        "typed_config": tcp_proxy(&name, &target, target.tcp_idle_timeout(env, &p.namespace), logs.as_ref())}]}),
                    );
                    break;
                }
            }
        }
        let mut chains = tls_chains;
        let any_tls = !chains.is_empty();
        if let Some(mut c) = plain {
            if any_tls {
                c["filter_chain_match"] = json!({"transport_protocol": "raw_buffer"});
            }
            chains.push(c);
        }
        if chains.is_empty() {
            continue;
        }
        let bind = p.port_map.get(&port).copied().unwrap_or(port);
        let mut listener = json!({
            "name": name,
            "address": socket(&p.ip.to_string(), bind),
            "filter_chains": chains,
        });
        if any_tls {
            listener["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR}}]);
        }
        out.listeners.insert(name, listener);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use crate::model::{Port, Protocol};

    fn gw_proxy() -> ProxyNode {
        let mut gw = proxy();
        gw.role = "router".into();
        gw.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
        gw.port_map = [(80u16, 8080u16), (443, 8443)].into();
        gw.inbound.clear();
        gw
    }

    fn services() -> Vec<Service> {
        let mut db = svc(
            "db.default.svc.cluster.local",
            "default",
            5432,
            &[("127.0.1.5", "v1")],
        );
        db.ports[0].protocol = Protocol::Tcp;
        let mut tls = svc(
            "secure.default.svc.cluster.local",
            "default",
            8443,
            &[("127.0.1.6", "v1")],
        );
        tls.ports = vec![Port {
            number: 8443,
            name: "tls".into(),
            protocol: Protocol::Tls,
            target: None,
        }];
        vec![
            svc(
                "productpage.default.svc.cluster.local",
                "default",
                9080,
                &[("127.0.1.1", "v1")],
            ),
            db,
            tls,
        ]
    }

    fn gateway_env(servers: Json, vss: Vec<Res>) -> Env {
        Env {
            services: services(),
            gateways: vec![res(
                "Gateway",
                "gw",
                json!({"selector": {"istio": "ingressgateway"}, "servers": servers}),
            )],
            virtual_services: vss,
            config_dir: Some("/cfg".into()),
            ..Default::default()
        }
    }

    fn pp_vs(host: &str) -> Res {
        res(
            "VirtualService",
            "pp",
            json!({"hosts": [host], "gateways": ["gw"], "http": [{"route": [{"destination": {"host": "productpage"}}]}]}),
        )
    }

    #[test]
    fn https_simple_and_mutual_terminate_with_sni_chains() {
        let env = gateway_env(
            json!([
                {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
                 "tls": {"mode": "SIMPLE", "serverCertificate": "/a.crt", "privateKey": "/a.key", "minProtocolVersion": "TLSV1_2"}},
                {"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"}, "hosts": ["default/b.example.com"],
                 "tls": {"mode": "MUTUAL", "credentialName": "b-cred"}}
            ]),
            vec![pp_vs("*.example.com")],
        );
        let out = for_proxy(&gw_proxy(), &env);
        assert_valid(&out);
        let l = &out.listeners["0.0.0.0_443"];
        assert_eq!(l["address"]["socket_address"]["port_value"], 8443);
        assert_eq!(
            l["listener_filters"][0]["name"],
            "envoy.filters.listener.tls_inspector"
        );
        let chains = l["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[0]["filter_chain_match"]["server_names"],
            json!(["a.example.com"])
        );
        let a = &chains[0]["transport_socket"]["typed_config"];
        assert_eq!(a["@type"], DOWNSTREAM_TLS);
        assert_eq!(
            a["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            "/a.crt"
        );
        assert_eq!(
            a["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"],
            "TLSv1_2"
        );
        assert!(a.get("require_client_certificate").is_none());
        let b = &chains[1]["transport_socket"]["typed_config"];
        assert_eq!(b["require_client_certificate"], true);
        assert_eq!(
            b["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/cfg/credentials/b-cred/ca.crt"
        );
        assert_eq!(
            b["common_tls_context"]["tls_certificates"][0]["private_key"]["filename"],
            "/cfg/credentials/b-cred/tls.key"
        );
        // Each server gets its own routes, with the VirtualService host narrowed to the server's.
        let ra = &out.routes["https.443.https-a.gw.default"];
        assert_eq!(ra["virtual_hosts"][0]["domains"][0], "a.example.com");
        assert_eq!(
            ra["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "outbound|9080||productpage.default.svc.cluster.local"
        );
        let hcm = &chains[0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["rds"]["route_config_name"],
            "https.443.https-a.gw.default"
        );
        assert!(hcm.get("access_log").is_some());
    }

    #[test]
    fn https_redirect_answers_301() {
        let env = gateway_env(
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["a.example.com"], "tls": {"httpsRedirect": true}}]),
            vec![pp_vs("a.example.com")],
        );
        let out = for_proxy(&gw_proxy(), &env);
        assert_valid(&out);
        let vh = &out.routes["http.80"]["virtual_hosts"][0];
        assert_eq!(vh["domains"][0], "a.example.com");
        assert_eq!(vh["routes"].as_array().unwrap().len(), 1);
        assert_eq!(vh["routes"][0]["redirect"]["https_redirect"], true);
        assert_eq!(
            vh["routes"][0]["redirect"]["response_code"],
            "MOVED_PERMANENTLY"
        );
    }

    #[test]
    fn tcp_and_tls_passthrough_servers() {
        let mut env = gateway_env(
            json!([
                {"port": {"number": 5432, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
                {"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.example.com"], "tls": {"mode": "PASSTHROUGH"}}
            ]),
            vec![
                res(
                    "VirtualService",
                    "db",
                    json!({"hosts": ["*"], "gateways": ["default/gw"], "tcp": [{"match": [{"port": 5432}], "route": [
                        {"destination": {"host": "db", "port": {"number": 5432}}, "weight": 90},
                        {"destination": {"host": "productpage"}, "weight": 10}]}]}),
                ),
                res(
                    "VirtualService",
                    "secure",
                    json!({"hosts": ["secure.example.com"], "gateways": ["gw"], "tls": [{"match": [{"sniHosts": ["secure.example.com"], "port": 443}],
                        "route": [{"destination": {"host": "secure", "port": {"number": 8443}}}]}]}),
                ),
            ],
        );
        env.destination_rules.push(res(
            "DestinationRule",
            "secure",
            json!({"host": "secure", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "45s"}}}}),
        ));
        let out = for_proxy(&gw_proxy(), &env);
        assert_valid(&out);
        let tcp = &out.listeners["0.0.0.0_5432"]["filter_chains"][0]["filters"][0]["typed_config"];
        // Weighted destinations keep the proxy's default idle timeout, as Istio's.
        assert!(tcp.get("idle_timeout").is_none(), "{tcp}");
        assert_eq!(
            tcp["weighted_clusters"]["clusters"],
            json!([{"name": "outbound|5432||db.default.svc.cluster.local", "weight": 90},
                   {"name": "outbound|9080||productpage.default.svc.cluster.local", "weight": 10}])
        );
        assert!(tcp.get("access_log").is_some());
        let tls = &out.listeners["0.0.0.0_443"];
        assert_eq!(
            tls["listener_filters"][0]["typed_config"]["@type"],
            TLS_INSPECTOR
        );
        let chain = &tls["filter_chains"][0];
        assert_eq!(
            chain["filter_chain_match"]["server_names"],
            json!(["secure.example.com"])
        );
        assert!(chain.get("transport_socket").is_none());
        assert_eq!(
            chain["filters"][0]["typed_config"]["cluster"],
            "outbound|8443||secure.default.svc.cluster.local"
        );
        // One destination: its DestinationRule's TCP idle timeout.
        assert_eq!(chain["filters"][0]["typed_config"]["idle_timeout"], "45s");
    }

    #[test]
    fn gateway_virtual_services_for_one_host_are_merged_and_namespaces_respected() {
        let mut other = res(
            "VirtualService",
            "other",
            json!({"hosts": ["a.example.com"], "gateways": ["default/gw"], "http": [{"match": [{"uri": {"prefix": "/other"}}], "route": [{"destination": {"host": "productpage"}}]}]}),
        );
        other.namespace = "other".into();
        let mut env = gateway_env(
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["./a.example.com"]}]),
            vec![
                pp_vs("a.example.com"),
                res(
                    "VirtualService",
                    "api",
                    json!({"hosts": ["a.example.com"], "gateways": ["gw"], "http": [{"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "productpage"}}]}]}),
                ),
            ],
        );
        env.virtual_services.push(other);
        let out = for_proxy(&gw_proxy(), &env);
        assert_valid(&out);
        let vhs = out.routes["http.80"]["virtual_hosts"].as_array().unwrap();
        assert_eq!(vhs.len(), 1);
        // `api` sorts before `pp`; `other` lives in a namespace the server does not admit.
        let routes = vhs[0]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0]["match"]["prefix"], "/api");
    }
}
