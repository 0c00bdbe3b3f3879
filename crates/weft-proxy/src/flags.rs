//! Envoy response flags: the short codes (`UH`, `UF`, `URX`, ...) that explain why a request or
//! connection ended the way it did. They appear in access logs (`%RESPONSE_FLAGS%`) and are what
//! operators grep for, so the codes, their order and their separator match Envoy exactly.
//!
//! This module is a plain `Copy` bitset; it must not allocate or know about any other part of the
//! proxy. Setting a flag is one `or` on the hot path.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of Envoy response flags.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// One row of the flag table: bit, short code, long name (Envoy's `%RESPONSE_FLAGS_LONG%`).
struct FlagInfo {
    flag: ResponseFlags,
    short: &'static str,
    long: &'static str,
}

// Bits follow Envoy's `CoreResponseFlag` enum so that iteration order is Envoy's canonical order.
impl ResponseFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// LH: local health check failed (the proxy itself is failing health checks).
    pub const LH: Self = Self(1 << 0);
    /// UH: no healthy upstream host in the cluster.
    pub const UH: Self = Self(1 << 1);
    /// UT: upstream request timeout.
    pub const UT: Self = Self(1 << 2);
    /// LR: connection local reset.
    pub const LR: Self = Self(1 << 3);
    /// UR: upstream remote reset.
    pub const UR: Self = Self(1 << 4);
    /// UF: upstream connection failure.
    pub const UF: Self = Self(1 << 5);
    /// UC: upstream connection termination.
    pub const UC: Self = Self(1 << 6);
    /// UO: upstream overflow (circuit breaking).
    pub const UO: Self = Self(1 << 7);
    /// NR: no route configured for the request (or no filter chain for a connection).
    pub const NR: Self = Self(1 << 8);
    /// DI: the request was delayed by fault injection.
    pub const DI: Self = Self(1 << 9);
    /// FI: the request was aborted by fault injection.
    pub const FI: Self = Self(1 << 10);
    /// RL: rate limited locally.
    pub const RL: Self = Self(1 << 11);
    /// UAEX: rejected by an external authorization service.
    pub const UAEX: Self = Self(1 << 12);
    /// RLSE: rate limit service error.
    pub const RLSE: Self = Self(1 << 13);
    /// DC: downstream connection terminated.
    pub const DC: Self = Self(1 << 14);
    /// URX: upstream retry limit (or TCP connect attempts) exceeded.
    pub const URX: Self = Self(1 << 15);
    /// SI: stream idle timeout.
    pub const SI: Self = Self(1 << 16);
    /// IH: invalid values in `x-envoy-*` request headers.
    pub const IH: Self = Self(1 << 17);
    /// DPE: downstream protocol error.
    pub const DPE: Self = Self(1 << 18);
    /// UMSDR: upstream max stream duration reached.
    pub const UMSDR: Self = Self(1 << 19);
    /// RFCF: response served from a cache filter.
    pub const RFCF: Self = Self(1 << 20);
    /// NFCF: no filter config found.
    pub const NFCF: Self = Self(1 << 21);
    /// DT: max connection / request duration reached.
    pub const DT: Self = Self(1 << 22);
    /// UPE: upstream protocol error.
    pub const UPE: Self = Self(1 << 23);
    /// NC: upstream cluster not found.
    pub const NC: Self = Self(1 << 24);
    /// OM: terminated by the overload manager.
    pub const OM: Self = Self(1 << 25);
    /// DF: DNS resolution failed.
    pub const DF: Self = Self(1 << 26);
    /// DO: dropped by drop-overload policy.
    pub const DO: Self = Self(1 << 27);
    /// DR: downstream remote reset.
    pub const DR: Self = Self(1 << 28);

    /// Envoy's canonical order (the order of `CoreResponseFlag`).
    const TABLE: [FlagInfo; 29] = [
        FlagInfo::new(Self::LH, "LH", "FailedLocalHealthCheck"),
        FlagInfo::new(Self::UH, "UH", "NoHealthyUpstream"),
        FlagInfo::new(Self::UT, "UT", "UpstreamRequestTimeout"),
        FlagInfo::new(Self::LR, "LR", "LocalReset"),
        FlagInfo::new(Self::UR, "UR", "UpstreamRemoteReset"),
        FlagInfo::new(Self::UF, "UF", "UpstreamConnectionFailure"),
        FlagInfo::new(Self::UC, "UC", "UpstreamConnectionTermination"),
        FlagInfo::new(Self::UO, "UO", "UpstreamOverflow"),
        FlagInfo::new(Self::NR, "NR", "NoRouteFound"),
        FlagInfo::new(Self::DI, "DI", "DelayInjected"),
        FlagInfo::new(Self::FI, "FI", "FaultInjected"),
        FlagInfo::new(Self::RL, "RL", "RateLimited"),
        FlagInfo::new(Self::UAEX, "UAEX", "UnauthorizedExternalService"),
        FlagInfo::new(Self::RLSE, "RLSE", "RateLimitServiceError"),
        FlagInfo::new(Self::DC, "DC", "DownstreamConnectionTermination"),
        FlagInfo::new(Self::URX, "URX", "UpstreamRetryLimitExceeded"),
        FlagInfo::new(Self::SI, "SI", "StreamIdleTimeout"),
        FlagInfo::new(Self::IH, "IH", "InvalidEnvoyRequestHeaders"),
        FlagInfo::new(Self::DPE, "DPE", "DownstreamProtocolError"),
        FlagInfo::new(Self::UMSDR, "UMSDR", "UpstreamMaxStreamDurationReached"),
        FlagInfo::new(Self::RFCF, "RFCF", "ResponseFromCacheFilter"),
        FlagInfo::new(Self::NFCF, "NFCF", "NoFilterConfigFound"),
        FlagInfo::new(Self::DT, "DT", "DurationTimeout"),
        FlagInfo::new(Self::UPE, "UPE", "UpstreamProtocolError"),
        FlagInfo::new(Self::NC, "NC", "NoClusterFound"),
        FlagInfo::new(Self::OM, "OM", "OverloadManagerTerminated"),
        FlagInfo::new(Self::DF, "DF", "DnsResolutionFailed"),
        FlagInfo::new(Self::DO, "DO", "DropOverload"),
        FlagInfo::new(Self::DR, "DR", "DownstreamRemoteReset"),
    ];

    /// The empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Add every flag of `other` to this set.
    #[inline]
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Remove every flag of `other` from this set.
    #[inline]
    pub fn remove(&mut self, other: Self) {
        self.0 &= !other.0;
    }

    /// Whether every flag of `other` is set (true for the empty `other`).
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Build from raw bits; bits that name no flag are dropped.
    pub const fn from_bits_truncate(bits: u32) -> Self {
        Self(bits & ((1 << 29) - 1))
    }

    /// The flag with this short code (`"UH"`), if there is one.
    pub fn from_short(code: &str) -> Option<Self> {
        Self::TABLE.iter().find(|f| f.short == code).map(|f| f.flag)
    }

    /// Short codes in canonical order, comma separated, `-` when empty (Envoy's
    /// `%RESPONSE_FLAGS%`). Appends to `out` without any formatting machinery.
    pub fn write_short(self, out: &mut Vec<u8>) {
        self.write_with(out, |f| f.short);
    }

    /// Long names in canonical order, comma separated, `-` when empty (Envoy's
    /// `%RESPONSE_FLAGS_LONG%`).
    pub fn write_long(self, out: &mut Vec<u8>) {
        self.write_with(out, |f| f.long);
    }

    /// A `Display` adapter printing the long names.
    pub fn long(self) -> LongFlags {
        LongFlags(self)
    }

    fn write_with(self, out: &mut Vec<u8>, pick: impl Fn(&FlagInfo) -> &'static str) {
        if self.is_empty() {
            out.push(b'-');
            return;
        }
        let mut first = true;
        for f in Self::TABLE.iter().filter(|f| self.contains(f.flag)) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(pick(f).as_bytes());
        }
    }

    fn fmt_with(
        self,
        f: &mut fmt::Formatter<'_>,
        pick: impl Fn(&FlagInfo) -> &'static str,
    ) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for info in Self::TABLE.iter().filter(|i| self.contains(i.flag)) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(pick(info))?;
        }
        Ok(())
    }
}

