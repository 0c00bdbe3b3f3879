//! Istio's validation rules (what `istiod`'s admission webhook refuses), applied to typed
//! resources. Errors carry the field path; `parse` turns paths into lines.
//!
//! Why: refusing bad config when it is applied, with the field and the reason, is the whole
//! point — a proxy that NACKs config leaves users guessing. Must not look at other resources
//! (that is `analyze`) and must not mutate anything.

mod gateway_api;
mod networking;
mod security;

use std::collections::BTreeMap;

use crate::de::push_key;
use crate::duration::Duration;
use crate::error::ApiError;
use crate::host::{is_dns1123_label, is_dns1123_subdomain};
use crate::types::{ObjectMeta, Resource};

/// Check `resource` against Istio's (or the Gateway API's) validation rules.
///
/// Every error has `resource` and `path` set; file and position are left empty (`parse`
/// fills them from the source).
pub fn validate(resource: &Resource) -> Vec<ApiError> {
    let mut v = V {
        label: resource.label(),
        errors: Vec::new(),
    };
    metadata(&mut v, resource.metadata());
    match resource {
        Resource::VirtualService(o) => networking::virtual_service(&mut v, &o.spec),
        Resource::DestinationRule(o) => networking::destination_rule(&mut v, &o.spec),
        Resource::Gateway(o) => networking::gateway(&mut v, &o.spec),
        Resource::ServiceEntry(o) => networking::service_entry(&mut v, &o.spec),
        Resource::WorkloadEntry(o) => networking::workload_entry(&mut v, "spec", &o.spec, true),
        Resource::Sidecar(o) => networking::sidecar(&mut v, &o.spec),
        Resource::PeerAuthentication(o) => security::peer_authentication(&mut v, &o.spec),
        Resource::AuthorizationPolicy(o) => security::authorization_policy(&mut v, &o.spec),
        Resource::RequestAuthentication(o) => security::request_authentication(&mut v, &o.spec),
        Resource::Telemetry(o) => security::telemetry(&mut v, &o.spec),
        Resource::KubernetesGateway(o) => gateway_api::gateway(&mut v, &o.spec),
        Resource::HttpRoute(o) => gateway_api::http_route(&mut v, &o.spec),
        Resource::GrpcRoute(o) => gateway_api::grpc_route(&mut v, &o.spec),
    }
    v.errors
}

/// Collects errors for one resource.
pub(crate) struct V {
    label: String,
    errors: Vec<ApiError>,
}

impl V {
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ApiError::new(Some(self.label.clone()), path, message));
    }

    /// 1..=65535.
    pub(crate) fn port(&mut self, path: &str, n: u32) {
        if !(1..=65535).contains(&n) {
            self.err(path, format!("port {n} must be between 1 and 65535"));
        }
    }

    /// 1..=65535 for signed (Gateway API) ports.
    pub(crate) fn port_i32(&mut self, path: &str, n: i32) {
        if !(1..=65535).contains(&n) {
            self.err(path, format!("port {n} must be between 1 and 65535"));
        }
    }

    /// 0..=100.
    pub(crate) fn percent(&mut self, path: &str, p: f64) {
        if !(0.0..=100.0).contains(&p) {
            self.err(path, format!("percentage {p} must be between 0 and 100"));
        }
    }

    /// A duration that must be at least 1ms.
    pub(crate) fn positive(&mut self, path: &str, d: Option<&Duration>) {
        if let Some(d) = d
            && d.0 < std::time::Duration::from_millis(1)
        {
            self.err(path, format!("duration {d} must be at least 1ms"));
        }
    }

    /// A non-negative count.
    pub(crate) fn non_negative(&mut self, path: &str, n: Option<i32>) {
        if let Some(n) = n
            && n < 0
        {
            self.err(path, format!("must not be negative (got {n})"));
        }
    }

    /// An RE2 regular expression.
    pub(crate) fn regex(&mut self, path: &str, re: &str) {
        if let Err(e) = compile_regex(re) {
            self.err(path, e);
        }
    }

    /// Label keys and values as Kubernetes accepts them.
    pub(crate) fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (k, val) in labels {
            let p = key_path(path, k);
            if !is_label_key(k) {
                self.err(&p, format!("invalid label key `{k}`"));
            }
            if !is_label_value(val) {
                self.err(&p, format!("invalid label value `{val}`"));
            }
        }
    }

    /// `exportTo` entries: `.`, `*`, `~` or a namespace.
    pub(crate) fn export_to(&mut self, path: &str, export_to: &[String]) {
        for (i, e) in export_to.iter().enumerate() {
            if !(matches!(e.as_str(), "." | "*" | "~") || is_dns1123_label(e)) {
                self.err(
                    format!("{path}[{i}]"),
                    format!("`{e}` must be `.` (this namespace), `*` (all), `~` (none) or a namespace name"),
                );
            }
        }
        if export_to.len() > 1 && export_to.iter().any(|e| e == "*" || e == "~") {
            self.err(path, "`*` and `~` cannot be combined with other entries");
        }
    }
}

