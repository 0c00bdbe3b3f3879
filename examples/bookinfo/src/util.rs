//! Small text helpers for the Bookinfo services: HTML escaping, form and
//! cookie parsing, product-id parsing. Pure functions over untrusted input:
//! they never panic and never allocate more than their input's size.

use std::fmt::Write as _;

/// Appends `s` to `out` with HTML special characters escaped.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `s` with HTML special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space,
/// `%XX` a byte). Invalid escapes are kept literally; invalid UTF-8 is replaced.
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of `key` in a urlencoded form body (first occurrence).
pub fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == key).then(|| form_decode(v))
    })
}

/// The value of cookie `name` in one or more `Cookie` header values.
pub fn cookie<'a>(
    headers: impl IntoIterator<Item = &'a http::HeaderValue>,
    name: &str,
) -> Option<&'a str> {
    headers.into_iter().find_map(|h| {
        h.to_str().ok()?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
    })
}

/// A user name we are willing to put in a cookie, a header and a page:
/// 1–64 characters of `[A-Za-z0-9._@-]`.
pub fn valid_user(u: &str) -> bool {
    (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Parses a product id path segment the way Bookinfo does (a decimal integer).
pub fn product_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    s.parse().ok()
}

/// Appends `n` copies of `piece` to `out`.
pub fn repeat_into(out: &mut String, piece: &str, n: usize) {
    for _ in 0..n {
        out.push_str(piece);
    }
}

/// `write!` into a String cannot fail; this keeps call sites free of results.
pub fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn decodes_forms() {
        assert_eq!(form_decode("a+b%20c%2fd"), "a b c/d");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%C3%A9"), "é");
        assert_eq!(form_decode("%FF"), "\u{FFFD}");
        assert_eq!(
            form_value("username=jason&passwd=x", "username").as_deref(),
            Some("jason")
        );
        assert_eq!(
            form_value("passwd=x&username=j%40s", "username").as_deref(),
            Some("j@s")
        );
        assert_eq!(form_value("passwd=x", "username"), None);
        assert_eq!(form_value("username", "username").as_deref(), Some(""));
    }

    #[test]
    fn finds_cookies() {
        let a = http::HeaderValue::from_static("a=1; session=jason; b=2");
        let b = http::HeaderValue::from_static("session=\"bob\"");
        assert_eq!(cookie([&a], "session"), Some("jason"));
        assert_eq!(cookie([&b], "session"), Some("bob"));
        assert_eq!(cookie([&a], "nope"), None);
        assert_eq!(cookie(std::iter::empty(), "session"), None);
    }

    #[test]
    fn validates_users_and_ids() {
        assert!(valid_user("jason"));
        assert!(valid_user("a.b_c@d-e"));
        assert!(!valid_user(""));
        assert!(!valid_user("a b"));
        assert!(!valid_user("a\r\nx: y"));
        assert!(!valid_user(&"x".repeat(65)));
        assert_eq!(product_id("0"), Some(0));
        assert_eq!(product_id("-3"), Some(-3));
        assert_eq!(product_id("x"), None);
        assert_eq!(product_id(""), None);
        assert_eq!(product_id("99999999999999999999"), None);
    }
}
