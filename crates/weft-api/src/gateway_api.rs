//! gateway.networking.k8s.io (`v1`; `v1beta1` accepted): Gateway, HTTPRoute, GRPCRoute.
//!
//! Field names follow the Kubernetes Gateway API reference (standard channel, plus the
//! widely used `timeouts`, `retry`, `sessionPersistence` and `cors`). Plain data: attachment
//! of routes to listeners and conflict resolution belong to the control plane.

use std::collections::BTreeMap;

use crate::duration::Duration;
use crate::types::{api_enum, api_struct};

api_struct! {
    /// A route's parent (usually a Gateway, optionally one listener of it).
    pub struct ParentReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub namespace: Option<String>,
        pub name: String,
        pub section_name: Option<String>,
        pub port: Option<i32>,
    }
}

api_struct! {
    /// A reference to a backend (a Service by default).
    pub struct BackendObjectReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<i32>,
    }
}

api_struct! {
    /// A reference to a local object (extension filters).
    pub struct LocalObjectReference {
        pub group: String,
        pub kind: String,
        pub name: String,
    }
}

api_struct! {
    /// A Kubernetes label selector.
    pub struct LabelSelector {
        pub match_labels: BTreeMap<String, String>,
        pub match_expressions: Vec<LabelSelectorRequirement>,
    }
}

api_struct! {
    /// One `matchExpressions` entry (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    pub struct LabelSelectorRequirement {
        pub key: String,
        pub operator: String,
        pub values: Vec<String>,
    }
}

// ---------------------------------------------------------------- Gateway

api_struct! {
    /// `Gateway.spec` (gateway.networking.k8s.io).
    pub struct GatewaySpec {
        pub gateway_class_name: String,
        pub listeners: Vec<Listener>,
        pub addresses: Vec<GatewayAddress>,
        pub infrastructure: Option<GatewayInfrastructure>,
    }
}

api_struct! {
    /// A requested address of the gateway.
    pub struct GatewayAddress {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: String,
    }
}

api_struct! {
    /// Labels and annotations for generated infrastructure.
    pub struct GatewayInfrastructure {
        pub labels: BTreeMap<String, String>,
        pub annotations: BTreeMap<String, String>,
        pub parameters_ref: Option<LocalObjectReference>,
    }
}

api_struct! {
    /// A listener: name, port, protocol, optional hostname and TLS.
    pub struct Listener {
        pub name: String,
        pub hostname: Option<String>,
        pub port: i32,
        pub protocol: String,
        pub tls: Option<GatewayTlsConfig>,
        pub allowed_routes: Option<AllowedRoutes>,
    }
}

api_enum! {
    /// Listener TLS mode.
    pub enum GatewayTlsMode {
        Terminate => "Terminate",
        Passthrough => "Passthrough",
    }
}

api_struct! {
    /// Listener TLS configuration.
    pub struct GatewayTlsConfig {
        pub mode: Option<GatewayTlsMode>,
        pub certificate_refs: Vec<SecretObjectReference>,
        pub frontend_validation: Option<FrontendTlsValidation>,
        pub options: BTreeMap<String, String>,
    }
}

api_struct! {
    /// A reference to a Secret (or other certificate holder).
    pub struct SecretObjectReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
    }
}

api_struct! {
    /// Client certificate validation.
    pub struct FrontendTlsValidation {
        pub ca_certificate_refs: Vec<SecretObjectReference>,
    }
}

api_struct! {
    /// Which routes may attach to a listener.
    pub struct AllowedRoutes {
        pub namespaces: Option<RouteNamespaces>,
        pub kinds: Vec<RouteGroupKind>,
    }
}

api_enum! {
    /// Namespaces routes may come from.
    pub enum FromNamespaces {
        All => "All",
        Same => "Same",
        Selector => "Selector",
    }
}

api_struct! {
    /// Route namespace policy.
    pub struct RouteNamespaces {
        pub from: Option<FromNamespaces>,
        pub selector: Option<LabelSelector>,
    }
}

api_struct! {
    /// A route kind.
    pub struct RouteGroupKind {
        pub group: Option<String>,
        pub kind: String,
    }
}

// ---------------------------------------------------------------- HTTPRoute

api_struct! {
    /// `HTTPRoute.spec`.
    pub struct HttpRouteSpec {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<HttpRouteRule>,
    }
}

api_struct! {
    /// One rule: matches (ORed), filters, backends.
    pub struct HttpRouteRule {
        pub name: Option<String>,
        pub matches: Vec<HttpRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<HttpBackendRef>,
        pub timeouts: Option<HttpRouteTimeouts>,
        pub retry: Option<HttpRouteRetry>,
        pub session_persistence: Option<SessionPersistence>,
    }
}

api_enum! {
    /// Path match types.
    pub enum PathMatchType {
        Exact => "Exact",
        PathPrefix => "PathPrefix",
        RegularExpression => "RegularExpression",
    }
}

api_enum! {
    /// Header, query parameter and gRPC method match types.
    pub enum ValueMatchType {
        Exact => "Exact",
        RegularExpression => "RegularExpression",
    }
}

api_enum! {
    /// HTTP methods.
    pub enum HttpMethod {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Delete => "DELETE",
        Connect => "CONNECT",
        Options => "OPTIONS",
        Trace => "TRACE",
        Patch => "PATCH",
    }
}

api_struct! {
    /// Conditions of one match (ANDed).
    pub struct HttpRouteMatch {
        pub path: Option<HttpPathMatch>,
        pub headers: Vec<HttpHeaderMatch>,
        pub query_params: Vec<HttpHeaderMatch>,
        pub method: Option<HttpMethod>,
    }
}

