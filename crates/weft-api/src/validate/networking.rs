//! Validation of networking.istio.io resources, following Istio's webhook rules.

use std::collections::{BTreeMap, BTreeSet};

use super::{V, key_path};
use crate::host::{
    is_dns1123_label, is_dns1123_subdomain, is_ip, is_ip_or_cidr, is_wildcard_dns_name,
};
use crate::networking::*;

/// Envoy retry conditions Istio accepts in `retryOn` (plus numeric status codes).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Gateway server protocols.
const SERVER_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "MYSQL", "REDIS",
];

/// ServiceEntry port protocols.
const SERVICE_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL",
];

// ---------------------------------------------------------------- VirtualService

pub(super) fn virtual_service(v: &mut V, s: &VirtualServiceSpec) {
    let delegate = s.hosts.is_empty();
    if delegate {
        // Istio: a VirtualService without hosts is a delegate, only reachable from another
        // VirtualService's `delegate`.
        if !s.gateways.is_empty() {
            v.err(
                "spec.gateways",
                "a delegate VirtualService (no hosts) must not set gateways",
            );
        }
        if !s.tcp.is_empty() || !s.tls.is_empty() {
            v.err(
                "spec.hosts",
                "hosts are required (only HTTP VirtualServices can be delegates)",
            );
        }
        if s.http.is_empty() {
            v.err("spec.hosts", "at least one host is required");
        }
    }
    if s.http.is_empty() && s.tcp.is_empty() && s.tls.is_empty() && !delegate {
        v.err(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }
    let mesh_bound = s.gateways.is_empty() || s.gateways.iter().any(|g| g == "mesh");
    for (i, h) in s.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" && mesh_bound {
            v.err(&p, "wildcard host `*` is not allowed for VirtualServices bound to the mesh (sidecars); set `gateways` or use a concrete host");
        } else if !(is_wildcard_dns_name(h) || is_ip(h)) {
            v.err(
                &p,
                format!("`{h}` is not a valid host (DNS name, `*.domain` wildcard or IP)"),
            );
        }
    }
    for (i, g) in s.gateways.iter().enumerate() {
        gateway_name(v, &format!("spec.gateways[{i}]"), g);
    }
    v.export_to("spec.exportTo", &s.export_to);
    for (i, r) in s.http.iter().enumerate() {
        http_route(v, &format!("spec.http[{i}]"), r, delegate);
    }
    for (i, r) in s.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            subnets(
                v,
                &format!("{mp}.destinationSubnets"),
                &m.destination_subnets,
            );
            if !m.source_subnet.is_empty() && !is_ip_or_cidr(&m.source_subnet) {
                v.err(
                    format!("{mp}.sourceSubnet"),
                    format!("`{}` is not an IP or CIDR", m.source_subnet),
                );
            }
            if let Some(port) = m.port {
                v.port(&format!("{mp}.port"), port);
            }
            for (k, g) in m.gateways.iter().enumerate() {
                gateway_name(v, &format!("{mp}.gateways[{k}]"), g);
            }
            v.labels(&format!("{mp}.sourceLabels"), &m.source_labels);
        }
        l4_routes(v, &p, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
    for (i, r) in s.tls.iter().enumerate() {
        let p = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            v.err(
                format!("{p}.match"),
                "TLS routes need at least one match with sniHosts",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            if m.sni_hosts.is_empty() {
                v.err(format!("{mp}.sniHosts"), "required");
            }
            for (k, h) in m.sni_hosts.iter().enumerate() {
                if !is_wildcard_dns_name(h) {
                    v.err(
                        format!("{mp}.sniHosts[{k}]"),
                        format!("`{h}` is not a valid SNI host"),
                    );
                }
            }
            subnets(
                v,
                &format!("{mp}.destinationSubnets"),
                &m.destination_subnets,
            );
            if let Some(port) = m.port {
                v.port(&format!("{mp}.port"), port);
            }
            for (k, g) in m.gateways.iter().enumerate() {
                gateway_name(v, &format!("{mp}.gateways[{k}]"), g);
            }
            v.labels(&format!("{mp}.sourceLabels"), &m.source_labels);
        }
        l4_routes(v, &p, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
}

/// `mesh`, `name`, or `namespace/name`.
fn gateway_name(v: &mut V, path: &str, g: &str) {
    if g == "mesh" {
        return;
    }
    let ok = match g.split_once('/') {
        Some((ns, name)) => is_dns1123_label(ns) && is_dns1123_subdomain(name),
        None => is_dns1123_subdomain(g),
    };
    if !ok {
        v.err(
            path,
            format!("`{g}` is not a valid gateway name: use `mesh`, `name` or `namespace/name`"),
        );
    }
}

fn subnets(v: &mut V, path: &str, subnets: &[String]) {
    for (i, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            v.err(
                format!("{path}[{i}]"),
                format!("`{s}` is not an IP or CIDR"),
            );
        }
    }
}

fn destination(v: &mut V, path: &str, d: &Destination) {
    if d.host.is_empty() {
        v.err(format!("{path}.host"), "required");
    } else if d.host.contains('*') {
        v.err(
            format!("{path}.host"),
            format!("destination host `{}` must not be a wildcard", d.host),
        );
    } else if !(is_wildcard_dns_name(&d.host) || is_ip(&d.host)) {
        v.err(
            format!("{path}.host"),
            format!("`{}` is not a valid host", d.host),
        );
    }
    if !d.subset.is_empty() && !is_dns1123_label(&d.subset) {
        v.err(
            format!("{path}.subset"),
            format!("`{}` is not a valid subset name (DNS-1123 label)", d.subset),
        );
    }
    if let Some(p) = &d.port {
        v.port(&format!("{path}.port.number"), p.number);
    }
}

/// Weights 0..=100, summing to 100 when there is more than one destination.
fn weights(v: &mut V, path: &str, items: impl Iterator<Item = Option<i32>>, field: &str) {
    let mut sum: i64 = 0;
    let mut n = 0;
    for (i, w) in items.enumerate() {
        n += 1;
        let w = w.unwrap_or(0);
        if !(0..=100).contains(&w) {
            v.err(format!("{path}[{i}].{field}"), "must be between 0 and 100");
        }
        sum += i64::from(w);
    }
    if n > 1 && sum != 100 {
        v.err(
            path,
            format!("weights of the {n} destinations must sum to 100 (they sum to {sum})"),
        );
    }
}

fn l4_routes<'a>(
    v: &mut V,
    path: &str,
    routes: impl Iterator<Item = (&'a Destination, Option<i32>)> + Clone,
) {
    let rp = format!("{path}.route");
    if routes.clone().next().is_none() {
        v.err(&rp, "at least one route destination is required");
    }
    for (i, (d, _)) in routes.clone().enumerate() {
        destination(v, &format!("{rp}[{i}].destination"), d);
    }
    weights(v, &rp, routes.map(|(_, w)| w), "weight");
}

fn string_match(v: &mut V, path: &str, m: &StringMatch, allow_empty: bool) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        v.err(path, "set only one of exact, prefix or regex");
    } else if set == 0 && !allow_empty {
        v.err(path, "one of exact, prefix or regex is required");
    }
    if let Some(re) = &m.regex {
        v.regex(&format!("{path}.regex"), re);
    }
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b))
}

