//! The Kubernetes Gateway API (`Gateway` — kind `KubernetesGateway` here —, `HTTPRoute`,
//! `GRPCRoute`), rewritten into the Istio shapes the rest of translation already serves, as
//! Istio itself does:
//!
//! - each listener of a Gateway becomes an Istio Gateway (kind `KubernetesGateway`, name
//!   `GATEWAY:LISTENER`) with one server, selecting the gateway proxies labelled
//!   `gateway.networking.k8s.io/gateway-name: GATEWAY` in the Gateway's namespace. Listeners:
//!   HTTP, and HTTPS with `tls.mode: Terminate` and a `certificateRefs` secret (its name is a
//!   `credentialName`, see [`super::Env::credential_files`]);
//! - the routes attached to a listener (`parentRefs` by name, `sectionName`, `port`; admitted
//!   by `allowedRoutes`) become, per hostname (route ∩ listener hostnames), one VirtualService
//!   (kind `HTTPRoute`/`GRPCRoute`, which switches on Gateway API path semantics) whose rules
//!   are every attached rule × match, in Gateway API precedence order: exact path, longest
//!   prefix, method, most headers, most query parameters, then route namespace/name and order.
//!
//! Filters: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite,
//! RequestMirror, CORS; `backendRefs` (Service `name.ns.svc.cluster.local`, or Istio's
//! `Hostname` kind) with weights and per-backend header modifiers; a rule with nothing to
//! forward to answers 500. Pure: no I/O, no proxies.

use super::Res;
use serde_json::{Map, Value as Json, json};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Label that makes a proxy a Gateway API gateway's deployment.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Private key of a synthetic redirect: the Gateway API's `ReplacePrefixMatch` (no Istio
/// equivalent; weft-api rejects it in user input).
pub const PREFIX_REDIRECT: &str = "_prefixRewrite";

fn s<'a>(v: &'a Json, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Json::as_str).filter(|s| !s.is_empty())
}

fn arr<'a>(v: &'a Json, k: &str) -> impl Iterator<Item = &'a Json> {
    v.get(k).and_then(Json::as_array).into_iter().flatten()
}

/// RE2-escapes `text`.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn host_matches(pattern: &str, host: &str) -> bool {
    super::host_matches(pattern, host)
}

/// A listener's server, or None for listeners this version does not serve.
fn server(listener: &Json) -> Option<Json> {
    let port = listener.get("port").and_then(Json::as_u64)?;
    let name = s(listener, "name").unwrap_or("listener");
    let host = s(listener, "hostname").unwrap_or("*");
    let proto = s(listener, "protocol")
        .unwrap_or("HTTP")
        .to_ascii_uppercase();
    let mut srv = json!({"port": {"number": port, "name": name, "protocol": proto}, "hosts": [format!("*/{host}")]});
    match proto.as_str() {
        "HTTP" => {}
        "HTTPS" => {
            let tls = listener.get("tls")?;
            if s(tls, "mode").unwrap_or("Terminate") != "Terminate" {
                return None;
            }
            let cred = arr(tls, "certificateRefs").find_map(|r| s(r, "name"))?;
            srv["tls"] = json!({"mode": "SIMPLE", "credentialName": cred});
        }
        _ => return None,
    }
    Some(srv)
}

fn namespace_admitted(listener: &Json, gw_ns: &str, route: &Res) -> bool {
    let from = listener
        .pointer("/allowedRoutes/namespaces/from")
        .and_then(Json::as_str)
        .unwrap_or("Same");
    let ns_ok = match from {
        "All" => true,
        "Same" => route.namespace == gw_ns,
        // Namespace labels are not known to the control plane (reported).
        _ => false,
    };
    let kinds: Vec<&str> = listener
        .pointer("/allowedRoutes/kinds")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| s(k, "kind"))
        .collect();
    ns_ok && (kinds.is_empty() || kinds.contains(&route.kind.as_str()))
}

