//! The HTTP route table: virtual hosts chosen by authority, routes matched on path, headers,
//! method and query, and the action each route takes (forward to a cluster or a weighted set of
//! clusters, redirect, answer directly), with header mutations.
//!
//! Built once per RouteConfiguration from Envoy's `envoy.config.route.v3` types; matching is pure
//! and allocation-free on the common path. This module decides *where* a request goes; it must
//! not do I/O.

// Deprecated Envoy fields are still accepted: existing configs use them.
#![allow(deprecated)]

use crate::config::{ConfigError, Ctx, decode_any};
use crate::fastmap::FastMap;
use crate::upstream::hash::{HashPolicy, hash_policies_from_route};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A compiled RouteConfiguration.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    vhosts: Vec<VirtualHost>,
    exact: FastMap<String, usize>,
    /// `*.example.com` → (".example.com", idx), longest suffix first.
    suffix: Vec<(String, usize)>,
    /// `example.*` → ("example.", idx), longest prefix first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// Whether clusters named by routes must exist when the table is loaded (Envoy's
    /// `validate_clusters`, default true for inline route configs).
    pub validate_clusters: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// The virtual host's own per-filter configs (already merged into each route's).
    pub filters: FilterConfigs,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// Per-filter configs in force for this route: the route's, else the virtual host's (CORS
    /// policies merged attribute by attribute).
    pub filters: FilterConfigs,
}

/// Per-route / per-virtual-host configs of the HTTP filters (`typed_per_filter_config`, and the
/// deprecated `cors` fields). They apply only when the connection manager runs the filter.
#[derive(Debug, Default, Clone)]
pub struct FilterConfigs {
    pub fault: Option<Arc<crate::http::fault::FaultConfig>>,
    pub cors: Option<Arc<crate::http::cors::CorsPolicy>>,
}

#[derive(Debug)]
pub enum Action {
    Forward(RouteAction),
    Redirect(Redirect),
    Direct { status: StatusCode, body: Bytes },
}

#[derive(Debug)]
pub struct RouteAction {
    pub clusters: ClusterChoice,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    /// None = no timeout (Envoy's explicit 0); default 15 s.
    pub timeout: Option<Duration>,
    /// `idle_timeout`: the route's own stream idle timeout, in place of the connection
    /// manager's `stream_idle_timeout`; see [`RouteAction::stream_idle_timeout`].
    pub idle_timeout: RouteIdle,
    pub retry_policy: Option<Arc<RetryPolicy>>,
    pub hash_policies: Vec<HashPolicy>,
    pub upgrades: Upgrades,
    /// `request_mirror_policies`.
    pub mirrors: Vec<crate::http::mirror::MirrorPolicy>,
}

/// A route's `idle_timeout` as Envoy reads it: absent leaves the connection manager's
/// `stream_idle_timeout` in force, `0s` turns any stream idle timeout off for the route.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RouteIdle {
    #[default]
    Inherit,
    Off,
    After(Duration),
}

impl RouteAction {
    /// How long a stream on this route may go without a byte either way (`None` = forever),
    /// given the connection manager's `stream_idle_timeout`.
    pub fn stream_idle_timeout(&self, hcm: Option<Duration>) -> Option<Duration> {
        match self.idle_timeout {
            RouteIdle::Inherit => hcm,
            RouteIdle::Off => None,
            RouteIdle::After(d) => Some(d),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Upgrades {
    /// Route-level override of the connection manager's websocket setting.
    pub websocket: Option<bool>,
    /// CONNECT terminated here (`connect_config` present): the proxy opens the TCP tunnel.
    pub connect_terminate: bool,
}

#[derive(Debug)]
pub enum ClusterChoice {
    Single(String),
    Weighted {
        clusters: Vec<WeightedTarget>,
        total: u64,
    },
    Header(HeaderName),
}

#[derive(Debug)]
pub struct WeightedTarget {
    pub name: String,
    pub weight: u64,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
}

impl ClusterChoice {
    /// Picks the cluster for one request. `random` yields a uniformly random u64; it is only
    /// called for a weighted choice.
    pub fn pick<'a>(
        &'a self,
        headers: &HeaderMap,
        random: impl FnOnce() -> u64,
    ) -> Option<(std::borrow::Cow<'a, str>, Option<&'a WeightedTarget>)> {
        match self {
            ClusterChoice::Single(n) => Some((n.as_str().into(), None)),
            ClusterChoice::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (v.to_string().into(), None)),
            ClusterChoice::Weighted { clusters, total } => {
                let mut point = random() % total;
                for c in clusters {
                    if point < c.weight {
                        return Some((c.name.as_str().into(), Some(c)));
                    }
                    point -= c.weight;
                }
                None
            }
        }
    }
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub strip_query: bool,
    pub status: StatusCode,
}

/// Envoy retry policy, compiled.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// Envoy's bounded host selection for retries: 1 + `host_selection_retry_max_attempts`
    /// picks (`upstream::host::LbContext::max_picks`); None when that is unset or 0, which
    /// keeps weft's search for an untried healthy host.
    pub max_picks: Option<u32>,
}

/// Conditions from `retry_on`, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(pub u32);

impl RetryOn {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const REFUSED_STREAM: u32 = 1 << 5;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    pub const GRPC_CANCELLED: u32 = 1 << 7;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 8;
    pub const GRPC_INTERNAL: u32 = 1 << 9;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 10;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 11;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 12;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    pub fn parse(ctx: &Ctx, field: &str, s: &str) -> Result<RetryOn, ConfigError> {
        let mut bits = 0;
        for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            bits |= match tok {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" => Self::RESET,
                "reset-before-request" => Self::RESET_BEFORE_REQUEST,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "refused-stream" => Self::REFUSED_STREAM,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "internal" => Self::GRPC_INTERNAL,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                other => return Err(ctx.err(field, format!("unknown retry condition `{other}`"))),
            };
        }
        Ok(RetryOn(bits))
    }
}

/// Path / header / query conditions of one route.
#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    pub grpc_only: bool,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    SeparatedPrefix(String),
    Connect,
}

#[derive(Debug)]
pub enum Pseudo {
    Method,
    Authority,
    Path,
    Scheme,
}

#[derive(Debug)]
pub struct HeaderMatcher {
    pub name: Result<HeaderName, Pseudo>,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub missing_as_empty: bool,
}

#[derive(Debug)]
pub enum HeaderMatchKind {
    Str(StrMatch),
    Present(bool),
    Range(i64, i64),
}

#[derive(Debug)]
pub enum StrMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

