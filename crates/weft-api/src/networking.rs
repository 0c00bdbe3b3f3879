//! networking.istio.io (`v1`, `v1beta1`, `v1alpha3`): VirtualService, DestinationRule,
//! Gateway, ServiceEntry, WorkloadEntry, Sidecar.
//!
//! Field names and shapes follow Istio's API reference exactly (camelCase as in the CRDs), so
//! users bring their YAML unchanged. Unknown fields are errors. These are plain data: no
//! defaults are applied here beyond "absent" (Istio's runtime defaults belong to the
//! translation), and nothing here validates — see `validate`.

use std::collections::BTreeMap;

use crate::duration::Duration;
use crate::types::{api_enum, api_struct};

// ---------------------------------------------------------------- shared

api_struct! {
    /// A string match: exactly one of `exact`, `prefix`, `regex` (RE2 syntax, full match).
    /// Empty is allowed in header/query matches, where it means "present".
    pub struct StringMatch {
        pub exact: Option<String>,
        pub prefix: Option<String>,
        pub regex: Option<String>,
    }
}

api_struct! {
    /// A port by number.
    pub struct PortSelector {
        pub number: u32,
    }
}

api_struct! {
    /// Where traffic goes: a service host, optional subset and port.
    pub struct Destination {
        pub host: String,
        pub subset: String,
        pub port: Option<PortSelector>,
    }
}

api_struct! {
    /// A percentage 0..=100.
    pub struct Percent {
        pub value: f64,
    }
}

api_struct! {
    /// Label selector used by DestinationRule, PeerAuthentication, AuthorizationPolicy ...
    pub struct WorkloadSelector {
        pub match_labels: BTreeMap<String, String>,
    }
}

api_struct! {
    /// A port exposed by a Gateway server or ServiceEntry.
    pub struct Port {
        pub number: u32,
        pub protocol: String,
        pub name: String,
        pub target_port: Option<u32>,
    }
}

// ---------------------------------------------------------------- VirtualService

api_struct! {
    /// `VirtualService.spec`.
    pub struct VirtualServiceSpec {
        pub hosts: Vec<String>,
        pub gateways: Vec<String>,
        pub http: Vec<HttpRoute>,
        pub tls: Vec<TlsRoute>,
        pub tcp: Vec<TcpRoute>,
        pub export_to: Vec<String>,
    }
}

