//! The statistics behind results: per-variant estimates, each treatment
//! against the control, Holm's and Benjamini–Hochberg's corrections,
//! Bayesian chance to win, an
//! always-valid (mSPRT) p-value and the sample-ratio-mismatch check.
//!
//! Pure functions of the aggregates (units, conversions, sums and sums of
//! squares of per-unit values), so a result costs microseconds however many
//! events produced it. The definitions are spelled out, and the expected
//! values computed with scipy/statsmodels, in `tests/stats/reference.py`;
//! the tests below hold every number to 1e-6 relative against its output.
//! Where a number is undefined (fewer than two units, no variance, no
//! control data) it is `None` with a reason, never NaN.

pub mod bandit;
mod dist;
mod guardrail;
mod sample_size;
pub mod sequential;

use serde::Serialize;

use crate::domain::{Correction, MetricKind, QuantileSketch};

pub use guardrail::{regression, Regression};
pub use sample_size::{sample_size, PowerAtPlan, SampleSize, SampleSizeAnswer, SampleSizeError};
pub use sequential::TunedFor;

/// SRM is flagged below this p-value.
pub const SRM_THRESHOLD: f64 = 0.001;
/// Two-sided 95% intervals.
const CONFIDENCE: f64 = 0.95;

/// One variant's aggregates for one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    /// Exposed units.
    pub units: u64,
    /// Units with at least one event (binomial metrics).
    pub conversions: u64,
    /// Counted events.
    pub events: u64,
    /// Sum of per-unit values (mean metrics).
    pub sum: f64,
    /// Sum of squared per-unit values (mean metrics).
    pub sum_squares: f64,
    /// A ratio metric's denominator (`sum` and `sum_squares` are then the
    /// numerator's).
    pub denominator: Option<Denominator>,
    /// A CUPED metric's covariates.
    pub covariate: Option<Covariates>,
    /// A quantile metric's estimate.
    pub quantile: Option<Quantiles>,
}

/// A quantile metric's estimate for one variant, from its sketch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    /// The tested quantile; `None` without values.
    pub value: Option<f64>,
    /// The variance of that estimate (Woodruff's, clustered by unit);
    /// `None` while the values come from fewer than two unit groups.
    pub variance: Option<f64>,
    /// Its degrees of freedom: the unit groups holding values, less one.
    pub df: f64,
    /// The usual quantiles, for display.
    pub percentiles: Percentiles,
}

impl Quantiles {
    /// The `level` quantile of `sketch`, its variance and the usual
    /// quantiles.
    pub fn of(sketch: &QuantileSketch, level: f64) -> Self {
        let estimate = sketch.estimate(level);
        let variance = estimate.and_then(|e| e.variance);
        Self {
            value: estimate.map(|e| e.value),
            variance: variance.map(|v| v.value),
            df: variance.map_or(0.0, |v| v.df),
            percentiles: Percentiles {
                p50: sketch.quantile(0.5),
                p90: sketch.quantile(0.9),
                p95: sketch.quantile(0.95),
                p99: sketch.quantile(0.99),
            },
        }
    }
}

/// A variant's p50, p90, p95 and p99 (each `null` without values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// A CUPED metric's per-unit covariates `c`, summed over a variant's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Covariates {
    /// Sum of `c`.
    pub sum: f64,
    /// Sum of `c²`.
    pub sum_squares: f64,
    /// Sum of each unit's value times its covariate.
    pub cross: f64,
}

/// CUPED's regression of the metric on the covariate, over every unit of
/// every variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CupedFit {
    /// θ = cov(x, c) / var(c), pooled (Deng et al. 2013).
    pub theta: f64,
    /// 1 - var(x - θc) / var(x), pooled: the share of the variance removed
    /// (ρ², ρ the correlation of value and covariate).
    pub variance_reduction: f64,
}

/// A ratio metric's per-unit denominators, summed over a variant's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Denominator {
    /// Sum of per-unit denominators.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_squares: f64,
    /// Sum of each unit's numerator times its denominator.
    pub cross: f64,
}

