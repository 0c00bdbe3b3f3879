//! The envelope every resource shares (`apiVersion`, `kind`, `metadata`, `spec`), the
//! [`Resource`] sum type and its [`Kind`], plus the two macros that give every API struct the
//! same serde behaviour (camelCase, unknown fields rejected, absent = default, defaults not
//! serialized).
//!
//! Must not hold behaviour: resources are data; parsing, validation and analysis live in their
//! own modules.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::{gateway_api, networking, security, telemetry};

/// `skip_serializing_if` helper: leave out fields that hold their default.
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Defines an API struct: `Debug, Clone, Default, PartialEq, Serialize, Deserialize`,
/// camelCase field names, unknown fields rejected, absent fields default, default-valued
/// fields not serialized.
macro_rules! api_struct {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $( $(#[$fm:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "camelCase", default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$fm])*
                #[serde(skip_serializing_if = "crate::types::is_default")]
                pub $field: $ty,
            )*
        }
    };
}
pub(crate) use api_struct;

/// Defines a string-valued API enum with explicit wire names, `ALL` and `as_str()`.
macro_rules! api_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $( $(#[$vm:meta])* $variant:ident => $text:literal ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            ::serde::Serialize, ::serde::Deserialize,
        )]
        pub enum $name {
            $( $(#[$vm])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use api_enum;

/// Kubernetes object metadata. Server-populated fields are accepted (so `kubectl get -o
/// yaml` output parses); misspelled ones are still errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ObjectMeta {
    /// Required.
    #[serde(skip_serializing_if = "is_default")]
    pub name: String,
    /// `default` when absent.
    #[serde(skip_serializing_if = "is_default")]
    pub namespace: String,
    #[serde(skip_serializing_if = "is_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_default")]
    pub uid: String,
    #[serde(skip_serializing_if = "is_default")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "is_default")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "is_default")]
    pub creation_timestamp: String,
    #[serde(skip_serializing_if = "is_default")]
    pub deletion_timestamp: String,
    #[serde(skip_serializing_if = "is_default")]
    pub generate_name: String,
    #[serde(skip_serializing_if = "is_default")]
    pub finalizers: Vec<String>,
    #[serde(skip_serializing)]
    pub managed_fields: Option<IgnoredAny>,
    #[serde(skip_serializing)]
    pub owner_references: Option<IgnoredAny>,
    #[serde(skip_serializing)]
    pub self_link: Option<IgnoredAny>,
    #[serde(skip_serializing)]
    pub deletion_grace_period_seconds: Option<IgnoredAny>,
}

/// A typed resource: the shared envelope around a kind-specific `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

/// The kinds weft understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    /// networking.istio.io Gateway.
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Telemetry,
    /// gateway.networking.k8s.io Gateway.
    KubernetesGateway,
    HttpRoute,
    GrpcRoute,
}

impl Kind {
    /// Every kind.
    pub const ALL: &'static [Kind] = &[
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
        Kind::KubernetesGateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
    ];

    /// The `kind:` value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway | Kind::KubernetesGateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::Sidecar => "networking.istio.io",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::Telemetry => "telemetry.istio.io",
            Kind::KubernetesGateway | Kind::HttpRoute | Kind::GrpcRoute => {
                "gateway.networking.k8s.io"
            }
        }
    }

    /// Accepted versions, preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => &["v1", "v1beta1", "v1alpha3"],
            "security.istio.io" => &["v1", "v1beta1"],
            "telemetry.istio.io" => &["v1", "v1alpha1"],
            _ if self == Kind::GrpcRoute => &["v1", "v1alpha2"],
            _ => &["v1", "v1beta1"],
        }
    }

    /// The kind for an `apiVersion` group and `kind:` value, ignoring the version.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.group() == group && k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Any resource weft understands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    VirtualService(Object<networking::VirtualServiceSpec>),
    DestinationRule(Object<networking::DestinationRuleSpec>),
    Gateway(Object<networking::GatewaySpec>),
    ServiceEntry(Object<networking::ServiceEntrySpec>),
    WorkloadEntry(Object<networking::WorkloadEntrySpec>),
    Sidecar(Object<networking::SidecarSpec>),
    PeerAuthentication(Object<security::PeerAuthenticationSpec>),
    AuthorizationPolicy(Object<security::AuthorizationPolicySpec>),
    RequestAuthentication(Object<security::RequestAuthenticationSpec>),
    Telemetry(Object<telemetry::TelemetrySpec>),
    KubernetesGateway(Object<gateway_api::GatewaySpec>),
    HttpRoute(Object<gateway_api::HttpRouteSpec>),
    GrpcRoute(Object<gateway_api::GrpcRouteSpec>),
}

macro_rules! with_object {
    ($self:expr, $o:ident => $body:expr) => {
        match $self {
            Resource::VirtualService($o) => $body,
            Resource::DestinationRule($o) => $body,
            Resource::Gateway($o) => $body,
            Resource::ServiceEntry($o) => $body,
            Resource::WorkloadEntry($o) => $body,
            Resource::Sidecar($o) => $body,
            Resource::PeerAuthentication($o) => $body,
            Resource::AuthorizationPolicy($o) => $body,
            Resource::RequestAuthentication($o) => $body,
            Resource::Telemetry($o) => $body,
            Resource::KubernetesGateway($o) => $body,
            Resource::HttpRoute($o) => $body,
            Resource::GrpcRoute($o) => $body,
        }
    };
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::Sidecar(_) => Kind::Sidecar,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::RequestAuthentication(_) => Kind::RequestAuthentication,
            Resource::Telemetry(_) => Kind::Telemetry,
            Resource::KubernetesGateway(_) => Kind::KubernetesGateway,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::GrpcRoute(_) => Kind::GrpcRoute,
        }
    }

    /// The object metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        with_object!(self, o => &o.metadata)
    }

    /// The `apiVersion` as written.
    pub fn api_version(&self) -> &str {
        with_object!(self, o => &o.api_version)
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// `metadata.namespace` (`default` when it was absent).
    pub fn namespace(&self) -> &str {
        &self.metadata().namespace
    }

    /// The identity of the resource: `(kind, namespace, name)`.
    pub fn key(&self) -> (Kind, &str, &str) {
        (self.kind(), self.namespace(), self.name())
    }

    /// `Kind namespace/name`, as used in messages.
    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.name())
    }
}