api_struct! {
    /// One ordered HTTP rule.
    pub struct HttpRoute {
        pub name: String,
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        pub delegate: Option<Delegate>,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<Duration>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        pub mirrors: Vec<HttpMirrorPolicy>,
        pub mirror_percentage: Option<Percent>,
        /// Deprecated integer form of `mirrorPercentage`.
        pub mirror_percent: Option<u32>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

api_struct! {
    /// Conditions of one match entry (ANDed); entries of `match` are ORed.
    pub struct HttpMatchRequest {
        pub name: String,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<u32>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub query_params: BTreeMap<String, StringMatch>,
        pub ignore_uri_case: bool,
        pub without_headers: BTreeMap<String, StringMatch>,
        pub source_namespace: String,
        pub stat_prefix: String,
    }
}

api_struct! {
    /// A weighted destination of an HTTP rule.
    pub struct HttpRouteDestination {
        pub destination: Destination,
        pub weight: Option<i32>,
        pub headers: Option<Headers>,
    }
}

api_struct! {
    /// Header edits for requests and responses.
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

api_struct! {
    /// `set` overwrites, `add` appends, `remove` deletes.
    pub struct HeaderOperations {
        pub set: BTreeMap<String, String>,
        pub add: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }
}

api_enum! {
    /// How a redirect picks its port when `port` is not given.
    pub enum DerivePort {
        FromProtocolDefault => "FROM_PROTOCOL_DEFAULT",
        FromRequestPort => "FROM_REQUEST_PORT",
    }
}

api_struct! {
    /// An HTTP redirect response.
    pub struct HttpRedirect {
        pub uri: String,
        pub authority: String,
        pub port: Option<u32>,
        pub derive_port: Option<DerivePort>,
        pub scheme: String,
        pub redirect_code: Option<u32>,
    }
}

api_struct! {
    /// A fixed response.
    pub struct HttpDirectResponse {
        pub status: u32,
        pub body: Option<HttpBody>,
    }
}

api_struct! {
    /// Body of a direct response: `string` or base64 `bytes`.
    pub struct HttpBody {
        pub string: Option<String>,
        pub bytes: Option<String>,
    }
}

api_struct! {
    /// Hand the rule to another VirtualService.
    pub struct Delegate {
        pub name: String,
        pub namespace: String,
    }
}

api_struct! {
    /// Rewrite of path and/or authority before forwarding.
    pub struct HttpRewrite {
        pub uri: Option<String>,
        pub authority: Option<String>,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

api_struct! {
    /// Regex path rewrite (`match` RE2, `rewrite` with `\1` groups).
    pub struct RegexRewrite {
        #[serde(rename = "match")]
        pub regex: String,
        pub rewrite: String,
    }
}

api_struct! {
    /// Retry policy.
    pub struct HttpRetry {
        pub attempts: Option<i32>,
        pub per_try_timeout: Option<Duration>,
        pub retry_on: Option<String>,
        pub retry_remote_localities: Option<bool>,
        pub retry_ignore_previous_hosts: Option<bool>,
        pub backoff: Option<Duration>,
    }
}

api_struct! {
    /// Fault injection: delay and/or abort.
    pub struct HttpFaultInjection {
        pub delay: Option<FaultDelay>,
        pub abort: Option<FaultAbort>,
    }
}

api_struct! {
    /// Delay a percentage of requests.
    pub struct FaultDelay {
        pub fixed_delay: Option<Duration>,
        pub exponential_delay: Option<Duration>,
        pub percentage: Option<Percent>,
        /// Deprecated integer form of `percentage`.
        pub percent: Option<i32>,
    }
}

api_struct! {
    /// Abort a percentage of requests.
    pub struct FaultAbort {
        pub http_status: Option<i32>,
        pub grpc_status: Option<String>,
        pub http2_error: Option<String>,
        pub percentage: Option<Percent>,
        /// Deprecated integer form of `percentage`.
        pub percent: Option<i32>,
    }
}

api_struct! {
    /// One mirror target.
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

api_enum! {
    /// What to do with preflights that match no allowed origin.
    pub enum UnmatchedPreflights {
        Unspecified => "UNSPECIFIED",
        Forward => "FORWARD",
        Ignore => "IGNORE",
    }
}

api_struct! {
    /// CORS policy.
    pub struct CorsPolicy {
        pub allow_origins: Vec<StringMatch>,
        /// Deprecated: use `allowOrigins`.
        pub allow_origin: Vec<String>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<Duration>,
        pub allow_credentials: Option<bool>,
        pub unmatched_preflights: Option<UnmatchedPreflights>,
    }
}

api_struct! {
    /// A TLS (SNI) rule.
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

api_struct! {
    /// Match on SNI and L4 attributes.
    pub struct TlsMatchAttributes {
        pub sni_hosts: Vec<String>,
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

api_struct! {
    /// An opaque TCP rule.
    pub struct TcpRoute {
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

api_struct! {
    /// Match on L4 attributes.
    pub struct L4MatchAttributes {
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_subnet: String,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

api_struct! {
    /// A weighted L4 destination.
    pub struct RouteDestination {
        pub destination: Destination,
        pub weight: Option<i32>,
    }
}

// ---------------------------------------------------------------- DestinationRule

api_struct! {
    /// `DestinationRule.spec`.
    pub struct DestinationRuleSpec {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        pub subsets: Vec<Subset>,
        pub export_to: Vec<String>,
        pub workload_selector: Option<WorkloadSelector>,
    }
}

api_struct! {
    /// Connection and load-balancing policy for a host, subset or port.
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
        pub port_level_settings: Vec<PortTrafficPolicy>,
        pub tunnel: Option<TunnelSettings>,
        pub proxy_protocol: Option<ProxyProtocol>,
    }
}

api_struct! {
    /// Per-port override of a traffic policy.
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
    }
}

api_struct! {
    /// HTTP CONNECT tunnelling to the destination.
    pub struct TunnelSettings {
        pub protocol: String,
        pub target_host: String,
        pub target_port: u32,
    }
}

api_struct! {
    /// PROXY protocol towards the upstream.
    pub struct ProxyProtocol {
        pub version: String,
    }
}

api_enum! {
    /// Simple load-balancing algorithms.
    pub enum SimpleLb {
        Unspecified => "UNSPECIFIED",
        LeastConn => "LEAST_CONN",
        Random => "RANDOM",
        Passthrough => "PASSTHROUGH",
        RoundRobin => "ROUND_ROBIN",
        LeastRequest => "LEAST_REQUEST",
    }
}

api_struct! {
    /// Load balancer: `simple` or `consistentHash`, plus locality settings.
    pub struct LoadBalancerSettings {
        pub simple: Option<SimpleLb>,
        pub consistent_hash: Option<ConsistentHashLb>,
        pub locality_lb_setting: Option<LocalityLbSetting>,
        pub warmup_duration_secs: Option<Duration>,
        pub warmup: Option<WarmupConfiguration>,
    }
}

api_struct! {
    /// Slow start for new endpoints.
    pub struct WarmupConfiguration {
        pub duration: Option<Duration>,
        pub minimum_percent: Option<f64>,
        pub aggression: Option<f64>,
    }
}

api_struct! {
    /// Consistent hashing: exactly one hash key, and ring hash or maglev.
    pub struct ConsistentHashLb {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<Maglev>,
        /// Deprecated: use `ringHash.minimumRingSize`.
        pub minimum_ring_size: Option<u64>,
    }
}

api_struct! {
    /// Hash on a cookie (generated with `ttl` when absent).
    pub struct HttpCookie {
        pub name: String,
        pub path: String,
        pub ttl: Option<Duration>,
        pub attributes: Vec<CookieAttribute>,
    }
}

api_struct! {
    /// An extra attribute of a generated cookie.
    pub struct CookieAttribute {
        pub name: String,
        pub value: String,
    }
}

api_struct! {
    /// Ring hash parameters.
    pub struct RingHash {
        pub minimum_ring_size: Option<u64>,
    }
}

api_struct! {
    /// Maglev parameters.
    pub struct Maglev {
        pub table_size: Option<u64>,
    }
}

api_struct! {
    /// Locality-aware load balancing.
    pub struct LocalityLbSetting {
        pub distribute: Vec<LocalityDistribute>,
        pub failover: Vec<LocalityFailover>,
        pub failover_priority: Vec<String>,
        pub enabled: Option<bool>,
    }
}

api_struct! {
    /// Weighted distribution from one locality to others.
    pub struct LocalityDistribute {
        pub from: String,
        pub to: BTreeMap<String, u32>,
    }
}

api_struct! {
    /// Failover from one region to another.
    pub struct LocalityFailover {
        pub from: String,
        pub to: String,
    }
}

api_struct! {
    /// Connection pool limits.
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

api_struct! {
    /// TCP connection limits.
    pub struct TcpSettings {
        pub max_connections: Option<i32>,
        pub connect_timeout: Option<Duration>,
        pub tcp_keepalive: Option<TcpKeepalive>,
        pub max_connection_duration: Option<Duration>,
        pub idle_timeout: Option<Duration>,
    }
}

api_struct! {
    /// TCP keepalive.
    pub struct TcpKeepalive {
        pub probes: Option<u32>,
        pub time: Option<Duration>,
        pub interval: Option<Duration>,
    }
}

api_enum! {
    /// HTTP/1.1 → HTTP/2 upgrade policy.
    pub enum H2UpgradePolicy {
        Default => "DEFAULT",
        DoNotUpgrade => "DO_NOT_UPGRADE",
        Upgrade => "UPGRADE",
    }
}

api_struct! {
    /// HTTP request limits.
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i32>,
        pub http2_max_requests: Option<i32>,
        pub max_requests_per_connection: Option<i32>,
        pub max_retries: Option<i32>,
        pub idle_timeout: Option<Duration>,
        pub h2_upgrade_policy: Option<H2UpgradePolicy>,
        pub use_client_protocol: Option<bool>,
        pub max_concurrent_streams: Option<i32>,
    }
}

api_struct! {
    /// Passive health checking (ejection of failing endpoints).
    pub struct OutlierDetection {
        /// Deprecated: use `consecutive5xxErrors` / `consecutiveGatewayErrors`.
        pub consecutive_errors: Option<i32>,
        pub split_external_local_origin_errors: Option<bool>,
        pub consecutive_local_origin_failures: Option<u32>,
        pub consecutive_gateway_errors: Option<u32>,
        #[serde(rename = "consecutive5xxErrors")]
        pub consecutive_5xx_errors: Option<u32>,
        pub interval: Option<Duration>,
        pub base_ejection_time: Option<Duration>,
        pub max_ejection_percent: Option<i32>,
        pub min_health_percent: Option<i32>,
    }
}

api_enum! {
    /// Client-side TLS mode towards the upstream.
    pub enum ClientTlsMode {
        Disable => "DISABLE",
        Simple => "SIMPLE",
        Mutual => "MUTUAL",
        IstioMutual => "ISTIO_MUTUAL",
    }
}

api_struct! {
    /// TLS towards the upstream.
    pub struct ClientTlsSettings {
        pub mode: Option<ClientTlsMode>,
        pub client_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub credential_name: String,
        pub subject_alt_names: Vec<String>,
        pub sni: String,
        pub insecure_skip_verify: Option<bool>,
        pub ca_crl: String,
    }
}

api_struct! {
    /// A named version of a service, selected by labels.
    pub struct Subset {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

// ---------------------------------------------------------------- Gateway

api_struct! {
    /// `Gateway.spec` (networking.istio.io).
    pub struct GatewaySpec {
        pub servers: Vec<Server>,
        pub selector: BTreeMap<String, String>,
    }
}

api_struct! {
    /// One listening port of a gateway with its hosts and TLS.
    pub struct Server {
        pub port: Option<Port>,
        pub bind: String,
        pub hosts: Vec<String>,
        pub tls: Option<ServerTlsSettings>,
        pub default_endpoint: String,
        pub name: String,
    }
}

api_enum! {
    /// Server-side TLS mode.
    pub enum ServerTlsMode {
        Passthrough => "PASSTHROUGH",
        Simple => "SIMPLE",
        Mutual => "MUTUAL",
        AutoPassthrough => "AUTO_PASSTHROUGH",
        IstioMutual => "ISTIO_MUTUAL",
        OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

api_enum! {
    /// TLS protocol versions.
    pub enum TlsProtocol {
        Auto => "TLS_AUTO",
        V1_0 => "TLSV1_0",
        V1_1 => "TLSV1_1",
        V1_2 => "TLSV1_2",
        V1_3 => "TLSV1_3",
    }
}

api_struct! {
    /// A certificate/key pair given inline by path.
    pub struct TlsCertificate {
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
    }
}

api_struct! {
    /// Server TLS settings.
    pub struct ServerTlsSettings {
        pub https_redirect: bool,
        pub mode: Option<ServerTlsMode>,
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub ca_crl: String,
        pub credential_name: String,
        pub credential_names: Vec<String>,
        pub tls_certificates: Vec<TlsCertificate>,
        pub subject_alt_names: Vec<String>,
        pub verify_certificate_spki: Vec<String>,
        pub verify_certificate_hash: Vec<String>,
        pub min_protocol_version: Option<TlsProtocol>,
        pub max_protocol_version: Option<TlsProtocol>,
        pub cipher_suites: Vec<String>,
    }
}

// ---------------------------------------------------------------- ServiceEntry / WorkloadEntry

api_enum! {
    /// Whether the service is part of the mesh.
    pub enum Location {
        MeshExternal => "MESH_EXTERNAL",
        MeshInternal => "MESH_INTERNAL",
    }
}

api_enum! {
    /// How endpoints are found.
    pub enum Resolution {
        None => "NONE",
        Static => "STATIC",
        Dns => "DNS",
        DnsRoundRobin => "DNS_ROUND_ROBIN",
    }
}

api_struct! {
    /// `ServiceEntry.spec`.
    pub struct ServiceEntrySpec {
        pub hosts: Vec<String>,
        pub addresses: Vec<String>,
        pub ports: Vec<Port>,
        pub location: Option<Location>,
        pub resolution: Option<Resolution>,
        pub endpoints: Vec<WorkloadEntrySpec>,
        pub workload_selector: Option<ServiceEntryWorkloadSelector>,
        pub export_to: Vec<String>,
        pub subject_alt_names: Vec<String>,
    }
}

api_struct! {
    /// ServiceEntry's selector: `labels` (not `matchLabels`).
    pub struct ServiceEntryWorkloadSelector {
        pub labels: BTreeMap<String, String>,
    }
}

api_struct! {
    /// `WorkloadEntry.spec`, also the shape of a ServiceEntry endpoint.
    pub struct WorkloadEntrySpec {
        pub address: String,
        pub ports: BTreeMap<String, u32>,
        pub labels: BTreeMap<String, String>,
        pub network: String,
        pub locality: String,
        pub weight: Option<u32>,
        pub service_account: String,
    }
}

// ---------------------------------------------------------------- Sidecar

api_enum! {
    /// How traffic reaches a listener.
    pub enum CaptureMode {
        Default => "DEFAULT",
        Iptables => "IPTABLES",
        None => "NONE",
    }
}

api_struct! {
    /// `Sidecar.spec`.
    pub struct SidecarSpec {
        pub workload_selector: Option<ServiceEntryWorkloadSelector>,
        pub ingress: Vec<IstioIngressListener>,
        pub egress: Vec<IstioEgressListener>,
        pub inbound_connection_pool: Option<ConnectionPoolSettings>,
        pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    }
}

api_struct! {
    /// An inbound listener of the sidecar.
    pub struct IstioIngressListener {
        pub port: Option<Port>,
        pub bind: String,
        pub capture_mode: Option<CaptureMode>,
        pub default_endpoint: String,
        pub tls: Option<ServerTlsSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
    }
}

api_struct! {
    /// An outbound listener and the hosts it may reach (`namespace/dnsName`).
    pub struct IstioEgressListener {
        pub port: Option<Port>,
        pub bind: String,
        pub capture_mode: Option<CaptureMode>,
        pub hosts: Vec<String>,
    }
}

api_enum! {
    /// Traffic to hosts outside the registry.
    pub enum OutboundTrafficMode {
        RegistryOnly => "REGISTRY_ONLY",
        AllowAny => "ALLOW_ANY",
    }
}

api_struct! {
    /// Outbound traffic policy.
    pub struct OutboundTrafficPolicy {
        pub mode: Option<OutboundTrafficMode>,
        pub egress_proxy: Option<Destination>,
    }
}

impl StringMatch {
    /// The one populated variant, if exactly one is set.
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }

    /// Whether no variant is set (presence match in headers).
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }
}

/// A borrowed view of a well-formed [`StringMatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}