impl StrMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(s, false) => v == s,
            StrMatch::Exact(s, true) => v.eq_ignore_ascii_case(s),
            StrMatch::Prefix(s, false) => v.starts_with(s.as_str()),
            StrMatch::Prefix(s, true) => {
                v.len() >= s.len()
                    && v.is_char_boundary(s.len())
                    && v[..s.len()].eq_ignore_ascii_case(s)
            }
            StrMatch::Suffix(s, false) => v.ends_with(s.as_str()),
            StrMatch::Suffix(s, true) => {
                v.len() >= s.len()
                    && v.is_char_boundary(v.len() - s.len())
                    && v[v.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            StrMatch::Contains(s, false) => v.contains(s.as_str()),
            StrMatch::Contains(s, true) => v.to_ascii_lowercase().contains(&s.to_ascii_lowercase()),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
pub struct QueryMatcher {
    pub name: String,
    /// None = present match.
    pub value: Option<StrMatch>,
    pub present: bool,
}

/// Header add/set/remove, compiled.
#[derive(Debug, Default)]
pub struct HeaderMutation {
    pub remove: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderValue, AppendAction)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
    pub fn apply(&self, h: &mut HeaderMap) {
        for r in &self.remove {
            h.remove(r);
        }
        for (k, v, a) in &self.add {
            match a {
                AppendAction::Append => {
                    h.append(k.clone(), v.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !h.contains_key(k) {
                        h.insert(k.clone(), v.clone());
                    }
                }
                AppendAction::Overwrite => {
                    h.insert(k.clone(), v.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if h.contains_key(k) {
                        h.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}

/// What the request looks like to the matcher.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    pub is_grpc: bool,
}

impl RouteTable {
    /// Every cluster a route names statically, with the route's field path.
    pub fn referenced_clusters(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (vi, vh) in self.vhosts.iter().enumerate() {
            for (ri, r) in vh.routes.iter().enumerate() {
                if let Action::Forward(ra) = &r.action {
                    let f = format!("virtual_hosts[{vi}].routes[{ri}].route");
                    match &ra.clusters {
                        ClusterChoice::Single(c) => out.push((format!("{f}.cluster"), c.as_str())),
                        ClusterChoice::Weighted { clusters, .. } => {
                            for (i, c) in clusters.iter().enumerate() {
                                out.push((
                                    format!("{f}.weighted_clusters.clusters[{i}].name"),
                                    c.name.as_str(),
                                ));
                            }
                        }
                        ClusterChoice::Header(_) => {}
                    }
                    for (i, m) in ra.mirrors.iter().enumerate() {
                        out.push((
                            format!("{f}.request_mirror_policies[{i}].cluster"),
                            m.cluster.as_str(),
                        ));
                    }
                }
            }
        }
        out
    }

    pub fn vhost(&self, authority: &str) -> Option<&VirtualHost> {
        if self.exact.is_empty() && self.suffix.is_empty() && self.prefix.is_empty() {
            // Only `*` (or nothing) to match: the authority does not matter.
            return self.any.map(|i| &self.vhosts[i]);
        }
        let lower;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        self.vhost_for(host)
            .or_else(|| {
                // Port-aware first; then the host without its port (so `example.com` serves
                // `example.com:8080` unless a port-specific domain exists).
                let (h, _) = split_port(host);
                if h.len() != host.len() {
                    self.vhost_for(h)
                } else {
                    None
                }
            })
            .or(self.any)
            .map(|i| &self.vhosts[i])
    }

    fn vhost_for(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        for (suffix, i) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        for (prefix, i) in &self.prefix {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(*i);
            }
        }
        None
    }
}

/// Splits `host:port` (and `[v6]:port`) into host and optional port. Byte-wise: it runs on
/// every request, where `rsplit_once` and `str::parse` cost ~300 instructions together.
pub fn split_port(authority: &str) -> (&str, Option<u16>) {
    let b = authority.as_bytes();
    if b.first() == Some(&b'[') {
        return match b.iter().position(|&c| c == b']') {
            Some(end) => {
                let port = b[end + 1..].strip_prefix(b":").and_then(parse_port);
                (&authority[..end + 1], port)
            }
            None => (authority, None),
        };
    }
    match b.iter().rposition(|&c| c == b':') {
        // More than one colon: a bare IPv6 address, no port.
        Some(colon) if !b[..colon].contains(&b':') => match parse_port(&b[colon + 1..]) {
            Some(port) => (&authority[..colon], Some(port)),
            None => (authority, None),
        },
        _ => (authority, None),
    }
}

/// A port number: ASCII digits only (no sign), at most 65535; leading zeros allowed, as
/// `str::parse` allowed them.
fn parse_port(digits: &[u8]) -> Option<u16> {
    u16::try_from(crate::http::parse_decimal(digits)?).ok()
}

impl VirtualHost {
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let is_connect = req.method == Method::CONNECT;
        let path = req.path_and_query.split('?').next().unwrap_or("");
        let ok = match &self.path {
            PathMatch::Connect => is_connect,
            _ if is_connect => false,
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, self.case_sensitive)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        };
        if !ok || (self.grpc_only && !req.is_grpc) {
            return false;
        }
        self.headers.iter().all(|m| m.matches(req))
            && self.query.iter().all(|q| q.matches(req.path_and_query))
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.is_char_boundary(prefix.len())
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
    }
}

impl HeaderMatcher {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let joined;
        let value: Option<&str> = match &self.name {
            Err(Pseudo::Method) => Some(req.method.as_str()),
            Err(Pseudo::Authority) => Some(req.authority),
            Err(Pseudo::Path) => Some(req.path_and_query),
            Err(Pseudo::Scheme) => Some(req.scheme),
            Ok(name) => {
                let mut it = req.headers.get_all(name).iter();
                match (it.next(), it.next()) {
                    (None, _) => None,
                    (Some(v), None) => v.to_str().ok(),
                    (Some(first), Some(second)) => {
                        // Envoy matches multiple values joined by ','.
                        let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
                        for v in std::iter::once(second).chain(it) {
                            s.push(',');
                            s.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        joined = s;
                        Some(joined.as_str())
                    }
                }
            }
        };
        let value = match value {
            None if self.missing_as_empty => Some(""),
            v => v,
        };
        let m = match (&self.kind, value) {
            (HeaderMatchKind::Present(want), v) => v.is_some() == *want,
            (_, None) => return false, // a missing header never matches, even inverted
            (HeaderMatchKind::Str(s), Some(v)) => s.matches(v),
            (HeaderMatchKind::Range(lo, hi), Some(v)) => {
                v.parse::<i64>().is_ok_and(|n| n >= *lo && n < *hi)
            }
        };
        m != self.invert
    }
}

impl QueryMatcher {
    fn matches(&self, path_and_query: &str) -> bool {
        let Some((_, q)) = path_and_query.split_once('?') else {
            return false;
        };
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == self.name {
                return match &self.value {
                    None => self.present,
                    Some(m) => m.matches(v),
                };
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Translation from Envoy resources.

pub fn string_match(
    ctx: &Ctx,
    field: &str,
    m: &mpb::StringMatcher,
) -> Result<StrMatch, ConfigError> {
    use mpb::string_matcher::MatchPattern as P;
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(P::Exact(s)) => StrMatch::Exact(s.clone(), ic),
        Some(P::Prefix(s)) => StrMatch::Prefix(s.clone(), ic),
        Some(P::Suffix(s)) => StrMatch::Suffix(s.clone(), ic),
        Some(P::Contains(s)) => StrMatch::Contains(s.clone(), ic),
        // Envoy: `ignore_case` "has no effect for the safe_regex match" (use `(?i)` instead).
        Some(P::SafeRegex(r)) => {
            StrMatch::Regex(safe_regex(ctx, &format!("{field}.safe_regex"), r)?)
        }
        Some(P::Custom(_)) => {
            return Err(ctx.err(
                format!("{field}.custom"),
                "custom string matchers are not supported",
            ));
        }
        None => return Err(ctx.err(field, "a match pattern is required")),
    })
}

/// The pattern of a `RegexMatcher` (`field` is its path). RE2's `max_program_size` has no
/// counterpart in the regex crate (its limit is in bytes of compiled program, not RE2
/// instructions), so setting it is refused rather than approximated; an empty `google_re2` is
/// fine.
pub fn regex_pattern<'a>(
    ctx: &Ctx,
    field: &str,
    r: &'a mpb::RegexMatcher,
) -> Result<&'a str, ConfigError> {
    use mpb::regex_matcher::EngineType;
    if let Some(EngineType::GoogleRe2(g)) = &r.engine_type
        && g.max_program_size.is_some()
    {
        return Err(ctx.err(
            format!("{field}.google_re2.max_program_size"),
            "not supported: RE2 program sizes have no equivalent in weft's regex engine (every \
             regex is limited to 1 MiB compiled); leave it unset",
        ));
    }
    Ok(&r.regex)
}

/// Compiles a `RegexMatcher` that must match the whole input, as Envoy's safe_regex does.
pub fn safe_regex(ctx: &Ctx, field: &str, r: &mpb::RegexMatcher) -> Result<Regex, ConfigError> {
    let re = regex_pattern(ctx, field, r)?;
    regex(ctx, &format!("{field}.regex"), re)
}

/// Compiles an RE2-style regex that must match the whole input, as Envoy's safe_regex does.
/// Case-sensitive: Envoy's `case_sensitive` / `ignore_case` never apply to regexes.
pub fn regex(ctx: &Ctx, field: &str, re: &str) -> Result<Regex, ConfigError> {
    let anchored = format!("^(?:{re})$");
    regex::RegexBuilder::new(&anchored)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ctx.err(field, format!("invalid regex `{re}`: {e}")))
}

/// Compiles the `pattern` of a `RegexMatchAndSubstitute` (not anchored: it replaces matches).
fn rewrite_regex(
    ctx: &Ctx,
    field: &str,
    r: Option<&mpb::RegexMatcher>,
) -> Result<Regex, ConfigError> {
    let re = match r {
        Some(r) => regex_pattern(ctx, field, r)?,
        None => "",
    };
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ctx.err(field, format!("invalid regex `{re}`: {e}")))
}

fn header_name(ctx: &Ctx, field: &str, n: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| ctx.err(field, format!("`{n}` is not a valid header name")))
}

