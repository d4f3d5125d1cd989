//! Distribution functions, written for accuracy in the tails: p-values come
//! from survival functions (erfc, regularised incomplete beta and gamma),
//! never from `1 - cdf`, so a p-value of 1e-30 keeps its digits.

use statrs::distribution::{Continuous, ContinuousCDF, Normal, StudentsT};
use statrs::function::beta::{checked_beta_reg, ln_beta};
use statrs::function::erf::erfc;
use statrs::function::gamma::checked_gamma_ur;

/// Two-sided p-value of a standard normal statistic.
pub fn normal_two_sided(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// P(Z <= z) for a standard normal Z.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile; `q` in (0, 1).
pub fn normal_quantile(q: f64) -> f64 {
    Normal::standard().inverse_cdf(q.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON))
}

/// Two-sided p-value of a Student t statistic with `df > 0` degrees of
/// freedom: `I_{df/(df+t^2)}(df/2, 1/2)`.
pub fn t_two_sided(t: f64, df: f64) -> f64 {
    checked_beta_reg(df / 2.0, 0.5, df / (df + t * t)).unwrap_or(f64::NAN)
}

/// The Student t quantile with `df > 0` degrees of freedom. statrs'
/// inverse loses digits at very large `df` (a Welch test on a million
/// units), so its answer is polished with Newton steps on the CDF, which
/// stays accurate.
pub fn t_quantile(q: f64, df: f64) -> f64 {
    let Ok(t) = StudentsT::new(0.0, 1.0, df) else {
        return f64::NAN;
    };
    let q = q.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    let mut x = t.inverse_cdf(q);
    for _ in 0..8 {
        let density = t.pdf(x);
        if density.is_nan() || density <= 0.0 {
            break;
        }
        let step = (t.cdf(x) - q) / density;
        x -= step;
        if step.abs() <= 1e-15 * x.abs().max(1.0) {
            break;
        }
    }
    x
}

/// P(X >= x) for a chi-square X with `k > 0` degrees of freedom.
pub fn chi_square_sf(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    checked_gamma_ur(k / 2.0, x / 2.0).unwrap_or(f64::NAN)
}

/// P(p_t > p_c) when p_t ~ Beta(a_t, b_t) and p_c ~ Beta(a_c, b_c), for
/// whole numbers `>= 1`. The closed form below sums up to its first
/// parameter's worth of terms, and decays slowly when a rate is near 0 or
/// 1, so it is evaluated in whichever equivalent form has the fewest:
/// `P(p_t > p_c) = P(1 - p_c > 1 - p_t)` (swap to `(b_c, a_c, b_t, a_t)`),
/// or as `1 - P(p_c > p_t)` when that is a thousand times shorter (at the
/// cost of relative precision for chances near zero).
pub fn chance_to_beat(a_t: f64, b_t: f64, a_c: f64, b_c: f64) -> f64 {
    let direct = if b_c < a_t {
        (b_c, a_c, b_t, a_t)
    } else {
        (a_t, b_t, a_c, b_c)
    };
    let complement = if b_t < a_c {
        (b_t, a_t, b_c, a_c)
    } else {
        (a_c, b_c, a_t, b_t)
    };
    if complement.0 * 1000.0 < direct.0 {
        let (a, b, c, d) = complement;
        1.0 - beta_chance_to_beat(a, b, c, d)
    } else {
        let (a, b, c, d) = direct;
        beta_chance_to_beat(a, b, c, d)
    }
}

/// P(p_t > p_c) when p_t ~ Beta(a_t, b_t) and p_c ~ Beta(a_c, b_c), for a
/// whole number `a_t >= 1`: Evan Miller's closed form
///
/// ```text
/// sum_{i=0}^{a_t-1} B(a_c+i, b_c+b_t) / ((b_t+i) B(1+i, b_t) B(a_c, b_c))
/// ```
///
/// The terms are unimodal with consecutive ratio
/// `(a_c+i)(b_t+i) / ((a_c+b_c+b_t+i)(1+i))`, so the sum starts at the
/// largest term (where that ratio crosses 1) and walks outwards until the
/// terms no longer matter: O(sqrt(a_t)) terms instead of a_t, which keeps a
/// million conversions in the microseconds.
fn beta_chance_to_beat(a_t: f64, b_t: f64, a_c: f64, b_c: f64) -> f64 {
    let ratio = |i: f64| (a_c + i) * (b_t + i) / ((a_c + b_c + b_t + i) * (1.0 + i));
    let last = a_t - 1.0;
    let peak = ((a_c * b_t - a_c - b_c - b_t) / (b_c + 1.0))
        .ceil()
        .clamp(0.0, last);
    let log_peak = ln_beta(a_c + peak, b_c + b_t)
        - (b_t + peak).ln()
        - ln_beta(1.0 + peak, b_t)
        - ln_beta(a_c, b_c);
    // Terms relative to the peak term.
    let mut sum = 1.0;
    let mut term = 1.0;
    let mut i = peak;
    while i < last {
        term *= ratio(i);
        sum += term;
        i += 1.0;
        if term < 1e-18 * sum {
            break;
        }
    }
    term = 1.0;
    i = peak;
    while i > 0.0 {
        i -= 1.0;
        term /= ratio(i);
        sum += term;
        if term < 1e-18 * sum {
            break;
        }
    }
    (log_peak + sum.ln()).exp().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_published_values() {
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        // scipy.stats.t.ppf(0.975, 10) = 2.2281388519649385
        assert!((t_quantile(0.975, 10.0) - 2.228_138_851_964_938_5).abs() < 1e-9);
    }

    #[test]
    fn tails_keep_their_digits() {
        // scipy.stats.norm.sf(10) * 2 = 1.5239706048321365e-23
        let p = normal_two_sided(10.0);
        assert!((p / 1.523_970_604_832_136_5e-23 - 1.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn chance_to_beat_is_symmetric_and_exact_on_small_counts() {
        // Identical posteriors: one half.
        let half = beta_chance_to_beat(11.0, 91.0, 11.0, 91.0);
        assert!((half - 0.5).abs() < 1e-12, "{half}");
        // Beta(2,1) vs Beta(1,1): P(X > Y) = 2/3.
        let p = beta_chance_to_beat(2.0, 1.0, 1.0, 1.0);
        assert!((p - 2.0 / 3.0).abs() < 1e-12, "{p}");
        let a = beta_chance_to_beat(31.0, 70.0, 21.0, 80.0);
        let b = beta_chance_to_beat(21.0, 80.0, 31.0, 70.0);
        assert!((a + b - 1.0).abs() < 1e-12);
        // Every form agrees.
        assert!((chance_to_beat(31.0, 70.0, 21.0, 80.0) - a).abs() < 1e-12);
        assert!(
            (chance_to_beat(70.0, 31.0, 80.0, 21.0) - beta_chance_to_beat(70.0, 31.0, 80.0, 21.0))
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn rates_near_one_take_the_short_form() {
        // Half a million conversions out of half a million units each: the
        // direct form would walk 500,000 slowly decaying terms.
        let p = chance_to_beat(500_001.0, 1.0, 499_001.0, 1.0);
        assert!((0.0..=1.0).contains(&p));
        let q = beta_chance_to_beat(1.0, 499_001.0, 1.0, 500_001.0);
        assert!((p - q).abs() < 1e-12, "{p} vs {q}");
    }
}
