//! A bandit's updates: when one is due and the split it brings. The
//! results monitor asks on each of its turns; the experiment's actor
//! makes the split a new phase (see `experiments/actor.rs`).

use time::{Duration, OffsetDateTime};

use super::compute;
use crate::domain::{
    Allocation, Experiment, ExperimentAggregates, PhaseView, Reallocation, Status, MAX_PHASES,
};
use crate::stats::bandit::{chance_best, weights, Posterior};

/// The least change of some arm's weight worth a new phase: smaller moves
/// would spend phases (at most 100) on noise.
const MIN_CHANGE: f64 = 0.005;

/// The split `experiment` should move to at `now`, from its aggregates as
/// kept (by phase), with `draws` Thompson draws: `None` unless it is a
/// running bandit whose current phase is `update_interval_s` old, every
/// arm has its burn-in units, and some weight would move by at least half
/// a percentage point (and it has phases left).
///
/// The posteriors are drawn from the phase-weighted figures the results
/// show (`phase=all`), so a phase in which the split favoured an arm does
/// not bias what the next split learns.
pub fn due(
    experiment: &Experiment,
    kept: &ExperimentAggregates,
    now: OffsetDateTime,
    draws: usize,
) -> Option<Reallocation> {
    if experiment.allocation != Allocation::Bandit || experiment.status != Status::Running {
        return None;
    }
    let spec = experiment.bandit?;
    // With every phase spent, the split stays as it is: no draws.
    if experiment.phases.len() >= MAX_PHASES {
        return None;
    }
    let current = experiment.phases.last()?;
    let interval = Duration::seconds(i64::try_from(spec.update_interval_s).ok()?);
    if now - current.started_at < interval {
        return None;
    }
    let key = experiment.primary_metric.as_ref()?;
    let metrics = experiment.analysed_metrics();
    let metric = metrics.iter().find(|m| &m.key == key)?;
    let viewed = kept.by_variant(experiment, PhaseView::All);
    let per_variant = compute::per_variant(experiment, &viewed);
    let arms = compute::arms(experiment, &viewed, &per_variant, metric)?;
    if arms.iter().any(|(_, a)| a.units < spec.burn_in_units) {
        return None;
    }
    let posteriors = arms
        .iter()
        .map(|(_, a)| Posterior::of(metric.kind, a))
        .collect::<Option<Vec<_>>>()?;
    let chance = chance_best(&posteriors, draws, seed(experiment, current.number));
    let next = weights(&chance, spec.floor);
    let moves = next
        .iter()
        .zip(&current.weights)
        .any(|(a, b)| (a - b).abs() >= MIN_CHANGE);
    moves.then_some(Reallocation {
        after_phase: current.number,
        chance_best: chance,
        weights: next,
    })
}

