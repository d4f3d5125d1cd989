//! Results: an experiment's aggregates run through [`crate::stats`], one
//! metric at a time, plus the sample-ratio-mismatch check. Costs
//! microseconds per metric, whatever the number of events behind it.

use serde::Serialize;

use crate::domain::{
    Correction, Experiment, ExperimentAggregates, Metric, MetricKind, Status, VariantAggregates,
};
use crate::stats::{self, Arm, Comparison, Settings, Srm, VariantStats};

/// `GET /v1/experiments/{key}/results`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExperimentResults {
    /// The experiment.
    pub experiment: String,
    /// Its status.
    pub status: Status,
    /// Significance level used.
    pub alpha: f64,
    /// The deciding metric, if one is set.
    pub primary_metric: Option<String>,
    /// Exposed units, all variants.
    pub units: u64,
    /// Events whose explicit variant differed from abacus's assignment.
    pub assignment_mismatches: u64,
    /// Sample-ratio mismatch: exposed units against configured weights.
    pub srm: Srm,
    /// How the comparisons' adjusted p-values were formed.
    pub correction: Family,
    /// One entry per metric asked for.
    pub metrics: Vec<MetricResults>,
    /// Every guardrail against every treatment.
    pub guardrails: Vec<GuardrailCheck>,
}

/// The multiple-testing family of an experiment's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Family {
    /// The experiment's correction across treatments × metrics; `null`:
    /// Holm across each metric's treatments apart.
    pub method: Option<Correction>,
    /// Fixed-horizon p-values corrected together (per metric: the most of
    /// any one metric).
    pub members: usize,
}

/// One guardrail metric, one treatment against the control.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GuardrailCheck {
    /// The guardrail metric.
    pub metric: String,
    /// The treatment.
    pub variant: String,
    /// Tolerated relative change in the bad direction.
    pub max_relative_drop: f64,
    /// Whether a regression pauses the experiment.
    pub auto_stop: bool,
    /// (treatment - control) / control.
    pub relative_lift: Option<f64>,
    /// Always-valid p-value that the harm exceeds the tolerance, Holm-corrected
    /// across treatments.
    pub p_value: Option<f64>,
    /// `p_value <= alpha`.
    pub regressed: bool,
}

/// One metric's results.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricResults {
    /// Metric key (event type or `metric` name).
    pub metric: String,
    /// Binomial or mean.
    pub kind: MetricKind,
    /// Whether this is the experiment's primary metric.
    pub primary: bool,
    /// Per variant, the control first.
    pub variants: Vec<VariantStats>,
    /// Each treatment against the control.
    pub comparisons: Vec<Comparison>,
}

/// Results of `experiment` from `aggregates`, for `metric` (all of the
/// experiment's metrics when `None`; the caller checks the key exists).
/// One metric's p-values are corrected with the others all the same.
pub fn compute(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
    metric: Option<&str>,
) -> ExperimentResults {
    let per_variant = per_variant(experiment, aggregates);
    let (srm, units) = sample_ratio(experiment, aggregates);
    let (mut metrics, correction) = analyse_all(experiment, &per_variant);
    metrics.retain(|m| metric.is_none_or(|k| k == m.metric));
    ExperimentResults {
        experiment: experiment.key.to_string(),
        status: experiment.status,
        alpha: experiment.alpha,
        primary_metric: experiment.primary_metric.as_ref().map(ToString::to_string),
        units: units.iter().sum(),
        assignment_mismatches: aggregates
            .variants
            .values()
            .map(|v| v.assignment_mismatches)
            .sum(),
        srm,
        correction,
        metrics,
        guardrails: guardrails(experiment, aggregates),
    }
}

/// Results of the experiment's primary metric alone, if it has one. Only
/// a correction across metrics needs the others analysed too (each costs
/// up to thousands of terms for the exact chance to win), so without one
/// the primary is analysed alone.
pub fn primary(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
) -> Option<MetricResults> {
    let key = experiment.primary_metric.as_ref()?;
    let per_variant = per_variant(experiment, aggregates);
    if experiment.correction.is_some() {
        let (metrics, _) = analyse_all(experiment, &per_variant);
        return metrics.into_iter().find(|m| m.metric == key.as_str());
    }
    let metric = experiment.metrics.iter().find(|m| &m.key == key)?;
    Some(analyse(experiment, &per_variant, metric))
}

/// Every metric's results, corrected as the experiment says, and how.
fn analyse_all(
    experiment: &Experiment,
    per_variant: &[Option<&VariantAggregates>],
) -> (Vec<MetricResults>, Family) {
    let mut metrics: Vec<MetricResults> = experiment
        .metrics
        .iter()
        .map(|m| analyse(experiment, per_variant, m))
        .collect();
    let defined = |m: &MetricResults| m.comparisons.iter().filter(|c| c.p_value.is_some()).count();
    let members = match experiment.correction {
        None => metrics.iter().map(defined).max().unwrap_or(0),
        Some(correction) => {
            let mut family: Vec<&mut Comparison> = metrics
                .iter_mut()
                .flat_map(|m| m.comparisons.iter_mut())
                .collect();
            stats::correct(correction, experiment.alpha, &mut family);
            metrics.iter().map(defined).sum()
        }
    };
    let family = Family {
        method: experiment.correction,
        members,
    };
    (metrics, family)
}

