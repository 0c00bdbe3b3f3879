//! Host names as Istio uses them: short-name resolution (`reviews` →
//! `reviews.default.svc.cluster.local`), wildcard matching, and the DNS name checks that
//! validation needs.
//!
//! Pure string functions, shared by validation, analysis and (later) the control plane's
//! translation, so that all of them agree on what a host means. Must not do DNS lookups.

/// Well-known top-level domains: a two-label host ending in one of these is a real domain
/// (`example.com`), not `service.namespace`.
const KNOWN_TLDS: &[&str] = &[
    "ai",
    "app",
    "arpa",
    "au",
    "biz",
    "br",
    "ca",
    "ch",
    "cloud",
    "cn",
    "co",
    "com",
    "de",
    "dev",
    "edu",
    "es",
    "eu",
    "example",
    "fr",
    "gov",
    "in",
    "info",
    "int",
    "internal",
    "invalid",
    "io",
    "it",
    "jp",
    "local",
    "localhost",
    "me",
    "mil",
    "net",
    "nl",
    "org",
    "pl",
    "ru",
    "se",
    "test",
    "tech",
    "uk",
    "us",
    "xyz",
];

/// The fully qualified name of `host` as written in a resource of `namespace`.
///
/// * `reviews` → `reviews.<namespace>.svc.cluster.local`
/// * `reviews.other` → `reviews.other.svc.cluster.local` (service.namespace), unless the last
///   label is a well-known top-level domain (`example.com` is left alone)
/// * anything with two or more dots, wildcards (`*`, `*.example.com`), IP addresses and
///   absolute names (`foo.`) are returned unchanged.
///
/// ```
/// assert_eq!(weft_api::fqdn("reviews", "default"), "reviews.default.svc.cluster.local");
/// assert_eq!(weft_api::fqdn("reviews.other", "default"), "reviews.other.svc.cluster.local");
/// assert_eq!(weft_api::fqdn("api.example.com", "default"), "api.example.com");
/// assert_eq!(weft_api::fqdn("*.example.com", "default"), "*.example.com");
/// ```
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.is_empty() || host.starts_with('*') || host.ends_with('.') || is_ip(host) {
        return host.to_owned();
    }
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.cluster.local"),
        1 => {
            let tld = host.rsplit('.').next().unwrap_or_default();
            if KNOWN_TLDS.contains(&tld.to_ascii_lowercase().as_str()) {
                host.to_owned()
            } else {
                format!("{host}.svc.cluster.local")
            }
        }
        _ => host.to_owned(),
    }
}

/// Whether `s` is an IPv4 or IPv6 address.
pub fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// Whether `s` is an IP address or a CIDR block (`10.0.0.0/8`, `::1/128`).
pub fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => is_ip(s),
        Some((ip, len)) => match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        },
    }
}

/// Whether a (possibly wildcard) `pattern` matches `host`: `*` matches everything,
/// `*.example.com` matches `a.example.com` and `a.b.example.com` (and `*.a.example.com`).
/// Comparison is case-insensitive.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Whether two hosts (each possibly a wildcard) can both match one concrete name.
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, at
/// most 63 characters (Kubernetes namespace and subset names).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (Kubernetes object
/// names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A DNS name that may start with a `*.` wildcard label, or be `*` alone. Case-insensitive,
/// like DNS.
pub fn is_wildcard_dns_name(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*.").unwrap_or(s);
    let lower = rest.to_ascii_lowercase();
    // Labels may start with a digit or contain '_' in practice (SRV-like names); accept
    // underscores as Istio does for hosts.
    !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_expands_short_names_only() {
        assert_eq!(
            fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(fqdn("reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(
            fqdn("reviews.other", "default"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.other.svc.cluster.local", "default"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(fqdn("example.com", "default"), "example.com");
        assert_eq!(fqdn("*", "default"), "*");
        assert_eq!(fqdn("*.example.com", "default"), "*.example.com");
        assert_eq!(fqdn("10.0.0.1", "default"), "10.0.0.1");
        assert_eq!(fqdn("db.", "default"), "db.");
    }

    #[test]
    fn wildcard_matching() {
        assert!(host_matches("*", "anything.example.com"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "A.b.Example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(host_matches("Reviews", "reviews"));
        assert!(hosts_intersect("a.example.com", "*.example.com"));
        assert!(hosts_intersect("*.a.example.com", "*.example.com"));
        assert!(!hosts_intersect("a.example.com", "b.example.com"));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("v2-mysql"));
        assert!(!is_dns1123_label("V2"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("bookinfo.gateway"));
        assert!(!is_dns1123_subdomain("bookinfo..gateway"));
        assert!(is_wildcard_dns_name("*.Example.com"));
        assert!(!is_wildcard_dns_name("a.*.com"));
        assert!(!is_wildcard_dns_name("bad host"));
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(is_ip_or_cidr("::1"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
    }
}
