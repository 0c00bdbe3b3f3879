//! telemetry.istio.io (`v1`, `v1alpha1`): Telemetry (tracing, metrics, access logging).
//!
//! Shapes and names follow Istio's reference. Plain data; which providers exist is the
//! control plane's concern.

use std::collections::BTreeMap;

use crate::duration::Duration;
use crate::networking::WorkloadSelector;
use crate::security::PolicyTargetReference;
use crate::types::{api_enum, api_struct};

api_struct! {
    /// `Telemetry.spec`.
    pub struct TelemetrySpec {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub tracing: Vec<Tracing>,
        pub metrics: Vec<Metrics>,
        pub access_logging: Vec<AccessLogging>,
    }
}

api_struct! {
    /// A named provider (from mesh config).
    pub struct ProviderRef {
        pub name: String,
    }
}

api_enum! {
    /// Which side of the traffic a setting applies to.
    pub enum WorkloadMode {
        ClientAndServer => "CLIENT_AND_SERVER",
        Client => "CLIENT",
        Server => "SERVER",
    }
}

api_struct! {
    /// Selects client, server or both.
    pub struct TracingSelector {
        pub mode: Option<WorkloadMode>,
    }
}

api_struct! {
    /// Tracing configuration.
    pub struct Tracing {
        #[serde(rename = "match")]
        pub selector: Option<TracingSelector>,
        pub providers: Vec<ProviderRef>,
        pub random_sampling_percentage: Option<f64>,
        pub disable_span_reporting: Option<bool>,
        pub custom_tags: BTreeMap<String, CustomTag>,
        pub use_request_id_for_trace_sampling: Option<bool>,
    }
}

api_struct! {
    /// A span tag: a literal, an environment variable or a request header.
    pub struct CustomTag {
        pub literal: Option<LiteralTag>,
        pub environment: Option<EnvironmentTag>,
        pub header: Option<HeaderTag>,
    }
}

api_struct! {
    /// A fixed tag value.
    pub struct LiteralTag {
        pub value: String,
    }
}

api_struct! {
    /// A tag from the proxy's environment.
    pub struct EnvironmentTag {
        pub name: String,
        pub default_value: String,
    }
}

api_struct! {
    /// A tag from a request header.
    pub struct HeaderTag {
        pub name: String,
        pub default_value: String,
    }
}

api_struct! {
    /// Metrics configuration.
    pub struct Metrics {
        pub providers: Vec<ProviderRef>,
        pub overrides: Vec<MetricsOverrides>,
        pub reporting_interval: Option<Duration>,
    }
}

api_enum! {
    /// Istio standard metrics.
    pub enum IstioMetric {
        AllMetrics => "ALL_METRICS",
        RequestCount => "REQUEST_COUNT",
        RequestDuration => "REQUEST_DURATION",
        RequestSize => "REQUEST_SIZE",
        ResponseSize => "RESPONSE_SIZE",
        TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
        TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
        TcpSentBytes => "TCP_SENT_BYTES",
        TcpReceivedBytes => "TCP_RECEIVED_BYTES",
        GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
        GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
    }
}

api_struct! {
    /// Which metric (and side) an override applies to.
    pub struct MetricSelector {
        pub metric: Option<IstioMetric>,
        pub custom_metric: String,
        pub mode: Option<WorkloadMode>,
    }
}

api_enum! {
    /// Tag override operation.
    pub enum TagOperation {
        Upsert => "UPSERT",
        Remove => "REMOVE",
    }
}

api_struct! {
    /// Add, change or remove a metric label.
    pub struct TagOverride {
        pub operation: Option<TagOperation>,
        pub value: String,
    }
}

api_struct! {
    /// Disable a metric or change its labels.
    pub struct MetricsOverrides {
        #[serde(rename = "match")]
        pub selector: Option<MetricSelector>,
        pub disabled: Option<bool>,
        pub tag_overrides: BTreeMap<String, TagOverride>,
    }
}

api_struct! {
    /// Access logging configuration.
    pub struct AccessLogging {
        #[serde(rename = "match")]
        pub selector: Option<TracingSelector>,
        pub providers: Vec<ProviderRef>,
        pub disabled: Option<bool>,
        pub filter: Option<AccessLogFilter>,
    }
}

api_struct! {
    /// A CEL expression selecting which requests are logged.
    pub struct AccessLogFilter {
        pub expression: String,
    }
}
