//! Thompson sampling: each arm's probability of being the best, by joint
//! draws from the arms' posteriors, and the weights a bandit gives them.
//!
//! Posteriors, from each arm's figures for the primary metric:
//! - binomial: `Beta(1 + conversions, 1 + units − conversions)` (a uniform
//!   prior);
//! - mean: `Normal(mean, s² / n)`, the sampling distribution of the mean
//!   (a flat prior), once the arm has two units.

use rand::SeedableRng;
use rand_distr::{Beta, Distribution, Normal};

use super::Arm;
use crate::domain::MetricKind;

/// Draws a bandit update takes: the chance to be best is then within
/// about ±1 percentage point.
pub const DRAWS: usize = 10_000;

/// What one arm's value is drawn from.
#[derive(Debug, Clone, Copy)]
pub enum Posterior {
    /// A rate.
    Beta(Beta<f64>),
    /// A mean.
    Normal(Normal<f64>),
}

impl Posterior {
    /// The posterior of an arm with these figures for a metric of `kind`;
    /// `None` for kinds a bandit does not learn from, or a mean metric's
    /// arm with fewer than two units.
    pub fn of(kind: MetricKind, arm: &Arm) -> Option<Self> {
        match kind {
            MetricKind::Binomial => {
                let converted = arm.conversions.min(arm.units) as f64;
                let failed = arm.units as f64 - converted;
                Beta::new(1.0 + converted, 1.0 + failed)
                    .ok()
                    .map(Posterior::Beta)
            }
            MetricKind::Mean if arm.units >= 2 => {
                let n = arm.units as f64;
                let mean = arm.sum / n;
                let variance = ((arm.sum_squares - n * mean * mean) / (n - 1.0)).max(0.0);
                Normal::new(mean, (variance / n).sqrt().max(1e-12))
                    .ok()
                    .map(Posterior::Normal)
            }
            _ => None,
        }
    }

    fn draw(&self, rng: &mut rand::rngs::StdRng) -> f64 {
        match self {
            Posterior::Beta(d) => d.sample(rng),
            Posterior::Normal(d) => d.sample(rng),
        }
    }
}

/// Each arm's probability of being the best (the highest value): the
/// share of `draws` joint draws in which it is, reproducibly for `seed`.
pub fn chance_best(posteriors: &[Posterior], draws: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut wins = vec![0u64; posteriors.len()];
    for _ in 0..draws {
        let best = posteriors
            .iter()
            .map(|p| p.draw(&mut rng))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        if let Some(i) = best {
            wins[i] += 1;
        }
    }
    wins.iter()
        .map(|&w| w as f64 / draws.max(1) as f64)
        .collect()
}

/// The weights for chances to be best: `floor + (1 − k · floor) · p`,
/// so every arm keeps at least `floor` and they sum to 1.
pub fn weights(chance_best: &[f64], floor: f64) -> Vec<f64> {
    let k = chance_best.len() as f64;
    let total: f64 = chance_best.iter().sum();
    chance_best
        .iter()
        .map(|p| floor + (1.0 - k * floor) * p / total.max(f64::MIN_POSITIVE))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(units: u64, conversions: u64) -> Posterior {
        let arm = Arm {
            units,
            conversions,
            ..Arm::default()
        };
        Posterior::of(MetricKind::Binomial, &arm).unwrap()
    }

    #[test]
    fn a_clearly_better_arm_is_almost_surely_best_and_equal_arms_split() {
        let p = chance_best(&[rate(1000, 100), rate(1000, 150)], DRAWS, 1);
        assert!(p[1] > 0.999, "{p:?}");
        let p = chance_best(&[rate(1000, 100), rate(1000, 100)], DRAWS, 1);
        assert!((p[0] - 0.5).abs() < 0.03, "{p:?}");
        // The exact chance for two Betas, by numeric integration: the
        // draws agree within their error.
        let (a, b) = (rate(50, 10), rate(50, 14));
        let p = chance_best(&[a, b], 200_000, 2);
        let exact = exact_second_better((11.0, 41.0), (15.0, 37.0));
        assert!((p[1] - exact).abs() < 0.005, "{} vs {exact}", p[1]);
    }

    /// P(Y > X) for X ~ Beta(a), Y ~ Beta(b), by the midpoint rule.
    fn exact_second_better(a: (f64, f64), b: (f64, f64)) -> f64 {
        use statrs::distribution::{Beta as B, Continuous, ContinuousCDF};
        let (x, y) = (B::new(a.0, a.1).unwrap(), B::new(b.0, b.1).unwrap());
        let n = 20_000;
        (0..n)
            .map(|i| {
                let t = (i as f64 + 0.5) / n as f64;
                x.pdf(t) * (1.0 - y.cdf(t)) / n as f64
            })
            .sum()
    }

    #[test]
    fn weights_keep_the_floor_and_sum_to_one() {
        let w = weights(&[0.0, 0.02, 0.98], 0.01);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((w[0] - 0.01).abs() < 1e-12, "{w:?}");
        assert!(w[2] > 0.95);
        assert_eq!(weights(&[0.5, 0.5], 0.0), vec![0.5, 0.5]);
    }

    #[test]
    fn a_mean_posterior_is_centred_on_the_mean_with_its_standard_error() {
        // 100 units with mean 2 and variance 4: standard error 0.2.
        let arm = Arm {
            units: 100,
            sum: 200.0,
            sum_squares: 4.0 * 99.0 + 100.0 * 4.0,
            ..Arm::default()
        };
        let Some(Posterior::Normal(d)) = Posterior::of(MetricKind::Mean, &arm) else {
            panic!("a normal posterior");
        };
        assert!((d.mean() - 2.0).abs() < 1e-12);
        assert!((d.std_dev() - 0.2).abs() < 1e-12);
        assert!(Posterior::of(MetricKind::Mean, &Arm::default()).is_none());
    }
}
