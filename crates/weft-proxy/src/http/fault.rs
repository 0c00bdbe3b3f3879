//! Fault injection: Envoy's `envoy.filters.http.fault` (`HTTPFault`), as Istio's VirtualService
//! `fault` uses it. A fixed delay and/or an abort (HTTP status, or a gRPC status answered as a
//! trailers-only 200), each with its own percentage, limited to requests whose headers match
//! and to `max_active_faults` faulted requests at a time.
//!
//! The filter's config can be overridden per virtual host and per route
//! (`typed_per_filter_config["envoy.filters.http.fault"]`, the most specific wins whole). This
//! module compiles the config and decides, per request, what to inject; the request path
//! (`http::proxy`) carries it out. It must not sleep or answer by itself.

use super::fraction::Fraction;
use crate::config::{ConfigError, Ctx};
use crate::router::{HeaderMatcher, RequestView, header_matcher};
use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as cfpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fpb;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The type URL of the filter config (and of per-route overrides).
pub const TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The filter's well-known name, the key of `typed_per_filter_config`.
pub const NAME: &str = "envoy.filters.http.fault";
/// Envoy's body of an aborted request.
pub const ABORT_BODY: &str = "fault filter abort";
/// Envoy's response code details of an aborted request.
pub const ABORT_DETAILS: &str = "fault_filter_abort";

/// A compiled `HTTPFault` that injects something.
#[derive(Debug)]
pub struct FaultConfig {
    pub delay: Option<(Duration, Fraction)>,
    pub abort: Option<(Abort, Fraction)>,
    /// All must match for a fault to be considered.
    pub headers: Vec<HeaderMatcher>,
    /// None = unlimited.
    pub max_active_faults: Option<u64>,
}

/// What an abort answers.
#[derive(Debug, Clone)]
pub struct Abort {
    /// HTTP status of the reply: the configured one, or 200 for a gRPC abort.
    pub status: StatusCode,
    /// gRPC status for gRPC callers (`grpc_status`); None maps `status` as local replies do.
    pub grpc_status: Option<u16>,
    pub body: Bytes,
}

/// The filter instance of one connection manager: its own config (if any) and the count of
/// requests with an active fault, which `max_active_faults` limits (Envoy's
/// `fault.active_faults` gauge is per filter, whichever config applied).
#[derive(Debug, Default)]
pub struct FaultFilter {
    pub config: Option<Arc<FaultConfig>>,
    active: Arc<AtomicU64>,
    /// Requests not faulted because `max_active_faults` was reached (`faults_overflow`).
    pub overflows: AtomicU64,
    pub delays_injected: AtomicU64,
    pub aborts_injected: AtomicU64,
}

/// Holds one active fault; released when the request ends.
#[derive(Debug)]
pub struct ActiveFault(Arc<AtomicU64>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What to do to one request.
#[derive(Debug)]
pub struct Injection<'a> {
    pub delay: Option<Duration>,
    pub abort: Option<&'a Abort>,
    /// Keep until the request is over.
    pub guard: ActiveFault,
}

impl FaultFilter {
    pub fn new(config: Option<FaultConfig>) -> FaultFilter {
        FaultFilter {
            config: config.map(Arc::new),
            ..FaultFilter::default()
        }
    }

