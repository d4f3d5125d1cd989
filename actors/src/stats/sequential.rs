//! Tuning the always-valid p-value (mSPRT) to what a team planned, and the
//! power each test has at the plan.
//!
//! The mSPRT mixes a normal N(0, τ²) over the true relative lift. One τ²
//! for every experiment is badly calibrated: far too wide for a small
//! effect measured on many units, far too narrow for a large one on few.
//! The test's statistic at a look with variance v of the lift estimate and
//! z = r/√v depends on τ² only through ρ = τ²/v:
//!
//! ```text
//! log Λ = −½ log(1 + ρ) + (z²/2) · ρ/(1 + ρ)
//! ```
//!
//! It rejects (1/Λ ≤ α) once z² ≥ (1 + 1/ρ)·(2 log(1/α) + log(1 + ρ)).
//! Choosing ρ at the planned horizon to minimise that critical z
//! ([`rho`]: ≈ 8.2 at α = 0.05) gives the test its most power there
//! (Johari, Pekelis and Walsh choose the mixture this way; GrowthBook's
//! `N*` tunes its confidence sequences to an expected sample size the
//! same way). So τ² = ρ · v_N, with v_N the variance of the lift estimate
//! at the planned units per variant:
//!
//! - planned units N per variant: v_N = v · h / N, with v and h (the
//!   harmonic mean of the two arms' units) as measured now, since the
//!   variance falls as 1/n;
//! - a planned minimum detectable relative effect m (and no units): the
//!   fixed-horizon plan at 80% power has v_N = (m / (z₁₋α/₂ + z₀.₈))²;
//! - nothing planned: N = [`DEFAULT_UNITS_PER_VARIANT`];
//! - an explicit `mixing_variance` is used as given.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::dist::{normal_cdf, normal_quantile};

/// The units per variant the mixture is tuned for when nothing was
/// planned (GrowthBook's default `N*` too).
pub const DEFAULT_UNITS_PER_VARIANT: u64 = 5_000;

/// Power of the fixed-horizon test a minimum detectable effect is planned
/// for.
pub const PLANNED_POWER: f64 = 0.8;

/// Looks at the data over a plan in [`always_valid_power`]: one after
/// every 1% of it.
pub const LOOKS: usize = 100;

/// What the mixture of a metric's always-valid p-value was tuned for
/// (`sequential.tuned_for` in results).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TunedFor {
    /// The experiment's plan: units per variant.
    Plan {
        /// Planned units per variant.
        units_per_variant: u64,
    },
    /// The planned minimum detectable relative lift (the metric's, else
    /// the experiment's).
    Mde {
        /// The relative lift (0.05 = 5%).
        mde: f64,
    },
    /// Nothing planned: [`DEFAULT_UNITS_PER_VARIANT`].
    Default {
        /// The units per variant assumed.
        units_per_variant: u64,
    },
    /// The experiment's explicit `mixing_variance`.
    MixingVariance {
        /// τ², as given.
        mixing_variance: f64,
    },
}

impl TunedFor {
    /// τ² for an estimate with variance `v` now, from arms whose units'
    /// harmonic mean is `h`, at level `alpha`. Relative lifts (an `mde`, a
    /// `mixing_variance` set by hand) are carried to the estimate's scale
    /// by `base`: the control's value for a difference, 1 for a relative
    /// lift itself.
    pub fn mixing_variance(self, v: f64, h: f64, base: f64, alpha: f64) -> f64 {
        let tau2 = match self {
            TunedFor::Plan { units_per_variant } | TunedFor::Default { units_per_variant } => {
                rho(alpha) * v * h / units_per_variant.max(1) as f64
            }
            TunedFor::Mde { mde } => {
                let z = normal_quantile(1.0 - alpha / 2.0) + normal_quantile(PLANNED_POWER);
                rho(alpha) * (mde * base / z).powi(2)
            }
            TunedFor::MixingVariance { mixing_variance } => mixing_variance * base * base,
        };
        if tau2.is_finite() && tau2 > 0.0 {
            tau2
        } else {
            f64::MIN_POSITIVE
        }
    }
}

/// The critical z² of the always-valid test at a look where τ²/v = `rho`.
fn critical_z2(rho: f64, alpha: f64) -> f64 {
    (1.0 + 1.0 / rho) * (2.0 * (1.0 / alpha).ln() + rho.ln_1p())
}