/// One metric's estimates and comparisons.
fn analyse(
    experiment: &Experiment,
    per_variant: &[Option<&VariantAggregates>],
    m: &Metric,
) -> MetricResults {
    let arms = arms(experiment, per_variant, m.key.as_str());
    let analysis = stats::analyse(settings(experiment, m.kind), &arms);
    MetricResults {
        metric: m.key.to_string(),
        kind: m.kind,
        primary: experiment.primary_metric.as_ref() == Some(&m.key),
        variants: analysis.variants,
        comparisons: analysis.comparisons,
    }
}

/// Every guardrail of `experiment` against every treatment.
pub fn guardrails(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
) -> Vec<GuardrailCheck> {
    let per_variant = per_variant(experiment, aggregates);
    let mut out = Vec::new();
    for g in &experiment.guardrails {
        let Some(metric) = experiment.metrics.iter().find(|m| m.key == g.metric) else {
            continue;
        };
        let arms = arms(experiment, &per_variant, metric.key.as_str());
        let Some(((_, control), treatments)) = arms.split_first() else {
            continue;
        };
        let tests: Vec<_> = treatments
            .iter()
            .map(|(_, arm)| {
                stats::regression(
                    settings(experiment, metric.kind),
                    arm,
                    control,
                    g.max_relative_drop,
                    g.higher_is_better,
                )
            })
            .collect();
        let adjusted = stats::holm(tests.iter().map(|t| t.p_value));
        for (((variant, _), test), p) in treatments.iter().zip(&tests).zip(adjusted) {
            out.push(GuardrailCheck {
                metric: g.metric.to_string(),
                variant: (*variant).to_owned(),
                max_relative_drop: g.max_relative_drop,
                auto_stop: g.auto_stop,
                relative_lift: test.relative_lift,
                p_value: p,
                regressed: p.is_some_and(|p| p <= experiment.alpha),
            });
        }
    }
    out
}

fn per_variant<'a>(
    experiment: &Experiment,
    aggregates: &'a ExperimentAggregates,
) -> Vec<Option<&'a VariantAggregates>> {
    experiment
        .variants
        .iter()
        .map(|v| aggregates.variants.get(v.key.as_str()))
        .collect()
}

/// Each variant's aggregates for one metric, the control first.
fn arms<'a>(
    experiment: &'a Experiment,
    per_variant: &[Option<&VariantAggregates>],
    metric: &str,
) -> Vec<(&'a str, Arm)> {
    experiment
        .variants
        .iter()
        .zip(per_variant)
        .map(|(v, a)| {
            let measure = a.and_then(|a| a.measures.get(metric));
            let arm = Arm {
                units: a.map_or(0, |a| a.units),
                conversions: measure.map_or(0, |m| m.units),
                events: measure.map_or(0, |m| m.events),
                sum: measure.map_or(0.0, |m| m.sum),
                sum_squares: measure.map_or(0.0, |m| m.sum_squares),
            };
            (v.key.as_str(), arm)
        })
        .collect()
}

fn settings(experiment: &Experiment, kind: MetricKind) -> Settings {
    Settings {
        kind,
        alpha: experiment.alpha,
        mixing_variance: experiment.mixing_variance,
    }
}

/// The SRM check and the exposed units per variant it is based on.
pub fn sample_ratio(experiment: &Experiment, aggregates: &ExperimentAggregates) -> (Srm, Vec<u64>) {
    let units: Vec<u64> = experiment
        .variants
        .iter()
        .map(|v| {
            aggregates
                .variants
                .get(v.key.as_str())
                .map_or(0, |a| a.units)
        })
        .collect();
    let weights: Vec<f64> = experiment.variants.iter().map(|v| v.weight).collect();
    (stats::srm(&units, &weights), units)
}

/// The winner by these comparisons of the primary metric: the treatment
/// significantly better than the control by its corrected always-valid
/// p-value (the largest relative lift if several), the control when every
/// treatment is significantly worse, else `None`.
pub fn winner(experiment: &Experiment, comparisons: &[Comparison]) -> Option<String> {
    let lift = |c: &Comparison| c.relative.as_ref().and_then(|r| r.estimate);
    let better = comparisons
        .iter()
        .filter(|c| c.sequential_significant && lift(c).is_some_and(|l| l > 0.0))
        .max_by(|a, b| lift(a).unwrap_or(0.0).total_cmp(&lift(b).unwrap_or(0.0)));
    if let Some(best) = better {
        return Some(best.variant.clone());
    }
    let all_worse = !comparisons.is_empty()
        && comparisons
            .iter()
            .all(|c| c.sequential_significant && lift(c).is_some_and(|l| l < 0.0));
    all_worse.then(|| experiment.variants[0].key.to_string())
}
