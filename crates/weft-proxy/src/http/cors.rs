//! CORS: Envoy's `envoy.filters.http.cors` with a `CorsPolicy` per virtual host or route
//! (`typed_per_filter_config["envoy.filters.http.cors"]`, or the deprecated `cors` fields of
//! `VirtualHost` / `RouteAction`). The route's policy is merged over the virtual host's
//! attribute by attribute when the route table is compiled, as Envoy looks them up.
//!
//! Per request: a preflight (OPTIONS + `Origin` + `Access-Control-Request-Method`) from an
//! allowed origin is answered here with 200 and the `access-control-allow-*` headers; a
//! preflight from another origin goes upstream untouched (unless
//! `forward_not_matching_preflights: false`); any other request from an allowed origin gets
//! `access-control-allow-origin` (and `-expose-headers`, `-allow-credentials`) on its response.
//! This module decides and supplies header values; it must not build responses or allocate
//! for requests without an `Origin`.

use super::fraction::Fraction;
use crate::config::{ConfigError, Ctx};
use crate::router::{StrMatch, string_match};
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cpb;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use http::Method;
use http::header::{self, HeaderMap, HeaderValue};

/// The filter's well-known name, the key of `typed_per_filter_config`.
pub const NAME: &str = "envoy.filters.http.cors";
/// The type URL of the (empty) filter config.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
/// Envoy's response code details of an answered preflight.
pub const PREFLIGHT_DETAILS: &str = "cors_response";

/// A compiled CORS policy. `None` attributes fall back to the less specific policy when merged.
#[derive(Debug, Default, Clone)]
pub struct CorsPolicy {
    origins: Option<Vec<StrMatchShared>>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: Option<bool>,
    enabled: Option<Fraction>,
    forward_not_matching_preflights: Option<bool>,
}

/// String matchers are not `Clone` (regexes); merged policies share them.
type StrMatchShared = std::sync::Arc<StrMatch>;

/// What the CORS filter does with one request.
#[derive(Debug)]
pub enum Outcome {
    /// Not a CORS request (or not an allowed one): nothing to do.
    Pass,
    /// Answer the preflight here: 200 with these headers.
    Preflight(HeaderMap),
    /// Forward, then add these headers to the response.
    Actual(ActualHeaders),
}

/// Headers for the response to an allowed (non-preflight) CORS request.
#[derive(Debug, Clone)]
pub struct ActualHeaders {
    origin: HeaderValue,
    credentials: bool,
    expose: Option<HeaderValue>,
}