pub fn header_mutation(
    ctx: &Ctx,
    field: &str,
    add: &[core::HeaderValueOption],
    remove: &[String],
) -> Result<HeaderMutation, ConfigError> {
    let mut m = HeaderMutation::default();
    for (i, r) in remove.iter().enumerate() {
        m.remove.push(header_name(
            ctx,
            &format!("{field}_headers_to_remove[{i}]"),
            r,
        )?);
    }
    for (i, o) in add.iter().enumerate() {
        let f = format!("{field}_headers_to_add[{i}]");
        let Some(h) = &o.header else {
            return Err(ctx.err(f, "`header` is required"));
        };
        let name = header_name(ctx, &format!("{f}.header.key"), &h.key)?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        // Envoy's router drops an entry whose value is empty (whatever its append action)
        // unless `keep_empty_value` is set.
        if raw.is_empty() && !o.keep_empty_value {
            continue;
        }
        if raw.iter().filter(|b| **b == b'%').count() >= 2 {
            return Err(ctx.err(
                format!("{f}.header.value"),
                "header value formatters (`%...%`) are not supported yet",
            ));
        }
        let value = HeaderValue::from_bytes(raw)
            .map_err(|_| ctx.err(format!("{f}.header.value"), "not a valid header value"))?;
        // append_action: APPEND_IF_EXISTS_OR_ADD(0), ADD_IF_ABSENT(1), OVERWRITE_IF_EXISTS_OR_ADD(2), OVERWRITE_IF_EXISTS(3).
        let action = match (o.append.as_ref().map(|b| b.value), o.append_action) {
            (Some(false), _) => AppendAction::Overwrite,
            (_, 0) => AppendAction::Append,
            (_, 1) => AppendAction::AddIfAbsent,
            (_, 2) => AppendAction::Overwrite,
            (_, 3) => AppendAction::OverwriteIfExists,
            (_, n) => {
                return Err(ctx.err(
                    format!("{f}.append_action"),
                    format!("unknown append action {n}"),
                ));
            }
        };
        m.add.push((name, value, action));
    }
    Ok(m)
}

/// Compiles a RouteConfiguration.
pub fn route_table(rc: &rpb::RouteConfiguration) -> Result<RouteTable, ConfigError> {
    let ctx = Ctx::new("route_config", &rc.name);
    let mut t = RouteTable {
        name: rc.name.clone(),
        vhosts: Vec::with_capacity(rc.virtual_hosts.len()),
        exact: FastMap::default(),
        suffix: Vec::new(),
        prefix: Vec::new(),
        any: None,
        request_headers: header_mutation(
            &ctx,
            "request",
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
        )?,
        response_headers: header_mutation(
            &ctx,
            "response",
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
        )?,
        validate_clusters: rc.validate_clusters.as_ref().is_none_or(|b| b.value),
    };
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let vf = format!("virtual_hosts[{vi}]");
        for (di, d) in vh.domains.iter().enumerate() {
            let d = d.to_ascii_lowercase();
            let df = format!("{vf}.domains[{di}]");
            let dup = |ctx: &Ctx| {
                ctx.err(
                    df.clone(),
                    format!("domain `{d}` is already used by another virtual host"),
                )
            };
            if d == "*" {
                if t.any.replace(vi).is_some() {
                    return Err(dup(&ctx));
                }
            } else if let Some(s) = d.strip_prefix('*') {
                if t.suffix.iter().any(|(x, _)| x == s) {
                    return Err(dup(&ctx));
                }
                t.suffix.push((s.to_string(), vi));
            } else if let Some(p) = d.strip_suffix('*') {
                if t.prefix.iter().any(|(x, _)| x == p) {
                    return Err(dup(&ctx));
                }
                t.prefix.push((p.to_string(), vi));
            } else if d.contains('*') {
                return Err(ctx.err(
                    df,
                    "a wildcard is only allowed at the start or the end of a domain",
                ));
            } else if t.exact.insert(d.clone(), vi).is_some() {
                return Err(dup(&ctx));
            }
        }
        let retry = vh
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(&ctx, &format!("{vf}.retry_policy"), p))
            .transpose()?
            .map(Arc::new);
        let vh_filters = filter_configs(
            &ctx,
            &vf,
            &vh.typed_per_filter_config,
            vh.cors.as_ref().map(|c| (format!("{vf}.cors"), c)),
        )?;
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (ri, r) in vh.routes.iter().enumerate() {
            routes.push(route(
                &ctx,
                &format!("{vf}.routes[{ri}]"),
                r,
                retry.as_ref(),
                &vh_filters,
            )?);
        }
        t.vhosts.push(VirtualHost {
            name: vh.name.clone(),
            routes,
            request_headers: header_mutation(
                &ctx,
                &format!("{vf}.request"),
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
            )?,
            response_headers: header_mutation(
                &ctx,
                &format!("{vf}.response"),
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?,
            retry_policy: retry,
            filters: vh_filters,
        });
    }
    t.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    t.prefix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    Ok(t)
}

