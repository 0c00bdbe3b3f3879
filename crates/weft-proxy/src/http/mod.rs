//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 on a downstream connection and runs
//! each request through routing and the router filter (`proxy`). Its config is compiled from
//! Envoy's `HttpConnectionManager`.

pub mod body;
pub mod proxy;

use crate::access_log::AccessLogger;
use crate::config::{ConfigError, Ctx, decode_any, opt_duration};
use crate::router::{RouteTable, route_table};
use crate::stats::{HttpStats, Stats};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use std::sync::Arc;
use std::time::Duration;

/// Which codecs a connection manager accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// Where the route table comes from.
#[derive(Debug)]
pub enum Routes {
    Static(Arc<RouteTable>),
    /// Named RouteConfiguration delivered by RDS (looked up in the current snapshot).
    Rds(String),
}

/// A compiled HttpConnectionManager.
#[derive(Debug)]
pub struct Hcm {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: Routes,
    pub access_logs: Vec<Arc<AccessLogger>>,
    pub websocket: bool,
    pub connect: bool,
    pub generate_request_id: bool,
    pub max_request_headers_kb: u32,
    pub use_remote_address: bool,
    pub server_name: Option<http::HeaderValue>,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub stats: Arc<HttpStats>,
}

pub fn hcm(
    ctx: &Ctx,
    f: &str,
    h: &hpb::HttpConnectionManager,
    stats: &Stats,
) -> Result<Hcm, ConfigError> {
    let codec = match hpb::http_connection_manager::CodecType::try_from(h.codec_type) {
        Ok(hpb::http_connection_manager::CodecType::Auto) => Codec::Auto,
        Ok(hpb::http_connection_manager::CodecType::Http1) => Codec::Http1,
        Ok(hpb::http_connection_manager::CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(ctx.err(
                format!("{f}.codec_type"),
                "only AUTO, HTTP1 and HTTP2 are supported",
            ));
        }
    };
    use hpb::http_connection_manager::RouteSpecifier as R;
    let routes = match &h.route_specifier {
        Some(R::RouteConfig(rc)) => Routes::Static(Arc::new(route_table(rc).map_err(|e| {
            ConfigError::new(
                e.resource,
                format!("{f}.route_config ({})", e.field),
                e.reason,
            )
        })?)),
        Some(R::Rds(rds)) => Routes::Rds(rds.route_config_name.clone()),
        Some(R::ScopedRoutes(_)) => {
            return Err(ctx.err(
                format!("{f}.scoped_routes"),
                "scoped routes are not supported",
            ));
        }
        None => return Err(ctx.err(f, "route_config or rds is required")),
    };
    match h.http_filters.as_slice() {
        [] => {
            return Err(ctx.err(
                format!("{f}.http_filters"),
                "the router filter (envoy.filters.http.router) is required as the last filter",
            ));
        }
        filters => {
            for (i, hf) in filters.iter().enumerate() {
                let ff = format!("{f}.http_filters[{i}]");
                use hpb::http_filter::ConfigType;
                let is_router = match &hf.config_type {
                    Some(ConfigType::TypedConfig(any)) => {
                        let r: Result<
                            envoy_types::pb::envoy::extensions::filters::http::router::v3::Router,
                            _,
                        > = decode_any(ctx, &format!("{ff}.typed_config"), any);
                        r.is_ok()
                    }
                    None => hf.name == "envoy.filters.http.router",
                    Some(_) => false,
                };
                if !is_router {
                    return Err(ctx.err(
                        ff,
                        format!(
                            "HTTP filter `{}` is not supported (only envoy.filters.http.router)",
                            hf.name
                        ),
                    ));
                }
                if i + 1 != filters.len() {
                    return Err(ctx.err(ff, "the router must be the last HTTP filter"));
                }
            }
        }
    }
    let mut access_logs = Vec::new();
    for (i, al) in h.access_log.iter().enumerate() {
        access_logs
            .push(Arc::new(crate::access_log::from_proto(al).map_err(
                |e| ctx.err(format!("{f}.access_log[{i}]"), e.to_string()),
            )?));
    }
    let (mut websocket, mut connect) = (false, false);
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        let enabled = u.enabled.as_ref().is_none_or(|b| b.value);
        if !u.filters.is_empty() {
            return Err(ctx.err(
                format!("{f}.upgrade_configs[{i}].filters"),
                "per-upgrade filter chains are not supported",
            ));
        }
        match u.upgrade_type.to_ascii_lowercase().as_str() {
            "websocket" => websocket = enabled,
            "connect" => connect = enabled,
            other => {
                return Err(ctx.err(
                    format!("{f}.upgrade_configs[{i}].upgrade_type"),
                    format!("upgrade `{other}` is not supported"),
                ));
            }
        }
    }
    let max_request_headers_kb = h.max_request_headers_kb.as_ref().map_or(60, |v| v.value);
    if !(1..=8192).contains(&max_request_headers_kb) {
        return Err(ctx.err(
            format!("{f}.max_request_headers_kb"),
            "must be between 1 and 8192",
        ));
    }
    Ok(Hcm {
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        access_logs,
        websocket,
        connect,
        generate_request_id: h.generate_request_id.as_ref().is_none_or(|b| b.value),
        max_request_headers_kb,
        use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
        server_name: if h.server_name.is_empty() {
            None
        } else {
            Some(
                http::HeaderValue::from_str(&h.server_name)
                    .map_err(|_| ctx.err(format!("{f}.server_name"), "not a valid header value"))?,
            )
        },
        stream_idle_timeout: match &h.stream_idle_timeout {
            None => Some(Duration::from_secs(300)),
            Some(d) => Some(crate::config::duration(
                ctx,
                &format!("{f}.stream_idle_timeout"),
                d,
            )?)
            .filter(|d| !d.is_zero()),
        },
        request_timeout: opt_duration(
            ctx,
            &format!("{f}.request_timeout"),
            h.request_timeout.as_ref(),
        )?
        .filter(|d| !d.is_zero()),
        stats: stats.http(&h.stat_prefix),
    })
}
