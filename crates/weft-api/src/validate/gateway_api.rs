//! Validation of gateway.networking.k8s.io resources (the CRD schema and CEL rules that the
//! API server would enforce).

use std::collections::BTreeSet;

use super::V;
use crate::gateway_api::*;
use crate::host::{is_dns1123_label, is_dns1123_subdomain, is_ip, is_wildcard_dns_name};

const LISTENER_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP", "UDP"];

/// Gateway API hostnames: DNS names with an optional leading `*.`, never IPs, never `*`.
fn hostname(v: &mut V, path: &str, h: &str) {
    if h == "*" || is_ip(h) || !is_wildcard_dns_name(h) || h.chars().any(|c| c.is_ascii_uppercase())
    {
        v.err(path, format!("`{h}` is not a valid hostname (lowercase DNS name, optionally starting with `*.`; no IPs)"));
    }
}

pub(super) fn gateway(v: &mut V, s: &GatewaySpec) {
    if s.gateway_class_name.is_empty() {
        v.err("spec.gatewayClassName", "required");
    }
    if s.listeners.is_empty() {
        v.err("spec.listeners", "at least one listener is required");
    }
    let mut names = BTreeSet::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let p = format!("spec.listeners[{i}]");
        if l.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        } else if !is_dns1123_subdomain(&l.name) {
            v.err(
                format!("{p}.name"),
                format!("`{}` is not a valid listener name", l.name),
            );
        } else if !names.insert(l.name.as_str()) {
            v.err(
                format!("{p}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        v.port_i32(&format!("{p}.port"), l.port);
        let custom = l.protocol.contains('/');
        if l.protocol.is_empty() {
            v.err(
                format!("{p}.protocol"),
                format!("required: one of {}", LISTENER_PROTOCOLS.join(", ")),
            );
        } else if !custom && !LISTENER_PROTOCOLS.contains(&l.protocol.as_str()) {
            v.err(
                format!("{p}.protocol"),
                format!(
                    "`{}` is not a protocol; use one of {} (or a domain-prefixed custom protocol)",
                    l.protocol,
                    LISTENER_PROTOCOLS.join(", ")
                ),
            );
        }
        if let Some(h) = &l.hostname {
            hostname(v, &format!("{p}.hostname"), h);
        }
        let proto = l.protocol.as_str();
        match (&l.tls, proto) {
            (None, "HTTPS" | "TLS") => v.err(
                format!("{p}.tls"),
                format!("{proto} listeners need tls settings"),
            ),
            (Some(_), "HTTP" | "TCP" | "UDP") => v.err(
                format!("{p}.tls"),
                format!("{proto} listeners must not set tls"),
            ),
            (Some(tls), _) => {
                let mode = tls.mode.unwrap_or(GatewayTlsMode::Terminate);
                if mode == GatewayTlsMode::Terminate
                    && tls.certificate_refs.is_empty()
                    && tls.options.is_empty()
                {
                    v.err(
                        format!("{p}.tls.certificateRefs"),
                        "Terminate mode needs at least one certificateRef",
                    );
                }
                if mode == GatewayTlsMode::Passthrough && proto == "HTTPS" {
                    v.err(
                        format!("{p}.tls.mode"),
                        "HTTPS listeners terminate TLS; use protocol TLS for Passthrough",
                    );
                }
                for (k, c) in tls.certificate_refs.iter().enumerate() {
                    if c.name.is_empty() {
                        v.err(format!("{p}.tls.certificateRefs[{k}].name"), "required");
                    }
                }
            }
            _ => {}
        }
        if let Some(ar) = &l.allowed_routes
            && let Some(ns) = &ar.namespaces
        {
            let selector_needed = ns.from == Some(FromNamespaces::Selector);
            if selector_needed && ns.selector.is_none() {
                v.err(
                    format!("{p}.allowedRoutes.namespaces.selector"),
                    "required when from is Selector",
                );
            }
            if !selector_needed && ns.selector.is_some() {
                v.err(
                    format!("{p}.allowedRoutes.namespaces.selector"),
                    "only used when from is Selector",
                );
            }
        }
    }
}

fn parent_refs(v: &mut V, refs: &[ParentReference]) {
    for (i, r) in refs.iter().enumerate() {
        let p = format!("spec.parentRefs[{i}]");
        if r.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        }
        if let Some(port) = r.port {
            v.port_i32(&format!("{p}.port"), port);
        }
        if let Some(ns) = &r.namespace
            && !is_dns1123_label(ns)
        {
            v.err(
                format!("{p}.namespace"),
                format!("`{ns}` is not a valid namespace"),
            );
        }
    }
}