/// Compiles `typed_per_filter_config` (fault and CORS) plus a deprecated `cors` field.
fn filter_configs(
    ctx: &Ctx,
    f: &str,
    typed: &HashMap<String, envoy_types::pb::google::protobuf::Any>,
    deprecated_cors: Option<(String, &rpb::CorsPolicy)>,
) -> Result<FilterConfigs, ConfigError> {
    use crate::http::{cors, fault};
    let mut out = FilterConfigs::default();
    if let Some((cf, c)) = deprecated_cors {
        out.cors = Some(Arc::new(cors::from_route_policy(ctx, &cf, c)?));
    }
    let mut keys: Vec<&String> = typed.keys().collect();
    keys.sort();
    for k in keys {
        let Some(any) = typed.get(k) else { continue };
        let kf = format!("{f}.typed_per_filter_config[{k:?}]");
        match k.as_str() {
            fault::NAME => {
                let h: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                    decode_any(ctx, &kf, any)?;
                out.fault = Some(Arc::new(fault::compile(ctx, &kf, &h)?));
            }
            cors::NAME => {
                let p: envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy =
                    decode_any(ctx, &kf, any)?;
                out.cors = Some(Arc::new(cors::from_filter_policy(ctx, &kf, &p)?));
            }
            other => {
                return Err(ctx.err(
                    kf,
                    format!(
                        "per-route config for `{other}` is not supported (only {} and {})",
                        fault::NAME,
                        cors::NAME
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn route(
    ctx: &Ctx,
    f: &str,
    r: &rpb::Route,
    vh_retry: Option<&Arc<RetryPolicy>>,
    vh_filters: &FilterConfigs,
) -> Result<Route, ConfigError> {
    let Some(m) = &r.r#match else {
        return Err(ctx.err(format!("{f}.match"), "`match` is required"));
    };
    let matcher = route_match(ctx, &format!("{f}.match"), m)?;
    use rpb::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            Action::Forward(route_action(ctx, &format!("{f}.route"), ra, vh_retry)?)
        }
        Some(A::Redirect(rd)) => Action::Redirect(redirect(ctx, &format!("{f}.redirect"), rd)?),
        Some(A::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| {
                    ctx.err(
                        format!("{f}.direct_response.status"),
                        format!("{} is not a valid status", d.status),
                    )
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => Bytes::new(),
                Some(core::data_source::Specifier::InlineString(s)) => Bytes::from(s.clone()),
                Some(core::data_source::Specifier::InlineBytes(b)) => Bytes::from(b.clone()),
                Some(core::data_source::Specifier::Filename(p)) => {
                    Bytes::from(std::fs::read(p).map_err(|e| {
                        ctx.err(
                            format!("{f}.direct_response.body.filename"),
                            format!("cannot read {p}: {e}"),
                        )
                    })?)
                }
                Some(core::data_source::Specifier::EnvironmentVariable(v)) => {
                    Bytes::from(std::env::var(v).map_err(|_| {
                        ctx.err(
                            format!("{f}.direct_response.body"),
                            format!("${v} is not set"),
                        )
                    })?)
                }
            };
            Action::Direct { status, body }
        }
        Some(_) => {
            return Err(ctx.err(
                f,
                "only route, redirect and direct_response actions are supported",
            ));
        }
        None => {
            return Err(ctx.err(
                f,
                "an action (route, redirect or direct_response) is required",
            ));
        }
    };
    let own = filter_configs(
        ctx,
        f,
        &r.typed_per_filter_config,
        match &r.action {
            Some(A::Route(ra)) => ra.cors.as_ref().map(|c| (format!("{f}.route.cors"), c)),
            _ => None,
        },
    )?;
    let filters = FilterConfigs {
        fault: own.fault.or_else(|| vh_filters.fault.clone()),
        cors: match (own.cors, &vh_filters.cors) {
            (Some(r), Some(v)) => Some(Arc::new(r.merged_over(v))),
            (r, v) => r.or_else(|| v.clone()),
        },
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        filters,
        request_headers: header_mutation(
            ctx,
            &format!("{f}.request"),
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
        )?,
        response_headers: header_mutation(
            ctx,
            &format!("{f}.response"),
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
    })
}

fn route_match(ctx: &Ctx, f: &str, m: &rpb::RouteMatch) -> Result<RouteMatch, ConfigError> {
    use rpb::route_match::PathSpecifier as P;
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        // Envoy: `case_sensitive` is "ignored for safe_regex matching".
        Some(P::SafeRegex(r)) => PathMatch::Regex(safe_regex(ctx, &format!("{f}.safe_regex"), r)?),
        Some(P::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(p.clone()),
        Some(P::ConnectMatcher(_)) => PathMatch::Connect,
        Some(P::PathMatchPolicy(_)) => return Err(ctx.err(format!("{f}.path_match_policy"), "not supported")),
        None => return Err(ctx.err(f, "a path specifier (prefix, path, safe_regex, path_separated_prefix or connect_matcher) is required")),
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_matcher(ctx, &format!("{f}.headers[{i}]"), h)?);
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let (value, present) = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => (
                Some(string_match(
                    ctx,
                    &format!("{f}.query_parameters[{i}].string_match"),
                    s,
                )?),
                true,
            ),
            Some(Q::PresentMatch(p)) => (None, *p),
            None => (None, true),
        };
        query.push(QueryMatcher {
            name: q.name.clone(),
            value,
            present,
        });
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
        query,
        grpc_only: m.grpc.is_some(),
    })
}

/// Compiles one `HeaderMatcher` (`hf` is its field path).
pub fn header_matcher(
    ctx: &Ctx,
    hf: &str,
    h: &rpb::HeaderMatcher,
) -> Result<HeaderMatcher, ConfigError> {
    use rpb::header_matcher::HeaderMatchSpecifier as H;
    let kind = match &h.header_match_specifier {
        Some(H::ExactMatch(s)) => HeaderMatchKind::Str(StrMatch::Exact(s.clone(), false)),
        Some(H::PrefixMatch(s)) => HeaderMatchKind::Str(StrMatch::Prefix(s.clone(), false)),
        Some(H::SuffixMatch(s)) => HeaderMatchKind::Str(StrMatch::Suffix(s.clone(), false)),
        Some(H::ContainsMatch(s)) => HeaderMatchKind::Str(StrMatch::Contains(s.clone(), false)),
        Some(H::SafeRegexMatch(r)) => HeaderMatchKind::Str(StrMatch::Regex(safe_regex(
            ctx,
            &format!("{hf}.safe_regex_match"),
            r,
        )?)),
        Some(H::StringMatch(s)) => {
            HeaderMatchKind::Str(string_match(ctx, &format!("{hf}.string_match"), s)?)
        }
        Some(H::PresentMatch(p)) => HeaderMatchKind::Present(*p),
        Some(H::RangeMatch(r)) => HeaderMatchKind::Range(r.start, r.end),
        None => HeaderMatchKind::Present(true),
    };
    let name = match h.name.as_str() {
        ":method" => Err(Pseudo::Method),
        ":authority" | "host" | "Host" => Err(Pseudo::Authority),
        ":path" => Err(Pseudo::Path),
        ":scheme" => Err(Pseudo::Scheme),
        n => Ok(header_name(ctx, &format!("{hf}.name"), n)?),
    };
    Ok(HeaderMatcher {
        name,
        kind,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

/// Most host picks a request attempt may make while avoiding hosts it already tried.
const MAX_HOST_SELECTION_PICKS: u32 = 100;

/// Envoy's `host_selection_retry_max_attempts` as a number of picks: the first pick plus that
/// many re-picks (unset = 0 re-picks, as in Envoy).
fn host_selection_picks(ctx: &Ctx, f: &str, p: &rpb::RetryPolicy) -> Result<u32, ConfigError> {
    let n = p.host_selection_retry_max_attempts;
    u32::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(1))
        .filter(|picks| *picks <= MAX_HOST_SELECTION_PICKS)
        .ok_or_else(|| {
            ctx.err(
                format!("{f}.host_selection_retry_max_attempts"),
                format!(
                    "{n} is out of range (0 to {})",
                    MAX_HOST_SELECTION_PICKS - 1
                ),
            )
        })
}

fn retry_policy(ctx: &Ctx, f: &str, p: &rpb::RetryPolicy) -> Result<RetryPolicy, ConfigError> {
    let base = p
        .retry_back_off
        .as_ref()
        .and_then(|b| b.base_interval.as_ref())
        .map(|d| crate::config::duration(ctx, &format!("{f}.retry_back_off.base_interval"), d))
        .transpose()?
        .unwrap_or(Duration::from_millis(25));
    let max = p
        .retry_back_off
        .as_ref()
        .and_then(|b| b.max_interval.as_ref())
        .map(|d| crate::config::duration(ctx, &format!("{f}.retry_back_off.max_interval"), d))
        .transpose()?
        .unwrap_or(base * 10);
    if base.is_zero() {
        return Err(ctx.err(
            format!("{f}.retry_back_off.base_interval"),
            "must be greater than zero",
        ));
    }
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        if pred.name != "envoy.retry_host_predicates.previous_hosts" {
            return Err(ctx.err(
                format!("{f}.retry_host_predicate[{i}]"),
                format!(
                    "`{}` is not supported (previous hosts are always avoided)",
                    pred.name
                ),
            ));
        }
    }
    let mut codes = Vec::with_capacity(p.retriable_status_codes.len());
    for (i, c) in p.retriable_status_codes.iter().enumerate() {
        codes.push(
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    ctx.err(
                        format!("{f}.retriable_status_codes[{i}]"),
                        format!("{c} is not an HTTP status"),
                    )
                })?,
        );
    }
    Ok(RetryPolicy {
        on: RetryOn::parse(ctx, &format!("{f}.retry_on"), &p.retry_on)?,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: crate::config::timeout(
            ctx,
            &format!("{f}.per_try_timeout"),
            p.per_try_timeout.as_ref(),
            None,
        )?,
        retriable_status_codes: codes,
        base_interval: base,
        max_interval: max.max(base),
        max_picks: Some(host_selection_picks(ctx, f, p)?).filter(|&n| n > 1),
    })
}

