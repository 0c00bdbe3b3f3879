//! Validation of security.istio.io and telemetry.istio.io resources, following Istio's webhook
//! rules.

use super::V;
use crate::host::is_ip_or_cidr;
use crate::networking::WorkloadSelector;
use crate::security::*;
use crate::telemetry::TelemetrySpec;

/// Condition keys AuthorizationPolicy understands (`[...]` ones take a name).
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "remote.ip",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const CONDITION_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

fn targets(
    v: &mut V,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    if let Some(s) = selector {
        v.labels("spec.selector.matchLabels", &s.match_labels);
    }
    if selector.is_some() && (target_ref.is_some() || !target_refs.is_empty()) {
        v.err(
            "spec.selector",
            "set only one of selector and targetRef/targetRefs",
        );
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        v.err("spec.targetRef", "set only one of targetRef and targetRefs");
    }
    let refs = target_ref
        .map(|r| ("spec.targetRef".to_owned(), r))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (p, r) in refs {
        if r.kind.is_empty() {
            v.err(format!("{p}.kind"), "required (e.g. Gateway or Service)");
        }
        if r.name.is_empty() {
            v.err(format!("{p}.name"), "required");
        }
    }
}

pub(super) fn peer_authentication(v: &mut V, s: &PeerAuthenticationSpec) {
    targets(v, s.selector.as_ref(), None, &[]);
    if !s.port_level_mtls.is_empty()
        && s.selector
            .as_ref()
            .is_none_or(|sel| sel.match_labels.is_empty())
    {
        v.err(
            "spec.portLevelMtls",
            "portLevelMtls requires a workload selector (spec.selector.matchLabels)",
        );
    }
    for port in s.port_level_mtls.keys() {
        v.port(&format!("spec.portLevelMtls.{port}"), *port);
    }
}

/// Istio string matches: exact, `prefix*`, `*suffix` or `*`.
fn wildcard_values(v: &mut V, path: &str, values: &[String]) {
    for (i, s) in values.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let inner = s.strip_prefix('*').unwrap_or(s);
        let inner = inner.strip_suffix('*').unwrap_or(inner);
        if s.is_empty() {
            v.err(p, "must not be empty");
        } else if inner.contains('*') {
            v.err(
                p,
                format!("`{s}`: `*` is only supported as a prefix, a suffix or alone"),
            );
        }
    }
}

fn ip_blocks(v: &mut V, path: &str, values: &[String]) {
    for (i, s) in values.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            v.err(
                format!("{path}[{i}]"),
                format!("`{s}` is not an IP or CIDR"),
            );
        }
    }
}

pub(super) fn authorization_policy(v: &mut V, s: &AuthorizationPolicySpec) {
    targets(
        v,
        s.selector.as_ref(),
        s.target_ref.as_ref(),
        &s.target_refs,
    );
    let action = s.action.unwrap_or(AuthorizationAction::Allow);
    match (&s.provider, action) {
        (None, AuthorizationAction::Custom) => v.err(
            "spec.provider",
            "CUSTOM action requires a provider (the external authorizer's name)",
        ),
        (Some(p), AuthorizationAction::Custom) if p.name.is_empty() => {
            v.err("spec.provider.name", "required")
        }
        (Some(_), a) if a != AuthorizationAction::Custom => v.err(
            "spec.provider",
            format!("provider is only used with action CUSTOM (this policy is {a})"),
        ),
        _ => {}
    }
    for (i, r) in s.rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        for (j, f) in r.from.iter().enumerate() {
            let fp = format!("{p}.from[{j}].source");
            let Some(src) = &f.source else {
                v.err(fp, "required");
                continue;
            };
            if *src == Source::default() {
                v.err(&fp, "must set at least one field");
            }
            for (field, vals) in [
                ("principals", &src.principals),
                ("notPrincipals", &src.not_principals),
                ("requestPrincipals", &src.request_principals),
                ("notRequestPrincipals", &src.not_request_principals),
                ("namespaces", &src.namespaces),
                ("notNamespaces", &src.not_namespaces),
                ("serviceAccounts", &src.service_accounts),
                ("notServiceAccounts", &src.not_service_accounts),
            ] {
                wildcard_values(v, &format!("{fp}.{field}"), vals);
            }
            if (!src.service_accounts.is_empty() || !src.not_service_accounts.is_empty())
                && (!src.principals.is_empty() || !src.not_principals.is_empty())
            {
                v.err(&fp, "serviceAccounts cannot be combined with principals");
            }
            for (field, vals) in [
                ("ipBlocks", &src.ip_blocks),
                ("notIpBlocks", &src.not_ip_blocks),
                ("remoteIpBlocks", &src.remote_ip_blocks),
                ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
            ] {
                ip_blocks(v, &format!("{fp}.{field}"), vals);
            }
        }
        for (j, t) in r.to.iter().enumerate() {
            let tp = format!("{p}.to[{j}].operation");
            let Some(op) = &t.operation else {
                v.err(tp, "required");
                continue;
            };
            if *op == Operation::default() {
                v.err(&tp, "must set at least one field");
            }
            for (field, vals) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, port) in vals.iter().enumerate() {
                    if !port.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) {
                        v.err(
                            format!("{tp}.{field}[{k}]"),
                            format!("`{port}` is not a port number (1-65535)"),
                        );
                    }
                }
            }
            for (field, vals) in [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
            ] {
                for (k, s) in vals.iter().enumerate() {
                    if s.is_empty() {
                        v.err(format!("{tp}.{field}[{k}]"), "must not be empty");
                    }
                }
            }
        }
        for (j, c) in r.when.iter().enumerate() {
            let cp = format!("{p}.when[{j}]");
            if c.key.is_empty() {
                v.err(format!("{cp}.key"), "required");
            } else if !(CONDITION_KEYS.contains(&c.key.as_str())
                || CONDITION_PREFIXES.iter().any(|pre| c.key.starts_with(pre)))
            {
                v.err(format!("{cp}.key"), format!("unknown condition key `{}`; use one of {}, request.headers[NAME] or request.auth.claims[NAME]", c.key, CONDITION_KEYS.join(", ")));
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                v.err(&cp, "values or notValues is required");
            }
            if matches!(c.key.as_str(), "source.ip" | "remote.ip" | "destination.ip") {
                ip_blocks(v, &format!("{cp}.values"), &c.values);
                ip_blocks(v, &format!("{cp}.notValues"), &c.not_values);
            }
        }
    }
}