fn header_matches(v: &mut V, path: &str, headers: &[HttpHeaderMatch], case_insensitive: bool) {
    let mut seen = BTreeSet::new();
    for (i, h) in headers.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if h.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        }
        let key = if case_insensitive {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        };
        if !seen.insert(key) {
            v.err(
                format!("{p}.name"),
                format!("`{}` is matched twice in one match", h.name),
            );
        }
        if h.kind == Some(ValueMatchType::RegularExpression) {
            v.regex(&format!("{p}.value"), &h.value);
        }
    }
}

fn backend_refs(v: &mut V, path: &str, refs: &[HttpBackendRef], grpc: bool) {
    for (i, b) in refs.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if b.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        }
        if let Some(w) = b.weight
            && !(0..=1_000_000).contains(&w)
        {
            v.err(
                format!("{p}.weight"),
                format!("weight {w} must be between 0 and 1000000"),
            );
        }
        let is_service = b.kind.as_deref().is_none_or(|k| k == "Service")
            && b.group.as_deref().is_none_or(str::is_empty);
        match b.port {
            Some(port) => v.port_i32(&format!("{p}.port"), port),
            None if is_service => v.err(format!("{p}.port"), "required for Service backends"),
            None => {}
        }
        filters(v, &format!("{p}.filters"), &b.filters, grpc, false);
    }
}