fn route_action(
    ctx: &Ctx,
    f: &str,
    ra: &rpb::RouteAction,
    vh_retry: Option<&Arc<RetryPolicy>>,
) -> Result<RouteAction, ConfigError> {
    use rpb::route_action::ClusterSpecifier as C;
    let clusters = match &ra.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterChoice::Single(c.clone()),
        Some(C::ClusterHeader(h)) => {
            ClusterChoice::Header(header_name(ctx, &format!("{f}.cluster_header"), h)?)
        }
        Some(C::WeightedClusters(w)) => {
            let mut clusters = Vec::new();
            let mut total = 0u64;
            for (i, c) in w.clusters.iter().enumerate() {
                let cf = format!("{f}.weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(ctx.err(format!("{cf}.name"), "a cluster name is required"));
                }
                let weight = c.weight.as_ref().map_or(0, |w| w.value) as u64;
                if weight == 0 {
                    continue;
                }
                total += weight;
                clusters.push(WeightedTarget {
                    name: c.name.clone(),
                    weight,
                    request_headers: header_mutation(
                        ctx,
                        &format!("{cf}.request"),
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                    )?,
                    response_headers: header_mutation(
                        ctx,
                        &format!("{cf}.response"),
                        &c.response_headers_to_add,
                        &c.response_headers_to_remove,
                    )?,
                });
            }
            if total == 0 {
                return Err(ctx.err(
                    format!("{f}.weighted_clusters"),
                    "the weights must not all be zero",
                ));
            }
            if let Some(t) = &w.total_weight
                && t.value as u64 != total
            {
                return Err(ctx.err(
                    format!("{f}.weighted_clusters.total_weight"),
                    format!("is {} but the weights sum to {total}", t.value),
                ));
            }
            ClusterChoice::Weighted { clusters, total }
        }
        _ => {
            return Err(ctx.err(
                f,
                "a cluster, cluster_header or weighted_clusters is required",
            ));
        }
    };
    let mut upgrades = Upgrades::default();
    for (i, u) in ra.upgrade_configs.iter().enumerate() {
        let enabled = u.enabled.as_ref().is_none_or(|b| b.value);
        match u.upgrade_type.to_ascii_lowercase().as_str() {
            "websocket" => upgrades.websocket = Some(enabled),
            "connect" => {
                if u.connect_config
                    .as_ref()
                    .is_some_and(|c| c.proxy_protocol_config.is_some())
                {
                    return Err(ctx.err(
                        format!("{f}.upgrade_configs[{i}].connect_config.proxy_protocol_config"),
                        "not supported",
                    ));
                }
                upgrades.connect_terminate = enabled && u.connect_config.is_some();
                if enabled && u.connect_config.is_none() {
                    return Err(ctx.err(
                        format!("{f}.upgrade_configs[{i}]"),
                        "forwarding CONNECT to an upstream proxy is not supported; add `connect_config: {}` to terminate CONNECT here",
                    ));
                }
            }
            other => {
                return Err(ctx.err(
                    format!("{f}.upgrade_configs[{i}].upgrade_type"),
                    format!("upgrade `{other}` is not supported"),
                ));
            }
        }
    }
    use rpb::route_action::HostRewriteSpecifier as HR;
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => None,
        Some(HR::HostRewriteLiteral(h)) => Some(
            HeaderValue::from_str(h)
                .map_err(|_| ctx.err(format!("{f}.host_rewrite_literal"), "not a valid host"))?,
        ),
        Some(_) => {
            return Err(ctx.err(
                f,
                "only host_rewrite_literal is supported among host rewrites",
            ));
        }
    };
    let regex_rewrite = ra
        .regex_rewrite
        .as_ref()
        .map(|r| {
            Ok::<_, ConfigError>((
                rewrite_regex(
                    ctx,
                    &format!("{f}.regex_rewrite.pattern"),
                    r.pattern.as_ref(),
                )?,
                envoy_subst(&r.substitution),
            ))
        })
        .transpose()?;
    let timeout = crate::config::timeout(
        ctx,
        &format!("{f}.timeout"),
        ra.timeout.as_ref(),
        Some(Duration::from_secs(15)),
    )?;
    let idle_timeout = match &ra.idle_timeout {
        None => RouteIdle::Inherit,
        Some(d) => match crate::config::duration(ctx, &format!("{f}.idle_timeout"), d)? {
            d if d.is_zero() => RouteIdle::Off,
            d => RouteIdle::After(d),
        },
    };
    let retry_policy = match &ra.retry_policy {
        Some(p) => Some(Arc::new(retry_policy(
            ctx,
            &format!("{f}.retry_policy"),
            p,
        )?)),
        None => vh_retry.cloned(),
    };
    let hash_policies =
        hash_policies_from_route(ra).map_err(|u| ctx.err(format!("{f}.{}", u.field), u.reason))?;
    let mirrors = crate::http::mirror::compile(
        ctx,
        &format!("{f}.request_mirror_policies"),
        &ra.request_mirror_policies,
    )?;
    Ok(RouteAction {
        mirrors,
        clusters,
        prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|s| !s.is_empty()),
        regex_rewrite,
        host_rewrite,
        timeout,
        idle_timeout,
        retry_policy,
        hash_policies,
        upgrades,
    })
}

