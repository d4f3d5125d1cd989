//! Guardrail regressions: is a treatment worse than the control by more
//! than the tolerated relative drop, by an always-valid test?
//!
//! The test is the mSPRT of [`super::msprt`] moved to the edge of the
//! tolerance: with `h` the relative harm (`-lift` when higher is better,
//! `+lift` when lower is better) and `tol` the tolerance, the null is
//! `h <= tol`. The p-value is that of the point null `h = tol` when the
//! estimate lies beyond it, and 1 otherwise; the boundary is the null's
//! hardest case, so the error rate holds for the whole of it, however
//! often the monitor looks.

use super::{dist, moments, msprt, relative_lift, Arm, Settings, CONFIDENCE};

/// One treatment's guardrail check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regression {
    /// (treatment - control) / control.
    pub relative_lift: Option<f64>,
    /// Always-valid p-value of "harm exceeds the tolerance".
    pub p_value: Option<f64>,
}

/// Tests `arm` against `control` for a regression beyond `tolerance`.
pub fn regression(
    settings: Settings,
    arm: &Arm,
    control: &Arm,
    tolerance: f64,
    higher_is_better: bool,
) -> Regression {
    let none = Regression {
        relative_lift: None,
        p_value: None,
    };
    if arm.units < 2
        || control.units < 2
        || super::denominator_zero(settings.kind, arm)
        || super::denominator_zero(settings.kind, control)
    {
        return none;
    }
    let (Some(t), Some(c)) = (moments(settings.kind, arm), moments(settings.kind, control)) else {
        return none;
    };
    let z = dist::normal_quantile((1.0 + CONFIDENCE) / 2.0);
    let relative = relative_lift(t.mean - c.mean, t, c, z);
    let (Some(lift), Some(variance)) = (relative.lift.estimate, relative.variance) else {
        return none;
    };
    if variance.is_nan() || variance <= 0.0 {
        return Regression {
            relative_lift: Some(lift),
            p_value: None,
        };
    }
    let harm = if higher_is_better { -lift } else { lift };
    let excess = harm - tolerance;
    Regression {
        relative_lift: Some(lift),
        p_value: Some(if excess > 0.0 {
            msprt(
                excess,
                variance,
                settings.mixing_variance(variance, t.n, c.n, 1.0),
            )
        } else {
            1.0
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::MetricKind;

    use super::*;
    use crate::stats::TunedFor;

    fn settings() -> Settings {
        Settings {
            kind: MetricKind::Binomial,
            alpha: 0.05,
            tuned_for: TunedFor::MixingVariance {
                mixing_variance: 0.01,
            },
        }
    }

    fn rate(units: u64, conversions: u64) -> Arm {
        Arm {
            units,
            conversions,
            events: conversions,
            ..Arm::default()
        }
    }

    #[test]
    fn a_large_drop_is_a_significant_regression() {
        let r = regression(
            settings(),
            &rate(10_000, 800),
            &rate(10_000, 1_000),
            0.05,
            true,
        );
        assert!((r.relative_lift.unwrap() + 0.2).abs() < 1e-12);
        assert!(r.p_value.unwrap() < 0.01, "{r:?}");
    }

    #[test]
    fn a_drop_within_the_tolerance_never_counts() {
        // -4% lift against a 5% tolerance: the estimate is inside it.
        let r = regression(
            settings(),
            &rate(1_000_000, 96_000),
            &rate(1_000_000, 100_000),
            0.05,
            true,
        );
        assert_eq!(r.p_value, Some(1.0));
    }

    #[test]
    fn the_direction_follows_what_is_better() {
        // Errors rising by 25% is a regression when lower is better, and
        // an improvement when higher is better.
        let (t, c) = (rate(10_000, 1_250), rate(10_000, 1_000));
        assert!(regression(settings(), &t, &c, 0.05, false).p_value.unwrap() < 0.01);
        assert_eq!(
            regression(settings(), &t, &c, 0.05, true).p_value,
            Some(1.0)
        );
    }

    #[test]
    fn too_little_data_says_nothing() {
        let r = regression(settings(), &rate(1, 0), &rate(1, 1), 0.05, true);
        assert_eq!(r.p_value, None);
    }

    /// Share of `experiments` simulated binomial experiments (control rate
    /// `control`, treatment `treatment`) that a guardrail with `tolerance`
    /// stops at any of 50 peeks, every 200 units per arm.
    fn stop_rate(control: f64, treatment: f64, tolerance: f64, seed: u64) -> f64 {
        use rand::{RngExt, SeedableRng};

        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let experiments = 300;
        let mut stopped = 0;
        for _ in 0..experiments {
            let mut arms = [Arm::default(); 2];
            let mut stop = false;
            for _ in 0..50 {
                for (arm, p) in arms.iter_mut().zip([control, treatment]) {
                    for _ in 0..200 {
                        let converted = rng.random::<f64>() < p;
                        arm.units += 1;
                        arm.conversions += u64::from(converted);
                        arm.events += u64::from(converted);
                    }
                }
                let r = regression(settings(), &arms[1], &arms[0], tolerance, true);
                stop |= r.p_value.is_some_and(|p| p <= 0.05);
            }
            stopped += u32::from(stop);
        }
        f64::from(stopped) / f64::from(experiments)
    }

    /// Watched 50 times, the guardrail keeps its promise at the edge of the
    /// tolerance (the null's hardest case), stays quiet inside it, and
    /// catches a real regression.
    #[test]
    fn peeking_does_not_inflate_false_stops_and_real_drops_are_caught() {
        let at_the_edge = stop_rate(0.10, 0.10, 0.0, 1);
        let inside = stop_rate(0.10, 0.098, 0.05, 2);
        let regression = stop_rate(0.10, 0.08, 0.05, 3);
        eprintln!(
            "stops: at the edge {at_the_edge:.3}, inside {inside:.3}, 20% drop {regression:.3}"
        );
        assert!(at_the_edge <= 0.07, "{at_the_edge}");
        assert!(inside <= 0.02, "{inside}");
        assert!(regression >= 0.8, "{regression}");
    }
}
