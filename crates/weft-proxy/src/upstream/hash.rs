//! Request hash policies (Envoy's route-level `hash_policy`): turn a request into the `u64`
//! that ring-hash and maglev load balancers use, so that requests with the same header,
//! cookie, source IP or query parameter stick to the same upstream host.
//!
//! Policies are translated once per route configuration; computing a hash reads the request
//! in place and allocates nothing unless a sticky cookie has to be generated. The hash is
//! deterministic across processes of the same binary (FNV-1a with a murmur finaliser, fixed
//! keys), so several proxies agree on where a key goes. This module must not pick hosts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use http::header::{COOKIE, HOST};
use http::{HeaderName, HeaderValue};

use super::lb::{UnsupportedField, duration_from_proto, random_u64};

/// A small, fast, process-independent 64-bit hasher: FNV-1a over bytes, then murmur3's
/// `fmix64` so nearby inputs (`addr_0`, `addr_1`) land far apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl KeyHasher {
    /// A hasher with the standard FNV offset basis.
    #[inline]
    pub(crate) const fn new() -> Self {
        Self(FNV_OFFSET)
    }

    /// A hasher whose output is independent from other seeds' for the same input.
    #[inline]
    pub(crate) const fn with_seed(seed: u64) -> Self {
        if seed == 0 {
            Self::new()
        } else {
            Self(FNV_OFFSET ^ fmix64(seed))
        }
    }

    /// Feeds bytes.
    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        self.0 = h;
    }

    /// The finished hash (the hasher can keep being fed).
    #[inline]
    pub(crate) const fn finish(&self) -> u64 {
        fmix64(self.0)
    }

    /// One-shot hash of `bytes`.
    #[inline]
    pub(crate) fn hash(bytes: &[u8]) -> u64 {
        let mut h = Self::new();
        h.write(bytes);
        h.finish()
    }
}

/// One way of deriving a hash from a request. `terminal`: once a hash exists after this
/// policy, later policies are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    /// Value(s) of a request header; several values are hashed sorted, so order does not
    /// matter. `host` also matches the request's authority (`:authority`).
    Header { name: HeaderName, terminal: bool },
    /// A cookie. If absent and `ttl` is set, a cookie is generated, hashed, and returned as
    /// `Set-Cookie` so that the client sticks; `ttl` zero makes a session cookie.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
        terminal: bool,
    },
    /// The downstream peer's IP address.
    SourceIp { terminal: bool },
    /// The first occurrence of a query parameter (raw, not percent-decoded).
    QueryParameter { name: String, terminal: bool },
}

impl HashPolicy {
    /// Whether evaluation stops once a hash exists after this policy.
    pub fn terminal(&self) -> bool {
        match self {
            Self::Header { terminal, .. }
            | Self::Cookie { terminal, .. }
            | Self::SourceIp { terminal }
            | Self::QueryParameter { terminal, .. } => *terminal,
        }
    }
}

/// The result of [`compute_hash`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashOutcome {
    /// The request hash, if any policy produced one.
    pub hash: Option<u64>,
    /// A `Set-Cookie` value to add to the response (a generated sticky cookie).
    pub set_cookie: Option<HeaderValue>,
}

/// Computes the request hash with Envoy's semantics: the hashes of matching policies are
/// combined as `hash.rotate_left(1) ^ h`, and a terminal policy stops evaluation once a hash
/// exists.
pub fn compute_hash(
    policies: &[HashPolicy],
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> HashOutcome {
    let mut out = HashOutcome::default();
    for policy in policies {
        let new = match policy {
            HashPolicy::Header { name, .. } => header_hash(parts, name),
            HashPolicy::Cookie {
                name, ttl, path, ..
            } => match cookie_value(parts, name) {
                Some(v) => Some(KeyHasher::hash(v)),
                None => match ttl {
                    Some(ttl) => {
                        let (h, cookie) = generate_cookie(name, *ttl, path.as_deref());
                        if out.set_cookie.is_none() {
                            out.set_cookie = cookie;
                        }
                        Some(h)
                    }
                    None => None,
                },
            },
            HashPolicy::SourceIp { .. } => Some(match peer.ip().to_canonical() {
                IpAddr::V4(v4) => KeyHasher::hash(&v4.octets()),
                IpAddr::V6(v6) => KeyHasher::hash(&v6.octets()),
            }),
            HashPolicy::QueryParameter { name, .. } => {
                query_value(parts, name).map(|v| KeyHasher::hash(v.as_bytes()))
            }
        };
        if let Some(h) = new {
            out.hash = Some(match out.hash {
                Some(old) => old.rotate_left(1) ^ h,
                None => h,
            });
        }
        if policy.terminal() && out.hash.is_some() {
            break;
        }
    }
    out
}

fn header_hash(parts: &http::request::Parts, name: &HeaderName) -> Option<u64> {
    let mut values = parts.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        if name == HOST {
            return parts
                .uri
                .authority()
                .map(|a| KeyHasher::hash(a.as_str().as_bytes()));
        }
        return None;
    };
    let Some(second) = values.next() else {
        return Some(KeyHasher::hash(first.as_bytes()));
    };
    // Several values (rare): hash them sorted so their order does not matter.
    let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
    all.extend(values.map(HeaderValue::as_bytes));
    all.sort_unstable();
    let mut h = KeyHasher::new();
    for v in all {
        h.write(v);
        h.write(&[0xff]);
    }
    Some(h.finish())
}