impl ActualHeaders {
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

impl CorsPolicy {
    /// `self` (more specific) over `general`, attribute by attribute.
    pub fn merged_over(&self, general: &CorsPolicy) -> CorsPolicy {
        CorsPolicy {
            origins: self.origins.clone().or_else(|| general.origins.clone()),
            allow_methods: self
                .allow_methods
                .clone()
                .or_else(|| general.allow_methods.clone()),
            allow_headers: self
                .allow_headers
                .clone()
                .or_else(|| general.allow_headers.clone()),
            expose_headers: self
                .expose_headers
                .clone()
                .or_else(|| general.expose_headers.clone()),
            max_age: self.max_age.clone().or_else(|| general.max_age.clone()),
            allow_credentials: self.allow_credentials.or(general.allow_credentials),
            enabled: self.enabled.or(general.enabled),
            forward_not_matching_preflights: self
                .forward_not_matching_preflights
                .or(general.forward_not_matching_preflights),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.origins
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// Envoy's CORS decision for one request.
    pub fn evaluate(&self, method: &Method, headers: &HeaderMap) -> Outcome {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Outcome::Pass;
        };
        if !self.enabled.unwrap_or(Fraction::ALWAYS).sample() {
            return Outcome::Pass;
        }
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let preflight = method == Method::OPTIONS
            && headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        if !preflight {
            return if allowed {
                Outcome::Actual(ActualHeaders {
                    origin: origin.clone(),
                    credentials: self.allow_credentials == Some(true),
                    expose: self.expose_headers.clone(),
                })
            } else {
                Outcome::Pass
            };
        }
        let mut h = HeaderMap::new();
        if !allowed {
            return if self.forward_not_matching_preflights.unwrap_or(true) {
                Outcome::Pass
            } else {
                Outcome::Preflight(h)
            };
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials == Some(true) {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        for (name, v) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = v {
                h.insert(name, v.clone());
            }
        }
        Outcome::Preflight(h)
    }
}

/// The attributes both policy messages share.
struct Fields<'a> {
    origins: &'a [StringMatcher],
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
    allow_credentials: Option<bool>,
    filter_enabled: Option<&'a RuntimeFractionalPercent>,
    forward_not_matching_preflights: Option<bool>,
}

fn compile(ctx: &Ctx, f: &str, p: Fields<'_>) -> Result<CorsPolicy, ConfigError> {
    let value = |name: &str, s: &str| -> Result<Option<HeaderValue>, ConfigError> {
        if s.is_empty() {
            return Ok(None);
        }
        HeaderValue::from_str(s)
            .map(Some)
            .map_err(|_| ctx.err(format!("{f}.{name}"), "not a valid header value"))
    };
    let origins = if p.origins.is_empty() {
        None
    } else {
        let mut v = Vec::with_capacity(p.origins.len());
        for (i, m) in p.origins.iter().enumerate() {
            v.push(std::sync::Arc::new(string_match(
                ctx,
                &format!("{f}.allow_origin_string_match[{i}]"),
                m,
            )?));
        }
        Some(v)
    };
    if !p.max_age.is_empty() && p.max_age.parse::<u64>().is_err() {
        return Err(ctx.err(
            format!("{f}.max_age"),
            format!("`{}` is not a number of seconds", p.max_age),
        ));
    }
    Ok(CorsPolicy {
        origins,
        allow_methods: value("allow_methods", p.allow_methods)?,
        allow_headers: value("allow_headers", p.allow_headers)?,
        expose_headers: value("expose_headers", p.expose_headers)?,
        max_age: value("max_age", p.max_age)?,
        allow_credentials: p.allow_credentials,
        enabled: p
            .filter_enabled
            .map(|r| {
                Fraction::from_runtime(
                    ctx,
                    &format!("{f}.filter_enabled"),
                    Some(r),
                    Fraction::ALWAYS,
                )
            })
            .transpose()?,
        forward_not_matching_preflights: p.forward_not_matching_preflights,
    })
}

fn refuse_unsupported(
    ctx: &Ctx,
    f: &str,
    shadow: bool,
    private_network: bool,
) -> Result<(), ConfigError> {
    if shadow {
        return Err(ctx.err(format!("{f}.shadow_enabled"), "not supported"));
    }
    if private_network {
        return Err(ctx.err(format!("{f}.allow_private_network_access"), "not supported"));
    }
    Ok(())
}

/// Compiles the filter's per-route `CorsPolicy`.
pub fn from_filter_policy(
    ctx: &Ctx,
    f: &str,
    p: &cpb::CorsPolicy,
) -> Result<CorsPolicy, ConfigError> {
    refuse_unsupported(
        ctx,
        f,
        p.shadow_enabled.is_some(),
        p.allow_private_network_access.is_some(),
    )?;
    compile(
        ctx,
        f,
        Fields {
            origins: &p.allow_origin_string_match,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
            allow_credentials: p.allow_credentials.as_ref().map(|b| b.value),
            filter_enabled: p.filter_enabled.as_ref(),
            forward_not_matching_preflights: p
                .forward_not_matching_preflights
                .as_ref()
                .map(|b| b.value),
        },
    )
}

/// Compiles the deprecated `VirtualHost.cors` / `RouteAction.cors`.
pub fn from_route_policy(
    ctx: &Ctx,
    f: &str,
    p: &rpb::CorsPolicy,
) -> Result<CorsPolicy, ConfigError> {
    refuse_unsupported(
        ctx,
        f,
        p.shadow_enabled.is_some(),
        p.allow_private_network_access.is_some(),
    )?;
    let filter_enabled = p
        .enabled_specifier
        .as_ref()
        .map(|rpb::cors_policy::EnabledSpecifier::FilterEnabled(e)| e);
    compile(
        ctx,
        f,
        Fields {
            origins: &p.allow_origin_string_match,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
            allow_credentials: p.allow_credentials.as_ref().map(|b| b.value),
            filter_enabled,
            forward_not_matching_preflights: p
                .forward_not_matching_preflights
                .as_ref()
                .map(|b| b.value),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> CorsPolicy {
        let p: cpb::CorsPolicy = weft_xds::from_yaml(yaml, "test").unwrap();
        from_filter_policy(&Ctx::new("route_config", "r"), "cors", &p).unwrap()
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const P: &str = r#"
allow_origin_string_match: [{exact: "https://a.example"}, {suffix: ".b.example"}]
allow_methods: "GET,POST"
allow_headers: "x-custom"
expose_headers: "x-exposed"
max_age: "86400"
allow_credentials: true
"#;

    #[test]
    fn preflight_from_allowed_origin_is_answered() {
        let p = policy(P);
        let h = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ]);
        let Outcome::Preflight(r) = p.evaluate(&Method::OPTIONS, &h) else {
            panic!("expected a preflight answer")
        };
        assert_eq!(r["access-control-allow-origin"], "https://a.example");
        assert_eq!(r["access-control-allow-methods"], "GET,POST");
        assert_eq!(r["access-control-allow-headers"], "x-custom");
        assert_eq!(r["access-control-max-age"], "86400");
        assert_eq!(r["access-control-allow-credentials"], "true");
    }

    #[test]
    fn preflight_from_other_origin_passes_through() {
        let p = policy(P);
        let h = req(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(matches!(p.evaluate(&Method::OPTIONS, &h), Outcome::Pass));
        let strict = policy(&format!("{P}\nforward_not_matching_preflights: false"));
        let Outcome::Preflight(r) = strict.evaluate(&Method::OPTIONS, &h) else {
            panic!("expected a bare answer")
        };
        assert!(r.is_empty());
    }

    #[test]
    fn actual_request_gets_origin_expose_and_credentials() {
        let p = policy(P);
        let h = req(&[("origin", "https://x.b.example")]);
        let Outcome::Actual(a) = p.evaluate(&Method::GET, &h) else {
            panic!("expected CORS headers")
        };
        let mut out = HeaderMap::new();
        a.apply(&mut out);
        assert_eq!(out["access-control-allow-origin"], "https://x.b.example");
        assert_eq!(out["access-control-expose-headers"], "x-exposed");
        assert_eq!(out["access-control-allow-credentials"], "true");
        // OPTIONS without Access-Control-Request-Method is an actual request.
        assert!(matches!(
            p.evaluate(&Method::OPTIONS, &h),
            Outcome::Actual(_)
        ));
        assert!(matches!(
            p.evaluate(&Method::GET, &req(&[("origin", "https://nope")])),
            Outcome::Pass
        ));
        assert!(matches!(p.evaluate(&Method::GET, &req(&[])), Outcome::Pass));
    }

    #[test]
    fn wildcard_origin_and_disabled_filter() {
        let p = policy("allow_origin_string_match: [{exact: '*'}]");
        let h = req(&[("origin", "https://anything")]);
        assert!(matches!(p.evaluate(&Method::GET, &h), Outcome::Actual(_)));
        let off = policy(
            "allow_origin_string_match: [{exact: '*'}]\nfilter_enabled: {default_value: {numerator: 0}}",
        );
        assert!(matches!(off.evaluate(&Method::GET, &h), Outcome::Pass));
    }

    #[test]
    fn route_policy_merges_over_vhost_policy() {
        let vh = policy(P);
        let route = policy("allow_methods: PUT");
        let m = route.merged_over(&vh);
        let h = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "PUT"),
        ]);
        let Outcome::Preflight(r) = m.evaluate(&Method::OPTIONS, &h) else {
            panic!()
        };
        assert_eq!(r["access-control-allow-methods"], "PUT");
        assert_eq!(r["access-control-max-age"], "86400");
    }

    #[test]
    fn errors_name_the_field() {
        let p: cpb::CorsPolicy = weft_xds::from_yaml("max_age: soon", "t").unwrap();
        let e = from_filter_policy(&Ctx::new("route_config", "r"), "x.cors", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.cors.max_age"), "{e}");
        let p: cpb::CorsPolicy =
            weft_xds::from_yaml("shadow_enabled: {default_value: {numerator: 1}}", "t").unwrap();
        let e = from_filter_policy(&Ctx::new("route_config", "r"), "x.cors", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shadow_enabled"), "{e}");
    }
}
