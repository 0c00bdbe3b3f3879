//! Istio and Kubernetes Gateway API resources for Weft: typed resources, multi-document
//! YAML/JSON parsing with `file:line:column` + field-path errors, Istio's validation rules,
//! and `istioctl analyze`-style cross-resource analysis.
//!
//! Why a crate of its own: the control plane, the CLI (`weft apply`, `weft analyze`) and tests
//! all read the same YAML users already have, and must agree on what it means and which of it
//! is wrong — refusing bad config at apply time instead of NACKing it in the proxy later.
//!
//! What it must not do: any I/O (it takes text and returns values), async, or runtime
//! defaulting (Istio's defaults are applied when translating to xDS, not here).
//!
//! ```
//! let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
//! let parsed = weft_api::parse_documents("reviews.yaml", yaml).expect("valid");
//! assert_eq!(parsed[0].resource.label(), "VirtualService default/reviews");
//! ```

mod analyze;
mod de;
mod duration;
mod error;
pub mod gateway_api;
mod host;
pub mod networking;
mod parse;
pub mod security;
pub mod telemetry;
mod types;
mod validate;
mod yaml;

pub use analyze::{Finding, FindingCode, Severity, WorkloadInfo, analyze};
pub use duration::{Duration, parse_duration};
pub use error::ApiError;
pub use host::{
    fqdn, host_matches, hosts_intersect, is_dns1123_label, is_dns1123_subdomain, is_ip,
    is_ip_or_cidr, is_wildcard_dns_name,
};
pub use parse::{Parsed, Spans, parse_documents, parse_documents_partial};
pub use types::{Kind, Object, ObjectMeta, Resource};
pub use validate::validate;
