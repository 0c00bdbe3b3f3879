//! Durations as Istio writes them: `1s`, `0.5s`, `100ms`, `1m`, `1h30m`, `250us` (Go's
//! `time.ParseDuration` syntax, which Istio's CRDs accept; protobuf's `1.5s` is a subset).
//!
//! Why a newtype: a bad duration is reported while deserializing, at its own line, and
//! consumers get a `std::time::Duration` with no re-parsing. It must not accept negative
//! durations (std cannot hold them) nor overflow silently.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-negative duration read from an Istio duration string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The value as a `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl fmt::Display for Duration {
    /// Protobuf JSON form: seconds with 0, 3, 6 or 9 fractional digits and an `s` suffix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{secs}.{:03}s", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{secs}.{:06}s", nanos / 1_000)
        } else {
            write!(f, "{secs}.{nanos:09}s")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `1s`, `100ms` or `1m`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                parse_duration(s)
                    .map(Duration)
                    .map_err(|e| E::custom(format!("invalid duration `{s}`: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// Parse an Istio/Go duration: one or more `<number><unit>` terms, units `ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h`; fractions allowed (`0.5s`, `1.5h`); a bare `0` is zero.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(weft_api::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(weft_api::parse_duration("0.5s"), Ok(Duration::from_millis(500)));
/// assert!(weft_api::parse_duration("10").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if s.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit after `{num}` (use s, ms, m, h ...)")),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse::<u128>()
                .map_err(|_| format!("number `{num}` is too large"))?
        };
        let mut frac_nanos: u128 = 0;
        let mut denom: u128 = 1;
        for c in frac_part.chars().take(18) {
            frac_nanos = frac_nanos * 10 + u128::from(c.to_digit(10).unwrap_or(0));
            denom *= 10;
        }
        let term = int
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_nanos * scale / denom))
            .ok_or_else(|| "duration is too large".to_owned())?;
        total = total
            .checked_add(term)
            .ok_or_else(|| "duration is too large".to_owned())?;
        rest = next;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| "duration is too large".to_owned())?;
    let nanos = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::time::Duration as D;

    use super::*;

    #[test]
    fn parses_istio_forms() {
        assert_eq!(parse_duration("1s"), Ok(D::from_secs(1)));
        assert_eq!(parse_duration("0.5s"), Ok(D::from_millis(500)));
        assert_eq!(parse_duration("100ms"), Ok(D::from_millis(100)));
        assert_eq!(parse_duration("1m"), Ok(D::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(D::from_secs(3600)));
        assert_eq!(parse_duration("1h30m0.25s"), Ok(D::from_millis(5_400_250)));
        assert_eq!(parse_duration("250us"), Ok(D::from_micros(250)));
        assert_eq!(parse_duration("1.000000001s"), Ok(D::new(1, 1)));
        assert_eq!(parse_duration("0"), Ok(D::ZERO));
        assert_eq!(parse_duration(".5s"), Ok(D::from_millis(500)));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "10",
            "1x",
            "s",
            "-1s",
            "1..2s",
            "1s2",
            "99999999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn displays_as_protobuf_json() {
        assert_eq!(Duration(D::from_secs(7)).to_string(), "7s");
        assert_eq!(Duration(D::from_millis(1500)).to_string(), "1.500s");
        assert_eq!(Duration(D::from_micros(1)).to_string(), "0.000001s");
        assert_eq!(Duration(D::new(0, 5)).to_string(), "0.000000005s");
    }
}
