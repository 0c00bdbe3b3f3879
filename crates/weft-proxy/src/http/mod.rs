//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 on a downstream connection and runs
//! each request through routing, the HTTP filters before the router (`fault`, `cors`) and the
//! router filter (`proxy`, with `mirror`), mapping its own replies (`local_reply`). Its config
//! is compiled from Envoy's `HttpConnectionManager`.

pub mod body;
pub mod cors;
pub mod fault;
pub mod fraction;
pub mod local_reply;
pub mod mirror;
pub mod proxy;

use crate::access_log::AccessLogger;
use crate::config::{ConfigError, Ctx, decode_any, opt_duration, timeout};
use crate::router::{RouteTable, route_table};
use crate::stats::{HttpStats, Stats};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hpb;
use http::HeaderName;
use http::header;
use std::sync::Arc;
use std::time::Duration;

pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The headers that belong to one connection of a response (RFC 9110 §7.6.1, plus the legacy
/// ones): never forwarded. The proxy strips them from responses; the HTTP/1 client drops them
/// as it parses.
pub(crate) static RESPONSE_HOP_BY_HOP: [&HeaderName; 5] = [
    &header::CONNECTION,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

/// A decimal number of ASCII digits only — no sign, no space, unlike `str::parse` — for the
/// numbers the request path parses out of headers (ports, `content-length`); `None` when empty
/// or past `u64`.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

pub(crate) fn is_response_hop_by_hop(n: &HeaderName) -> bool {
    RESPONSE_HOP_BY_HOP.contains(&n)
}

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
    /// Envoy's default is 5 minutes; `0s` disables it.
    pub stream_idle_timeout: Option<Duration>,
    /// Time to receive a request's headers (HTTP/1), off by default as in Envoy.
    pub request_headers_timeout: Option<Duration>,
    pub stats: Arc<HttpStats>,
    /// The fault filter (`envoy.filters.http.fault`), when in the chain.
    pub fault: Option<fault::FaultFilter>,
    /// The CORS filter (`envoy.filters.http.cors`) is in the chain.
    pub cors: bool,
    /// CORS runs before fault injection (the filters' order in the chain).
    pub cors_first: bool,
    pub local_reply: Option<local_reply::LocalReply>,
    /// The router filter's own settings.
    pub router: RouterOptions,
}

/// What the router filter (`envoy.extensions.filters.http.router.v3.Router`) is told.
#[derive(Debug, Clone, Copy)]
pub struct RouterOptions {
    /// `suppress_envoy_headers`: add no `x-envoy-*` header of the router's own
    /// (`x-envoy-upstream-service-time`, `x-envoy-overloaded`, `x-envoy-original-path`).
    pub suppress_envoy_headers: bool,
    /// `dynamic_stats` (default true): count each upstream response in the cluster's
    /// `upstream_rq_xx` and `upstream_rq_time`.
    pub dynamic_stats: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            suppress_envoy_headers: false,
            dynamic_stats: true,
        }
    }
}

pub fn hcm(
    ctx: &Ctx,
    f: &str,
    h: &hpb::HttpConnectionManager,
    stats: &Stats,
) -> Result<Hcm, ConfigError> {
    // `request_timeout` bounds the time to receive a whole request body; Weft does not enforce
    // it, so only its disabled value is accepted.
    if opt_duration(
        ctx,
        &format!("{f}.request_timeout"),
        h.request_timeout.as_ref(),
    )?
    .is_some_and(|d| !d.is_zero())
    {
        return Err(ctx.err(
            format!("{f}.request_timeout"),
            "not supported (only 0s, disabled); use the route timeout or stream_idle_timeout",
        ));
    }
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
    let (mut fault, mut cors, mut cors_first) = (None, false, false);
    let mut router = RouterOptions::default();
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
                let last = i + 1 == filters.len();
                match http_filter(ctx, &ff, hf)? {
                    HttpFilter::Router(_) if !last => {
                        return Err(ctx.err(ff, "the router must be the last HTTP filter"));
                    }
                    HttpFilter::Router(options) => router = options,
                    _ if last => {
                        return Err(ctx.err(
                            ff,
                            "the router filter (envoy.filters.http.router) must be the last filter",
                        ));
                    }
                    HttpFilter::Fault(cfg) => {
                        if fault.replace(fault::FaultFilter::new(cfg)).is_some() {
                            return Err(ctx.err(ff, "the fault filter appears twice"));
                        }
                    }
                    HttpFilter::Cors => {
                        if cors {
                            return Err(ctx.err(ff, "the CORS filter appears twice"));
                        }
                        cors = true;
                        cors_first = fault.is_none();
                    }
                }
            }
        }
    }
    let local_reply = h
        .local_reply_config
        .as_ref()
        .map(|c| local_reply::compile(ctx, &format!("{f}.local_reply_config"), c))
        .transpose()?;
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
        stream_idle_timeout: timeout(
            ctx,
            &format!("{f}.stream_idle_timeout"),
            h.stream_idle_timeout.as_ref(),
            Some(Duration::from_secs(300)),
        )?,
        request_headers_timeout: timeout(
            ctx,
            &format!("{f}.request_headers_timeout"),
            h.request_headers_timeout.as_ref(),
            None,
        )?,
        stats: stats.http(&h.stat_prefix),
        fault,
        cors,
        cors_first,
        local_reply,
        router,
    })
}

/// One compiled HTTP filter of the chain.
enum HttpFilter {
    Router(RouterOptions),
    /// The filter-level config, unless it injects nothing.
    Fault(Option<fault::FaultConfig>),
    Cors,
}

fn http_filter(ctx: &Ctx, ff: &str, hf: &hpb::HttpFilter) -> Result<HttpFilter, ConfigError> {
    use hpb::http_filter::ConfigType;
    let unsupported = || {
        ctx.err(
            ff,
            format!(
                "HTTP filter `{}` is not supported (only envoy.filters.http.fault, envoy.filters.http.cors and envoy.filters.http.router)",
                hf.name
            ),
        )
    };
    let tf = format!("{ff}.typed_config");
    match &hf.config_type {
        Some(ConfigType::TypedConfig(any)) => {
            match any.type_url.rsplit('/').next().unwrap_or_default() {
                "envoy.extensions.filters.http.router.v3.Router" => {
                    let r: envoy_types::pb::envoy::extensions::filters::http::router::v3::Router =
                        decode_any(ctx, &tf, any)?;
                    Ok(HttpFilter::Router(RouterOptions {
                        suppress_envoy_headers: r.suppress_envoy_headers,
                        dynamic_stats: r.dynamic_stats.is_none_or(|b| b.value),
                    }))
                }
                fault::TYPE => {
                    let cfg: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                        decode_any(ctx, &tf, any)?;
                    let cfg = fault::compile(ctx, &tf, &cfg)?;
                    Ok(HttpFilter::Fault(Some(cfg).filter(|c| !c.is_noop())))
                }
                cors::FILTER_TYPE => {
                    let _: envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors =
                        decode_any(ctx, &tf, any)?;
                    Ok(HttpFilter::Cors)
                }
                _ => Err(unsupported()),
            }
        }
        None => match hf.name.as_str() {
            "envoy.filters.http.router" => Ok(HttpFilter::Router(RouterOptions::default())),
            fault::NAME => Ok(HttpFilter::Fault(None)),
            cors::NAME => Ok(HttpFilter::Cors),
            _ => Err(unsupported()),
        },
        Some(_) => Err(unsupported()),
    }
}