fn path_modifier(v: &mut V, path: &str, m: &HttpPathModifier, prefix_matches: bool) {
    match m.kind {
        None => v.err(
            format!("{path}.type"),
            "required: ReplaceFullPath or ReplacePrefixMatch",
        ),
        Some(PathModifierType::ReplaceFullPath) => {
            if m.replace_full_path.is_none() {
                v.err(
                    format!("{path}.replaceFullPath"),
                    "required for type ReplaceFullPath",
                );
            }
            if m.replace_prefix_match.is_some() {
                v.err(
                    format!("{path}.replacePrefixMatch"),
                    "only used with type ReplacePrefixMatch",
                );
            }
        }
        Some(PathModifierType::ReplacePrefixMatch) => {
            if m.replace_prefix_match.is_none() {
                v.err(
                    format!("{path}.replacePrefixMatch"),
                    "required for type ReplacePrefixMatch",
                );
            }
            if m.replace_full_path.is_some() {
                v.err(
                    format!("{path}.replaceFullPath"),
                    "only used with type ReplaceFullPath",
                );
            }
            if !prefix_matches {
                v.err(
                    format!("{path}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                );
            }
        }
    }
}

/// `prefix_matches`: whether every match of the rule is a PathPrefix match (for
/// ReplacePrefixMatch).
fn filters(v: &mut V, path: &str, filters: &[HttpRouteFilter], grpc: bool, prefix_matches: bool) {
    let mut has_redirect = false;
    let mut has_rewrite = false;
    for (i, f) in filters.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(kind) = f.kind else {
            v.err(format!("{p}.type"), "required");
            continue;
        };
        if grpc
            && !matches!(
                kind,
                HttpRouteFilterType::RequestHeaderModifier
                    | HttpRouteFilterType::ResponseHeaderModifier
                    | HttpRouteFilterType::RequestMirror
                    | HttpRouteFilterType::ExtensionRef
            )
        {
            v.err(
                format!("{p}.type"),
                format!("{kind} is not supported on GRPCRoute"),
            );
        }
        let present = [
            (
                HttpRouteFilterType::RequestHeaderModifier,
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                HttpRouteFilterType::ResponseHeaderModifier,
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            (
                HttpRouteFilterType::RequestMirror,
                "requestMirror",
                f.request_mirror.is_some(),
            ),
            (
                HttpRouteFilterType::RequestRedirect,
                "requestRedirect",
                f.request_redirect.is_some(),
            ),
            (
                HttpRouteFilterType::UrlRewrite,
                "urlRewrite",
                f.url_rewrite.is_some(),
            ),
            (
                HttpRouteFilterType::ExtensionRef,
                "extensionRef",
                f.extension_ref.is_some(),
            ),
            (HttpRouteFilterType::Cors, "cors", f.cors.is_some()),
        ];
        for (k, field, set) in present {
            if k == kind && !set {
                v.err(format!("{p}.{field}"), format!("required for type {kind}"));
            }
            if k != kind && set {
                v.err(
                    format!("{p}.{field}"),
                    format!("must not be set for type {kind}"),
                );
            }
        }
        for (field, hf) in [
            ("requestHeaderModifier", &f.request_header_modifier),
            ("responseHeaderModifier", &f.response_header_modifier),
        ] {
            if let Some(hf) = hf {
                for (k, h) in hf.set.iter().chain(hf.add.iter()).enumerate() {
                    if h.name.is_empty() {
                        v.err(format!("{p}.{field}"), format!("header #{k} needs a name"));
                    }
                }
            }
        }
        if let Some(m) = &f.request_mirror {
            let mp = format!("{p}.requestMirror");
            if m.backend_ref.name.is_empty() {
                v.err(format!("{mp}.backendRef.name"), "required");
            }
            if let Some(port) = m.backend_ref.port {
                v.port_i32(&format!("{mp}.backendRef.port"), port);
            }
            if m.percent.is_some() && m.fraction.is_some() {
                v.err(&mp, "set only one of percent and fraction");
            }
            if let Some(pc) = m.percent {
                v.percent(&format!("{mp}.percent"), f64::from(pc));
            }
            if let Some(fr) = &m.fraction {
                let d = fr.denominator.unwrap_or(100);
                if d <= 0 || fr.numerator < 0 || fr.numerator > d {
                    v.err(
                        format!("{mp}.fraction"),
                        "numerator must be between 0 and the (positive) denominator",
                    );
                }
            }
        }
        if let Some(r) = &f.request_redirect {
            has_redirect = true;
            let rp = format!("{p}.requestRedirect");
            if let Some(code) = r.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                v.err(
                    format!("{rp}.statusCode"),
                    format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
                );
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                v.err(format!("{rp}.scheme"), "must be http or https");
            }
            if let Some(port) = r.port {
                v.port_i32(&format!("{rp}.port"), port);
            }
            if let Some(h) = &r.hostname {
                hostname(v, &format!("{rp}.hostname"), h);
            }
            if let Some(m) = &r.path {
                path_modifier(v, &format!("{rp}.path"), m, prefix_matches);
            }
        }
        if let Some(r) = &f.url_rewrite {
            has_rewrite = true;
            let rp = format!("{p}.urlRewrite");
            if let Some(h) = &r.hostname {
                hostname(v, &format!("{rp}.hostname"), h);
            }
            if let Some(m) = &r.path {
                path_modifier(v, &format!("{rp}.path"), m, prefix_matches);
            }
        }
    }
    if has_redirect && has_rewrite {
        v.err(
            path,
            "RequestRedirect and URLRewrite cannot be used together",
        );
    }
}

pub(super) fn http_route(v: &mut V, s: &HttpRouteSpec) {
    parent_refs(v, &s.parent_refs);
    for (i, h) in s.hostnames.iter().enumerate() {
        hostname(v, &format!("spec.hostnames[{i}]"), h);
    }
    for (i, r) in s.rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        let mut all_prefix = true;
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.matches[{j}]");
            let kind = m
                .path
                .as_ref()
                .and_then(|pm| pm.kind)
                .unwrap_or(PathMatchType::PathPrefix);
            if kind != PathMatchType::PathPrefix {
                all_prefix = false;
            }
            if let Some(pm) = &m.path {
                let value = pm.value.as_deref().unwrap_or("/");
                match kind {
                    PathMatchType::Exact | PathMatchType::PathPrefix => {
                        if !value.starts_with('/') {
                            v.err(
                                format!("{mp}.path.value"),
                                format!("`{value}` must start with `/`"),
                            );
                        } else if value.contains("//")
                            || value.contains("/./")
                            || value.contains("/../")
                            || value.contains('?')
                            || value.contains('#')
                        {
                            v.err(format!("{mp}.path.value"), format!("`{value}` must be a normalized path without `//`, `/./`, `/../`, `?` or `#`"));
                        }
                    }
                    PathMatchType::RegularExpression => v.regex(&format!("{mp}.path.value"), value),
                }
            }
            header_matches(v, &format!("{mp}.headers"), &m.headers, true);
            header_matches(v, &format!("{mp}.queryParams"), &m.query_params, false);
        }
        filters(v, &format!("{p}.filters"), &r.filters, false, all_prefix);
        backend_refs(v, &format!("{p}.backendRefs"), &r.backend_refs, false);
        if let Some(t) = &r.timeouts
            && let (Some(req), Some(be)) = (&t.request, &t.backend_request)
            && !req.0.is_zero()
            && be.0 > req.0
        {
            v.err(
                format!("{p}.timeouts.backendRequest"),
                format!("{be} must not exceed the request timeout {req}"),
            );
        }
        if let Some(rt) = &r.retry {
            v.non_negative(&format!("{p}.retry.attempts"), rt.attempts);
            for (k, c) in rt.codes.iter().enumerate() {
                if !(400..=599).contains(c) {
                    v.err(
                        format!("{p}.retry.codes[{k}]"),
                        format!("{c} must be between 400 and 599"),
                    );
                }
            }
        }
    }
}