/// How to analyse a metric.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Binomial or mean.
    pub kind: MetricKind,
    /// Significance level.
    pub alpha: f64,
    /// What the always-valid p-value's mixture is tuned for (see
    /// [`sequential`]).
    pub tuned_for: TunedFor,
}

impl Settings {
    /// τ² of the mSPRT for an estimate with variance `v`, from arms of
    /// `n_t` and `n_c` units, on the scale where a relative lift of 1 is
    /// `base` (the control's value for a difference, 1 for a lift).
    fn mixing_variance(&self, v: f64, n_t: f64, n_c: f64, base: f64) -> f64 {
        let h = 2.0 / (1.0 / n_t + 1.0 / n_c);
        self.tuned_for.mixing_variance(v, h, base, self.alpha)
    }
}

/// One variant's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantStats {
    /// Variant key.
    pub variant: String,
    /// Exposed units.
    pub units: u64,
    /// Counted events.
    pub events: u64,
    /// Conversions and rate, or sum and mean.
    #[serde(flatten)]
    pub estimate: Estimate,
    /// Standard deviation of the per-unit value (for a ratio, of its
    /// delta-method linearisation `(x - R d) / mean(d)`).
    pub stddev: Option<f64>,
    /// 95% interval: Wilson for a rate, Student t for a mean (for a
    /// quantile, on the unit groups' degrees of freedom), normal
    /// (delta method) for a ratio.
    pub ci: Option<[f64; 2]>,
    /// Why something is `null`.
    pub reason: Option<&'static str>,
}

/// The per-kind part of a variant's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Estimate {
    /// A binomial metric.
    Rate {
        /// Units that converted.
        conversions: u64,
        /// conversions / units.
        rate: Option<f64>,
    },
    /// A mean metric.
    Mean {
        /// Sum of per-unit values.
        sum: f64,
        /// sum / units.
        mean: Option<f64>,
    },
    /// A ratio metric.
    Ratio {
        /// Sum of per-unit numerators.
        numerator: f64,
        /// Sum of per-unit denominators.
        denominator: f64,
        /// numerator / denominator.
        ratio: Option<f64>,
    },
    /// A quantile metric.
    Quantile {
        /// The tested quantile of every counted event's value.
        value: Option<f64>,
        /// The usual quantiles.
        percentiles: Percentiles,
    },
}

/// A difference and its 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lift {
    /// Point estimate.
    pub estimate: Option<f64>,
    /// 95% interval.
    pub ci: Option<[f64; 2]>,
}

/// One treatment against the control.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    /// The treatment's key.
    pub variant: String,
    /// Treatment minus control, with the unpooled interval: Wald (rate),
    /// Welch (mean, quantile) or delta-method normal (ratio).
    pub absolute: Option<Lift>,
    /// (Treatment - control) / control, delta-method interval.
    pub relative: Option<Lift>,
    /// z (binomial, pooled; ratio, delta method) or Welch's t (mean).
    pub statistic: Option<f64>,
    /// Two-sided fixed-horizon p-value.
    pub p_value: Option<f64>,
    /// `p_value` after Holm's correction across this metric's treatments.
    pub p_value_holm: Option<f64>,
    /// `p_value` after the experiment's correction across treatments ×
    /// metrics (without one: `p_value_holm`).
    pub p_value_adjusted: Option<f64>,
    /// `p_value_adjusted <= alpha`.
    pub significant: bool,
    /// Posterior probability that the treatment beats the control.
    pub chance_to_win: Option<f64>,
    /// Always-valid p-value (mSPRT): safe to watch continuously.
    pub sequential_p_value: Option<f64>,
    /// `sequential_p_value` after Holm's correction across this metric's
    /// treatments.
    pub sequential_p_value_holm: Option<f64>,
    /// `sequential_p_value` after the experiment's correction (without
    /// one: `sequential_p_value_holm`).
    pub sequential_p_value_adjusted: Option<f64>,
    /// `sequential_p_value_adjusted <= alpha`.
    pub sequential_significant: bool,
    /// Why something is `null`.
    pub reason: Option<&'static str>,
}