/// The value of cookie `name` (surrounding double quotes removed), from any `Cookie` header.
fn cookie_value<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a [u8]> {
    parts.headers.get_all(COOKIE).iter().find_map(|hv| {
        hv.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
            if k.trim_ascii() != name.as_bytes() {
                return None;
            }
            let v = v.trim_ascii();
            Some(
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v),
            )
        })
    })
}

fn generate_cookie(name: &str, ttl: Duration, path: Option<&str>) -> (u64, Option<HeaderValue>) {
    let value = format!("{:016x}", random_u64());
    let hash = KeyHasher::hash(value.as_bytes());
    let mut cookie = format!("{name}={value}");
    if !ttl.is_zero() {
        cookie.push_str("; Max-Age=");
        cookie.push_str(&ttl.as_secs().max(1).to_string());
    }
    if let Some(p) = path {
        cookie.push_str("; Path=");
        cookie.push_str(p);
    }
    cookie.push_str("; HttpOnly");
    // Names and paths were validated at translation; a bad one just yields no cookie.
    (hash, HeaderValue::from_str(&cookie).ok())
}

fn query_value<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// RFC 7230 token characters (cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Translates a route's `hash_policy` list. Header `regex_rewrite`, cookie `attributes`,
/// `filter_state` and pseudo-headers other than `:authority` are refused.
pub fn hash_policies_from_route(action: &RouteAction) -> Result<Vec<HashPolicy>, UnsupportedField> {
    let mut out = Vec::with_capacity(action.hash_policy.len());
    for (i, p) in action.hash_policy.iter().enumerate() {
        let field = |sub: &str| format!("hash_policy[{i}]{sub}");
        let terminal = p.terminal;
        match &p.policy_specifier {
            Some(PolicySpecifier::Header(h)) => {
                if h.regex_rewrite.is_some() {
                    return Err(UnsupportedField::new(
                        field(".header.regex_rewrite"),
                        "rewriting header values before hashing is not supported",
                    ));
                }
                let lower = h.header_name.to_ascii_lowercase();
                let name = if lower == ":authority" {
                    HOST
                } else if lower.starts_with(':') {
                    return Err(UnsupportedField::new(
                        field(".header.header_name"),
                        format!("pseudo-header `{lower}` is not supported; only `:authority`"),
                    ));
                } else {
                    HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                        UnsupportedField::new(
                            field(".header.header_name"),
                            format!("`{}` is not a valid header name", h.header_name),
                        )
                    })?
                };
                out.push(HashPolicy::Header { name, terminal });
            }
            Some(PolicySpecifier::Cookie(c)) => {
                if !is_token(&c.name) {
                    return Err(UnsupportedField::new(
                        field(".cookie.name"),
                        format!("`{}` is not a valid cookie name", c.name),
                    ));
                }
                if !c.attributes.is_empty() {
                    return Err(UnsupportedField::new(
                        field(".cookie.attributes"),
                        "extra cookie attributes are not supported",
                    ));
                }
                let ttl = c
                    .ttl
                    .as_ref()
                    .map(|d| duration_from_proto(&field(".cookie.ttl"), d))
                    .transpose()?;
                let path = if c.path.is_empty() {
                    None
                } else if c.path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                    Some(c.path.clone())
                } else {
                    return Err(UnsupportedField::new(
                        field(".cookie.path"),
                        format!("`{}` is not a valid cookie path", c.path),
                    ));
                };
                out.push(HashPolicy::Cookie {
                    name: c.name.clone(),
                    ttl,
                    path,
                    terminal,
                });
            }
            Some(PolicySpecifier::ConnectionProperties(cp)) => {
                if cp.source_ip {
                    out.push(HashPolicy::SourceIp { terminal });
                }
            }
            Some(PolicySpecifier::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(UnsupportedField::new(
                        field(".query_parameter.name"),
                        "must not be empty",
                    ));
                }
                out.push(HashPolicy::QueryParameter {
                    name: q.name.clone(),
                    terminal,
                });
            }
            Some(PolicySpecifier::FilterState(_)) => {
                return Err(UnsupportedField::new(
                    field(".filter_state"),
                    "hashing on filter state is not supported",
                ));
            }
            None => {
                return Err(UnsupportedField::new(
                    field(""),
                    "no policy specifier (header, cookie, connection_properties or \
                     query_parameter)",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as PbHashPolicy;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, FilterState, Header, QueryParameter,
    };
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn header(name: &str, terminal: bool) -> HashPolicy {
        HashPolicy::Header {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            terminal,
        }
    }

    #[test]
    fn hasher_is_stable_and_spreads() {
        // Fixed value: the hash must not change between builds or processes.
        assert_eq!(KeyHasher::hash(b""), fmix64(FNV_OFFSET));
        assert_eq!(KeyHasher::hash(b"abc"), KeyHasher::hash(b"abc"));
        assert_ne!(KeyHasher::hash(b"a_0"), KeyHasher::hash(b"a_1"));
        assert_ne!(
            KeyHasher::with_seed(1).finish(),
            KeyHasher::with_seed(0).finish()
        );
    }

    #[test]
    fn header_hash_present_absent_and_multi() {
        let p = [header("x-user", false)];
        let a = compute_hash(&p, &parts("/", &[("x-user", "alice")]), peer());
        let b = compute_hash(&p, &parts("/", &[("x-user", "alice")]), peer());
        let c = compute_hash(&p, &parts("/", &[("x-user", "bob")]), peer());
        assert!(a.hash.is_some());
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_eq!(compute_hash(&p, &parts("/", &[]), peer()).hash, None);
        let m1 = compute_hash(&p, &parts("/", &[("x-user", "a"), ("x-user", "b")]), peer());
        let m2 = compute_hash(&p, &parts("/", &[("x-user", "b"), ("x-user", "a")]), peer());
        assert_eq!(m1.hash, m2.hash);
        assert_ne!(m1.hash, a.hash);
        // `host` falls back to the URI authority (HTTP/2 :authority).
        let h = [header("host", false)];
        let x = compute_hash(&h, &parts("http://svc.local/", &[]), peer());
        let y = compute_hash(&h, &parts("/", &[("host", "svc.local")]), peer());
        assert_eq!(x.hash, y.hash);
        assert!(x.hash.is_some());
    }

    #[test]
    fn combination_and_terminal() {
        let req = parts("/p?user=7&x=1&user=8", &[("x-a", "1"), ("x-b", "2")]);
        let ha = compute_hash(&[header("x-a", false)], &req, peer())
            .hash
            .unwrap();
        let hb = compute_hash(&[header("x-b", false)], &req, peer())
            .hash
            .unwrap();
        let both = compute_hash(&[header("x-a", false), header("x-b", false)], &req, peer());
        assert_eq!(both.hash, Some(ha.rotate_left(1) ^ hb));
        // Duplicate policies do not cancel out.
        let dup = compute_hash(&[header("x-a", false), header("x-a", false)], &req, peer());
        assert_ne!(dup.hash, Some(0));
        // Terminal with a hash stops; terminal without a hash does not.
        let t = compute_hash(&[header("x-a", true), header("x-b", false)], &req, peer());
        assert_eq!(t.hash, Some(ha));
        let t = compute_hash(
            &[header("x-missing", true), header("x-b", false)],
            &req,
            peer(),
        );
        assert_eq!(t.hash, Some(hb));
        // Query: first occurrence.
        let q = |n: &str| HashPolicy::QueryParameter {
            name: n.into(),
            terminal: false,
        };
        let u = compute_hash(&[q("user")], &req, peer()).hash;
        assert_eq!(u, Some(KeyHasher::hash(b"7")));
        assert_eq!(compute_hash(&[q("nope")], &req, peer()).hash, None);
        // Source IP: per IP, not per port; v4-mapped v6 equals v4.
        let s = [HashPolicy::SourceIp { terminal: false }];
        let a = compute_hash(&s, &req, "127.0.0.1:1".parse().unwrap()).hash;
        let b = compute_hash(&s, &req, "127.0.0.1:2".parse().unwrap()).hash;
        let c = compute_hash(&s, &req, "[::ffff:127.0.0.1]:3".parse().unwrap()).hash;
        let d = compute_hash(&s, &req, "127.0.0.2:1".parse().unwrap()).hash;
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn cookie_present_and_generated() {
        let policy = [HashPolicy::Cookie {
            name: "sticky".into(),
            ttl: Some(Duration::from_secs(3600)),
            path: Some("/".into()),
            terminal: false,
        }];
        let with = compute_hash(
            &policy,
            &parts("/", &[("cookie", "a=1; sticky=\"abc\"; b=2")]),
            peer(),
        );
        assert_eq!(with.hash, Some(KeyHasher::hash(b"abc")));
        assert!(with.set_cookie.is_none());

        let gen1 = compute_hash(&policy, &parts("/", &[("cookie", "a=1")]), peer());
        let sc = gen1.set_cookie.clone().expect("generated cookie");
        let sc = sc.to_str().unwrap();
        assert!(sc.starts_with("sticky="), "{sc}");
        assert!(sc.ends_with("; Max-Age=3600; Path=/; HttpOnly"), "{sc}");
        // The next request carrying the cookie hashes the same.
        let value = sc.split(';').next().unwrap();
        let next = compute_hash(&policy, &parts("/", &[("cookie", value)]), peer());
        assert_eq!(next.hash, gen1.hash);
        assert!(next.set_cookie.is_none());
        // Two generations differ (random values).
        let gen2 = compute_hash(&policy, &parts("/", &[]), peer());
        assert_ne!(gen1.set_cookie, gen2.set_cookie);

        // No ttl: no hash, no cookie. Zero ttl: session cookie.
        let no_ttl = [HashPolicy::Cookie {
            name: "s".into(),
            ttl: None,
            path: None,
            terminal: false,
        }];
        assert_eq!(
            compute_hash(&no_ttl, &parts("/", &[]), peer()),
            HashOutcome::default()
        );
        let session = [HashPolicy::Cookie {
            name: "s".into(),
            ttl: Some(Duration::ZERO),
            path: None,
            terminal: false,
        }];
        let s = compute_hash(&session, &parts("/", &[]), peer());
        let v = s.set_cookie.unwrap();
        let v = v.to_str().unwrap();
        assert!(!v.contains("Max-Age") && v.ends_with("; HttpOnly"), "{v}");
    }

    fn pb(spec: PolicySpecifier, terminal: bool) -> PbHashPolicy {
        PbHashPolicy {
            terminal,
            policy_specifier: Some(spec),
        }
    }

    #[test]
    fn translate_from_route() {
        let action = RouteAction {
            hash_policy: vec![
                pb(
                    PolicySpecifier::Header(Header {
                        header_name: "X-User".into(),
                        regex_rewrite: None,
                    }),
                    true,
                ),
                pb(
                    PolicySpecifier::Cookie(Cookie {
                        name: "sess".into(),
                        ttl: Some(PbDuration {
                            seconds: 60,
                            nanos: 0,
                        }),
                        path: "/app".into(),
                        attributes: vec![],
                    }),
                    false,
                ),
                pb(
                    PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
                    false,
                ),
                pb(
                    PolicySpecifier::ConnectionProperties(ConnectionProperties {
                        source_ip: false,
                    }),
                    false,
                ),
                pb(
                    PolicySpecifier::QueryParameter(QueryParameter { name: "u".into() }),
                    false,
                ),
                pb(
                    PolicySpecifier::Header(Header {
                        header_name: ":authority".into(),
                        regex_rewrite: None,
                    }),
                    false,
                ),
            ],
            ..Default::default()
        };
        let got = hash_policies_from_route(&action).unwrap();
        assert_eq!(
            got,
            vec![
                header("x-user", true),
                HashPolicy::Cookie {
                    name: "sess".into(),
                    ttl: Some(Duration::from_secs(60)),
                    path: Some("/app".into()),
                    terminal: false
                },
                HashPolicy::SourceIp { terminal: false },
                HashPolicy::QueryParameter {
                    name: "u".into(),
                    terminal: false
                },
                header("host", false),
            ]
        );

        let bad = RouteAction {
            hash_policy: vec![
                pb(
                    PolicySpecifier::QueryParameter(QueryParameter { name: "u".into() }),
                    false,
                ),
                pb(
                    PolicySpecifier::FilterState(FilterState { key: "k".into() }),
                    false,
                ),
            ],
            ..Default::default()
        };
        let e = hash_policies_from_route(&bad).unwrap_err();
        assert_eq!(e.field, "hash_policy[1].filter_state");
        for spec in [
            PolicySpecifier::Header(Header {
                header_name: ":path".into(),
                regex_rewrite: None,
            }),
            PolicySpecifier::Header(Header {
                header_name: "bad header".into(),
                regex_rewrite: None,
            }),
            PolicySpecifier::Cookie(Cookie {
                name: "bad;name".into(),
                ..Default::default()
            }),
            PolicySpecifier::QueryParameter(QueryParameter { name: "".into() }),
        ] {
            let a = RouteAction {
                hash_policy: vec![pb(spec.clone(), false)],
                ..Default::default()
            };
            assert!(hash_policies_from_route(&a).is_err(), "{spec:?}");
        }
        let none = RouteAction {
            hash_policy: vec![PbHashPolicy {
                terminal: false,
                policy_specifier: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            hash_policies_from_route(&none).unwrap_err().field,
            "hash_policy[0]"
        );
    }
}