/// ρ = τ²/v_N minimising the critical z at the planned horizon (golden
/// section search; the function is convex in log ρ).
pub fn rho(alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 8.0_f64); // ln ρ in [1, e⁸]
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: f64| critical_z2(x.exp(), alpha);
    for _ in 0..80 {
        let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if f(a) < f(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    ((lo + hi) / 2.0).exp()
}

/// The fixed-horizon two-sided test's power when the expected z at the
/// horizon is `z_star`.
pub fn fixed_power(z_star: f64, alpha: f64) -> f64 {
    let z = normal_quantile(1.0 - alpha / 2.0);
    normal_cdf(z_star - z) + normal_cdf(-z_star - z)
}

/// The always-valid test's power, tuned to the horizon ([`rho`]), when
/// the expected z at the horizon is `z_star` and the data is looked at
/// [`LOOKS`] times evenly up to it: the share of 10,000 seeded paths of a
/// Brownian motion with that drift whose statistic falls below `alpha`
/// at some look. Seeded, so one question has one answer.
pub fn always_valid_power(z_star: f64, alpha: f64) -> f64 {
    const PATHS: usize = 10_000;
    let rho = rho(alpha);
    let threshold = (1.0 / alpha).ln();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let step = (1.0 / LOOKS as f64).sqrt();
    let mut rejected = 0;
    for _ in 0..PATHS {
        let mut w = 0.0;
        for k in 1..=LOOKS {
            let draw: f64 = StandardNormal.sample(&mut rng);
            w += draw * step;
            let s = k as f64 / LOOKS as f64;
            let z = (z_star * s + w) / s.sqrt();
            let r = rho * s;
            let log_lambda = -0.5 * r.ln_1p() + z * z / 2.0 * r / (1.0 + r);
            if log_lambda >= threshold {
                rejected += 1;
                break;
            }
        }
    }
    rejected as f64 / PATHS as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rho_minimises_the_critical_z_at_the_horizon() {
        let r = rho(0.05);
        assert!((7.5..9.0).contains(&r), "{r}");
        for other in [r * 0.7, r * 1.4] {
            assert!(critical_z2(other, 0.05) > critical_z2(r, 0.05));
        }
        // A stricter level asks for a wider mixture.
        assert!(rho(0.01) > r);
    }

    #[test]
    fn the_mixture_scales_with_the_variance_at_the_plan() {
        let alpha = 0.05;
        let plan = TunedFor::Plan {
            units_per_variant: 10_000,
        };
        // Now 1,000 units per arm with v = 0.04: at 10,000 v is 0.004.
        let tau2 = plan.mixing_variance(0.04, 1_000.0, 1.0, alpha);
        assert!((tau2 - rho(alpha) * 0.004).abs() < 1e-12, "{tau2}");
        // The same later: the plan, not the data so far, sets it.
        let later = plan.mixing_variance(0.008, 5_000.0, 1.0, alpha);
        assert!((later - tau2).abs() < 1e-12);
        // A 10% relative MDE: v_N = (0.1 / 2.80)^2, so τ² ≈ 0.0105.
        let mde = TunedFor::Mde { mde: 0.1 }.mixing_variance(1.0, 1.0, 1.0, alpha);
        assert!((mde - 0.0105).abs() < 0.0005, "{mde}");
        // On a difference of rates around 0.2, the same lift is 0.02.
        let on_rates = TunedFor::Mde { mde: 0.1 }.mixing_variance(1.0, 1.0, 0.2, alpha);
        assert!((on_rates - mde * 0.04).abs() < 1e-12);
        let explicit = TunedFor::MixingVariance {
            mixing_variance: 0.01,
        };
        assert_eq!(explicit.mixing_variance(1.0, 1.0, 1.0, alpha), 0.01);
        assert!((explicit.mixing_variance(1.0, 1.0, 0.5, alpha) - 0.0025).abs() < 1e-15);
    }

    #[test]
    fn power_at_the_plan_for_both_tests() {
        // A plan at 80% power: z* = 1.96 + 0.84.
        let z_star = normal_quantile(0.975) + normal_quantile(0.8);
        assert!((fixed_power(z_star, 0.05) - 0.8).abs() < 1e-3);
        let av = always_valid_power(z_star, 0.05);
        assert!((0.45..0.6).contains(&av), "{av}");
        assert_eq!(av, always_valid_power(z_star, 0.05), "seeded");
        assert!(always_valid_power(0.0, 0.05) <= 0.05);
    }
}