/// Sample-ratio mismatch: exposed units against the configured weights.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Srm {
    /// Pearson's chi-square statistic.
    pub chi_square: Option<f64>,
    /// Its p-value (k - 1 degrees of freedom).
    pub p_value: Option<f64>,
    /// `p_value < 0.001`.
    pub detected: bool,
    /// Why something is `null`.
    pub reason: Option<&'static str>,
}

/// Variants first (the control first), then each treatment against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Per variant.
    pub variants: Vec<VariantStats>,
    /// Per treatment, in variant order.
    pub comparisons: Vec<Comparison>,
    /// With covariates: the regression every estimate was adjusted by.
    pub cuped: Option<CupedFit>,
}

/// The per-unit mean and variance of one arm.
#[derive(Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    /// Variance of the per-unit value (p(1-p) for a rate).
    var: f64,
}

impl Moments {
    /// Variance of the estimated mean.
    fn var_of_mean(self) -> f64 {
        self.var / self.n
    }
}

/// Analyses one metric; `arms[0]` is the control. Its comparisons come
/// corrected by Holm across its treatments; [`correct`] makes them part of
/// a wider family.
pub fn analyse(settings: Settings, arms: &[(&str, Arm)]) -> Analysis {
    let cuped = cuped_fit(settings.kind, arms);
    let m: Vec<Option<Moments>> = arms
        .iter()
        .map(|(_, arm)| match cuped {
            Some(fit) => adjusted(fit, arms, arm),
            None => moments(settings.kind, arm),
        })
        .collect();
    let variants = arms
        .iter()
        .zip(&m)
        .map(|((key, arm), m)| variant_stats(settings.kind, key, arm, *m))
        .collect();
    let mut comparisons: Vec<Comparison> = match arms.split_first() {
        Some(((_, control), treatments)) => treatments
            .iter()
            .zip(&m[1..])
            .map(|((key, arm), t)| compare(settings, key, (arm, *t), (control, m[0])))
            .collect(),
        None => Vec::new(),
    };
    let fixed = holm(comparisons.iter().map(|c| c.p_value));
    let sequential = holm(comparisons.iter().map(|c| c.sequential_p_value));
    for ((c, p), s) in comparisons.iter_mut().zip(fixed).zip(sequential) {
        c.p_value_holm = p;
        c.sequential_p_value_holm = s;
        c.adjust(p, s, settings.alpha);
    }
    Analysis {
        variants,
        comparisons,
        cuped,
    }
}

/// The sample variance of `n` values from their sum and sum of squares
/// (`sum_products` for a covariance: the sum of products of two values,
/// `other` the second's sum).
fn sample_covariance(n: f64, sum: f64, other: f64, sum_products: f64) -> f64 {
    (sum_products - sum * other / n) / (n - 1.0)
}