/// Envoy substitutions use `\1`; the regex crate uses `${1}`.
fn envoy_subst(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str("${");
                out.push(*d);
                out.push('}');
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn redirect(ctx: &Ctx, f: &str, r: &rpb::RedirectAction) -> Result<Redirect, ConfigError> {
    use rpb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match r.response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        n => {
            return Err(ctx.err(
                format!("{f}.response_code"),
                format!("unknown redirect code {n}"),
            ));
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let (mut path, mut prefix_rewrite, mut regex_rewrite) = (None, None, None);
    match &r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => path = Some(p.clone()),
        Some(P::PrefixRewrite(p)) => prefix_rewrite = Some(p.clone()),
        Some(P::RegexRewrite(rr)) => {
            regex_rewrite = Some((
                rewrite_regex(
                    ctx,
                    &format!("{f}.regex_rewrite.pattern"),
                    rr.pattern.as_ref(),
                )?,
                envoy_subst(&rr.substitution),
            ));
        }
        Some(P::PathRewrite(_)) => {
            return Err(ctx.err(format!("{f}.path_rewrite"), "not supported"));
        }
        None => {}
    }
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p).map_err(|_| ctx.err(format!("{f}.port_redirect"), "out of range"))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host_redirect.clone()).filter(|s| !s.is_empty()),
        port,
        path,
        prefix_rewrite,
        regex_rewrite,
        strip_query: r.strip_query,
        status,
    })
}

impl Redirect {
    /// The Location for a request with this scheme, authority and path.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (orig_host, orig_port) = split_port(authority);
        let host = self.host.as_deref().unwrap_or(orig_host);
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = match (self.port, self.scheme.is_some()) {
            (Some(p), _) => Some(p),
            (None, true) => None,
            (None, false) => orig_port,
        }
        .filter(|p| *p != default_port);
        let (p, q) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new_path = if let Some(np) = &self.path {
            np.clone()
        } else if let (Some(rw), Some(mp)) = (&self.prefix_rewrite, matched_prefix) {
            format!("{rw}{}", p.get(mp.len()..).unwrap_or(""))
        } else if let Some((re, sub)) = &self.regex_rewrite {
            re.replace_all(p, sub.as_str()).into_owned()
        } else {
            p.to_string()
        };
        let mut loc = format!("{scheme}://{host}");
        if let Some(port) = port {
            loc.push_str(&format!(":{port}"));
        }
        loc.push_str(&new_path);
        if !self.strip_query
            && !new_path.contains('?')
            && let Some(q) = q
        {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_port_takes_a_port_only_where_there_is_one() {
        for (authority, host, port) in [
            ("example.com:8080", "example.com", Some(8080)),
            ("example.com", "example.com", None),
            ("10.0.0.1:0", "10.0.0.1", Some(0)),
            ("a:65535", "a", Some(65535)),
            ("a:65536", "a:65536", None),
            ("a:", "a:", None),
            ("a:+80", "a:+80", None),
            ("a:8x", "a:8x", None),
            ("a:000080", "a", Some(80)),
            ("a:0000065536", "a:0000065536", None),
            ("[::1]:443", "[::1]", Some(443)),
            ("[::1]", "[::1]", None),
            ("[::1]:", "[::1]", None),
            ("[::1", "[::1", None),
            ("::1", "::1", None),
            ("fe80::1:80", "fe80::1:80", None),
            ("", "", None),
        ] {
            assert_eq!(split_port(authority), (host, port), "{authority:?}");
        }
    }

    #[test]
    fn a_table_of_wildcards_only_serves_every_authority() {
        let t = table(
            "virtual_hosts:\n- {name: all, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}\n",
        );
        for a in ["", "x", "X.Example:80", "[::1]:8080", "::1"] {
            assert_eq!(t.vhost(a).map(|v| v.name.as_str()), Some("all"), "{a:?}");
        }
        let none = table(
            "virtual_hosts:\n- {name: one, domains: [a.b], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}\n",
        );
        assert!(none.vhost("c.d").is_none());
        assert_eq!(none.vhost("A.B:9").map(|v| v.name.as_str()), Some("one"));
    }

    fn table(yaml: &str) -> RouteTable {
        let rc: rpb::RouteConfiguration = weft_xds::from_yaml(yaml, "test").unwrap();
        route_table(&rc).unwrap()
    }

    fn view<'a>(m: &'a Method, auth: &'a str, path: &'a str, h: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: m,
            authority: auth,
            path_and_query: path,
            scheme: "http",
            headers: h,
            is_grpc: false,
        }
    }

    const RC: &str = r#"
