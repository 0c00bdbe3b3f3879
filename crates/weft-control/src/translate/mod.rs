//! Translation of the mesh model and Istio's traffic config into Envoy v3 resources for one
//! proxy: sidecars (explicit outbound proxy on :15001, one inbound listener per served port),
//! gateways (listeners per Gateway server), and proxyless gRPC clients (API listeners).
//!
//! Istio's names and defaults are kept: clusters `outbound|PORT|SUBSET|FQDN` and `inbound|PORT||`,
//! LEAST_REQUEST load balancing, no route timeout, two retries on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` (503), first
//! matching VirtualService rule wins, short hosts resolved in the resource's namespace.
//!
//! Istio specs are read as JSON (`spec` of validated resources), output is Envoy-shaped JSON that
//! `weft_xds::json::json_to_any` turns into typed resources — both sides keep the field names
//! users read in the docs. This module must not do I/O. The submodules each own one feature
//! family: per-route HTTP policies (`http_policy`), TCP/TLS routing (`l4`), gateway listeners
//! (`gateway`), upstream TLS origination (`upstream_tls`), locality load balancing (`locality`),
//! access logs (`access_log`) and the Kubernetes Gateway API (`gateway_api`, which rewrites
//! Gateway API resources into the Istio shapes the rest of translation reads).

pub mod access_log;
pub mod gateway;
pub mod gateway_api;
pub mod http_policy;
pub mod l4;
pub mod locality;
pub mod upstream_tls;

use crate::model::{Endpoint, ProxyNode, Resolution, Service, selects};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// A validated Istio resource, reduced to what translation reads.
#[derive(Debug, Clone)]
pub struct Res {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub spec: Json,
}

impl Res {
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
    /// A DestinationRule's subset called `name`.
    pub(crate) fn subset(&self, name: &str) -> Option<&Json> {
        self.list("subsets")
            .into_iter()
            .find(|s| s.get("name").and_then(Json::as_str) == Some(name))
    }
    pub(crate) fn list(&self, key: &str) -> Vec<&Json> {
        self.spec
            .get(key)
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }
    pub(crate) fn strings(&self, key: &str) -> Vec<String> {
        self.list(key)
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

/// Everything translation needs, computed once per push.
#[derive(Debug, Default)]
pub struct Env {
    pub services: Vec<Service>,
    pub virtual_services: Vec<Res>,
    pub destination_rules: Vec<Res>,
    pub gateways: Vec<Res>,
    pub sidecars: Vec<Res>,
    /// Telemetry resources (access logging).
    pub telemetries: Vec<Res>,
    /// Mesh-wide outbound policy (Sidecar resources may override per namespace/workload).
    pub registry_only: bool,
    /// The config directory (local mode, `Options.dir`): a `credentialName` resolves to the
    /// files `tls.crt`, `tls.key` and `ca.crt` under `<config_dir>/credentials/<name>/`.
    pub config_dir: Option<PathBuf>,
    /// The system's CA bundle (a file), used to verify upstream servers when a DestinationRule
    /// originates TLS without `caCertificates` (Istio verifies against the system roots).
    pub system_ca: Option<String>,
    /// Derived by [`Env::index`]: what makes [`shared`] output differ between proxies of one
    /// namespace, and a host → service index.
    pub derived: Derived,
}

/// Facts computed once per push from the rest of [`Env`] (see [`Env::index`]).
#[derive(Debug, Default)]
pub struct Derived {
    /// Endpoint priorities/weights depend on the proxy's locality (some DestinationRule uses
    /// locality settings or outlier detection on a multi-locality service).
    pub locality: bool,
    /// Routes or endpoint priorities depend on the proxy's labels (`sourceLabels`,
    /// `failoverPriority`).
    pub labels: bool,
    /// Routes depend on the proxy's address (`sourceSubnet`).
    pub address: bool,
    /// hostname → index in `services`.
    pub by_host: HashMap<String, usize>,
}

/// The Envoy resources of one proxy, as Envoy-shaped JSON keyed by name.
#[derive(Debug, Default)]
pub struct Output {
    pub listeners: BTreeMap<String, Json>,
    pub routes: BTreeMap<String, Json>,
    pub clusters: BTreeMap<String, Json>,
    pub endpoints: BTreeMap<String, Json>,
}

pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's cluster name.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The port, subset ("" for none) and host of an outbound [`cluster_name`]; None for any other
/// name.
pub fn parse_cluster_name(name: &str) -> Option<(u16, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    let (Some("outbound"), Some(port), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((port.parse().ok()?, subset, host))
}

/// A short host resolved in `ns`: `reviews` → `reviews.ns.svc.cluster.local`,
/// `reviews.other` → `reviews.other.svc.cluster.local`; FQDNs and wildcards as they are.
pub fn fqdn(host: &str, ns: &str) -> String {
    if host.starts_with('*') || host.ends_with(".svc.cluster.local") {
        return host.to_string();
    }
    match host.matches('.').count() {
        0 => format!("{host}.{ns}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        _ => host.to_string(),
    }
}

pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

pub(crate) fn ads() -> Json {
    json!({"ads": {}, "resource_api_version": "V3"})
}

impl Env {
    fn exported(res: &Res, to_ns: &str) -> bool {
        let exp = res.strings("exportTo");
        exp.is_empty()
            || exp
                .iter()
                .any(|e| e == "*" || e == to_ns || (e == "." && res.namespace == to_ns))
    }

    /// Services the proxy may reach: exported to its namespace, and allowed by its Sidecar's
    /// `egress.hosts` (`ns/host`, `./*`, `*/*`) when one applies. A Sidecar without `egress`
    /// scopes nothing (Istio's default egress listener is `*/*`).
    pub fn visible_services(&self, p: &ProxyNode) -> Vec<&Service> {
        let scope = self
            .sidecar_for(p)
            .filter(|s| !s.list("egress").is_empty())
            .map(|s| {
                let mut hosts = Vec::new();
                for eg in s.list("egress") {
                    for h in eg
                        .get("hosts")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Json::as_str)
                    {
                        let (ns, host) = h.split_once('/').unwrap_or(("*", h));
                        let ns = if ns == "." {
                            s.namespace.clone()
                        } else {
                            ns.to_string()
                        };
                        hosts.push((ns, host.to_string()));
                    }
                }
                hosts
            });
        self.services
            .iter()
            .filter(|svc| svc.visible_from(&p.namespace))
            .filter(|svc| match &scope {
                None => true,
                Some(hosts) => hosts.iter().any(|(ns, h)| {
                    (ns == "*" || *ns == svc.namespace)
                        && (h == "*"
                            || host_matches(h, &svc.hostname)
                            || fqdn(h, ns) == svc.hostname)
                }),
            })
            .collect()
    }

    /// The Sidecar resource for a workload: one with a matching selector in its namespace, else
    /// the namespace default (no selector), else the root namespace's.
    pub fn sidecar_for(&self, p: &ProxyNode) -> Option<&Res> {
        let selected = |s: &&Res| match s
            .spec
            .pointer("/workloadSelector/labels")
            .and_then(Json::as_object)
        {
            Some(sel) => sel
                .iter()
                .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str()),
            None => false,
        };
        let default = |s: &&Res| s.spec.get("workloadSelector").is_none();
        let sc = &self.sidecars;
        sc.iter()
            .filter(|s| s.namespace == p.namespace)
            .find(selected)
            .or_else(|| {
                sc.iter()
                    .filter(|s| s.namespace == p.namespace)
                    .find(default)
            })
            .or_else(|| {
                sc.iter()
                    .filter(|s| s.namespace == "istio-system")
                    .find(default)
            })
    }

    pub(crate) fn registry_only_for(&self, p: &ProxyNode) -> bool {
        match self
            .sidecar_for(p)
            .and_then(|s| s.spec.pointer("/outboundTrafficPolicy/mode"))
            .and_then(Json::as_str)
        {
            Some("REGISTRY_ONLY") => true,
            Some(_) => false,
            None => self.registry_only,
        }
    }

    /// Whether the host pattern `h` written in a resource of namespace `ns` covers `host`: as a
    /// short name resolved in `ns`, or literally (`httpbin.org` stays `httpbin.org`).
    pub(crate) fn covers(h: &str, ns: &str, host: &str) -> bool {
        host_matches(&fqdn(h, ns), host) || host_matches(h, host)
    }

    /// The VirtualService for `host` seen from `ns` through `gateway` (None = the mesh): the
    /// first one (own namespace first, then by name) whose hosts cover it.
    pub fn virtual_service(&self, host: &str, ns: &str, gateway: Option<&str>) -> Option<&Res> {
        let mut candidates: Vec<&Res> = self
            .virtual_services
            .iter()
            .filter(|vs| Self::exported(vs, ns))
            .filter(|vs| {
                vs.strings("hosts")
                    .iter()
                    .any(|h| Self::covers(h, &vs.namespace, host))
            })
            .filter(|vs| gateway_bound(vs, gateway))
            .collect();
        candidates.sort_by_key(|vs| (vs.namespace != ns, vs.namespace.clone(), vs.name.clone()));
        candidates.into_iter().next()
    }

    pub fn destination_rule(&self, host: &str, ns: &str) -> Option<&Res> {
        let mut c: Vec<&Res> = self
            .destination_rules
            .iter()
            .filter(|dr| Self::exported(dr, ns))
            .filter(|dr| {
                dr.spec
                    .get("host")
                    .and_then(Json::as_str)
                    .is_some_and(|h| Self::covers(h, &dr.namespace, host))
            })
            .collect();
        c.sort_by_key(|dr| (dr.namespace != ns, dr.namespace.clone(), dr.name.clone()));
        c.into_iter().next()
    }

    pub(crate) fn service(&self, host: &str) -> Option<&Service> {
        if self.derived.by_host.is_empty() {
            return self.services.iter().find(|s| s.hostname == host);
        }
        self.derived
            .by_host
            .get(host)
            .and_then(|i| self.services.get(*i))
    }

    /// A destination host written in namespace `ns`, as the registry names it: the short name
    /// resolved (`reviews` → `reviews.ns.svc.cluster.local`), unless the literal host is a
    /// registered service and the resolved one is not (`httpbin.org`).
    pub fn resolve(&self, host: &str, ns: &str) -> String {
        let f = fqdn(host, ns);
        if f != host
            && host.contains('.')
            && self.service(&f).is_none()
            && self.service(host).is_some()
        {
            return host.to_string();
        }
        f
    }

    /// The files of a `credentialName`: `<config_dir>/credentials/<name>/{tls.crt,tls.key,ca.crt}`
    /// (certificate chain, private key, CA bundle). None without a config directory or for a
    /// name that is not a single path component.
    pub fn credential_files(&self, name: &str) -> Option<[String; 3]> {
        let dir = self.config_dir.as_ref()?;
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return None;
        }
        let base = dir.join("credentials").join(name);
        let f = |n: &str| base.join(n).to_string_lossy().into_owned();
        Some([f("tls.crt"), f("tls.key"), f("ca.crt")])
    }

    /// Computes [`Derived`]; call after filling the other fields (the registry does).
    pub fn index(&mut self) {
        self.virtual_services = expand_delegates(&self.virtual_services);
        let mut d = Derived {
            by_host: self
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| (s.hostname.clone(), i))
                .collect(),
            ..Default::default()
        };
        for vs in &self.virtual_services {
            let text = vs.spec.to_string();
            d.labels |= text.contains("\"sourceLabels\"");
            d.address |= text.contains("\"sourceSubnet\"");
        }
        for dr in &self.destination_rules {
            let f = locality::rule_facts(dr);
            d.labels |= f.failover_priority;
            if f.distribute || f.failover_priority {
                d.locality = true;
            } else if f.failover {
                let Some(h) = dr.spec.get("host").and_then(Json::as_str) else {
                    continue;
                };
                d.locality |= self.services.iter().any(|s| {
                    Self::covers(h, &dr.namespace, &s.hostname)
                        && s.endpoints
                            .iter()
                            .any(|e| e.locality != s.endpoints[0].locality)
                });
            }
        }
        self.derived = d;
    }
}