fn header_matches(v: &mut V, path: &str, headers: &BTreeMap<String, StringMatch>) {
    for (name, m) in headers {
        let p = key_path(path, name);
        if !header_name_ok(name) {
            v.err(&p, format!("`{name}` is not a valid header name"));
        } else if name.to_ascii_lowercase() != *name {
            v.err(&p, format!("header name `{name}` must be lowercase"));
        }
        string_match(v, &p, m, true);
    }
}

fn header_ops(v: &mut V, path: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = format!("{path}.{side}");
        for (kind, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                if !header_name_ok(name) {
                    v.err(
                        key_path(&format!("{p}.{kind}"), name),
                        format!("`{name}` is not a valid header name"),
                    );
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if !header_name_ok(name) {
                v.err(
                    format!("{p}.remove[{i}]"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
}

fn http_route(v: &mut V, p: &str, r: &HttpRoute, in_delegate: bool) {
    let mut actions = Vec::new();
    if !r.route.is_empty() {
        actions.push("route");
    }
    if r.redirect.is_some() {
        actions.push("redirect");
    }
    if r.direct_response.is_some() {
        actions.push("directResponse");
    }
    if r.delegate.is_some() {
        actions.push("delegate");
    }
    match actions.as_slice() {
        [] => v.err(p, "one of route, redirect, directResponse or delegate is required"),
        [_] => {}
        [first, rest @ ..] => v.err(
            format!("{p}.{}", rest[0]),
            format!(
                "route, redirect, directResponse and delegate are mutually exclusive (this rule sets {first} and {})",
                rest.join(" and ")
            ),
        ),
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{p}.match[{j}]");
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(v, &format!("{mp}.{field}"), sm, false);
            }
        }
        header_matches(v, &format!("{mp}.headers"), &m.headers);
        header_matches(v, &format!("{mp}.withoutHeaders"), &m.without_headers);
        for (name, qm) in &m.query_params {
            let qp = key_path(&format!("{mp}.queryParams"), name);
            string_match(v, &qp, qm, true);
            if qm.prefix.is_some() {
                v.err(&qp, "query parameters support only exact and regex matches");
            }
        }
        if let Some(port) = m.port {
            v.port(&format!("{mp}.port"), port);
        }
        for (k, g) in m.gateways.iter().enumerate() {
            gateway_name(v, &format!("{mp}.gateways[{k}]"), g);
        }
        v.labels(&format!("{mp}.sourceLabels"), &m.source_labels);
        if !m.source_namespace.is_empty() && !is_dns1123_label(&m.source_namespace) {
            v.err(
                format!("{mp}.sourceNamespace"),
                format!("`{}` is not a valid namespace", m.source_namespace),
            );
        }
    }
    for (k, d) in r.route.iter().enumerate() {
        let dp = format!("{p}.route[{k}]");
        destination(v, &format!("{dp}.destination"), &d.destination);
        if let Some(h) = &d.headers {
            header_ops(v, &format!("{dp}.headers"), h);
        }
    }
    weights(
        v,
        &format!("{p}.route"),
        r.route.iter().map(|d| d.weight),
        "weight",
    );
    if let Some(rd) = &r.redirect {
        let rp = format!("{p}.redirect");
        if let Some(code) = rd.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            v.err(
                format!("{rp}.redirectCode"),
                format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
            );
        }
        if rd.port.is_some() && rd.derive_port.is_some() {
            v.err(
                format!("{rp}.derivePort"),
                "set only one of port and derivePort",
            );
        }
        if let Some(port) = rd.port {
            v.port(&format!("{rp}.port"), port);
        }
        if r.rewrite.is_some() {
            v.err(
                format!("{p}.rewrite"),
                "rewrite cannot be used together with redirect",
            );
        }
    }
    if let Some(dr) = &r.direct_response {
        let dp = format!("{p}.directResponse");
        if !(200..=599).contains(&dr.status) {
            v.err(
                format!("{dp}.status"),
                format!("status {} must be between 200 and 599", dr.status),
            );
        }
        if let Some(b) = &dr.body
            && b.string.is_some()
            && b.bytes.is_some()
        {
            v.err(format!("{dp}.body"), "set only one of string and bytes");
        }
    }
    if let Some(d) = &r.delegate {
        if in_delegate {
            v.err(
                format!("{p}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if d.name.is_empty() {
            v.err(format!("{p}.delegate.name"), "required");
        }
        if !d.namespace.is_empty() && !is_dns1123_label(&d.namespace) {
            v.err(
                format!("{p}.delegate.namespace"),
                format!("`{}` is not a valid namespace", d.namespace),
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        let rp = format!("{p}.rewrite");
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            v.err(
                format!("{rp}.uriRegexRewrite"),
                "set only one of uri and uriRegexRewrite",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            v.regex(&format!("{rp}.uriRegexRewrite.match"), &rr.regex);
        }
    }
    if let Some(t) = &r.timeout
        && !t.0.is_zero()
    {
        v.positive(&format!("{p}.timeout"), Some(t));
    }
    if let Some(rt) = &r.retries {
        let rp = format!("{p}.retries");
        v.non_negative(&format!("{rp}.attempts"), rt.attempts);
        v.positive(&format!("{rp}.perTryTimeout"), rt.per_try_timeout.as_ref());
        v.positive(&format!("{rp}.backoff"), rt.backoff.as_ref());
        if let Some(on) = &rt.retry_on {
            for cond in on.split(',').map(str::trim) {
                let numeric = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !(numeric || RETRY_ON.contains(&cond)) {
                    v.err(
                        format!("{rp}.retryOn"),
                        format!(
                            "`{cond}` is not a retry condition; use {} or an HTTP status code",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(f) = &r.fault {
        let fp = format!("{p}.fault");
        if f.delay.is_none() && f.abort.is_none() {
            v.err(&fp, "fault needs a delay or an abort");
        }
        if let Some(d) = &f.delay {
            let dp = format!("{fp}.delay");
            match (&d.fixed_delay, &d.exponential_delay) {
                (None, None) => v.err(format!("{dp}.fixedDelay"), "required"),
                (Some(_), Some(_)) => v.err(&dp, "set only one of fixedDelay and exponentialDelay"),
                _ => {}
            }
            v.positive(&format!("{dp}.fixedDelay"), d.fixed_delay.as_ref());
            v.positive(
                &format!("{dp}.exponentialDelay"),
                d.exponential_delay.as_ref(),
            );
            fault_percent(v, &dp, d.percentage.as_ref(), d.percent);
        }
        if let Some(a) = &f.abort {
            let ap = format!("{fp}.abort");
            let set = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set == 0 {
                v.err(
                    format!("{ap}.httpStatus"),
                    "one of httpStatus, grpcStatus or http2Error is required",
                );
            } else if set > 1 {
                v.err(&ap, "set only one of httpStatus, grpcStatus and http2Error");
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                v.err(
                    format!("{ap}.httpStatus"),
                    format!("status {s} must be between 200 and 599"),
                );
            }
            if let Some(g) = &a.grpc_status
                && !GRPC_STATUS.contains(&g.as_str())
            {
                v.err(
                    format!("{ap}.grpcStatus"),
                    format!(
                        "`{g}` is not a gRPC status; use one of {}",
                        GRPC_STATUS.join(", ")
                    ),
                );
            }
            fault_percent(v, &ap, a.percentage.as_ref(), a.percent);
        }
    }
    if let Some(m) = &r.mirror {
        destination(v, &format!("{p}.mirror"), m);
        if !r.mirrors.is_empty() {
            v.err(format!("{p}.mirrors"), "set only one of mirror and mirrors");
        }
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let mp = format!("{p}.mirrors[{k}]");
        destination(v, &format!("{mp}.destination"), &m.destination);
        if let Some(pc) = &m.percentage {
            v.percent(&format!("{mp}.percentage.value"), pc.value);
        }
    }
    if let Some(pc) = &r.mirror_percentage {
        v.percent(&format!("{p}.mirrorPercentage.value"), pc.value);
    }
    if let Some(pc) = r.mirror_percent {
        v.percent(&format!("{p}.mirrorPercent"), f64::from(pc));
    }
    if let Some(c) = &r.cors_policy {
        let cp = format!("{p}.corsPolicy");
        for (k, o) in c.allow_origins.iter().enumerate() {
            string_match(v, &format!("{cp}.allowOrigins[{k}]"), o, false);
        }
        for (k, m) in c.allow_methods.iter().enumerate() {
            if !HTTP_METHODS.contains(&m.as_str()) && m != "*" {
                v.err(
                    format!("{cp}.allowMethods[{k}]"),
                    format!("`{m}` is not an HTTP method"),
                );
            }
        }
        if let Some(age) = &c.max_age
            && age.0.subsec_nanos() != 0
        {
            v.err(
                format!("{cp}.maxAge"),
                "maxAge is accurate to seconds only; use a whole number of seconds",
            );
        }
    }
    if let Some(h) = &r.headers {
        header_ops(v, &format!("{p}.headers"), h);
    }
}

fn fault_percent(v: &mut V, path: &str, percentage: Option<&Percent>, percent: Option<i32>) {
    if let Some(pc) = percentage {
        v.percent(&format!("{path}.percentage.value"), pc.value);
    }
    if let Some(pc) = percent {
        v.percent(&format!("{path}.percent"), f64::from(pc));
        if percentage.is_some() {
            v.err(
                format!("{path}.percent"),
                "set only one of percent (deprecated) and percentage",
            );
        }
    }
}

// ---------------------------------------------------------------- DestinationRule

pub(super) fn destination_rule(v: &mut V, s: &DestinationRuleSpec) {
    if s.host.is_empty() {
        v.err("spec.host", "required");
    } else if !(is_wildcard_dns_name(&s.host) || is_ip(&s.host)) {
        v.err("spec.host", format!("`{}` is not a valid host", s.host));
    }
    if let Some(tp) = &s.traffic_policy {
        traffic_policy(v, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, sub) in s.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if sub.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        } else if !is_dns1123_label(&sub.name) {
            v.err(format!("{p}.name"), format!("`{}` is not a valid subset name (DNS-1123 label: lowercase letters, digits, `-`)", sub.name));
        } else if !names.insert(sub.name.as_str()) {
            v.err(
                format!("{p}.name"),
                format!("duplicate subset name `{}`", sub.name),
            );
        }
        v.labels(&format!("{p}.labels"), &sub.labels);
        if let Some(tp) = &sub.traffic_policy {
            traffic_policy(v, &format!("{p}.trafficPolicy"), tp);
        }
    }
    v.export_to("spec.exportTo", &s.export_to);
    if let Some(ws) = &s.workload_selector {
        v.labels("spec.workloadSelector.matchLabels", &ws.match_labels);
    }
}

fn traffic_policy(v: &mut V, p: &str, tp: &TrafficPolicy) {
    port_settings(
        v,
        p,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        match &pl.port {
            None => v.err(format!("{pp}.port"), "required"),
            Some(port) => {
                v.port(&format!("{pp}.port.number"), port.number);
                if !ports.insert(port.number) {
                    v.err(
                        format!("{pp}.port.number"),
                        format!("duplicate settings for port {}", port.number),
                    );
                }
            }
        }
        port_settings(
            v,
            &pp,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if let Some(t) = &tp.tunnel {
        let tp2 = format!("{p}.tunnel");
        if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
            v.err(format!("{tp2}.protocol"), "must be CONNECT or POST");
        }
        if t.target_host.is_empty() {
            v.err(format!("{tp2}.targetHost"), "required");
        }
        v.port(&format!("{tp2}.targetPort"), t.target_port);
    }
    if let Some(pp) = &tp.proxy_protocol
        && !pp.version.is_empty()
        && pp.version != "V1"
        && pp.version != "V2"
    {
        v.err(format!("{p}.proxyProtocol.version"), "must be V1 or V2");
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn port_settings(
    v: &mut V,
    p: &str,
    lb: Option<&LoadBalancerSettings>,
    cp: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lp = format!("{p}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            v.err(&lp, "set only one of simple and consistentHash");
        }
        if let Some(ch) = &lb.consistent_hash {
            let cp = format!("{lp}.consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if keys != 1 {
                v.err(&cp, "consistentHash needs exactly one hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName");
            }
            if ch.http_header_name.as_deref() == Some("") {
                v.err(format!("{cp}.httpHeaderName"), "must not be empty");
            }
            if let Some(c) = &ch.http_cookie
                && c.name.is_empty()
            {
                v.err(format!("{cp}.httpCookie.name"), "required");
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                v.err(&cp, "set only one of ringHash and maglev");
            }
            if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
                v.err(
                    format!("{cp}.minimumRingSize"),
                    "deprecated minimumRingSize cannot be combined with ringHash or maglev",
                );
            }
            if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size)
                && !is_prime(size)
            {
                v.err(
                    format!("{cp}.maglev.tableSize"),
                    format!("{size} must be a prime number (e.g. 65537)"),
                );
            }
        }
        if let Some(l) = &lb.locality_lb_setting {
            let llp = format!("{lp}.localityLbSetting");
            if !l.distribute.is_empty() && !l.failover.is_empty() {
                v.err(&llp, "set only one of distribute and failover");
            }
            for (i, d) in l.distribute.iter().enumerate() {
                let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
                if d.from.is_empty() {
                    v.err(format!("{llp}.distribute[{i}].from"), "required");
                }
                if sum != 100 {
                    v.err(
                        format!("{llp}.distribute[{i}].to"),
                        format!("weights must sum to 100 (they sum to {sum})"),
                    );
                }
            }
            for (i, f) in l.failover.iter().enumerate() {
                if f.from.is_empty() || f.to.is_empty() {
                    v.err(format!("{llp}.failover[{i}]"), "from and to are required");
                } else if f.from == f.to {
                    v.err(format!("{llp}.failover[{i}].to"), "must differ from `from`");
                }
            }
        }
        v.positive(
            &format!("{lp}.warmupDurationSecs"),
            lb.warmup_duration_secs.as_ref(),
        );
        if let Some(w) = &lb.warmup {
            v.positive(&format!("{lp}.warmup.duration"), w.duration.as_ref());
            if let Some(mp) = w.minimum_percent {
                v.percent(&format!("{lp}.warmup.minimumPercent"), mp);
            }
            if let Some(a) = w.aggression
                && a < 1.0
            {
                v.err(format!("{lp}.warmup.aggression"), "must be at least 1.0");
            }
        }
    }
    if let Some(cp) = cp {
        let pp = format!("{p}.connectionPool");
        if let Some(t) = &cp.tcp {
            let tp = format!("{pp}.tcp");
            v.non_negative(&format!("{tp}.maxConnections"), t.max_connections);
            v.positive(&format!("{tp}.connectTimeout"), t.connect_timeout.as_ref());
            v.positive(
                &format!("{tp}.maxConnectionDuration"),
                t.max_connection_duration.as_ref(),
            );
            v.positive(&format!("{tp}.idleTimeout"), t.idle_timeout.as_ref());
            if let Some(k) = &t.tcp_keepalive {
                v.positive(&format!("{tp}.tcpKeepalive.time"), k.time.as_ref());
                v.positive(&format!("{tp}.tcpKeepalive.interval"), k.interval.as_ref());
            }
        }
        if let Some(h) = &cp.http {
            let hp = format!("{pp}.http");
            v.non_negative(
                &format!("{hp}.http1MaxPendingRequests"),
                h.http1_max_pending_requests,
            );
            v.non_negative(&format!("{hp}.http2MaxRequests"), h.http2_max_requests);
            v.non_negative(
                &format!("{hp}.maxRequestsPerConnection"),
                h.max_requests_per_connection,
            );
            v.non_negative(&format!("{hp}.maxRetries"), h.max_retries);
            v.non_negative(
                &format!("{hp}.maxConcurrentStreams"),
                h.max_concurrent_streams,
            );
            v.positive(&format!("{hp}.idleTimeout"), h.idle_timeout.as_ref());
        }
    }
    if let Some(od) = od {
        let op = format!("{p}.outlierDetection");
        v.non_negative(&format!("{op}.consecutiveErrors"), od.consecutive_errors);
        v.positive(&format!("{op}.interval"), od.interval.as_ref());
        v.positive(
            &format!("{op}.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        );
        for (field, val) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(x) = val
                && !(0..=100).contains(&x)
            {
                v.err(
                    format!("{op}.{field}"),
                    format!("{x} must be between 0 and 100"),
                );
            }
        }
    }
    if let Some(t) = tls {
        let tp = format!("{p}.tls");
        match t.mode {
            Some(ClientTlsMode::Mutual)
                if t.credential_name.is_empty()
                    && (t.client_certificate.is_empty() || t.private_key.is_empty()) =>
            {
                v.err(
                    &tp,
                    "MUTUAL needs credentialName, or clientCertificate and privateKey",
                );
            }
            Some(ClientTlsMode::IstioMutual) => {
                for (field, val) in [
                    ("clientCertificate", &t.client_certificate),
                    ("privateKey", &t.private_key),
                    ("caCertificates", &t.ca_certificates),
                    ("credentialName", &t.credential_name),
                ] {
                    if !val.is_empty() {
                        v.err(
                            format!("{tp}.{field}"),
                            "must not be set with ISTIO_MUTUAL (the mesh provides certificates)",
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- Gateway

/// A gateway server host: `host` or `namespace/host` (namespace `*`, `.` or a name).
fn server_host(v: &mut V, path: &str, h: &str) {
    let (ns, host) = h.split_once('/').unwrap_or(("", h));
    if h.matches('/').count() > 1
        || (h.contains('/') && !(ns == "*" || ns == "." || is_dns1123_label(ns)))
    {
        v.err(
            path,
            format!(
                "`{h}` must be `host` or `namespace/host` (namespace `*`, `.` or a namespace name)"
            ),
        );
        return;
    }
    if !(is_wildcard_dns_name(host) || is_ip(host)) {
        v.err(path, format!("`{host}` is not a valid host"));
    }
}

pub(super) fn gateway(v: &mut V, s: &GatewaySpec) {
    if s.servers.is_empty() {
        v.err("spec.servers", "at least one server is required");
    }
    v.labels("spec.selector", &s.selector);
    let mut names = BTreeSet::new();
    for (i, srv) in s.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        let protocol = match &srv.port {
            None => {
                v.err(format!("{p}.port"), "required");
                String::new()
            }
            Some(port) => {
                v.port(&format!("{p}.port.number"), port.number);
                if let Some(t) = port.target_port {
                    v.port(&format!("{p}.port.targetPort"), t);
                }
                let proto = port.protocol.to_ascii_uppercase();
                if port.protocol.is_empty() {
                    v.err(
                        format!("{p}.port.protocol"),
                        format!("required: one of {}", SERVER_PROTOCOLS.join(", ")),
                    );
                } else if !SERVER_PROTOCOLS.contains(&proto.as_str()) {
                    v.err(
                        format!("{p}.port.protocol"),
                        format!(
                            "`{}` is not a protocol; use one of {}",
                            port.protocol,
                            SERVER_PROTOCOLS.join(", ")
                        ),
                    );
                }
                proto
            }
        };
        if srv.hosts.is_empty() {
            v.err(
                format!("{p}.hosts"),
                "at least one host is required (use `*` for any)",
            );
        }
        for (k, h) in srv.hosts.iter().enumerate() {
            server_host(v, &format!("{p}.hosts[{k}]"), h);
        }
        if !srv.name.is_empty() && !names.insert(srv.name.as_str()) {
            v.err(
                format!("{p}.name"),
                format!("duplicate server name `{}`", srv.name),
            );
        }
        match &srv.tls {
            None => {
                if protocol == "HTTPS" || protocol == "TLS" {
                    v.err(
                        format!("{p}.tls"),
                        format!("{protocol} servers need tls settings"),
                    );
                }
            }
            Some(tls) => server_tls(v, &format!("{p}.tls"), tls, &protocol),
        }
    }
}

fn server_tls(v: &mut V, p: &str, tls: &ServerTlsSettings, protocol: &str) {
    if tls.https_redirect && !protocol.is_empty() && protocol != "HTTP" {
        v.err(
            format!("{p}.httpsRedirect"),
            format!("httpsRedirect is only valid on HTTP servers (this one is {protocol})"),
        );
    }
    if protocol == "HTTP" && tls.mode.is_some() {
        v.err(
            format!("{p}.mode"),
            "plain-text HTTP servers cannot have a TLS mode (only httpsRedirect)",
        );
    }
    let has_files = !tls.server_certificate.is_empty() && !tls.private_key.is_empty();
    let has_credentials = !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty()
        || !tls.tls_certificates.is_empty()
        || has_files;
    match tls.mode {
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual) => {
            if !has_credentials {
                v.err(
                    p,
                    "SIMPLE and MUTUAL need credentialName, or serverCertificate and privateKey",
                );
            } else if tls.credential_name.is_empty() && tls.credential_names.is_empty() {
                if tls.server_certificate.is_empty() != tls.private_key.is_empty() {
                    v.err(p, "serverCertificate and privateKey must be set together");
                }
                if tls.mode != Some(ServerTlsMode::Simple) && tls.ca_certificates.is_empty() {
                    v.err(
                        format!("{p}.caCertificates"),
                        "MUTUAL without credentialName needs caCertificates to verify clients",
                    );
                }
            }
        }
        Some(ServerTlsMode::IstioMutual) if has_credentials || !tls.ca_certificates.is_empty() => {
            v.err(
                p,
                "ISTIO_MUTUAL uses the mesh certificates: do not set credentials",
            );
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::Auto
        && max != TlsProtocol::Auto
        && min > max
    {
        v.err(
            format!("{p}.minProtocolVersion"),
            format!("{min} is above maxProtocolVersion {max}"),
        );
    }
}

// ---------------------------------------------------------------- ServiceEntry / WorkloadEntry

pub(super) fn service_entry(v: &mut V, s: &ServiceEntrySpec) {
    if s.hosts.is_empty() {
        v.err("spec.hosts", "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        if h == "*" {
            v.err(
                format!("spec.hosts[{i}]"),
                "`*` is not allowed; use a domain or `*.domain`",
            );
        } else if !is_wildcard_dns_name(h) {
            v.err(
                format!("spec.hosts[{i}]"),
                format!("`{h}` is not a valid host"),
            );
        }
    }
    subnets(v, "spec.addresses", &s.addresses);
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in s.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        v.port(&format!("{p}.number"), port.number);
        if !numbers.insert(port.number) {
            v.err(
                format!("{p}.number"),
                format!("duplicate port {}", port.number),
            );
        }
        if let Some(t) = port.target_port {
            v.port(&format!("{p}.targetPort"), t);
        }
        let proto = port.protocol.to_ascii_uppercase();
        if port.protocol.is_empty() {
            v.err(
                format!("{p}.protocol"),
                format!("required: one of {}", SERVICE_PROTOCOLS.join(", ")),
            );
        } else if !SERVICE_PROTOCOLS.contains(&proto.as_str()) {
            v.err(
                format!("{p}.protocol"),
                format!(
                    "`{}` is not a protocol; use one of {}",
                    port.protocol,
                    SERVICE_PROTOCOLS.join(", ")
                ),
            );
        }
        if !port.name.is_empty() && !names.insert(port.name.as_str()) {
            v.err(
                format!("{p}.name"),
                format!("duplicate port name `{}`", port.name),
            );
        }
    }
    if !s.endpoints.is_empty() && s.workload_selector.is_some() {
        v.err(
            "spec.workloadSelector",
            "set only one of endpoints and workloadSelector",
        );
    }
    let resolution = s.resolution.unwrap_or(Resolution::None);
    match resolution {
        Resolution::Static => {
            if s.endpoints.is_empty() && s.workload_selector.is_none() {
                v.err(
                    "spec.endpoints",
                    "STATIC resolution needs endpoints (with addresses) or a workloadSelector",
                );
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if !e.address.is_empty() && !is_ip(&e.address) && !e.address.starts_with("unix://")
                {
                    v.err(format!("spec.endpoints[{i}].address"), format!("`{}` must be an IP address (or unix://) for STATIC resolution; use DNS resolution for host names", e.address));
                }
            }
        }
        Resolution::None => {
            if !s.endpoints.is_empty() {
                v.err(
                    "spec.endpoints",
                    "endpoints are not used with resolution NONE; use STATIC or DNS",
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if s.endpoints.is_empty() && s.hosts.iter().any(|h| h.starts_with('*')) {
                v.err("spec.hosts", "DNS resolution cannot resolve wildcard hosts; add endpoints or use resolution NONE");
            }
            if resolution == Resolution::DnsRoundRobin && s.endpoints.len() > 1 {
                v.err(
                    "spec.endpoints",
                    "DNS_ROUND_ROBIN allows at most one endpoint",
                );
            }
        }
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        let p = format!("spec.endpoints[{i}]");
        workload_entry(v, &p, e, resolution != Resolution::None);
        for name in e.ports.keys() {
            if !s.ports.iter().any(|sp| sp.name == *name) {
                v.err(
                    key_path(&format!("{p}.ports"), name),
                    format!("port `{name}` is not one of the ServiceEntry's port names"),
                );
            }
        }
    }
    if let Some(ws) = &s.workload_selector {
        v.labels("spec.workloadSelector.labels", &ws.labels);
    }
    v.export_to("spec.exportTo", &s.export_to);
}

pub(super) fn workload_entry(v: &mut V, p: &str, e: &WorkloadEntrySpec, address_required: bool) {
    if e.address.is_empty() {
        if address_required {
            v.err(format!("{p}.address"), "required");
        }
    } else if !(is_ip(&e.address)
        || e.address.starts_with("unix://")
        || is_wildcard_dns_name(&e.address) && !e.address.contains('*'))
    {
        v.err(
            format!("{p}.address"),
            format!(
                "`{}` is not an IP address, host name or unix:// path",
                e.address
            ),
        );
    }
    for (name, port) in &e.ports {
        v.port(&key_path(&format!("{p}.ports"), name), *port);
    }
    v.labels(&format!("{p}.labels"), &e.labels);
    if !e.service_account.is_empty() && !is_dns1123_subdomain(&e.service_account) {
        v.err(
            format!("{p}.serviceAccount"),
            format!(
                "`{}` is not a valid service account name",
                e.service_account
            ),
        );
    }
}

// ---------------------------------------------------------------- Sidecar

pub(super) fn sidecar(v: &mut V, s: &SidecarSpec) {
    if let Some(ws) = &s.workload_selector {
        v.labels("spec.workloadSelector.labels", &ws.labels);
    }
    let mut catch_all = 0;
    for (i, e) in s.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        match &e.port {
            None => catch_all += 1,
            Some(port) => v.port(&format!("{p}.port.number"), port.number),
        }
        if e.hosts.is_empty() {
            v.err(
                format!("{p}.hosts"),
                "at least one `namespace/host` is required (e.g. `./*`, `istio-system/*`)",
            );
        }
        for (k, h) in e.hosts.iter().enumerate() {
            let hp = format!("{p}.hosts[{k}]");
            match h.split_once('/') {
                Some((ns, host)) if (matches!(ns, "*" | "." | "~") || is_dns1123_label(ns)) && !host.contains('/') => {
                    if !is_wildcard_dns_name(host) {
                        v.err(&hp, format!("`{host}` is not a valid host"));
                    }
                }
                _ => v.err(&hp, format!("`{h}` must be `namespace/dnsName` (e.g. `./*`, `istio-system/*`, `*/api.example.com`)")),
            }
        }
    }
    if catch_all > 1 {
        v.err("spec.egress", "only one egress listener may omit its port");
    }
    for (i, l) in s.ingress.iter().enumerate() {
        let p = format!("spec.ingress[{i}]");
        match &l.port {
            None => v.err(format!("{p}.port"), "required"),
            Some(port) => v.port(&format!("{p}.port.number"), port.number),
        }
        if !l.default_endpoint.is_empty() {
            let ok = l.default_endpoint.starts_with("unix://")
                || l.default_endpoint
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| {
                        matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]")
                            && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
            if !ok {
                v.err(
                    format!("{p}.defaultEndpoint"),
                    "must be `127.0.0.1:PORT`, `0.0.0.0:PORT` or `unix://path`",
                );
            }
        }
    }
}
