//! Which incoming headers a Bookinfo service copies onto its outbound calls.
//!
//! Istio cannot stitch traces or route by user unless applications propagate
//! these headers themselves; Bookinfo's services do it by hand, and so do
//! these. The list is fixed at compile time. `cookie` is deliberately absent
//! (the session never leaves productpage; the user travels as `end-user`).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `end-user` header (Istio's request-routing task matches on it).
pub const END_USER: HeaderName = HeaderName::from_static("end-user");

/// Headers copied from the inbound request to every outbound call.
pub const PROPAGATED: [HeaderName; 18] = [
    HeaderName::from_static("x-request-id"),
    // W3C trace context
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    // Zipkin B3
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("x-b3-sampled"),
    HeaderName::from_static("x-b3-flags"),
    HeaderName::from_static("b3"),
    // Lightstep, Google Cloud, gRPC binary, SkyWalking, Datadog
    HeaderName::from_static("x-ot-span-context"),
    HeaderName::from_static("x-cloud-trace-context"),
    HeaderName::from_static("grpc-trace-bin"),
    HeaderName::from_static("sw8"),
    HeaderName::from_static("x-datadog-trace-id"),
    HeaderName::from_static("x-datadog-parent-id"),
    HeaderName::from_static("x-datadog-sampling-priority"),
    // Application headers
    HeaderName::from_static("user-agent"),
    END_USER,
];

/// The outbound headers for a call made while serving `incoming`: every
/// [`PROPAGATED`] header present (all values), then `end-user` replaced by
/// `user` when the caller knows the signed-in user.
pub fn outbound_headers(incoming: &HeaderMap, user: Option<&HeaderValue>) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(8);
    for name in &PROPAGATED {
        for v in incoming.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(u) = user {
        out.insert(END_USER, u.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_listed_headers() {
        let mut inc = HeaderMap::new();
        inc.insert("x-request-id", HeaderValue::from_static("abc"));
        inc.append("tracestate", HeaderValue::from_static("a=1"));
        inc.append("tracestate", HeaderValue::from_static("b=2"));
        inc.insert("cookie", HeaderValue::from_static("session=jason"));
        inc.insert("authorization", HeaderValue::from_static("Bearer x"));
        inc.insert("user-agent", HeaderValue::from_static("curl/8"));
        inc.insert("end-user", HeaderValue::from_static("mallory"));
        let out = outbound_headers(&inc, None);
        assert_eq!(
            out.get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
        assert_eq!(out.get_all("tracestate").iter().count(), 2);
        assert_eq!(
            out.get("user-agent").map(|v| v.as_bytes()),
            Some(&b"curl/8"[..])
        );
        assert_eq!(
            out.get("end-user").map(|v| v.as_bytes()),
            Some(&b"mallory"[..])
        );
        assert!(out.get("cookie").is_none());
        assert!(out.get("authorization").is_none());

        let jason = HeaderValue::from_static("jason");
        let out = outbound_headers(&inc, Some(&jason));
        assert_eq!(out.get_all("end-user").iter().count(), 1);
        assert_eq!(out.get("end-user"), Some(&jason));
    }

    #[test]
    fn list_has_no_duplicates() {
        for (i, a) in PROPAGATED.iter().enumerate() {
            assert!(!PROPAGATED[i + 1..].contains(a), "{a} twice");
        }
    }
}
