//! security.istio.io (`v1`, `v1beta1`): PeerAuthentication, AuthorizationPolicy,
//! RequestAuthentication.
//!
//! Shapes and names follow Istio's reference exactly. Plain data: evaluation order and
//! defaults (PERMISSIVE when nothing is set, CUSTOM → DENY → ALLOW) belong to the proxy and
//! control plane, not here.

use std::collections::BTreeMap;

use crate::duration::Duration;
use crate::networking::WorkloadSelector;
use crate::types::{api_enum, api_struct};

api_struct! {
    /// A reference to the object a policy attaches to (Gateway API style).
    pub struct PolicyTargetReference {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub namespace: String,
    }
}

// ---------------------------------------------------------------- PeerAuthentication

api_enum! {
    /// Mutual TLS mode.
    pub enum MtlsMode {
        Unset => "UNSET",
        Disable => "DISABLE",
        Permissive => "PERMISSIVE",
        Strict => "STRICT",
    }
}

api_struct! {
    /// Mutual TLS settings.
    pub struct MutualTls {
        pub mode: Option<MtlsMode>,
    }
}

api_struct! {
    /// `PeerAuthentication.spec`.
    pub struct PeerAuthenticationSpec {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MutualTls>,
        pub port_level_mtls: BTreeMap<u32, MutualTls>,
    }
}

// ---------------------------------------------------------------- AuthorizationPolicy

api_enum! {
    /// What a matching rule does.
    pub enum AuthorizationAction {
        Allow => "ALLOW",
        Deny => "DENY",
        Audit => "AUDIT",
        Custom => "CUSTOM",
    }
}

api_struct! {
    /// `AuthorizationPolicy.spec`.
    pub struct AuthorizationPolicySpec {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub rules: Vec<Rule>,
        pub action: Option<AuthorizationAction>,
        pub provider: Option<ExtensionProvider>,
    }
}

api_struct! {
    /// The external authorizer of a CUSTOM policy.
    pub struct ExtensionProvider {
        pub name: String,
    }
}

api_struct! {
    /// A rule matches when `from`, `to` and `when` all match (each list ORed inside).
    pub struct Rule {
        pub from: Vec<RuleFrom>,
        pub to: Vec<RuleTo>,
        pub when: Vec<Condition>,
    }
}

api_struct! {
    /// Wrapper of a source.
    pub struct RuleFrom {
        pub source: Option<Source>,
    }
}

api_struct! {
    /// Wrapper of an operation.
    pub struct RuleTo {
        pub operation: Option<Operation>,
    }
}

api_struct! {
    /// Who sends the request.
    pub struct Source {
        pub principals: Vec<String>,
        pub not_principals: Vec<String>,
        pub request_principals: Vec<String>,
        pub not_request_principals: Vec<String>,
        pub namespaces: Vec<String>,
        pub not_namespaces: Vec<String>,
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
        pub ip_blocks: Vec<String>,
        pub not_ip_blocks: Vec<String>,
        pub remote_ip_blocks: Vec<String>,
        pub not_remote_ip_blocks: Vec<String>,
    }
}

api_struct! {
    /// What the request does.
    pub struct Operation {
        pub hosts: Vec<String>,
        pub not_hosts: Vec<String>,
        pub ports: Vec<String>,
        pub not_ports: Vec<String>,
        pub methods: Vec<String>,
        pub not_methods: Vec<String>,
        pub paths: Vec<String>,
        pub not_paths: Vec<String>,
    }
}

api_struct! {
    /// An extra condition on a request attribute (`request.headers[x]`, `source.ip` ...).
    pub struct Condition {
        pub key: String,
        pub values: Vec<String>,
        pub not_values: Vec<String>,
    }
}

// ---------------------------------------------------------------- RequestAuthentication

api_struct! {
    /// `RequestAuthentication.spec`.
    pub struct RequestAuthenticationSpec {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub jwt_rules: Vec<JwtRule>,
    }
}

api_struct! {
    /// How to validate JWTs of one issuer.
    pub struct JwtRule {
        pub issuer: String,
        pub audiences: Vec<String>,
        pub jwks_uri: String,
        pub jwks: String,
        pub from_headers: Vec<JwtHeader>,
        pub from_params: Vec<String>,
        pub from_cookies: Vec<String>,
        pub output_payload_to_header: String,
        pub forward_original_token: bool,
        pub output_claim_to_headers: Vec<ClaimToHeader>,
        pub timeout: Option<Duration>,
    }
}

api_struct! {
    /// A header carrying the token, with an optional prefix such as `Bearer `.
    pub struct JwtHeader {
        pub name: String,
        pub prefix: String,
    }
}

api_struct! {
    /// Copy a claim into a request header.
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}
