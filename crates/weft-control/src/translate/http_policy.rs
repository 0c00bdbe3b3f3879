//! Per-route HTTP policies of a VirtualService rule: fault injection (`fault` → the route's
//! `envoy.filters.http.fault` HTTPFault), CORS (`corsPolicy` → `envoy.filters.http.cors`
//! CorsPolicy) and mirroring (`mirror`, `mirrorPercentage`, `mirrors[]` → the route action's
//! `request_mirror_policies`), with Istio's defaults.
//!
//! Every generated connection manager carries empty fault and CORS filters; the behaviour comes
//! only from these per-route configs, so a route without them pays nothing. Pure JSON → JSON:
//! this module must not look at proxies or do I/O.

use super::{RouteCx, destination_cluster, string_match};
use serde_json::{Map, Value as Json, json};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const CORS_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// A percentage 0..=100 (Istio's `Percent.value`, a double) as an Envoy FractionalPercent, in
/// the coarsest denominator that keeps it exact (at most 4 decimals are kept, as Istio's
/// MILLION-based translation does).
pub fn fractional(value: f64) -> Json {
    let v = if value.is_finite() {
        value.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let millionths = (v * 10_000.0).round() as u64;
    if millionths.is_multiple_of(10_000) {
        json!({"numerator": millionths / 10_000, "denominator": "HUNDRED"})
    } else if millionths.is_multiple_of(100) {
        json!({"numerator": millionths / 100, "denominator": "TEN_THOUSAND"})
    } else {
        json!({"numerator": millionths, "denominator": "MILLION"})
    }
}

/// The percentage of a fault delay/abort: `percentage.value`, else the deprecated integer
/// `percent`, else 0 — Istio injects nothing when neither is set.
fn fault_percentage(f: &Json) -> Json {
    let v = f
        .pointer("/percentage/value")
        .and_then(Json::as_f64)
        .or_else(|| f.get("percent").and_then(Json::as_f64))
        .unwrap_or(0.0);
    fractional(v)
}

/// gRPC status names (Istio's `grpcStatus`) → codes.
pub fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
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
    if let Ok(n) = name.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// Istio `HTTPFaultInjection` → the route's HTTPFault config (None when it injects nothing
/// this version can express: an exponential delay only, or no delay/abort).
pub fn fault(f: &Json) -> Option<Json> {
    let mut out = Map::new();
    out.insert("@type".into(), json!(FAULT_TYPE));
    if let Some(d) = f.get("delay")
        && let Some(fixed) = d.get("fixedDelay")
    {
        out.insert(
            "delay".into(),
            json!({"fixed_delay": fixed, "percentage": fault_percentage(d)}),
        );
    }
    if let Some(a) = f.get("abort") {
        let mut abort = Map::new();
        if let Some(s) = a.get("httpStatus").and_then(Json::as_u64) {
            abort.insert("http_status".into(), json!(s));
        } else if let Some(code) = a
            .get("grpcStatus")
            .and_then(Json::as_str)
            .and_then(grpc_code)
        {
            abort.insert("grpc_status".into(), json!(code));
        }
        if !abort.is_empty() {
            abort.insert("percentage".into(), fault_percentage(a));
            out.insert("abort".into(), Json::Object(abort));
        }
    }
    (out.len() > 1).then_some(Json::Object(out))
}

/// Istio `CorsPolicy` → the route's CorsPolicy config. `allowOrigins` are StringMatches; the
/// deprecated `allowOrigin` strings are exact matches. `maxAge` is whole seconds.
pub fn cors(c: &Json) -> Option<Json> {
    let o = c.as_object()?;
    let mut out = Map::new();
    out.insert("@type".into(), json!(CORS_POLICY_TYPE));
    let mut origins: Vec<Json> = o
        .get("allowOrigins")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(string_match)
        .collect();
    if origins.is_empty() {
        origins = o
            .get("allowOrigin")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .map(|s| json!({"exact": s}))
            .collect();
    }
    if !origins.is_empty() {
        out.insert("allow_origin_string_match".into(), Json::Array(origins));
    }
    for (istio, envoy) in [
        ("allowMethods", "allow_methods"),
        ("allowHeaders", "allow_headers"),
        ("exposeHeaders", "expose_headers"),
    ] {
        let list: Vec<&str> = o
            .get(istio)
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        if !list.is_empty() {
            out.insert(envoy.into(), json!(list.join(",")));
        }
    }
    if let Some(secs) = o.get("maxAge").and_then(Json::as_str).and_then(seconds) {
        out.insert("max_age".into(), json!(secs.to_string()));
    }
    if let Some(b) = o.get("allowCredentials").and_then(Json::as_bool) {
        out.insert("allow_credentials".into(), json!(b));
    }
    Some(Json::Object(out))
}

/// Whole seconds of a protobuf-JSON duration (`86400s`, `1.5s`).
fn seconds(d: &str) -> Option<u64> {
    let n = d.strip_suffix('s')?;
    let whole = n.split('.').next()?;
    whole.parse().ok()
}

/// Istio's mirror percentage of a rule: `mirrorPercentage.value`, else the deprecated
/// `mirrorPercent`, else 100. None when it is explicitly 0 (no mirroring).
fn rule_mirror_percent(rule: &Json) -> Option<f64> {
    let v = rule
        .pointer("/mirrorPercentage/value")
        .and_then(Json::as_f64)
        .or_else(|| rule.get("mirrorPercent").and_then(Json::as_f64))
        .unwrap_or(100.0);
    (v > 0.0).then_some(v)
}

fn mirror_policy(dest: &Json, percent: f64, vs_ns: &str, cx: &RouteCx<'_>) -> Json {
    let mut m = json!({"cluster": destination_cluster(dest, vs_ns, cx)});
    if percent < 100.0 {
        m["runtime_fraction"] = json!({"default_value": fractional(percent)});
    }
    m
}

/// `request_mirror_policies` of a rule: `mirror` (with `mirrorPercentage`) then each of
/// `mirrors[]` (with its own `percentage`, default 100); the cluster is the mirror
/// destination's, named as a route destination would be.
pub(crate) fn mirror_policies(rule: &Json, vs_ns: &str, cx: &RouteCx<'_>) -> Vec<Json> {
    let mut out = Vec::new();
    if let Some(dest) = rule.get("mirror")
        && let Some(p) = rule_mirror_percent(rule)
    {
        out.push(mirror_policy(dest, p, vs_ns, cx));
    }
    for m in rule
        .get("mirrors")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dest) = m.get("destination") else {
            continue;
        };
        let p = m
            .pointer("/percentage/value")
            .and_then(Json::as_f64)
            .unwrap_or(100.0);
        if p > 0.0 {
            out.push(mirror_policy(dest, p, vs_ns, cx));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    #[test]
    fn percentages_use_the_coarsest_exact_denominator() {
        assert_eq!(
            fractional(100.0),
            json!({"numerator": 100, "denominator": "HUNDRED"})
        );
        assert_eq!(
            fractional(0.5),
            json!({"numerator": 50, "denominator": "TEN_THOUSAND"})
        );
        assert_eq!(
            fractional(0.001),
            json!({"numerator": 10, "denominator": "MILLION"})
        );
        assert_eq!(
            fractional(250.0),
            json!({"numerator": 100, "denominator": "HUNDRED"})
        );
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("14"), Some(14));
        assert_eq!(grpc_code("NOPE"), None);
    }

    fn reviews_env(rule: Json) -> Env {
        Env {
            services: vec![
                svc(
                    "reviews.default.svc.cluster.local",
                    "default",
                    9080,
                    &[("127.0.1.2", "v1"), ("127.0.1.3", "v2")],
                ),
                svc(
                    "ratings.default.svc.cluster.local",
                    "default",
                    9080,
                    &[("127.0.1.4", "v1")],
                ),
            ],
            destination_rules: vec![res(
                "DestinationRule",
                "reviews",
                json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
            )],
            virtual_services: vec![res(
                "VirtualService",
                "reviews",
                json!({"hosts": ["reviews"], "http": [rule]}),
            )],
            ..Default::default()
        }
    }

    fn reviews_route(out: &Output) -> Json {
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
            .unwrap()
            .clone();
        vh["routes"][1].clone()
    }

    #[test]
    fn fault_translates_to_per_route_http_fault() {
        let env = reviews_env(json!({
            "fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 100.0}},
                      "abort": {"httpStatus": 500, "percentage": {"value": 12.5}}},
            "route": [{"destination": {"host": "reviews", "subset": "v1"}}]
        }));
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let f = &reviews_route(&out)["typed_per_filter_config"][FAULT_FILTER];
        assert_eq!(f["@type"], FAULT_TYPE);
        assert_eq!(f["delay"]["fixed_delay"], "7s");
        assert_eq!(
            f["delay"]["percentage"],
            json!({"numerator": 100, "denominator": "HUNDRED"})
        );
        assert_eq!(f["abort"]["http_status"], 500);
        assert_eq!(
            f["abort"]["percentage"],
            json!({"numerator": 1250, "denominator": "TEN_THOUSAND"})
        );
        // The filters are on every connection manager, in order fault, cors, router.
        let l = &out.listeners["outbound"]["filter_chains"][0]["filters"][0]["typed_config"];
        let names: Vec<&str> = l["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [FAULT_FILTER, CORS_FILTER, "envoy.filters.http.router"]
        );
    }

    #[test]
    fn grpc_abort_and_unset_percentage() {
        let f = fault(&json!({"abort": {"grpcStatus": "UNAVAILABLE"}})).unwrap();
        assert_eq!(f["abort"]["grpc_status"], 14);
        // Istio: no percentage → no request is aborted.
        assert_eq!(f["abort"]["percentage"]["numerator"], 0);
        assert!(fault(&json!({"delay": {"exponentialDelay": "1s"}})).is_none());
        let deprecated = fault(&json!({"delay": {"fixedDelay": "1s", "percent": 30}})).unwrap();
        assert_eq!(deprecated["delay"]["percentage"]["numerator"], 30);
    }

    #[test]
    fn cors_policy_translates_to_per_route_config() {
        let env = reviews_env(json!({
            "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}],
                "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a", "x-b"], "exposeHeaders": ["x-c"],
                "maxAge": "86400s", "allowCredentials": true},
            "route": [{"destination": {"host": "reviews"}}]
        }));
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let c = &reviews_route(&out)["typed_per_filter_config"][CORS_FILTER];
        assert_eq!(c["@type"], CORS_POLICY_TYPE);
        assert_eq!(
            c["allow_origin_string_match"],
            json!([{"exact": "https://a.example"}, {"safe_regex": {"regex": "https://.*\\.b\\.example"}}])
        );
        assert_eq!(c["allow_methods"], "GET,POST");
        assert_eq!(c["allow_headers"], "x-a,x-b");
        assert_eq!(c["expose_headers"], "x-c");
        assert_eq!(c["max_age"], "86400");
        assert_eq!(c["allow_credentials"], true);
    }

    #[test]
    fn mirrors_translate_to_request_mirror_policies() {
        let env = reviews_env(json!({
            "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
            "mirror": {"host": "reviews", "subset": "v2"},
            "mirrorPercentage": {"value": 50.0},
            "mirrors": [{"destination": {"host": "ratings"}}, {"destination": {"host": "ratings"}, "percentage": {"value": 0.0}}]
        }));
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let m = &reviews_route(&out)["route"]["request_mirror_policies"];
        assert_eq!(
            m,
            &json!([
                {"cluster": "outbound|9080|v2|reviews.default.svc.cluster.local",
                 "runtime_fraction": {"default_value": {"numerator": 50, "denominator": "HUNDRED"}}},
                {"cluster": "outbound|9080||ratings.default.svc.cluster.local"}
            ])
        );
        // An explicit 0 % mirrors nothing.
        let env = reviews_env(json!({
            "route": [{"destination": {"host": "reviews"}}],
            "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 0.0}
        }));
        let out = for_proxy(&proxy(), &env);
        assert!(
            reviews_route(&out)["route"]
                .get("request_mirror_policies")
                .is_none()
        );
    }
}
