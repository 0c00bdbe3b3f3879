//! Errors and small conversions shared by the translation of Envoy resources into the proxy's
//! runtime model. Translation happens once per config generation; anything the proxy cannot
//! honour exactly is refused here, with the resource and field named, never ignored.

use std::time::Duration;

/// Why a resource cannot be applied. Always names the resource and the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: `{field}`: {reason}")]
pub struct ConfigError {
    /// `listener "ingress"`, `cluster "backend"`, `route_config "local"`.
    pub resource: String,
    /// Field path inside the resource, `filter_chains[0].filters[0].typed_config.stat_prefix`.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            resource: resource.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Builds errors for one resource, so call sites stay short.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub resource: String,
}

impl Ctx {
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            resource: format!("{kind} {name:?}"),
        }
    }
    pub fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.resource.clone(), field, reason)
    }
}

/// Converts a protobuf Duration; negative durations are refused.
pub fn duration(
    ctx: &Ctx,
    field: &str,
    d: &envoy_types::pb::google::protobuf::Duration,
) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ctx.err(field, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Optional duration with a default; an explicit zero means "disabled" in Envoy for timeouts,
/// which callers express by mapping `Some(ZERO)` as they need.
pub fn opt_duration(
    ctx: &Ctx,
    field: &str,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(ctx, field, d)).transpose()
}

/// Decodes the `Any` payload of a typed config as `M`, checking the type URL.
pub fn decode_any<M: prost::Message + prost::Name + Default>(
    ctx: &Ctx,
    field: &str,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, ConfigError> {
    let want = M::full_name();
    let got = any.type_url.rsplit('/').next().unwrap_or_default();
    if got != want {
        return Err(ctx.err(field, format!("expected `{want}`, got `{}`", any.type_url)));
    }
    M::decode(any.value.as_slice()).map_err(|e| ctx.err(field, format!("undecodable {want}: {e}")))
}

/// Resolves a SocketAddress to an IP socket address (no DNS: names go through cluster
/// discovery types that resolve).
pub fn socket_addr(
    ctx: &Ctx,
    field: &str,
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<std::net::SocketAddr, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ctx.err(
            field,
            "a socket_address is required (pipes and internal addresses are not supported)",
        ));
    };
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        Some(PortSpecifier::PortValue(p)) => {
            return Err(ctx.err(
                format!("{field}.port_value"),
                format!("{p} is out of range"),
            ));
        }
        _ => {
            return Err(ctx.err(
                format!("{field}.port_value"),
                "a numeric port_value is required",
            ));
        }
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
        ctx.err(
            format!("{field}.address"),
            format!(
                "`{}` is not an IP address (use a STRICT_DNS or LOGICAL_DNS cluster for names)",
                sa.address
            ),
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}