/// The draws' seed: the same experiment and phase draw the same split,
/// whichever node computes it.
fn seed(experiment: &Experiment, phase: u32) -> u64 {
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in experiment.key.as_str().bytes().chain(phase.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use serde_json::json;

    use super::*;
    use crate::domain::{stratum, Action, ExperimentIn, MeasureAggregates, VariantAggregates};

    /// True conversion rates of the three arms; the last is best.
    const RATES: [f64; 3] = [0.10, 0.12, 0.15];
    /// Units per update interval, and intervals per run.
    const BATCH: usize = 1_000;
    const BATCHES: usize = 12;

    fn bandit(now: OffsetDateTime) -> Experiment {
        let input: ExperimentIn = serde_json::from_value(json!({
            "key": "sim", "name": "sim",
            "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}, {"key": "c", "weight": 1}],
            "metrics": [{"key": "conversion", "kind": "binomial"}],
            "primary_metric": "conversion",
            "allocation": "bandit",
            "bandit": {"burn_in_units": 100, "floor": 0.01, "update_interval_s": 3600},
        }))
        .unwrap();
        Experiment::create(input, now)
            .and_then(|e| e.transitioned(Action::Start, None, now))
            .unwrap()
    }

    /// One run: each interval's units are split by the phase's weights,
    /// as the layout splits new units, and convert at their arm's rate;
    /// then the bandit updates. Returns the final weights and the regret
    /// (expected conversions lost against always serving the best arm).
    fn run(seed: u64) -> (Vec<f64>, f64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let start = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let mut experiment = bandit(start);
        let mut kept = ExperimentAggregates::default();
        let mut regret = 0.0;
        let best = RATES.iter().copied().fold(0.0, f64::max);
        for batch in 0..BATCHES {
            let weights: Vec<f64> = experiment.variants.iter().map(|v| v.weight).collect();
            let phase = experiment.phase();
            for _ in 0..BATCH {
                let mut u: f64 = rng.random();
                let arm = weights
                    .iter()
                    .position(|w| {
                        u -= w;
                        u < 0.0
                    })
                    .unwrap_or(weights.len() - 1);
                regret += best - RATES[arm];
                let converted = rng.random::<f64>() < RATES[arm];
                let key = stratum(experiment.variants[arm].key.as_str(), phase);
                let v = kept
                    .variants
                    .entry(key)
                    .or_insert_with(VariantAggregates::default);
                v.units += 1;
                v.exposures += 1;
                if converted {
                    let m = v
                        .measures
                        .entry("conversion".into())
                        .or_insert_with(MeasureAggregates::default);
                    m.units += 1;
                    m.events += 1;
                    m.sum += 1.0;
                    m.sum_squares += 1.0;
                }
            }
            let now = start + Duration::hours(batch as i64 + 1);
            if let Some(next) = due(&experiment, &kept, now, 2_000) {
                assert_eq!(next.after_phase, phase);
                experiment = experiment.reallocated(&next.weights, now).unwrap();
                assert!(experiment.variants.iter().all(|v| v.weight >= 0.01 - 1e-12));
            }
        }
        let weights = experiment.variants.iter().map(|v| v.weight).collect();
        (weights, regret)
    }

    #[test]
    fn over_200_seeded_runs_the_best_arm_ends_with_the_most_traffic_at_half_the_regret() {
        let runs: Vec<(Vec<f64>, f64)> = (0..200).map(run).collect();
        let best_wins = runs
            .iter()
            .filter(|(w, _)| w[2] > w[0] && w[2] > w[1])
            .count();
        let mean_regret = runs.iter().map(|r| r.1).sum::<f64>() / runs.len() as f64;
        let equal_split =
            (BATCH * BATCHES) as f64 * (RATES[2] - RATES.iter().sum::<f64>() / RATES.len() as f64);
        println!(
            "best arm most traffic in {best_wins}/200 runs; regret {mean_regret:.1} against \
             {equal_split:.1} for an equal split ({:.0}%)",
            100.0 * mean_regret / equal_split
        );
        assert!(best_wins >= 190, "best arm led in {best_wins} of 200 runs");
        assert!(
            mean_regret <= 0.5 * equal_split,
            "{mean_regret} vs {equal_split}"
        );
    }

    #[test]
    fn nothing_is_due_before_the_interval_or_the_burn_in() {
        let start = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let experiment = bandit(start);
        let mut kept = ExperimentAggregates::default();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let mut v = VariantAggregates {
                units: 99 + i as u64,
                ..VariantAggregates::default()
            };
            v.measures.insert(
                "conversion".into(),
                MeasureAggregates {
                    units: 10 * i as u64,
                    events: 10 * i as u64,
                    sum: 10.0 * i as f64,
                    sum_squares: 10.0 * i as f64,
                },
            );
            kept.variants.insert((*key).to_owned(), v);
        }
        let later = start + Duration::hours(2);
        assert_eq!(
            due(&experiment, &kept, later, 1_000),
            None,
            "a has 99 units"
        );
        kept.variants.get_mut("a").unwrap().units = 100;
        assert_eq!(
            due(&experiment, &kept, start + Duration::minutes(59), 1_000),
            None
        );
        let next = due(&experiment, &kept, later, 1_000).expect("due");
        assert_eq!(next.after_phase, 1);
        assert!(next.weights[2] > 0.9, "{next:?}");
        assert_eq!(
            due(&experiment, &kept, later, 1_000),
            Some(next),
            "reproducible"
        );
        // With every phase spent, nothing is drawn again.
        let mut full = experiment.clone();
        for i in 0..99 {
            let w = if i % 2 == 0 {
                [0.2, 0.3, 0.5]
            } else {
                [0.5, 0.3, 0.2]
            };
            full = full.reallocated(&w, later + Duration::seconds(i)).unwrap();
        }
        assert_eq!(full.phases.len(), MAX_PHASES);
        assert!(full.reallocated(&[0.4, 0.3, 0.3], later).is_err());
        assert_eq!(due(&full, &kept, later + Duration::days(1), 1_000), None);
    }
}