impl FlagInfo {
    const fn new(flag: ResponseFlags, short: &'static str, long: &'static str) -> Self {
        Self { flag, short, long }
    }
}

impl BitOr for ResponseFlags {
    type Output = Self;
    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for ResponseFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_with(f, |i| i.short)
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// Displays a flag set with Envoy's long names (`NoHealthyUpstream,UpstreamOverflow`).
#[derive(Clone, Copy, Debug)]
pub struct LongFlags(ResponseFlags);

impl fmt::Display for LongFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_with(f, |i| i.long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prints_dash() {
        let f = ResponseFlags::default();
        assert!(f.is_empty());
        assert_eq!(f.to_string(), "-");
        assert_eq!(f.long().to_string(), "-");
        let mut out = Vec::new();
        f.write_short(&mut out);
        assert_eq!(out, b"-");
    }

    #[test]
    fn canonical_order_not_insertion_order() {
        let mut f = ResponseFlags::empty();
        f.insert(ResponseFlags::URX);
        f.insert(ResponseFlags::UF);
        f.insert(ResponseFlags::UH);
        assert_eq!(f.to_string(), "UH,UF,URX");
        let mut out = Vec::new();
        f.write_short(&mut out);
        assert_eq!(out, b"UH,UF,URX");
        assert_eq!(
            f.long().to_string(),
            "NoHealthyUpstream,UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
        );
    }

    #[test]
    fn dc_sorts_after_rlse_like_envoy() {
        let f = ResponseFlags::DC | ResponseFlags::UO | ResponseFlags::NC;
        assert_eq!(f.to_string(), "UO,DC,NC");
    }

    #[test]
    fn contains_insert_remove() {
        let mut f = ResponseFlags::UT;
        assert!(f.contains(ResponseFlags::UT));
        assert!(!f.contains(ResponseFlags::UF));
        assert!(!f.contains(ResponseFlags::UT | ResponseFlags::UF));
        f |= ResponseFlags::UF;
        assert!(f.contains(ResponseFlags::UT | ResponseFlags::UF));
        f.remove(ResponseFlags::UT);
        assert_eq!(f, ResponseFlags::UF);
    }

    #[test]
    fn every_flag_has_a_distinct_bit_and_code() {
        let mut all = ResponseFlags::empty();
        for info in ResponseFlags::TABLE.iter() {
            assert_eq!(info.flag.bits().count_ones(), 1, "{}", info.short);
            assert!(!all.contains(info.flag), "duplicate bit for {}", info.short);
            all.insert(info.flag);
            assert_eq!(ResponseFlags::from_short(info.short), Some(info.flag));
            assert_eq!(info.flag.to_string(), info.short);
        }
        assert_eq!(ResponseFlags::from_bits_truncate(u32::MAX), all);
        assert_eq!(ResponseFlags::from_short("XX"), None);
    }
}