/// Istio's VirtualService delegation: a root rule with `delegate: {name, namespace}` is
/// replaced by the delegate's rules, each matching the root rule's conditions AND its own (the
/// delegate's `uri` refines the root's; headers and query parameters add up). Delegates (no
/// `hosts`) are never used on their own. A missing delegate drops the rule, as in Istio.
pub fn expand_delegates(vss: &[Res]) -> Vec<Res> {
    let find = |name: &str, ns: &str| {
        vss.iter()
            .find(|v| v.name == name && v.namespace == ns && v.strings("hosts").is_empty())
    };
    vss.iter()
        .map(|vs| {
            if !vs.list("http").iter().any(|r| r.get("delegate").is_some()) {
                return vs.clone();
            }
            let mut rules = Vec::new();
            for rule in vs.list("http") {
                let Some(d) = rule.get("delegate") else {
                    rules.push(rule.clone());
                    continue;
                };
                let name = d.get("name").and_then(Json::as_str).unwrap_or("");
                let ns = d.get("namespace").and_then(Json::as_str).unwrap_or(&vs.namespace);
                let Some(child) = find(name, ns) else {
                    tracing::warn!(virtual_service = %vs.id(), delegate = %format!("{ns}/{name}"), "delegate VirtualService not found; its routes are not generated");
                    continue;
                };
                let root_matches: Vec<Json> = rule.get("match").and_then(Json::as_array).cloned().unwrap_or_default();
                for c in child.list("http") {
                    let mut merged = c.clone();
                    let child_matches: Vec<Json> = c.get("match").and_then(Json::as_array).cloned().unwrap_or_default();
                    let combos: Vec<Json> = match (root_matches.is_empty(), child_matches.is_empty()) {
                        (true, true) => Vec::new(),
                        (false, true) => root_matches.clone(),
                        (true, false) => child_matches.clone(),
                        (false, false) => root_matches
                            .iter()
                            .flat_map(|r| child_matches.iter().map(move |cm| merge_match(r, cm)))
                            .collect(),
                    };
                    if let Some(o) = merged.as_object_mut() {
                        if combos.is_empty() {
                            o.remove("match");
                        } else {
                            o.insert("match".into(), Json::Array(combos));
                        }
                    }
                    rules.push(merged);
                }
            }
            let mut out = vs.clone();
            if let Some(o) = out.spec.as_object_mut() {
                o.insert("http".into(), Json::Array(rules));
            }
            out
        })
        .collect()
}

/// One root match AND one delegate match.
fn merge_match(root: &Json, child: &Json) -> Json {
    let mut m = root.clone();
    let (Some(mo), Some(co)) = (m.as_object_mut(), child.as_object()) else {
        return child.clone();
    };
    for (k, v) in co {
        match (k.as_str(), mo.get_mut(k)) {
            (
                "headers" | "queryParams" | "withoutHeaders" | "sourceLabels",
                Some(Json::Object(existing)),
            ) => {
                if let Some(add) = v.as_object() {
                    for (hk, hv) in add {
                        existing.insert(hk.clone(), hv.clone());
                    }
                }
            }
            _ => {
                mo.insert(k.clone(), v.clone());
            }
        }
    }
    m
}

/// Whether a VirtualService applies to `gateway` (`None` = sidecars, Istio's reserved `mesh`).
pub(crate) fn gateway_bound(vs: &Res, gateway: Option<&str>) -> bool {
    let gws = vs.strings("gateways");
    match gateway {
        None => gws.is_empty() || gws.iter().any(|g| g == "mesh"),
        Some(gw) => gws.iter().any(|g| qualify_gateway(g, &vs.namespace) == gw),
    }
}

/// `name` → `ns/name`.
pub(crate) fn qualify_gateway(g: &str, ns: &str) -> String {
    if g.contains('/') {
        g.to_string()
    } else {
        format!("{ns}/{g}")
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Context of a route being built.
#[derive(Clone, Copy)]
pub(crate) struct RouteCx<'a> {
    pub env: &'a Env,
    pub proxy: &'a ProxyNode,
    /// `ns/name` of the gateway, or None for sidecars.
    pub gateway: Option<&'a str>,
    pub port: u16,
}

pub(crate) fn string_match(m: &Json) -> Option<Json> {
    let o = m.as_object()?;
    if let Some(v) = o.get("exact") {
        return Some(json!({"exact": v}));
    }
    if let Some(v) = o.get("prefix") {
        return Some(json!({"prefix": v}));
    }
    if let Some(v) = o.get("regex") {
        return Some(json!({"safe_regex": {"regex": v}}));
    }
    None
}

/// One HTTPMatchRequest as an Envoy RouteMatch; None when it cannot apply to this proxy/port.
/// `gw_api`: Gateway API semantics (a path prefix matches whole path segments).
fn route_match(m: Option<&Json>, cx: &RouteCx<'_>, gw_api: bool) -> Option<Json> {
    let mut out = Map::new();
    let Some(m) = m else {
        out.insert("prefix".into(), json!("/"));
        return Some(Json::Object(out));
    };
    if let Some(p) = m.get("port").and_then(Json::as_u64)
        && p != u64::from(cx.port)
    {
        return None;
    }
    if let Some(sel) = m.get("sourceLabels").and_then(Json::as_object)
        && !sel
            .iter()
            .all(|(k, v)| cx.proxy.labels.get(k).map(String::as_str) == v.as_str())
    {
        return None;
    }
    if let Some(ns) = m.get("sourceNamespace").and_then(Json::as_str)
        && ns != cx.proxy.namespace
    {
        return None;
    }
    if let Some(gws) = m.get("gateways").and_then(Json::as_array) {
        let here = cx
            .gateway
            .map_or_else(|| "mesh".to_string(), str::to_string);
        let ns = cx.proxy.namespace.as_str();
        if !gws.iter().filter_map(Json::as_str).any(|g| {
            (g == "mesh" && cx.gateway.is_none()) || qualify_gateway(g, ns) == here || g == here
        }) {
            return None;
        }
    }
    match m.get("uri").and_then(Json::as_object) {
        Some(u) if u.contains_key("exact") => {
            out.insert("path".into(), u["exact"].clone());
        }
        Some(u) if u.contains_key("prefix") => match u["prefix"].as_str() {
            Some(p) if gw_api && p != "/" && !p.ends_with('/') => {
                out.insert("path_separated_prefix".into(), json!(p));
            }
            _ => {
                out.insert("prefix".into(), u["prefix"].clone());
            }
        },
        Some(u) if u.contains_key("regex") => {
            out.insert("safe_regex".into(), json!({"regex": u["regex"]}));
        }
        _ => {
            out.insert("prefix".into(), json!("/"));
        }
    }
    if m.get("ignoreUriCase").and_then(Json::as_bool) == Some(true) {
        out.insert("case_sensitive".into(), json!(false));
    }
    let mut headers = Vec::new();
    for (pseudo, key) in [
        (":method", "method"),
        (":authority", "authority"),
        (":scheme", "scheme"),
    ] {
        if let Some(sm) = m.get(key).and_then(string_match) {
            headers.push(json!({"name": pseudo, "string_match": sm}));
        }
    }
    if let Some(h) = m.get("headers").and_then(Json::as_object) {
        for (name, v) in h {
            match string_match(v) {
                Some(sm) => headers.push(json!({"name": name, "string_match": sm})),
                None => headers.push(json!({"name": name, "present_match": true})),
            }
        }
    }
    if let Some(h) = m.get("withoutHeaders").and_then(Json::as_object) {
        for (name, v) in h {
            match string_match(v) {
                Some(sm) => {
                    headers.push(json!({"name": name, "string_match": sm, "invert_match": true}))
                }
                None => headers.push(json!({"name": name, "present_match": false})),
            }
        }
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Json::Array(headers));
    }
    if let Some(q) = m.get("queryParams").and_then(Json::as_object) {
        let qs: Vec<Json> = q
            .iter()
            .map(|(name, v)| match string_match(v) {
                Some(sm) => json!({"name": name, "string_match": sm}),
                None => json!({"name": name, "present_match": true}),
            })
            .collect();
        out.insert("query_parameters".into(), Json::Array(qs));
    }
    Some(Json::Object(out))
}

/// Istio `headers: {request|response: {set, add, remove}}` into Envoy header mutations.
fn header_ops(h: Option<&Json>, which: &str, out: &mut Map<String, Json>) {
    let Some(ops) = h.and_then(|h| h.get(which)) else {
        return;
    };
    let mut add = Vec::new();
    if let Some(set) = ops.get("set").and_then(Json::as_object) {
        for (k, v) in set {
            add.push(json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
        }
    }
    if let Some(a) = ops.get("add").and_then(Json::as_object) {
        for (k, v) in a {
            add.push(json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}));
        }
    }
    if !add.is_empty() {
        out.insert(format!("{which}_headers_to_add"), Json::Array(add));
    }
    if let Some(rm) = ops.get("remove").and_then(Json::as_array)
        && !rm.is_empty()
    {
        out.insert(
            format!("{which}_headers_to_remove"),
            Json::Array(rm.clone()),
        );
    }
}

/// Istio's retry default (unset `retries`): 2 attempts on transient failures.
fn default_retry() -> Json {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retriable_status_codes": [503],
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5
    })
}

pub(crate) fn retry_policy(r: Option<&Json>) -> Option<Json> {
    let Some(r) = r else {
        return Some(default_retry());
    };
    let attempts = r.get("attempts").and_then(Json::as_u64).unwrap_or(2);
    if attempts == 0 {
        return None;
    }
    let mut on = Vec::new();
    let mut codes = Vec::new();
    let spec = r
        .get("retryOn")
        .and_then(Json::as_str)
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503");
    for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match t.parse::<u16>() {
            Ok(c) => codes.push(c),
            Err(_) => on.push(t.to_string()),
        }
    }
    if !codes.is_empty() && !on.iter().any(|t| t == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    let mut p = json!({
        "retry_on": on.join(","),
        "num_retries": attempts,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5
    });
    if !codes.is_empty() {
        p["retriable_status_codes"] = json!(codes);
    }
    if let Some(t) = r.get("perTryTimeout").and_then(Json::as_str) {
        p["per_try_timeout"] = json!(t);
    }
    Some(p)
}

pub(crate) fn destination_cluster(d: &Json, vs_ns: &str, cx: &RouteCx<'_>) -> String {
    let host = cx
        .env
        .resolve(d.get("host").and_then(Json::as_str).unwrap_or(""), vs_ns);
    let subset = d.get("subset").and_then(Json::as_str).unwrap_or("");
    let port = d
        .pointer("/port/number")
        .and_then(Json::as_u64)
        .map(|p| p as u16)
        .or_else(|| {
            cx.env
                .service(&host)
                .filter(|s| s.ports.len() == 1)
                .map(|s| s.ports[0].number)
        })
        .unwrap_or(cx.port);
    cluster_name(port, subset, &host)
}