    /// Requests with a fault in progress.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Decides the fault for one request under `cfg` (the most specific config). None when
    /// nothing is injected: headers do not match, the limit is reached, or neither percentage
    /// was drawn.
    pub fn decide<'a>(&self, cfg: &'a FaultConfig, req: &RequestView<'_>) -> Option<Injection<'a>> {
        if !cfg.headers.iter().all(|m| m.matches(req)) {
            return None;
        }
        if let Some(max) = cfg.max_active_faults
            && self.active.load(Ordering::Acquire) >= max
        {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let delay = cfg
            .delay
            .as_ref()
            .filter(|(_, f)| f.sample())
            .map(|(d, _)| *d);
        let abort = cfg
            .abort
            .as_ref()
            .filter(|(_, f)| f.sample())
            .map(|(a, _)| a);
        if delay.is_none() && abort.is_none() {
            return None;
        }
        let limit = cfg.max_active_faults.unwrap_or(u64::MAX);
        if self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if delay.is_some() {
            self.delays_injected.fetch_add(1, Ordering::Relaxed);
        }
        if abort.is_some() {
            self.aborts_injected.fetch_add(1, Ordering::Relaxed);
        }
        Some(Injection {
            delay,
            abort,
            guard: ActiveFault(self.active.clone()),
        })
    }
}

impl FaultConfig {
    /// Whether it never injects anything (an empty config; per route it still overrides).
    pub fn is_noop(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

/// Compiles an `HTTPFault`.
pub fn compile(ctx: &Ctx, f: &str, h: &fpb::HttpFault) -> Result<FaultConfig, ConfigError> {
    // Fields outside the supported subset are refused by the generic walk; these checks keep
    // the compile step honest for configs that bypass it (unit tests, xDS).
    for (set, name) in [
        (!h.upstream_cluster.is_empty(), "upstream_cluster"),
        (!h.downstream_nodes.is_empty(), "downstream_nodes"),
        (h.response_rate_limit.is_some(), "response_rate_limit"),
    ] {
        if set {
            return Err(ctx.err(format!("{f}.{name}"), "not supported"));
        }
    }
    let delay = match &h.delay {
        None => None,
        Some(d) => {
            let df = format!("{f}.delay");
            let dur = match &d.fault_delay_secifier {
                Some(cfpb::fault_delay::FaultDelaySecifier::FixedDelay(p)) => {
                    crate::config::duration(ctx, &format!("{df}.fixed_delay"), p)?
                }
                Some(cfpb::fault_delay::FaultDelaySecifier::HeaderDelay(_)) => {
                    return Err(ctx.err(
                        format!("{df}.header_delay"),
                        "header-controlled delays are not supported",
                    ));
                }
                None => return Err(ctx.err(format!("{df}.fixed_delay"), "is required")),
            };
            let pct = Fraction::from_proto(
                ctx,
                &format!("{df}.percentage"),
                d.percentage.as_ref(),
                Fraction::NEVER,
            )?;
            Some((dur, pct))
        }
    };
    let abort = match &h.abort {
        None => None,
        Some(a) => {
            let af = format!("{f}.abort");
            use fpb::fault_abort::ErrorType;
            let (status, grpc_status) = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => {
                    let status = u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| {
                            ctx.err(
                                format!("{af}.http_status"),
                                format!("{s} is not an HTTP status between 200 and 599"),
                            )
                        })?;
                    (status, None)
                }
                Some(ErrorType::GrpcStatus(g)) => {
                    let g = u16::try_from(*g).map_err(|_| {
                        ctx.err(format!("{af}.grpc_status"), format!("{g} is out of range"))
                    })?;
                    (StatusCode::OK, Some(g))
                }
                Some(ErrorType::HeaderAbort(_)) => {
                    return Err(ctx.err(
                        format!("{af}.header_abort"),
                        "header-controlled aborts are not supported",
                    ));
                }
                None => {
                    return Err(ctx.err(af, "http_status or grpc_status is required"));
                }
            };
            let pct = Fraction::from_proto(
                ctx,
                &format!("{af}.percentage"),
                a.percentage.as_ref(),
                Fraction::NEVER,
            )?;
            let body = if a.response_body.is_empty() {
                Bytes::from_static(ABORT_BODY.as_bytes())
            } else {
                Bytes::from(a.response_body.clone())
            };
            Some((
                Abort {
                    status,
                    grpc_status,
                    body,
                },
                pct,
            ))
        }
    };
    let mut headers = Vec::with_capacity(h.headers.len());
    for (i, m) in h.headers.iter().enumerate() {
        headers.push(header_matcher(ctx, &format!("{f}.headers[{i}]"), m)?);
    }
    Ok(FaultConfig {
        delay,
        abort,
        headers,
        max_active_faults: h.max_active_faults.as_ref().map(|v| u64::from(v.value)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    fn fault(yaml: &str) -> Result<FaultConfig, ConfigError> {
        let h: fpb::HttpFault = weft_xds::from_yaml(yaml, "test").unwrap();
        compile(
            &Ctx::new("listener", "l"),
            "http_filters[0].typed_config",
            &h,
        )
    }

    fn view<'a>(h: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            authority: "a",
            path_and_query: "/",
            scheme: "http",
            headers: h,
            is_grpc: false,
        }
    }

    #[test]
    fn compiles_delay_abort_headers_and_limit() {
        let c = fault(
            r#"
delay: {fixed_delay: 1.5s, percentage: {numerator: 100}}
abort: {grpc_status: 14, percentage: {numerator: 5, denominator: TEN_THOUSAND}}
headers: [{name: x-fault, string_match: {exact: "yes"}}]
max_active_faults: 3
"#,
        )
        .unwrap();
        assert_eq!(
            c.delay,
            Some((Duration::from_millis(1500), Fraction::ALWAYS))
        );
        let (a, f) = c.abort.as_ref().unwrap();
        assert_eq!((a.status, a.grpc_status), (StatusCode::OK, Some(14)));
        assert_eq!(&a.body[..], ABORT_BODY.as_bytes());
        assert_eq!(f.ppm(), 500);
        assert_eq!(c.max_active_faults, Some(3));
        assert_eq!(c.headers.len(), 1);
    }

    #[test]
    fn empty_config_injects_nothing() {
        assert!(fault("{}").unwrap().is_noop());
        let filter = FaultFilter::new(None);
        let h = HeaderMap::new();
        assert!(filter.decide(&fault("{}").unwrap(), &view(&h)).is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = fault("abort: {http_status: 99, percentage: {numerator: 1}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http_filters[0].typed_config.abort.http_status"),
            "{e}"
        );
        let e = fault("delay: {header_delay: {}}").unwrap_err().to_string();
        assert!(e.contains("delay.header_delay"), "{e}");
        let e = fault("abort: {percentage: {numerator: 1}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains(".abort"), "{e}");
        let e = fault("upstream_cluster: x").unwrap_err().to_string();
        assert!(e.contains("upstream_cluster"), "{e}");
    }

    #[test]
    fn decide_honours_headers_and_max_active_faults() {
        let cfg = fault(
            r#"
abort: {http_status: 503, percentage: {numerator: 100}}
headers: [{name: x-fault, present_match: true}]
max_active_faults: 1
"#,
        )
        .unwrap();
        let filter = FaultFilter::new(None);
        let mut h = HeaderMap::new();
        assert!(
            filter.decide(&cfg, &view(&h)).is_none(),
            "headers must match"
        );
        h.insert("x-fault", HeaderValue::from_static("1"));
        let first = filter.decide(&cfg, &view(&h)).expect("fault");
        assert_eq!(
            first.abort.map(|a| a.status),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(filter.active(), 1);
        assert!(filter.decide(&cfg, &view(&h)).is_none(), "limit reached");
        assert_eq!(filter.overflows.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(filter.active(), 0);
        assert!(filter.decide(&cfg, &view(&h)).is_some());
    }

    #[test]
    fn zero_percent_never_injects() {
        let cfg = fault("delay: {fixed_delay: 1s, percentage: {numerator: 0}}").unwrap();
        let filter = FaultFilter::new(None);
        let h = HeaderMap::new();
        assert!((0..1000).all(|_| filter.decide(&cfg, &view(&h)).is_none()));
        assert_eq!(filter.active(), 0);
    }
}
