//! Envoy's `FractionalPercent` (numerator over HUNDRED / TEN_THOUSAND / MILLION), compiled once
//! into parts per million so that a per-request sample is one random number and a compare.
//!
//! Used by fault injection, CORS `filter_enabled` and request mirroring. It must not read any
//! runtime layer: Weft has none, so a `runtime_key` always falls back to its default value.

use crate::config::{ConfigError, Ctx};
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

const MILLION: u32 = 1_000_000;

/// A probability in parts per million (0 = never, 1 000 000 = always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction(u32);

impl Fraction {
    pub const NEVER: Fraction = Fraction(0);
    pub const ALWAYS: Fraction = Fraction(MILLION);

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// From a numerator and a denominator of 100, 10 000 or 1 000 000; capped at 100 %, as
    /// Envoy does.
    pub fn new(numerator: u32, denominator: u32) -> Fraction {
        let scale = MILLION / denominator.clamp(1, MILLION);
        Fraction(numerator.saturating_mul(scale).min(MILLION))
    }

    /// Compiles a `FractionalPercent`; unset means `default`.
    pub fn from_proto(
        ctx: &Ctx,
        field: &str,
        p: Option<&FractionalPercent>,
        default: Fraction,
    ) -> Result<Fraction, ConfigError> {
        let Some(p) = p else { return Ok(default) };
        let denominator = match DenominatorType::try_from(p.denominator) {
            Ok(DenominatorType::Hundred) => 100,
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => MILLION,
            Err(_) => {
                return Err(ctx.err(
                    format!("{field}.denominator"),
                    format!("unknown denominator {}", p.denominator),
                ));
            }
        };
        Ok(Fraction::new(p.numerator, denominator))
    }

    /// Compiles a `RuntimeFractionalPercent` (its `default_value`; unset means `default`).
    pub fn from_runtime(
        ctx: &Ctx,
        field: &str,
        p: Option<&RuntimeFractionalPercent>,
        default: Fraction,
    ) -> Result<Fraction, ConfigError> {
        match p {
            None => Ok(default),
            // Envoy: a RuntimeFractionalPercent without default_value is 0 %.
            Some(r) => Fraction::from_proto(
                ctx,
                &format!("{field}.default_value"),
                r.default_value.as_ref(),
                Fraction::NEVER,
            ),
        }
    }

    /// One Bernoulli trial. Never draws a random number for 0 % or 100 %.
    #[inline]
    pub fn sample(self) -> bool {
        match self.0 {
            0 => false,
            MILLION.. => true,
            ppm => rand::random_range(0..MILLION) < ppm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(numerator: u32, d: DenominatorType) -> FractionalPercent {
        FractionalPercent {
            numerator,
            denominator: d as i32,
        }
    }

    #[test]
    fn scales_every_denominator_and_caps() {
        let ctx = Ctx::new("test", "t");
        let f = |p: &FractionalPercent| Fraction::from_proto(&ctx, "p", Some(p), Fraction::NEVER);
        assert_eq!(f(&fp(50, DenominatorType::Hundred)).unwrap().ppm(), 500_000);
        assert_eq!(f(&fp(1, DenominatorType::TenThousand)).unwrap().ppm(), 100);
        assert_eq!(f(&fp(7, DenominatorType::Million)).unwrap().ppm(), 7);
        assert_eq!(
            f(&fp(250, DenominatorType::Hundred)).unwrap(),
            Fraction::ALWAYS
        );
        let bad = FractionalPercent {
            numerator: 1,
            denominator: 9,
        };
        assert!(f(&bad).unwrap_err().to_string().contains("p.denominator"));
        assert_eq!(
            Fraction::from_proto(&ctx, "p", None, Fraction::ALWAYS).unwrap(),
            Fraction::ALWAYS
        );
        let rt = RuntimeFractionalPercent::default();
        assert_eq!(
            Fraction::from_runtime(&ctx, "r", Some(&rt), Fraction::ALWAYS).unwrap(),
            Fraction::NEVER
        );
    }

    #[test]
    fn sampling_follows_the_fraction() {
        assert!(!Fraction::NEVER.sample());
        assert!(Fraction::ALWAYS.sample());
        let quarter = Fraction::new(25, 100);
        let hits = (0..40_000).filter(|_| quarter.sample()).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }
}
