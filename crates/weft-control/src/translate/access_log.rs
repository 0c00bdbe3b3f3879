//! Access logs: which `access_log` entries every generated connection manager and TCP proxy
//! carries, from the Telemetry API's `accessLogging`.
//!
//! Mesh-wide default: on, Istio's default text format, to the proxy's stdout. A Telemetry
//! resource decides per proxy — the one selecting the workload (`selector.matchLabels`) in its
//! namespace, else its namespace's (no selector), else the root namespace's (`istio-system`);
//! the most specific one that has `accessLogging` wins. Its entries apply to the proxy's side
//! (`match.mode`: sidecar outbound and gateways are CLIENT, sidecar inbound SERVER); each names
//! providers (none = the default `envoy`) and may turn them off (`disabled: true`). A provider
//! whose name contains `json` logs Istio's JSON form, any other provider the text form; both
//! go to stdout. Must not do I/O.

use super::{Env, Res};
use crate::model::ProxyNode;
use serde_json::{Value as Json, json};

/// Istio's default text access log format.
pub const TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's JSON access log fields (same operators as the text form, snake_case keys).
pub const JSON_FIELDS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// Istio's root namespace: Telemetry there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Which side of the proxy a connection manager serves (Telemetry `match.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sidecar outbound, gateways.
    Client,
    /// Sidecar inbound.
    Server,
}

/// The Telemetry resource that decides access logging for `p` (see the module doc).
fn telemetry_for<'e>(env: &'e Env, p: &ProxyNode) -> Option<&'e Res> {
    let has_logging = |t: &&Res| !t.list("accessLogging").is_empty();
    let unscoped = |t: &&Res| {
        t.spec.get("selector").is_none()
            && t.spec.get("targetRef").is_none()
            && t.spec.get("targetRefs").is_none()
    };
    let selects = |t: &&Res| {
        t.spec
            .pointer("/selector/matchLabels")
            .and_then(Json::as_object)
            .is_some_and(|sel| {
                sel.iter()
                    .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
            })
    };
    let mut ts: Vec<&Res> = env.telemetries.iter().filter(has_logging).collect();
    ts.sort_by_key(|t| (t.namespace.clone(), t.name.clone()));
    ts.iter()
        .copied()
        .find(|t| t.namespace == p.namespace && selects(t))
        .or_else(|| {
            ts.iter()
                .copied()
                .find(|t| t.namespace == p.namespace && unscoped(t))
        })
        .or_else(|| {
            ts.iter()
                .copied()
                .find(|t| t.namespace == ROOT_NAMESPACE && unscoped(t))
        })
}

/// Log formats in force: (text, json).
fn formats(env: &Env, p: &ProxyNode, mode: Mode) -> (bool, bool) {
    let Some(t) = telemetry_for(env, p) else {
        return (true, false);
    };
    // Providers enabled, by name (the default provider is Istio's `envoy`).
    let mut on: Vec<String> = Vec::new();
    for entry in t.list("accessLogging") {
        let applies = match entry.pointer("/match/mode").and_then(Json::as_str) {
            Some("CLIENT") => mode == Mode::Client,
            Some("SERVER") => mode == Mode::Server,
            _ => true,
        };
        if !applies {
            continue;
        }
        let mut providers: Vec<String> = entry
            .get("providers")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("name").and_then(Json::as_str))
            .map(str::to_string)
            .collect();
        if providers.is_empty() {
            providers.push("envoy".into());
        }
        let disabled = entry.get("disabled").and_then(Json::as_bool) == Some(true);
        for name in providers {
            if disabled {
                on.retain(|n| *n != name);
            } else if !on.contains(&name) {
                on.push(name);
            }
        }
    }
    let json = on.iter().any(|n| n.to_ascii_lowercase().contains("json"));
    let text = on.iter().any(|n| !n.to_ascii_lowercase().contains("json"));
    (text, json)
}

/// The `access_log` list for a connection manager or TCP proxy of `p` on side `mode`, or None
/// when logging is off there.
pub fn access_logs(env: &Env, p: &ProxyNode, mode: Mode) -> Option<Json> {
    let (text, json_form) = formats(env, p, mode);
    let mut out = Vec::new();
    if text {
        out.push(json!({"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": STDOUT, "log_format": {"text_format_source": {"inline_string": TEXT_FORMAT}}}}));
    }
    if json_form {
        let fields: serde_json::Map<String, Json> = JSON_FIELDS
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        out.push(
            json!({"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": STDOUT, "log_format": {"json_format": fields}}}),
        );
    }
    (!out.is_empty()).then_some(Json::Array(out))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    fn tel(ns: &str, name: &str, spec: Json) -> Res {
        let mut r = res("Telemetry", name, spec);
        r.namespace = ns.into();
        r
    }

    fn hcm_logs(out: &Output, listener: &str) -> Option<Json> {
        out.listeners[listener]["filter_chains"][0]["filters"][0]["typed_config"]
            .get("access_log")
            .cloned()
    }

    #[test]
    fn on_by_default_in_istio_text_format() {
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
        let logs = hcm_logs(&out, "outbound").unwrap();
        assert_eq!(logs[0]["typed_config"]["@type"], STDOUT);
        assert_eq!(
            logs[0]["typed_config"]["log_format"]["text_format_source"]["inline_string"],
            TEXT_FORMAT
        );
        assert!(hcm_logs(&out, "inbound|9080").is_some());
    }

    #[test]
    fn telemetry_turns_logging_off_switches_to_json_and_picks_sides() {
        let base = |t: Vec<Res>| Env {
            telemetries: t,
            ..Default::default()
        };
        // Mesh-wide off.
        let env = base(vec![tel(
            ROOT_NAMESPACE,
            "mesh",
            json!({"accessLogging": [{"disabled": true}]}),
        )]);
        assert!(access_logs(&env, &proxy(), Mode::Client).is_none());
        // The namespace's Telemetry overrides the root's: JSON on the server side only.
        let env = base(vec![
            tel(
                ROOT_NAMESPACE,
                "mesh",
                json!({"accessLogging": [{"disabled": true}]}),
            ),
            tel(
                "default",
                "ns",
                json!({"accessLogging": [{"match": {"mode": "SERVER"}, "providers": [{"name": "envoy-json"}]}]}),
            ),
        ]);
        assert!(access_logs(&env, &proxy(), Mode::Client).is_none());
        let server = access_logs(&env, &proxy(), Mode::Server).unwrap();
        assert_eq!(server.as_array().unwrap().len(), 1);
        assert_eq!(
            server[0]["typed_config"]["log_format"]["json_format"]["response_flags"],
            "%RESPONSE_FLAGS%"
        );
        // A workload selector beats the namespace default.
        let env = base(vec![
            tel(
                "default",
                "ns",
                json!({"accessLogging": [{"disabled": true}]}),
            ),
            tel(
                "default",
                "pp",
                json!({"selector": {"matchLabels": {"app": "productpage"}}, "accessLogging": [{"providers": [{"name": "envoy"}]}]}),
            ),
        ]);
        assert!(access_logs(&env, &proxy(), Mode::Client).is_some());
        // Every generated listener of the proxy carries them, TCP proxies too.
        let out = for_proxy(&proxy(), &env);
        assert_valid(&out);
        let inbound = &out.listeners["inbound|9080"];
        assert!(
            inbound["filter_chains"][0]["filters"][0]["typed_config"]
                .get("access_log")
                .is_some()
        );
        assert!(
            inbound["default_filter_chain"]["filters"][0]["typed_config"]
                .get("access_log")
                .is_some()
        );
    }
}