pub(super) fn request_authentication(v: &mut V, s: &RequestAuthenticationSpec) {
    targets(
        v,
        s.selector.as_ref(),
        s.target_ref.as_ref(),
        &s.target_refs,
    );
    for (i, r) in s.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() {
            v.err(format!("{p}.issuer"), "required");
        }
        if !r.jwks.is_empty() && !r.jwks_uri.is_empty() {
            v.err(format!("{p}.jwks"), "set only one of jwks and jwksUri");
        }
        if !(r.jwks_uri.is_empty()
            || r.jwks_uri.starts_with("https://")
            || r.jwks_uri.starts_with("http://"))
        {
            v.err(
                format!("{p}.jwksUri"),
                format!("`{}` must be an http:// or https:// URL", r.jwks_uri),
            );
        }
        for (k, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                v.err(format!("{p}.fromHeaders[{k}].name"), "required");
            }
        }
        for (k, c) in r.output_claim_to_headers.iter().enumerate() {
            if c.header.is_empty() {
                v.err(format!("{p}.outputClaimToHeaders[{k}].header"), "required");
            }
            if c.claim.is_empty() {
                v.err(format!("{p}.outputClaimToHeaders[{k}].claim"), "required");
            }
        }
        v.positive(&format!("{p}.timeout"), r.timeout.as_ref());
    }
}

fn providers(v: &mut V, path: &str, providers: &[crate::telemetry::ProviderRef]) {
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            v.err(format!("{path}[{i}].name"), "required");
        }
    }
}

pub(super) fn telemetry(v: &mut V, s: &TelemetrySpec) {
    targets(
        v,
        s.selector.as_ref(),
        s.target_ref.as_ref(),
        &s.target_refs,
    );
    for (i, t) in s.tracing.iter().enumerate() {
        let p = format!("spec.tracing[{i}]");
        providers(v, &format!("{p}.providers"), &t.providers);
        if let Some(pc) = t.random_sampling_percentage {
            v.percent(&format!("{p}.randomSamplingPercentage"), pc);
        }
        for (name, tag) in &t.custom_tags {
            let set = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                v.err(
                    super::key_path(&format!("{p}.customTags"), name),
                    "set exactly one of literal, environment or header",
                );
            }
        }
    }
    for (i, m) in s.metrics.iter().enumerate() {
        let p = format!("spec.metrics[{i}]");
        providers(v, &format!("{p}.providers"), &m.providers);
        v.positive(
            &format!("{p}.reportingInterval"),
            m.reporting_interval.as_ref(),
        );
        for (j, o) in m.overrides.iter().enumerate() {
            if let Some(sel) = &o.selector
                && sel.metric.is_some()
                && !sel.custom_metric.is_empty()
            {
                v.err(
                    format!("{p}.overrides[{j}].match"),
                    "set only one of metric and customMetric",
                );
            }
            for name in o.tag_overrides.keys() {
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.is_empty()
                {
                    v.err(
                        super::key_path(&format!("{p}.overrides[{j}].tagOverrides"), name),
                        format!("`{name}` is not a valid metric label name"),
                    );
                }
            }
        }
    }
    for (i, a) in s.access_logging.iter().enumerate() {
        let p = format!("spec.accessLogging[{i}]");
        providers(v, &format!("{p}.providers"), &a.providers);
        if let Some(f) = &a.filter
            && f.expression.trim().is_empty()
        {
            v.err(format!("{p}.filter.expression"), "required");
        }
    }
}