/// CUPED's pooled regression, when every arm has covariates (a mean
/// metric with CUPED) and there are at least two units. θ is 0 when the
/// covariates do not vary.
fn cuped_fit(kind: MetricKind, arms: &[(&str, Arm)]) -> Option<CupedFit> {
    if kind != MetricKind::Mean || arms.iter().any(|(_, a)| a.covariate.is_none()) {
        return None;
    }
    let (mut n, mut x, mut xx, mut c, mut cc, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (_, arm) in arms {
        let cov = arm.covariate.unwrap_or_default();
        n += arm.units as f64;
        (x, xx) = (x + arm.sum, xx + arm.sum_squares);
        (c, cc, xc) = (c + cov.sum, cc + cov.sum_squares, xc + cov.cross);
    }
    if n < 2.0 {
        return Some(CupedFit {
            theta: 0.0,
            variance_reduction: 0.0,
        });
    }
    let var_c = sample_covariance(n, c, c, cc);
    let var_x = sample_covariance(n, x, x, xx);
    let cov = sample_covariance(n, x, c, xc);
    let varies = |v: f64, squares: f64| v > 8.0 * f64::EPSILON * squares / (n - 1.0);
    let theta = if varies(var_c, cc) { cov / var_c } else { 0.0 };
    let theta = if theta.is_finite() { theta } else { 0.0 };
    let reduction = theta * cov / var_x;
    let variance_reduction = if varies(var_x, xx) && reduction.is_finite() {
        reduction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Some(CupedFit {
        theta,
        variance_reduction,
    })
}

/// One arm's moments of `x - θ (c - c̄)`, c̄ the covariates' mean over
/// every arm: its adjusted mean and the variance of the adjusted value.
fn adjusted(fit: CupedFit, arms: &[(&str, Arm)], arm: &Arm) -> Option<Moments> {
    let raw = moments(MetricKind::Mean, arm)?;
    let units: f64 = arms.iter().map(|(_, a)| a.units as f64).sum();
    let pooled: f64 = arms
        .iter()
        .map(|(_, a)| a.covariate.map_or(0.0, |c| c.sum))
        .sum::<f64>()
        / units;
    let cov = arm.covariate.unwrap_or_default();
    let n = raw.n;
    let mean = raw.mean - fit.theta * (cov.sum / n - pooled);
    if arm.units < 2 {
        return Some(Moments { mean, ..raw });
    }
    let theta = fit.theta;
    let var_c = sample_covariance(n, cov.sum, cov.sum, cov.sum_squares);
    let cross = sample_covariance(n, arm.sum, cov.sum, cov.cross);
    let var = raw.var - 2.0 * theta * cross + theta * theta * var_c;
    let scale = arm.sum_squares.abs() + theta * theta * cov.sum_squares;
    let var = if var <= 64.0 * f64::EPSILON * scale / (n - 1.0) {
        0.0
    } else {
        var
    };
    Some(Moments { n, mean, var })
}

fn moments(kind: MetricKind, arm: &Arm) -> Option<Moments> {
    if arm.units == 0 {
        return None;
    }
    let n = arm.units as f64;
    // The sample variance from sums, zero below the sums' rounding error.
    let variance = |sum: f64, sum_squares: f64| {
        let raw = (sum_squares - sum * sum / n) / (n - 1.0);
        if raw <= 8.0 * f64::EPSILON * sum_squares / (n - 1.0) {
            0.0
        } else {
            raw
        }
    };
    Some(match kind {
        MetricKind::Binomial => {
            let p = arm.conversions as f64 / n;
            Moments {
                n,
                mean: p,
                var: p * (1.0 - p),
            }
        }
        MetricKind::Mean => {
            let mean = arm.sum / n;
            let var = if arm.units < 2 {
                f64::NAN
            } else {
                variance(arm.sum, arm.sum_squares)
            };
            Moments { n, mean, var }
        }
        MetricKind::Quantile => {
            // The estimate's variance as that of a mean of `n` values
            // (NaN without one, like a mean of one unit).
            let q = arm.quantile?;
            Moments {
                n,
                mean: q.value?,
                var: q.variance.map_or(f64::NAN, |v| v * n),
            }
        }
        MetricKind::Ratio => {
            let d = arm.denominator.unwrap_or_default();
            let mean_d = d.sum / n;
            let ratio = arm.sum / d.sum;
            // The delta method: R = mean(x) / mean(d) varies per unit as
            // (x - R d) / mean(d), whose variance is
            // (var x - 2 R cov(x, d) + R^2 var d) / mean(d)^2.
            let var = if arm.units < 2 {
                f64::NAN
            } else {
                let cov = (d.cross - arm.sum * d.sum / n) / (n - 1.0);
                let linear = variance(arm.sum, arm.sum_squares) - 2.0 * ratio * cov
                    + ratio * ratio * variance(d.sum, d.sum_squares);
                // Zero below the rounding error of its terms.
                let scale = arm.sum_squares.abs() + ratio * ratio * d.sum_squares;
                if linear <= 64.0 * f64::EPSILON * scale / (n - 1.0) {
                    0.0
                } else {
                    linear / (mean_d * mean_d)
                }
            };
            Moments {
                n,
                mean: ratio,
                var,
            }
        }
    })
}

/// Why a quantile metric has no value: no exposed unit sent one.
const NO_VALUES: &str = "no values yet";
/// Why a quantile has no interval: its values come from too few units to
/// tell how much they vary between units.
const ONE_GROUP: &str = "values from too few units for an interval";

/// Why a ratio has no value: its denominators sum to zero.
const NO_DENOMINATOR: &str = "the denominator is zero";

/// Whether `arm` is a ratio without a denominator.
fn denominator_zero(kind: MetricKind, arm: &Arm) -> bool {
    kind == MetricKind::Ratio && arm.denominator.is_none_or(|d| d.sum == 0.0)
}

fn variant_stats(kind: MetricKind, key: &str, arm: &Arm, m: Option<Moments>) -> VariantStats {
    let estimate = match kind {
        MetricKind::Binomial => Estimate::Rate {
            conversions: arm.conversions,
            rate: m.map(|m| m.mean),
        },
        MetricKind::Mean => Estimate::Mean {
            sum: arm.sum,
            mean: m.map(|m| m.mean),
        },
        MetricKind::Ratio => Estimate::Ratio {
            numerator: arm.sum,
            denominator: arm.denominator.map_or(0.0, |d| d.sum),
            ratio: m.filter(|_| !denominator_zero(kind, arm)).map(|m| m.mean),
        },
        MetricKind::Quantile => Estimate::Quantile {
            value: m.map(|m| m.mean),
            percentiles: arm.quantile.unwrap_or_default().percentiles,
        },
    };
    let mut out = VariantStats {
        variant: key.to_owned(),
        units: arm.units,
        events: arm.events,
        estimate,
        stddev: None,
        ci: None,
        reason: None,
    };
    let Some(m) = m else {
        out.reason = Some(if arm.units > 0 {
            NO_VALUES
        } else {
            "no exposed units"
        });
        return out;
    };
    if kind == MetricKind::Binomial {
        out.stddev = Some(m.var.sqrt());
    }
    if denominator_zero(kind, arm) {
        out.reason = Some(NO_DENOMINATOR);
        return out;
    }
    if arm.units < 2 {
        out.reason = Some("fewer than 2 units");
        return out;
    }
    if kind == MetricKind::Quantile && m.var.is_nan() {
        out.reason = Some(ONE_GROUP);
        return out;
    }
    // A quantile has no per-unit value to spread.
    out.stddev = (kind != MetricKind::Quantile).then(|| m.var.sqrt());
    let tail = (1.0 + CONFIDENCE) / 2.0;
    out.ci = Some(match kind {
        MetricKind::Binomial => wilson(m, dist::normal_quantile(tail)),
        MetricKind::Mean | MetricKind::Ratio | MetricKind::Quantile if m.var == 0.0 => {
            [m.mean, m.mean]
        }
        MetricKind::Quantile => {
            let df = arm.quantile.map_or(0.0, |q| q.df);
            let half = dist::t_quantile(tail, df) * m.var_of_mean().sqrt();
            [m.mean - half, m.mean + half]
        }
        MetricKind::Mean => {
            let half = dist::t_quantile(tail, m.n - 1.0) * m.var_of_mean().sqrt();
            [m.mean - half, m.mean + half]
        }
        MetricKind::Ratio => {
            let half = dist::normal_quantile(tail) * m.var_of_mean().sqrt();
            [m.mean - half, m.mean + half]
        }
    });
    out
}

/// The Wilson score interval of a rate.
fn wilson(m: Moments, z: f64) -> [f64; 2] {
    let z2 = z * z;
    let denom = 1.0 + z2 / m.n;
    let centre = (m.mean + z2 / (2.0 * m.n)) / denom;
    let half = z / denom * (m.mean * (1.0 - m.mean) / m.n + z2 / (4.0 * m.n * m.n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// Each variant's exposed units without figures, and comparisons without
/// any, all for `reason`: a metric that cannot be analysed for now.
pub fn unavailable(settings: Settings, arms: &[(&str, Arm)], reason: &'static str) -> Analysis {
    let variants = arms
        .iter()
        .map(|(key, arm)| {
            let mut out = variant_stats(settings.kind, key, &Arm::default(), None);
            out.units = arm.units;
            out.estimate = match out.estimate {
                Estimate::Rate { conversions, .. } => Estimate::Rate {
                    conversions,
                    rate: None,
                },
                Estimate::Mean { sum, .. } => Estimate::Mean { sum, mean: None },
                Estimate::Ratio { .. } => Estimate::Ratio {
                    numerator: 0.0,
                    denominator: 0.0,
                    ratio: None,
                },
                Estimate::Quantile { .. } => Estimate::Quantile {
                    value: None,
                    percentiles: Percentiles::default(),
                },
            };
            out.reason = Some(reason);
            out
        })
        .collect();
    let comparisons = arms
        .iter()
        .skip(1)
        .map(|(key, _)| Comparison {
            reason: Some(reason),
            ..Comparison::empty(key)
        })
        .collect();
    Analysis {
        variants,
        comparisons,
        cuped: None,
    }
}

impl Comparison {
    /// A comparison of `key` without any figures yet.
    fn empty(key: &str) -> Self {
        Self {
            variant: key.to_owned(),
            absolute: None,
            relative: None,
            statistic: None,
            p_value: None,
            p_value_holm: None,
            p_value_adjusted: None,
            significant: false,
            chance_to_win: None,
            sequential_p_value: None,
            sequential_p_value_holm: None,
            sequential_p_value_adjusted: None,
            sequential_significant: false,
            reason: None,
        }
    }
}

/// `arm` against `control`, each with its moments.
fn compare(
    settings: Settings,
    key: &str,
    (arm, t): (&Arm, Option<Moments>),
    (control, c): (&Arm, Option<Moments>),
) -> Comparison {
    let mut out = Comparison::empty(key);
    let (Some(t), Some(c)) = (t, c) else {
        let without_values = settings.kind == MetricKind::Quantile
            && [arm, control]
                .iter()
                .any(|a| a.units > 0 && a.quantile.is_none_or(|q| q.value.is_none()));
        out.reason = Some(if without_values {
            NO_VALUES
        } else {
            "fewer than 2 units in a variant"
        });
        return out;
    };
    if arm.units < 2 || control.units < 2 {
        out.reason = Some("fewer than 2 units in a variant");
        return out;
    }
    if denominator_zero(settings.kind, arm) || denominator_zero(settings.kind, control) {
        out.reason = Some(NO_DENOMINATOR);
        return out;
    }
    if settings.kind == MetricKind::Quantile && (t.var.is_nan() || c.var.is_nan()) {
        out.reason = Some(ONE_GROUP);
        return out;
    }
    let z = dist::normal_quantile((1.0 + CONFIDENCE) / 2.0);
    let d = t.mean - c.mean;
    let (var_t, var_c) = (t.var_of_mean(), c.var_of_mean());
    let se = (var_t + var_c).sqrt();
    let relative = relative_lift(d, t, c, z);
    out.reason = relative.reason;
    // The always-valid test is of the difference the fixed test is of,
    // with its unpooled variance: on the relative lift, whose variance
    // carries the control's noise through the division too, it has less
    // power for the same data (docs/statistics.md).
    let v = var_t + var_c;
    out.sequential_p_value = (relative.lift.estimate)
        .filter(|_| v > 0.0)
        .map(|_| msprt(d, v, settings.mixing_variance(v, t.n, c.n, c.mean)));
    out.relative = Some(relative.lift);
    match settings.kind {
        MetricKind::Binomial => {
            out.absolute = Some(Lift {
                estimate: Some(d),
                ci: (se > 0.0).then_some([d - z * se, d + z * se]),
            });
            out.chance_to_win = Some(dist::chance_to_beat(
                1.0 + arm.conversions as f64,
                1.0 + (arm.units - arm.conversions) as f64,
                1.0 + control.conversions as f64,
                1.0 + (control.units - control.conversions) as f64,
            ));
            let pooled = (arm.conversions + control.conversions) as f64 / (t.n + c.n);
            if pooled <= 0.0 || pooled >= 1.0 {
                out.sequential_p_value = None;
                out.reason = Some("no variance: every unit did the same");
                return out;
            }
            let statistic = d / (pooled * (1.0 - pooled) * (1.0 / t.n + 1.0 / c.n)).sqrt();
            out.statistic = Some(statistic);
            out.p_value = Some(dist::normal_two_sided(statistic));
        }
        MetricKind::Mean | MetricKind::Ratio | MetricKind::Quantile => {
            if se == 0.0 {
                out.absolute = Some(Lift {
                    estimate: Some(d),
                    ci: None,
                });
                out.sequential_p_value = None;
                out.reason = Some("no variance in either variant");
                return out;
            }
            let statistic = d / se;
            let (half, p) = if settings.kind == MetricKind::Ratio {
                // The delta method is asymptotic: normal, as for the lift.
                (z * se, dist::normal_two_sided(statistic))
            } else {
                // Welch–Satterthwaite; a quantile's variances each have
                // the unit groups' degrees of freedom.
                let (df_t, df_c) = match settings.kind {
                    MetricKind::Quantile => (
                        arm.quantile.map_or(0.0, |q| q.df),
                        control.quantile.map_or(0.0, |q| q.df),
                    ),
                    _ => (t.n - 1.0, c.n - 1.0),
                };
                let df = (var_t + var_c).powi(2) / (var_t * var_t / df_t + var_c * var_c / df_c);
                let half = dist::t_quantile((1.0 + CONFIDENCE) / 2.0, df) * se;
                (half, dist::t_two_sided(statistic, df))
            };
            out.absolute = Some(Lift {
                estimate: Some(d),
                ci: Some([d - half, d + half]),
            });
            out.statistic = Some(statistic);
            out.p_value = Some(p);
            out.chance_to_win = Some(dist::normal_cdf(statistic));
        }
    }
    out
}

struct Relative {
    lift: Lift,
    variance: Option<f64>,
    reason: Option<&'static str>,
}

/// (t - c) / c with the delta-method variance
/// `var_t / c^2 + t^2 var_c / c^4`.
fn relative_lift(d: f64, t: Moments, c: Moments, z: f64) -> Relative {
    if c.mean == 0.0 {
        return Relative {
            lift: Lift {
                estimate: None,
                ci: None,
            },
            variance: None,
            reason: Some("control is zero"),
        };
    }
    let r = d / c.mean;
    let v = t.var_of_mean() / c.mean.powi(2) + t.mean.powi(2) * c.var_of_mean() / c.mean.powi(4);
    let half = z * v.sqrt();
    Relative {
        lift: Lift {
            estimate: Some(r),
            ci: Some([r - half, r + half]),
        },
        variance: Some(v),
        reason: None,
    }
}

/// The mSPRT always-valid p-value for an estimate `r` with variance `v`
/// under a normal mixture N(0, tau2) over the true effect:
/// `1 / Lambda`, `Lambda = sqrt(v / (v + tau2)) exp(tau2 r^2 / (2 v (v + tau2)))`.
/// Rejecting whenever it falls below alpha, however often it is looked
/// at, keeps the false-positive rate at alpha.
pub fn msprt(r: f64, v: f64, tau2: f64) -> f64 {
    let log_lambda = 0.5 * (v / (v + tau2)).ln() + tau2 * r * r / (2.0 * v * (v + tau2));
    (-log_lambda).exp().min(1.0)
}

impl Comparison {
    /// Sets the adjusted p-values and the significance they decide.
    fn adjust(&mut self, fixed: Option<f64>, sequential: Option<f64>, alpha: f64) {
        self.p_value_adjusted = fixed;
        self.significant = fixed.is_some_and(|p| p <= alpha);
        self.sequential_p_value_adjusted = sequential;
        self.sequential_significant = sequential.is_some_and(|p| p <= alpha);
    }
}

/// Corrects `family` (every treatment × metric of an experiment) as one:
/// the fixed-horizon and the always-valid p-values apart, each without
/// the members whose p-value is undefined. BH on always-valid p-values is
/// e-BH (they are reciprocals of e-values), so it stays valid at any
/// stopping time.
pub fn correct(correction: Correction, alpha: f64, family: &mut [&mut Comparison]) {
    let adjusted = |p: Vec<Option<f64>>| match correction {
        Correction::Holm => holm(p.into_iter()),
        Correction::Bh => benjamini_hochberg(p.into_iter()),
        Correction::Uncorrected => p,
    };
    let fixed = adjusted(family.iter().map(|c| c.p_value).collect());
    let sequential = adjusted(family.iter().map(|c| c.sequential_p_value).collect());
    for ((c, p), s) in family.iter_mut().zip(fixed).zip(sequential) {
        c.adjust(p, s, alpha);
    }
}

/// The p-values present with their positions, ascending.
fn ranked(p: &[Option<f64>]) -> Vec<(usize, f64)> {
    let mut present: Vec<(usize, f64)> = p
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    present.sort_by(|a, b| a.1.total_cmp(&b.1));
    present
}

/// Holm's step-down adjustment of the p-values present; absent ones stay
/// absent and are not part of the family.
pub fn holm(p: impl Iterator<Item = Option<f64>>) -> Vec<Option<f64>> {
    let p: Vec<Option<f64>> = p.collect();
    let present = ranked(&p);
    let m = present.len();
    let mut out = vec![None; p.len()];
    let mut running = 0.0_f64;
    for (rank, (i, p)) in present.into_iter().enumerate() {
        running = running.max(((m - rank) as f64 * p).min(1.0));
        out[i] = Some(running);
    }
    out
}

/// Benjamini–Hochberg's step-up adjustment of the p-values present:
/// `p(k) -> min over j >= k of min(1, m p(j) / j)`; absent ones stay
/// absent and are not part of the family.
pub fn benjamini_hochberg(p: impl Iterator<Item = Option<f64>>) -> Vec<Option<f64>> {
    let p: Vec<Option<f64>> = p.collect();
    let present = ranked(&p);
    let m = present.len();
    let mut out = vec![None; p.len()];
    let mut running = 1.0_f64;
    for (rank, (i, p)) in present.into_iter().enumerate().rev() {
        running = running.min(m as f64 * p / (rank + 1) as f64);
        out[i] = Some(running);
    }
    out
}

/// Chi-square test of exposed units against the configured weights.
pub fn srm(units: &[u64], weights: &[f64]) -> Srm {
    let total: u64 = units.iter().sum();
    let weight_sum: f64 = weights.iter().sum();
    if total == 0 || units.len() != weights.len() || units.len() < 2 || weight_sum <= 0.0 {
        return Srm {
            chi_square: None,
            p_value: None,
            detected: false,
            reason: Some("no exposed units"),
        };
    }
    let chi_square: f64 = units
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = total as f64 * w / weight_sum;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    let p = dist::chi_square_sf(chi_square, (units.len() - 1) as f64);
    Srm {
        chi_square: Some(chi_square),
        p_value: Some(p),
        detected: p < SRM_THRESHOLD,
        reason: None,
    }
}

/// Several phases' checks as one: each phase's units against its own
/// weights, the chi-squares summed over the phases with units (a sum of
/// independent chi-squares is chi-square with the summed degrees of
/// freedom), so a mismatch within any phase shows, and a change of split
/// between phases is not one.
pub fn srm_across<'a>(phases: impl IntoIterator<Item = (&'a [u64], &'a [f64])>) -> Srm {
    let (mut chi_square, mut df) = (0.0, 0.0);
    for (units, weights) in phases {
        if let Some(x) = srm(units, weights).chi_square {
            chi_square += x;
            df += (units.len() - 1) as f64;
        }
    }
    if df == 0.0 {
        return srm(&[], &[]);
    }
    let p = dist::chi_square_sf(chi_square, df);
    Srm {
        chi_square: Some(chi_square),
        p_value: Some(p),
        detected: p < SRM_THRESHOLD,
        reason: None,
    }
}

#[cfg(test)]
mod tests;