/// Envoy routes for one VirtualService (or the default route when there is none).
pub(crate) fn vs_routes(vs: &Res, cx: &RouteCx<'_>) -> Vec<Json> {
    let gw_api = matches!(vs.kind.as_str(), "HTTPRoute" | "GRPCRoute");
    let mut routes = Vec::new();
    for rule in vs.list("http") {
        let matches: Vec<Option<&Json>> = match rule.get("match").and_then(Json::as_array) {
            Some(ms) if !ms.is_empty() => ms.iter().map(Some).collect(),
            _ => vec![None],
        };
        for m in matches {
            let Some(mjson) = route_match(m, cx, gw_api) else {
                continue;
            };
            let mut r = Map::new();
            if let Some(n) = rule.get("name").and_then(Json::as_str) {
                r.insert("name".into(), json!(n));
            }
            let is_prefix =
                mjson.get("prefix").is_some() || mjson.get("path_separated_prefix").is_some();
            r.insert("match".into(), mjson);
            if let Some(red) = rule.get("redirect") {
                let mut rd = Map::new();
                if let Some(u) = red.get("uri") {
                    rd.insert("path_redirect".into(), u.clone());
                }
                if let Some(a) = red.get("authority") {
                    rd.insert("host_redirect".into(), a.clone());
                }
                if let Some(p) = red.get("port") {
                    rd.insert("port_redirect".into(), p.clone());
                }
                if let Some(s) = red.get("scheme") {
                    rd.insert("scheme_redirect".into(), s.clone());
                }
                // Not an Istio field: the Gateway API's `ReplacePrefixMatch` (see gateway_api).
                if let Some(p) = red.get(gateway_api::PREFIX_REDIRECT) {
                    rd.insert("prefix_rewrite".into(), p.clone());
                }
                let code = match red.get("redirectCode").and_then(Json::as_u64) {
                    Some(302) => "FOUND",
                    Some(303) => "SEE_OTHER",
                    Some(307) => "TEMPORARY_REDIRECT",
                    Some(308) => "PERMANENT_REDIRECT",
                    _ => "MOVED_PERMANENTLY",
                };
                rd.insert("response_code".into(), json!(code));
                r.insert("redirect".into(), Json::Object(rd));
            } else if let Some(dr) = rule.get("directResponse") {
                let mut d = json!({"status": dr.get("status").cloned().unwrap_or(json!(200))});
                if let Some(b) = dr.pointer("/body/string") {
                    d["body"] = json!({"inline_string": b});
                }
                r.insert("direct_response".into(), d);
            } else {
                let dests: Vec<&Json> = rule
                    .get("route")
                    .and_then(Json::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                let mut action = Map::new();
                if dests.len() == 1 && dests[0].get("headers").is_none() {
                    action.insert(
                        "cluster".into(),
                        json!(destination_cluster(
                            &dests[0]["destination"],
                            &vs.namespace,
                            cx
                        )),
                    );
                } else {
                    let clusters: Vec<Json> = dests
                        .iter()
                        .filter(|d| {
                            d.get("weight").and_then(Json::as_u64) != Some(0) || dests.len() == 1
                        })
                        .map(|d| {
                            let mut c = Map::new();
                            c.insert(
                                "name".into(),
                                json!(destination_cluster(&d["destination"], &vs.namespace, cx)),
                            );
                            c.insert(
                                "weight".into(),
                                json!(
                                    d.get("weight")
                                        .and_then(Json::as_u64)
                                        .unwrap_or(if dests.len() == 1 { 100 } else { 0 })
                                ),
                            );
                            header_ops(d.get("headers"), "request", &mut c);
                            header_ops(d.get("headers"), "response", &mut c);
                            Json::Object(c)
                        })
                        .collect();
                    action.insert("weighted_clusters".into(), json!({"clusters": clusters}));
                }
                action.insert(
                    "timeout".into(),
                    json!(rule.get("timeout").and_then(Json::as_str).unwrap_or("0s")),
                );
                if let Some(p) = retry_policy(rule.get("retries")) {
                    action.insert("retry_policy".into(), p);
                }
                // Consistent hashing is a DestinationRule policy but a route setting in Envoy:
                // take it from the (first) destination's rule, subset policy included.
                if let Some(d) = dests.first().map(|d| &d["destination"]) {
                    let host = cx.env.resolve(
                        d.get("host").and_then(Json::as_str).unwrap_or(""),
                        &vs.namespace,
                    );
                    let subset = d.get("subset").and_then(Json::as_str).unwrap_or("");
                    let policy = policy_for(cx.env, &host, subset, cx.port, &cx.proxy.namespace);
                    if let Some(hp) = hash_policy(policy.as_ref()) {
                        action.insert("hash_policy".into(), hp);
                    }
                }
                if let Some(rw) = rule.get("rewrite") {
                    if let Some(u) = rw.get("uri").and_then(Json::as_str) {
                        if is_prefix {
                            action.insert("prefix_rewrite".into(), json!(u));
                        } else {
                            action.insert(
                                "regex_rewrite".into(),
                                json!({"pattern": {"regex": "^.*$"}, "substitution": u}),
                            );
                        }
                    }
                    if let Some(re) = rw.get("uriRegexRewrite") {
                        action.insert("regex_rewrite".into(), json!({"pattern": {"regex": re.get("match")}, "substitution": re.get("rewrite")}));
                    }
                    if let Some(a) = rw.get("authority") {
                        action.insert("host_rewrite_literal".into(), a.clone());
                    }
                }
                action.insert(
                    "upgrade_configs".into(),
                    json!([{"upgrade_type": "websocket"}]),
                );
                let mirrors = http_policy::mirror_policies(rule, &vs.namespace, cx);
                if !mirrors.is_empty() {
                    action.insert("request_mirror_policies".into(), Json::Array(mirrors));
                }
                r.insert("route".into(), Json::Object(action));
            }
            header_ops(rule.get("headers"), "request", &mut r);
            header_ops(rule.get("headers"), "response", &mut r);
            let mut per_filter = Map::new();
            if let Some(f) = rule.get("fault").and_then(http_policy::fault) {
                per_filter.insert(http_policy::FAULT_FILTER.into(), f);
            }
            if let Some(c) = rule.get("corsPolicy").and_then(http_policy::cors) {
                per_filter.insert(http_policy::CORS_FILTER.into(), c);
            }
            if !per_filter.is_empty() {
                r.insert("typed_per_filter_config".into(), Json::Object(per_filter));
            }
            routes.push(Json::Object(r));
        }
    }
    routes
}

fn default_route(cluster: &str) -> Json {
    json!({"name": "default", "match": {"prefix": "/"}, "route": {
        "cluster": cluster, "timeout": "0s", "retry_policy": default_retry(),
        "upgrade_configs": [{"upgrade_type": "websocket"}]
    }})
}

/// Domains a client uses for `svc:port`: every alias, with and without the port (the bare
/// name only for port 80).
fn domains(svc: &Service, port: u16, from_ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for a in svc.aliases(from_ns) {
        out.push(format!("{a}:{port}"));
        if port == 80 {
            out.push(a);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Clusters and endpoints

fn lb_policy(tp: Option<&Json>) -> (String, Map<String, Json>) {
    let mut extra = Map::new();
    let lb = tp.and_then(|t| t.get("loadBalancer"));
    if let Some(ch) = lb.and_then(|l| l.get("consistentHash")) {
        let maglev = ch.get("maglev").is_some();
        if let Some(m) = ch
            .pointer("/ringHash/minimumRingSize")
            .or_else(|| ch.get("minimumRingSize"))
        {
            extra.insert(
                "ring_hash_lb_config".into(),
                json!({"minimum_ring_size": m}),
            );
        }
        if let Some(ts) = ch.pointer("/maglev/tableSize") {
            extra.insert("maglev_lb_config".into(), json!({"table_size": ts}));
        }
        return (if maglev { "MAGLEV" } else { "RING_HASH" }.into(), extra);
    }
    let simple = lb
        .and_then(|l| l.get("simple"))
        .and_then(Json::as_str)
        .unwrap_or("LEAST_REQUEST");
    let p = match simple {
        "ROUND_ROBIN" => "ROUND_ROBIN",
        "RANDOM" => "RANDOM",
        _ => "LEAST_REQUEST",
    };
    let lb_config = match p {
        "ROUND_ROBIN" => Some("round_robin_lb_config"),
        "LEAST_REQUEST" => Some("least_request_lb_config"),
        _ => None,
    };
    if let Some(key) = lb_config
        && let Some(ss) = lb.and_then(slow_start)
    {
        extra.insert(key.into(), json!({"slow_start_config": ss}));
    }
    (p.into(), extra)
}

/// Envoy's `slow_start_config` for Istio's `warmup` (Istio's defaults: aggression 1, minimum
/// 10%), else for the older `warmupDurationSecs` (Envoy's defaults).
fn slow_start(lb: &Json) -> Option<Json> {
    if let Some(w) = lb.get("warmup") {
        return Some(json!({
            "slow_start_window": w.get("duration")?,
            "aggression": {
                "default_value": w.get("aggression").cloned().unwrap_or(json!(1.0)),
                "runtime_key": "weft.slow_start.aggression",
            },
            "min_weight_percent": {"value": w.get("minimumPercent").cloned().unwrap_or(json!(10.0))},
        }));
    }
    Some(json!({"slow_start_window": lb.get("warmupDurationSecs")?}))
}

/// Route-level hash policy for a destination with consistent hashing.
pub fn hash_policy(tp: Option<&Json>) -> Option<Json> {
    let ch = tp?.pointer("/loadBalancer/consistentHash")?;
    if let Some(h) = ch.get("httpHeaderName") {
        return Some(json!([{"header": {"header_name": h}}]));
    }
    if let Some(c) = ch.get("httpCookie") {
        let mut cookie = json!({"name": c.get("name")});
        if let Some(t) = c.get("ttl") {
            cookie["ttl"] = t.clone();
        }
        if let Some(p) = c.get("path") {
            cookie["path"] = p.clone();
        }
        return Some(json!([{"cookie": cookie}]));
    }
    if ch.get("useSourceIp").and_then(Json::as_bool) == Some(true) {
        return Some(json!([{"connection_properties": {"source_ip": true}}]));
    }
    if let Some(q) = ch.get("httpQueryParameterName") {
        return Some(json!([{"query_parameter": {"name": q}}]));
    }
    None
}

/// `portLevelSettings` for `port` replace the policy's connection pool, load balancer,
/// outlier detection and TLS (Istio: port-level settings do not inherit those four fields).
fn apply_port_settings(mut p: Json, port: u16) -> Json {
    let settings = p
        .get("portLevelSettings")
        .and_then(Json::as_array)
        .and_then(|pls| {
            pls.iter()
                .find(|s| s.pointer("/port/number").and_then(Json::as_u64) == Some(u64::from(port)))
        })
        .cloned();
    if let (Some(s), Some(po)) = (settings, p.as_object_mut()) {
        for k in ["connectionPool", "loadBalancer", "outlierDetection", "tls"] {
            match s.get(k) {
                Some(v) => po.insert(k.to_string(), v.clone()),
                None => po.remove(k),
            };
        }
    }
    p
}

/// `connectionPool.tcp.idleTimeout` in the policy in force for `cluster` (an
/// `outbound|port|subset|host` name) as seen from namespace `from_ns`; None for other
/// clusters and where no rule sets it.
pub(crate) fn tcp_idle_timeout(env: &Env, cluster: &str, from_ns: &str) -> Option<Json> {
    let (port, subset, host) = parse_cluster_name(cluster)?;
    policy_for(env, host, subset, port, from_ns)?
        .pointer("/connectionPool/tcp/idleTimeout")
        .cloned()
}

/// The traffic policy in force for `subset` ("" for none) of `host` on `port`, from the
/// DestinationRule that namespace `from_ns` sees (see [`merged_policy`]).
fn policy_for(env: &Env, host: &str, subset: &str, port: u16, from_ns: &str) -> Option<Json> {
    let dr = env.destination_rule(host, from_ns);
    let subset = dr
        .filter(|_| !subset.is_empty())
        .and_then(|d| d.subset(subset));
    merged_policy(dr, subset, port)
}

/// The idle timeout of a CONNECT tunnel to `target`: the DestinationRule's TCP one, else Istio's
/// default for TCP traffic.
fn tunnel_idle_timeout(env: &Env, target: &l4::Target, from_ns: &str) -> Json {
    target
        .tcp_idle_timeout(env, from_ns)
        .unwrap_or_else(|| json!(l4::DEFAULT_TCP_IDLE_TIMEOUT))
}

/// The traffic policy in force for a cluster, merged as Istio does: the rule's policy with its
/// port-level settings for `port`, then the subset's fields on top, then the subset's own
/// port-level settings.
pub(crate) fn merged_policy(dr: Option<&Res>, subset: Option<&Json>, port: u16) -> Option<Json> {
    let base = dr
        .and_then(|d| d.spec.get("trafficPolicy"))
        .cloned()
        .map(|b| apply_port_settings(b, port));
    let Some(sub) = subset.and_then(|s| s.get("trafficPolicy")) else {
        return base;
    };
    let mut merged = base.unwrap_or_else(|| json!({}));
    if let (Some(mo), Some(so)) = (merged.as_object_mut(), sub.as_object()) {
        mo.remove("portLevelSettings");
        for (k, v) in so {
            mo.insert(k.clone(), v.clone());
        }
    }
    Some(apply_port_settings(merged, port))
}

fn cluster_json(
    name: &str,
    svc: &Service,
    port: &crate::model::Port,
    policy: Option<&Json>,
    eds: bool,
    downstream_protocol: bool,
) -> Json {
    let (lb, extra) = lb_policy(policy);
    let tcp = policy.and_then(|p| p.pointer("/connectionPool/tcp"));
    let http = policy.and_then(|p| p.pointer("/connectionPool/http"));
    let max = json!(4294967295u32);
    let n = |v: Option<&Json>| v.cloned().unwrap_or_else(|| max.clone());
    let mut c = json!({
        "name": name,
        "connect_timeout": tcp.and_then(|t| t.get("connectTimeout")).cloned().unwrap_or(json!("10s")),
        "lb_policy": lb,
        "circuit_breakers": {"thresholds": [{
            "max_connections": n(tcp.and_then(|t| t.get("maxConnections"))),
            "max_pending_requests": n(http.and_then(|h| h.get("http1MaxPendingRequests"))),
            "max_requests": n(http.and_then(|h| h.get("http2MaxRequests"))),
            "max_retries": n(http.and_then(|h| h.get("maxRetries"))),
        }]},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    });
    for (k, v) in extra {
        c[k] = v;
    }
    // As Istio: the HTTP idle timeout, else the TCP one; the TCP maximum duration.
    let mut common = Map::new();
    if let Some(t) = http
        .and_then(|h| h.get("idleTimeout"))
        .or_else(|| tcp.and_then(|t| t.get("idleTimeout")))
    {
        common.insert("idle_timeout".into(), t.clone());
    }
    if let Some(d) = tcp.and_then(|t| t.get("maxConnectionDuration")) {
        common.insert("max_connection_duration".into(), d.clone());
    }
    if let Some(m) = http.and_then(|h| h.get("maxRequestsPerConnection")) {
        common.insert("max_requests_per_connection".into(), m.clone());
    }
    // As Istio orders them: an explicit upgrade to HTTP/2, else the client's protocol when
    // `useClientProtocol` asks for it (even on an HTTP/2 port), else the port's protocol.
    let upgrade = http
        .and_then(|h| h.get("h2UpgradePolicy"))
        .and_then(Json::as_str)
        == Some("UPGRADE");
    let client_protocol = http
        .and_then(|h| h.get("useClientProtocol"))
        .and_then(Json::as_bool)
        == Some(true);
    // Streams per upstream HTTP/2 connection, wherever the cluster speaks HTTP/2 (Istio sets it
    // on clusters of HTTP/2 ports only, not on upgraded ones).
    let mut h2_options = json!({});
    if let Some(n) = http
        .and_then(|h| h.get("maxConcurrentStreams"))
        .and_then(Json::as_u64)
        .filter(|n| *n > 0)
    {
        h2_options["max_concurrent_streams"] = json!(n);
    }
    let proto = if upgrade || (port.protocol.is_h2() && !client_protocol) {
        json!({"explicit_http_config": {"http2_protocol_options": h2_options}})
    } else if client_protocol || downstream_protocol {
        json!({"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": h2_options}})
    } else {
        json!({"explicit_http_config": {"http_protocol_options": {}}})
    };
    let mut opts = json!({"@type": format!("type.googleapis.com/{HTTP_OPTIONS}")});
    if port.protocol.is_http() {
        for (k, v) in proto.as_object().into_iter().flatten() {
            opts[k] = v.clone();
        }
    }
    if !common.is_empty() {
        opts["common_http_protocol_options"] = Json::Object(common);
    }
    if opts.as_object().is_some_and(|o| o.len() > 1) {
        c["typed_extension_protocol_options"] = json!({HTTP_OPTIONS: opts});
    }
    if let Some(od) = policy.and_then(|p| p.get("outlierDetection")) {
        // As Istio generates it: success-rate ejection off, each consecutive detector that is
        // given enforced unless its count is 0.
        let mut o = Map::new();
        o.insert("enforcing_success_rate".into(), json!(0));
        let mut consecutive = |count: Option<&Json>, field: &str, enforcing: &str| {
            if let Some(v) = count {
                let on = v.as_u64().is_some_and(|n| n > 0);
                o.insert(field.into(), v.clone());
                o.insert(enforcing.into(), json!(if on { 100 } else { 0 }));
            }
        };
        consecutive(
            od.get("consecutive5xxErrors")
                .or_else(|| od.get("consecutiveErrors")),
            "consecutive_5xx",
            "enforcing_consecutive_5xx",
        );
        consecutive(
            od.get("consecutiveGatewayErrors"),
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
        );
        if od
            .get("splitExternalLocalOriginErrors")
            .and_then(Json::as_bool)
            == Some(true)
        {
            o.insert("split_external_local_origin_errors".into(), json!(true));
            o.insert("enforcing_local_origin_success_rate".into(), json!(0));
            // Istio sets the count only when positive (Envoy's default, 5, applies otherwise).
            if let Some(v) = od
                .get("consecutiveLocalOriginFailures")
                .filter(|v| v.as_u64().is_some_and(|n| n > 0))
            {
                o.insert("consecutive_local_origin_failure".into(), v.clone());
                o.insert(
                    "enforcing_consecutive_local_origin_failure".into(),
                    json!(100),
                );
            }
        }
        for (k, e) in [
            ("interval", "interval"),
            ("baseEjectionTime", "base_ejection_time"),
            ("maxEjectionPercent", "max_ejection_percent"),
        ] {
            if let Some(v) = od.get(k) {
                o.insert(e.into(), v.clone());
            }
        }
        if let Some(v) = od.get("minHealthPercent") {
            c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": v}});
        }
        c["outlier_detection"] = Json::Object(o);
    }
    if eds {
        c["type"] = json!("EDS");
        c["eds_cluster_config"] = json!({"eds_config": ads(), "service_name": name});
    } else {
        // DNS services: resolve the host itself. IPv4 addresses first, as Istio does for
        // IPv4 proxies (Envoy's default AUTO would take only the IPv6 answers of a dual-stack
        // name), falling back to IPv6 for a name that has only those.
        c["type"] = json!("STRICT_DNS");
        c["dns_lookup_family"] = json!("V4_PREFERRED");
        c["load_assignment"] = json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": svc.hostname, "port_value": port.target.unwrap_or(port.number)}}}}]}]});
    }
    c
}

fn endpoint_port(ep: &Endpoint, port: &crate::model::Port) -> u16 {
    ep.ports
        .get(&port.name)
        .copied()
        .or(port.target)
        .unwrap_or(port.number)
}

/// A ClusterLoadAssignment grouped by locality; `lb` adjusts priorities and weights for the
/// proxy's locality (see [`locality`]).
fn cla_json(
    name: &str,
    eps: &[&Endpoint],
    port: &crate::model::Port,
    lb: Option<&locality::LocalityLb<'_>>,
) -> Json {
    let mut groups = locality::group(eps);
    if let Some(lb) = lb {
        lb.apply(&mut groups);
    }
    let endpoints: Vec<Json> = groups
        .iter()
        .filter(|g| !g.endpoints.is_empty())
        .map(|g| {
            let lbs: Vec<Json> = g
                .endpoints
                .iter()
                .map(|(ep, w)| {
                    json!({
                        "endpoint": {"address": {"socket_address": {"address": ep.address.to_string(), "port_value": endpoint_port(ep, port)}}},
                        "load_balancing_weight": w,
                    })
                })
                .collect();
            let mut parts = g.locality.splitn(3, '/');
            let (region, zone, sub_zone) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            // The locality weight, as Istio sets it: gRPC's xDS client ignores a locality
            // without one ("contains no localities"), Envoy uses it with locality-weighted LB.
            let mut l = json!({"locality": {"region": region, "zone": zone, "sub_zone": sub_zone}, "load_balancing_weight": g.weight, "lb_endpoints": lbs});
            if g.priority > 0 {
                l["priority"] = json!(g.priority);
            }
            l
        })
        .collect();
    json!({"cluster_name": name, "endpoints": endpoints})
}

/// Outbound clusters (and their endpoints) for every port and subset of `services`, as seen by
/// proxy `p` (its namespace picks DestinationRules, its locality endpoint priorities).
fn outbound_clusters(env: &Env, services: &[&Service], p: &ProxyNode, out: &mut Output) {
    let from_ns = p.namespace.as_str();
    for svc in services {
        let dr = env.destination_rule(&svc.hostname, from_ns);
        let eds = svc.resolution != Resolution::Dns;
        let implicit = svc.origin.starts_with("implicit");
        for port in &svc.ports {
            let subsets = dr.map(|d| d.list("subsets")).unwrap_or_default();
            let all = std::iter::once(None).chain(subsets.into_iter().map(Some));
            for subset in all {
                let sname = match subset {
                    None => "",
                    Some(s) => match s.get("name").and_then(Json::as_str) {
                        Some(n) => n,
                        None => continue,
                    },
                };
                let sel: BTreeMap<String, String> = subset
                    .and_then(|s| s.get("labels"))
                    .and_then(Json::as_object)
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                let cname = cluster_name(port.number, sname, &svc.hostname);
                let policy = merged_policy(dr, subset, port.number);
                let mut c = cluster_json(&cname, svc, port, policy.as_ref(), eds, implicit);
                if let Some(ts) = upstream_tls::transport_socket(policy.as_ref(), svc, env) {
                    c["transport_socket"] = ts;
                }
                out.clusters.insert(cname.clone(), c);
                if eds {
                    let eps: Vec<&Endpoint> = svc
                        .endpoints
                        .iter()
                        .filter(|e| selects(&sel, &e.labels))
                        .collect();
                    let lb = locality::LocalityLb::new(policy.as_ref(), p);
                    out.endpoints
                        .insert(cname.clone(), cla_json(&cname, &eps, port, lb.as_ref()));
                }
            }
        }
    }
}

/// The HTTP filters of every generated connection manager: fault and CORS (configured per
/// route through `typed_per_filter_config`), then the router.
pub(crate) fn http_filters() -> Json {
    json!([
        {"name": http_policy::FAULT_FILTER, "typed_config": {"@type": http_policy::FAULT_TYPE}},
        {"name": http_policy::CORS_FILTER, "typed_config": {"@type": http_policy::CORS_TYPE}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ])
}

/// An HttpConnectionManager; `extra` fields (an object) are merged in.
pub(crate) fn hcm(
    stat_prefix: &str,
    rds: Option<&str>,
    inline: Option<Json>,
    extra: Option<Json>,
) -> Json {
    let mut h = json!({
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "CONNECT"}],
        "http_filters": http_filters(),
        "stream_idle_timeout": "0s",
    });
    if let Some(name) = rds {
        h["rds"] = json!({"config_source": ads(), "route_config_name": name});
    }
    if let Some(rc) = inline {
        h["route_config"] = rc;
    }
    if let Some(Json::Object(e)) = extra {
        for (k, v) in e {
            h[k] = v;
        }
    }
    h
}

pub(crate) fn socket(ip: &str, port: u16) -> Json {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

/// A TcpProxy filter config to `route` (a cluster name or weighted clusters, see
/// [`l4::Target`]), with the access logs in force and `idle_timeout` when set (else the
/// proxy's default, 1 h, as Envoy's).
pub(crate) fn tcp_proxy(
    stat_prefix: &str,
    target: &l4::Target,
    idle_timeout: Option<Json>,
    logs: Option<&Json>,
) -> Json {
    let mut t = json!({"@type": TCP_PROXY, "stat_prefix": stat_prefix});
    if let Some(d) = idle_timeout {
        t["idle_timeout"] = d;
    }
    match target {
        l4::Target::Cluster(c) => t["cluster"] = json!(c),
        l4::Target::Weighted(ws) => {
            t["weighted_clusters"] = json!({"clusters": ws
                .iter()
                .map(|(c, w)| json!({"name": c, "weight": w}))
                .collect::<Vec<_>>()});
        }
    }
    if let Some(l) = logs {
        t["access_log"] = l.clone();
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Per-proxy outputs

/// The full configuration of one proxy.
pub fn for_proxy(p: &ProxyNode, env: &Env) -> Output {
    let mut out = shared(p, env);
    let local = local(p, env);
    out.listeners.extend(local.listeners);
    out.clusters.extend(local.clusters);
    out.routes.extend(local.routes);
    out.endpoints.extend(local.endpoints);
    out
}

/// What proxies of the same group (see [`group_key`]) share: outbound clusters, endpoints and
/// routes — the bulk of a mesh's config, computed once per group per push.
pub fn shared(p: &ProxyNode, env: &Env) -> Output {
    if p.proxyless {
        return proxyless(p, env);
    }
    let mut out = Output::default();
    let services = env.visible_services(p);
    outbound_clusters(env, &services, p, &mut out);
    if p.role == "router" {
        gateway::gateway(p, env, &mut out);
        out.listeners.clear();
    } else {
        sidecar_routes(p, env, &services, &mut out);
    }
    out
}

/// What is this proxy's own: its listeners and inbound clusters.
pub fn local(p: &ProxyNode, env: &Env) -> Output {
    let mut out = Output::default();
    if p.proxyless {
        return out;
    }
    if p.role == "router" {
        gateway::gateway(p, env, &mut out);
        out.routes.clear();
        out.clusters.clear();
        out.endpoints.clear();
    } else {
        sidecar_local(p, env, &mut out);
    }
    out
}

/// Proxies with equal keys get equal [`shared`] output. The key holds the proxy's labels,
/// locality or address only when some config makes the output depend on them (see
/// [`Env::index`]), so alike proxies keep sharing.
pub fn group_key(p: &ProxyNode, env: &Env) -> String {
    let sidecar = env.sidecar_for(p).map(Res::id).unwrap_or_default();
    let labels = if p.role == "router" || env.derived.labels {
        format!("{:?}", p.labels)
    } else {
        String::new()
    };
    let locality = if env.derived.locality {
        p.locality.as_str()
    } else {
        ""
    };
    let address = if env.derived.address {
        p.ip.to_string()
    } else {
        String::new()
    };
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        p.role, p.proxyless, p.namespace, sidecar, labels, locality, address
    )
}

fn outbound_vhosts(
    p: &ProxyNode,
    env: &Env,
    services: &[&Service],
    gateway: Option<&str>,
) -> Vec<Json> {
    let mut vhosts = Vec::new();
    for svc in services {
        let vs = env.virtual_service(&svc.hostname, &p.namespace, None);
        for port in &svc.ports {
            let cluster = cluster_name(port.number, "", &svc.hostname);
            let cx = RouteCx {
                env,
                proxy: p,
                gateway,
                port: port.number,
            };
            let mut routes = Vec::new();
            if port.protocol.is_http() {
                let target = l4::Target::Cluster(cluster.clone());
                routes.push(l4::connect_route(
                    &target,
                    tunnel_idle_timeout(env, &target, &p.namespace),
                ));
                match vs {
                    Some(vs) => routes.extend(vs_routes(vs, &cx)),
                    None => {
                        let mut r = default_route(&cluster);
                        let dr = env.destination_rule(&svc.hostname, &p.namespace);
                        if let Some(hp) = hash_policy(merged_policy(dr, None, port.number).as_ref())
                        {
                            r["route"]["hash_policy"] = hp;
                        }
                        routes.push(r);
                    }
                }
            } else {
                // TCP and TLS services are reached through `CONNECT host:port`: the VirtualService's
                // `tls`/`tcp` rules pick the destination(s).
                let target = l4::sidecar_target(vs, svc, port, &cx)
                    .unwrap_or_else(|| l4::Target::Cluster(cluster.clone()));
                routes.push(l4::connect_route(
                    &target,
                    tunnel_idle_timeout(env, &target, &p.namespace),
                ));
            }
            let mut domains = domains(svc, port.number, &p.namespace);
            for a in &svc.addresses {
                if !a.contains('/') {
                    domains.push(format!("{a}:{}", port.number));
                }
            }
            vhosts.push(json!({"name": format!("{}:{}", svc.hostname, port.number), "domains": domains, "routes": routes}));
        }
    }
    vhosts
}

/// Istio's name of the cluster that forwards to any host (ALLOW_ANY).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// The dynamic forward proxy cluster behind ALLOW_ANY: resolves the request's authority with
/// the system resolver and connects there.
fn passthrough_cluster() -> Json {
    json!({
        "name": PASSTHROUGH,
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
            "dns_cache_config": {"name": "weft_dns", "dns_lookup_family": "V4_PREFERRED"}
        }},
    })
}

/// The body of the 502 a REGISTRY_ONLY sidecar answers for an unknown host.
pub const REGISTRY_ONLY_BODY: &str =
    "weft: REGISTRY_ONLY: the requested host is not a registered service (add a ServiceEntry)\n";

/// `local_reply_config` of a REGISTRY_ONLY outbound connection manager: no route (NR) → 502.
fn registry_only_reply() -> Json {
    json!({"mappers": [{
        "filter": {"response_flag_filter": {"flags": ["NR"]}},
        "status_code": 502,
        "body": {"inline_string": REGISTRY_ONLY_BODY},
    }]})
}

fn sidecar_routes(p: &ProxyNode, env: &Env, services: &[&Service], out: &mut Output) {
    // Outbound: the explicit proxy applications reach through HTTP_PROXY.
    let mut vhosts = outbound_vhosts(p, env, services, None);
    if !env.registry_only_for(p) {
        // ALLOW_ANY: any other host (and CONNECT target) goes out as it is.
        vhosts.push(json!({"name": "allow_any", "domains": ["*"], "routes": [
            {"name": "allow_any_connect", "match": {"connect_matcher": {}}, "route": {"cluster": PASSTHROUGH, "timeout": "0s",
                "idle_timeout": l4::DEFAULT_TCP_IDLE_TIMEOUT, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}},
            {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": PASSTHROUGH, "timeout": "0s"}},
        ]}));
        out.clusters
            .insert(PASSTHROUGH.to_string(), passthrough_cluster());
    }
    out.routes.insert(
        "outbound".into(),
        json!({"name": "outbound", "virtual_hosts": vhosts, "validate_clusters": false}),
    );
}

fn sidecar_local(p: &ProxyNode, env: &Env, out: &mut Output) {
    let ip = p.ip.to_string();
    let client_logs = access_log::access_logs(env, p, access_log::Mode::Client);
    let server_logs = access_log::access_logs(env, p, access_log::Mode::Server);
    let mut extra = Map::new();
    if env.registry_only_for(p) {
        extra.insert("local_reply_config".into(), registry_only_reply());
    }
    if let Some(l) = &client_logs {
        extra.insert("access_log".into(), l.clone());
    }
    out.listeners.insert("outbound".into(), json!({
        "name": "outbound",
        "address": socket(&ip, 15001),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm("outbound_0.0.0.0_15001", Some("outbound"), None, Some(Json::Object(extra)))}]}],
        "traffic_direction": "OUTBOUND",
    }));
    let server_extra = server_logs
        .as_ref()
        .map(|l| json!({"access_log": l.clone()}));
    // Inbound: one listener per served port, forwarding to the application.
    for (port, app_port) in &p.inbound {
        let cname = format!("inbound|{port}||");
        out.clusters.insert(cname.clone(), json!({
            "name": cname, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "ROUND_ROBIN",
            "typed_extension_protocol_options": {HTTP_OPTIONS: {"@type": format!("type.googleapis.com/{HTTP_OPTIONS}"),
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": cname, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(&ip, *app_port)}}]}]},
        }));
        let route = json!({"name": format!("inbound|{port}"), "virtual_hosts": [{"name": format!("inbound|http|{port}"), "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cname, "timeout": "0s", "upgrade_configs": [{"upgrade_type": "websocket"}]}}]}]});
        let declared_tcp = env.services.iter().any(|s| {
            s.endpoints.iter().any(|e| e.address == p.ip)
                && s.ports
                    .iter()
                    .any(|sp| sp.number == *port && !sp.protocol.is_http())
        });
        let http_chain = json!({"filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]},
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm(&format!("inbound_0.0.0.0_{port}"), None, Some(route), server_extra.clone())}]});
        let tcp_chain = json!({"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy(&cname, &l4::Target::Cluster(cname.clone()), None, server_logs.as_ref())}]});
        let listener = if declared_tcp {
            json!({"name": format!("inbound|{port}"), "address": socket(&ip, *port), "filter_chains": [tcp_chain], "traffic_direction": "INBOUND"})
        } else {
            json!({"name": format!("inbound|{port}"), "address": socket(&ip, *port), "traffic_direction": "INBOUND",
                "listener_filters": [{"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
                "listener_filters_timeout": "0.1s", "continue_on_listener_filters_timeout": true,
                "filter_chains": [http_chain], "default_filter_chain": tcp_chain})
        };
        out.listeners.insert(format!("inbound|{port}"), listener);
    }
}

/// Proxyless gRPC: API listeners named `host:port` with RDS, EDS clusters — what gRPC's xDS
/// resolver asks for when dialing `xds:///host:port`.
fn proxyless(p: &ProxyNode, env: &Env) -> Output {
    let mut out = Output::default();
    let services = env.visible_services(p);
    outbound_clusters(env, &services, p, &mut out);
    for svc in &services {
        for port in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            let cx = RouteCx {
                env,
                proxy: p,
                gateway: None,
                port: port.number,
            };
            let cluster = cluster_name(port.number, "", &svc.hostname);
            let mut routes = match env.virtual_service(&svc.hostname, &p.namespace, None) {
                Some(vs) => vs_routes(vs, &cx),
                None => vec![json!({"match": {"prefix": ""}, "route": {"cluster": cluster}})],
            };
            // gRPC's resolver understands a subset of route fields: keep match + cluster choice.
            for r in &mut routes {
                if let Some(route) = r.get_mut("route").and_then(Json::as_object_mut) {
                    route.retain(|k, _| {
                        k == "cluster" || k == "weighted_clusters" || k == "timeout"
                    });
                    if route.get("timeout").and_then(Json::as_str) == Some("0s") {
                        route.remove("timeout");
                    }
                }
                if let Some(m) = r.get_mut("match").and_then(Json::as_object_mut)
                    && m.get("prefix").and_then(Json::as_str) == Some("/")
                {
                    m.insert("prefix".into(), json!(""));
                }
                if let Some(o) = r.as_object_mut() {
                    o.retain(|k, _| k == "match" || k == "route" || k == "name");
                }
            }
            for alias in svc.aliases(&p.namespace) {
                let name = format!("{alias}:{}", port.number);
                out.routes.insert(name.clone(), json!({"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]}));
                out.listeners.insert(name.clone(), json!({
                    "name": name,
                    "api_listener": {"api_listener": {"@type": HCM, "stat_prefix": name,
                        "rds": {"config_source": ads(), "route_config_name": name},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}},
                }));
            }
        }
    }
    for c in out.clusters.values_mut() {
        if let Some(o) = c.as_object_mut() {
            // gRPC clients support round robin and ring hash; the rest is Envoy's business.
            if o.get("lb_policy").and_then(Json::as_str) == Some("LEAST_REQUEST") {
                o.insert("lb_policy".into(), json!("ROUND_ROBIN"));
                o.remove("least_request_lb_config");
            }
            o.remove("typed_extension_protocol_options");
            o.remove("circuit_breakers");
            o.remove("common_lb_config");
        }
    }
    out
}

/// Names of every Service a set of outputs touches (for incremental pushes).
pub fn referenced_hosts(out: &Output) -> BTreeSet<String> {
    out.clusters
        .keys()
        .filter_map(|c| c.rsplit('|').next().map(str::to_string))
        .collect()
}

/// Fields of valid Istio config that this version of Weft does not act on yet: they are
/// reported (API `/api/v1/errors`, logs) rather than silently ignored. A few notes about valid
/// config that has no effect *by Istio's own rules* are reported the same way.
pub fn unimplemented(r: &Res) -> Vec<String> {
    let mut out = Vec::new();
    let id = r.id();
    let mut flag = |path: String| {
        out.push(format!(
            "{id}: `{path}` is not implemented yet and has no effect"
        ))
    };
    let mut notes = Vec::new();
    match r.kind.as_str() {
        "VirtualService" => {
            for (i, rule) in r.list("http").iter().enumerate() {
                if rule.pointer("/retries/retryRemoteLocalities").is_some() {
                    flag(format!("spec.http[{i}].retries.retryRemoteLocalities"));
                }
                if let Some(f) = rule.get("fault") {
                    if let Some(d) = f.get("delay")
                        && d.get("fixedDelay").is_none()
                        && d.get("exponentialDelay").is_some()
                    {
                        flag(format!("spec.http[{i}].fault.delay.exponentialDelay"));
                    }
                    for k in ["delay", "abort"] {
                        if let Some(x) = f.get(k)
                            && x.get("percentage").is_none()
                            && x.get("percent").is_none()
                        {
                            notes.push(format!(
                                "{id}: `spec.http[{i}].fault.{k}` has no percentage: as in Istio, no request is affected (set `percentage.value: 100`)"
                            ));
                        }
                    }
                }
                if rule
                    .pointer("/corsPolicy/unmatchedPreflights")
                    .and_then(Json::as_str)
                    == Some("IGNORE")
                {
                    flag(format!(
                        "spec.http[{i}].corsPolicy.unmatchedPreflights: IGNORE"
                    ));
                }
            }
            let gateways = r.strings("gateways");
            let on_gateway = gateways.iter().any(|g| g != "mesh");
            for (i, rule) in r.list("tcp").iter().enumerate() {
                for (j, m) in rule
                    .get("match")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if on_gateway && m.get("sourceSubnet").is_some() {
                        flag(format!(
                            "spec.tcp[{i}].match[{j}].sourceSubnet (on gateways; the rule never matches there)"
                        ));
                    }
                }
            }
        }
        "DestinationRule" => {
            // Policies can sit at the top level, in subsets and in port-level settings of both.
            let mut policies: Vec<(String, &Json)> = Vec::new();
            if let Some(tp) = r.spec.get("trafficPolicy") {
                policies.push(("spec.trafficPolicy".into(), tp));
            }
            for (i, sub) in r.list("subsets").iter().enumerate() {
                if let Some(tp) = sub.get("trafficPolicy") {
                    policies.push((format!("spec.subsets[{i}].trafficPolicy"), tp));
                }
            }
            let mut all = Vec::new();
            for (path, tp) in policies {
                for (j, pls) in tp
                    .get("portLevelSettings")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    all.push((format!("{path}.portLevelSettings[{j}]"), pls));
                }
                all.push((path, tp));
            }
            for (path, tp) in all {
                if tp.pointer("/loadBalancer/simple").and_then(Json::as_str) == Some("PASSTHROUGH")
                {
                    flag(format!("{path}.loadBalancer.simple: PASSTHROUGH"));
                }
                // Valid Istio that the translation does not carry over.
                for key in [
                    "connectionPool/tcp/tcpKeepalive",
                    "loadBalancer/consistentHash/httpCookie/attributes",
                    "tunnel",
                    "proxyProtocol",
                ] {
                    if tp.pointer(&format!("/{key}")).is_some() {
                        flag(format!("{path}.{}", key.replace('/', ".")));
                    }
                }
                // As in Istio, slow start exists for round robin and least request only.
                if let Some(lb) = tp.get("loadBalancer")
                    && let Some(w) = ["warmup", "warmupDurationSecs"]
                        .into_iter()
                        .find(|k| lb.get(k).is_some())
                    && (lb.get("consistentHash").is_some()
                        || lb.get("simple").and_then(Json::as_str) == Some("RANDOM"))
                {
                    notes.push(format!(
                        "{id}: `{path}.loadBalancer.{w}` has no effect: slow start applies to ROUND_ROBIN and LEAST_REQUEST load balancing only"
                    ));
                }
                // Carried to the cluster's HTTP connections as Istio does; Istio also puts it
                // on the TCP proxy of TCP services, which this version does not (idleTimeout
                // reaches both: tunnels and gateway tcp_proxy).
                if tp
                    .pointer("/connectionPool/tcp/maxConnectionDuration")
                    .is_some()
                {
                    notes.push(format!(
                        "{id}: `{path}.connectionPool.tcp.maxConnectionDuration` applies to HTTP connections only: TCP connections to the service (tunnels, tcp_proxy) are not limited by it yet"
                    ));
                }
                let Some(tls) = tp.get("tls") else {
                    continue;
                };
                if tls.get("mode").and_then(Json::as_str) == Some("ISTIO_MUTUAL") {
                    flag(format!("{path}.tls.mode: ISTIO_MUTUAL"));
                }
                for k in ["subjectAltNames", "caCrl"] {
                    if tls.get(k).is_some() {
                        flag(format!("{path}.tls.{k}"));
                    }
                }
            }
        }
        "Gateway" => {
            for (i, s) in r.list("servers").iter().enumerate() {
                let proto = s
                    .pointer("/port/protocol")
                    .and_then(Json::as_str)
                    .unwrap_or("HTTP");
                let mode = s.pointer("/tls/mode").and_then(Json::as_str);
                if matches!(mode, Some("AUTO_PASSTHROUGH" | "ISTIO_MUTUAL")) {
                    flag(format!(
                        "spec.servers[{i}].tls.mode: {} ({proto})",
                        mode.unwrap_or("")
                    ));
                }
                for k in ["bind", "defaultEndpoint"] {
                    if s.get(k).is_some() {
                        flag(format!("spec.servers[{i}].{k}"));
                    }
                }
                for k in [
                    "subjectAltNames",
                    "verifyCertificateSpki",
                    "verifyCertificateHash",
                    "caCrl",
                    "cipherSuites",
                    "credentialNames",
                    "tlsCertificates",
                ] {
                    if s.get("tls").and_then(|t| t.get(k)).is_some() {
                        flag(format!("spec.servers[{i}].tls.{k}"));
                    }
                }
            }
        }
        "Sidecar"
            if r.spec
                .pointer("/outboundTrafficPolicy/egressProxy")
                .is_some() =>
        {
            flag("spec.outboundTrafficPolicy.egressProxy".into());
        }
        "Telemetry" => {
            for k in ["tracing", "metrics", "targetRef", "targetRefs"] {
                if r.spec.get(k).is_some() {
                    flag(format!("spec.{k}"));
                }
            }
            for (i, a) in r.list("accessLogging").iter().enumerate() {
                if a.get("filter").is_some() {
                    flag(format!("spec.accessLogging[{i}].filter"));
                }
            }
        }
        "KubernetesGateway" | "HTTPRoute" | "GRPCRoute" => {
            gateway_api::unimplemented(r, &mut flag);
        }
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
            flag(format!("{} resources", r.kind));
        }
        _ => {}
    }
    out.extend(notes);
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Fixtures shared by the translation tests.
    use super::*;
    use crate::model::{Port, Protocol};
    use std::net::IpAddr;

    pub fn svc(host: &str, ns: &str, port: u16, eps: &[(&str, &str)]) -> Service {
        Service {
            hostname: host.into(),
            namespace: ns.into(),
            ports: vec![Port {
                number: port,
                name: "http".into(),
                protocol: Protocol::Http,
                target: None,
            }],
            resolution: Resolution::Static,
            mesh_external: false,
            endpoints: eps
                .iter()
                .map(|(ip, v)| Endpoint {
                    address: ip.parse().unwrap(),
                    ports: BTreeMap::new(),
                    labels: [
                        ("app".to_string(), "reviews".to_string()),
                        ("version".to_string(), v.to_string()),
                    ]
                    .into(),
                    locality: String::new(),
                    weight: 1,
                    service_account: "default".into(),
                    workload: format!("reviews-{v}"),
                    namespace: ns.into(),
                })
                .collect(),
            export_to: vec![],
            addresses: vec![],
            origin: "ServiceEntry default/reviews".into(),
        }
    }

    pub fn proxy() -> ProxyNode {
        ProxyNode {
            id: "sidecar~127.0.1.1~productpage.default~default.svc.cluster.local".into(),
            role: "sidecar".into(),
            ip: "127.0.1.1".parse::<IpAddr>().unwrap(),
            name: "productpage".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "productpage".to_string())].into(),
            service_account: "default".into(),
            inbound: vec![(9080, 19080)],
            port_map: BTreeMap::new(),
            proxyless: false,
            locality: String::new(),
        }
    }

    pub fn res(kind: &str, name: &str, spec: Json) -> Res {
        Res {
            kind: kind.into(),
            name: name.into(),
            namespace: "default".into(),
            spec,
        }
    }

    pub fn assert_valid(out: &Output) {
        let pool = weft_xds::descriptors();
        for (t, m) in [
            ("envoy.config.listener.v3.Listener", &out.listeners),
            ("envoy.config.route.v3.RouteConfiguration", &out.routes),
            ("envoy.config.cluster.v3.Cluster", &out.clusters),
            (
                "envoy.config.endpoint.v3.ClusterLoadAssignment",
                &out.endpoints,
            ),
        ] {
            for (n, j) in m {
                weft_xds::json::json_to_any(&pool, t, j.clone(), n)
                    .unwrap_or_else(|e| panic!("{n}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn names_and_fqdn() {
        assert_eq!(
            cluster_name(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.other", "default"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(fqdn("example.com.org", "default"), "example.com.org");
    }

    #[test]
    fn subsets_weights_and_header_match_translate_to_valid_envoy_resources() {
        let env = Env {
            services: vec![svc(
                "reviews.default.svc.cluster.local",
                "default",
                9080,
                &[("127.0.1.2", "v1"), ("127.0.1.3", "v2")],
            )],
            destination_rules: vec![res(
                "DestinationRule",
                "reviews",
                json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
            )],
            virtual_services: vec![res(
                "VirtualService",
                "reviews",
                json!({"hosts": ["reviews"], "http": [
                    {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50}, {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}]}
                ]}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert!(
            out.clusters
                .contains_key("outbound|9080|v1|reviews.default.svc.cluster.local")
        );
        assert!(out.clusters.contains_key("inbound|9080||"));
        let v2 = &out.endpoints["outbound|9080|v2|reviews.default.svc.cluster.local"];
        assert_eq!(
            v2["endpoints"][0]["lb_endpoints"].as_array().unwrap().len(),
            1
        );
        assert_eq!(
            v2["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"],
            "127.0.1.3"
        );
        let rc = &out.routes["outbound"];
        let vh = rc["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
            .unwrap();
        assert!(
            vh["domains"]
                .as_array()
                .unwrap()
                .contains(&json!("reviews:9080"))
        );
        let routes = vh["routes"].as_array().unwrap();
        assert_eq!(routes[0]["match"]["connect_matcher"], json!({}));
        assert_eq!(routes[1]["match"]["headers"][0]["name"], "end-user");
        assert_eq!(
            routes[1]["route"]["cluster"],
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            routes[2]["route"]["weighted_clusters"]["clusters"][0]["weight"],
            50
        );
        // Every resource is valid Envoy config.
        let pool = weft_xds::descriptors();
        for (t, m) in [
            ("envoy.config.listener.v3.Listener", &out.listeners),
            ("envoy.config.route.v3.RouteConfiguration", &out.routes),
            ("envoy.config.cluster.v3.Cluster", &out.clusters),
            (
                "envoy.config.endpoint.v3.ClusterLoadAssignment",
                &out.endpoints,
            ),
        ] {
            for (n, j) in m {
                weft_xds::json::json_to_any(&pool, t, j.clone(), n)
                    .unwrap_or_else(|e| panic!("{n}: {e}"));
            }
        }
    }

    #[test]
    fn gateway_binds_virtual_services_by_gateway_name_and_maps_ports() {
        let mut gw = proxy();
        gw.role = "router".into();
        gw.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
        gw.port_map = [(80u16, 8080u16)].into();
        gw.inbound.clear();
        let env = Env {
            services: vec![svc(
                "productpage.default.svc.cluster.local",
                "default",
                9080,
                &[("127.0.1.1", "v1")],
            )],
            gateways: vec![res(
                "Gateway",
                "bookinfo-gateway",
                json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            )],
            virtual_services: vec![res(
                "VirtualService",
                "bookinfo",
                json!({"hosts": ["*"], "gateways": ["bookinfo-gateway"], "http": [
                    {"match": [{"uri": {"exact": "/productpage"}}, {"uri": {"prefix": "/static"}}], "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}
                ]}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&gw, &env);
        let l = &out.listeners["0.0.0.0_80"];
        assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
        let rc = &out.routes["http.80"];
        assert_eq!(rc["virtual_hosts"][0]["domains"][0], "*");
        assert_eq!(
            rc["virtual_hosts"][0]["routes"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            rc["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "outbound|9080||productpage.default.svc.cluster.local"
        );
    }

    /// Service `reviews` (one v1 endpoint) with DestinationRule `reviews` of `spec`.
    fn reviews_with_rule(spec: Json) -> Env {
        Env {
            services: vec![svc(
                "reviews.default.svc.cluster.local",
                "default",
                9080,
                &[("127.0.1.2", "v1")],
            )],
            destination_rules: vec![res("DestinationRule", "reviews", spec)],
            ..Default::default()
        }
    }

    /// The upstream protocol a cluster speaks, chosen as Istio's cluster builder does: an
    /// explicit `h2UpgradePolicy: UPGRADE` wins, then `useClientProtocol`, then the port.
    #[test]
    fn upstream_protocol_from_port_upgrade_and_client_protocol() {
        use crate::model::Protocol;
        let protocol = |port: Protocol, http: Json| {
            let mut env = reviews_with_rule(
                json!({"host": "reviews", "trafficPolicy": {"connectionPool": {"http": http}}}),
            );
            env.services[0].ports[0].protocol = port;
            let out = for_proxy(&proxy(), &env);
            assert_valid(&out);
            let o = &out.clusters["outbound|9080||reviews.default.svc.cluster.local"]["typed_extension_protocol_options"]
                [HTTP_OPTIONS];
            if o.get("use_downstream_protocol_config").is_some() {
                "client"
            } else if o
                .pointer("/explicit_http_config/http2_protocol_options")
                .is_some()
            {
                "h2"
            } else {
                "h1"
            }
        };
        let client = json!({"useClientProtocol": true});
        assert_eq!(protocol(Protocol::Http, json!({})), "h1");
        assert_eq!(protocol(Protocol::Http, client.clone()), "client");
        assert_eq!(protocol(Protocol::Grpc, json!({})), "h2");
        assert_eq!(protocol(Protocol::Grpc, client), "client");
        assert_eq!(
            protocol(
                Protocol::Http,
                json!({"h2UpgradePolicy": "UPGRADE", "useClientProtocol": true})
            ),
            "h2"
        );
        // maxConcurrentStreams bounds the streams of each HTTP/2 connection.
        let mut env = reviews_with_rule(json!({"host": "reviews", "trafficPolicy":
            {"connectionPool": {"http": {"maxConcurrentStreams": 100}}}}));
        env.services[0].ports[0].protocol = Protocol::Grpc;
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        assert_eq!(
            out.clusters["outbound|9080||reviews.default.svc.cluster.local"]["typed_extension_protocol_options"]
                [HTTP_OPTIONS]["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"],
            100
        );
    }

    #[test]
    fn outlier_detection_as_istio_generates_it() {
        let cluster = |od: Json| {
            let env = reviews_with_rule(
                json!({"host": "reviews", "trafficPolicy": {"outlierDetection": od}}),
            );
            let out = for_proxy(&proxy(), &env);
            assert_valid(&out);
            out.clusters["outbound|9080||reviews.default.svc.cluster.local"]["outlier_detection"]
                .clone()
        };
        let o = cluster(json!({
            "consecutive5xxErrors": 0, "consecutiveGatewayErrors": 4,
            "splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 2
        }));
        assert_eq!(
            o,
            json!({
                "enforcing_success_rate": 0,
                "consecutive_5xx": 0, "enforcing_consecutive_5xx": 0,
                "consecutive_gateway_failure": 4, "enforcing_consecutive_gateway_failure": 100,
                "split_external_local_origin_errors": true,
                "enforcing_local_origin_success_rate": 0,
                "consecutive_local_origin_failure": 2,
                "enforcing_consecutive_local_origin_failure": 100,
            })
        );
        // Only the split: Envoy's default count (5) applies; nothing given: Envoy's defaults.
        let o = cluster(json!({"splitExternalLocalOriginErrors": true}));
        assert_eq!(o["split_external_local_origin_errors"], true);
        assert!(o.get("consecutive_local_origin_failure").is_none());
        assert_eq!(cluster(json!({})), json!({"enforcing_success_rate": 0}));
    }

    #[test]
    fn destination_rule_policies_and_route_actions() {
        let env = Env {
            virtual_services: vec![res(
                "VirtualService",
                "reviews",
                json!({"hosts": ["reviews"], "http": [
                    {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 302}},
                    {"match": [{"uri": {"prefix": "/api"}}], "rewrite": {"uri": "/v2"}, "timeout": "3s",
                     "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,503"},
                     "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}},
                     "route": [{"destination": {"host": "reviews"}}]},
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
                ]}),
            )],
            ..reviews_with_rule(json!({"host": "reviews", "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
                "connectionPool": {"tcp": {"maxConnections": 1, "connectTimeout": "2s", "idleTimeout": "90s", "maxConnectionDuration": "3600s"}, "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1}},
                "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}
            }, "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}]}))
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let c = &out.clusters["outbound|9080||reviews.default.svc.cluster.local"];
        assert_eq!(c["lb_policy"], "RING_HASH");
        assert_eq!(c["connect_timeout"], "2s");
        assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_connections"], 1);
        assert_eq!(c["outlier_detection"]["consecutive_5xx"], 3);
        assert_eq!(c["outlier_detection"]["enforcing_consecutive_5xx"], 100);
        assert_eq!(c["outlier_detection"]["enforcing_success_rate"], 0);
        // As Istio: with no HTTP idle timeout the TCP one applies to HTTP connections.
        let common =
            &c["typed_extension_protocol_options"][HTTP_OPTIONS]["common_http_protocol_options"];
        assert_eq!(common["idle_timeout"], "90s");
        assert_eq!(common["max_connection_duration"], "3600s");
        assert_eq!(common["max_requests_per_connection"], 1);
        assert_eq!(
            out.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"]["lb_policy"],
            "ROUND_ROBIN"
        );
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
            .unwrap()
            .clone();
        let r = vh["routes"].as_array().unwrap();
        assert_eq!(r[1]["redirect"]["path_redirect"], "/new");
        assert_eq!(r[1]["redirect"]["response_code"], "FOUND");
        let a = &r[2]["route"];
        assert_eq!(a["prefix_rewrite"], "/v2");
        assert_eq!(a["timeout"], "3s");
        assert_eq!(a["retry_policy"]["num_retries"], 3);
        assert_eq!(a["retry_policy"]["retry_on"], "5xx,retriable-status-codes");
        assert_eq!(a["retry_policy"]["retriable_status_codes"], json!([503]));
        assert_eq!(a["hash_policy"][0]["header"]["header_name"], "x-user");
        assert_eq!(r[2]["request_headers_to_remove"], json!(["x-b"]));
        // Istio's defaults on a rule without retries/timeout.
        assert_eq!(r[3]["route"]["timeout"], "0s");
        assert_eq!(r[3]["route"]["retry_policy"]["num_retries"], 2);
    }

    #[test]
    fn warmup_becomes_slow_start_for_round_robin_and_least_request() {
        let env = reviews_with_rule(json!({"host": "reviews",
        "trafficPolicy": {"loadBalancer": {"warmupDurationSecs": "30s"}},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer":
                {"simple": "ROUND_ROBIN", "warmupDurationSecs": "5s",
                 "warmup": {"duration": "60s", "minimumPercent": 5, "aggression": 2}}}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer":
                {"simple": "RANDOM", "warmupDurationSecs": "10s"}}},
            {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {"loadBalancer":
                {"consistentHash": {"useSourceIp": true}, "warmup": {"duration": "10s"}}}}
        ]}));
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let cluster = |subset: &str| {
            out.clusters[&format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")]
                .clone()
        };
        // Istio's default balancer with the older field: the window alone, Envoy's defaults.
        let c = cluster("");
        assert_eq!(c["lb_policy"], "LEAST_REQUEST");
        assert_eq!(
            c["least_request_lb_config"],
            json!({"slow_start_config": {"slow_start_window": "30s"}})
        );
        // `warmup` wins over `warmupDurationSecs`.
        let ss = &cluster("v1")["round_robin_lb_config"]["slow_start_config"];
        assert_eq!(ss["slow_start_window"], "60s");
        assert_eq!(ss["aggression"]["default_value"], 2);
        assert_eq!(ss["min_weight_percent"]["value"], 5);
        // Istio's defaults for `warmup`: linear, 10% floor.
        let out3 = for_proxy(
            &proxy(),
            &reviews_with_rule(json!({"host": "reviews", "trafficPolicy": {"loadBalancer":
                {"simple": "LEAST_REQUEST", "warmup": {"duration": "20s"}}}})),
        );
        let ss = &out3.clusters["outbound|9080||reviews.default.svc.cluster.local"]["least_request_lb_config"]
            ["slow_start_config"];
        assert_eq!(ss["aggression"]["default_value"], 1.0);
        assert_eq!(ss["min_weight_percent"]["value"], 10.0);
        // No slow start for random or consistent hashing (as in Istio); `weft analyze` says so.
        for subset in ["v2", "v3"] {
            let c = cluster(subset);
            assert!(
                c.get("round_robin_lb_config").is_none()
                    && c.get("least_request_lb_config").is_none(),
                "{subset}: {c}"
            );
        }
        let notes = unimplemented(&env.destination_rules[0]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes.iter().all(|n| n.contains("has no effect")),
            "{notes:?}"
        );
    }

    #[test]
    fn sidecar_scoping_and_registry_only() {
        let mut other = svc(
            "ratings.other.svc.cluster.local",
            "other",
            9080,
            &[("127.0.1.9", "v1")],
        );
        other.namespace = "other".into();
        let env = Env {
            services: vec![
                svc(
                    "reviews.default.svc.cluster.local",
                    "default",
                    9080,
                    &[("127.0.1.2", "v1")],
                ),
                other,
            ],
            sidecars: vec![res(
                "Sidecar",
                "default",
                json!({"egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert!(out.clusters.keys().any(|c| c.contains("reviews.default")));
        assert!(
            !out.clusters.keys().any(|c| c.contains("ratings.other")),
            "Sidecar egress must scope clusters"
        );
        assert_valid(&out);
        // REGISTRY_ONLY: no catch-all virtual host, no passthrough cluster; the outbound
        // connection manager turns "no route" into a 502 that says why.
        let vhs = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .clone();
        assert!(!vhs.iter().any(|v| v["domains"][0] == "*"));
        assert!(!out.clusters.contains_key(PASSTHROUGH));
        let h = &out.listeners["outbound"]["filter_chains"][0]["filters"][0]["typed_config"];
        let m = &h["local_reply_config"]["mappers"][0];
        assert_eq!(m["filter"]["response_flag_filter"]["flags"], json!(["NR"]));
        assert_eq!(m["status_code"], 502);
        assert_eq!(m["body"]["inline_string"], REGISTRY_ONLY_BODY);

        // A Sidecar without `egress` (only the traffic policy) scopes nothing, as in Istio.
        let env = Env {
            sidecars: vec![res(
                "Sidecar",
                "default",
                json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
            )],
            ..env
        };
        let out = for_proxy(&proxy(), &env);
        assert!(out.clusters.keys().any(|c| c.contains("reviews.default")));
        assert!(
            out.clusters.keys().any(|c| c.contains("ratings.other")),
            "a Sidecar without egress must not scope clusters"
        );
        assert!(!out.clusters.contains_key(PASSTHROUGH));
    }

    #[test]
    fn allow_any_passes_unknown_hosts_to_the_dynamic_forward_proxy() {
        let env = Env {
            services: vec![svc(
                "reviews.default.svc.cluster.local",
                "default",
                9080,
                &[("127.0.1.2", "v1")],
            )],
            ..Default::default()
        };
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let vhs = out.routes["outbound"]["virtual_hosts"].as_array().unwrap();
        let any = vhs.last().unwrap();
        assert_eq!(any["domains"], json!(["*"]));
        assert_eq!(any["routes"][0]["match"]["connect_matcher"], json!({}));
        assert_eq!(any["routes"][0]["route"]["cluster"], PASSTHROUGH);
        assert_eq!(any["routes"][1]["route"]["cluster"], PASSTHROUGH);
        let c = &out.clusters[PASSTHROUGH];
        assert_eq!(c["lb_policy"], "CLUSTER_PROVIDED");
        assert_eq!(
            c["cluster_type"]["name"],
            "envoy.clusters.dynamic_forward_proxy"
        );
        assert_eq!(
            c["cluster_type"]["typed_config"]["dns_cache_config"],
            json!({"name": "weft_dns", "dns_lookup_family": "V4_PREFERRED"})
        );
        let h = &out.listeners["outbound"]["filter_chains"][0]["filters"][0]["typed_config"];
        assert!(h.get("local_reply_config").is_none());
        // The mesh-wide default can be REGISTRY_ONLY too, and a Sidecar can switch it back.
        let mut env = env;
        env.registry_only = true;
        assert!(!for_proxy(&proxy(), &env).clusters.contains_key(PASSTHROUGH));
        env.sidecars = vec![res(
            "Sidecar",
            "default",
            json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}),
        )];
        assert!(for_proxy(&proxy(), &env).clusters.contains_key(PASSTHROUGH));
    }

    #[test]
    fn short_and_literal_hosts_resolve_against_the_registry() {
        let mut env = Env {
            services: vec![svc("httpbin.org", "default", 80, &[])],
            ..Default::default()
        };
        env.index();
        assert_eq!(env.resolve("httpbin.org", "default"), "httpbin.org");
        assert_eq!(
            env.resolve("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            env.resolve("reviews.other", "default"),
            "reviews.other.svc.cluster.local"
        );
    }

    #[test]
    fn valid_but_unimplemented_fields_are_reported() {
        // Implemented now: no report.
        let vs = res(
            "VirtualService",
            "r",
            json!({"hosts": ["r"], "http": [{"fault": {"abort": {"httpStatus": 500, "percentage": {"value": 10.0}}},
                "mirror": {"host": "m"}, "corsPolicy": {"allowOrigins": [{"exact": "x"}]}, "route": [{"destination": {"host": "r"}}]}],
                "tcp": [{"route": [{"destination": {"host": "r"}}]}]}),
        );
        assert!(unimplemented(&vs).is_empty(), "{:?}", unimplemented(&vs));
        let vs = res(
            "VirtualService",
            "r",
            json!({"hosts": ["r"], "http": [{"delegate": {"name": "d"}, "fault": {"abort": {"httpStatus": 500}}}]}),
        );
        let w = unimplemented(&vs);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no percentage"), "{w:?}");
        let dr = res(
            "DestinationRule",
            "r",
            json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "subjectAltNames": ["a"]},
                "loadBalancer": {"localityLbSetting": {"enabled": true}}}}),
        );
        let w = unimplemented(&dr);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("spec.trafficPolicy.tls.subjectAltNames"));
        // Pool and balancer settings the translation does not carry, wherever they sit; the
        // outlier detection fields it does carry are not reported.
        let dr = res(
            "DestinationRule",
            "r",
            json!({"host": "r", "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"},
                "connectionPool": {"http": {"useClientProtocol": true}, "tcp": {"tcpKeepalive": {"time": "60s"}}},
                "outlierDetection": {"splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 2},
                "portLevelSettings": [{"port": {"number": 80}, "connectionPool": {"tcp": {"idleTimeout": "1h", "maxConnectionDuration": "2h"}}}]},
              "subsets": [{"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"tunnel": {"targetHost": "x", "targetPort": 80}}}]}),
        );
        let mut w = unimplemented(&dr);
        w.sort();
        let paths: Vec<&str> = w.iter().filter_map(|m| m.split('`').nth(1)).collect();
        assert_eq!(
            paths,
            [
                "spec.subsets[0].trafficPolicy.tunnel",
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
                "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnectionDuration",
            ],
            "{w:?}"
        );
        assert!(
            w.iter()
                .find(|m| m.contains("tcp.maxConnectionDuration"))
                .is_some_and(|m| m.contains("applies to HTTP connections only")),
            "{w:?}"
        );
        let tel = res(
            "Telemetry",
            "t",
            json!({"accessLogging": [{"providers": [{"name": "envoy"}]}], "tracing": [{}]}),
        );
        let w = unimplemented(&tel);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("spec.tracing"));
    }

    #[test]
    fn cluster_names_parse_back() {
        let n = cluster_name(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(
            parse_cluster_name(&n),
            Some((9080, "v1", "reviews.default.svc.cluster.local"))
        );
        assert_eq!(
            parse_cluster_name(&cluster_name(80, "", "a.example.com")),
            Some((80, "", "a.example.com"))
        );
        assert_eq!(parse_cluster_name("inbound|8080||"), None);
        assert_eq!(parse_cluster_name("PassthroughCluster"), None);
        assert_eq!(parse_cluster_name("outbound|x||h"), None);
    }

    #[test]
    fn delegate_rules_merge_under_the_root_match() {
        let root = res(
            "VirtualService",
            "root",
            json!({"hosts": ["reviews"], "http": [
                {"match": [{"uri": {"prefix": "/api"}, "headers": {"x-team": {"exact": "a"}}}], "delegate": {"name": "child"}},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
            ]}),
        );
        let child = res(
            "VirtualService",
            "child",
            json!({"http": [
                {"match": [{"uri": {"prefix": "/api/v2"}, "headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}
            ]}),
        );
        let out = expand_delegates(&[root, child]);
        let http = out[0].list("http");
        assert_eq!(http.len(), 3, "two delegate rules + the root's own");
        let m = &http[0]["match"][0];
        assert_eq!(m["uri"]["prefix"], "/api/v2");
        assert_eq!(m["headers"]["x-team"]["exact"], "a");
        assert_eq!(m["headers"]["end-user"]["exact"], "jason");
        assert_eq!(
            http[1]["match"][0]["uri"]["prefix"], "/api",
            "a delegate rule without match takes the root's"
        );
        assert_eq!(http[2]["route"][0]["destination"]["subset"], "v1");
        assert!(
            out[1].strings("hosts").is_empty(),
            "the delegate itself stays host-less"
        );
    }
}