api_struct! {
    /// Path match; `PathPrefix` of `/` when absent.
    pub struct HttpPathMatch {
        #[serde(rename = "type")]
        pub kind: Option<PathMatchType>,
        pub value: Option<String>,
    }
}

api_struct! {
    /// Header or query parameter match.
    pub struct HttpHeaderMatch {
        #[serde(rename = "type")]
        pub kind: Option<ValueMatchType>,
        pub name: String,
        pub value: String,
    }
}

api_enum! {
    /// Filter types.
    pub enum HttpRouteFilterType {
        RequestHeaderModifier => "RequestHeaderModifier",
        ResponseHeaderModifier => "ResponseHeaderModifier",
        RequestMirror => "RequestMirror",
        RequestRedirect => "RequestRedirect",
        UrlRewrite => "URLRewrite",
        ExtensionRef => "ExtensionRef",
        Cors => "CORS",
    }
}

api_struct! {
    /// A filter: `type` plus the matching configuration field.
    pub struct HttpRouteFilter {
        #[serde(rename = "type")]
        pub kind: Option<HttpRouteFilterType>,
        pub request_header_modifier: Option<HttpHeaderFilter>,
        pub response_header_modifier: Option<HttpHeaderFilter>,
        pub request_mirror: Option<HttpRequestMirrorFilter>,
        pub request_redirect: Option<HttpRequestRedirectFilter>,
        #[serde(rename = "urlRewrite")]
        pub url_rewrite: Option<HttpUrlRewriteFilter>,
        pub extension_ref: Option<LocalObjectReference>,
        pub cors: Option<HttpCorsFilter>,
    }
}

api_struct! {
    /// A header name/value pair.
    pub struct HttpHeader {
        pub name: String,
        pub value: String,
    }
}

api_struct! {
    /// Header modifications.
    pub struct HttpHeaderFilter {
        pub set: Vec<HttpHeader>,
        pub add: Vec<HttpHeader>,
        pub remove: Vec<String>,
    }
}

api_struct! {
    /// A fraction `numerator/denominator` (denominator defaults to 100).
    pub struct Fraction {
        pub numerator: i32,
        pub denominator: Option<i32>,
    }
}

api_struct! {
    /// Mirror requests to another backend.
    pub struct HttpRequestMirrorFilter {
        pub backend_ref: BackendObjectReference,
        pub percent: Option<i32>,
        pub fraction: Option<Fraction>,
    }
}

api_enum! {
    /// Path modifier types.
    pub enum PathModifierType {
        ReplaceFullPath => "ReplaceFullPath",
        ReplacePrefixMatch => "ReplacePrefixMatch",
    }
}

api_struct! {
    /// Path rewrite for redirects and rewrites.
    pub struct HttpPathModifier {
        #[serde(rename = "type")]
        pub kind: Option<PathModifierType>,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }
}

api_struct! {
    /// Redirect the client.
    pub struct HttpRequestRedirectFilter {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<HttpPathModifier>,
        pub port: Option<i32>,
        pub status_code: Option<i32>,
    }
}

api_struct! {
    /// Rewrite host and/or path before forwarding.
    pub struct HttpUrlRewriteFilter {
        pub hostname: Option<String>,
        pub path: Option<HttpPathModifier>,
    }
}

api_struct! {
    /// CORS filter.
    pub struct HttpCorsFilter {
        pub allow_origins: Vec<String>,
        pub allow_credentials: Option<bool>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<i32>,
    }
}

api_struct! {
    /// A weighted backend with its own filters.
    pub struct HttpBackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<i32>,
        pub weight: Option<i32>,
        pub filters: Vec<HttpRouteFilter>,
    }
}

api_struct! {
    /// Request timeouts.
    pub struct HttpRouteTimeouts {
        pub request: Option<Duration>,
        pub backend_request: Option<Duration>,
    }
}

api_struct! {
    /// Retry policy.
    pub struct HttpRouteRetry {
        pub codes: Vec<i32>,
        pub attempts: Option<i32>,
        pub backoff: Option<Duration>,
    }
}

api_struct! {
    /// Session persistence.
    pub struct SessionPersistence {
        pub session_name: Option<String>,
        pub absolute_timeout: Option<Duration>,
        pub idle_timeout: Option<Duration>,
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub cookie_config: Option<CookieConfig>,
    }
}

api_struct! {
    /// Cookie lifetime for session persistence.
    pub struct CookieConfig {
        pub lifetime_type: Option<String>,
    }
}

// ---------------------------------------------------------------- GRPCRoute

api_struct! {
    /// `GRPCRoute.spec`.
    pub struct GrpcRouteSpec {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<GrpcRouteRule>,
    }
}

api_struct! {
    /// One gRPC rule.
    pub struct GrpcRouteRule {
        pub name: Option<String>,
        pub matches: Vec<GrpcRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<HttpBackendRef>,
        pub session_persistence: Option<SessionPersistence>,
    }
}

api_struct! {
    /// Conditions of one gRPC match (ANDed).
    pub struct GrpcRouteMatch {
        pub method: Option<GrpcMethodMatch>,
        pub headers: Vec<HttpHeaderMatch>,
    }
}

api_struct! {
    /// Match on `service` and/or `method`.
    pub struct GrpcMethodMatch {
        #[serde(rename = "type")]
        pub kind: Option<ValueMatchType>,
        pub service: Option<String>,
        pub method: Option<String>,
    }
}