name: r
virtual_hosts:
- name: exact
  domains: ["api.example.com", "api.example.com:8080"]
  routes:
  - name: exactpath
    match: {path: /exact}
    direct_response: {status: 200, body: {inline_string: exact}}
  - match: {safe_regex: {regex: "/re/[0-9]+"}}
    direct_response: {status: 201}
  - match: {prefix: /h, headers: [{name: x-a, string_match: {prefix: "ab"}}, {name: x-b, present_match: false}]}
    direct_response: {status: 202}
  - match: {prefix: /q, query_parameters: [{name: v, string_match: {exact: "2"}}]}
    direct_response: {status: 203}
  - match: {prefix: /m, headers: [{name: ":method", string_match: {exact: POST}}]}
    direct_response: {status: 204}
  - match: {prefix: /inv, headers: [{name: x-c, string_match: {exact: "no"}, invert_match: true}]}
    direct_response: {status: 205}
  - match: {prefix: /}
    route:
      weighted_clusters: {clusters: [{name: a, weight: 70}, {name: b, weight: 30}]}
- name: wild
  domains: ["*.example.com"]
  routes: [{match: {prefix: /}, route: {cluster: w}}]
- name: port
  domains: ["other:9000"]
  routes: [{match: {prefix: /}, route: {cluster: p}}]
- name: any
  domains: ["*"]
  routes: [{match: {prefix: /}, redirect: {https_redirect: true, response_code: PERMANENT_REDIRECT}}]