pub(super) fn grpc_route(v: &mut V, s: &GrpcRouteSpec) {
    parent_refs(v, &s.parent_refs);
    for (i, h) in s.hostnames.iter().enumerate() {
        hostname(v, &format!("spec.hostnames[{i}]"), h);
    }
    for (i, r) in s.rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.matches[{j}]");
            if let Some(mm) = &m.method {
                let service = mm.service.as_deref().unwrap_or("");
                let method = mm.method.as_deref().unwrap_or("");
                if service.is_empty() && method.is_empty() {
                    v.err(format!("{mp}.method"), "set service, method or both");
                }
                match mm.kind.unwrap_or(ValueMatchType::Exact) {
                    ValueMatchType::RegularExpression => {
                        if !service.is_empty() {
                            v.regex(&format!("{mp}.method.service"), service);
                        }
                        if !method.is_empty() {
                            v.regex(&format!("{mp}.method.method"), method);
                        }
                    }
                    ValueMatchType::Exact => {
                        let ident = |s: &str| {
                            s.split('.').all(|part| {
                                part.chars()
                                    .next()
                                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            })
                        };
                        if !service.is_empty() && !ident(service) {
                            v.err(format!("{mp}.method.service"), format!("`{service}` is not a gRPC service name (e.g. `helloworld.Greeter`)"));
                        }
                        if !method.is_empty() && (!ident(method) || method.contains('.')) {
                            v.err(
                                format!("{mp}.method.method"),
                                format!("`{method}` is not a gRPC method name"),
                            );
                        }
                    }
                }
            }
            header_matches(v, &format!("{mp}.headers"), &m.headers, true);
        }
        filters(v, &format!("{p}.filters"), &r.filters, true, false);
        backend_refs(v, &format!("{p}.backendRefs"), &r.backend_refs, true);
    }
}