/// Route hostnames ∩ the listener's hostname (each narrowed to the more specific).
fn hostnames(listener: &Json, route: &Res) -> Vec<String> {
    let l = s(listener, "hostname").unwrap_or("*");
    let hs = route.strings("hostnames");
    if hs.is_empty() {
        return vec![l.to_string()];
    }
    let mut out = Vec::new();
    for h in hs {
        let n = if host_matches(l, &h) {
            h
        } else if host_matches(&h, l) {
            l.to_string()
        } else {
            continue;
        };
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Gateway API precedence among rules for one hostname (smaller first).
type Precedence = (u8, Reverse<usize>, u8, Reverse<usize>, Reverse<usize>);

fn header_ops(f: &Json) -> Json {
    let kv = |k: &str| -> Map<String, Json> {
        arr(f, k)
            .filter_map(|h| {
                Some((
                    s(h, "name")?.to_string(),
                    json!(s(h, "value").unwrap_or("")),
                ))
            })
            .collect()
    };
    let mut o = Map::new();
    let set = kv("set");
    if !set.is_empty() {
        o.insert("set".into(), Json::Object(set));
    }
    let add = kv("add");
    if !add.is_empty() {
        o.insert("add".into(), Json::Object(add));
    }
    let rm: Vec<&Json> = arr(f, "remove").collect();
    if !rm.is_empty() {
        o.insert("remove".into(), json!(rm));
    }
    Json::Object(o)
}

/// A backend (or mirror) reference as an Istio destination; None for kinds not served.
fn destination(r: &Json, route_ns: &str) -> Option<Json> {
    let name = s(r, "name")?;
    let group = s(r, "group").unwrap_or("");
    let host = match s(r, "kind").unwrap_or("Service") {
        "Service" if group.is_empty() || group == "core" => {
            let ns = s(r, "namespace").unwrap_or(route_ns);
            format!("{name}.{ns}.svc.cluster.local")
        }
        "Hostname" if group == "networking.istio.io" => name.to_string(),
        _ => return None,
    };
    let mut d = json!({"host": host});
    if let Some(p) = r.get("port").and_then(Json::as_u64) {
        d["port"] = json!({"number": p});
    }
    Some(d)
}

/// Header modifiers of a filter list, as Istio `headers`.
fn headers_of(filters: &[&Json]) -> Option<Json> {
    let mut h = Map::new();
    for f in filters {
        match s(f, "type") {
            Some("RequestHeaderModifier") => {
                if let Some(m) = f.get("requestHeaderModifier") {
                    h.insert("request".into(), header_ops(m));
                }
            }
            Some("ResponseHeaderModifier") => {
                if let Some(m) = f.get("responseHeaderModifier") {
                    h.insert("response".into(), header_ops(m));
                }
            }
            _ => {}
        }
    }
    (!h.is_empty()).then_some(Json::Object(h))
}

/// The parts of a rule shared by all its matches: actions, filters, backends.
fn rule_base(rule: &Json, route_ns: &str) -> Map<String, Json> {
    let filters: Vec<&Json> = arr(rule, "filters").collect();
    let mut base = Map::new();
    if let Some(n) = s(rule, "name") {
        base.insert("name".into(), json!(n));
    }
    if let Some(h) = headers_of(&filters) {
        base.insert("headers".into(), h);
    }
    let mut redirect = None;
    let mut mirrors = Vec::new();
    for f in &filters {
        match s(f, "type") {
            Some("RequestRedirect") => {
                let r = f.get("requestRedirect").cloned().unwrap_or(json!({}));
                let mut rd = Map::new();
                if let Some(v) = s(&r, "scheme") {
                    rd.insert("scheme".into(), json!(v));
                }
                if let Some(v) = s(&r, "hostname") {
                    rd.insert("authority".into(), json!(v));
                }
                if let Some(v) = r.get("port").and_then(Json::as_u64) {
                    rd.insert("port".into(), json!(v));
                }
                match r.pointer("/path/type").and_then(Json::as_str) {
                    Some("ReplaceFullPath") => {
                        if let Some(v) = r.pointer("/path/replaceFullPath") {
                            rd.insert("uri".into(), v.clone());
                        }
                    }
                    Some("ReplacePrefixMatch") => {
                        if let Some(v) = r.pointer("/path/replacePrefixMatch") {
                            rd.insert(PREFIX_REDIRECT.into(), v.clone());
                        }
                    }
                    _ => {}
                }
                // The Gateway API's default redirect is 302 (Istio's is 301).
                rd.insert(
                    "redirectCode".into(),
                    json!(r.get("statusCode").and_then(Json::as_u64).unwrap_or(302)),
                );
                redirect = Some(Json::Object(rd));
            }
            Some("RequestMirror") => {
                let Some(m) = f.get("requestMirror") else {
                    continue;
                };
                let Some(d) = m.get("backendRef").and_then(|b| destination(b, route_ns)) else {
                    continue;
                };
                let pct = m
                    .get("percent")
                    .and_then(Json::as_f64)
                    .or_else(|| {
                        let num = m.pointer("/fraction/numerator").and_then(Json::as_f64)?;
                        let den = m
                            .pointer("/fraction/denominator")
                            .and_then(Json::as_f64)
                            .unwrap_or(100.0);
                        (den > 0.0).then_some(num * 100.0 / den)
                    })
                    .unwrap_or(100.0);
                mirrors.push(json!({"destination": d, "percentage": {"value": pct}}));
            }
            Some("CORS") => {
                if let Some(c) = f.get("cors") {
                    base.insert("corsPolicy".into(), cors(c));
                }
            }
            _ => {}
        }
    }
    if !mirrors.is_empty() {
        base.insert("mirrors".into(), Json::Array(mirrors));
    }
    if let Some(t) = rule.pointer("/timeouts/request") {
        base.insert("timeout".into(), t.clone());
    }
    let per_try = rule.pointer("/timeouts/backendRequest");
    if let Some(r) = rule.get("retry") {
        let mut on = vec!["connect-failure,refused-stream,unavailable,cancelled".to_string()];
        on.extend(
            arr(r, "codes")
                .filter_map(Json::as_u64)
                .map(|c| c.to_string()),
        );
        let mut rt = json!({"retryOn": on.join(",")});
        if let Some(a) = r.get("attempts") {
            rt["attempts"] = a.clone();
        }
        if let Some(t) = per_try {
            rt["perTryTimeout"] = t.clone();
        }
        base.insert("retries".into(), rt);
    } else if let Some(t) = per_try {
        base.insert("retries".into(), json!({"perTryTimeout": t}));
    }
    if let Some(rd) = redirect {
        base.insert("redirect".into(), rd);
        return base;
    }
    let mut dests = Vec::new();
    for b in arr(rule, "backendRefs") {
        let weight = b.get("weight").and_then(Json::as_u64).unwrap_or(1);
        if weight == 0 {
            continue;
        }
        let Some(d) = destination(b, route_ns) else {
            continue;
        };
        let bf: Vec<&Json> = arr(b, "filters").collect();
        let mut rd = json!({"destination": d, "weight": weight});
        if let Some(h) = headers_of(&bf) {
            rd["headers"] = h;
        }
        dests.push(rd);
    }
    if dests.is_empty() {
        base.insert("directResponse".into(), json!({"status": 500}));
    } else {
        base.insert("route".into(), Json::Array(dests));
    }
    base
}

fn cors(c: &Json) -> Json {
    let origins: Vec<Json> = arr(c, "allowOrigins")
        .filter_map(Json::as_str)
        .map(|o| {
            if o.contains('*') {
                let re: Vec<String> = o.split('*').map(regex_escape).collect();
                json!({"regex": re.join(".*")})
            } else {
                json!({"exact": o})
            }
        })
        .collect();
    let mut p = json!({"allowOrigins": origins});
    for k in ["allowMethods", "allowHeaders", "exposeHeaders"] {
        if let Some(v) = c.get(k) {
            p[k] = v.clone();
        }
    }
    if let Some(a) = c.get("maxAge").and_then(Json::as_u64) {
        p["maxAge"] = json!(format!("{a}s"));
    }
    if let Some(b) = c.get("allowCredentials") {
        p["allowCredentials"] = b.clone();
    }
    p
}

/// Header or query matches as Istio's map of StringMatch.
fn value_matches(list: &Json, k: &str) -> Map<String, Json> {
    let mut out = Map::new();
    for h in arr(list, k) {
        let Some(name) = s(h, "name") else {
            continue;
        };
        let v = h.get("value").cloned().unwrap_or(json!(""));
        let m = match s(h, "type") {
            Some("RegularExpression") => json!({"regex": v}),
            _ => json!({"exact": v}),
        };
        out.entry(name.to_string()).or_insert(m);
    }
    out
}

/// One HTTPRoute match as an Istio match (with its precedence) and the URLRewrite adapted to
/// its path.
fn http_match(m: &Json, rule: &Json) -> (Json, Precedence, Option<Json>) {
    let kind = m
        .pointer("/path/type")
        .and_then(Json::as_str)
        .unwrap_or("PathPrefix");
    let value = m
        .pointer("/path/value")
        .and_then(Json::as_str)
        .unwrap_or("/");
    let mut out = Map::new();
    let (rank, uri, len) = match kind {
        "Exact" => (0, json!({"exact": value}), value.len()),
        "RegularExpression" => (2, json!({"regex": value}), value.len()),
        _ => {
            let p = value.trim_end_matches('/');
            let p = if p.is_empty() { "/" } else { p };
            (1, json!({"prefix": p}), p.len())
        }
    };
    let prefix = uri.get("prefix").and_then(Json::as_str).map(str::to_string);
    out.insert("uri".into(), uri);
    let headers = value_matches(m, "headers");
    let query = value_matches(m, "queryParams");
    let (nh, nq) = (headers.len(), query.len());
    if !headers.is_empty() {
        out.insert("headers".into(), Json::Object(headers));
    }
    if !query.is_empty() {
        out.insert("queryParams".into(), Json::Object(query));
    }
    let method = s(m, "method");
    if let Some(meth) = method {
        out.insert("method".into(), json!({"exact": meth}));
    }
    let prec = (
        rank,
        Reverse(len),
        u8::from(method.is_none()),
        Reverse(nh),
        Reverse(nq),
    );
    // URLRewrite: hostname → authority; paths per the match's prefix.
    let rewrite = arr(rule, "filters")
        .find(|f| s(f, "type") == Some("URLRewrite"))
        .and_then(|f| f.get("urlRewrite"))
        .map(|u| {
            let mut rw = Map::new();
            if let Some(h) = s(u, "hostname") {
                rw.insert("authority".into(), json!(h));
            }
            match u.pointer("/path/type").and_then(Json::as_str) {
                Some("ReplaceFullPath") => {
                    let v = u
                        .pointer("/path/replaceFullPath")
                        .and_then(Json::as_str)
                        .unwrap_or("/");
                    rw.insert(
                        "uriRegexRewrite".into(),
                        json!({"match": "^.*$", "rewrite": v}),
                    );
                }
                Some("ReplacePrefixMatch") => {
                    let v = u
                        .pointer("/path/replacePrefixMatch")
                        .and_then(Json::as_str)
                        .unwrap_or("/");
                    match prefix.as_deref() {
                        Some(p) if p != "/" && v == "/" => {
                            rw.insert(
                                "uriRegexRewrite".into(),
                                json!({"match": format!("^{}/*", regex_escape(p)), "rewrite": "/"}),
                            );
                        }
                        Some("/") if v != "/" => {
                            rw.insert(
                                "uriRegexRewrite".into(),
                                json!({"match": "^/", "rewrite": format!("{}/", v.trim_end_matches('/'))}),
                            );
                        }
                        _ => {
                            rw.insert("uri".into(), json!(v));
                        }
                    }
                }
                _ => {}
            }
            Json::Object(rw)
        });
    (Json::Object(out), prec, rewrite)
}

/// One GRPCRoute match as an Istio match (gRPC paths are `/service/method`).
fn grpc_match(m: &Json) -> (Json, Precedence) {
    let svc = m.pointer("/method/service").and_then(Json::as_str);
    let meth = m.pointer("/method/method").and_then(Json::as_str);
    let regex = m.pointer("/method/type").and_then(Json::as_str) == Some("RegularExpression");
    let (rank, uri, len) = match (svc, meth, regex) {
        (None, None, _) => (1, json!({"prefix": "/"}), 1),
        (Some(s), Some(m), false) => {
            let p = format!("/{s}/{m}");
            (0, json!({"exact": p}), p.len())
        }
        (Some(s), None, false) => {
            let p = format!("/{s}/");
            (1, json!({"prefix": p}), p.len())
        }
        (s, m, true) => {
            let p = format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"));
            (2, json!({"regex": p}), p.len())
        }
        (None, Some(m), false) => {
            let p = format!("/[^/]+/{}", regex_escape(m));
            (2, json!({"regex": p}), p.len())
        }
    };
    let mut out = Map::new();
    out.insert("uri".into(), uri);
    let headers = value_matches(m, "headers");
    let nh = headers.len();
    if !headers.is_empty() {
        out.insert("headers".into(), Json::Object(headers));
    }
    (
        Json::Object(out),
        (rank, Reverse(len), 1, Reverse(nh), Reverse(0)),
    )
}

/// Rules of a route, one per match, with their precedence.
fn route_rules(route: &Res) -> Vec<(Precedence, Json)> {
    let mut out = Vec::new();
    for rule in route.list("rules") {
        let base = rule_base(rule, &route.namespace);
        let matches: Vec<&Json> = arr(rule, "matches").collect();
        let matches = if matches.is_empty() {
            vec![&Json::Null]
        } else {
            matches
        };
        for m in matches {
            let mut r = base.clone();
            let (mj, prec) = if route.kind == "GRPCRoute" {
                let (mj, prec) = grpc_match(m);
                (mj, prec)
            } else {
                let (mj, prec, rewrite) = http_match(m, rule);
                if let Some(rw) = rewrite
                    && !r.contains_key("redirect")
                {
                    r.insert("rewrite".into(), rw);
                }
                (mj, prec)
            };
            r.insert("match".into(), json!([mj]));
            out.push((prec, Json::Object(r)));
        }
    }
    out
}

/// Rewrites Gateway API resources into (Istio Gateways, VirtualServices); other kinds are
/// ignored.
pub fn convert(resources: &[Res]) -> (Vec<Res>, Vec<Res>) {
    let gateways: Vec<&Res> = resources
        .iter()
        .filter(|r| r.kind == "KubernetesGateway")
        .collect();
    let mut out_gws = Vec::new();
    for gw in &gateways {
        for l in gw.list("listeners") {
            let Some(srv) = server(l) else {
                continue;
            };
            out_gws.push(Res {
                kind: "KubernetesGateway".into(),
                name: format!("{}:{}", gw.name, s(l, "name").unwrap_or("listener")),
                namespace: gw.namespace.clone(),
                spec: json!({"selector": {GATEWAY_NAME_LABEL: gw.name}, "servers": [srv]}),
            });
        }
    }
    // (gateway ns, gateway name, listener, hostname) → route kind, rules by precedence.
    type Key = (String, String, String, String);
    type Rule = (Precedence, String, String, usize, Json);
    let mut by_host: BTreeMap<Key, (String, Vec<Rule>)> = BTreeMap::new();
    let mut attached: BTreeSet<(Key, String)> = BTreeSet::new();
    let mut routes: Vec<&Res> = resources
        .iter()
        .filter(|r| r.kind == "HTTPRoute" || r.kind == "GRPCRoute")
        .collect();
    routes.sort_by_key(|r| (r.namespace.clone(), r.name.clone(), r.kind.clone()));
    for route in routes {
        let rules = route_rules(route);
        for pr in route.list("parentRefs") {
            let kind_ok = s(pr, "kind").is_none_or(|k| k == "Gateway")
                && s(pr, "group").is_none_or(|g| g == "gateway.networking.k8s.io");
            let Some(name) = s(pr, "name").filter(|_| kind_ok) else {
                continue;
            };
            let gw_ns = s(pr, "namespace").unwrap_or(&route.namespace);
            let Some(gw) = gateways
                .iter()
                .find(|g| g.name == name && g.namespace == gw_ns)
            else {
                continue;
            };
            for l in gw.list("listeners") {
                let lname = s(l, "name").unwrap_or("listener");
                if s(pr, "sectionName").is_some_and(|sn| sn != lname)
                    || pr
                        .get("port")
                        .and_then(Json::as_u64)
                        .is_some_and(|p| Some(p) != l.get("port").and_then(Json::as_u64))
                    || server(l).is_none()
                    || !namespace_admitted(l, &gw.namespace, route)
                {
                    continue;
                }
                for h in hostnames(l, route) {
                    let key = (gw.namespace.clone(), gw.name.clone(), lname.to_string(), h);
                    if !attached.insert((key.clone(), route.id())) {
                        continue;
                    }
                    let entry = by_host
                        .entry(key)
                        .or_insert_with(|| (route.kind.clone(), Vec::new()));
                    for (i, (prec, r)) in rules.iter().enumerate() {
                        entry.1.push((
                            *prec,
                            route.namespace.clone(),
                            route.name.clone(),
                            i,
                            r.clone(),
                        ));
                    }
                }
            }
        }
    }
    let mut out_vs = Vec::new();
    for ((ns, gw, listener, host), (kind, mut rules)) in by_host {
        rules.sort_by(|a, b| (a.0, &a.1, &a.2, a.3).cmp(&(b.0, &b.1, &b.2, b.3)));
        out_vs.push(Res {
            kind,
            name: format!("{gw}:{listener}:{host}"),
            namespace: ns.clone(),
            spec: json!({
                "hosts": [host],
                "gateways": [format!("{ns}/{gw}:{listener}")],
                "http": rules.into_iter().map(|r| r.4).collect::<Vec<_>>(),
            }),
        });
    }
    (out_gws, out_vs)
}

/// Gateway API fields this version does not act on (reported, like Istio's).
pub fn unimplemented(r: &Res, flag: &mut dyn FnMut(String)) {
    match r.kind.as_str() {
        "KubernetesGateway" => {
            for (i, l) in r.list("listeners").iter().enumerate() {
                let proto = s(l, "protocol").unwrap_or("HTTP");
                if server(l).is_none() {
                    flag(format!(
                        "spec.listeners[{i}] ({proto}{})",
                        if proto.eq_ignore_ascii_case("HTTPS") {
                            ", needs tls.mode Terminate and certificateRefs"
                        } else {
                            ""
                        }
                    ));
                }
                if l.pointer("/tls/frontendValidation").is_some() {
                    flag(format!("spec.listeners[{i}].tls.frontendValidation"));
                }
                if l.pointer("/allowedRoutes/namespaces/from")
                    .and_then(Json::as_str)
                    == Some("Selector")
                {
                    flag(format!(
                        "spec.listeners[{i}].allowedRoutes.namespaces.selector"
                    ));
                }
            }
            if !r.list("addresses").is_empty() {
                flag("spec.addresses".into());
            }
        }
        "HTTPRoute" | "GRPCRoute" => {
            for (i, p) in r.list("parentRefs").iter().enumerate() {
                if s(p, "kind").is_some_and(|k| k != "Gateway") {
                    flag(format!(
                        "spec.parentRefs[{i}] (kind {}: mesh routing)",
                        s(p, "kind").unwrap_or("")
                    ));
                }
            }
            for (i, rule) in r.list("rules").iter().enumerate() {
                for (j, f) in arr(rule, "filters").enumerate() {
                    if s(f, "type") == Some("ExtensionRef") {
                        flag(format!("spec.rules[{i}].filters[{j}] (ExtensionRef)"));
                    }
                }
                if rule.get("sessionPersistence").is_some() {
                    flag(format!("spec.rules[{i}].sessionPersistence"));
                }
                if rule.pointer("/retry/backoff").is_some() {
                    flag(format!("spec.rules[{i}].retry.backoff"));
                }
                for (j, b) in arr(rule, "backendRefs").enumerate() {
                    if destination(b, &r.namespace).is_none() {
                        flag(format!(
                            "spec.rules[{i}].backendRefs[{j}] (kind {}; requests get 500)",
                            s(b, "kind").unwrap_or("Service")
                        ));
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    fn k8s(kind: &str, name: &str, spec: Json) -> Res {
        res(kind, name, spec)
    }

    fn gateway_proxy() -> ProxyNode {
        let mut p = proxy();
        p.role = "router".into();
        p.labels = [(GATEWAY_NAME_LABEL.to_string(), "web".to_string())].into();
        p.port_map = [(80u16, 8080u16)].into();
        p.inbound.clear();
        p
    }

    fn env(resources: Vec<Res>) -> Env {
        let (gws, vss) = convert(&resources);
        let mut e = Env {
            services: vec![
                svc(
                    "productpage.default.svc.cluster.local",
                    "default",
                    9080,
                    &[("127.0.1.1", "v1")],
                ),
                svc(
                    "reviews.default.svc.cluster.local",
                    "default",
                    9080,
                    &[("127.0.1.2", "v1")],
                ),
            ],
            gateways: gws,
            virtual_services: vss,
            config_dir: Some("/cfg".into()),
            ..Default::default()
        };
        e.index();
        e
    }

    fn web_gateway() -> Res {
        k8s(
            "KubernetesGateway",
            "web",
            json!({"gatewayClassName": "weft", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"},
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "web-cert"}]}},
                {"name": "tcp", "port": 9000, "protocol": "TCP"}
            ]}),
        )
    }

    #[test]
    fn http_route_matches_filters_and_weights() {
        let route = k8s(
            "HTTPRoute",
            "bookinfo",
            json!({"parentRefs": [{"name": "web", "sectionName": "http"}], "hostnames": ["shop.example.com", "other.org"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}, "method": "GET",
                              "headers": [{"name": "x-user", "value": "jason"}],
                              "queryParams": [{"type": "RegularExpression", "name": "v", "value": "[0-9]+"}]}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
                             {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "reviews", "port": 9080}, "percent": 10}}],
                 "backendRefs": [{"name": "productpage", "port": 9080, "weight": 3}, {"name": "reviews", "port": 9080, "weight": 1}]},
                {"matches": [{"path": {"type": "Exact", "value": "/login"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
                {"backendRefs": [{"name": "productpage", "port": 9080}],
                 "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-served", "value": "weft"}]}}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/gone"}}], "backendRefs": [{"name": "x", "kind": "Unknown"}]}
            ]}),
        );
        let e = env(vec![web_gateway(), route]);
        let out = for_proxy(&gateway_proxy(), &e);
        assert_valid(&out);
        let l = &out.listeners["0.0.0.0_80"];
        assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
        let vhs = out.routes["http.80"]["virtual_hosts"].as_array().unwrap();
        assert_eq!(
            vhs.len(),
            1,
            "other.org is outside the listener's *.example.com"
        );
        assert_eq!(vhs[0]["domains"][0], "shop.example.com");
        let r = vhs[0]["routes"].as_array().unwrap();
        // Precedence: exact /login, then the longest prefix first (/gone, /api), then /.
        assert_eq!(r[0]["match"]["path"], "/login");
        assert_eq!(r[0]["redirect"]["scheme_redirect"], "https");
        assert_eq!(r[0]["redirect"]["response_code"], "MOVED_PERMANENTLY");
        assert_eq!(r[1]["match"]["path_separated_prefix"], "/gone");
        assert_eq!(r[1]["direct_response"]["status"], 500);
        let api = &r[2];
        assert_eq!(api["match"]["path_separated_prefix"], "/api");
        let hdrs: Vec<&str> = api["match"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert!(
            hdrs.contains(&":method") && hdrs.contains(&"x-user"),
            "{hdrs:?}"
        );
        assert_eq!(
            api["match"]["query_parameters"][0]["string_match"]["safe_regex"]["regex"],
            "[0-9]+"
        );
        assert_eq!(api["route"]["prefix_rewrite"], "/v2");
        assert_eq!(api["route"]["host_rewrite_literal"], "internal");
        assert_eq!(
            api["route"]["weighted_clusters"]["clusters"],
            json!([{"name": "outbound|9080||productpage.default.svc.cluster.local", "weight": 3},
                   {"name": "outbound|9080||reviews.default.svc.cluster.local", "weight": 1}])
        );
        assert_eq!(
            api["route"]["request_mirror_policies"][0]["cluster"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(api["request_headers_to_remove"], json!(["x-b"]));
        assert_eq!(r[3]["match"]["prefix"], "/");
        assert_eq!(
            r[3]["response_headers_to_add"][0]["header"]["key"],
            "x-served"
        );
    }

    #[test]
    fn listeners_tls_and_attachment_rules() {
        let routes = vec![
            web_gateway(),
            // No hostnames: the listener's.
            k8s(
                "HTTPRoute",
                "secure",
                json!({"parentRefs": [{"name": "web", "port": 443}], "rules": [{"backendRefs": [{"name": "productpage", "port": 9080}]}]}),
            ),
            {
                // Another namespace is not admitted by default (`from: Same`).
                let mut r = k8s(
                    "HTTPRoute",
                    "foreign",
                    json!({"parentRefs": [{"name": "web", "namespace": "default"}], "rules": [{"backendRefs": [{"name": "productpage", "namespace": "default", "port": 9080}]}]}),
                );
                r.namespace = "other".into();
                r
            },
        ];
        let e = env(routes);
        // The TCP listener is not served (reported); HTTP and HTTPS are.
        assert_eq!(e.gateways.len(), 2);
        let mut p = gateway_proxy();
        p.port_map.insert(443, 8443);
        let out = for_proxy(&p, &e);
        assert_valid(&out);
        assert!(
            !out.routes.contains_key("http.80")
                || out.routes["http.80"]["virtual_hosts"]
                    .as_array()
                    .unwrap()
                    .is_empty()
        );
        let https = &out.listeners["0.0.0.0_443"]["filter_chains"][0];
        assert_eq!(
            https["filter_chain_match"]["server_names"],
            json!(["secure.example.com"])
        );
        assert_eq!(
            https["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
                ["certificate_chain"]["filename"],
            "/cfg/credentials/web-cert/tls.crt"
        );
        let rname = https["filters"][0]["typed_config"]["rds"]["route_config_name"]
            .as_str()
            .unwrap();
        assert_eq!(
            out.routes[rname]["virtual_hosts"][0]["domains"][0],
            "secure.example.com"
        );
        // Proxies of another gateway, or in another namespace, get nothing from it.
        let mut stranger = gateway_proxy();
        stranger.namespace = "other".into();
        assert!(for_proxy(&stranger, &e).listeners.is_empty());
        let mut w = Vec::new();
        unimplemented_into(&web_gateway(), &mut w);
        assert!(
            w.iter().any(|m| m.contains("spec.listeners[2] (TCP")),
            "{w:?}"
        );
    }

    fn unimplemented_into(r: &Res, out: &mut Vec<String>) {
        super::unimplemented(r, &mut |s| out.push(s));
    }

    #[test]
    fn grpc_route_methods() {
        let route = k8s(
            "GRPCRoute",
            "grpc",
            json!({"parentRefs": [{"name": "web"}], "hostnames": ["grpc.example.com"], "rules": [
                {"matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}], "backendRefs": [{"name": "reviews", "port": 9080}]},
                {"matches": [{"method": {"service": "helloworld.Greeter"}}], "backendRefs": [{"name": "productpage", "port": 9080}]}
            ]}),
        );
        let e = env(vec![web_gateway(), route]);
        let out = for_proxy(&gateway_proxy(), &e);
        assert_valid(&out);
        let r = &out.routes["http.80"]["virtual_hosts"][0]["routes"];
        assert_eq!(r[0]["match"]["path"], "/helloworld.Greeter/SayHello");
        assert_eq!(r[1]["match"]["prefix"], "/helloworld.Greeter/");
    }
}
