//! Units needed per variant to detect an effect (normal approximation,
//! two-sided test, equal allocation).

use serde::Serialize;

use super::dist::normal_quantile;
use super::sequential::{always_valid_power, fixed_power};

/// What a sample-size question is about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleSize {
    /// Two proportions: the baseline rate and the absolute change to detect.
    Proportion {
        /// Baseline rate p1, in (0, 1).
        baseline: f64,
        /// p2 - p1; p2 must stay in (0, 1).
        mde: f64,
    },
    /// Two means with a common standard deviation.
    Mean {
        /// Standard deviation of the per-unit value.
        stddev: f64,
        /// Absolute difference of means to detect.
        mde: f64,
    },
}

/// A question with no answer, naming the parameter at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SampleSizeError {
    /// The parameter.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: &'static str,
}

/// The answer, with the inputs it used.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SampleSizeAnswer {
    /// Units needed in each variant.
    pub units_per_variant: u64,
    /// Significance level used.
    pub alpha: f64,
    /// Power used.
    pub power: f64,
    /// At `units_per_variant` and the effect asked about: the power of each
    /// test abacus reports (what each column of the results can tell).
    pub power_at_plan: PowerAtPlan,
}

/// The power of both tests at a plan's units and effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PowerAtPlan {
    /// The fixed-horizon test (`p_value`), looked at once, at the end.
    pub fixed_horizon: f64,
    /// The always-valid test (`sequential_p_value`) tuned to this plan
    /// (`plan.units_per_variant`), looked at after every 1% of the units.
    pub always_valid: f64,
}

/// Units per variant for a two-sided test at `alpha` with `power`:
///
/// ```text
/// proportions: n = (z_{1-a/2} sqrt(2 p(1-p)) + z_{1-b} sqrt(p1(1-p1) + p2(1-p2)))^2 / (p2-p1)^2,
///              p2 = p1 + mde, p = (p1+p2)/2
/// means:       n = 2 ((z_{1-a/2} + z_{1-b}) stddev / mde)^2
/// ```
/// rounded up.
pub fn sample_size(
    question: SampleSize,
    alpha: f64,
    power: f64,
) -> Result<SampleSizeAnswer, SampleSizeError> {
    let bad = |field, message| Err(SampleSizeError { field, message });
    if !(alpha > 0.0 && alpha < 1.0) {
        return bad("alpha", "must be between 0 and 1");
    }
    if !(power > 0.0 && power < 1.0) {
        return bad("power", "must be between 0 and 1");
    }
    let z_alpha = normal_quantile(1.0 - alpha / 2.0);
    let z_power = normal_quantile(power);
    let (n, spread) = match question {
        SampleSize::Proportion { baseline, mde } => {
            if !(baseline > 0.0 && baseline < 1.0) {
                return bad("baseline", "must be between 0 and 1");
            }
            let p2 = baseline + mde;
            if !mde.is_finite() || mde == 0.0 {
                return bad("mde", "must be a non-zero number");
            }
            if !(p2 > 0.0 && p2 < 1.0) {
                return bad("mde", "baseline + mde must be between 0 and 1");
            }
            let p = (baseline + p2) / 2.0;
            let a = z_alpha * (2.0 * p * (1.0 - p)).sqrt();
            let spread = (baseline * (1.0 - baseline) + p2 * (1.0 - p2)).sqrt();
            let b = z_power * spread;
            ((a + b).powi(2) / mde.powi(2), spread / mde.abs())
        }
        SampleSize::Mean { stddev, mde } => {
            if !(stddev > 0.0 && stddev.is_finite()) {
                return bad("stddev", "must be a positive number");
            }
            if !mde.is_finite() || mde == 0.0 {
                return bad("mde", "must be a non-zero number");
            }
            let spread = 2f64.sqrt() * stddev / mde.abs();
            (2.0 * ((z_alpha + z_power) * stddev / mde).powi(2), spread)
        }
    };
    if !(n.is_finite() && n < 1e15) {
        return bad("mde", "too small to reach with any sample");
    }
    // Guard against 1000.0000000001 from rounding becoming 1001.
    let units = (n - 1e-9).ceil().max(1.0) as u64;
    // The expected z at the plan: the effect over the standard error of
    // the difference with `units` per variant.
    let z_star = (units as f64).sqrt() / spread;
    Ok(SampleSizeAnswer {
        units_per_variant: units,
        alpha,
        power,
        power_at_plan: PowerAtPlan {
            fixed_horizon: fixed_power(z_star, alpha),
            always_valid: always_valid_power(z_star, alpha),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_match_the_textbook_example() {
        // baseline 10%, +2 points, alpha 0.05, power 0.8: 3,841 per variant
        // (statsmodels' NormalIndPower on Cohen's h gives 3,835; this is the
        // unpooled-variance formula the spec names, as in Evan Miller's).
        let n = sample_size(
            SampleSize::Proportion {
                baseline: 0.1,
                mde: 0.02,
            },
            0.05,
            0.8,
        )
        .unwrap();
        assert_eq!(n.units_per_variant, 3841);
    }

    #[test]
    fn means_follow_the_closed_form() {
        // 2 (1.959964 + 0.841621)^2 (10 / 1)^2 = 1569.77 -> 1570
        let n = sample_size(
            SampleSize::Mean {
                stddev: 10.0,
                mde: 1.0,
            },
            0.05,
            0.8,
        )
        .unwrap();
        assert_eq!(n.units_per_variant, 1570);
    }

    #[test]
    fn impossible_questions_name_the_parameter() {
        let q = SampleSize::Proportion {
            baseline: 0.99,
            mde: 0.02,
        };
        assert_eq!(sample_size(q, 0.05, 0.8).unwrap_err().field, "mde");
        assert_eq!(sample_size(q, 0.0, 0.8).unwrap_err().field, "alpha");
        let q = SampleSize::Mean {
            stddev: 0.0,
            mde: 1.0,
        };
        assert_eq!(sample_size(q, 0.05, 0.8).unwrap_err().field, "stddev");
    }
}