"#;

    #[test]
    fn vhost_selection_exact_suffix_port_any() {
        let t = table(RC);
        assert_eq!(t.vhost("api.example.com").unwrap().name, "exact");
        assert_eq!(t.vhost("API.example.com:8080").unwrap().name, "exact");
        assert_eq!(t.vhost("api.example.com:9999").unwrap().name, "exact");
        assert_eq!(t.vhost("x.example.com").unwrap().name, "wild");
        assert_eq!(t.vhost("other:9000").unwrap().name, "port");
        assert_eq!(t.vhost("other:9001").unwrap().name, "any");
        assert_eq!(t.vhost("example.com").unwrap().name, "any");
    }

    fn status(t: &RouteTable, m: &Method, path: &str, h: &HeaderMap) -> Option<u16> {
        let vh = t.vhost("api.example.com").unwrap();
        vh.route(&view(m, "api.example.com", path, h))
            .map(|r| match &r.action {
                Action::Direct { status, .. } => status.as_u16(),
                _ => 0,
            })
    }

    #[test]
    fn route_matching() {
        let t = table(RC);
        let g = Method::GET;
        let mut h = HeaderMap::new();
        assert_eq!(status(&t, &g, "/exact", &h), Some(200));
        assert_eq!(status(&t, &g, "/exact?x=1", &h), Some(200));
        assert_eq!(status(&t, &g, "/exact/more", &h), Some(0));
        assert_eq!(status(&t, &g, "/re/123", &h), Some(201));
        assert_eq!(status(&t, &g, "/re/12a", &h), Some(0));
        assert_eq!(status(&t, &g, "/h", &h), Some(0));
        h.insert("x-a", HeaderValue::from_static("abc"));
        assert_eq!(status(&t, &g, "/h", &h), Some(202));
        h.insert("x-b", HeaderValue::from_static("1"));
        assert_eq!(status(&t, &g, "/h", &h), Some(0));
        assert_eq!(status(&t, &g, "/q?v=2", &h), Some(203));
        assert_eq!(status(&t, &g, "/q?v=3", &h), Some(0));
        assert_eq!(status(&t, &Method::POST, "/m", &h), Some(204));
        assert_eq!(status(&t, &g, "/m", &h), Some(0));
        assert_eq!(
            status(&t, &g, "/inv", &h),
            Some(0),
            "missing header never matches"
        );
        h.insert("x-c", HeaderValue::from_static("yes"));
        assert_eq!(status(&t, &g, "/inv", &h), Some(205));
    }

    #[test]
    fn weighted_pick_is_proportional() {
        let t = table(RC);
        let vh = t.vhost("api.example.com").unwrap();
        let h = HeaderMap::new();
        let r = vh
            .route(&view(&Method::GET, "api.example.com", "/x", &h))
            .unwrap();
        let Action::Forward(a) = &r.action else {
            panic!()
        };
        let mut counts = HashMap::new();
        for i in 0..100u64 {
            *counts
                .entry(a.clusters.pick(&h, || i).unwrap().0.into_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 70);
        assert_eq!(counts["b"], 30);
        assert_eq!(a.timeout, Some(Duration::from_secs(15)));
    }

    #[test]
    fn redirect_location() {
        let t = table(RC);
        let vh = t.vhost("foo").unwrap();
        let h = HeaderMap::new();
        let r = vh.route(&view(&Method::GET, "foo", "/a?b=1", &h)).unwrap();
        let Action::Redirect(rd) = &r.action else {
            panic!()
        };
        assert_eq!(rd.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            rd.location("http", "foo:80", "/a?b=1", None),
            "https://foo/a?b=1"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let rc: rpb::RouteConfiguration = weft_xds::from_yaml(
            "name: r\nvirtual_hosts: [{name: v, domains: ['*'], routes: [{match: {safe_regex: {regex: '('}}, route: {cluster: c}}]}]",
            "t",
        )
        .unwrap();
        let e = route_table(&rc).unwrap_err().to_string();
        assert!(
            e.contains("route_config \"r\"")
                && e.contains("virtual_hosts[0].routes[0].match.safe_regex"),
            "{e}"
        );
        let rc: rpb::RouteConfiguration = weft_xds::from_yaml(
            "name: r\nvirtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: '5xx,bogus'}}}]}]",
            "t",
        )
        .unwrap();
        let e = route_table(&rc).unwrap_err().to_string();
        assert!(
            e.contains("retry_policy.retry_on") && e.contains("bogus"),
            "{e}"
        );
    }

    #[test]
    fn case_options_never_apply_to_regexes() {
        let t = table(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {safe_regex: {regex: "/re/[a-z]+"}, case_sensitive: false}
    direct_response: {status: 201}
  - match: {prefix: /Pre, case_sensitive: false}
    direct_response: {status: 202}
  - match: {prefix: /h, headers: [{name: x-a, string_match: {safe_regex: {regex: "ab+"}, ignore_case: true}}]}
    direct_response: {status: 203}
  - match: {prefix: /h, headers: [{name: x-a, string_match: {exact: "AB", ignore_case: true}}]}
    direct_response: {status: 204}
"#,
        );
        let h = HeaderMap::new();
        let status = |path: &str, h: &HeaderMap| -> Option<u16> {
            let m = Method::GET;
            let r = t.vhost("x")?.route(&view(&m, "x", path, h))?;
            match &r.action {
                Action::Direct { status, .. } => Some(status.as_u16()),
                _ => None,
            }
        };
        assert_eq!(status("/re/abc", &h), Some(201));
        // `case_sensitive: false` is ignored for safe_regex (Envoy), not for prefixes.
        assert_eq!(status("/RE/abc", &h), None);
        assert_eq!(status("/pre/x", &h), Some(202));
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("abb"));
        assert_eq!(status("/h", &h), Some(203));
        // `ignore_case` has no effect on safe_regex; it does on exact.
        h.insert("x-a", HeaderValue::from_static("ABB"));
        assert_eq!(status("/h", &h), None);
        h.insert("x-a", HeaderValue::from_static("ab"));
        assert_eq!(status("/h", &h), Some(203));
        h.insert("x-a", HeaderValue::from_static("Ab"));
        assert_eq!(status("/h", &h), Some(204));
    }

    #[test]
    fn max_program_size_is_refused_and_empty_google_re2_accepted() {
        let rc = |re: &str| -> rpb::RouteConfiguration {
            weft_xds::from_yaml(
                &format!(
                    "name: r\nvirtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{safe_regex: {re}}}, route: {{cluster: c, regex_rewrite: {{pattern: {re}, substitution: x}}}}}}]}}]"
                ),
                "t",
            )
            .unwrap()
        };
        assert!(route_table(&rc("{google_re2: {}, regex: '/a'}")).is_ok());
        let e = route_table(&rc("{google_re2: {max_program_size: 100}, regex: '/a'}")).unwrap_err();
        assert_eq!(
            e.field,
            "virtual_hosts[0].routes[0].match.safe_regex.google_re2.max_program_size"
        );
        let h: rpb::HeaderMatcher = weft_xds::from_yaml(
            "{name: x, string_match: {safe_regex: {google_re2: {max_program_size: 1}, regex: a}}}",
            "t",
        )
        .unwrap();
        let e = header_matcher(&Ctx::new("route_config", "r"), "h", &h).unwrap_err();
        assert_eq!(
            e.field,
            "h.string_match.safe_regex.google_re2.max_program_size"
        );
    }

    #[test]
    fn empty_header_values_are_dropped_unless_kept() {
        let add: Vec<core::HeaderValueOption> = weft_xds::from_yaml::<rpb::RouteConfiguration>(
            r#"
name: r
request_headers_to_add:
- header: {key: x-empty, value: ""}
  append_action: OVERWRITE_IF_EXISTS_OR_ADD
- header: {key: x-kept, value: ""}
  keep_empty_value: true
- header: {key: x-full, value: "v"}
"#,
            "t",
        )
        .unwrap()
        .request_headers_to_add;
        let m = header_mutation(&Ctx::new("route_config", "r"), "request", &add, &[]).unwrap();
        let names: Vec<&str> = m.add.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "x-full"]);
        assert_eq!(m.add[0].1, "");
    }

    #[test]
    fn host_selection_retry_max_attempts_counts_re_picks() {
        let policy = |extra: &str| {
            let p: rpb::RetryPolicy =
                weft_xds::from_yaml(&format!("{{retry_on: 5xx{extra}}}"), "t").unwrap();
            retry_policy(&Ctx::new("route_config", "r"), "rp", &p)
        };
        assert_eq!(policy("").unwrap().max_picks, None);
        assert_eq!(
            policy(", host_selection_retry_max_attempts: 5")
                .unwrap()
                .max_picks,
            Some(6)
        );
        for bad in ["-1", "100"] {
            let e = policy(&format!(", host_selection_retry_max_attempts: {bad}")).unwrap_err();
            assert_eq!(e.field, "rp.host_selection_retry_max_attempts");
        }
    }

    #[test]
    fn per_filter_configs_route_over_vhost_and_mirrors() {
        let t = table(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      abort: {http_status: 503, percentage: {numerator: 100}}
    envoy.filters.http.cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_origin_string_match: [{exact: "https://a"}]
      max_age: "60"
  routes:
  - name: own
    match: {prefix: /own}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        delay: {fixed_delay: 2s, percentage: {numerator: 100}}
    route:
      cluster: c
      cors: {allow_methods: GET}
      request_mirror_policies: [{cluster: shadow}]
  - name: inherited
    match: {prefix: /}
    route: {cluster: c}
"#,
        );
        let vh = t.vhost("x").unwrap();
        let (own, inherited) = (&vh.routes[0], &vh.routes[1]);
        let f = own.filters.fault.as_ref().unwrap();
        assert!(
            f.delay.is_some() && f.abort.is_none(),
            "the route's fault config wins whole"
        );
        assert!(inherited.filters.fault.as_ref().unwrap().abort.is_some());
        let h = {
            let mut h = HeaderMap::new();
            h.insert("origin", HeaderValue::from_static("https://a"));
            h.insert(
                "access-control-request-method",
                HeaderValue::from_static("GET"),
            );
            h
        };
        let crate::http::cors::Outcome::Preflight(r) = own
            .filters
            .cors
            .as_ref()
            .unwrap()
            .evaluate(&Method::OPTIONS, &h)
        else {
            panic!("expected a preflight answer")
        };
        assert_eq!(r["access-control-allow-methods"], "GET");
        assert_eq!(r["access-control-max-age"], "60", "merged from the vhost");
        let refs = t.referenced_clusters();
        assert!(
            refs.iter().any(|(f, c)| *c == "shadow"
                && f == "virtual_hosts[0].routes[0].route.request_mirror_policies[0].cluster"),
            "{refs:?}"
        );
    }

    #[test]
    fn unknown_per_filter_config_names_the_field() {
        let rc: rpb::RouteConfiguration = weft_xds::from_yaml(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.router:
        "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            "t",
        )
        .unwrap();
        let e = route_table(&rc).unwrap_err().to_string();
        assert!(
            e.contains(
                "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.router\"]"
            ),
            "{e}"
        );
    }

    #[test]
    fn subst_conversion() {
        assert_eq!(envoy_subst(r"/v\1/x$"), "/v${1}/x$$");
    }
}