/// `path` + `.key` (or `["key"]` for keys with punctuation).
pub(crate) fn key_path(path: &str, key: &str) -> String {
    let mut p = path.to_owned();
    push_key(&mut p, key);
    p
}

/// Compile an RE2 regex with Envoy-like limits; the error is one line.
pub(crate) fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let detail = e
                .to_string()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .trim_start_matches("error: ")
                .to_owned();
            format!("invalid regular expression `{re}`: {detail}")
        })
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && is_label_value(name) && !name.is_empty()
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && v.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric))
}

fn metadata(v: &mut V, m: &ObjectMeta) {
    if m.name.is_empty() {
        v.err("metadata.name", "required");
    } else if !is_dns1123_subdomain(&m.name) {
        v.err(
            "metadata.name",
            format!(
                "`{}` must be a DNS-1123 name: lowercase letters, digits, `-` and `.`",
                m.name
            ),
        );
    }
    if !is_dns1123_label(&m.namespace) {
        v.err(
            "metadata.namespace",
            format!(
                "`{}` must be a DNS-1123 label: lowercase letters, digits and `-`",
                m.namespace
            ),
        );
    }
    v.labels("metadata.labels", &m.labels);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents_partial;

    /// Validation errors of one resource as `path: message`.
    fn check(api: &str, kind: &str, spec: &str) -> Vec<String> {
        let text = format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: t}}\nspec:\n{spec}");
        let (_, errors) = parse_documents_partial("t.yaml", &text);
        errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    fn has(errors: &[String], path: &str, fragment: &str) -> bool {
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(fragment))
    }

    macro_rules! assert_err {
        ($errors:expr, $path:expr, $fragment:expr) => {
            assert!(
                has(&$errors, $path, $fragment),
                "want `{}: …{}…` in {:#?}",
                $path,
                $fragment,
                $errors
            )
        };
    }

    const NET: &str = "networking.istio.io/v1";

    #[test]
    fn regex_errors_are_one_line() {
        let e = compile_regex("a(b").expect_err("bad");
        assert!(e.starts_with("invalid regular expression `a(b`: "), "{e}");
        assert!(!e.contains('\n'));
        assert!(compile_regex("^/api/v[0-9]+/.*$").is_ok());
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("version"));
        assert!(!is_label_key("-bad"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value("v2-mysql"));
        assert!(is_label_value(""));
        assert!(!is_label_value("bad value"));
    }

    #[test]
    fn metadata_names() {
        let e = check(NET, "WorkloadEntry", "  address: 10.0.0.1\n").is_empty();
        assert!(e);
        let text = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: Bad_Name, namespace: Prod}\nspec: {address: 10.0.0.1}\n";
        let (_, errors) = parse_documents_partial("t.yaml", text);
        let errors: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_err!(errors, "metadata.name", "DNS-1123 name");
        assert_err!(errors, "metadata.namespace", "DNS-1123 label");
    }

    #[test]
    fn virtual_service_rules() {
        let ok = "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
        assert!(check(NET, "VirtualService", ok).is_empty());
        // A single destination may omit its weight; two must sum to 100.
        let e = check(
            NET,
            "VirtualService",
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n    - destination: {host: reviews, subset: v2}\n",
        );
        assert_err!(e, "spec.http[0].route", "sum to 100 (they sum to 0)");
        let e = check(
            NET,
            "VirtualService",
            "  hosts: [reviews]\n  http:\n  - name: nothing\n",
        );
        assert_err!(
            e,
            "spec.http[0]",
            "one of route, redirect, directResponse or delegate is required"
        );
        let e = check(
            NET,
            "VirtualService",
            "  hosts: [reviews]\n  http:\n  - directResponse: {status: 700}\n    redirect: {uri: /x}\n",
        );
        assert_err!(e, "spec.http[0].directResponse", "mutually exclusive");
        assert_err!(
            e,
            "spec.http[0].directResponse.status",
            "between 200 and 599"
        );
        let e = check(
            NET,
            "VirtualService",
            "  hosts: ['*']\n  http:\n  - route:\n    - destination: {host: '*.x.com', port: {number: 70000}}\n",
        );
        assert_err!(
            e,
            "spec.hosts[0]",
            "not allowed for VirtualServices bound to the mesh"
        );
        assert_err!(
            e,
            "spec.http[0].route[0].destination.host",
            "must not be a wildcard"
        );
        assert_err!(
            e,
            "spec.http[0].route[0].destination.port.number",
            "between 1 and 65535"
        );
        let e = check(
            NET,
            "VirtualService",
            "  hosts: [a]\n  gateways: [Bad/Name, ns/gw, mesh]\n  tcp:\n  - route:\n    - destination: {host: a}\n",
        );
        assert_err!(e, "spec.gateways[0]", "not a valid gateway name");
        assert_eq!(e.len(), 1, "{e:?}");
        let e = check(NET, "VirtualService", "  hosts: [a]\n");
        assert_err!(e, "spec", "at least one of http, tcp or tls");
    }

    #[test]
    fn virtual_service_matches_retries_faults() {
        let spec = "  hosts: [a]\n  http:\n  - match:\n    - headers: {End-User: {exact: x}, present: {}}\n      queryParams: {q: {prefix: x}}\n      uri: {exact: /a, prefix: /b}\n      port: 0\n    route:\n    - destination: {host: a}\n    retries: {attempts: -1, perTryTimeout: 0s, retryOn: '5xx,bogus,503'}\n    fault: {}\n    mirror: {host: m}\n    mirrors: [{destination: {host: m}, percentage: {value: 101}}]\n";
        let e = check(NET, "VirtualService", spec);
        assert_err!(
            e,
            "spec.http[0].match[0].headers.End-User",
            "must be lowercase"
        );
        assert_err!(
            e,
            "spec.http[0].match[0].queryParams.q",
            "only exact and regex"
        );
        assert_err!(
            e,
            "spec.http[0].match[0].uri",
            "only one of exact, prefix or regex"
        );
        assert_err!(e, "spec.http[0].match[0].port", "between 1 and 65535");
        assert_err!(e, "spec.http[0].retries.attempts", "must not be negative");
        assert_err!(e, "spec.http[0].retries.perTryTimeout", "at least 1ms");
        assert_err!(
            e,
            "spec.http[0].retries.retryOn",
            "`bogus` is not a retry condition"
        );
        assert_err!(e, "spec.http[0].fault", "needs a delay or an abort");
        assert_err!(e, "spec.http[0].mirrors", "only one of mirror and mirrors");
        assert_err!(
            e,
            "spec.http[0].mirrors[0].percentage.value",
            "between 0 and 100"
        );
        assert!(!e.iter().any(|x| x.contains("present")), "{e:?}");
        let e = check(
            NET,
            "VirtualService",
            "  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    fault:\n      abort: {httpStatus: 99, grpcStatus: NOPE}\n      delay: {percentage: {value: 50}}\n    timeout: 0s\n",
        );
        assert_err!(e, "spec.http[0].fault.abort", "only one of httpStatus");
        assert_err!(
            e,
            "spec.http[0].fault.abort.httpStatus",
            "between 200 and 599"
        );
        assert_err!(
            e,
            "spec.http[0].fault.abort.grpcStatus",
            "not a gRPC status"
        );
        assert_err!(e, "spec.http[0].fault.delay.fixedDelay", "required");
        assert!(
            !e.iter().any(|x| x.contains("timeout")),
            "timeout 0s disables the timeout: {e:?}"
        );
    }

    #[test]
    fn delegate_virtual_services() {
        let e = check(
            NET,
            "VirtualService",
            "  http:\n  - route:\n    - destination: {host: a}\n",
        );
        assert!(
            e.is_empty(),
            "a VirtualService without hosts is a delegate: {e:?}"
        );
        let e = check(
            NET,
            "VirtualService",
            "  gateways: [gw]\n  http:\n  - delegate: {name: other}\n",
        );
        assert_err!(e, "spec.gateways", "delegate VirtualService");
        assert_err!(e, "spec.http[0].delegate", "cannot delegate again");
    }

    #[test]
    fn destination_rule_rules() {
        let e = check(
            NET,
            "DestinationRule",
            "  subsets:\n  - name: v1\n  - name: v1\n  - name: V_2\n",
        );
        assert_err!(e, "spec.host", "required");
        assert_err!(e, "spec.subsets[1].name", "duplicate subset name `v1`");
        assert_err!(e, "spec.subsets[2].name", "not a valid subset name");
        let tp = "  host: r\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      consistentHash: {httpHeaderName: x, useSourceIp: true, maglev: {tableSize: 100}}\n    connectionPool:\n      tcp: {maxConnections: -1, connectTimeout: 0ms}\n      http: {http2MaxRequests: -5}\n    outlierDetection: {maxEjectionPercent: 150, interval: 0s}\n    tls: {mode: MUTUAL}\n    portLevelSettings:\n    - loadBalancer: {simple: RANDOM}\n";
        let e = check(NET, "DestinationRule", tp);
        assert_err!(
            e,
            "spec.trafficPolicy.loadBalancer",
            "only one of simple and consistentHash"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one hash key"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "prime"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "negative"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "at least 1ms"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "negative"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "between 0 and 100"
        );
        assert_err!(
            e,
            "spec.trafficPolicy.outlierDetection.interval",
            "at least 1ms"
        );
        assert_err!(e, "spec.trafficPolicy.tls", "MUTUAL needs credentialName");
        assert_err!(
            e,
            "spec.trafficPolicy.portLevelSettings[0].port",
            "required"
        );
        let e = check(
            NET,
            "DestinationRule",
            "  host: r\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {}\n",
        );
        assert_err!(
            e,
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one hash key"
        );
        let good = "  host: r\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpCookie: {name: s, ttl: 0s}, ringHash: {minimumRingSize: 1024}}\n    tls: {mode: ISTIO_MUTUAL}\n";
        assert!(check(NET, "DestinationRule", good).is_empty());
    }

    #[test]
    fn gateway_rules() {
        let e = check(
            NET,
            "Gateway",
            "  servers:\n  - hosts: []\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a/b/c]\n  - port: {number: 443, name: https2, protocol: HTTPS}\n    hosts: [x.com]\n    tls: {mode: SIMPLE, httpsRedirect: true}\n  - port: {number: 80, name: h, protocol: SMTP}\n    hosts: ['./x.com']\n",
        );
        assert_err!(e, "spec.servers[0].port", "required");
        assert_err!(e, "spec.servers[0].hosts", "at least one host");
        assert_err!(e, "spec.servers[1].hosts[0]", "`namespace/host`");
        assert_err!(e, "spec.servers[1].tls", "HTTPS servers need tls");
        assert_err!(
            e,
            "spec.servers[2].tls",
            "SIMPLE and MUTUAL need credentialName"
        );
        assert_err!(
            e,
            "spec.servers[2].tls.httpsRedirect",
            "only valid on HTTP servers"
        );
        assert_err!(
            e,
            "spec.servers[3].port.protocol",
            "`SMTP` is not a protocol"
        );
        let good = "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*/x.com']\n    tls: {mode: SIMPLE, credentialName: x-cert}\n  - port: {number: 80, name: http, protocol: http}\n    hosts: ['*']\n    tls: {httpsRedirect: true}\n";
        assert!(check(NET, "Gateway", good).is_empty());
    }

    #[test]
    fn service_entry_and_workload_entry_rules() {
        let e = check(
            NET,
            "ServiceEntry",
            "  hosts: ['*']\n  ports: [{number: 80, name: http, protocol: SMTP}, {number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n",
        );
        assert_err!(e, "spec.hosts[0]", "`*` is not allowed");
        assert_err!(e, "spec.ports[0].protocol", "`SMTP` is not a protocol");
        assert_err!(e, "spec.ports[1].number", "duplicate port 80");
        assert_err!(e, "spec.ports[1].name", "duplicate port name");
        assert_err!(e, "spec.endpoints", "STATIC resolution needs endpoints");
        let e = check(
            NET,
            "ServiceEntry",
            "  hosts: [db.internal]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: STATIC\n  endpoints: [{address: db.example.com, ports: {pg: 5432}}]\n",
        );
        assert_err!(e, "spec.endpoints[0].address", "must be an IP address");
        assert_err!(
            e,
            "spec.endpoints[0].ports.pg",
            "not one of the ServiceEntry's port names"
        );
        let e = check(
            NET,
            "ServiceEntry",
            "  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  endpoints: [{address: 1.2.3.4}]\n",
        );
        assert_err!(e, "spec.endpoints", "resolution NONE");
        let good = "  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n";
        assert!(check(NET, "ServiceEntry", good).is_empty());
        let e = check(
            NET,
            "WorkloadEntry",
            "  labels: {app: x}\n  ports: {http: 0}\n",
        );
        assert_err!(e, "spec.address", "required");
        assert_err!(e, "spec.ports.http", "between 1 and 65535");
    }

    #[test]
    fn sidecar_rules() {
        let e = check(
            NET,
            "Sidecar",
            "  egress:\n  - hosts: [istio-system]\n  - hosts: []\n  ingress:\n  - defaultEndpoint: 'localhost:80'\n",
        );
        assert_err!(e, "spec.egress[0].hosts[0]", "must be `namespace/dnsName`");
        assert_err!(e, "spec.egress[1].hosts", "at least one");
        assert_err!(
            e,
            "spec.egress",
            "only one egress listener may omit its port"
        );
        assert_err!(e, "spec.ingress[0].port", "required");
        assert_err!(e, "spec.ingress[0].defaultEndpoint", "127.0.0.1:PORT");
        let good = "  egress:\n  - hosts: ['./*', 'istio-system/*']\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
        assert!(check(NET, "Sidecar", good).is_empty());
    }

    const SEC: &str = "security.istio.io/v1";

    #[test]
    fn security_rules() {
        let e = check(
            SEC,
            "PeerAuthentication",
            "  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
        );
        assert_err!(e, "spec.portLevelMtls", "requires a workload selector");
        assert!(
            check(
                SEC,
                "PeerAuthentication",
                "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n"
            )
            .is_empty()
        );
        let e = check(
            SEC,
            "AuthorizationPolicy",
            "  action: CUSTOM\n  rules:\n  - from: [{source: {}}, {}]\n    to: [{operation: {ports: ['http']}}]\n    when: [{key: request.colour}]\n",
        );
        assert_err!(e, "spec.provider", "CUSTOM action requires a provider");
        assert_err!(e, "spec.rules[0].from[0].source", "at least one field");
        assert_err!(e, "spec.rules[0].from[1].source", "required");
        assert_err!(
            e,
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port number"
        );
        assert_err!(e, "spec.rules[0].when[0].key", "unknown condition key");
        assert_err!(e, "spec.rules[0].when[0]", "values or notValues");
        let e = check(
            SEC,
            "AuthorizationPolicy",
            "  action: DENY\n  provider: {name: x}\n  rules:\n  - from: [{source: {principals: ['a*b'], ipBlocks: [300.1.1.1]}}]\n",
        );
        assert_err!(e, "spec.provider", "only used with action CUSTOM");
        assert_err!(
            e,
            "spec.rules[0].from[0].source.principals[0]",
            "prefix, a suffix or alone"
        );
        assert_err!(
            e,
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP or CIDR"
        );
        let good = "  selector: {matchLabels: {app: ratings}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/reviews]}}]\n    to: [{operation: {methods: [GET], ports: ['9080']}}]\n    when: [{key: 'request.headers[x-id]', values: ['*']}]\n";
        assert!(check(SEC, "AuthorizationPolicy", good).is_empty());
        let e = check(
            SEC,
            "RequestAuthentication",
            "  jwtRules:\n  - jwks: '{}'\n    jwksUri: ftp://x\n    fromHeaders: [{prefix: 'Bearer '}]\n",
        );
        assert_err!(e, "spec.jwtRules[0].issuer", "required");
        assert_err!(e, "spec.jwtRules[0].jwks", "only one of jwks and jwksUri");
        assert_err!(e, "spec.jwtRules[0].jwksUri", "http:// or https://");
        assert_err!(e, "spec.jwtRules[0].fromHeaders[0].name", "required");
    }

    #[test]
    fn telemetry_rules() {
        let e = check(
            "telemetry.istio.io/v1",
            "Telemetry",
            "  tracing:\n  - randomSamplingPercentage: 150\n    providers: [{}]\n  accessLogging:\n  - filter: {expression: ''}\n",
        );
        assert_err!(
            e,
            "spec.tracing[0].randomSamplingPercentage",
            "between 0 and 100"
        );
        assert_err!(e, "spec.tracing[0].providers[0].name", "required");
        assert_err!(e, "spec.accessLogging[0].filter.expression", "required");
        let good = "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: 'response.code >= 400'}\n";
        assert!(check("telemetry.istio.io/v1", "Telemetry", good).is_empty());
    }

    const GW: &str = "gateway.networking.k8s.io/v1";

    #[test]
    fn http_route_rules() {
        let spec = "  parentRefs: [{name: gw}]\n  hostnames: ['10.0.0.1']\n  rules:\n  - matches:\n    - path: {type: PathPrefix, value: api}\n    - path: {type: RegularExpression, value: '(['}\n      headers: [{name: a, value: x}, {name: A, value: y}]\n    filters:\n    - type: RequestRedirect\n      urlRewrite: {hostname: x.com}\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}\n    backendRefs:\n    - {name: svc, weight: -1}\n";
        let e = check(GW, "HTTPRoute", spec);
        assert_err!(e, "spec.hostnames[0]", "no IPs");
        assert_err!(
            e,
            "spec.rules[0].matches[0].path.value",
            "must start with `/`"
        );
        assert_err!(
            e,
            "spec.rules[0].matches[1].path.value",
            "invalid regular expression"
        );
        assert_err!(
            e,
            "spec.rules[0].matches[1].headers[1].name",
            "matched twice"
        );
        assert_err!(
            e,
            "spec.rules[0].filters[0].requestRedirect",
            "required for type RequestRedirect"
        );
        assert_err!(
            e,
            "spec.rules[0].filters[0].urlRewrite",
            "must not be set for type RequestRedirect"
        );
        assert_err!(
            e,
            "spec.rules[0].filters[1].urlRewrite.path.type",
            "every match of the rule to be a PathPrefix"
        );
        assert_err!(
            e,
            "spec.rules[0].backendRefs[0].weight",
            "between 0 and 1000000"
        );
        assert_err!(
            e,
            "spec.rules[0].backendRefs[0].port",
            "required for Service backends"
        );
        let bad_type = check(
            GW,
            "HTTPRoute",
            "  rules:\n  - matches: [{path: {type: Prefix, value: /}}]\n",
        );
        assert_err!(
            bad_type,
            "spec.rules[0].matches[0].path.type",
            "unknown value"
        );
        let good = "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: ['*.example.com']\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}\n    backendRefs: [{name: api, port: 8080, weight: 90}, {name: api-canary, port: 8080, weight: 10}]\n    timeouts: {request: 10s, backendRequest: 2s}\n";
        assert!(check(GW, "HTTPRoute", good).is_empty());
    }

    #[test]
    fn grpc_route_and_gateway_rules() {
        let e = check(
            GW,
            "GRPCRoute",
            "  rules:\n  - matches: [{method: {}}, {method: {service: 'bad service'}}]\n    filters: [{type: RequestRedirect, requestRedirect: {}}]\n    backendRefs: [{name: g, port: 50051}]\n",
        );
        assert_err!(
            e,
            "spec.rules[0].matches[0].method",
            "set service, method or both"
        );
        assert_err!(
            e,
            "spec.rules[0].matches[1].method.service",
            "not a gRPC service name"
        );
        assert_err!(
            e,
            "spec.rules[0].filters[0].type",
            "not supported on GRPCRoute"
        );
        assert!(check(GW, "GRPCRoute", "  rules:\n  - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]\n    backendRefs: [{name: g, port: 50051}]\n").is_empty());
        let e = check(
            GW,
            "Gateway",
            "  listeners:\n  - {name: web, port: 443, protocol: HTTPS, tls: {mode: Terminate}}\n  - {name: web, port: 0, protocol: FTP}\n",
        );
        assert_err!(e, "spec.gatewayClassName", "required");
        assert_err!(
            e,
            "spec.listeners[0].tls.certificateRefs",
            "at least one certificateRef"
        );
        assert_err!(e, "spec.listeners[1].name", "duplicate listener name");
        assert_err!(e, "spec.listeners[1].port", "between 1 and 65535");
        assert_err!(e, "spec.listeners[1].protocol", "`FTP` is not a protocol");
        let good = "  gatewayClassName: weft\n  listeners:\n  - name: https\n    port: 443\n    protocol: HTTPS\n    hostname: '*.example.com'\n    tls: {certificateRefs: [{name: cert}]}\n    allowedRoutes: {namespaces: {from: All}}\n";
        assert!(check(GW, "Gateway", good).is_empty());
    }
}
